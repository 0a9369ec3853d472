//! Builds and shape-checks the transformer dataflow graph from a [`q35_model::ModelSpec`].
//!
//! The graph ([`Graph`]) is a petgraph digraph of [`Node`]s, one per value:
//! inputs (tokens, start position, KV cache), the embedding, per block RMSNorm,
//! Q/K/V projections, RoPE, the KV-cache write, grouped-query attention, the
//! output projection, residual adds and the SwiGLU feed-forward, then the final
//! norm and the LM head. Edges carry the operand index. Weights are not nodes:
//! ops name them by [`WeightId`] and the graph keeps their declarations
//! ([`Weight`]) in GGUF order. [`Graph::verify`] checks the shape and element
//! type of every edge; [`Graph::topological_order`] gives the deterministic
//! order the MLIR lowering walks.
//!
//! [`ops`] defines every q35 op once (names, operands, attributes, shape
//! rules); the graph checks and the MLIR side are driven from it.
//! [`lpu_ops`] defines the lpu ops (the hardware-level dialect of one
//! decode step) the same way.
//!
//! The graph describes one decode step of `?` tokens starting at position
//! `pos`, with a KV cache of `max_seq_len` positions.

mod build;
mod error;
mod graph;
pub mod lpu_ops;
pub mod ops;
mod types;
mod verify;

pub use build::{GraphConfig, OUTPUT_MIX, build, build_from_config};
pub use error::{FrontendError, GraphError};
pub use graph::{Graph, InputKind, Node, Op, Weight, WeightFormat, WeightId};
pub use types::{DType, Dim, Shape};

/// Index of a graph node (petgraph's).
pub use petgraph::graph::NodeIndex;
