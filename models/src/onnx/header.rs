//! A cheap read of an ONNX file's graph inputs and outputs (names, element types, shapes),
//! without building a graph.
//!
//! `reflex check` and `Bundle::load` must catch a manifest that names the wrong tensors or
//! shapes, but building an inference graph is the backend's job (at prepare), and a TensorRT
//! engine does not want tract to parse its ONNX. So this module decodes only what it needs of
//! the `ModelProto` with prost: messages declared here carry only the fields read, and prost
//! skips every other field by its length (the weights are never copied or parsed).
//!
//! Field numbers and element type codes are those of `onnx/onnx.proto` (ONNX 1.x, stable since
//! IR version 3): `ModelProto.graph = 7`; `GraphProto.initializer = 5`, `input = 11`,
//! `output = 12`; `ValueInfoProto.name = 1`, `type = 2`; `TypeProto.tensor_type = 1`;
//! `TypeProto.Tensor.elem_type = 1`, `shape = 2`; `TensorShapeProto.dim = 1`;
//! `Dimension.dim_value = 1`, `dim_param = 2`; `TensorProto.name = 8`.
//!
//! Beyond the I/O, the header reads what a bundle needs to carry and record the model truly:
//! the files its tensors are stored in outside the ONNX file (ONNX "external data":
//! `TensorProto.data_location = 14` = `EXTERNAL`, `external_data = 13` as
//! `StringStringEntryProto` `key = 1` / `value = 2`, key `location` a path relative to the
//! model file; see `onnx/docs/ExternalData.md`), the element types of the weights
//! (`TensorProto.dims = 1`, `data_type = 2`) and the graph's operator types
//! (`GraphProto.node = 1`, `NodeProto.op_type = 4`, `attribute = 5`; `AttributeProto.t = 5`,
//! `g = 6`, `tensors = 10`, `graphs = 11` for constants and subgraphs), from which
//! [`OnnxHeader::precision`] tells an fp32, fp16 or int8 (QDQ or QOperator) model apart.

use prost::Message;

/// Element type of a tensor, from `TensorProto.DataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F16,
    Bf16,
    F64,
    I8,
    U8,
    I16,
    I32,
    I64,
    Bool,
    /// Any other `TensorProto.DataType` code (strings, complex, 4-bit, fp8...), or 0 (undefined).
    Other(i32),
}

impl ElemType {
    /// From the `TensorProto.DataType` code.
    pub fn from_onnx(code: i32) -> Self {
        match code {
            1 => ElemType::F32,
            2 => ElemType::U8,
            3 => ElemType::I8,
            5 => ElemType::I16,
            6 => ElemType::I32,
            7 => ElemType::I64,
            9 => ElemType::Bool,
            10 => ElemType::F16,
            11 => ElemType::F64,
            16 => ElemType::Bf16,
            other => ElemType::Other(other),
        }
    }

    /// Whether reflex feeds or reads a graph input or output of this type: the caller's
    /// buffers are f32, and every backend converts float64 and float16 tensors at the boundary
    /// (into preallocated buffers). Integer, bool and other types are refused at export and
    /// load, naming the tensor.
    pub fn is_boundary_supported(self) -> bool {
        matches!(self, ElemType::F32 | ElemType::F64 | ElemType::F16)
    }

    /// ONNX's name of the type (`float`, `float16`, ...), as error messages use it.
    pub fn name(self) -> String {
        match self {
            ElemType::F32 => "float".into(),
            ElemType::F16 => "float16".into(),
            ElemType::Bf16 => "bfloat16".into(),
            ElemType::F64 => "double".into(),
            ElemType::I8 => "int8".into(),
            ElemType::U8 => "uint8".into(),
            ElemType::I16 => "int16".into(),
            ElemType::I32 => "int32".into(),
            ElemType::I64 => "int64".into(),
            ElemType::Bool => "bool".into(),
            ElemType::Other(c) => format!("data type {c}"),
        }
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// One dimension as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named symbolic dimension (`dim_param`, e.g. `batch`).
    Symbolic(String),
    /// Neither a value nor a name.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input or output as declared in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    pub elem: ElemType,
    /// `None`: the file declares no shape (not even the rank).
    pub dims: Option<Vec<Dim>>,
}

impl TensorDecl {
    /// The shape, if every dimension is a fixed number.
    pub fn concrete_shape(&self) -> Option<Vec<usize>> {
        self.dims
            .as_ref()?
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// The declared shape for messages: `[1, batch, ?]`, or `unknown`.
    pub fn shape_text(&self) -> String {
        match &self.dims {
            None => "unknown".into(),
            Some(d) => format!(
                "[{}]",
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The graph inputs (initializers excluded) and outputs of an ONNX model, in file order, and
/// what the model's weights and operators are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxHeader {
    pub inputs: Vec<TensorDecl>,
    pub outputs: Vec<TensorDecl>,
    /// The external data files the model's tensors are stored in (`location` of every tensor
    /// with `data_location = EXTERNAL`, subgraphs and constants included), each once, in file
    /// order; paths relative to the model file's folder, as written in the file.
    pub external_data: Vec<String>,
    /// Element count of the weights (initializers and constant tensors) per element type, in
    /// first-seen order.
    pub weights: Vec<(ElemType, u64)>,
    /// Operator types used (`op_type`, all domains, subgraphs included), sorted.
    pub op_types: std::collections::BTreeSet<String>,
}

/// Operators of a quantized integer model: QDQ (`QuantizeLinear`/`DequantizeLinear` around
/// float ops, what ONNX Runtime's `quantize_static` and TensorRT's explicit quantization use) and
/// QOperator (`QLinearConv`, `QLinearMatMul`, `MatMulInteger`, `ConvInteger`).
pub const INT8_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
];

impl OnnxHeader {
    /// The precision the model computes in: `int8` if it holds any quantization operator
    /// ([`INT8_OPS`]), else `fp16` if its float weights are mostly float16 (by element count),
    /// else `fp32`.
    pub fn precision(&self) -> crate::manifest::Precision {
        use crate::manifest::Precision;
        if INT8_OPS.iter().any(|op| self.op_types.contains(*op)) {
            return Precision::Int8;
        }
        let count = |e: ElemType| {
            self.weights
                .iter()
                .filter(|(t, _)| *t == e)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        let half = count(ElemType::F16) + count(ElemType::Bf16);
        if half > count(ElemType::F32) + count(ElemType::F64) {
            Precision::Fp16
        } else {
            Precision::Fp32
        }
    }
}

/// Why the bytes are not an ONNX model with a graph.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a valid ONNX protobuf (truncated or another format)")]
    Decode(#[source] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error("graph {which} #{index} has no name")]
    Unnamed { which: &'static str, index: usize },
    /// An external data reference that is not a plain relative path beside the model.
    #[error(
        "tensor `{tensor}` keeps its data in `{location}`, which is not a relative path inside \
         the model's folder (ONNX external data must be stored beside the model)"
    )]
    ExternalLocation { tensor: String, location: String },
    /// A tensor marked as external data without a `location`.
    #[error("tensor `{tensor}` is marked as external data but names no `location`")]
    ExternalWithoutLocation { tensor: String },
}

/// Reads the graph inputs and outputs of an ONNX model's bytes. Graph inputs that are also
/// initializers (files exported with `keep_initializers_as_inputs`) are weights, not inputs,
/// and are left out, as runtimes treat them.
pub fn read_header(bytes: &[u8]) -> Result<OnnxHeader, HeaderError> {
    let model = pb::Model::decode(bytes).map_err(HeaderError::Decode)?;
    let graph = model.graph.ok_or(HeaderError::NoGraph)?;
    let weights: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let decl = |which: &'static str, index: usize, v: &pb::ValueInfo| {
        if v.name.is_empty() {
            return Err(HeaderError::Unnamed { which, index });
        }
        let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        Ok(TensorDecl {
            name: v.name.clone(),
            elem: ElemType::from_onnx(tensor.map_or(0, |t| t.elem_type)),
            dims: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
                s.dim
                    .iter()
                    .map(|d| match (d.dim_value, &d.dim_param) {
                        (Some(v), _) if v >= 0 => Dim::Fixed(v as usize),
                        (_, Some(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                        _ => Dim::Unknown,
                    })
                    .collect()
            }),
        })
    };
    let inputs = graph
        .input
        .iter()
        .enumerate()
        .filter(|(_, v)| !weights.contains(v.name.as_str()))
        .map(|(i, v)| decl("input", i, v))
        .collect::<Result<_, _>>()?;
    let outputs = graph
        .output
        .iter()
        .enumerate()
        .map(|(i, v)| decl("output", i, v))
        .collect::<Result<_, _>>()?;
    let mut header = OnnxHeader {
        inputs,
        outputs,
        external_data: vec![],
        weights: vec![],
        op_types: Default::default(),
    };
    scan_graph(&graph, &mut header)?;
    Ok(header)
}

/// Records one tensor's element count, type and external data file.
fn scan_tensor(t: &pb::Tensor, h: &mut OnnxHeader) -> Result<(), HeaderError> {
    let elems = t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>();
    let elem = ElemType::from_onnx(t.data_type);
    match h.weights.iter_mut().find(|(e, _)| *e == elem) {
        Some((_, n)) => *n += elems,
        None => h.weights.push((elem, elems)),
    }
    if t.data_location != 1 {
        return Ok(());
    }
    let location = t
        .external_data
        .iter()
        .find(|e| e.key == "location")
        .map(|e| e.value.clone())
        .ok_or_else(|| HeaderError::ExternalWithoutLocation {
            tensor: t.name.clone(),
        })?;
    let p = std::path::Path::new(&location);
    let plain = !location.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(HeaderError::ExternalLocation {
            tensor: t.name.clone(),
            location,
        });
    }
    if !h.external_data.contains(&location) {
        h.external_data.push(location);
    }
    Ok(())
}

/// Initializers, constants and operators of a graph and its subgraphs.
fn scan_graph(g: &pb::Graph, h: &mut OnnxHeader) -> Result<(), HeaderError> {
    for t in &g.initializer {
        scan_tensor(t, h)?;
    }
    for n in &g.node {
        h.op_types.insert(n.op_type.clone());
        for a in &n.attribute {
            for t in a.t.iter().chain(&a.tensors) {
                scan_tensor(t, h)?;
            }
            for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                scan_graph(sub, h)?;
            }
        }
    }
    Ok(())
}

/// The few `onnx.proto` messages the header needs, each with only the fields read.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Graph {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<Node>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<Tensor>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfo>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfo>,
    }

    /// A `TensorProto` of which only the name, shape, type and external data reference are
    /// read (its data is skipped, not copied).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<StringEntry>,
        /// `DataLocation`: 0 = `DEFAULT` (in the file), 1 = `EXTERNAL`.
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }

    /// `StringStringEntryProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringEntry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `NodeProto`: its operator type and attributes (for constants and subgraphs).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Node {
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<Attribute>,
    }

    /// `AttributeProto`: only its tensor and graph values.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Attribute {
        #[prost(message, optional, tag = "5")]
        pub t: Option<Tensor>,
        #[prost(message, optional, boxed, tag = "6")]
        pub g: Option<Box<Graph>>,
        #[prost(message, repeated, tag = "10")]
        pub tensors: Vec<Tensor>,
        #[prost(message, repeated, tag = "11")]
        pub graphs: Vec<Graph>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<Type>,
    }

    /// `TypeProto`: of its `value` oneof only `tensor_type` is read (a sequence or map input is
    /// reported with an undefined element type and no shape).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Type {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorType>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorType {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<Shape>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Shape {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// `Dimension.value` is a oneof of `dim_value` and `dim_param`; on the wire that is the same
    /// as two optional fields.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::GraphBuilder;

    fn graph(with_weight_as_input: bool) -> Vec<u8> {
        use prost::Message as _;
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &[1, 3, 8, 8]);
        let w = g.initializer("w", &[1], &[2.0]);
        let y = g.node("y", "Mul", &[&x, &w], &[]);
        g.output(&y, &[1, 3, 8, 8]);
        let mut m = g.finish();
        if let Some(graph) = m.graph.as_mut().filter(|_| with_weight_as_input) {
            // As `keep_initializers_as_inputs` exports write it: the weight listed as an input.
            let mut v = graph.input[0].clone();
            v.name = w;
            graph.input.push(v);
        }
        m.encode_to_vec()
    }

    #[test]
    fn reads_inputs_outputs_and_skips_initializers() {
        for weight_as_input in [false, true] {
            let h = read_header(&graph(weight_as_input)).expect("header");
            assert_eq!(h.inputs.len(), 1, "{h:?}");
            assert_eq!(h.inputs[0].name, "x");
            assert_eq!(h.inputs[0].elem, ElemType::F32);
            assert_eq!(h.inputs[0].concrete_shape(), Some(vec![1, 3, 8, 8]));
            assert_eq!(h.outputs[0].name, "y");
            assert_eq!(h.outputs[0].shape_text(), "[1, 3, 8, 8]");
        }
    }

    #[test]
    fn truncated_bytes_are_refused() {
        let bytes = graph(false);
        let e = read_header(&bytes[..bytes.len() / 2]).expect_err("truncated");
        assert!(matches!(e, HeaderError::Decode(_)), "{e}");
    }
}
