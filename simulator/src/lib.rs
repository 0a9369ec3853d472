//! `q35-sim`: the cycle-accurate simulator of q35's LPU-style machine
//! (docs/isa.md). It reads only `.lpubin` binaries and never links MLIR or
//! LLVM.
//!
//! Decode, semantics, state and timing live apart:
//!
//! - [`config`]: the machine parameters (from a target description).
//! - [`load`]: an `.lpubin` to decoded, validated instruction lists and the
//!   initial [`state`] (decoding itself is `q35-isa`'s).
//! - [`state`]: MEM slices, MXM planes, tables, MEM port bookings.
//! - [`streams`]: values in flight on the stream registers, O(1) lookup,
//!   collision checks, garbage collection.
//! - [`exec`]: what each instruction computes (one function per unit).
//! - [`engine`]: when things happen (event-driven; why that is exact is in
//!   its module doc).
//! - [`issue_queue`]: the queues' next issue cycles in engine order (a
//!   calendar), for the engine and the static walk.
//! - [`replay`]: a recorded hazard-free run executed again without the
//!   engine's scheduling (why that is the engine is in its module doc).
//! - [`hazard`]: the rule breaks a run stops with, never silently.
//! - [`profile`]: cycles, per-unit busy cycles, instruction counts.
//! - [`dump`]: symbols' values after a run.
//! - [`machine`]: the simulator as a device ([`Machine`]): load once, run
//!   many times on persistent MEM, read and write symbols
//!   (`q35_host::Device`).
//! - [`link`]: a chip's ends of its chip-to-chip links (`send`, `recv`,
//!   `fwd`, the link hazards).
//! - [`system`]: many chips ([`System`]) joined by links, run in lockstep
//!   epochs on several threads, or timing only.
//! - [`system_device`]: a system as one `q35_host::Device` ([`SystemDevice`]),
//!   so the host's token loop drives a model split over many chips.
//! - [`mxm`]: the MXM plane, as a PE-level reference model and the fast
//!   model the engine uses (`docs/mxm-timing.md`).

pub mod analysis;
pub mod config;
pub mod contract;
pub mod dump;
pub mod engine;
#[macro_use]
pub mod exec;
pub mod hazard;
pub mod issue_queue;
pub mod link;
pub mod load;
pub mod machine;
pub mod mxm;
pub mod profile;
pub mod replay;
pub mod report;
pub mod schedule;
pub mod state;
pub mod streams;
pub mod system;
pub mod system_device;
pub mod timeline;
pub mod trace;

pub use config::MachineConfig;
pub use engine::{Engine, Stop};
pub use hazard::{Hazard, HazardKind};
pub use load::{LoadError, Loaded};
pub use machine::{EngineMode, Machine};
pub use profile::Profile;
pub use system::{System, SystemHazard, SystemRun, SystemStop};
pub use system_device::SystemDevice;

use q35_lpubin::LpuBinary;

/// A finished run: its profile and the final state (for dumps).
#[derive(Debug)]
pub struct Finished {
    /// Cycles, busy cycles, instruction counts.
    pub profile: Profile,
    /// The machine's state at the end.
    pub state: state::State,
}

/// Loads `binary` and runs it once to the end (or the first hazard, or
/// `max_cycles`). A hazard carries its source op from the binary's debug
/// map when it has one. (One run of a [`Machine`].)
pub fn run(
    binary: &LpuBinary,
    config: &MachineConfig,
    max_cycles: Option<u64>,
) -> Result<Result<Finished, Stop>, LoadError> {
    let mut machine = Machine::new(binary, config.clone())?;
    machine.set_max_cycles(max_cycles);
    Ok(machine.run_once().map(|profile| Finished {
        profile,
        state: machine.into_state(),
    }))
}
