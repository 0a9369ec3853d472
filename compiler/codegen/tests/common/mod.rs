//! Shared test helpers: run a built program on q35sim and read symbols.

#![allow(dead_code)]

use q35_codegen::Built;
use q35_target::Target;

/// Runs `built` on the simulator; panics on a hazard with its text.
pub fn run(built: &Built, target: &Target) -> (q35_sim::Finished, q35_lpubin::LpuBinary) {
    let bin = built
        .program
        .to_lpubin(target, "q35-codegen test")
        .expect("encodes")
        .to_bytes()
        .expect("container bytes");
    let bin = q35_lpubin::LpuBinary::from_bytes(bin).expect("container");
    let config = q35_sim::MachineConfig::from_target(target).expect("config");
    let done = q35_sim::run(&bin, &config, Some(50_000_000))
        .expect("loads")
        .unwrap_or_else(|stop| panic!("the simulator stopped: {stop:?}"));
    (done, bin)
}

/// The f32 values of symbol `name` after a run.
pub fn f32_symbol(done: &q35_sim::Finished, bin: &q35_lpubin::LpuBinary, name: &str) -> Vec<f32> {
    let sym = bin.symbol(name).expect("symbol");
    let d = q35_sim::dump::read_symbol(&done.state, sym).expect("dump");
    d.bits.iter().map(|&b| f32::from_bits(b)).collect()
}
