//! The Q35 3.5-bit weight format, its integer semantics and quantizers.
//!
//! The normative description is `docs/q35-format.md`; this crate is its
//! executable form:
//!
//! - [`format`](mod@format): [`QuantizedMatrix`], the packed storage of every scheme
//!   (Q35 pairs of one 4-bit and one 3-bit code in 7 bits, and the uniform
//!   int8/int4/int3 comparison schemes), its block layout, unpacking and
//!   bits-per-weight accounting, and a byte serialisation.
//! - [`quantize()`]: round-to-nearest and activation-aware quantizers
//!   ([`quantize::quantize_gptq`] adds in-group error compensation).
//! - [`semantics`]: the integer matmul contract (int8 activations, int32
//!   group accumulators, f32 dequantisation in a fixed order) and the
//!   non-matmul operators (RMSNorm, RoPE, softmax, SiLU, residual add) as the
//!   hardware runs them. The quantized forward pass and the simulator both
//!   call these definitions.
//! - [`metrics`]: relative RMSE, layer-output error and the per-channel
//!   activation importance used for calibration.
//! - [`model`]: whole-model quantization on the f32 reference model:
//!   calibration, quantized layers running the integer semantics, reports and
//!   KL-divergence / perplexity against the reference.
//! - [`golden`]: the quantized golden forward pass, every operator from
//!   [`semantics`]; the simulator's bit-exact reference.

pub mod format;
pub mod golden;
pub mod metrics;
pub mod model;
mod pack;
pub mod quantize;
pub mod semantics;

pub use format::{IntMatrix, Layout, QuantizedMatrix};
pub use quantize::quantize;
pub use semantics::{ActivationI8, accumulator_bound, check_no_overflow};

use std::fmt;
use std::str::FromStr;

/// The smallest unit of the reduction dimension: groups are multiples of it
/// and a ragged last group is zero-padded up to a multiple of it.
pub const CHANNEL_QUANTUM: usize = 16;

/// The default group size along the reduction dimension.
pub const DEFAULT_GROUP_SIZE: usize = 128;

/// A weight quantization scheme. Mirrors `q35_model::QuantScheme` (same
/// names); this crate does not depend on `q35-model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantScheme {
    /// Activation-aware Q35: 4-bit slots and group scales chosen with a
    /// per-input-channel importance from calibration activations.
    Q35,
    /// Q35 without calibration: 4-bit slots chosen by weight error alone.
    Q35Rtn,
    /// Q35 with a fixed alternation: even channels 4-bit, odd channels 3-bit.
    Q35Alternating,
    /// Uniform signed 8-bit codes.
    Int8,
    /// Uniform signed 4-bit codes.
    Int4,
    /// Uniform signed 3-bit codes.
    Int3,
}

impl QuantScheme {
    /// Every scheme, in report order.
    pub const ALL: [QuantScheme; 6] = [
        QuantScheme::Q35,
        QuantScheme::Q35Rtn,
        QuantScheme::Q35Alternating,
        QuantScheme::Int8,
        QuantScheme::Int4,
        QuantScheme::Int3,
    ];

    /// The scheme's name as written in `model.toml` and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantScheme::Q35 => "q35",
            QuantScheme::Q35Rtn => "q35-rtn",
            QuantScheme::Q35Alternating => "q35-alternating",
            QuantScheme::Int8 => "int8",
            QuantScheme::Int4 => "int4",
            QuantScheme::Int3 => "int3",
        }
    }

    /// The one-byte tag used by the serialised form.
    pub fn tag(self) -> u8 {
        match self {
            QuantScheme::Q35 => 0,
            QuantScheme::Q35Rtn => 1,
            QuantScheme::Q35Alternating => 2,
            QuantScheme::Int8 => 3,
            QuantScheme::Int4 => 4,
            QuantScheme::Int3 => 5,
        }
    }

    /// The scheme with serialised tag `tag`.
    pub fn from_tag(tag: u8) -> Option<QuantScheme> {
        QuantScheme::ALL.into_iter().find(|s| s.tag() == tag)
    }

    /// Whether the scheme stores Q35 pairs (a 4-bit and a 3-bit code).
    pub fn is_q35(self) -> bool {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => true,
            QuantScheme::Int8 | QuantScheme::Int4 | QuantScheme::Int3 => false,
        }
    }

    /// Whether the scheme stores an explicit slot mask (which channels are
    /// 4-bit). The fixed alternation needs none.
    pub fn stores_slot_mask(self) -> bool {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn => true,
            QuantScheme::Q35Alternating
            | QuantScheme::Int8
            | QuantScheme::Int4
            | QuantScheme::Int3 => false,
        }
    }

    /// Whether the quantizer needs a per-input-channel importance.
    pub fn needs_importance(self) -> bool {
        self == QuantScheme::Q35
    }

    /// Storage bits of the codes of `n` channels (`n` a multiple of
    /// [`CHANNEL_QUANTUM`]).
    pub fn code_bits(self, n: usize) -> usize {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => 7 * n / 2,
            QuantScheme::Int8 => 8 * n,
            QuantScheme::Int4 => 4 * n,
            QuantScheme::Int3 => 3 * n,
        }
    }
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for QuantScheme {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QuantScheme::ALL
            .into_iter()
            .find(|scheme| scheme.as_str() == s)
            .ok_or_else(|| QuantError::UnknownScheme(s.to_owned()))
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// A matrix dimension is zero.
    #[error("matrix has {rows} rows and {cols} columns; both must be positive")]
    EmptyMatrix {
        /// Rows (outputs).
        rows: usize,
        /// Columns (reduction length).
        cols: usize,
    },
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
    /// The group size is not a positive multiple of [`CHANNEL_QUANTUM`].
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
    /// A negative importance.
    #[error("importance of input channel {index} is negative")]
    NegativeImportance {
        /// Input channel.
        index: usize,
    },
    /// The activation-aware scheme was called without calibration data.
    #[error("scheme {0} needs a per-input-channel importance from calibration")]
    ImportanceRequired(QuantScheme),
    /// A scheme name that is not one of [`QuantScheme::ALL`].
    #[error(
        "unknown quantization scheme {0:?} (expected q35, q35-rtn, q35-alternating, int8, int4 or int3)"
    )]
    UnknownScheme(String),
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
    /// A serialised matrix is malformed.
    #[error("serialised Q35 matrix is invalid: {0}")]
    Corrupt(String),
}
