//! ONNX rewrites for quantization, on the prost `ModelProto` that `reflex_models::onnx::builder`
//! writes: fp16 conversion, int8 QDQ insertion, and the calibration variant of a graph (extra
//! outputs on the tensors whose ranges are measured).
//!
//! Graph inputs and outputs stay f32 in every form, so a quantized bundle has the same interface
//! as its fp32 source and the runtime feeds it the same buffers.

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, ModelProto,
    NodeProto, StringStringEntryProto, TensorProto, ValueInfoProto,
};

/// Narrow symmetric int8 range: TensorRT's explicit quantization uses [-127, 127] for weights.
pub(super) const QMAX: f32 = 127.0;

/// The smallest default-domain opset with per-axis `DequantizeLinear`.
const MIN_QDQ_OPSET: i64 = 13;

pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    prost::Message::decode(bytes).context("not an ONNX ModelProto")
}

/// Reads every initializer stored as ONNX external data (`data_location = EXTERNAL`, keys
/// `location`, `offset`, `length`; onnx `docs/ExternalData.md`) from its file in `dir` into
/// the tensor's `raw_data`, so the rewrites below see the weights and the quantized model is
/// one self-contained file. Errors name the data file and the tensor.
pub fn inline_external_data(m: &mut ModelProto, dir: &std::path::Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const EXTERNAL: i32 = tract_onnx::pb::tensor_proto::DataLocation::External as i32;
    for t in &mut graph_mut(m)?.initializer {
        if t.data_location != Some(EXTERNAL) {
            continue;
        }
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| &e.value)
        };
        let location = get("location")
            .with_context(|| format!("tensor `{}`: external data without a location", t.name))?;
        let num = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| v.parse::<u64>())
                .transpose()
                .with_context(|| format!("tensor `{}`: external data `{k}`", t.name))
        };
        let (offset, length) = (num("offset")?.unwrap_or(0), num("length")?);
        let path = dir.join(location);
        let mut f = std::fs::File::open(&path)
            .with_context(|| format!("tensor `{}`: reading {}", t.name, path.display()))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut bytes = vec![];
        match length {
            Some(n) => f.take(n).read_to_end(&mut bytes)?,
            None => f.read_to_end(&mut bytes)?,
        };
        ensure!(
            length.is_none_or(|n| n == bytes.len() as u64),
            "tensor `{}`: {} ends before offset {offset} + length {:?}",
            t.name,
            path.display(),
            length
        );
        t.raw_data = bytes;
        t.external_data.clear();
        t.data_location = None;
    }
    Ok(())
}

pub fn encode(m: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(m)
}

fn graph(m: &ModelProto) -> Result<&GraphProto> {
    m.graph.as_ref().context("ONNX model has no graph")
}

pub(super) fn graph_mut(m: &mut ModelProto) -> Result<&mut GraphProto> {
    m.graph.as_mut().context("ONNX model has no graph")
}

/// The values of a FLOAT tensor, from `raw_data` (little-endian) or `float_data`.
pub fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    ensure!(
        t.data_type == DataType::Float as i32,
        "tensor `{}` is not FLOAT (data_type {})",
        t.name,
        t.data_type
    );
    if t.raw_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    ensure!(
        t.raw_data.len().is_multiple_of(4),
        "tensor `{}`: raw_data of {} bytes is not a whole number of f32",
        t.name,
        t.raw_data.len()
    );
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

pub(super) fn tensor(name: &str, dims: &[i64], dtype: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: dtype as i32,
        raw_data,
        ..Default::default()
    }
}

pub(super) fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, DataType::Float, raw)
}

pub(super) fn i8_tensor(name: &str, dims: &[i64], data: &[i8]) -> TensorProto {
    let raw = data.iter().map(|v| *v as u8).collect();
    tensor(name, dims, DataType::Int8, raw)
}

fn f16_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let raw = data
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    tensor(name, dims, DataType::Float16, raw)
}

pub(super) fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub(super) fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: name.to_string(),
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: attrs,
        ..Default::default()
    }
}

pub(super) fn int_attr_of(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Every name in use in a graph (nodes, values, initializers), so new ones never collide.
pub(super) struct Names(HashSet<String>);

impl Names {
    pub(super) fn of(g: &GraphProto) -> Self {
        let mut s = HashSet::new();
        for n in &g.node {
            s.insert(n.name.clone());
            s.extend(n.input.iter().cloned());
            s.extend(n.output.iter().cloned());
        }
        s.extend(g.initializer.iter().map(|t| t.name.clone()));
        s.extend(g.input.iter().map(|v| v.name.clone()));
        s.extend(g.output.iter().map(|v| v.name.clone()));
        Names(s)
    }

    /// `base`, or `base_1`, `base_2`, ... if taken; reserves it.
    pub(super) fn fresh(&mut self, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut i = 1;
        while self.0.contains(&candidate) {
            candidate = format!("{base}_{i}");
            i += 1;
        }
        self.0.insert(candidate.clone());
        candidate
    }
}

/// Refuses what this tool does not rewrite: graphs already quantized or half, subgraphs.
fn check_plain_f32(g: &GraphProto) -> Result<()> {
    for n in &g.node {
        if matches!(
            n.op_type.as_str(),
            "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear"
        ) || n.op_type.starts_with("QLinear")
        {
            bail!(
                "node `{}` ({}): the model is already quantized; quantize its fp32 source",
                n.name,
                n.op_type
            );
        }
        if n.attribute.iter().any(|a| {
            a.r#type == AttributeType::Graph as i32 || a.r#type == AttributeType::Graphs as i32
        }) {
            bail!(
                "node `{}` ({}) has a subgraph; control flow is not supported by `quantize`",
                n.name,
                n.op_type
            );
        }
    }
    if let Some(t) = g
        .initializer
        .iter()
        .find(|t| t.data_type == DataType::Float16 as i32)
    {
        bail!(
            "initializer `{}` is already FLOAT16; quantize the fp32 source",
            t.name
        );
    }
    Ok(())
}

/// Old exporters list initializers among the graph inputs too (overridable defaults); the
/// rewritten graph keeps them as plain initializers so its inputs are exactly the fed ones.
pub(super) fn drop_initializer_inputs(g: &mut GraphProto) {
    let inits: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    g.input.retain(|v| !inits.contains(&v.name));
}

pub(super) fn add_metadata(m: &mut ModelProto, key: &str, value: &str) {
    m.metadata_props.retain(|p| p.key != key);
    m.metadata_props.push(StringStringEntryProto {
        key: key.to_string(),
        value: value.to_string(),
    });
}

/// The fp16 form of `m`: every FLOAT initializer stored as FLOAT16 and followed by a `Cast` back
/// to FLOAT under its old name, so every node computes in f32 as before and graph I/O is
/// unchanged. Returns it with the number of initializers converted.
///
/// Why not FLOAT16 compute (a Cast after each graph input and before each output, everything in
/// between half): tract 0.23 cannot load such a graph (its Gemm expansion yields an f32 output
/// for f16 inputs: "Output mismatch after rewiring expansion ... expected F16 got F32"), and
/// tract, every board's fallback, must run every fp16 bundle. TensorRT, built with its fp16 flag, computes
/// this form in half anyway.
pub fn to_fp16(m: &ModelProto) -> Result<(ModelProto, usize)> {
    let mut m = m.clone();
    let g = graph_mut(&mut m)?;
    check_plain_f32(g)?;
    drop_initializer_inputs(g);
    let mut names = Names::of(g);
    let mut converted = 0;
    let mut casts = vec![];
    for t in g.initializer.iter_mut() {
        if t.data_type != DataType::Float as i32 {
            continue;
        }
        let data = floats(t)?;
        let half_name = names.fresh(&format!("{}.fp16", t.name));
        let cast_name = names.fresh(&format!("{}.cast", t.name));
        casts.push(node(
            &cast_name,
            "Cast",
            &[&half_name],
            &t.name,
            vec![int_attr("to", DataType::Float as i64)],
        ));
        *t = f16_tensor(&half_name, &t.dims, &data);
        converted += 1;
    }
    casts.append(&mut g.node);
    g.node = casts;
    add_metadata(
        &mut m,
        "reflex.fp16",
        "weights stored as FLOAT16, each cast to FLOAT; computed in FLOAT",
    );
    Ok((m, converted))
}

/// Ops whose FLOAT inputs must stay FLOAT (`scales` of Resize/Upsample, ONNX operator spec):
/// the fp16-typed rewrite refuses them rather than write an invalid graph.
const FLOAT_ONLY_INPUTS: [&str; 2] = ["Resize", "Upsample"];

/// The genuinely fp16-typed form of `m`, for TensorRT's strongly typed builds (TensorRT 10.12
/// deprecated and 11 removed the precision flags: precision comes from the ONNX types). Every
/// FLOAT initializer and `Constant`/`ConstantOfShape` value is stored FLOAT16 under its own name,
/// every `Cast` to FLOAT inside becomes a Cast to FLOAT16, each FLOAT graph input `x` is cast to
/// FLOAT16 (`x.fp16`) before its consumers, and each FLOAT output `y` is computed as `y.fp16` and
/// cast back to FLOAT: graph I/O stays FLOAT (the manifest, preprocessing and the runtime do not
/// change), weights and activations in between are FLOAT16. Shapes of intermediate values
/// (`value_info`) are dropped, to be inferred again in FLOAT16. Returns it with the number of
/// initializers converted.
///
/// Errors: a graph already quantized or half, a subgraph, or an op with a FLOAT-only input.
pub fn to_fp16_typed(m: &ModelProto) -> Result<(ModelProto, usize)> {
    let mut m = m.clone();
    let g = graph_mut(&mut m)?;
    check_plain_f32(g)?;
    if let Some(n) = g
        .node
        .iter()
        .find(|n| FLOAT_ONLY_INPUTS.contains(&n.op_type.as_str()))
    {
        bail!(
            "node `{}` ({}) takes FLOAT scales; the fp16-typed form does not rewrite it",
            n.name,
            n.op_type
        );
    }
    drop_initializer_inputs(g);
    let mut names = Names::of(g);
    let float = DataType::Float as i32;
    let half = DataType::Float16 as i32;
    let mut converted = 0;
    for t in g.initializer.iter_mut() {
        if t.data_type == float {
            let data = floats(t)?;
            *t = f16_tensor(&t.name.clone(), &t.dims, &data);
            converted += 1;
        }
    }
    for n in g.node.iter_mut() {
        for a in n.attribute.iter_mut() {
            match (n.op_type.as_str(), a.name.as_str()) {
                ("Constant" | "ConstantOfShape", "value") => {
                    if let Some(t) = a.t.as_mut().filter(|t| t.data_type == float) {
                        let data = floats(t)?;
                        *t = f16_tensor(&t.name.clone(), &t.dims, &data);
                    }
                }
                ("Constant", "value_float" | "value_floats") => bail!(
                    "node `{}`: Constant with `{}`; the fp16-typed form needs a tensor `value`",
                    n.name,
                    a.name
                ),
                ("Cast", "to") if a.i == DataType::Float as i64 => a.i = DataType::Float16 as i64,
                _ => {}
            }
        }
    }
    let is_float = |v: &ValueInfoProto| elem_type(v) == Some(float);
    // Inputs: cast at the boundary, consumers read the half copy.
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut head = vec![];
    for v in g.input.iter().filter(|v| is_float(v)) {
        let h = names.fresh(&format!("{}.fp16", v.name));
        let c = names.fresh(&format!("{}.cast_fp16", v.name));
        head.push(node(
            &c,
            "Cast",
            &[&v.name],
            &h,
            vec![int_attr("to", half as i64)],
        ));
        rename.insert(v.name.clone(), h);
    }
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut() {
            if let Some(h) = rename.get(i) {
                *i = h.clone();
            }
        }
    }
    // Outputs: computed in half under a new name, cast back to FLOAT under the output's name.
    let mut tail = vec![];
    for v in g.output.iter().filter(|v| is_float(v)) {
        let h = names.fresh(&format!("{}.fp16", v.name));
        let c = names.fresh(&format!("{}.cast_fp32", v.name));
        for n in g.node.iter_mut() {
            for x in n.input.iter_mut().chain(n.output.iter_mut()) {
                if *x == v.name {
                    *x = h.clone();
                }
            }
        }
        tail.push(node(
            &c,
            "Cast",
            &[&h],
            &v.name,
            vec![int_attr("to", float as i64)],
        ));
    }
    head.append(&mut g.node);
    head.append(&mut tail);
    g.node = head;
    g.value_info.clear();
    add_metadata(
        &mut m,
        "reflex.fp16",
        "FLOAT16 weights and activations (strongly typed, for TensorRT); FLOAT graph inputs and \
         outputs, cast at the boundary",
    );
    Ok((m, converted))
}

/// The element type of a tensor value's type, if it has one.
fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    // tract's ONNX protobuf knows tensor types only.
    let tract_onnx::pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    Some(t.elem_type)
}

/// The node computing the policy's last layer: walking back from `output` through reshapes and
/// a bias `Add`, the first Gemm, MatMul or Conv.
pub fn last_layer(m: &ModelProto, output: &str) -> Result<Option<String>> {
    let g = graph(m)?;
    let producer: HashMap<&str, &NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut v = output;
    for _ in 0..64 {
        let Some(n) = producer.get(v) else {
            return Ok(None);
        };
        let next = match n.op_type.as_str() {
            "Gemm" | "MatMul" | "Conv" => return Ok(Some(n.name.clone())),
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" | "Transpose" => {
                n.input.first()
            }
            "Add" => n.input.iter().find(|x| !inits.contains(x.as_str())),
            _ => None,
        };
        match next {
            Some(x) => v = x,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Where int8 QDQ goes in a graph: which activations get a per-tensor Q/DQ pair and which
/// weights a per-channel DQ.
#[derive(Debug, Clone)]
pub struct Int8Plan {
    /// Activation values to quantize per tensor, in first-use order.
    pub activations: Vec<String>,
    /// Weight initializer per quantized node input: (node index, input index, channel axis;
    /// `None` = per tensor).
    weights: Vec<(usize, usize, Option<usize>)>,
    /// Outputs of the quantized nodes, in node order: the operator form ([`super::qop`])
    /// requantizes them with calibrated scales.
    pub outputs: Vec<String>,
    /// Names of the Conv / Gemm / MatMul nodes that get quantized inputs.
    pub quantized_nodes: Vec<String>,
    /// Names of the Conv / Gemm / MatMul nodes left in float.
    pub kept_float: Vec<String>,
}

/// Plans QDQ for every Conv, Gemm and MatMul not named in `keep_float`: activation inputs per
/// tensor, weight initializers per output channel. Norms, Softmax and the rest stay float (they
/// get no Q/DQ on their inputs).
pub fn plan_int8(m: &ModelProto, keep_float: &BTreeSet<String>) -> Result<Int8Plan> {
    let g = graph(m)?;
    check_plain_f32(g)?;
    let opset = m
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    ensure!(
        opset >= MIN_QDQ_OPSET,
        "the model imports opset {opset}; per-channel int8 QDQ needs opset >= {MIN_QDQ_OPSET} \
         (re-export it with a newer opset)"
    );
    let names: HashSet<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
    if let Some(k) = keep_float.iter().find(|k| !names.contains(k.as_str())) {
        bail!("--keep-float {k}: no node of that name in the graph");
    }
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut plan = Int8Plan {
        activations: vec![],
        weights: vec![],
        outputs: vec![],
        quantized_nodes: vec![],
        kept_float: vec![],
    };
    let mut seen = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        let op = n.op_type.as_str();
        if !matches!(op, "Conv" | "Gemm" | "MatMul") || !n.domain.is_empty() {
            continue;
        }
        if keep_float.contains(&n.name) {
            plan.kept_float.push(n.name.clone());
            continue;
        }
        for (ix, v) in n.input.iter().enumerate().take(2) {
            match inits.get(v.as_str()) {
                Some(t) if t.data_type == DataType::Float as i32 => {
                    let rank = t.dims.len();
                    let axis = match (op, ix) {
                        ("Conv", 1) => Some(0),
                        ("Gemm", 1) => Some(if int_attr_of(n, "transB") == Some(1) {
                            0
                        } else {
                            1
                        }),
                        ("MatMul", 1) if rank >= 2 => Some(rank - 1),
                        _ => None,
                    };
                    plan.weights.push((i, ix, axis.filter(|&a| a < rank)));
                }
                Some(t) => bail!(
                    "node `{}`: initializer `{}` has data_type {}, expected FLOAT",
                    n.name,
                    t.name,
                    t.data_type
                ),
                None => {
                    if seen.insert(v.clone()) {
                        plan.activations.push(v.clone());
                    }
                }
            }
        }
        if let Some(o) = n.output.first() {
            plan.outputs.push(o.clone());
        }
        plan.quantized_nodes.push(n.name.clone());
    }
    ensure!(
        !plan.quantized_nodes.is_empty(),
        "no Conv, Gemm or MatMul left to quantize (kept in float: {})",
        plan.kept_float.join(", ")
    );
    Ok(plan)
}

/// `m` with `extra` values added as graph outputs (after its own, in order), for calibration.
/// Values that are graph inputs or already outputs are not added.
pub fn with_outputs(m: &ModelProto, extra: &[String]) -> Result<ModelProto> {
    let mut m = m.clone();
    let g = graph_mut(&mut m)?;
    let present: HashSet<String> = g
        .input
        .iter()
        .chain(g.output.iter())
        .map(|v| v.name.clone())
        .collect();
    for v in extra.iter().filter(|v| !present.contains(*v)) {
        g.output.push(ValueInfoProto {
            name: v.clone(),
            ..Default::default()
        });
    }
    Ok(m)
}

/// Symmetric int8 of `w` (shape `dims`) per channel along `axis` (per tensor when `None`):
/// values and one scale per channel.
pub(super) fn quantize_weight(w: &[f32], dims: &[i64], axis: Option<usize>) -> (Vec<i8>, Vec<f32>) {
    let (outer, channels, inner) = match axis {
        Some(a) => {
            let d: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
            (
                d[..a].iter().product::<usize>(),
                d[a],
                d[a + 1..].iter().product::<usize>(),
            )
        }
        None => (1, 1, w.len()),
    };
    let mut amax = vec![0f32; channels];
    for (k, v) in w.iter().enumerate() {
        let c = (k / inner) % channels;
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&a| {
            if a > 0.0 && a.is_finite() {
                a / QMAX
            } else {
                1.0
            }
        })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let c = (k / inner) % channels;
            (v / scales[c]).round_ties_even().clamp(-QMAX, QMAX) as i8
        })
        .collect();
    debug_assert_eq!(outer * channels * inner, w.len());
    (q, scales)
}

/// Per-tensor scale for a symmetric int8 activation whose calibrated range is `[-amax, amax]`.
pub fn activation_scale(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / QMAX
    } else {
        1.0
    }
}

/// Applies `plan` with the calibrated `amax` of each planned activation. Returns the QDQ model.
pub fn apply_int8(
    m: &ModelProto,
    plan: &Int8Plan,
    amax: &BTreeMap<String, f32>,
) -> Result<ModelProto> {
    let mut m = m.clone();
    let g = graph_mut(&mut m)?;
    drop_initializer_inputs(g);
    let mut names = Names::of(g);
    let inits = initializers_by_name(g);
    let mut new_inits = vec![];
    let mut front = vec![];
    // Weights: one int8 initializer + DequantizeLinear per (initializer, axis), shared by its
    // consumers.
    let mut weight_dq: BTreeMap<(String, Option<usize>), String> = BTreeMap::new();
    let mut rewired: HashMap<(usize, usize), String> = HashMap::new();
    for &(ni, ix, axis) in &plan.weights {
        let wname = g.node[ni].input[ix].clone();
        let key = (wname.clone(), axis);
        if let Some(dq) = weight_dq.get(&key) {
            rewired.insert((ni, ix), dq.clone());
            continue;
        }
        let t = inits
            .get(&wname)
            .with_context(|| format!("weight `{wname}` is not an initializer"))?;
        let (q, scales) = quantize_weight(&floats(t)?, &t.dims, axis);
        let qn = names.fresh(&format!("{wname}_quantized"));
        let sn = names.fresh(&format!("{wname}_scale"));
        let zn = names.fresh(&format!("{wname}_zero_point"));
        let dqn = names.fresh(&format!("{wname}_dequantized"));
        new_inits.push(i8_tensor(&qn, &t.dims, &q));
        let mut attrs = vec![];
        if let Some(a) = axis {
            let c = scales.len() as i64;
            new_inits.push(f32_tensor(&sn, &[c], &scales));
            new_inits.push(i8_tensor(&zn, &[c], &vec![0; scales.len()]));
            attrs.push(int_attr("axis", a as i64));
        } else {
            new_inits.push(f32_tensor(&sn, &[], &scales));
            new_inits.push(i8_tensor(&zn, &[], &[0]));
        }
        let node_name = names.fresh(&format!("{wname}_DequantizeLinear"));
        front.push(node(
            &node_name,
            "DequantizeLinear",
            &[&qn, &sn, &zn],
            &dqn,
            attrs,
        ));
        weight_dq.insert(key, dqn.clone());
        rewired.insert((ni, ix), dqn);
    }
    // Activations: Q/DQ emitted just before their first consumer, shared by the others.
    let planned: HashSet<&str> = plan.activations.iter().map(String::as_str).collect();
    let quantized: HashSet<&str> = plan.quantized_nodes.iter().map(String::as_str).collect();
    let mut act_dq: HashMap<String, String> = HashMap::new();
    let mut nodes = front;
    let old_nodes = std::mem::take(&mut g.node);
    for (ni, mut n) in old_nodes.into_iter().enumerate() {
        if quantized.contains(n.name.as_str()) {
            for ix in 0..n.input.len().min(2) {
                if let Some(dq) = rewired.get(&(ni, ix)) {
                    n.input[ix] = dq.clone();
                    continue;
                }
                let v = n.input[ix].clone();
                if !planned.contains(v.as_str()) {
                    continue;
                }
                if let Some(dq) = act_dq.get(&v) {
                    n.input[ix] = dq.clone();
                    continue;
                }
                let a = *amax
                    .get(&v)
                    .with_context(|| format!("no calibrated range for `{v}`"))?;
                let sn = names.fresh(&format!("{v}_scale"));
                let zn = names.fresh(&format!("{v}_zero_point"));
                let qn = names.fresh(&format!("{v}_quantized"));
                let dqn = names.fresh(&format!("{v}_dequantized"));
                new_inits.push(f32_tensor(&sn, &[], &[activation_scale(a)]));
                new_inits.push(i8_tensor(&zn, &[], &[0]));
                let q_node = names.fresh(&format!("{v}_QuantizeLinear"));
                let dq_node = names.fresh(&format!("{v}_DequantizeLinear"));
                nodes.push(node(
                    &q_node,
                    "QuantizeLinear",
                    &[&v, &sn, &zn],
                    &qn,
                    vec![],
                ));
                nodes.push(node(
                    &dq_node,
                    "DequantizeLinear",
                    &[&qn, &sn, &zn],
                    &dqn,
                    vec![],
                ));
                act_dq.insert(v, dqn.clone());
                n.input[ix] = dqn;
            }
        }
        nodes.push(n);
    }
    g.node = nodes;
    replace_initializers(g, new_inits);
    Ok(m)
}

/// The graph's initializers by name (copies: the rewrite replaces `g.initializer`).
pub fn initializers_by_name(g: &GraphProto) -> HashMap<String, TensorProto> {
    g.initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect()
}

/// Drops the initializers no node or output reads any more (float weights that were quantized;
/// a kept-float node may still read one) and appends `new_inits`.
pub fn replace_initializers(g: &mut GraphProto, mut new_inits: Vec<TensorProto>) {
    let used: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(g.output.iter().map(|v| v.name.as_str()))
        .collect();
    let kept: Vec<TensorProto> = g
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    g.initializer = kept;
    g.initializer.append(&mut new_inits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_quantized_per_output_channel() {
        // Two output channels of 3 values: scales are each channel's max / 127.
        let w = [1.0, -0.5, 0.25, 0.0, 2.0, -4.0];
        let (q, s) = quantize_weight(&w, &[2, 3], Some(0));
        assert_eq!(s, vec![1.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q, vec![127, -64, 32, 0, 64, -127]);
        // Axis 1 of a [3, 2] (MatMul [in, out]) weight: channels are columns.
        let (q, s) = quantize_weight(&[1.0, -2.0, 0.5, 1.0, 0.0, 0.0], &[3, 2], Some(1));
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(q, vec![127, -127, 64, 64, 0, 0]);
        // An all-zero channel gets scale 1 (never 0), values 0.
        let (q, s) = quantize_weight(&[0.0, 0.0], &[1, 2], Some(0));
        assert_eq!((q, s), (vec![0, 0], vec![1.0]));
    }

    #[test]
    fn f16_and_i8_tensors_are_little_endian_raw_data() {
        let t = f16_tensor("w", &[2], &[1.0, -2.0]);
        assert_eq!(t.data_type, DataType::Float16 as i32);
        assert_eq!(t.raw_data, [0x00, 0x3c, 0x00, 0xc0]);
        let t = i8_tensor("q", &[2], &[-1, 127]);
        assert_eq!(t.raw_data, [0xff, 0x7f]);
        let t = f32_tensor("s", &[], &[0.5]);
        assert_eq!(floats(&t).ok(), Some(vec![0.5]));
    }
}
