//! [`Graph::verify`]: the shape and element-type rules of every op.

use petgraph::graph::NodeIndex;

use crate::error::GraphError;
use crate::graph::{Graph, InputKind, Node, Op, Weight, WeightFormat, WeightId};
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

impl Checker<'_> {
    fn check(&self) -> Result<(), GraphError> {
        let n = self.node;
        match &n.op {
            Op::Input(kind) => {
                self.operands(0)?;
                match kind {
                    InputKind::Tokens => self.result_is(&Shape(vec![Dim::Dynamic]), DType::I32),
                    InputKind::Position => self.result_is(&Shape::scalar(), DType::Index),
                    InputKind::KvCache => {
                        if n.shape.rank() != KV_RANK
                            || n.shape.dims()[1] != Dim::Static(2)
                            || n.shape.dims().contains(&Dim::Dynamic)
                            || n.dtype != DType::F32
                        {
                            return Err(self.result_error(
                                "tensor<blocks x 2 x max_seq_len x kv_heads x head_dim x f32>",
                            ));
                        }
                        Ok(())
                    }
                }
            }
            Op::Embedding { table } => {
                let [tokens] = self.operands_n()?;
                self.operand_is(0, tokens, &Shape(vec![Dim::Dynamic]), DType::I32)?;
                let w = self.quantized_matrix(*table)?;
                self.result_is(&Shape::tokens_by(w.shape[1]), DType::F32)
            }
            Op::RmsNorm { weight, eps } => {
                let [x] = self.operands_n()?;
                let width = self.activation(0, x)?;
                let w = self.weight(*weight)?;
                if w.format != WeightFormat::F32 || w.shape != [width] {
                    return Err(self.weight_error(w, format!("must be an f32 vector of {width}")));
                }
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(self.attr_error(format!("eps {eps} must be positive")));
                }
                self.result_is(&Shape::tokens_by(width), DType::F32)
            }
            Op::MatMul { weight } | Op::LmHead { weight, .. } => {
                let [x] = self.operands_n()?;
                let k = self.activation(0, x)?;
                let w = self.quantized_matrix(*weight)?;
                if w.shape[1] != k {
                    return Err(self.weight_error(
                        w,
                        format!("has {} columns but the input has {k} features", w.shape[1]),
                    ));
                }
                self.result_is(&Shape::tokens_by(w.shape[0]), DType::F32)
            }
            Op::Rope {
                heads,
                head_dim,
                base,
            } => {
                let [x, pos] = self.operands_n()?;
                let width = self.activation(0, x)?;
                self.operand_is(1, pos, &Shape::scalar(), DType::Index)?;
                if u64::from(*heads) * u64::from(*head_dim) != width || *heads == 0 {
                    return Err(self.attr_error(format!(
                        "{heads} heads x {head_dim} dims do not make the {width} input features"
                    )));
                }
                if !head_dim.is_multiple_of(2) {
                    return Err(self.attr_error(format!("head_dim {head_dim} must be even")));
                }
                if !(base.is_finite() && *base > 0.0) {
                    return Err(self.attr_error(format!("base {base} must be positive")));
                }
                self.result_is(&Shape::tokens_by(width), DType::F32)
            }
            Op::KvWrite { layer } => {
                let [cache, k, v, pos] = self.operands_n()?;
                let [blocks, _, _, kv_heads, head_dim] = self.kv_cache(0, cache)?;
                let width = kv_heads * head_dim;
                self.operand_is(1, k, &Shape::tokens_by(width), DType::F32)?;
                self.operand_is(2, v, &Shape::tokens_by(width), DType::F32)?;
                self.operand_is(3, pos, &Shape::scalar(), DType::Index)?;
                if u64::from(*layer) >= blocks {
                    return Err(self.attr_error(format!("layer {layer} >= {blocks} cached blocks")));
                }
                let c = self.graph.node(cache);
                self.result_is(&c.shape, c.dtype)
            }
            Op::Attention {
                layer,
                heads,
                kv_heads,
                head_dim,
                causal: _,
            } => {
                let [q, cache, pos] = self.operands_n()?;
                let width = u64::from(*heads) * u64::from(*head_dim);
                self.operand_is(0, q, &Shape::tokens_by(width), DType::F32)?;
                let [blocks, _, _, c_kv_heads, c_head_dim] = self.kv_cache(1, cache)?;
                self.operand_is(2, pos, &Shape::scalar(), DType::Index)?;
                if *kv_heads == 0 || !heads.is_multiple_of(*kv_heads) {
                    return Err(self.attr_error(format!(
                        "{kv_heads} kv heads do not divide {heads} query heads"
                    )));
                }
                if (c_kv_heads, c_head_dim) != (u64::from(*kv_heads), u64::from(*head_dim)) {
                    return Err(self.attr_error(format!(
                        "cache holds {c_kv_heads} heads of {c_head_dim}, op wants {kv_heads} of {head_dim}"
                    )));
                }
                if u64::from(*layer) >= blocks {
                    return Err(self.attr_error(format!("layer {layer} >= {blocks} cached blocks")));
                }
                self.result_is(&Shape::tokens_by(width), DType::F32)
            }
            Op::Add | Op::SwiGlu => {
                let [a, b] = self.operands_n()?;
                let width = self.activation(0, a)?;
                self.operand_is(1, b, &Shape::tokens_by(width), DType::F32)?;
                self.result_is(&Shape::tokens_by(width), DType::F32)
            }
        }
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

    fn operands_n<const N: usize>(&self) -> Result<[NodeIndex; N], GraphError> {
        let v = self.operands(N)?;
        Ok(std::array::from_fn(|i| v[i]))
    }

    fn operand_is(
        &self,
        operand: usize,
        from: NodeIndex,
        shape: &Shape,
        dtype: DType,
    ) -> Result<(), GraphError> {
        let src = self.graph.node(from);
        if &src.shape != shape || src.dtype != dtype {
            return Err(self.operand_error(operand, from, type_string(shape, dtype)));
        }
        Ok(())
    }

    /// An activation operand `[?, n]` f32; returns `n`.
    fn activation(&self, operand: usize, from: NodeIndex) -> Result<u64, GraphError> {
        let src = self.graph.node(from);
        match (src.shape.dims(), src.dtype) {
            ([Dim::Dynamic, Dim::Static(n)], DType::F32) => Ok(*n),
            _ => Err(self.operand_error(operand, from, "tensor<?xNxf32>".into())),
        }
    }

    /// A KV-cache operand; returns its five extents.
    fn kv_cache(&self, operand: usize, from: NodeIndex) -> Result<[u64; KV_RANK], GraphError> {
        let src = self.graph.node(from);
        let mut out = [0u64; KV_RANK];
        let ok = src.dtype == DType::F32
            && src.shape.rank() == KV_RANK
            && src.shape.dims().iter().zip(&mut out).all(|(d, o)| match d {
                Dim::Static(n) => {
                    *o = *n;
                    true
                }
                Dim::Dynamic => false,
            })
            && out[1] == 2;
        if !ok {
            return Err(self.operand_error(
                operand,
                from,
                "tensor<blocks x 2 x max_seq_len x kv_heads x head_dim x f32>".into(),
            ));
        }
        Ok(out)
    }

    fn weight(&self, id: WeightId) -> Result<&Weight, GraphError> {
        self.graph.weight(id).ok_or_else(|| GraphError::Weight {
            node: self.node.name.clone(),
            op: self.node.op.kind(),
            weight: format!("#{}", id.0),
            problem: "is not declared".into(),
        })
    }

    fn quantized_matrix(&self, id: WeightId) -> Result<&Weight, GraphError> {
        let w = self.weight(id)?;
        let WeightFormat::Quantized { group_size, .. } = w.format else {
            return Err(self.weight_error(w, "must be quantized".into()));
        };
        if w.shape.len() != 2 || w.shape.contains(&0) {
            return Err(self.weight_error(
                w,
                format!("must be a non-empty matrix, has shape {:?}", w.shape),
            ));
        }
        if group_size == 0 {
            return Err(self.weight_error(w, "has a group size of 0".into()));
        }
        Ok(w)
    }

    fn result_is(&self, shape: &Shape, dtype: DType) -> Result<(), GraphError> {
        if &self.node.shape != shape || self.node.dtype != dtype {
            return Err(self.result_error(&type_string(shape, dtype)));
        }
        Ok(())
    }

    fn result_error(&self, expected: &str) -> GraphError {
        GraphError::ResultType {
            node: self.node.name.clone(),
            op: self.node.op.kind(),
            found: type_string(&self.node.shape, self.node.dtype),
            expected: expected.to_string(),
        }
    }

    fn operand_error(&self, operand: usize, from: NodeIndex, expected: String) -> GraphError {
        let src = self.graph.node(from);
        GraphError::OperandType {
            node: self.node.name.clone(),
            op: self.node.op.kind(),
            operand,
            from: src.name.clone(),
            found: type_string(&src.shape, src.dtype),
            expected,
        }
    }

    fn weight_error(&self, w: &Weight, problem: String) -> GraphError {
        GraphError::Weight {
            node: self.node.name.clone(),
            op: self.node.op.kind(),
            weight: w.symbol.clone(),
            problem,
        }
    }

    fn attr_error(&self, problem: String) -> GraphError {
        GraphError::Attribute {
            node: self.node.name.clone(),
            op: self.node.op.kind(),
            problem,
        }
    }
}
