//! The simulator's doors: generated programs run on `q35_sim::Machine`
//! (`sim_program`), and compiled models as `q35sim run --tokens` reads them
//! up to and through its first run (`lpubin_model`).

use q35_host::{HostError, HostMeta, Session};
use q35_lpubin::{Builder, LpuBinary};
use q35_sim::{HazardKind, Machine, MachineConfig, Stop};

use crate::{lpu_v1, message, program};

/// The simulator's parameters for lpu-v1 (built once).
fn config() -> &'static MachineConfig {
    static C: std::sync::OnceLock<MachineConfig> = std::sync::OnceLock::new();
    C.get_or_init(|| MachineConfig::from_target(lpu_v1()).expect("lpu-v1 runs on the simulator"))
}

/// Cycles a generated program may run: far beyond what any hazard-free
/// short program needs, small enough that one run stays in milliseconds.
pub const SIM_MAX_CYCLES: u64 = 20_000;

/// Words at the start of every MEM slice that `sim_program` fills with the
/// input's bytes, so the units compute on values other than zero.
const SIM_MEM_WORDS: u32 = 4;

/// Runs the program `data` describes ([`program::program_from_bytes`]) on
/// the simulator for lpu-v1, its first [`SIM_MEM_WORDS`] words of every MEM
/// slice holding `data` (cycled), with a budget of [`SIM_MAX_CYCLES`]
/// cycles. The run must end in a profile, a named hazard (never the
/// simulator's `Internal` one, which is a simulator bug) or the cycle limit;
/// never a panic, an overflow or a hang. A hazard lies within the budget and
/// names an instruction of its queue; a finished run's profile counts the
/// instructions it issued. Returns whether the program loaded and ran
/// without a hazard.
pub fn sim_program(data: &[u8]) -> bool {
    let p = program::program_from_bytes(data);
    let config = config();
    let mut builder = match p.to_lpubin(lpu_v1(), "q35-fuzz") {
        Ok(b) => b,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    if !data.is_empty() {
        let words = SIM_MEM_WORDS as usize;
        let fill: Vec<u8> = data
            .iter()
            .copied()
            .cycle()
            .take(words * q35_isa::VECTOR_BYTES as usize)
            .collect();
        builder.mem_word_bytes(q35_isa::VECTOR_BYTES);
        for slice in 0..2 * q35_isa::queue::MEM_SLICES_PER_HEMISPHERE {
            builder.mem_extent(slice, 0, fill.clone());
        }
    }
    let bytes = builder
        .to_bytes()
        .unwrap_or_else(|e| panic!("a generated program does not write: {e}"));
    let bin = LpuBinary::from_bytes(bytes)
        .unwrap_or_else(|e| panic!("the writer's binary is refused: {e}"));
    let mut machine = match Machine::new(&bin, config.clone()) {
        Ok(m) => m,
        Err(e) => {
            // The assembler's rules passed; only the target's own (e.g. `lw`
            // rows per cycle) may refuse the program.
            assert!(
                matches!(e, q35_sim::LoadError::Placement { .. }),
                "a valid program fails to load for a reason other than placement: {e}"
            );
            message(&e);
            return false;
        }
    };
    machine.set_max_cycles(Some(SIM_MAX_CYCLES));
    match machine.run_once() {
        Ok(profile) => {
            assert!(
                profile.last_cycle() <= profile.total_cycles(),
                "last cycle {} past the total {}",
                profile.last_cycle(),
                profile.total_cycles()
            );
            let issued: usize = p.queues.values().map(Vec::len).sum();
            assert!(
                profile.instructions() >= issued.min(1) as u64,
                "a program of {issued} instructions finished having issued {}",
                profile.instructions()
            );
            true
        }
        Err(Stop::Hazard(h)) => {
            if let HazardKind::Internal { message } = &h.kind {
                panic!("the simulator's internal error (a simulator bug): {message}\n{h}");
            }
            assert!(
                h.cycle <= SIM_MAX_CYCLES,
                "a hazard past the cycle budget: {h}"
            );
            let queue_len = p.queues.get(&h.queue).map_or(0, Vec::len);
            assert!(
                (h.index as usize) <= queue_len,
                "a hazard at instruction #{} of a queue of {queue_len}: {h}",
                h.index
            );
            message(&*h);
            false
        }
        Err(Stop::MaxCycles { limit, next }) => {
            assert_eq!(limit, SIM_MAX_CYCLES);
            assert!(next > limit, "stopped at cycle {next}, within {limit}");
            false
        }
    }
}

/// Cycles the first step of a compiled model may run in `lpubin_model`:
/// enough for the start of a decode step (loading `x_in`, the first
/// reads), not a whole one, so the fuzzer stays fast.
pub const MODEL_MAX_CYCLES: u64 = 3_000;

/// A compiled model's `.lpubin` as `q35sim run --tokens` reads it: the
/// binary, the host's metadata and embedding readers and the tokenizer
/// section, `Machine::new` (decode, MEM image, tables), `Session::new`
/// (symbol checks) and a first step with a budget of [`MODEL_MAX_CYCLES`]
/// cycles. Errors are typed and say something; what is accepted is
/// consistent: the session's metadata is the one `HostMeta` reads, the
/// embedding has `vocab x hidden` entries and its rows `hidden` values;
/// a prompt encodes to tokens of the vocabulary when the binary has a
/// tokenizer. Returns whether a session was opened.
pub fn lpubin_model(data: &[u8]) -> bool {
    let bin = match LpuBinary::from_bytes(data.to_vec()) {
        Ok(b) => b,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    // The host's readers on their own (`q35sim profile` reads the metadata
    // of any binary, even one that does not load).
    let meta = match HostMeta::from_binary(&bin) {
        Ok(m) => {
            for (key, v) in [("vocab", m.vocab), ("hidden", m.hidden), ("ctx", m.ctx)] {
                assert!(v > 0, "metadata `{key}` = 0 accepted");
            }
            Some(m)
        }
        Err(e) => {
            message(&e);
            None
        }
    };
    match q35_host::EmbeddingTable::from_binary(&bin) {
        Ok(t) => {
            let (rows, cols) = (t.rows(), t.cols());
            if rows > 0 {
                for token in [0, rows - 1] {
                    let row = t
                        .row(token as u32)
                        .unwrap_or_else(|e| panic!("row {token} of {rows}: {e}"));
                    assert_eq!(row.len(), cols, "row {token}");
                }
            }
            if let Ok(token) = u32::try_from(rows) {
                match t.row(token) {
                    Ok(_) => panic!("row {token} of a table of {rows} rows"),
                    Err(e) => {
                        message(&e);
                    }
                }
            }
        }
        Err(e) => {
            message(&e);
        }
    }
    let config = config();
    let machine = match Machine::new(&bin, config.clone()) {
        Ok(m) => m,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    let mut session = match Session::new(machine, &bin) {
        Ok(s) => s,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    let meta = meta.expect("a session was opened, so the metadata was read");
    assert!(*session.meta() == meta, "the session read other metadata");
    assert_eq!(session.ctx(), meta.ctx as usize);
    assert_eq!(session.tokenizer().is_some(), bin.tokenizer().is_some());
    if session.tokenizer().is_some() {
        for chat in [false, true] {
            match session.prompt_tokens("Hello, q35!", chat, None) {
                Ok((text, ids)) => {
                    assert!(!text.is_empty());
                    if let Some(&bad) = ids.iter().find(|&&t| t >= meta.vocab) {
                        // The tokenizer's vocabulary is its own section's;
                        // the host refuses such a token at the step.
                        match session.step(bad) {
                            Err(e) => {
                                message(&e);
                            }
                            Ok(_) => panic!("token {bad} past the vocabulary {} ran", meta.vocab),
                        }
                        return true;
                    }
                }
                Err(e) => {
                    message(&e);
                }
            }
        }
    }
    session.device_mut().set_max_cycles(Some(MODEL_MAX_CYCLES));
    let token = meta.bos.unwrap_or(0);
    match session.step(token) {
        Ok((logits, stats)) => {
            assert_eq!(logits.len(), meta.vocab as usize);
            assert!(stats.cycles <= MODEL_MAX_CYCLES + config.superlanes * config.superlane_skew);
            assert_eq!(session.position(), 1);
        }
        Err(e) => {
            if let HostError::Device(q35_host::DeviceError::Run(m)) = &e {
                assert!(
                    !m.contains("simulator internal error"),
                    "the simulator's internal error (a simulator bug): {m}"
                );
            }
            message(&e);
            assert_eq!(session.position(), 0, "a failed step moved on");
        }
    }
    true
}

/// Writes `bin` again without its debug map and with at most
/// `mem_extents` of its MEM extents: what the `lpubin_model` seed keeps of
/// a compiled model (queues, tables, symbols, metadata, tokenizer and
/// embedding whole) to stay small.
pub fn trim_model(bin: &LpuBinary, mem_extents: usize) -> Vec<u8> {
    let mut b = Builder::new(bin.target_name(), *bin.target_hash(), bin.producer());
    for q in bin.queues() {
        b.queue(q.id(), q.words().to_vec());
    }
    if let Some(mem) = bin.mem() {
        b.mem_word_bytes(mem.word_bytes());
        for e in mem.extents().take(mem_extents) {
            b.mem_extent(e.range.slice, e.range.first_word, e.bytes.to_vec());
        }
    }
    for s in bin.symbols() {
        b.symbol(s.clone());
    }
    if let Some(m) = bin.metadata() {
        b.metadata(m.clone());
    }
    if let Some(t) = bin.tokenizer() {
        b.tokenizer(t.to_vec());
    }
    for (name, bytes) in bin.tables() {
        b.table(name, bytes.to_vec());
    }
    if let Some(e) = bin.embedding() {
        b.embedding(e.encoding, e.rows, e.cols, e.data.to_vec());
    }
    b.to_bytes().expect("what was read writes again")
}
