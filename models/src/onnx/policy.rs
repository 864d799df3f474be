//! A whole reference policy: one image encoder per camera, their features and the normalized
//! state concatenated, an MLP head to one action or a chunk of them.
//!
//! This is the common skeleton of single-step behaviour cloning and of chunked policies (ACT,
//! Diffusion Policy's observation encoder) and it is what the runtime must serve at rate on a
//! board, so the demo, the benchmarks and the runtime's tests use it at full size.
//!
//! Graph interface: inputs `image.<camera>` [1, 3, 224, 224] (preprocessed, NCHW) in camera
//! order, then `state` [1, state_dim] (already normalized; absent when `state_dim` is 0); output
//! `action` [1, action_dim] or [1, horizon, action_dim] (normalized).
//!
//! Parameters: with `shared_encoder` every camera's branch uses the one encoder `encoder.*`;
//! otherwise camera `c` has its own `encoders.<c>.*` (an `nn.ModuleDict` keyed by camera name).
//! The head is an `nn.Sequential`: `head.0` Linear, ReLU, `head.2` Linear, ReLU, ..., Linear to
//! the output. Initializers in the ONNX file carry these default-layout keys whatever checkpoint
//! layout the weights were read with.

use super::builder::{Attr, GraphBuilder};
use super::weights::{Init, Owner, Scope, WeightSource};
use super::{resnet18, vit, OnnxExportError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tract_onnx::pb::ModelProto;

/// Side of the square images the encoders take.
pub const IMAGE_SIZE: usize = 224;

/// The image encoder of every camera branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncoderKind {
    /// torchvision ResNet-18 without `fc`: 512 features.
    #[serde(rename = "resnet18")]
    Resnet18,
    /// timm `vit_small_patch16_224` without `head`: 384 features (the class token).
    #[serde(rename = "vit-s16")]
    VitS16,
}

impl EncoderKind {
    /// Width of the feature vector of one camera.
    pub fn features(self) -> usize {
        match self {
            EncoderKind::Resnet18 => resnet18::FEATURES,
            EncoderKind::VitS16 => vit::FEATURES,
        }
    }

    /// Trainable parameters of one encoder, as PyTorch counts them.
    pub fn param_count(self) -> u64 {
        match self {
            EncoderKind::Resnet18 => resnet18::param_count(),
            EncoderKind::VitS16 => vit::param_count(),
        }
    }

    /// Multiply-accumulates of one encoder on one 224x224 image.
    pub fn macs(self) -> u64 {
        match self {
            EncoderKind::Resnet18 => resnet18::macs(),
            EncoderKind::VitS16 => vit::macs(),
        }
    }
}

/// What the head predicts per inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HeadKind {
    /// One action: output [1, action_dim].
    Single,
    /// `horizon` future actions: output [1, horizon, action_dim].
    Chunk { horizon: usize },
}

/// The architecture of a reference policy, as written in a policy config:
///
/// ```toml
/// encoder = "resnet18"          # or "vit-s16"
/// cameras = ["top", "wrist"]
/// shared_encoder = false
/// state_dim = 6
/// action_dim = 6
/// hidden = [512, 512]
/// head = { kind = "chunk", horizon = 20 }   # or { kind = "single" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyArch {
    pub encoder: EncoderKind,
    /// Camera names: ASCII letters, digits, `_` and `-` (they become ONNX input names and
    /// `nn.ModuleDict` keys).
    pub cameras: Vec<String>,
    /// One encoder for all cameras instead of one per camera.
    #[serde(default)]
    pub shared_encoder: bool,
    pub state_dim: usize,
    pub action_dim: usize,
    /// Widths of the head's hidden layers (ReLU after each); empty for a single Linear.
    #[serde(default)]
    pub hidden: Vec<usize>,
    pub head: HeadKind,
}

impl PolicyArch {
    pub fn validate(&self) -> Result<(), OnnxExportError> {
        let bad = |why: String| Err(OnnxExportError::InvalidArch(why));
        if self.cameras.is_empty() {
            return bad("no cameras: a policy needs at least one".into());
        }
        let mut seen = BTreeSet::new();
        for c in &self.cameras {
            let ok = !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
            if !ok {
                return bad(format!(
                    "camera name `{c}`: use ASCII letters, digits, `_` and `-` only"
                ));
            }
            if !seen.insert(c) {
                return bad(format!("camera `{c}` is listed twice"));
            }
        }
        if self.action_dim == 0 {
            return bad("action_dim is 0".into());
        }
        if let Some(i) = self.hidden.iter().position(|&h| h == 0) {
            return bad(format!("hidden[{i}] is 0"));
        }
        if self.head == (HeadKind::Chunk { horizon: 0 }) {
            return bad("chunk head with horizon 0".into());
        }
        Ok(())
    }

    /// Width of the head's input: every camera's features, then the state.
    pub fn head_input(&self) -> usize {
        self.cameras.len() * self.encoder.features() + self.state_dim
    }

    /// The shape of the `action` output.
    pub fn action_shape(&self) -> Vec<usize> {
        match self.head {
            HeadKind::Single => vec![1, self.action_dim],
            HeadKind::Chunk { horizon } => vec![1, horizon, self.action_dim],
        }
    }

    /// (in, out) of each Linear of the head, in order.
    fn head_layers(&self) -> Vec<(usize, usize)> {
        let out = match self.head {
            HeadKind::Single => self.action_dim,
            HeadKind::Chunk { horizon } => horizon * self.action_dim,
        };
        let mut widths = vec![self.head_input()];
        widths.extend(&self.hidden);
        widths.push(out);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    fn encoder_count(&self) -> u64 {
        if self.shared_encoder {
            1
        } else {
            self.cameras.len() as u64
        }
    }
}

/// Builds the ONNX graph of `arch` with weights from `weights` (see the module doc for names).
pub fn build_policy(
    arch: &PolicyArch,
    weights: &mut dyn WeightSource,
) -> Result<ModelProto, OnnxExportError> {
    arch.validate()?;
    let mut g = GraphBuilder::new("reflex_policy");
    let arch_json =
        serde_json::to_string(arch).map_err(|e| OnnxExportError::InvalidArch(e.to_string()))?;
    g.metadata("reflex.arch", &arch_json);
    let side = IMAGE_SIZE;
    let images: Vec<String> = arch
        .cameras
        .iter()
        .map(|c| g.input(&format!("image.{c}"), &[1, 3, side, side]))
        .collect();
    let state = (arch.state_dim > 0).then(|| g.input("state", &[1, arch.state_dim]));

    let mut features = vec![];
    for (camera, image) in arch.cameras.iter().zip(&images) {
        let owner = Owner::Encoder {
            camera: (!arch.shared_encoder).then_some(camera.as_str()),
        };
        let mut s = Scope {
            g: &mut g,
            weights: &mut *weights,
            owner,
            node_prefix: format!("{camera}/"),
        };
        features.push(match arch.encoder {
            EncoderKind::Resnet18 => resnet18::encoder(&mut s, image)?,
            EncoderKind::VitS16 => vit::encoder(&mut s, image)?,
        });
    }
    features.extend(state);

    let mut s = Scope {
        g: &mut g,
        weights: &mut *weights,
        owner: Owner::Head,
        node_prefix: "head/".into(),
    };
    let mut x = match features.as_slice() {
        [only] => only.clone(),
        all => {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            s.node("concat", "Concat", &refs, &[("axis", Attr::Int(1))])
        }
    };
    let layers = arch.head_layers();
    for (i, &(fan_in, out)) in layers.iter().enumerate() {
        let last = i + 1 == layers.len();
        let idx = 2 * i;
        // Kaiming for layers feeding a ReLU. The last layer is scaled down: the seeded ResNet's
        // features have an RMS near 3 (its BatchNorm statistics are drawn, not measured), and
        // this keeps its normalized actions near unit scale, inside a manifest's limits; the
        // ViT's, LayerNorm-ed, come out smaller.
        let std = if last { 0.3 } else { 2f32.sqrt() } / (fan_in as f32).sqrt();
        let b = (1.0 / fan_in as f32).sqrt();
        let w = s.fetch(
            &format!("{idx}.weight"),
            &[out, fan_in],
            Init::Normal { mean: 0.0, std },
        )?;
        let bias = s.fetch(
            &format!("{idx}.bias"),
            &[out],
            Init::Uniform { low: -b, high: b },
        )?;
        let w =
            s.g.initializer(&s.key(&format!("{idx}.weight")), &[out, fan_in], &w);
        let bias =
            s.g.initializer(&s.key(&format!("{idx}.bias")), &[out], &bias);
        let gemm_attrs = [("transB", Attr::Int(1))];
        if last && arch.head == HeadKind::Single {
            x = s.g.node("action", "Gemm", &[&x, &w, &bias], &gemm_attrs);
        } else {
            x = s.node(&idx.to_string(), "Gemm", &[&x, &w, &bias], &gemm_attrs);
        }
        if !last {
            x = s.node(&format!("{}", idx + 1), "Relu", &[&x], &[]);
        }
    }
    if let HeadKind::Chunk { horizon } = arch.head {
        let shape =
            s.g.shape_const(&[1, horizon as i64, arch.action_dim as i64]);
        x = s.g.node("action", "Reshape", &[&x, &shape], &[]);
    }
    g.output(&x, &arch.action_shape());
    weights.finish()?;
    Ok(g.finish())
}

/// [`build_policy`], encoded as the bytes of a `.onnx` file.
pub fn export_policy(
    arch: &PolicyArch,
    weights: &mut dyn WeightSource,
) -> Result<Vec<u8>, OnnxExportError> {
    Ok(prost::Message::encode_to_vec(&build_policy(arch, weights)?))
}

/// Trainable parameters of the policy as PyTorch counts them (BatchNorm weight and bias
/// included, running statistics not; a shared encoder counted once).
pub fn param_count(arch: &PolicyArch) -> u64 {
    let head: usize = arch.head_layers().iter().map(|(i, o)| i * o + o).sum();
    arch.encoder_count() * arch.encoder.param_count() + head as u64
}

/// Multiply-accumulates of one inference (convolutions and matrix products; FLOPs are about
/// twice this). Every camera runs its encoder, shared or not.
pub fn macs(arch: &PolicyArch) -> u64 {
    let head: usize = arch.head_layers().iter().map(|(i, o)| i * o).sum();
    arch.cameras.len() as u64 * arch.encoder.macs() + head as u64
}
