//! `q35-sim`: the cycle-accurate simulator of q35's LPU-style machine.
//!
//! For now the crate holds one functional unit, the matrix unit:
//!
//! - [`mxm`]: one systolic MXM plane, as a PE-level reference model (every
//!   processing element, every cycle) and the fast plane model the simulator
//!   calls on its hot path, held to each other by differential tests; plus the
//!   tiling of a whole matmul onto a plane with its closed cycle formula
//!   (`docs/mxm-timing.md`).
//!
//! The rest of the simulator (the `.lpubin` reader, the other functional
//! units, the instruction queues and the `q35sim` binary) lands beside it.
//! Like every crate under `simulator/`, it never links MLIR or LLVM.

pub mod mxm;
