//! The operator form of an int8 plan: the integer ops tract and ONNX Runtime run on the CPU, from
//! the same plan and calibration as the QDQ form ([`super::graph::apply_int8`]).
//!
//! Each quantized node becomes `QuantizeLinear` on its activation inputs (shared between
//! consumers), one standard `ai.onnx` integer op, and `DequantizeLinear` back to float under the
//! node's old output name, so everything else in the graph (norms, Softmax, the kept-float last
//! layer, residual adds) is untouched and stays float, as in the QDQ form:
//! - `Conv` -> `QLinearConv`: uint8 activations (per tensor), int8 weights per output channel
//!   (zero point 0), int32 bias with scale `x_scale * w_scale[c]`;
//! - `MatMul` -> `QLinearMatMul`: a constant right-hand side per output column (last axis), an
//!   activation right-hand side (attention) per tensor. Attention scores that go into a Softmax
//!   are the exception: that MatMul stays float on its dequantized int8 inputs (QDQ style).
//!   Measured: with an integer `QK^T` whose int8 output is dequantized into Softmax and the
//!   probabilities requantized, tract 0.23 computed the reference ViT-S/16 policy 0.6 to 0.8
//!   (normalized action units) away from fp32 while ONNX Runtime, on the same file, stayed
//!   within 0.04; without the requantized scores tract agrees with ONNX Runtime to 0.02. The
//!   cause inside tract was not pinned down;
//! - `Gemm` (alpha = beta = 1, no transA) -> `QLinearMatMul` on the weight laid out `[K, N]`, then
//!   a float `Add` of the bias after the dequantization.
//!
//! Activations are uint8 with zero point 128: the symmetric int8 grid of the QDQ form shifted by
//! 128, so the values and results are the same (measured: tract and ONNX Runtime give outputs
//! identical to the int8-activation form on the reference ResNet-18). It is the layout integer
//! kernels on x86 are built for (u8 x s8 products): in `cargo bench --bench quantized` (2
//! threads, AVX-512 VNNI EPYC) ONNX Runtime 1.23 ran the ResNet-18 operator form in 6.95 ms
//! with uint8 activations and 77.1 ms with int8 ones (fp32: 17.2 and 17.1 ms in the same
//! runs); tract ran both at the same speed (93.5 and 81.1 ms, fp32 30.0 and 29.4 ms).
//!
//! The output scale of each op is its node's calibrated output range. For Gemm that range
//! includes the bias, which is added after the integer op; the bias is small beside the range in
//! the policies here, so the step is barely wider than it could be. A node this form cannot
//! express (a non-constant weight, a Gemm with alpha/beta/transA) is left in float and named in
//! the returned list.
//!
//! No com.microsoft ops (QGemm, QLinearAdd): tract 0.23 loads only the standard ones.
//! Consecutive DequantizeLinear -> QuantizeLinear pairs are not elided: in the reference
//! policies no quantized node feeds another directly (a ReLU, Add, reshape or norm sits between),
//! so there would be nothing to elide.

use super::graph::{
    activation_scale, drop_initializer_inputs, f32_tensor, floats, graph_mut, i8_tensor,
    int_attr_of, node, quantize_weight, tensor, Int8Plan, Names,
};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use tract_onnx::pb::{tensor_proto::DataType, NodeProto, TensorProto};

/// Zero point of the uint8 activations: 128, so the uint8 grid is the symmetric int8 grid of
/// the QDQ form shifted by 128 (same values, same rounding).
fn u8_zero_point(name: &str) -> TensorProto {
    tensor(name, &[], DataType::Uint8, vec![ACT_ZERO_POINT])
}

/// See [`u8_zero_point`].
const ACT_ZERO_POINT: u8 = 128;

/// Scale and zero-point initializers of a per-tensor quantized activation, and its int8 value.
struct QAct {
    q: String,
    scale: String,
    zero: String,
}

/// Nodes of the plan that the operator form computes in float.
#[derive(Debug, Default)]
pub struct Floats {
    /// Not expressible as an integer op (non-constant weight; Gemm with alpha, beta, transA).
    pub unsupported: Vec<String>,
    /// Attention-score MatMuls into a Softmax: float MatMul on the dequantized int8 inputs.
    pub scores: Vec<String>,
}

/// Applies `plan` in operator form; `amax` holds the calibrated range of every planned
/// activation and every quantized node's output. Returns the model and the nodes computed in
/// float.
pub fn apply(
    m: &tract_onnx::pb::ModelProto,
    plan: &Int8Plan,
    amax: &BTreeMap<String, f32>,
) -> Result<(tract_onnx::pb::ModelProto, Floats)> {
    let mut m = m.clone();
    let g = graph_mut(&mut m)?;
    drop_initializer_inputs(g);
    let mut names = Names::of(g);
    let inits = super::graph::initializers_by_name(g);
    let quantized: HashSet<&str> = plan.quantized_nodes.iter().map(String::as_str).collect();
    let range = |v: &str| {
        amax.get(v)
            .copied()
            .with_context(|| format!("no calibrated range for `{v}`"))
    };
    let consumers = consumers_of(&g.node);
    let mut new_inits: Vec<TensorProto> = vec![];
    let mut acts: HashMap<String, QAct> = HashMap::new();
    let mut nodes: Vec<NodeProto> = vec![];
    let mut floats_left = Floats::default();
    let old_nodes = std::mem::take(&mut g.node);
    for n in old_nodes {
        if !quantized.contains(n.name.as_str()) {
            nodes.push(n);
            continue;
        }
        let op = n.op_type.as_str();
        let weight = n.input.get(1).and_then(|w| inits.get(w));
        let a_is_act = n
            .input
            .first()
            .is_some_and(|a| !inits.contains_key(a.as_str()));
        let gemm_ok = op != "Gemm"
            || (n.attribute.iter().all(|a| match a.name.as_str() {
                "alpha" | "beta" => a.f == 1.0,
                "transA" => a.i == 0,
                _ => true,
            }) && weight.is_some_and(|w| w.dims.len() == 2));
        let conv_ok = op != "Conv" || weight.is_some();
        if !a_is_act || !gemm_ok || !conv_ok || n.output.len() != 1 {
            log::warn!(
                "int8 operator form: `{}` ({op}) left in float (unsupported inputs/attributes)",
                n.name
            );
            floats_left.unsupported.push(n.name.clone());
            nodes.push(n);
            continue;
        }
        // Attention scores go into Softmax in float: QDQ style (float MatMul on the dequantized
        // int8 inputs), see the module docs.
        let to_softmax = weight.is_none() && feeds_softmax(&consumers, &n.output[0]);
        // Quantize (or reuse) an activation input.
        let mut quantize_act = |v: &str, nodes: &mut Vec<NodeProto>| -> Result<()> {
            if acts.contains_key(v) {
                return Ok(());
            }
            let scale = names.fresh(&format!("{v}_scale"));
            let zero = names.fresh(&format!("{v}_zero_point"));
            let q = names.fresh(&format!("{v}_quantized"));
            new_inits.push(f32_tensor(&scale, &[], &[activation_scale(range(v)?)]));
            new_inits.push(u8_zero_point(&zero));
            let qn = names.fresh(&format!("{v}_QuantizeLinear"));
            nodes.push(node(&qn, "QuantizeLinear", &[v, &scale, &zero], &q, vec![]));
            acts.insert(v.to_string(), QAct { q, scale, zero });
            Ok(())
        };
        let a = n.input[0].clone();
        quantize_act(&a, &mut nodes)?;
        if weight.is_none() {
            quantize_act(&n.input[1], &mut nodes)?;
        }
        if to_softmax {
            let mut deq = vec![];
            for v in n.input.iter().take(2) {
                let qa = &acts[v];
                let d = names.fresh(&format!("{v}_dequantized"));
                nodes.push(node(
                    &names.fresh(&format!("{v}_DequantizeLinear")),
                    "DequantizeLinear",
                    &[&qa.q, &qa.scale, &qa.zero],
                    &d,
                    vec![],
                ));
                deq.push(d);
            }
            floats_left.scores.push(n.name.clone());
            let mut f = n.clone();
            f.input = deq;
            nodes.push(f);
            continue;
        }
        let out = n.output[0].clone();
        let ys = activation_scale(range(&out)?);
        let ysn = names.fresh(&format!("{out}_scale"));
        let yzn = names.fresh(&format!("{out}_zero_point"));
        let yq = names.fresh(&format!("{out}_quantized"));
        new_inits.push(f32_tensor(&ysn, &[], &[ys]));
        new_inits.push(u8_zero_point(&yzn));
        let xa = &acts[&a];
        let xs = amax
            .get(&a)
            .map(|r| activation_scale(*r))
            .context("activation scale")?;
        // The right-hand side: (int8 value, scale, zero point) names.
        let (bq, bs, bz, w_scales) = match weight {
            Some(w) => {
                let data = floats(w)?;
                // Conv weights per output channel (axis 0); MatMul/Gemm weights as [K, N],
                // per column (axis 1).
                let (dims, data, axis) = match op {
                    "Conv" => (w.dims.clone(), data, 0),
                    "Gemm" if int_attr_of(&n, "transB") == Some(1) => {
                        let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
                        let mut t = vec![0f32; data.len()];
                        for r in 0..rows {
                            for c in 0..cols {
                                t[c * rows + r] = data[r * cols + c];
                            }
                        }
                        (vec![w.dims[1], w.dims[0]], t, 1)
                    }
                    _ => (w.dims.clone(), data, w.dims.len().saturating_sub(1)),
                };
                let (q, scales) = quantize_weight(&data, &dims, Some(axis));
                let c = scales.len() as i64;
                let qn = names.fresh(&format!("{}_quantized", w.name));
                let sn = names.fresh(&format!("{}_scale", w.name));
                let zn = names.fresh(&format!("{}_zero_point", w.name));
                new_inits.push(i8_tensor(&qn, &dims, &q));
                new_inits.push(f32_tensor(&sn, &[c], &scales));
                new_inits.push(i8_tensor(&zn, &[c], &vec![0; scales.len()]));
                (qn, sn, zn, scales)
            }
            None => {
                let b = &acts[&n.input[1]];
                (b.q.clone(), b.scale.clone(), b.zero.clone(), vec![])
            }
        };
        let mut inputs: Vec<String> = vec![
            xa.q.clone(),
            xa.scale.clone(),
            xa.zero.clone(),
            bq,
            bs,
            bz,
            ysn.clone(),
            yzn.clone(),
        ];
        let mut float_bias = None;
        let qop = match op {
            "Conv" => {
                if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                    let bt = inits.get(b).with_context(|| {
                        format!("Conv `{}`: bias `{b}` is not constant", n.name)
                    })?;
                    let bias = floats(bt)?;
                    let q: Vec<i32> = bias
                        .iter()
                        .zip(&w_scales)
                        .map(|(v, ws)| (v / (xs * ws)).round_ties_even() as i32)
                        .collect();
                    let bn = names.fresh(&format!("{b}_int32"));
                    let raw = q.iter().flat_map(|v| v.to_le_bytes()).collect();
                    new_inits.push(tensor(&bn, &bt.dims, DataType::Int32, raw));
                    inputs.push(bn);
                }
                "QLinearConv"
            }
            _ => {
                if op == "Gemm" {
                    float_bias = n.input.get(2).filter(|b| !b.is_empty()).cloned();
                }
                "QLinearMatMul"
            }
        };
        // Conv keeps its attributes (strides, pads, group, ...); Gemm's are consumed.
        let attrs = if op == "Conv" {
            n.attribute.clone()
        } else {
            vec![]
        };
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        nodes.push(node(
            &names.fresh(&format!("{}_{qop}", n.name)),
            qop,
            &refs,
            &yq,
            attrs,
        ));
        let dq_out = match &float_bias {
            Some(_) => names.fresh(&format!("{out}_no_bias")),
            None => out.clone(),
        };
        nodes.push(node(
            &names.fresh(&format!("{out}_DequantizeLinear")),
            "DequantizeLinear",
            &[&yq, &ysn, &yzn],
            &dq_out,
            vec![],
        ));
        if let Some(b) = float_bias {
            nodes.push(node(
                &names.fresh(&format!("{}_bias", n.name)),
                "Add",
                &[&dq_out, &b],
                &out,
                vec![],
            ));
        }
    }
    g.node = nodes;
    super::graph::replace_initializers(g, new_inits);
    Ok((m, floats_left))
}

/// The nodes reading each value: (op type, first output).
fn consumers_of(nodes: &[NodeProto]) -> HashMap<String, Vec<(String, String)>> {
    let mut c: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for n in nodes {
        for i in &n.input {
            let out = n.output.first().cloned().unwrap_or_default();
            c.entry(i.clone())
                .or_default()
                .push((n.op_type.clone(), out));
        }
    }
    c
}

/// Whether `v` reaches a Softmax directly or through a few element-wise ops (a scale, a mask).
fn feeds_softmax(consumers: &HashMap<String, Vec<(String, String)>>, v: &str) -> bool {
    let mut frontier = vec![v.to_string()];
    for _ in 0..4 {
        let mut next = vec![];
        for v in &frontier {
            for (op, out) in consumers.get(v).into_iter().flatten() {
                match op.as_str() {
                    "Softmax" => return true,
                    "Mul" | "Div" | "Add" | "Sub" | "Where" => next.push(out.clone()),
                    _ => {}
                }
            }
        }
        frontier = next;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::graph::{encode, plan_int8};
    use super::*;
    use reflex_models::onnx::builder::{Attr, GraphBuilder};
    use std::collections::BTreeSet;
    use tract_onnx::prelude::*;

    /// x [1, 1, 2, 2] -> Conv (2 output channels, 1x1, bias) -> Flatten -> Gemm (transB, bias).
    fn conv_gemm() -> tract_onnx::pb::ModelProto {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", &[1, 1, 2, 2]);
        let w = b.initializer("w", &[2, 1, 1, 1], &[0.5, -1.0]);
        let bias = b.initializer("b", &[2], &[0.1, 0.2]);
        let c = b.node("conv", "Conv", &[&x, &w, &bias], &[]);
        let f = b.node("flat", "Flatten", &[&c], &[("axis", Attr::Int(1))]);
        let gw: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) / 12.0).collect();
        let gw = b.initializer("gw", &[3, 8], &gw);
        let gb = b.initializer("gb", &[3], &[0.05, -0.05, 0.0]);
        let y = b.node("gemm", "Gemm", &[&f, &gw, &gb], &[("transB", Attr::Int(1))]);
        b.output(&y, &[1, 3]);
        b.finish()
    }

    fn run(m: &tract_onnx::pb::ModelProto, x: &[f32]) -> Vec<f32> {
        let bytes = encode(m);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract loads");
        let t = Tensor::from_shape(&[1, 1, 2, 2], x).expect("input");
        let out = plan.run(tvec!(t.into_tvalue())).expect("runs");
        out[0]
            .try_as_plain_ram()
            .and_then(|t| t.as_slice::<f32>().map(|s| s.to_vec()))
            .expect("f32")
    }

    #[test]
    fn conv_and_gemm_become_integer_ops_that_tract_runs() {
        let m = conv_gemm();
        let plan = plan_int8(&m, &BTreeSet::new()).expect("plan");
        assert_eq!(plan.outputs, vec!["conv".to_string(), "gemm".to_string()]);
        let amax: BTreeMap<String, f32> = [("x", 1.27), ("conv", 1.27), ("flat", 1.27)]
            .into_iter()
            .chain([("gemm", 2.54)])
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let (q, floats) = apply(&m, &plan, &amax).expect("operator form");
        assert!(floats.unsupported.is_empty() && floats.scores.is_empty());
        let g = q.graph.as_ref().expect("graph");
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "QuantizeLinear",
                "QLinearConv",
                "DequantizeLinear",
                "Flatten",
                "QuantizeLinear",
                "QLinearMatMul",
                "DequantizeLinear",
                "Add"
            ]
        );
        let init = |n: &str| {
            g.initializer
                .iter()
                .find(|t| t.name == n)
                .unwrap_or_else(|| panic!("no initializer {n}"))
        };
        // int32 bias in steps of x_scale * w_scale[c]: 0.1 / (0.01 * 0.5 / 127), 0.2 / (0.01 / 127).
        let bias: Vec<i32> = init("b_int32")
            .raw_data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(bias, vec![2540, 2540]);
        // uint8 activations with zero point 128; the Gemm weight laid out [K, N].
        assert_eq!(init("x_zero_point").raw_data, vec![128]);
        assert_eq!(init("x_zero_point").data_type, DataType::Uint8 as i32);
        assert_eq!(init("gw_quantized").dims, vec![8, 3]);
        // tract runs it, within a few int8 steps of the float graph.
        let x = [0.3, -0.7, 1.0, 0.05];
        let (f, i) = (run(&m, &x), run(&q, &x));
        for (a, b) in f.iter().zip(&i) {
            assert!((a - b).abs() < 0.05, "float {f:?}, int8 {i:?}");
        }
    }
}
