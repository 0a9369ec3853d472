//! The hardware contract's functions the VXM computes with
//! (docs/q35-format.md 8): the simulator calls them instead of restating
//! them, so the machine and the golden model cannot drift apart.

/// The contract's `exp` (docs/q35-format.md 8.4): what `fexp` computes.
pub use q35_quant::semantics::exp;
