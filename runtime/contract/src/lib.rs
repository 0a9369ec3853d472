//! The hardware contract of q35 (docs/q35-format.md): everything the golden
//! model, the compiler and the simulator must agree on, in one small crate
//! with no other q35 dependency.
//!
//! - [`scheme`]: [`QuantScheme`] and every fact about a scheme (spelling,
//!   serialised tag, code widths and ranges, multipliers, `code_max`).
//! - [`arch`]: the LLaMA-family [`Architecture`] and its weight matrices
//!   ([`LinearSpec`]); tensor names and shapes come from here.
//! - [`format`](mod@format): [`Layout`] and [`QuantizedMatrix`], the packed
//!   storage of every scheme (Q35 pairs of one 4-bit and one 3-bit code in
//!   7 bits, and the uniform int8/int4/int3 comparison schemes), unpacking
//!   to [`IntMatrix`], bits-per-weight accounting and the serialised `Q35W`
//!   form.
//! - [`semantics`]: the integer matmul contract (int8 activations, int32
//!   group accumulators, f32 dequantisation in a fixed order) and the
//!   non-matmul operators (RMSNorm, RoPE, softmax, SiLU, residual add) as the
//!   hardware runs them.
//! - [`rope`]: the RoPE angles exactly as ggml forms them ([`rope_thetas`],
//!   which the f32 reference uses too) and the shipped [`RopeTable`].
//! - [`dots`]: exact SIMD group sums (int8 x int8 into int32) for the
//!   golden matmul, equal to [`semantics::group_dot`] of each group.
//! - [`golden`]: the golden integer forward pass ([`GoldenModel`]), built
//!   from plain data; the simulator's bit-exact reference.

pub mod arch;
pub mod dots;
mod error;
pub mod format;
pub mod golden;
mod pack;
pub mod rope;
pub mod scheme;
pub mod semantics;

pub use arch::{Architecture, LinearSpec};
pub use error::ContractError;
pub use format::{IntMatrix, Layout, QuantizedMatrix};
pub use golden::{
    ActivationScales, GoldenBlock, GoldenError, GoldenHead, GoldenModel, GoldenSession,
};
pub use pack::{pair_code, split_pair};
pub use rope::{RopeTable, rope_thetas};
pub use scheme::QuantScheme;
pub use semantics::{ActivationI8, GroupedActivationI8, accumulator_bound, check_no_overflow};

/// The smallest unit of the reduction dimension: groups are multiples of it
/// and a ragged last group is zero-padded up to a multiple of it (16
/// channels are 8 Q35 pairs, 7 whole bytes).
pub const CHANNEL_QUANTUM: usize = 16;

/// The default group size along the reduction dimension.
pub const DEFAULT_GROUP_SIZE: usize = 128;
