//! The error type of the contract's checked constructors and operations:
//! bad matrix geometry, malformed serialised matrices, non-finite values
//! where the contract requires finite ones, and accumulator-overflow proofs
//! that fail.

/// Everything the format and the integer semantics can refuse.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContractError {
    /// A matrix dimension is zero.
    #[error("matrix has {rows} rows and {cols} columns; both must be positive")]
    EmptyMatrix {
        /// Rows (outputs).
        rows: usize,
        /// Columns (reduction length).
        cols: usize,
    },
    /// The group size is not a positive multiple of [`crate::CHANNEL_QUANTUM`].
    #[error("group size {0} must be a positive multiple of 16")]
    BadGroupSize(usize),
    /// A vector has the wrong length.
    #[error("{what} has {got} values, expected {expected}")]
    LengthMismatch {
        /// Which vector.
        what: &'static str,
        /// Values supplied.
        got: usize,
        /// Values expected.
        expected: usize,
    },
    /// A NaN or infinity where finite values are required.
    #[error("{what} holds a non-finite value at index {index}")]
    NonFinite {
        /// Which vector.
        what: &'static str,
        /// First offending index.
        index: usize,
    },
    /// The int32 accumulator of a matmul could overflow.
    #[error(
        "{op}: int32 accumulator can overflow: {k} x {act_max} x {code_max} = {bound} > 2147483647"
    )]
    AccumulatorOverflow {
        /// The operation (e.g. `blk.3.ffn_down`).
        op: String,
        /// Accumulation length.
        k: u64,
        /// Largest |activation code|.
        act_max: u64,
        /// Largest |weight value| after expansion.
        code_max: u64,
        /// The worst-case |sum|.
        bound: u64,
    },
    /// A serialised (or code-built) matrix is malformed.
    #[error("serialised Q35 matrix is invalid: {0}")]
    Corrupt(String),
}
