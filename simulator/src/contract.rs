//! The hardware contract's functions the VXM computes with
//! (docs/q35-format.md 8): the simulator calls them instead of restating
//! them, so the machine and the golden model cannot drift apart.

/// The contract's `exp` (docs/q35-format.md 8.4): what `fexp` computes.
pub use q35_contract::semantics::exp;

/// The (4-bit, 3-bit) codes of a Q35 pair code (docs/q35-format.md 1 and
/// 4): what `unpack35` decodes.
pub use q35_contract::split_pair;
