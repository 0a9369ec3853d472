//! Graph construction and verification: op counts, weight order and shapes,
//! deterministic order, and typed errors for bad configs and bad edges.

use q35_frontend::{
    DType, Dim, FrontendError, Graph, GraphConfig, GraphError, InputKind, Node, Op, Shape, Weight,
    WeightFormat, build_from_config,
};
use q35_model::{Architecture, QuantScheme, Rotation};

fn tiny() -> GraphConfig {
    GraphConfig {
        name: "tiny".into(),
        arch: Architecture {
            family: "llama".into(),
            blocks: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            ffn: 128,
            vocab: 256,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            tied_embeddings: true,
            context: 128,
        },
        max_seq_len: 128,
        scheme: QuantScheme::Q35,
        group_size: 32,
        group_size_of: [None; 8],
        rotation: Rotation::None,
    }
}

/// `tiny()` with its architecture changed by `f`.
fn tiny_arch(f: impl FnOnce(&mut Architecture)) -> GraphConfig {
    let mut c = tiny();
    f(&mut c.arch);
    c
}

fn smollm2() -> GraphConfig {
    GraphConfig {
        name: "smollm2".into(),
        arch: Architecture {
            family: "llama".into(),
            blocks: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            ffn: 1536,
            vocab: 49152,
            rope_base: 100000.0,
            norm_eps: 1e-5,
            tied_embeddings: true,
            context: 8192,
        },
        max_seq_len: 8192,
        scheme: QuantScheme::Q35,
        group_size: 64,
        group_size_of: [None; 8],
        rotation: Rotation::None,
    }
}

#[test]
fn tiny_graph_has_every_op() {
    let g = build_from_config(&tiny()).unwrap();
    assert_eq!(g.count_ops("input"), 3);
    assert_eq!(g.count_ops("embed"), 1);
    assert_eq!(g.count_ops("rmsnorm"), 2 * 2 + 1);
    assert_eq!(g.count_ops("matmul"), 7 * 2);
    assert_eq!(g.count_ops("rope"), 2 * 2);
    assert_eq!(g.count_ops("kv_write"), 2);
    assert_eq!(g.count_ops("attention"), 2);
    assert_eq!(g.count_ops("add"), 2 * 2);
    assert_eq!(g.count_ops("swiglu"), 2);
    assert_eq!(g.count_ops("lm_head"), 1);
    assert_eq!(g.node_count(), 3 + 1 + 2 * 16 + 2);
    assert_eq!(g.outputs().len(), 2);
    let logits = g.node(g.outputs()[0]);
    assert_eq!(logits.shape, Shape::tokens_by(256));
    assert_eq!(
        logits.op,
        Op::LmHead {
            weight: q35_frontend::WeightId(0),
            tied: true
        }
    );
    let cache = g.node(g.outputs()[1]);
    assert_eq!(cache.shape, Shape::fixed(&[2, 2, 128, 2, 16]));
    assert_eq!(cache.dtype, DType::F32);
}

#[test]
fn smollm2_weights_match_the_gguf_tensor_list() {
    let g = build_from_config(&smollm2()).unwrap();
    // 272 tensors: token_embd, 9 per block, output_norm (tied: no output.weight).
    assert_eq!(g.weights().len(), 1 + 30 * 9 + 1);
    let w = &g.weights()[0];
    assert_eq!(
        (w.symbol.as_str(), w.source.as_str()),
        ("token_embd", "token_embd.weight")
    );
    assert_eq!(w.shape, [49152, 576]);
    let q = g
        .weights()
        .iter()
        .find(|w| w.source == "blk.7.attn_k.weight")
        .unwrap();
    assert_eq!(q.shape, [3 * 64, 576]);
    let down = g
        .weights()
        .iter()
        .find(|w| w.source == "blk.29.ffn_down.weight")
        .unwrap();
    assert_eq!(down.shape, [576, 1536]);
    let norm = g
        .weights()
        .iter()
        .find(|w| w.source == "blk.0.ffn_norm.weight")
        .unwrap();
    assert_eq!(
        (norm.shape.as_slice(), norm.format),
        (&[576u64][..], WeightFormat::F32)
    );
    assert_eq!(g.weights().last().unwrap().source, "output_norm.weight");
}

#[test]
fn untied_head_gets_its_own_weight() {
    let g = build_from_config(&tiny_arch(|a| a.tied_embeddings = false)).unwrap();
    let last = g.weights().last().unwrap();
    assert_eq!(last.source, "output.weight");
    assert_eq!(last.shape, [256, 64]);
    let head = g.node(g.outputs()[0]);
    assert!(matches!(head.op, Op::LmHead { tied: false, .. }));
}

#[test]
fn topological_order_is_deterministic_and_respects_operands() {
    let g = build_from_config(&tiny()).unwrap();
    let order = g.topological_order().unwrap();
    assert_eq!(order, g.topological_order().unwrap());
    assert_eq!(order.len(), g.node_count());
    let mut position = vec![0; g.node_count()];
    for (i, n) in order.iter().enumerate() {
        position[n.index()] = i;
    }
    for &n in &order {
        for o in g.operands(n) {
            assert!(
                position[o.index()] < position[n.index()],
                "{}",
                g.node(n).name
            );
        }
    }
    // Built in dataflow order, the graph keeps it.
    assert!(order.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn config_errors_name_the_field() {
    let err = build_from_config(&tiny_arch(|a| a.kv_heads = 3)).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Config {
                field: "arch.kv_heads",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "model `tiny`: arch.kv_heads (3) must divide arch.heads (4)"
    );

    let err = build_from_config(&GraphConfig {
        group_size: 0,
        ..tiny()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Config {
                field: "quant.group_size",
                ..
            }
        ),
        "{err}"
    );
    let err = build_from_config(&GraphConfig {
        group_size_of: [None, Some(0), None, None, None, None, None, None],
        ..tiny()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Config {
                field: "quant.group_size_of",
                ..
            }
        ),
        "{err}"
    );
    // A group size that does not divide K is fine: the last group is padded.
    build_from_config(&GraphConfig {
        group_size: 48,
        ..tiny()
    })
    .unwrap();

    let err = build_from_config(&tiny_arch(|a| a.blocks = 0)).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Config {
                field: "arch.blocks",
                ..
            }
        ),
        "{err}"
    );

    let err = build_from_config(&tiny_arch(|a| a.head_dim = 15)).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Config {
                field: "arch.head_dim",
                ..
            }
        ),
        "{err}"
    );
}

fn activation(name: &str, op: Op, width: u64) -> Node {
    Node {
        op,
        name: name.into(),
        shape: Shape::tokens_by(width),
        dtype: DType::F32,
    }
}

/// tokens -> embed(64) -> matmul with weight `w`.
fn small_graph(w: Weight) -> Graph {
    let mut g = Graph::new();
    let table = g.add_weight(Weight {
        symbol: "token_embd".into(),
        source: "token_embd.weight".into(),
        shape: vec![256, 64],
        format: WeightFormat::Quantized {
            scheme: QuantScheme::Q35,
            group_size: 32,
        },
    });
    let wid = g.add_weight(w);
    let tokens = g.add_node(
        Node {
            op: Op::Input(InputKind::Tokens),
            name: "tokens".into(),
            shape: Shape(vec![Dim::Dynamic]),
            dtype: DType::I32,
        },
        &[],
    );
    let x = g.add_node(activation("embed", Op::Embedding { table }, 64), &[tokens]);
    let y = g.add_node(activation("proj", Op::MatMul { weight: wid }, 8), &[x]);
    g.add_output(y);
    g
}

fn matrix(shape: Vec<u64>) -> Weight {
    Weight {
        symbol: "w".into(),
        source: "w.weight".into(),
        shape,
        format: WeightFormat::Quantized {
            scheme: QuantScheme::Int8,
            group_size: 32,
        },
    }
}

#[test]
fn verify_accepts_a_consistent_graph() {
    small_graph(matrix(vec![8, 64])).verify().unwrap();
}

#[test]
fn verify_rejects_a_k_mismatch() {
    let err = small_graph(matrix(vec![8, 32])).verify().unwrap_err();
    assert_eq!(
        err.to_string(),
        "node `proj` (matmul): input has 64 features but weight @w has 32 columns"
    );
}

#[test]
fn verify_rejects_a_wrong_result_type() {
    let err = small_graph(matrix(vec![16, 64])).verify().unwrap_err();
    assert!(
        matches!(&err, GraphError::ResultType { node, .. } if node == "proj"),
        "{err}"
    );
    assert!(
        err.to_string().contains("expected tensor<?x16xf32>"),
        "{err}"
    );
}

#[test]
fn verify_rejects_unquantized_matmul_weight_and_bad_operands() {
    let mut w = matrix(vec![8, 64]);
    w.format = WeightFormat::F32;
    let err = small_graph(w).verify().unwrap_err();
    assert!(
        err.to_string()
            .contains("weight @w must be a quantized matrix, not tensor<8x64xf32>"),
        "{err}"
    );

    // An add fed by tokens (i32) instead of activations.
    let mut g = small_graph(matrix(vec![8, 64]));
    let tokens = g.inputs()[0];
    let proj = g.outputs()[0];
    g.add_node(activation("sum", Op::Add, 8), &[proj, tokens]);
    let err = g.verify().unwrap_err();
    assert!(
        matches!(&err, GraphError::OperandType { node, operand: 1, from, .. } if node == "sum" && from == "tokens"),
        "{err}"
    );
}

#[test]
fn verify_rejects_wrong_operand_count() {
    let mut g = small_graph(matrix(vec![8, 64]));
    let proj = g.outputs()[0];
    g.add_node(activation("swiglu", Op::SwiGlu, 8), &[proj]);
    let err = g.verify().unwrap_err();
    assert!(
        matches!(
            err,
            GraphError::OperandCount {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
}

/// The graph declares exactly the tensors `q35-model` says a checkpoint of the
/// architecture holds (the list it checks GGUF files against), in GGUF order,
/// with `[out, in]` shapes being GGUF dims reversed.
#[test]
fn weights_match_the_model_crates_tensor_list() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for example in ["tiny.toml", "llama-70b.toml"] {
        let spec = q35_model::load(root.join(example)).unwrap();
        let g = q35_frontend::build(&spec).unwrap();
        let ours: Vec<(String, Vec<u64>)> = g
            .weights()
            .iter()
            .map(|w| (w.source.clone(), w.shape.iter().rev().copied().collect()))
            .collect();
        assert_eq!(ours, spec.arch.expected_tensors(), "{example}");
    }
}

#[test]
fn dot_names_every_node_and_edge() {
    let g = build_from_config(&tiny()).unwrap();
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph decode {"));
    assert_eq!(
        dot.matches(" [label=\"").count(),
        g.node_count() + edges(&g)
    );
    assert!(dot.contains("blk.1.ffn_down\\nmatmul @blk.1.ffn_down : tensor<?x64xf32>"));
    assert_eq!(dot, build_from_config(&tiny()).unwrap().to_dot());
}

fn edges(g: &Graph) -> usize {
    g.node_indices().map(|n| g.operands(n).len()).sum()
}

/// `group_size_of` gives its kinds' weights (and the tied embedding, the
/// LM head's) their own group size; the rest keep `group_size`.
#[test]
fn group_size_of_reaches_the_weight_types() {
    let mut c = tiny();
    // attn_k, attn_v and output (the head, tied to the embedding).
    c.group_size_of = [None, Some(64), Some(64), None, None, None, None, Some(16)];
    let g = build_from_config(&c).unwrap();
    let mut seen = 0;
    for w in g.weights() {
        let expect = if w.source.contains("attn_k") || w.source.contains("attn_v") {
            64
        } else if w.source == "token_embd.weight" || w.source == "output.weight" {
            16
        } else {
            32
        };
        if let WeightFormat::Quantized { group_size, .. } = w.format {
            assert_eq!(group_size, expect, "{}", w.source);
            seen += 1;
        }
    }
    assert_eq!(seen, 7 * 2 + 1);
}

/// With the block-Hadamard rotation the final norm's output is mixed by
/// `q35.mix` (blocks of the largest power of two dividing hidden, at most
/// 512) before the LM head, which reads the mix; its matrix is the f32
/// `output_mix`, the only weight beyond the checkpoint's tensors.
#[test]
fn the_rotation_mixes_the_final_norm_before_the_head() {
    for (mut c, block) in [(tiny(), 64), (smollm2(), 64)] {
        let plain = build_from_config(&c).unwrap();
        c.rotation = Rotation::BlockHadamard;
        let g = build_from_config(&c).unwrap();
        assert_eq!(g.node_count(), plain.node_count() + 1);
        assert_eq!(g.weights().len(), plain.weights().len() + 1);
        let h = u64::from(c.arch.hidden);
        let mix_w = g
            .weights()
            .iter()
            .position(|w| w.source == q35_frontend::OUTPUT_MIX)
            .unwrap();
        assert_eq!(g.weights()[mix_w].shape, [h, h]);
        assert_eq!(g.weights()[mix_w].format, WeightFormat::F32);
        let mix = g
            .node_indices()
            .find(|&n| matches!(g.node(n).op, Op::Mix { .. }))
            .unwrap();
        assert_eq!(
            g.node(mix).op,
            Op::Mix {
                matrix: q35_frontend::WeightId(mix_w),
                block
            }
        );
        assert_eq!(g.node(g.operands(mix)[0]).name, "output_norm");
        let head = g
            .node_indices()
            .find(|&n| matches!(g.node(n).op, Op::LmHead { .. }))
            .unwrap();
        assert_eq!(g.operands(head), [mix]);
    }
}
