//! Writing ONNX protobuf by hand, the few pieces the reference architectures need.
//!
//! The reference policies must exist as real ONNX files without Python or PyTorch on the machine,
//! so we emit `ModelProto` directly with the prost types tract already ships. Every value name is
//! unique by construction (the builder renames on collision), every tensor carries a static
//! shape, and nothing here depends on hash-map order: the same calls give the same bytes.

use std::collections::HashSet;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX IR version written: 8 is what ONNX 1.10..1.13 (opset 17) write, and what every
/// runtime we target (tract, ONNX Runtime, TensorRT 8.5+) reads.
pub const IR_VERSION: i64 = 8;
/// The default-domain opset written; 17 is the first with `LayerNormalization`.
pub const OPSET: i64 = 17;

/// A node attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// Accumulates nodes, initializers and graph inputs/outputs, in call order.
#[derive(Debug)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
    metadata: Vec<(String, String)>,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            name: name.to_string(),
            nodes: vec![],
            initializers: vec![],
            inputs: vec![],
            outputs: vec![],
            names: HashSet::new(),
            metadata: vec![],
        }
    }

    /// Whether a value (input, initializer or node output) of that name exists; used to share
    /// one initializer between branches.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// `name`, or `name_1`, `name_2`, ... if taken; reserves it.
    fn unique(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut i = 1;
        while self.names.contains(&candidate) {
            candidate = format!("{name}_{i}");
            i += 1;
        }
        self.names.insert(candidate.clone());
        candidate
    }

    /// Declares a graph input of type f32; returns its value name.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        let name = self.unique(name);
        self.inputs.push(value_info(&name, shape));
        name
    }

    /// Declares the existing value `name` as a graph output of type f32.
    pub fn output(&mut self, name: &str, shape: &[usize]) {
        self.outputs.push(value_info(name, shape));
    }

    /// Adds an f32 initializer (stored as little-endian `raw_data`); returns its value name.
    pub fn initializer(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, shape, DataType::Float, raw)
    }

    /// Adds an i64 initializer (shapes for `Reshape`, indices for `Gather`).
    pub fn initializer_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, shape, DataType::Int64, raw)
    }

    fn push_initializer(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DataType,
        raw_data: Vec<u8>,
    ) -> String {
        let name = self.unique(name);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: dtype as i32,
            raw_data,
            ..Default::default()
        });
        name
    }

    /// A scalar f32 constant, created once per value and shared.
    pub fn scalar(&mut self, value: f32) -> String {
        let name = format!("const.{value:?}");
        if self.has(&name) {
            return name;
        }
        self.initializer(&name, &[], &[value])
    }

    /// A 1-D i64 constant (a `Reshape` target shape), created once per value and shared.
    pub fn shape_const(&mut self, dims: &[i64]) -> String {
        let text: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let name = format!("shape.{}", text.join("x"));
        if self.has(&name) {
            return name;
        }
        self.initializer_i64(&name, &[dims.len()], dims)
    }

    /// A scalar i64 constant (a `Gather` index), created once per value and shared.
    pub fn index_const(&mut self, index: i64) -> String {
        let name = format!("index.{index}");
        if self.has(&name) {
            return name;
        }
        self.initializer_i64(&name, &[], &[index])
    }

    /// Adds a single-output node named `name` (made unique); its output value has the node's
    /// name, which is returned.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        let name = self.unique(name);
        self.nodes.push(NodeProto {
            name: name.clone(),
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
        name
    }

    /// Adds a `key = value` entry to the model's `metadata_props`.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    pub fn finish(self) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "reflex".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            graph: Some(GraphProto {
                name: self.name,
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = *i;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v.clone();
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = *f;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_constants_shared() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &[1, 2]);
        let a = g.node("relu", "Relu", &[&x], &[]);
        let b = g.node("relu", "Relu", &[&a], &[]);
        assert_eq!((a.as_str(), b.as_str()), ("relu", "relu_1"));
        assert_eq!(g.scalar(0.5), g.scalar(0.5));
        assert_ne!(g.scalar(0.5), g.scalar(1.0));
        assert_eq!(g.shape_const(&[1, -1]), "shape.1x-1");
        g.output(&b, &[1, 2]);
        let m = g.finish();
        let graph = m.graph.unwrap_or_default();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.initializer.len(), 3);
        assert_eq!(m.opset_import[0].version, 17);
    }

    #[test]
    fn initializer_is_little_endian_raw_data() {
        let mut g = GraphBuilder::new("t");
        g.initializer("w", &[2], &[1.0, -2.0]);
        let graph = g.finish().graph.unwrap_or_default();
        let t = &graph.initializer[0];
        assert_eq!(t.dims, vec![2]);
        assert_eq!(t.raw_data, [0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]);
    }
}
