//! ResNet-18 as torchvision builds it, minus `fc`: the encoder most visuomotor policies (Diffusion
//! Policy, ACT, LeRobot's defaults) start from.
//!
//! Parameter names and shapes are torchvision's, so a `resnet18().state_dict()` (or a policy that
//! holds one) loads as is. BatchNorm runs in eval mode at inference and is folded into the
//! preceding convolution here, as `torch.onnx.export` does with constant folding: one Conv with a
//! bias per conv/bn pair, nothing for the runtime to fuse.

use super::builder::Attr;
use super::weights::{Init, Scope};
use super::OnnxExportError;

/// Width of the feature vector (after global average pooling).
pub const FEATURES: usize = 512;
/// BatchNorm epsilon, torchvision's default.
pub const BN_EPS: f32 = 1e-5;
/// (channels, stride of the first block) for `layer1`..`layer4`; two BasicBlocks each.
const STAGES: [(usize, usize); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];
const BLOCKS_PER_STAGE: usize = 2;

/// Adds the encoder for `image` ([1, 3, 224, 224]); returns the [1, 512] feature value.
pub(crate) fn encoder(s: &mut Scope<'_>, image: &str) -> Result<String, OnnxExportError> {
    let x = feature_map(s, image)?;
    let pooled = s.node("avgpool", "GlobalAveragePool", &[&x], &[]);
    Ok(s.node("flatten", "Flatten", &[&pooled], &[("axis", Attr::Int(1))]))
}

/// Adds ResNet-18 up to `layer4` (what torchvision's `IntermediateLayerGetter(return_layers=
/// {"layer4": ..})` returns, LeRobot ACT's backbone) for `image` (`[1, 3, H, W]`, any size):
/// returns the `[1, 512, h, w]` feature map, `h, w` from [`feature_map_size`]. Parameters are
/// asked of `weights` with `owner` and torchvision's names (`conv1.weight`, `layer1.0.bn1.
/// running_var`, ...); BatchNorm (or torchvision's `FrozenBatchNorm2d`, the same eval formula with
/// the same eps 1e-5) is folded into its convolution. Nodes are named `<node_prefix><module>`;
/// a second call with the same `owner` reuses the first call's folded initializers (one backbone
/// shared by every camera). Errors: what `weights` returns.
pub fn backbone(
    g: &mut super::builder::GraphBuilder,
    weights: &mut dyn super::weights::WeightSource,
    owner: super::weights::Owner<'_>,
    node_prefix: &str,
    image: &str,
) -> Result<String, OnnxExportError> {
    let mut s = Scope {
        g,
        weights,
        owner,
        node_prefix: node_prefix.to_string(),
    };
    feature_map(&mut s, image)
}

/// The `[h, w]` of [`backbone`]'s feature map for an `[H, W]` image: the 7x7 stride-2 stem, the
/// stride-2 max pool and the three stride-2 stages, each `floor((n + 2p - k) / s) + 1`.
pub fn feature_map_size(height: usize, width: usize) -> [usize; 2] {
    let down = |n: usize, k: usize, p: usize| (n + 2 * p - k) / 2 + 1;
    let f = |n: usize| {
        let mut n = down(down(n, 7, 3), 3, 1);
        for _ in 0..3 {
            n = down(n, 3, 1);
        }
        n
    };
    [f(height), f(width)]
}

fn feature_map(s: &mut Scope<'_>, image: &str) -> Result<String, OnnxExportError> {
    let x = conv_bn(s, image, "conv1", "bn1", [3, 64, 7, 2, 3], 1.0)?;
    let x = s.node("relu", "Relu", &[&x], &[]);
    let mut x = s.node(
        "maxpool",
        "MaxPool",
        &[&x],
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    let mut cin = 64;
    for (stage, &(cout, first_stride)) in STAGES.iter().enumerate() {
        for block in 0..BLOCKS_PER_STAGE {
            let p = format!("layer{}.{block}", stage + 1);
            let stride = if block == 0 { first_stride } else { 1 };
            let y = conv_bn(
                s,
                &x,
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                [cin, cout, 3, stride, 1],
                1.0,
            )?;
            let y = s.node(&format!("{p}.relu"), "Relu", &[&y], &[]);
            // The last BN of a residual branch gets a smaller seeded gamma, like a trained
            // network's, so the residual sum does not double the variance at every block.
            let y = conv_bn(
                s,
                &y,
                &format!("{p}.conv2"),
                &format!("{p}.bn2"),
                [cout, cout, 3, 1, 1],
                0.4,
            )?;
            let identity = if stride != 1 || cin != cout {
                conv_bn(
                    s,
                    &x,
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    [cin, cout, 1, stride, 0],
                    1.0,
                )?
            } else {
                x
            };
            let sum = s.node(&format!("{p}.add"), "Add", &[&y, &identity], &[]);
            x = s.node(&format!("{p}.relu_out"), "Relu", &[&sum], &[]);
            cin = cout;
        }
    }
    Ok(x)
}

/// A bias-free `conv` (`[cin, cout, kernel, stride, pad]`) followed by eval-mode BatchNorm `bn`,
/// folded into one Conv. `gamma` is the centre of the seeded BN weight.
fn conv_bn(
    s: &mut Scope<'_>,
    x: &str,
    conv: &str,
    bn: &str,
    [cin, cout, k, stride, pad]: [usize; 5],
    gamma: f32,
) -> Result<String, OnnxExportError> {
    let (w_name, b_name) = (
        s.key(&format!("{conv}.weight")),
        s.key(&format!("{conv}.bias")),
    );
    // A shared encoder's second branch reuses the folded initializers of the first.
    if !s.g.has(&w_name) {
        let fan_in = cin * k * k;
        let normal = |std| Init::Normal { mean: 0.0, std };
        let uniform = |low, high| Init::Uniform { low, high };
        let mut w = s.fetch(
            &format!("{conv}.weight"),
            &[cout, cin, k, k],
            normal((2.0 / fan_in as f32).sqrt()),
        )?;
        let g = s.fetch(
            &format!("{bn}.weight"),
            &[cout],
            uniform(0.8 * gamma, 1.2 * gamma),
        )?;
        let beta = s.fetch(&format!("{bn}.bias"), &[cout], uniform(-0.1, 0.1))?;
        let mean = s.fetch(&format!("{bn}.running_mean"), &[cout], uniform(-0.1, 0.1))?;
        let var = s.fetch(&format!("{bn}.running_var"), &[cout], uniform(0.8, 1.2))?;
        let mut bias = vec![0.0; cout];
        for (o, filter) in w.chunks_exact_mut(cin * k * k).enumerate() {
            let scale = g[o] / (var[o] + BN_EPS).sqrt();
            filter.iter_mut().for_each(|v| *v *= scale);
            bias[o] = beta[o] - mean[o] * scale;
        }
        s.g.initializer(&w_name, &[cout, cin, k, k], &w);
        s.g.initializer(&b_name, &[cout], &bias);
    }
    let (k, stride, pad) = (k as i64, stride as i64, pad as i64);
    Ok(s.node(
        conv,
        "Conv",
        &[x, &w_name, &b_name],
        &[
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![stride, stride])),
            ("pads", Attr::Ints(vec![pad, pad, pad, pad])),
        ],
    ))
}

/// Trainable parameters as PyTorch counts them (BN weight and bias included, running statistics
/// not): 11,176,512.
pub fn param_count() -> u64 {
    // conv weight + BN weight and bias
    let conv_bn = |cin: usize, cout: usize, k: usize| (cin * cout * k * k + 2 * cout) as u64;
    let mut n = conv_bn(3, 64, 7);
    let mut cin = 64;
    for &(cout, stride) in &STAGES {
        for block in 0..BLOCKS_PER_STAGE {
            n += conv_bn(cin, cout, 3) + conv_bn(cout, cout, 3);
            if block == 0 && (stride != 1 || cin != cout) {
                n += conv_bn(cin, cout, 1);
            }
            cin = cout;
        }
    }
    n
}

/// Multiply-accumulates of the convolutions for a 224x224 image (about 1.81 G).
pub fn macs() -> u64 {
    let conv = |hw: usize, cin: usize, cout: usize, k: usize| (hw * hw * cin * cout * k * k) as u64;
    let mut n = conv(112, 3, 64, 7);
    let (mut hw, mut cin) = (56, 64);
    for &(cout, stride) in &STAGES {
        for block in 0..BLOCKS_PER_STAGE {
            let s = if block == 0 { stride } else { 1 };
            hw /= s;
            n += conv(hw, cin, cout, 3) + conv(hw, cout, cout, 3);
            if s != 1 || cin != cout {
                n += conv(hw, cin, cout, 1);
            }
            cin = cout;
        }
    }
    n
}
