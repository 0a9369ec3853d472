//! [`Graph::verify`]: every node against its op's rule (the shared
//! [`crate::ops::rules`]), plus what only a graph has: inputs, operand edge
//! indices, acyclicity and outputs.

use petgraph::graph::NodeIndex;

use crate::error::GraphError;
use crate::graph::{Graph, InputKind, Node, Op, Weight};
use crate::ops::{AttrDef, AttrValue, OpView, RuleError, ValueType, rules};
use crate::types::{DType, Dim, Shape, type_string};

/// Rank of the KV cache: `[blocks, 2, max_seq_len, kv_heads, head_dim]`.
const KV_RANK: usize = 5;

impl Graph {
    /// Checks every node: operand count and order, each operand's shape and
    /// element type, the node's own type, weights and attributes; then that
    /// the graph is acyclic and has outputs. Returns the first problem.
    pub fn verify(&self) -> Result<(), GraphError> {
        for index in self.node_indices() {
            Checker {
                graph: self,
                index,
                node: self.node(index),
            }
            .check()?;
        }
        self.topological_order()?;
        if self.outputs().is_empty() {
            return Err(GraphError::Outputs("no outputs".into()));
        }
        if let Some(bad) = self
            .outputs()
            .iter()
            .find(|n| n.index() >= self.node_count())
        {
            return Err(GraphError::Outputs(format!(
                "an output {} that is not a node",
                bad.index()
            )));
        }
        Ok(())
    }
}

struct Checker<'g> {
    graph: &'g Graph,
    index: NodeIndex,
    node: &'g Node,
}

/// A graph node as the shared rules see it ([`crate::ops::OpView`]).
struct NodeView<'g> {
    graph: &'g Graph,
    node: &'g Node,
    operands: Vec<NodeIndex>,
    attributes: Vec<AttrValue>,
}

impl OpView for NodeView<'_> {
    fn operand_count(&self) -> usize {
        self.operands.len()
    }

    fn operand(&self, index: usize) -> ValueType {
        let n = self.graph.node(self.operands[index]);
        ValueType::of_graph(&n.shape, n.dtype)
    }

    fn result_count(&self) -> usize {
        1
    }

    fn result(&self, _index: usize) -> ValueType {
        ValueType::of_graph(&self.node.shape, self.node.dtype)
    }

    fn attribute(&self, def: &AttrDef) -> Option<AttrValue> {
        let kind = self.node.op.op_kind()?;
        kind.def()
            .parameters()
            .zip(&self.attributes)
            .find(|(d, _)| d.name == def.name)
            .map(|(_, v)| v.clone())
    }

    fn weight(&self, symbol: &str) -> Option<ValueType> {
        self.graph
            .weights()
            .iter()
            .find(|w| w.symbol == symbol)
            .map(Weight::value_type)
    }
}

impl Checker<'_> {
    fn check(&self) -> Result<(), GraphError> {
        let n = self.node;
        let kind = match &n.op {
            Op::Input(kind) => return self.input(*kind),
            op => op.op_kind(),
        };
        let Some(kind) = kind else {
            return Ok(());
        };
        // The edges must be exactly 0..count (the rule checks the count).
        let operands = self.operands(kind.def().operands.len())?;
        let view = NodeView {
            graph: self.graph,
            node: n,
            attributes: n.op.attributes(self.graph.weights()),
            operands,
        };
        rules::check(kind, &view).map_err(|e| self.rule_error(e, &view))
    }

    fn input(&self, kind: InputKind) -> Result<(), GraphError> {
        let n = self.node;
        self.operands(0)?;
        let ok = match kind {
            InputKind::Tokens => n.shape == Shape(vec![Dim::Dynamic]) && n.dtype == DType::I32,
            InputKind::Position => n.shape == Shape::scalar() && n.dtype == DType::Index,
            InputKind::KvCache => {
                n.shape.rank() == KV_RANK
                    && n.shape.dims()[1] == Dim::Static(2)
                    && !n.shape.dims().contains(&Dim::Dynamic)
                    && n.dtype == DType::F32
            }
        };
        if ok {
            return Ok(());
        }
        let expected = match kind {
            InputKind::Tokens => type_string(&Shape(vec![Dim::Dynamic]), DType::I32),
            InputKind::Position => type_string(&Shape::scalar(), DType::Index),
            InputKind::KvCache => {
                "tensor<blocks x 2 x max_seq_len x kv_heads x head_dim x f32>".into()
            }
        };
        Err(GraphError::ResultType {
            node: n.name.clone(),
            op: n.op.kind(),
            found: type_string(&n.shape, n.dtype),
            expected,
        })
    }

    /// The operands, checking the edge indices are exactly 0..expected.
    fn operands(&self, expected: usize) -> Result<Vec<NodeIndex>, GraphError> {
        let edges = self.graph.operand_edges(self.index);
        if edges.len() != expected {
            return Err(GraphError::OperandCount {
                node: self.node.name.clone(),
                op: self.node.op.kind(),
                expected,
                found: edges.len(),
            });
        }
        if edges.iter().enumerate().any(|(i, (k, _))| *k as usize != i) {
            return Err(GraphError::OperandIndices {
                node: self.node.name.clone(),
                op: self.node.op.kind(),
                count: edges.len(),
            });
        }
        Ok(edges.into_iter().map(|(_, n)| n).collect())
    }

    fn rule_error(&self, e: RuleError, view: &NodeView<'_>) -> GraphError {
        let node = self.node.name.clone();
        let op = self.node.op.kind();
        match e {
            RuleError::OperandCount { expected, found } => GraphError::OperandCount {
                node,
                op,
                expected,
                found,
            },
            RuleError::Operand {
                index,
                found,
                expected,
                ..
            } => GraphError::OperandType {
                node,
                op,
                operand: index,
                from: self.graph.node(view.operands[index]).name.clone(),
                found,
                expected,
            },
            RuleError::Result {
                found, expected, ..
            } => GraphError::ResultType {
                node,
                op,
                found,
                expected,
            },
            RuleError::Weight {
                symbol, message, ..
            } => GraphError::Weight {
                node,
                op,
                weight: symbol,
                problem: message,
            },
            e @ (RuleError::ResultCount { .. } | RuleError::Attribute { .. }) => {
                GraphError::Attribute {
                    node,
                    op,
                    problem: e.message(),
                }
            }
        }
    }
}
