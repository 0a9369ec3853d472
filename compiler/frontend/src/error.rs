//! Typed errors of graph construction and verification.

use thiserror::Error;

/// A graph that breaks a shape, type or structure rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GraphError {
    /// Wrong number of operands.
    #[error("node `{node}` ({op}): expected {expected} operands, found {found}")]
    OperandCount {
        /// The node.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// Operands the op takes.
        expected: usize,
        /// Operands present.
        found: usize,
    },
    /// Operand edges with a gap or a repeated index.
    #[error("node `{node}` ({op}): operand indices are not 0..{count}")]
    OperandIndices {
        /// The node.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// Number of operand edges.
        count: usize,
    },
    /// An operand of the wrong type.
    #[error(
        "node `{node}` ({op}): operand {operand} (`{from}`) has type {found}, expected {expected}"
    )]
    OperandType {
        /// The node.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// Operand index.
        operand: usize,
        /// The node producing the operand.
        from: String,
        /// The type found.
        found: String,
        /// The type the op needs.
        expected: String,
    },
    /// A node whose own type disagrees with what its op computes.
    #[error("node `{node}` ({op}): result has type {found}, expected {expected}")]
    ResultType {
        /// The node.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// The declared type.
        found: String,
        /// The computed type.
        expected: String,
    },
    /// A weight of the wrong shape or format for its use.
    #[error("node `{node}` ({op}): {problem}")]
    Weight {
        /// The node.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// The weight symbol (or the missing id).
        weight: String,
        /// What is wrong.
        problem: String,
    },
    /// Attributes that contradict each other.
    #[error("node `{node}` ({op}): {problem}")]
    Attribute {
        /// The node.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The graph has a cycle.
    #[error("the graph has a cycle through node `{node}`")]
    Cycle {
        /// A node on or after the cycle.
        node: String,
    },
    /// No outputs, or an output index that is not a node.
    #[error("the graph has {0}")]
    Outputs(String),
}

/// Why a graph could not be built from a model description.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrontendError {
    /// An architecture value the graph cannot be built from.
    #[error("model `{model}`: {field} {problem}")]
    Config {
        /// The model name.
        model: String,
        /// The field (`arch.heads`).
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The built graph failed verification (a frontend bug if the config passed).
    #[error("model `{model}`: graph verification failed: {source}")]
    Graph {
        /// The model name.
        model: String,
        /// The verification error.
        source: GraphError,
    },
}
