//! The Q35 quantizers and whole-model quantization.
//!
//! The format and its integer semantics -- the contract with the hardware
//! -- live in `q35-contract` (docs/q35-format.md); this crate produces data
//! in that format and measures what it costs:
//!
//! - [`quantize()`]: round-to-nearest and activation-aware quantizers
//!   ([`quantize::quantize_gptq`] adds in-group error compensation) producing
//!   [`QuantizedMatrix`]es.
//! - [`metrics`]: relative RMSE, layer-output error and the per-channel
//!   activation importance used for calibration.
//! - [`model`]: whole-model quantization on the f32 reference model:
//!   calibration, quantized layers running the integer semantics, reports and
//!   KL-divergence / perplexity against the reference.
//! - [`golden`]: builds the contract's golden forward pass
//!   ([`q35_contract::GoldenModel`]) from the reference model and its
//!   quantized layers.
//!
//! The contract types this crate's API hands out ([`QuantScheme`],
//! [`QuantizedMatrix`], [`IntMatrix`], [`ActivationI8`], [`ContractError`])
//! are re-exported so its users need no second import.

pub mod golden;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod quantize;

pub use progress::Progress;
pub use q35_contract::{ActivationI8, ContractError, IntMatrix, QuantScheme, QuantizedMatrix};
pub use quantize::quantize;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// The weight slice does not hold `rows * cols` values.
    #[error("weights have {len} values, expected {rows} x {cols}")]
    ShapeMismatch {
        /// Rows (outputs).
        rows: usize,
        /// Columns (reduction length).
        cols: usize,
        /// Values supplied.
        len: usize,
    },
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
    /// A negative importance.
    #[error("importance of input channel {index} is negative")]
    NegativeImportance {
        /// Input channel.
        index: usize,
    },
    /// The activation-aware scheme was called without calibration data.
    #[error("scheme {0} needs a per-input-channel importance from calibration")]
    ImportanceRequired(QuantScheme),
    /// The format or the integer semantics refused the input (bad
    /// geometry, a malformed matrix, an accumulator that can overflow).
    #[error(transparent)]
    Contract(#[from] ContractError),
}
