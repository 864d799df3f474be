//! LeRobot's ACT (`lerobot/policies/act/modeling_act.py`, v0.6.1) as an ONNX graph written from its
//! `model.safetensors`, with LeRobot's key names.
//!
//! The inference path of `ACT.forward` with the VAE off (as `predict_action_chunk` runs it): the
//! latent is zero, so its token is `encoder_latent_input_proj.bias`; the state token is
//! `encoder_robot_state_input_proj(state)`; each camera goes through the one shared ResNet-18
//! backbone up to `layer4` (FrozenBatchNorm folded, eps 1e-5), a 1x1 conv to `dim_model` and
//! flattens to `h * w` tokens. Positions: `encoder_1d_feature_pos_embed` for the latent and state
//! tokens, `ACTSinusoidalPositionEmbedding2d` for image tokens (a constant of the feature map's
//! size, computed here with the same f32 operations). Post-norm transformer encoder layers
//! (`q = k = x + pos`, `v = x`), then decoder layers over zero queries with
//! `decoder_pos_embed`, the decoder's final LayerNorm, and `action_head`. Attention is
//! `nn.MultiheadAttention` (`in_proj_weight` split into q, k, v; q scaled by `1/sqrt(head_dim)`).
//!
//! Tokens are laid out `[sequence, dim_model]` (batch 1 dropped), so every linear layer is a
//! `Gemm` with the PyTorch `[out, in]` weight as is (`transB = 1`).

use super::config::ActConfig;
use anyhow::{bail, Context, Result};
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_models::onnx::resnet18;
use reflex_models::onnx::{OnnxExportError, Owner, Param, WeightSource};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Name of the weights file in a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// `nn.LayerNorm`'s default epsilon.
const LN_EPS: f32 = 1e-5;
/// The ResNet-18 feature width (`backbone_model.fc.in_features`).
const BACKBONE_CHANNELS: usize = 512;

/// One camera input of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActCamera {
    /// ONNX input name (the feature key, `observation.images.<camera>`).
    pub input: String,
    /// Image height and width in pixels (the feature's `[3, H, W]`).
    pub height: usize,
    pub width: usize,
}

/// What the graph is built for: the config's architecture and the features' sizes.
#[derive(Debug, Clone)]
pub struct ActGraphSpec {
    pub config: ActConfig,
    pub cameras: Vec<ActCamera>,
    /// ONNX input name of the state (`observation.state`) and its dimension.
    pub state_input: String,
    pub state_dim: usize,
    /// ONNX output name (`action`) and the action dimension: the output is
    /// `[1, chunk_size, action_dim]`, normalized as LeRobot's model outputs it.
    pub action_output: String,
    pub action_dim: usize,
}

/// A checkpoint's tensors, read on demand with every problem collected (missing, mis-shaped,
/// unreadable dtype) and reported at once by [`Checkpoint::finish`] with the file and keys.
pub struct Checkpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    wrong: Vec<String>,
}

impl Checkpoint {
    /// Reads `path` (a `model.safetensors`). Errors: unreadable or not safetensors.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            bytes,
            used: BTreeSet::new(),
            missing: vec![],
            wrong: vec![],
        })
    }

    /// Tensor `key` as f32 (F32, F16, BF16 or F64 in the file), which must have `shape`. A problem
    /// is recorded and zeros returned, so one report lists them all.
    pub fn get(&mut self, key: &str, shape: &[usize]) -> Vec<f32> {
        let n = shape.iter().product();
        let st = match SafeTensors::deserialize(&self.bytes) {
            Ok(st) => st,
            Err(_) => return vec![0.0; n],
        };
        let Ok(t) = st.tensor(key) else {
            self.missing.push(format!("{key} {shape:?}"));
            return vec![0.0; n];
        };
        self.used.insert(key.to_string());
        if t.shape() != shape {
            self.wrong
                .push(format!("{key} is {:?}, expected {shape:?}", t.shape()));
            return vec![0.0; n];
        }
        let d = t.data();
        match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            other => {
                self.wrong.push(format!("{key} is {other:?}, expected F32"));
                vec![0.0; n]
            }
        }
    }

    /// Errors with every missing, mis-shaped or unreadable key, and every key of the file not
    /// used except those `ignore` accepts (training-only tensors).
    pub fn finish(&mut self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let st = SafeTensors::deserialize(&self.bytes)
            .with_context(|| format!("{}: not a valid safetensors file", self.path.display()))?;
        let mut unexpected: Vec<String> = st
            .names()
            .into_iter()
            .filter(|k| !self.used.contains(*k) && !ignore(k))
            .cloned()
            .collect();
        unexpected.sort();
        if self.missing.is_empty() && self.wrong.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut msg = format!(
            "{} does not fit the policy in config.json: {} missing, {} mis-shaped or unreadable, {} unexpected",
            self.path.display(),
            self.missing.len(),
            self.wrong.len(),
            unexpected.len()
        );
        for k in &self.missing {
            msg.push_str(&format!("\n  missing: {k}"));
        }
        for k in &self.wrong {
            msg.push_str(&format!("\n  wrong: {k}"));
        }
        for k in unexpected.iter().take(20) {
            msg.push_str(&format!("\n  unexpected: {k}"));
        }
        bail!(msg)
    }
}

/// The backbone's parameters under `model.backbone.` (torchvision names below it).
struct BackboneWeights<'a>(&'a mut Checkpoint);

impl WeightSource for BackboneWeights<'_> {
    fn tensor(&mut self, param: &Param<'_>) -> Result<Vec<f32>, OnnxExportError> {
        Ok(self
            .0
            .get(&format!("model.backbone.{}", param.name), param.shape))
    }
}

/// `ACTSinusoidalPositionEmbedding2d(dim_model / 2)` for an `[h, w]` feature map, as `[h * w,
/// dim_model]` rows in token order (`b c h w -> (h w) b c`): the first half of each row is the
/// y embedding, the second the x embedding, each `[sin(p / f_0), cos(p / f_1), sin(p / f_2), ...]`
/// with `f_j = 10000^(2 floor(j / 2) / half)` and `p = (i + 1) / (n + 1e-6) * 2 pi`. f32 throughout,
/// like LeRobot's.
pub fn sine_position_2d(h: usize, w: usize, dim_model: usize) -> Vec<f32> {
    let half = dim_model / 2;
    let two_pi = std::f32::consts::TAU;
    let eps = 1e-6f32;
    let freq: Vec<f32> = (0..half)
        .map(|j| 10000f32.powf((2 * (j / 2)) as f32 / half as f32))
        .collect();
    let embed = |p: f32, out: &mut Vec<f32>| {
        for (j, f) in freq.iter().enumerate() {
            let a = p / f;
            out.push(if j % 2 == 0 { a.sin() } else { a.cos() });
        }
    };
    let mut rows = Vec::with_capacity(h * w * dim_model);
    for i in 0..h {
        for k in 0..w {
            let y = (i + 1) as f32 / (h as f32 + eps) * two_pi;
            let x = (k + 1) as f32 / (w as f32 + eps) * two_pi;
            embed(y, &mut rows);
            embed(x, &mut rows);
        }
    }
    rows
}

/// Builds the graph and returns the ONNX model bytes. Errors: the checkpoint does not fit
/// (every missing, mis-shaped and unexpected key listed with the file).
pub fn build(spec: &ActGraphSpec, ckpt: &mut Checkpoint) -> Result<Vec<u8>> {
    use prost::Message;
    let c = &spec.config;
    let d = c.dim_model;
    let mut g = GraphBuilder::new("lerobot_act");
    let state = g.input(&spec.state_input, &[1, spec.state_dim]);
    let images: Vec<String> = spec
        .cameras
        .iter()
        .map(|cam| g.input(&cam.input, &[1, 3, cam.height, cam.width]))
        .collect();

    // Tokens: latent, state, then each camera's feature map.
    let latent_w = "model.encoder_latent_input_proj.weight";
    ckpt.get(latent_w, &[d, c.latent_dim]);
    let latent_b = ckpt.get("model.encoder_latent_input_proj.bias", &[d]);
    let latent = g.initializer("model.encoder_latent_input_proj.bias", &[1, d], &latent_b);
    let state_tok = linear(
        &mut g,
        ckpt,
        &state,
        "model.encoder_robot_state_input_proj",
        spec.state_dim,
        d,
    );
    let mut tokens = vec![latent, state_tok];
    let mut pos = ckpt.get("model.encoder_1d_feature_pos_embed.weight", &[2, d]);
    let proj_w = ckpt.get(
        "model.encoder_img_feat_input_proj.weight",
        &[d, BACKBONE_CHANNELS, 1, 1],
    );
    let proj_b = ckpt.get("model.encoder_img_feat_input_proj.bias", &[d]);
    let proj_w = g.initializer(
        "model.encoder_img_feat_input_proj.weight",
        &[d, BACKBONE_CHANNELS, 1, 1],
        &proj_w,
    );
    let proj_b = g.initializer("model.encoder_img_feat_input_proj.bias", &[d], &proj_b);
    for (cam, image) in spec.cameras.iter().zip(&images) {
        let [h, w] = resnet18::feature_map_size(cam.height, cam.width);
        let fmap = resnet18::backbone(
            &mut g,
            &mut BackboneWeights(ckpt),
            Owner::Encoder { camera: None },
            &format!("{}.backbone.", cam.input),
            image,
        )?;
        let x = g.node(
            &format!("{}.img_feat_input_proj", cam.input),
            "Conv",
            &[&fmap, &proj_w, &proj_b],
            &[("kernel_shape", Attr::Ints(vec![1, 1]))],
        );
        let shape = g.shape_const(&[d as i64, (h * w) as i64]);
        let x = g.node(
            &format!("{}.flatten", cam.input),
            "Reshape",
            &[&x, &shape],
            &[],
        );
        let x = g.node(
            &format!("{}.tokens", cam.input),
            "Transpose",
            &[&x],
            &[("perm", Attr::Ints(vec![1, 0]))],
        );
        tokens.push(x);
        pos.extend(sine_position_2d(h, w, d));
    }
    let n_tokens = pos.len() / d;
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut x = g.node("encoder_in", "Concat", &refs, &[("axis", Attr::Int(0))]);
    let pos = g.initializer("encoder_pos", &[n_tokens, d], &pos);

    for l in 0..c.n_encoder_layers {
        let p = format!("model.encoder.layers.{l}");
        let q = g.node(&format!("{p}.q"), "Add", &[&x, &pos], &[]);
        let a = attention(
            &mut g,
            ckpt,
            &format!("{p}.self_attn"),
            c,
            [&q, &q, &x],
            [n_tokens; 2],
        );
        let s = g.node(&format!("{p}.add1"), "Add", &[&x, &a], &[]);
        let s = layer_norm(&mut g, ckpt, &s, &format!("{p}.norm1"), d);
        let f = feed_forward(&mut g, ckpt, &s, &p, c);
        let s2 = g.node(&format!("{p}.add2"), "Add", &[&s, &f], &[]);
        x = layer_norm(&mut g, ckpt, &s2, &format!("{p}.norm2"), d);
    }
    let memory = x;
    let mem_k = g.node("model.decoder.memory_k", "Add", &[&memory, &pos], &[]);

    let chunk = c.chunk_size;
    let dpos = ckpt.get("model.decoder_pos_embed.weight", &[chunk, d]);
    let dpos = g.initializer("model.decoder_pos_embed.weight", &[chunk, d], &dpos);
    let mut y = g.initializer("decoder_in", &[chunk, d], &vec![0.0; chunk * d]);
    for l in 0..c.n_decoder_layers {
        let p = format!("model.decoder.layers.{l}");
        let q = g.node(&format!("{p}.q"), "Add", &[&y, &dpos], &[]);
        let a = attention(
            &mut g,
            ckpt,
            &format!("{p}.self_attn"),
            c,
            [&q, &q, &y],
            [chunk; 2],
        );
        let s = g.node(&format!("{p}.add1"), "Add", &[&y, &a], &[]);
        let s = layer_norm(&mut g, ckpt, &s, &format!("{p}.norm1"), d);
        let q2 = g.node(&format!("{p}.q2"), "Add", &[&s, &dpos], &[]);
        let a2 = attention(
            &mut g,
            ckpt,
            &format!("{p}.multihead_attn"),
            c,
            [&q2, &mem_k, &memory],
            [chunk, n_tokens],
        );
        let s2 = g.node(&format!("{p}.add2"), "Add", &[&s, &a2], &[]);
        let s2 = layer_norm(&mut g, ckpt, &s2, &format!("{p}.norm2"), d);
        let f = feed_forward(&mut g, ckpt, &s2, &p, c);
        let s3 = g.node(&format!("{p}.add3"), "Add", &[&s2, &f], &[]);
        y = layer_norm(&mut g, ckpt, &s3, &format!("{p}.norm3"), d);
    }
    let y = layer_norm(&mut g, ckpt, &y, "model.decoder.norm", d);
    let a = linear(&mut g, ckpt, &y, "model.action_head", d, spec.action_dim);
    let shape = g.shape_const(&[1, chunk as i64, spec.action_dim as i64]);
    let out = g.node(&spec.action_output, "Reshape", &[&a, &shape], &[]);
    g.output(&out, &[1, chunk, spec.action_dim]);
    g.metadata(
        "reflex.source",
        "LeRobot ACT checkpoint (model.safetensors)",
    );

    let use_vae = c.use_vae;
    ckpt.finish(|k| {
        k.ends_with("num_batches_tracked") || (use_vae && (k.starts_with("model.vae_encoder")))
    })?;
    Ok(g.finish().encode_to_vec())
}

/// `nn.Linear(fan_in, out)` named `module` on `[n, fan_in]` rows: `Gemm(x, W, b, transB = 1)`.
fn linear(
    g: &mut GraphBuilder,
    ckpt: &mut Checkpoint,
    x: &str,
    module: &str,
    fan_in: usize,
    out: usize,
) -> String {
    let w = ckpt.get(&format!("{module}.weight"), &[out, fan_in]);
    let b = ckpt.get(&format!("{module}.bias"), &[out]);
    let w = g.initializer(&format!("{module}.weight"), &[out, fan_in], &w);
    let b = g.initializer(&format!("{module}.bias"), &[out], &b);
    g.node(module, "Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))])
}

fn layer_norm(
    g: &mut GraphBuilder,
    ckpt: &mut Checkpoint,
    x: &str,
    module: &str,
    d: usize,
) -> String {
    let w = ckpt.get(&format!("{module}.weight"), &[d]);
    let b = ckpt.get(&format!("{module}.bias"), &[d]);
    let w = g.initializer(&format!("{module}.weight"), &[d], &w);
    let b = g.initializer(&format!("{module}.bias"), &[d], &b);
    g.node(
        module,
        "LayerNormalization",
        &[x, &w, &b],
        &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(LN_EPS))],
    )
}

/// `linear2(relu(linear1(x)))` of layer `p`.
fn feed_forward(
    g: &mut GraphBuilder,
    ckpt: &mut Checkpoint,
    x: &str,
    p: &str,
    c: &ActConfig,
) -> String {
    let h = linear(
        g,
        ckpt,
        x,
        &format!("{p}.linear1"),
        c.dim_model,
        c.dim_feedforward,
    );
    let h = g.node(&format!("{p}.relu"), "Relu", &[&h], &[]);
    linear(
        g,
        ckpt,
        &h,
        &format!("{p}.linear2"),
        c.dim_feedforward,
        c.dim_model,
    )
}

/// `nn.MultiheadAttention` `module` (`in_proj_weight` `[3d, d]` split into q, k, v rows;
/// `out_proj`) on `[query, key, value]` rows of lengths `[lq, lk]`; returns `[lq, d]`.
fn attention(
    g: &mut GraphBuilder,
    ckpt: &mut Checkpoint,
    module: &str,
    c: &ActConfig,
    [q, k, v]: [&str; 3],
    [lq, lk]: [usize; 2],
) -> String {
    let d = c.dim_model;
    let heads = c.n_heads;
    let hd = d / heads;
    let w = ckpt.get(&format!("{module}.in_proj_weight"), &[3 * d, d]);
    let b = ckpt.get(&format!("{module}.in_proj_bias"), &[3 * d]);
    let mut proj = |x: &str, part: usize, name: &str| {
        let wn = g.initializer(
            &format!("{module}.in_proj_weight.{name}"),
            &[d, d],
            &w[part * d * d..(part + 1) * d * d],
        );
        let bn = g.initializer(
            &format!("{module}.in_proj_bias.{name}"),
            &[d],
            &b[part * d..(part + 1) * d],
        );
        g.node(
            &format!("{module}.{name}"),
            "Gemm",
            &[x, &wn, &bn],
            &[("transB", Attr::Int(1))],
        )
    };
    let qp = proj(q, 0, "q");
    let kp = proj(k, 1, "k");
    let vp = proj(v, 2, "v");
    let scale = g.scalar(1.0 / (hd as f32).sqrt());
    let qp = g.node(&format!("{module}.q_scaled"), "Mul", &[&qp, &scale], &[]);
    let mut heads_of = |x: &str, len: usize, perm: Vec<i64>, name: &str| {
        let shape = g.shape_const(&[len as i64, heads as i64, hd as i64]);
        let r = g.node(
            &format!("{module}.{name}_heads"),
            "Reshape",
            &[x, &shape],
            &[],
        );
        g.node(
            &format!("{module}.{name}_t"),
            "Transpose",
            &[&r],
            &[("perm", Attr::Ints(perm))],
        )
    };
    let qh = heads_of(&qp, lq, vec![1, 0, 2], "q");
    let kh = heads_of(&kp, lk, vec![1, 2, 0], "k");
    let vh = heads_of(&vp, lk, vec![1, 0, 2], "v");
    let scores = g.node(&format!("{module}.scores"), "MatMul", &[&qh, &kh], &[]);
    let probs = g.node(
        &format!("{module}.softmax"),
        "Softmax",
        &[&scores],
        &[("axis", Attr::Int(-1))],
    );
    let o = g.node(&format!("{module}.context"), "MatMul", &[&probs, &vh], &[]);
    let o = g.node(
        &format!("{module}.context_t"),
        "Transpose",
        &[&o],
        &[("perm", Attr::Ints(vec![1, 0, 2]))],
    );
    let shape = g.shape_const(&[lq as i64, d as i64]);
    let o = g.node(&format!("{module}.merge"), "Reshape", &[&o, &shape], &[]);
    linear(g, ckpt, &o, &format!("{module}.out_proj"), d, d)
}
