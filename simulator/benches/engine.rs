//! Simulator speed on lpu-v1: simulated cycles and instructions per host
//! second, and peak RSS against the binary's size, for the matmul-heavy and
//! the vector-heavy program of `programs/mod.rs`, each run once on the
//! exact engine.
//!
//! Run with `cargo bench -p q35-sim --bench engine` (`scripts/bench --sim`).

use std::time::Instant;

mod programs;

use programs::q;
use q35_isa::{LatencyClass, Program};
use q35_lpubin::LpuBinary;

/// Peak resident set size of this process in KiB (VmHWM).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bench(name: &str, program: &Program) {
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.lpubin"));
    program
        .to_lpubin(&config.target, "q35-sim bench")
        .expect("program encodes")
        .write_to(&path)
        .expect("binary written");
    let binary = LpuBinary::open(&path).expect("binary opens");
    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let finished = match q35_sim::run(&binary, &config, None).expect("loads") {
        Ok(f) => f,
        Err(stop) => panic!("{name}: {stop:?}"),
    };
    let secs = start.elapsed().as_secs_f64();
    let p = &finished.profile;
    let mxm: u64 = ["mxm.0", "mxm.1"].iter().map(|n| p.busy(q(n))).sum();
    println!(
        "{name:<7} {:>9} cycles {:>9} instructions in {secs:>6.3} s: {:>6.2} M cycles/s, {:>6.2} M instructions/s; \
         MXM busy {:.1}%; binary {} KiB, peak RSS {} KiB (before the run {} KiB)",
        p.total_cycles(),
        p.instructions(),
        p.total_cycles() as f64 / secs / 1e6,
        p.instructions() as f64 / secs / 1e6,
        p.percent(mxm) / 2.0,
        binary.len() / 1024,
        peak_rss_kib().map_or("?".into(), |k| k.to_string()),
        rss_before.map_or("?".into(), |k| k.to_string()),
    );
}

fn main() {
    let tiles = std::env::var("Q35_BENCH_TILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    bench("matmul", &programs::matmul_program(tiles, 1));
    let shift_latency = q35_sim::config::load_target(None)
        .expect("lpu-v1")
        .latency(LatencyClass::SxmShift);
    bench("vector", &programs::vector_program(20_000, shift_latency));
}
