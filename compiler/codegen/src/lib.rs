//! `q35-codegen`: turns placed lpu operations into the instruction streams
//! of a statically scheduled LPU program (docs/backend.md).
//!
//! - [`machine`]: the figures of the target the schedule depends on
//!   (positions, latencies, MEM ports, the MXM plane's timing rules).
//! - [`sched`]: the cycle-exact list scheduler. Kernels describe work as
//!   [`sched::Bundle`]s, dataflow snippets from MEM to MEM whose instruction
//!   times are fixed relative to each other by hop distances and latencies;
//!   the scheduler places each bundle at the earliest cycle where every
//!   queue, stream register, MEM port and bank and MXM buffer is free, and
//!   predicts the cycle count the simulator will measure.
//! - [`emit`]: per-queue timed instructions to `nop`/`repeat`-compressed
//!   instruction lists.
//! - [`alloc`]: MEM placement of buffers and weights.
//! - [`partition`]: the pipeline split of a decode step over many chips.
//!
//! This crate never links MLIR: the compiler's `lpu` passes call it.

pub mod alloc;
pub mod emit;
pub mod kernels;
pub mod machine;
pub mod partition;
pub mod plan;
pub mod program;
pub mod sched;

pub use alloc::{Alloc, AllocError, Buffer};
pub use machine::{Cycle, Mach};
pub use program::{Built, ProgramBuilder};
pub use sched::{Bundle, Sched, SchedError, Val};
