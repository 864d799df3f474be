//! ViT-S/16 as timm's `vit_small_patch16_224` builds it, minus the classifier: the transformer
//! encoder of the reference policies, and the shape of most pretrained visual backbones (DINO,
//! DINOv2-S, MAE) that robot policies fine-tune.
//!
//! Parameter names and shapes are timm's (a `Linear` weight is `[out, in]`). The graph multiplies
//! by the transpose, stored pre-transposed as `<name>.T`, the way `torch.onnx.export` lowers
//! `Linear` on 3-D inputs. The output is the class token after the final LayerNorm (timm's
//! `global_pool="token"`).

use super::builder::Attr;
use super::weights::{Init, Scope};
use super::OnnxExportError;

/// Embedding width, and the width of the feature vector.
pub const FEATURES: usize = 384;
const DEPTH: usize = 12;
const HEADS: usize = 6;
const HEAD_DIM: usize = FEATURES / HEADS;
const MLP: usize = 4 * FEATURES;
const PATCH: usize = 16;
/// Patches of a 224x224 image, plus the class token.
const TOKENS: usize = (224 / PATCH) * (224 / PATCH) + 1;
/// LayerNorm epsilon, timm's for ViTs.
pub const LN_EPS: f32 = 1e-6;

/// Adds the encoder for `image` ([1, 3, 224, 224]); returns the [1, 384] feature value.
pub(crate) fn encoder(s: &mut Scope<'_>, image: &str) -> Result<String, OnnxExportError> {
    let (d, n) = (FEATURES as i64, TOKENS as i64);
    let fan_in = 3 * PATCH * PATCH;
    let w = param(
        s,
        "patch_embed.proj.weight",
        &[FEATURES, 3, PATCH, PATCH],
        lecun(fan_in),
    )?;
    let b = param(s, "patch_embed.proj.bias", &[FEATURES], bias(fan_in))?;
    let p = PATCH as i64;
    let x = s.node(
        "patch_embed.proj",
        "Conv",
        &[image, &w, &b],
        &[
            ("kernel_shape", Attr::Ints(vec![p, p])),
            ("strides", Attr::Ints(vec![p, p])),
        ],
    );
    let shape = s.g.shape_const(&[1, d, n - 1]);
    let x = s.node("patch_embed.flatten", "Reshape", &[&x, &shape], &[]);
    let x = s.node(
        "patch_embed.transpose",
        "Transpose",
        &[&x],
        &[("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    let small = Init::Normal {
        mean: 0.0,
        std: 0.1,
    };
    let cls = param(s, "cls_token", &[1, 1, FEATURES], small)?;
    let x = s.node("cat_cls", "Concat", &[&cls, &x], &[("axis", Attr::Int(1))]);
    let pos = param(s, "pos_embed", &[1, TOKENS, FEATURES], small)?;
    let mut x = s.node("add_pos", "Add", &[&x, &pos], &[]);
    for i in 0..DEPTH {
        x = block(s, &x, i)?;
    }
    let idx = s.g.index_const(0);
    let cls = s.node("cls", "Gather", &[&x, &idx], &[("axis", Attr::Int(1))]);
    // LayerNorm acts on each token alone: normalizing only the class token after taking it is
    // the same as timm's norm-then-take, for 1/197 of the work.
    layer_norm(s, &cls, "norm")
}

/// One pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(.)).
fn block(s: &mut Scope<'_>, x: &str, i: usize) -> Result<String, OnnxExportError> {
    let (d, n) = (FEATURES as i64, TOKENS as i64);
    let p = format!("blocks.{i}");
    let h = layer_norm(s, x, &format!("{p}.norm1"))?;
    let qkv = linear(s, &h, &format!("{p}.attn.qkv"), FEATURES, 3 * FEATURES)?;
    // [1, N, 3*D] -> [1, N, 3, heads, head_dim] -> [3, 1, heads, N, head_dim], as timm does.
    let shape = s.g.shape_const(&[1, n, 3, HEADS as i64, HEAD_DIM as i64]);
    let qkv = s.node(
        &format!("{p}.attn.split_heads"),
        "Reshape",
        &[&qkv, &shape],
        &[],
    );
    let qkv = s.node(
        &format!("{p}.attn.permute"),
        "Transpose",
        &[&qkv],
        &[("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))],
    );
    let mut qkv_parts = vec![];
    for (j, part) in ["q", "k", "v"].iter().enumerate() {
        let idx = s.g.index_const(j as i64);
        qkv_parts.push(s.node(
            &format!("{p}.attn.{part}"),
            "Gather",
            &[&qkv, &idx],
            &[("axis", Attr::Int(0))],
        ));
    }
    let scale = s.g.scalar(1.0 / (HEAD_DIM as f32).sqrt());
    let q = s.node(
        &format!("{p}.attn.q_scaled"),
        "Mul",
        &[&qkv_parts[0], &scale],
        &[],
    );
    let kt = s.node(
        &format!("{p}.attn.k_t"),
        "Transpose",
        &[&qkv_parts[1]],
        &[("perm", Attr::Ints(vec![0, 1, 3, 2]))],
    );
    let logits = s.node(&format!("{p}.attn.logits"), "MatMul", &[&q, &kt], &[]);
    let attn = s.node(
        &format!("{p}.attn.softmax"),
        "Softmax",
        &[&logits],
        &[("axis", Attr::Int(-1))],
    );
    let o = s.node(
        &format!("{p}.attn.weighted"),
        "MatMul",
        &[&attn, &qkv_parts[2]],
        &[],
    );
    let o = s.node(
        &format!("{p}.attn.merge"),
        "Transpose",
        &[&o],
        &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
    );
    let shape = s.g.shape_const(&[1, n, d]);
    let o = s.node(
        &format!("{p}.attn.merge_heads"),
        "Reshape",
        &[&o, &shape],
        &[],
    );
    let o = linear(s, &o, &format!("{p}.attn.proj"), FEATURES, FEATURES)?;
    let x = s.node(&format!("{p}.add1"), "Add", &[x, &o], &[]);

    let h = layer_norm(s, &x, &format!("{p}.norm2"))?;
    let h = linear(s, &h, &format!("{p}.mlp.fc1"), FEATURES, MLP)?;
    let h = gelu(s, &h, &format!("{p}.mlp.act"));
    let h = linear(s, &h, &format!("{p}.mlp.fc2"), MLP, FEATURES)?;
    Ok(s.node(&format!("{p}.add2"), "Add", &[&x, &h], &[]))
}

/// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in the five ops `torch.onnx.export` writes for it.
fn gelu(s: &mut Scope<'_>, x: &str, name: &str) -> String {
    let (sqrt2, one, half) = (
        s.g.scalar(std::f32::consts::SQRT_2),
        s.g.scalar(1.0),
        s.g.scalar(0.5),
    );
    let t = s.node(&format!("{name}.div"), "Div", &[x, &sqrt2], &[]);
    let t = s.node(&format!("{name}.erf"), "Erf", &[&t], &[]);
    let t = s.node(&format!("{name}.add"), "Add", &[&t, &one], &[]);
    let t = s.node(&format!("{name}.mul"), "Mul", &[x, &t], &[]);
    s.node(&format!("{name}.half"), "Mul", &[&t, &half], &[])
}

fn layer_norm(s: &mut Scope<'_>, x: &str, name: &str) -> Result<String, OnnxExportError> {
    let w = param(
        s,
        &format!("{name}.weight"),
        &[FEATURES],
        Init::Uniform {
            low: 0.8,
            high: 1.2,
        },
    )?;
    let b = param(
        s,
        &format!("{name}.bias"),
        &[FEATURES],
        Init::Uniform {
            low: -0.1,
            high: 0.1,
        },
    )?;
    Ok(s.node(
        name,
        "LayerNormalization",
        &[x, &w, &b],
        &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(LN_EPS))],
    ))
}

/// `torch.nn.Linear(fan_in, out)` on a [1, N, fan_in] input: MatMul by the stored-transposed
/// weight, then Add the bias.
fn linear(
    s: &mut Scope<'_>,
    x: &str,
    name: &str,
    fan_in: usize,
    out: usize,
) -> Result<String, OnnxExportError> {
    let wt_name = s.key(&format!("{name}.weight.T"));
    if !s.g.has(&wt_name) {
        let w = s.fetch(&format!("{name}.weight"), &[out, fan_in], lecun(fan_in))?;
        let mut wt = vec![0.0; w.len()];
        for (o, row) in w.chunks_exact(fan_in).enumerate() {
            for (i, v) in row.iter().enumerate() {
                wt[i * out + o] = *v;
            }
        }
        s.g.initializer(&wt_name, &[fan_in, out], &wt);
    }
    let b = param(s, &format!("{name}.bias"), &[out], bias(fan_in))?;
    let y = s.node(&format!("{name}.matmul"), "MatMul", &[x, &wt_name], &[]);
    Ok(s.node(name, "Add", &[&y, &b], &[]))
}

/// The initializer for parameter `name`, stored as is (fetched once per encoder).
fn param(
    s: &mut Scope<'_>,
    name: &str,
    shape: &[usize],
    init: Init,
) -> Result<String, OnnxExportError> {
    let key = s.key(name);
    if !s.g.has(&key) {
        let data = s.fetch(name, shape, init)?;
        s.g.initializer(&key, shape, &data);
    }
    Ok(key)
}

/// Unit-variance outputs for unit-variance inputs: attention logits stay O(1) after the 1/8
/// scale, so the seeded attention is neither uniform nor one-hot.
fn lecun(fan_in: usize) -> Init {
    Init::Normal {
        mean: 0.0,
        std: (1.0 / fan_in as f32).sqrt(),
    }
}

/// PyTorch's default `Linear`/`Conv` bias init.
fn bias(fan_in: usize) -> Init {
    let b = (1.0 / fan_in as f32).sqrt();
    Init::Uniform { low: -b, high: b }
}

/// Trainable parameters as PyTorch counts them: 21,665,664.
pub fn param_count() -> u64 {
    let (d, m) = (FEATURES, MLP);
    let linear = |i: usize, o: usize| i * o + o;
    let ln = 2 * d;
    let block = ln + linear(d, 3 * d) + linear(d, d) + ln + linear(d, m) + linear(m, d);
    let embed = linear(3 * PATCH * PATCH, d) + d + TOKENS * d;
    (embed + DEPTH * block + ln) as u64
}

/// Multiply-accumulates of the patch embedding and the matrix products for a 224x224 image
/// (about 4.6 G); softmax, norms and GELU are not counted.
pub fn macs() -> u64 {
    let (d, n, m) = (FEATURES, TOKENS, MLP);
    let patches = (n - 1) * 3 * PATCH * PATCH * d;
    let block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m;
    (patches + DEPTH * block) as u64
}
