//! A small builder for ONNX graphs: nodes with generated value names,
//! initializers from weight tensors, typed inputs and outputs with a
//! symbolic batch dimension. The emitters use nothing else.

use std::collections::HashSet;

use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};

/// IR version written into every model: onnxruntime 1.31 accepts IR <= 13;
/// 8 is the version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset of every model. Opset 17 keeps `ReduceMean`'s
/// axes an attribute (opset 18 moves them to an input).
pub const OPSET: i64 = 17;
/// Name of the symbolic batch dimension.
pub const BATCH: &str = "batch";

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A size chosen at run time (the batch).
    Symbolic(&'static str),
}

/// A node attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// One integer.
    Int(&'static str, i64),
    /// A list of integers.
    Ints(&'static str, Vec<i64>),
    /// One float.
    Float(&'static str, f32),
    /// A string attribute.
    Str(&'static str, &'static str),
}

impl Attr {
    fn proto(&self) -> AttributeProto {
        let mut a = AttributeProto::default();
        match self {
            Attr::Int(name, v) => {
                a.name = Some(name.to_string());
                a.r#type = Some(AttributeType::Int as i32);
                a.i = Some(*v);
            }
            Attr::Ints(name, v) => {
                a.name = Some(name.to_string());
                a.r#type = Some(AttributeType::Ints as i32);
                a.ints = v.clone();
            }
            Attr::Float(name, v) => {
                a.name = Some(name.to_string());
                a.r#type = Some(AttributeType::Float as i32);
                a.f = Some(*v);
            }
            Attr::Str(name, v) => {
                a.name = Some(name.to_string());
                a.r#type = Some(AttributeType::String as i32);
                a.s = Some(v.as_bytes().to_vec());
            }
        }
        a
    }
}

/// Builds one graph; [`GraphBuilder::finish`] wraps it in a model.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    names: HashSet<String>,
    counter: usize,
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Symbolic(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> GraphBuilder {
        let mut b = GraphBuilder::default();
        b.graph.name = Some(name.to_string());
        b
    }

    /// Reserve `name` as a value name; names are unique within a graph.
    fn claim(&mut self, name: String) -> String {
        assert!(
            self.names.insert(name.clone()),
            "value name {name:?} used twice: an emitter bug"
        );
        name
    }

    /// A fresh value name derived from `hint`.
    fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{hint}_{}", self.counter);
            if !self.names.contains(&name) {
                return self.claim(name);
            }
        }
    }

    /// Declare a float graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        let name = self.claim(name.to_string());
        self.graph.input.push(value_info(&name, dims));
        name
    }

    /// Declare `value` a float graph output called `name` (through an
    /// `Identity` when the names differ).
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        let name = if value == name {
            name.to_string()
        } else {
            let out = self.claim(name.to_string());
            self.push_node("Identity", &[value], std::slice::from_ref(&out), &[]);
            out
        };
        self.graph.output.push(value_info(&name, dims));
    }

    /// A float initializer of shape `dims` from `data` (row-major).
    pub fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, DataType::Float, raw)
    }

    /// An int64 initializer (shapes, axes).
    pub fn initializer_i64(&mut self, name: &str, data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, &[data.len()], DataType::Int64, raw)
    }

    fn push_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        ty: DataType,
        raw: Vec<u8>,
    ) -> String {
        let name = self.claim(name.to_string());
        self.graph.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    fn push_node(&mut self, op: &str, inputs: &[&str], outputs: &[String], attrs: &[Attr]) {
        let index = self.graph.node.len();
        self.graph.node.push(NodeProto {
            op_type: Some(op.to_string()),
            name: Some(format!("{op}_{index}")),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            attribute: attrs.iter().map(Attr::proto).collect(),
            ..Default::default()
        });
    }

    /// Add a node with one output; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.push_node(op, inputs, std::slice::from_ref(&out), attrs);
        out
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> usize {
        self.graph.node.len()
    }

    /// The model: this graph, [`IR_VERSION`], the default domain at [`OPSET`].
    pub fn finish(self) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("bfx-export".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_graph_round_trips_through_protobuf() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &[Dim::Symbolic(BATCH), Dim::Fixed(2)]);
        let w = g.initializer("w", &[2], &[1.5, -2.0]);
        let y = g.node("Mul", &[&x, &w], &[]);
        let y = g.node(
            "ReduceMean",
            &[&y],
            &[Attr::Ints("axes", vec![1]), Attr::Int("keepdims", 0)],
        );
        g.output(&y, "y", &[Dim::Symbolic(BATCH)]);
        let model = g.finish();
        let bytes = model.encode_to_vec();
        let back = ModelProto::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back, model);
        assert_eq!(back.ir_version, Some(8));
        let graph = back.graph.expect("graph");
        // Mul, ReduceMean and the Identity that names the output.
        let ops: Vec<_> = graph.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(ops, ["Mul", "ReduceMean", "Identity"]);
        assert_eq!(
            graph.initializer[0].raw_data(),
            [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
        );
        assert_eq!(graph.node[1].attribute[0].ints, vec![1]);
    }

    #[test]
    #[should_panic(expected = "used twice")]
    fn duplicate_names_are_an_emitter_bug() {
        let mut g = GraphBuilder::new("t");
        g.input("x", &[Dim::Fixed(1)]);
        g.initializer("x", &[1], &[0.0]);
    }
}
