//! Where the numbers in a reference graph come from.
//!
//! The graph code asks for each parameter by its PyTorch name (torchvision / timm / an
//! `nn.Sequential` head) and says how a random one should be drawn. Two sources answer: a seeded
//! generator, so demos and tests get a plausible, bounded network with no file and the same bytes
//! on every run; and a safetensors checkpoint saved from the training code, so a real policy
//! exports without a PyTorch ONNX exporter. Keeping the PyTorch names (not the folded ONNX
//! tensors) as the interface is what lets `save_file(policy.state_dict())` be the whole export
//! recipe on the training side.

use super::builder::{Attr, GraphBuilder};
use super::OnnxExportError;
use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Which module of the policy a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// The image encoder; `camera` is `None` when one encoder is shared by every camera.
    Encoder { camera: Option<&'a str> },
    /// The MLP head, an `nn.Sequential` of `Linear`s with `ReLU`s between.
    Head,
}

/// How the seeded source draws a parameter. Normal draws are truncated at about 3.5 sigma.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal { mean: f32, std: f32 },
    Uniform { low: f32, high: f32 },
}

/// One parameter the graph needs.
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    pub owner: Owner<'a>,
    /// The name inside its module, as PyTorch names it: `layer1.0.conv1.weight`, `2.bias`.
    pub name: &'a str,
    /// The shape as PyTorch stores it (a `Linear` weight is `[out, in]`).
    pub shape: &'a [usize],
    pub init: Init,
}

/// Supplies parameter values to the graph builders.
pub trait WeightSource {
    /// The values of `param`, row-major, exactly `param.shape`'s element count of them.
    ///
    /// A source that checks a file may return placeholder values for a bad key and report every
    /// problem at once from [`WeightSource::finish`].
    fn tensor(&mut self, param: &Param<'_>) -> Result<Vec<f32>, OnnxExportError>;

    /// Called once after the last parameter: the place to report missing, unexpected or
    /// mis-shaped tensors together.
    fn finish(&mut self) -> Result<(), OnnxExportError> {
        Ok(())
    }
}

/// Where each module's parameters live in a checkpoint: key = prefix + PyTorch name.
///
/// The default is what `save_file(policy.state_dict())` writes for a module with an `encoder`
/// child (or an `encoders` `nn.ModuleDict` keyed by camera name) and a `head` `nn.Sequential`.
/// LeRobot's ACT, for instance, keeps its ResNet-18 under `model.backbone.`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLayout {
    /// Prefix of the encoder shared by every camera.
    pub shared_encoder: String,
    /// Prefix of camera `c`'s own encoder; `{camera}` is replaced by the camera name.
    pub per_camera_encoder: String,
    /// Prefix of the head.
    pub head: String,
}

impl Default for KeyLayout {
    fn default() -> Self {
        KeyLayout {
            shared_encoder: "encoder.".into(),
            per_camera_encoder: "encoders.{camera}.".into(),
            head: "head.".into(),
        }
    }
}

impl KeyLayout {
    /// The key prefix of `owner`'s parameters.
    pub fn prefix(&self, owner: Owner<'_>) -> String {
        match owner {
            Owner::Encoder { camera: None } => self.shared_encoder.clone(),
            Owner::Encoder { camera: Some(c) } => self.per_camera_encoder.replace("{camera}", c),
            Owner::Head => self.head.clone(),
        }
    }

    /// The checkpoint key of `param`.
    pub fn key(&self, param: &Param<'_>) -> String {
        self.prefix(param.owner) + param.name
    }

    /// The fixed parts of the prefixes: a checkpoint key starting with one of them is expected to
    /// be used by the architecture.
    fn watched(&self) -> [&str; 3] {
        let per_camera = match self.per_camera_encoder.find("{camera}") {
            Some(i) => &self.per_camera_encoder[..i],
            None => &self.per_camera_encoder,
        };
        [&self.shared_encoder, per_camera, &self.head]
    }
}

/// A named f32 tensor, as in a PyTorch state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub key: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Deterministic pseudo-random weights.
///
/// Each tensor gets its own stream, seeded from the seed and the tensor's default-layout key, so
/// values do not depend on the order of requests, and separate per-camera encoders differ. Only
/// integer and basic float arithmetic is used (no `ln`/`cos`), so the bytes are the same on every
/// platform.
#[derive(Debug, Clone)]
pub struct SeededWeights {
    seed: u64,
    layout: KeyLayout,
}

impl SeededWeights {
    pub fn new(seed: u64) -> Self {
        SeededWeights {
            seed,
            layout: KeyLayout::default(),
        }
    }
}

impl WeightSource for SeededWeights {
    fn tensor(&mut self, param: &Param<'_>) -> Result<Vec<f32>, OnnxExportError> {
        let key = self.layout.key(param);
        let mut rng = SplitMix64(self.seed ^ fnv1a(key.as_bytes()));
        let n = param.shape.iter().product();
        Ok((0..n)
            .map(|_| match param.init {
                Init::Normal { mean, std } => {
                    // Irwin-Hall: the sum of four uniforms, scaled to unit variance. Close enough
                    // to a (truncated) normal for an initialization, and bit-reproducible.
                    let s: f32 = (0..4).map(|_| rng.unit()).sum();
                    mean + std * (s - 2.0) * 3f32.sqrt()
                }
                Init::Uniform { low, high } => low + (high - low) * rng.unit(),
            })
            .collect())
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 24 random bits: exact in f32.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Wraps a source and keeps a copy of every tensor it hands out, keyed by `layout`: the state dict
/// of the graph just built, ready for [`save_safetensors`].
#[derive(Debug)]
pub struct RecordingWeights<W> {
    inner: W,
    layout: KeyLayout,
    tensors: Vec<NamedTensor>,
}

impl<W: WeightSource> RecordingWeights<W> {
    pub fn new(inner: W, layout: KeyLayout) -> Self {
        RecordingWeights {
            inner,
            layout,
            tensors: vec![],
        }
    }

    /// The tensors handed out, in request order.
    pub fn into_tensors(self) -> Vec<NamedTensor> {
        self.tensors
    }
}

impl<W: WeightSource> WeightSource for RecordingWeights<W> {
    fn tensor(&mut self, param: &Param<'_>) -> Result<Vec<f32>, OnnxExportError> {
        let data = self.inner.tensor(param)?;
        self.tensors.push(NamedTensor {
            key: self.layout.key(param),
            shape: param.shape.to_vec(),
            data: data.clone(),
        });
        Ok(data)
    }

    fn finish(&mut self) -> Result<(), OnnxExportError> {
        self.inner.finish()
    }
}

/// Writes `tensors` as an f32 safetensors file, the format `safetensors.torch.save_file` writes.
pub fn save_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<(), OnnxExportError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.key.as_str(), v))
                .map_err(|source| OnnxExportError::Safetensors {
                    path: path.to_path_buf(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, &None, path).map_err(|source| {
        OnnxExportError::Safetensors {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A tensor whose shape differs from what the architecture needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Everything wrong between a checkpoint and an architecture, reported in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointMismatch {
    /// Keys the architecture needs that the file lacks, with the shape expected.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Keys under the layout's prefixes that the architecture does not use.
    pub unexpected: Vec<String>,
    pub mis_shaped: Vec<ShapeMismatch>,
    /// Keys whose dtype cannot be read as f32 (only F32, F16, BF16 and F64 can).
    pub bad_dtype: Vec<(String, String)>,
    /// The layout the keys were looked up with, to make prefix mistakes obvious.
    pub layout: KeyLayout,
}

impl CheckpointMismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mis_shaped.is_empty()
            && self.bad_dtype.is_empty()
    }
}

impl fmt::Display for CheckpointMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} missing, {} unexpected, {} mis-shaped, {} with an unreadable dtype \
             (key prefixes: encoder `{}`, per-camera encoder `{}`, head `{}`)",
            self.missing.len(),
            self.unexpected.len(),
            self.mis_shaped.len(),
            self.bad_dtype.len(),
            self.layout.shared_encoder,
            self.layout.per_camera_encoder,
            self.layout.head,
        )?;
        for (key, shape) in &self.missing {
            write!(f, "\n  missing: {key} {shape:?}")?;
        }
        for key in &self.unexpected {
            write!(f, "\n  unexpected: {key}")?;
        }
        for m in &self.mis_shaped {
            write!(
                f,
                "\n  mis-shaped: {} expected {:?}, found {:?}",
                m.key, m.expected, m.found
            )?;
        }
        for (key, dtype) in &self.bad_dtype {
            write!(f, "\n  unreadable dtype: {key} is {dtype}")?;
        }
        Ok(())
    }
}

/// Reads parameters from a safetensors checkpoint (F32, F16, BF16 or F64 tensors).
///
/// `*.num_batches_tracked` tensors are ignored, and so are keys outside the layout's prefixes
/// (optimizer state, normalization buffers, other sub-modules of a larger policy).
#[derive(Debug)]
pub struct SafetensorsWeights {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
    layout: KeyLayout,
    used: BTreeSet<String>,
    problems: CheckpointMismatch,
}

impl SafetensorsWeights {
    /// Reads and indexes `path`, looking keys up with the default [`KeyLayout`].
    pub fn open(path: &Path) -> Result<Self, OnnxExportError> {
        let bytes = std::fs::read(path).map_err(|source| OnnxExportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|source| OnnxExportError::Safetensors {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SafetensorsWeights {
            path: path.to_path_buf(),
            data_start: 8 + header_len,
            bytes,
            metadata,
            layout: KeyLayout::default(),
            used: BTreeSet::new(),
            problems: CheckpointMismatch::default(),
        })
    }

    pub fn with_layout(mut self, layout: KeyLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The checkpoint's tensors whose key starts with `prefix`: (key, shape), sorted by key.
    pub fn shapes_with_prefix(&self, prefix: &str) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<(String, Vec<usize>)> = self
            .metadata
            .tensors()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, info)| (k, info.shape.clone()))
            .collect();
        v.sort();
        v
    }
}

impl WeightSource for SafetensorsWeights {
    fn tensor(&mut self, param: &Param<'_>) -> Result<Vec<f32>, OnnxExportError> {
        let key = self.layout.key(param);
        let n: usize = param.shape.iter().product();
        let placeholder = vec![0.0; n];
        let Some(info) = self.metadata.info(&key) else {
            self.problems.missing.push((key, param.shape.to_vec()));
            return Ok(placeholder);
        };
        self.used.insert(key.clone());
        if info.shape != param.shape {
            self.problems.mis_shaped.push(ShapeMismatch {
                key,
                expected: param.shape.to_vec(),
                found: info.shape.clone(),
            });
            return Ok(placeholder);
        }
        // read_metadata checked that the offsets lie inside the buffer and match the shape.
        let (begin, end) = info.data_offsets;
        let Some(raw) = self
            .bytes
            .get(self.data_start + begin..self.data_start + end)
        else {
            self.problems
                .bad_dtype
                .push((key, format!("{:?} with out-of-file offsets", info.dtype)));
            return Ok(placeholder);
        };
        Ok(match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            other => {
                self.problems.bad_dtype.push((key, format!("{other:?}")));
                placeholder
            }
        })
    }

    fn finish(&mut self) -> Result<(), OnnxExportError> {
        let watched = self.layout.watched();
        let all: BTreeMap<String, _> = self.metadata.tensors().into_iter().collect();
        self.problems.unexpected = all
            .keys()
            .filter(|k| !self.used.contains(*k))
            .filter(|k| !k.ends_with(".num_batches_tracked") && k.as_str() != "num_batches_tracked")
            .filter(|k| watched.iter().any(|p| k.starts_with(p)))
            .cloned()
            .collect();
        if self.problems.is_empty() {
            return Ok(());
        }
        let mut mismatch = std::mem::take(&mut self.problems);
        mismatch.layout = self.layout.clone();
        Err(OnnxExportError::CheckpointMismatch {
            path: self.path.clone(),
            mismatch: Box::new(mismatch),
        })
    }
}

/// A module's view of the graph under construction: its weight source, its key prefix and the
/// prefix of its node names (one per branch, so a shared encoder gets distinct nodes but one set
/// of initializers).
pub(crate) struct Scope<'a> {
    pub g: &'a mut GraphBuilder,
    pub weights: &'a mut dyn WeightSource,
    pub owner: Owner<'a>,
    pub node_prefix: String,
}

impl Scope<'_> {
    /// The initializer name for PyTorch parameter `name`: its key under the default layout,
    /// whatever layout the weights were read with, so graphs compare equal across sources.
    pub fn key(&self, name: &str) -> String {
        KeyLayout::default().prefix(self.owner) + name
    }

    /// Asks the weight source for a parameter and checks the element count.
    pub fn fetch(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
    ) -> Result<Vec<f32>, OnnxExportError> {
        let param = Param {
            owner: self.owner,
            name,
            shape,
            init,
        };
        let data = self.weights.tensor(&param)?;
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(OnnxExportError::WeightSize {
                key: self.key(name),
                shape: shape.to_vec(),
                got: data.len(),
            });
        }
        Ok(data)
    }

    /// Adds a node named `<node prefix><name>`.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        let name = format!("{}{name}", self.node_prefix);
        self.g.node(&name, op, inputs, attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut r = SplitMix64(1234567);
        assert_eq!(r.next(), 6457827717110365317);
        assert_eq!(r.next(), 3203168211198807973);
    }

    #[test]
    fn seeded_normal_has_the_requested_moments() {
        let shape = [100_000];
        let p = Param {
            owner: Owner::Head,
            name: "0.weight",
            shape: &shape,
            init: Init::Normal {
                mean: 1.0,
                std: 0.5,
            },
        };
        let v = SeededWeights::new(7).tensor(&p).unwrap_or_default();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{var}");
    }

    #[test]
    fn layout_keys() {
        let l = KeyLayout::default();
        let p = |owner| Param {
            owner,
            name: "conv1.weight",
            shape: &[],
            init: Init::Uniform {
                low: 0.0,
                high: 1.0,
            },
        };
        assert_eq!(
            l.key(&p(Owner::Encoder { camera: None })),
            "encoder.conv1.weight"
        );
        assert_eq!(
            l.key(&p(Owner::Encoder {
                camera: Some("top")
            })),
            "encoders.top.conv1.weight"
        );
        assert_eq!(l.watched(), ["encoder.", "encoders.", "head."]);
    }
}
