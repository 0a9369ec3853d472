//! The dataflow graph: nodes (one per value), operand edges, weight declarations.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use q35_model::QuantScheme;

use crate::error::GraphError;
use crate::ops::{AttrValue, Elem, OpKind, ValueType};
use crate::types::{DType, Dim, Shape};

/// Index of a weight declaration in [`Graph::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeightId(pub usize);

/// How a weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Quantized with `scheme` in groups of `group_size` along a row.
    Quantized {
        /// The quantization scheme.
        scheme: QuantScheme,
        /// Weights per group (one scale per group).
        group_size: u32,
    },
    /// Plain f32 (norm weights, the rotated stream's head mix).
    F32,
}

/// A weight declaration; ops refer to it by [`WeightId`], the MLIR by symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    /// MLIR symbol (`blk.0.attn_q`).
    pub symbol: String,
    /// GGUF tensor name (`blk.0.attn_q.weight`).
    pub source: String,
    /// Shape: `[out, in]` for matrices (rows of `in` values), `[n]` for vectors.
    pub shape: Vec<u64>,
    /// Storage format.
    pub format: WeightFormat,
}

/// What an input node stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Token ids of this step, `[?]` i32.
    Tokens,
    /// Position of the first token, scalar index.
    Position,
    /// The KV cache, `[blocks, 2, max_seq_len, kv_heads, head_dim]` f32 (docs/q35-format.md 8.4).
    KvCache,
}

/// The operation that computes a node's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A function argument.
    Input(InputKind),
    /// Rows of `table` selected by the token ids.
    Embedding {
        /// The `[vocab, hidden]` table.
        table: WeightId,
    },
    /// RMSNorm over the last dimension with a learned scale.
    RmsNorm {
        /// The `[hidden]` scale.
        weight: WeightId,
        /// Added to the mean square.
        eps: f32,
    },
    /// `x W^T`: int8 activations, int32 accumulation.
    MatMul {
        /// The `[out, in]` quantized weight.
        weight: WeightId,
    },
    /// Rotary position embedding.
    Rope {
        /// Heads in the operand.
        heads: u32,
        /// Dimensions per head.
        head_dim: u32,
        /// Frequency base.
        base: f32,
    },
    /// Writes (k, v) of block `layer` into the cache; operands: cache, k, v, pos.
    KvWrite {
        /// The block.
        layer: u32,
    },
    /// Grouped-query attention; operands: q, cache, pos.
    Attention {
        /// The block.
        layer: u32,
        /// Query heads.
        heads: u32,
        /// Key/value heads (divides `heads`).
        kv_heads: u32,
        /// Dimensions per head.
        head_dim: u32,
        /// Token t sees only positions up to pos + t.
        causal: bool,
    },
    /// Element-wise sum.
    Add,
    /// `silu(gate) * up`; operands: gate, up.
    SwiGlu,
    /// The logits projection.
    LmHead {
        /// The `[vocab, hidden]` weight.
        weight: WeightId,
        /// Whether `weight` is the token embedding table.
        tied: bool,
    },
    /// `y_r = sum_i M[r, i] x_i` along lanes (the rotated stream's mix of
    /// the final norm's output, docs/q35-format.md 14.5).
    Mix {
        /// The `[n, n]` f32 matrix.
        matrix: WeightId,
        /// Its diagonal blocks' size (zero outside them).
        block: u32,
    },
}

impl Op {
    /// The q35 op this node lowers to; `None` for inputs (function arguments).
    pub fn op_kind(&self) -> Option<OpKind> {
        Some(match self {
            Op::Input(_) => return None,
            Op::Embedding { .. } => OpKind::Embed,
            Op::RmsNorm { .. } => OpKind::RmsNorm,
            Op::MatMul { .. } => OpKind::MatMul,
            Op::Rope { .. } => OpKind::Rope,
            Op::KvWrite { .. } => OpKind::KvWrite,
            Op::Attention { .. } => OpKind::Attention,
            Op::Add => OpKind::Add,
            Op::SwiGlu => OpKind::SwiGlu,
            Op::LmHead { .. } => OpKind::LmHead,
            Op::Mix { .. } => OpKind::Mix,
        })
    }

    /// A short name for diagnostics: the op's mnemonic (`matmul`), or `input`.
    pub fn kind(&self) -> &'static str {
        self.op_kind().map_or("input", OpKind::mnemonic)
    }

    /// The values of the op's parameters (the table's attributes that are
    /// not constants, [`crate::ops::OpDef::parameters`]), in table order.
    /// Weights become their symbols (`#id` if not declared in `weights`).
    pub fn attributes(&self, weights: &[Weight]) -> Vec<AttrValue> {
        let symbol = |id: &WeightId| {
            AttrValue::Symbol(
                weights
                    .get(id.0)
                    .map_or_else(|| format!("#{}", id.0), |w| w.symbol.clone()),
            )
        };
        let int = |v: &u32| AttrValue::Int(i64::from(*v));
        let float = |v: f32| AttrValue::Float(f64::from(v));
        match self {
            Op::Input(_) | Op::Add | Op::SwiGlu => vec![],
            Op::Embedding { table } => vec![symbol(table)],
            Op::RmsNorm { weight, eps } => vec![symbol(weight), float(*eps)],
            Op::MatMul { weight } => vec![symbol(weight)],
            Op::Rope {
                heads,
                head_dim,
                base,
            } => vec![int(heads), int(head_dim), float(*base)],
            Op::KvWrite { layer } => vec![int(layer)],
            Op::Attention {
                layer,
                heads,
                kv_heads,
                head_dim,
                causal,
            } => vec![
                int(layer),
                int(heads),
                int(kv_heads),
                int(head_dim),
                AttrValue::Bool(*causal),
                float(1.0 / (*head_dim as f32).sqrt()),
            ],
            Op::LmHead { weight, tied } => vec![symbol(weight), AttrValue::Bool(*tied)],
            Op::Mix { matrix, block } => vec![symbol(matrix), int(block)],
        }
    }

    /// The weight this op reads, if any.
    pub fn weight(&self) -> Option<WeightId> {
        match self {
            Op::Embedding { table } => Some(*table),
            Op::RmsNorm { weight, .. }
            | Op::MatMul { weight }
            | Op::LmHead { weight, .. }
            | Op::Mix { matrix: weight, .. } => Some(*weight),
            Op::Input(_)
            | Op::Rope { .. }
            | Op::KvWrite { .. }
            | Op::Attention { .. }
            | Op::Add
            | Op::SwiGlu => None,
        }
    }
}

impl Weight {
    /// The declared type: `tensor<N x K x !q35.qweight<...>>` or `tensor<N x f32>`.
    pub fn value_type(&self) -> ValueType {
        let elem = match self.format {
            WeightFormat::Quantized { scheme, group_size } => Elem::QWeight {
                scheme: scheme.as_str().to_string(),
                group_size: u64::from(group_size),
            },
            WeightFormat::F32 => Elem::F32,
        };
        ValueType::tensor(self.shape.iter().map(|&d| Dim::Static(d)).collect(), elem)
    }

    /// The values of `q35.weight`'s attributes, in table order.
    pub fn attributes(&self) -> Vec<AttrValue> {
        vec![
            AttrValue::Str(self.symbol.clone()),
            AttrValue::Type(self.value_type()),
            AttrValue::Str(self.source.clone()),
        ]
    }
}

/// A value of the graph and the op computing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The op.
    pub op: Op,
    /// A unique, readable name (`blk.3.q`), used in diagnostics and MLIR locations.
    pub name: String,
    /// The value's shape.
    pub shape: Shape,
    /// The value's element type.
    pub dtype: DType,
}

/// The dataflow graph of one decode step.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    graph: DiGraph<Node, u32>,
    weights: Vec<Weight>,
    inputs: Vec<NodeIndex>,
    outputs: Vec<NodeIndex>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a weight.
    pub fn add_weight(&mut self, weight: Weight) -> WeightId {
        self.weights.push(weight);
        WeightId(self.weights.len() - 1)
    }

    /// Adds a node whose operands are `operands`, in order. Input nodes are
    /// also recorded as function arguments, in the order they are added.
    pub fn add_node(&mut self, node: Node, operands: &[NodeIndex]) -> NodeIndex {
        let is_input = matches!(node.op, Op::Input(_));
        let index = self.graph.add_node(node);
        for (i, &operand) in operands.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 operands");
            self.graph.add_edge(operand, index, i);
        }
        if is_input {
            self.inputs.push(index);
        }
        index
    }

    /// Marks `node` as a result of the step (in order).
    pub fn add_output(&mut self, node: NodeIndex) {
        self.outputs.push(node);
    }

    /// The node at `index`.
    pub fn node(&self, index: NodeIndex) -> &Node {
        &self.graph[index]
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// All node indices, in insertion order.
    pub fn node_indices(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.graph.node_indices()
    }

    /// The operands of `index`, ordered by operand index.
    pub fn operands(&self, index: NodeIndex) -> Vec<NodeIndex> {
        self.operand_edges(index)
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }

    /// Operand edges of `index` as `(operand index, source)`, sorted by
    /// operand index (possibly with gaps or repeats: [`Graph::verify`] checks).
    pub(crate) fn operand_edges(&self, index: NodeIndex) -> Vec<(u32, NodeIndex)> {
        let mut edges: Vec<(u32, NodeIndex)> = self
            .graph
            .edges_directed(index, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges
    }

    /// Weight declarations, in declaration (GGUF) order.
    pub fn weights(&self) -> &[Weight] {
        &self.weights
    }

    /// The weight `id`, if declared.
    pub fn weight(&self, id: WeightId) -> Option<&Weight> {
        self.weights.get(id.0)
    }

    /// Function arguments, in order.
    pub fn inputs(&self) -> &[NodeIndex] {
        &self.inputs
    }

    /// Function results, in order.
    pub fn outputs(&self) -> &[NodeIndex] {
        &self.outputs
    }

    /// A topological order, deterministic: among ready nodes the one added
    /// first comes first, so a graph built in dataflow order keeps it.
    pub fn topological_order(&self) -> Result<Vec<NodeIndex>, GraphError> {
        let mut pending: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| self.graph.edges_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> = self
            .graph
            .node_indices()
            .filter(|n| pending[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.graph.node_count());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                pending[t.index()] -= 1;
                if pending[t.index()] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        if order.len() != self.graph.node_count() {
            let stuck = self
                .graph
                .node_indices()
                .find(|n| pending[n.index()] > 0)
                .map(|n| self.graph[n].name.clone())
                .unwrap_or_default();
            return Err(GraphError::Cycle { node: stuck });
        }
        Ok(order)
    }

    /// Counts nodes by op kind (for reports and tests).
    pub fn count_ops(&self, kind: &str) -> usize {
        self.graph
            .node_weights()
            .filter(|n| n.op.kind() == kind)
            .count()
    }
}

impl Graph {
    /// The graph in Graphviz DOT: one node per value (`name\nop type`), edges
    /// labelled with the operand index, weights named on their ops. Stable
    /// for a given graph.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph decode {\n  node [shape=box, fontname=monospace];\n");
        for n in self.graph.node_indices() {
            let node = &self.graph[n];
            let weight = node
                .op
                .weight()
                .and_then(|w| self.weight(w))
                .map(|w| format!(" @{}", w.symbol))
                .unwrap_or_default();
            let label = format!(
                "{}\\n{}{} : {}",
                node.name,
                node.op.kind(),
                weight,
                crate::types::type_string(&node.shape, node.dtype)
            );
            out.push_str(&format!(
                "  n{} [label=\"{}\"];\n",
                n.index(),
                label.replace('"', "\\\"")
            ));
        }
        for n in self.graph.node_indices() {
            for (i, src) in self.operand_edges(n) {
                out.push_str(&format!(
                    "  n{} -> n{} [label=\"{i}\"];\n",
                    src.index(),
                    n.index()
                ));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            out.push_str(&format!(
                "  out{i} [shape=oval, label=\"result {i}\"];\n  n{} -> out{i};\n",
                o.index()
            ));
        }
        out.push_str("}\n");
        out
    }
}
