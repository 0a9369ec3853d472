//! The replay (`q35_sim::replay`, `EngineMode::Replay`) against the exact
//! engine: two machines on the same binary, one per mode, run the same
//! sequence of runs; after every run the results (profile, or the hazard
//! with its cycle, queue and instruction) and every MEM byte must be equal.
//!
//! - every program of tests/lit/sim (hazard ones included), three runs each,
//!   MEM perturbed between runs the same way in both machines (so later
//!   runs see other values, and some hit value-dependent hazards: the
//!   replay must hand those to the engine and end up identical);
//! - generated programs (the engine benchmark's matmul and vector programs,
//!   `benches/programs/mod.rs`, at several sizes), perturbed likewise;
//! - a gather whose index the host moves out of range on the third run,
//!   and one faulting after a word was read and then overwritten;
//! - SmolLM2 steps, when a compiled `smollm2.lpubin` is at
//!   `$Q35_SMOLLM2_LPUBIN` (else `target/q35-run/smollm2.lpubin`, which
//!   `scripts/run` writes): skipped with a message when it is missing.

#[path = "../benches/programs/mod.rs"]
mod programs;

use std::path::{Path, PathBuf};

use q35_host::Session;
use q35_lpubin::LpuBinary;
use q35_sim::{EngineMode, Machine, MachineConfig};

fn config() -> MachineConfig {
    q35_sim::config::load_target(None).expect("lpu-v1")
}

/// A binary from a program.
fn binary(program: &q35_isa::Program, config: &MachineConfig) -> Option<LpuBinary> {
    let bytes = program
        .to_lpubin(&config.target, "replay test")
        .ok()?
        .to_bytes()
        .ok()?;
    LpuBinary::from_bytes(bytes).ok()
}

/// A step of a xorshift generator.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Flips some bytes of the first words of every slice (the same in both
/// machines for the same seed).
fn perturb(machine: &mut Machine<'_>, seed: u64) {
    let mut s = seed | 1;
    let state = machine.state_mut();
    for slice in &mut state.mem {
        let words = slice.words().min(64);
        for addr in 0..words {
            let word = slice.word_mut(addr);
            for _ in 0..8 {
                let r = next(&mut s);
                word[(r % 320) as usize] ^= (r >> 32) as u8;
            }
        }
    }
}

/// Every MEM byte equal.
fn same_mem(a: &Machine<'_>, b: &Machine<'_>) -> Result<(), String> {
    for (i, (x, y)) in a.state().mem.iter().zip(&b.state().mem).enumerate() {
        if x.bytes() != y.bytes() {
            let at = x
                .bytes()
                .iter()
                .zip(y.bytes())
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            return Err(format!("slice {i}, byte {at} (word {})", at / 320));
        }
    }
    Ok(())
}

/// What the two machines did.
#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    replayed: u64,
    abandoned: u64,
    hazards: u64,
}

/// Runs `runs` runs on both machines (perturbing MEM before each run but
/// the first when `seed` is set) and compares after each.
fn differential(name: &str, binary: &LpuBinary, runs: u32, seed: Option<u64>) -> Tally {
    let config = config();
    let (Ok(mut exact), Ok(mut replay), Ok(mut lean)) = (
        Machine::new(binary, config.clone()),
        Machine::new(binary, config.clone()),
        Machine::new(binary, config.clone()),
    ) else {
        return Tally::default(); // a binary the loader refuses (all alike)
    };
    exact.set_mode(EngineMode::Exact);
    replay.set_mode(EngineMode::Replay);
    lean.set_mode(EngineMode::Replay);
    for m in [&mut exact, &mut replay] {
        m.set_record(true);
        m.set_max_cycles(Some(10_000_000));
    }
    // The third machine records lean: the replay holds its timeline.
    lean.set_record_lean(true);
    lean.set_max_cycles(Some(10_000_000));
    let mut tally = Tally::default();
    for run in 0..runs {
        if let Some(seed) = seed
            && run > 0
        {
            perturb(&mut exact, seed + u64::from(run));
            perturb(&mut replay, seed + u64::from(run));
            perturb(&mut lean, seed + u64::from(run));
        }
        let a = exact.run_once();
        let b = replay.run_once();
        assert_eq!(a, b, "{name}: run {run}: result");
        assert_eq!(lean.run_once(), b, "{name}: run {run}: lean result");
        if let Err(e) = same_mem(&exact, &replay) {
            panic!("{name}: run {run}: MEM differs at {e}");
        }
        tally.runs += 1;
        tally.hazards += u64::from(a.is_err());
    }
    let (done, abandoned) = replay.replayed();
    tally.replayed = done;
    tally.abandoned = abandoned;
    let (ra, rb) = (
        exact.recorded().expect("on"),
        replay.recorded().expect("on"),
    );
    assert_eq!(ra.runs.len(), rb.runs.len(), "{name}: recorded runs");
    for (i, j) in ra.runs.iter().zip(&rb.runs) {
        assert_eq!(ra.timelines[*i], rb.timelines[*j], "{name}: timeline");
    }
    // The replay's timeline, rebuilt from its events, is the run's it was
    // recorded from (the first that ended without a hazard).
    if let (Some(r), Some(&first)) = (replay.replay(), ra.runs.first()) {
        assert_eq!(r.timeline(), ra.timelines[first], "{name}: replay timeline");
    }
    assert!(lean.recorded().is_none(), "{name}: lean recorded()");
    let rb = rb.clone();
    assert_eq!(
        lean.into_recorded().1.map(|r| (r.timelines, r.runs)),
        Some((rb.timelines, rb.runs)),
        "{name}: lean timelines"
    );
    tally
}

fn lit_programs() -> Vec<(PathBuf, LpuBinary)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lit/sim");
    let config = config();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/lit/sim")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "lpuasm"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            let program = q35_isa::assemble(&path.display().to_string(), &text).ok()?;
            Some((path, binary(&program, &config)?))
        })
        .collect()
}

#[test]
fn replay_equals_the_engine_on_every_lit_program() {
    let mut replayed_programs = 0;
    let mut total = Tally::default();
    for (path, bin) in lit_programs() {
        let name = path.display().to_string();
        // Same MEM every run, then perturbed MEM.
        for seed in [None, Some(0x9e37_79b9_7f4a_7c15)] {
            let t = differential(&name, &bin, 3, seed);
            replayed_programs += usize::from(t.replayed > 0 && seed.is_none());
            total.runs += t.runs;
            total.replayed += t.replayed;
            total.abandoned += t.abandoned;
            total.hazards += t.hazards;
        }
    }
    eprintln!("lit programs: {total:?}");
    assert!(
        replayed_programs >= 25,
        "only {replayed_programs} programs replayed"
    );
}

#[test]
fn replay_equals_the_engine_on_generated_programs() {
    let config = config();
    let shift = config.latency(q35_isa::LatencyClass::SxmShift);
    let mut total = Tally::default();
    for (name, program) in [
        ("matmul 1", programs::matmul_program(1, 7)),
        ("matmul 3", programs::matmul_program(3, 11)),
        ("vector 50", programs::vector_program(50, shift)),
        ("vector 700", programs::vector_program(700, shift)),
    ] {
        let bin = binary(&program, &config).expect("encodes");
        for seed in [None, Some(12345)] {
            let t = differential(name, &bin, 3, seed);
            assert!(t.replayed > 0 || t.hazards > 0, "{name}: {t:?}");
            total.runs += t.runs;
            total.replayed += t.replayed;
            total.abandoned += t.abandoned;
        }
    }
    eprintln!("generated programs: {total:?}");
    assert!(total.replayed >= 8, "{total:?}");
}

/// `mem-gather.lpuasm`'s gather, its index moved out of the slice on the
/// third run: the replay finds the fault, restores MEM and the engine
/// reports the hazard, as a machine that never replayed does.
#[test]
fn a_value_fault_in_a_replayed_run_is_the_engines_hazard() {
    let (path, bin) = lit_programs()
        .into_iter()
        .find(|(p, _)| p.ends_with("mem-gather.lpuasm"))
        .expect("mem-gather.lpuasm");
    let config = config();
    let mut exact = Machine::new(&bin, config.clone()).expect("loads");
    let mut replay = Machine::new(&bin, config.clone()).expect("loads");
    exact.set_mode(EngineMode::Exact);
    replay.set_mode(EngineMode::Replay);
    let mut hazard = None;
    for run in 0..4 {
        if run == 2 {
            // Every u16 index in the first words of every slice: 0xffff.
            for m in [&mut exact, &mut replay] {
                for slice in &mut m.state_mut().mem {
                    for addr in 0..slice.words().min(8) {
                        slice.word_mut(addr).fill(0xff);
                    }
                }
            }
        }
        let a = exact.run_once();
        let b = replay.run_once();
        assert_eq!(a, b, "{}: run {run}", path.display());
        same_mem(&exact, &replay).expect("MEM equal");
        if run >= 2 {
            hazard = hazard.or(a.err());
        }
    }
    let hazard = hazard.expect("an out-of-range index is a hazard");
    assert!(
        format!("{hazard:?}").contains("AddressOutOfRange"),
        "{hazard:?}"
    );
    let (done, abandoned) = replay.replayed();
    assert!(
        done >= 1 && abandoned >= 1,
        "{done} replayed, {abandoned} abandoned"
    );
}

/// SmolLM2 decode steps through the host runtime: exact and replay
/// machines, the same tokens, every MEM byte and the cycles after every
/// step.
#[test]
fn replay_equals_the_engine_on_smollm2_steps() {
    let path = std::env::var_os("Q35_SMOLLM2_LPUBIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/q35-run/smollm2.lpubin")
        });
    if !path.is_file() {
        eprintln!(
            "skipping: no compiled SmolLM2 at {} (scripts/run writes it; or set Q35_SMOLLM2_LPUBIN)",
            path.display()
        );
        return;
    }
    let bin = LpuBinary::open(&path).expect("opens");
    let config = config();
    if let Err(e) = bin.check_target(&config.target_hash) {
        // A binary left by an older scripts/run, before the target changed.
        eprintln!(
            "skipping: {} is stale ({e}); scripts/run rebuilds it",
            path.display()
        );
        return;
    }
    let mut exact = Machine::new(&bin, config.clone()).expect("loads");
    exact.set_mode(EngineMode::Exact);
    let mut replay = Machine::new(&bin, config.clone()).expect("loads");
    replay.set_mode(EngineMode::Replay);
    let mut exact = Session::new(exact, &bin).expect("a compiled model");
    let mut replay = Session::new(replay, &bin).expect("a compiled model");
    // Two prompt tokens, then greedy decoding, the same tokens into both.
    let mut token = 1u32;
    for step in 0..5 {
        let (la, sa) = exact.step(token).expect("exact step");
        let (lb, sb) = replay.step(token).expect("replayed step");
        assert_eq!(sa, sb, "step {step}: cycles");
        assert!(
            la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {step}: logits"
        );
        same_mem(exact.device(), replay.device()).unwrap_or_else(|e| panic!("step {step}: {e}"));
        token = if step == 0 {
            2
        } else {
            la.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0 as u32
        };
    }
    assert_eq!(replay.device().replayed(), (4, 0));
}

/// A word a run reads and then writes whole must get its old bytes back
/// when the replay faults later: the engine's rerun reads it again. Here
/// `mem.w2` word 5 is read (and copied to word 6) and then overwritten
/// from `mem.w3` before the gather on cycle 5 faults; word 6 (written
/// first, never read) is left as the replay wrote it. Both machines must
/// end with word 6 holding word 5's bytes from before the run.
#[test]
fn a_fault_after_a_read_then_written_word_restores_it() {
    let text = "\
.target lpu-v1
.mem mem.w0+mem.w1 @0 u16 [2, 0, 1, 2]
.mem mem.e0 @0 u8 [10, 11, 12, 13]
.mem mem.e0 @1 u8 [20, 21, 22, 23]
.mem mem.e0 @2 u8 [30, 31, 32, 33]
.mem mem.w2 @5 u8 [1, 2, 3, 4]
.mem mem.w3 @0 u8 [7, 7, 7, 7]
.symbol w5 u8 [4] at mem.w2 @5
.symbol w6 u8 [4] at mem.w2 @6
.symbol src u8 [4] at mem.w3 @0
.symbol idx u16 [4] at mem.w0+mem.w1 @0
.queue mem.w3
    read 0, s4.e
    halt
.queue mem.w2
    read 5, s5.e
    write 6, s5.e
    write 5, s4.e
    halt
.queue mem.w0
    nop 2
    read 0, s0.e
    halt
.queue mem.w1
    nop 1
    read 0, s1.e
    halt
.queue mem.e0
    nop 5
    gather s0.e -> s2.e, 0
    halt
.queue mem.e1
    nop 7
    write 0, s2.e
    halt
";
    use q35_host::Device;
    let config = config();
    let program = q35_isa::assemble("keep.lpuasm", text).expect("assembles");
    let bin = binary(&program, &config).expect("a binary");
    let mut exact = Machine::new(&bin, config.clone()).expect("loads");
    let mut replay = Machine::new(&bin, config.clone()).expect("loads");
    exact.set_mode(EngineMode::Exact);
    replay.set_mode(EngineMode::Replay);
    for run in 0..3 {
        if run == 2 {
            for m in [&mut exact, &mut replay] {
                m.write_symbol("src", &[9; 4]).expect("src");
                m.write_symbol("idx", &[0xff; 8]).expect("idx");
            }
        }
        let a = exact.run_once();
        let b = replay.run_once();
        assert_eq!(a, b, "run {run}");
        assert_eq!(a.is_err(), run == 2, "run {run}: {a:?}");
        same_mem(&exact, &replay).expect("MEM equal");
    }
    for m in [&mut exact, &mut replay] {
        assert_eq!(m.read_symbol("w6").expect("w6"), [7; 4]);
        assert_eq!(m.read_symbol("w5").expect("w5"), [9; 4]);
    }
    assert_eq!(replay.replayed(), (1, 1));
}
