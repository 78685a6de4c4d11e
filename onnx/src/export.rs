//! The MS-CLAM head as two ONNX graphs (opset 13), written from a model's weights with
//! tract-onnx's protobuf types, for integrators who run their own ONNX runtime:
//!
//! - the **tile head**, run on each strip of tiles as it arrives:
//!   `embeddings [N, D]` -> `attention_logit [N, 1]`, `tile_probability [N]`, `hidden [N, H]`;
//! - the **slide head**, run once at the end of the slide over all the strips' outputs
//!   (concatenated along N): `attention_logit [N, 1]`, `hidden [N, H]` ->
//!   `slide_probabilities [1, C]`, `attention [N, 1]` (the softmax over the slide).
//!
//! `N` is symbolic (`tiles`). The weights are the model's as stored ([`Model::to_weights`]:
//! 16-bit and int8 matrices are written widened to float32, so an int8 model's ONNX graph is
//! not its engine's integer arithmetic).

use msclam_engine::{AttentionKind, Model, ModelWeights};
use prost::Message;
use tract_onnx::pb;

/// ONNX opset the graphs use.
pub const OPSET: i64 = 13;

/// The two graphs of a model, serialised (`.onnx` file contents).
#[derive(Debug, Clone)]
pub struct OnnxHeads {
    /// The per-tile head.
    pub tile_head: Vec<u8>,
    /// The slide head.
    pub slide_head: Vec<u8>,
}

/// Exports `model`'s head (see the module documentation).
pub fn export_heads(model: &Model) -> OnnxHeads {
    let weights = model.to_weights();
    let name = model.metadata().get("embedder.name").unwrap_or("unknown");
    OnnxHeads {
        tile_head: tile_head(&weights, name).encode_to_vec(),
        slide_head: slide_head(&weights).encode_to_vec(),
    }
}

const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn scalar_i64(name: &str, value: i64) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: Vec::new(),
        data_type: INT64,
        int64_data: vec![value],
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attributes: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.into()],
        attribute: attributes,
        ..Default::default()
    }
}

/// `input x W^T + b` (PyTorch's `Linear`).
fn linear(input: &str, weight: &str, bias: &str, output: &str) -> pb::NodeProto {
    node(
        "Gemm",
        &[input, weight, bias],
        output,
        vec![int_attribute("transB", 1)],
    )
}

/// A float tensor value of `dims` (`None`: the symbolic tile count).
fn value(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(n) => Value::DimValue(*n as i64),
                                None => Value::DimParam("tiles".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model_proto(graph: pb::GraphProto, doc: &str) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "msclam".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(graph),
        ..Default::default()
    }
}

fn tile_head(w: &ModelWeights, embedder: &str) -> pb::ModelProto {
    let c = &w.config;
    let (d, h, k) = (c.input_dim, c.hidden_dim, c.attention_dim);
    // The tumor tile classifier's two rows.
    let t = c.tumor_tile_classifier();
    let tile_w = &w.tile_classifier_weight[2 * t * h..(2 * t + 2) * h];
    let tile_b = &w.tile_classifier_bias[2 * t..2 * t + 2];
    let mut initializer = vec![
        tensor("fc.weight", &[h, d], &w.fc_weight),
        tensor("fc.bias", &[h], &w.fc_bias),
        tensor("attention_a.weight", &[k, h], &w.attention_a_weight),
        tensor("attention_a.bias", &[k], &w.attention_a_bias),
        tensor("attention_c.weight", &[1, k], &w.attention_c_weight),
        tensor("attention_c.bias", &[1], &w.attention_c_bias),
        tensor("tile_classifier.weight", &[2, h], tile_w),
        tensor("tile_classifier.bias", &[2], tile_b),
        scalar_i64("tumor_column", 1),
    ];
    let mut nodes = vec![
        linear("embeddings", "fc.weight", "fc.bias", "fc"),
        node("Relu", &["fc"], "hidden", vec![]),
        linear(
            "hidden",
            "attention_a.weight",
            "attention_a.bias",
            "attention_a",
        ),
        node("Tanh", &["attention_a"], "attention_tanh", vec![]),
    ];
    let gated_input = if c.attention == AttentionKind::Gated {
        initializer.push(tensor("attention_b.weight", &[k, h], &w.attention_b_weight));
        initializer.push(tensor("attention_b.bias", &[k], &w.attention_b_bias));
        nodes.push(linear(
            "hidden",
            "attention_b.weight",
            "attention_b.bias",
            "attention_b",
        ));
        nodes.push(node("Sigmoid", &["attention_b"], "attention_gate", vec![]));
        nodes.push(node(
            "Mul",
            &["attention_tanh", "attention_gate"],
            "attention_gated",
            vec![],
        ));
        "attention_gated"
    } else {
        "attention_tanh"
    };
    nodes.extend([
        linear(
            gated_input,
            "attention_c.weight",
            "attention_c.bias",
            "attention_logit",
        ),
        linear(
            "hidden",
            "tile_classifier.weight",
            "tile_classifier.bias",
            "tile_logits",
        ),
        node(
            "Softmax",
            &["tile_logits"],
            "tile_softmax",
            vec![int_attribute("axis", 1)],
        ),
        node(
            "Gather",
            &["tile_softmax", "tumor_column"],
            "tile_probability",
            vec![int_attribute("axis", 1)],
        ),
    ]);
    let graph = pb::GraphProto {
        name: "msclam_tile_head".into(),
        node: nodes,
        initializer,
        input: vec![value("embeddings", &[None, Some(d)])],
        output: vec![
            value("attention_logit", &[None, Some(1)]),
            value("tile_probability", &[None]),
            value("hidden", &[None, Some(h)]),
        ],
        ..Default::default()
    };
    model_proto(
        graph,
        &format!(
            "MS-CLAM tile head for {embedder} embeddings (D {d}): per strip of tiles, the \
             attention logit, the tumor probability and the hidden vector the slide head needs"
        ),
    )
}

fn slide_head(w: &ModelWeights) -> pb::ModelProto {
    let c = &w.config;
    let (h, classes) = (c.hidden_dim, c.num_classes);
    let graph = pb::GraphProto {
        name: "msclam_slide_head".into(),
        node: vec![
            node(
                "Softmax",
                &["attention_logit"],
                "attention",
                vec![int_attribute("axis", 0)],
            ),
            node("Transpose", &["attention"], "attention_row", vec![]),
            node("MatMul", &["attention_row", "hidden"], "pooled", vec![]),
            linear(
                "pooled",
                "classifier.weight",
                "classifier.bias",
                "slide_logits",
            ),
            node(
                "Softmax",
                &["slide_logits"],
                "slide_probabilities",
                vec![int_attribute("axis", 1)],
            ),
        ],
        initializer: vec![
            tensor("classifier.weight", &[classes, h], &w.classifier_weight),
            tensor("classifier.bias", &[classes], &w.classifier_bias),
        ],
        input: vec![
            value("attention_logit", &[None, Some(1)]),
            value("hidden", &[None, Some(h)]),
        ],
        output: vec![
            value("slide_probabilities", &[Some(1), Some(classes)]),
            value("attention", &[None, Some(1)]),
        ],
        ..Default::default()
    };
    model_proto(
        graph,
        &format!(
            "MS-CLAM slide head: over a whole slide's tile-head outputs, the class \
             probabilities (tumor class {}) and the attention map",
            c.tumor_class
        ),
    )
}
