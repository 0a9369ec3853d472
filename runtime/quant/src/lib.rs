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

/// The smallest unit of the reduction dimension: groups are multiples of it
/// and a ragged last group is zero-padded up to a multiple of it.
pub const CHANNEL_QUANTUM: usize = 16;

/// The default group size along the reduction dimension.
pub const DEFAULT_GROUP_SIZE: usize = 128;

/// A weight quantization scheme: `q35_model::QuantScheme`, the one
/// definition (names as written in model.toml and reports); what this crate
/// needs to know about each scheme's storage is [`SchemeExt`].
pub use q35_model::QuantScheme;

/// Storage facts of a [`QuantScheme`] (docs/q35-format.md): its
/// serialised tag, whether it stores Q35 pairs and a slot mask, what its
/// quantizer needs and how many bits its codes take.
pub trait SchemeExt: Sized {
    /// The one-byte tag used by the serialised form.
    fn tag(&self) -> u8;

    /// The scheme with serialised tag `tag`.
    fn from_tag(tag: u8) -> Option<Self>;

    /// Whether the scheme stores Q35 pairs (a 4-bit and a 3-bit code).
    fn is_q35(&self) -> bool;

    /// Whether the scheme stores an explicit slot mask (which channels are
    /// 4-bit). The fixed alternation needs none.
    fn stores_slot_mask(&self) -> bool;

    /// Whether the quantizer needs a per-input-channel importance.
    fn needs_importance(&self) -> bool;

    /// Storage bits of the codes of `n` channels (`n` a multiple of
    /// [`CHANNEL_QUANTUM`]).
    fn code_bits(&self, n: usize) -> usize;
}

impl SchemeExt for QuantScheme {
    fn tag(&self) -> u8 {
        match *self {
            QuantScheme::Q35 => 0,
            QuantScheme::Q35Rtn => 1,
            QuantScheme::Q35Alternating => 2,
            QuantScheme::Int8 => 3,
            QuantScheme::Int4 => 4,
            QuantScheme::Int3 => 5,
        }
    }

    fn from_tag(tag: u8) -> Option<QuantScheme> {
        QuantScheme::ALL.into_iter().find(|s| s.tag() == tag)
    }

    fn is_q35(&self) -> bool {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => true,
            QuantScheme::Int8 | QuantScheme::Int4 | QuantScheme::Int3 => false,
        }
    }

    fn stores_slot_mask(&self) -> bool {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn => true,
            QuantScheme::Q35Alternating
            | QuantScheme::Int8
            | QuantScheme::Int4
            | QuantScheme::Int3 => false,
        }
    }

    fn needs_importance(&self) -> bool {
        *self == QuantScheme::Q35
    }

    fn code_bits(&self, n: usize) -> usize {
        match self {
            QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => 7 * n / 2,
            QuantScheme::Int8 => 8 * n,
            QuantScheme::Int4 => 4 * n,
            QuantScheme::Int3 => 3 * n,
        }
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
