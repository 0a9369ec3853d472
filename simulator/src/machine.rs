//! The simulator as a device: a [`Machine`] loads an `.lpubin` once
//! (decoded queues, the initial MEM image) and runs it any number of times
//! on persistent MEM, as a real chip restarts a resident program: every run
//! starts all queues at cycle 0 with empty streams, fresh MXM planes and no
//! port bookings, while MEM keeps what earlier runs and the host wrote
//! (weights, the KV cache). It implements [`q35_host::Device`], so the host
//! runtime's token loop drives it.

use std::collections::BTreeMap;

use q35_host::{Device, DeviceError, StepStats, SymbolLayout};
use q35_lpubin::{LpuBinary, Symbol};

use crate::config::MachineConfig;
use crate::engine::{Engine, Stop};
use crate::hazard::{Hazard, HazardKind};
use crate::load::{self, LoadError, Loaded};
use crate::profile::Profile;
use crate::replay::{Abandoned, Replay, Scratch};
use crate::state::{Plane, Ports, State};
use crate::timeline::Timeline;

/// A loaded program and the machine's persistent state.
#[derive(Debug)]
pub struct Machine<'b> {
    binary: &'b LpuBinary,
    config: MachineConfig,
    loaded: Loaded,
    /// `None` only while a run holds it.
    state: Option<State>,
    symbols: BTreeMap<String, Symbol>,
    max_cycles: Option<u64>,
    runs: u64,
    /// Recording: the distinct timelines seen, and which one each run had.
    record: Option<Recorded>,
    /// How runs execute.
    mode: EngineMode,
    /// The first hazard-free run, recorded ([`EngineMode::Replay`]).
    replay: Option<Replay>,
    /// The first run's recording did not fit its packed form: no replay.
    unreplayable: bool,
    /// The replay's timeline in `record` (when recording).
    replay_timeline: Option<usize>,
    /// Lean recording ([`Machine::set_record_lean`]).
    lean: bool,
    /// The timeline in `record` whose issues the replay holds (lean).
    in_replay: Option<usize>,
    scratch: Scratch,
    /// Runs done by the replay, and replays abandoned for the engine.
    replayed: (u64, u64),
    /// The program `loaded`, `symbols`, `replay` and `replay_timeline`
    /// belong to: 0 the binary's first, `i` its `programs` section's
    /// `i - 1`th (docs/lpubin.md 3.9).
    current: usize,
    /// The other programs' (`None` at `current`).
    parked: Vec<Option<Parked>>,
}

/// A program that is not the current one, and what the machine keeps for
/// it.
#[derive(Debug)]
struct Parked {
    loaded: Loaded,
    symbols: BTreeMap<String, Symbol>,
    replay: Option<Replay>,
    replay_timeline: Option<usize>,
    unreplayable: bool,
    in_replay: Option<usize>,
}

/// How a [`Machine`] executes its runs. Both give the same MEM bytes,
/// cycles, profiles and hazards (`tests/replay.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineMode {
    /// Every run on the event-driven engine ([`crate::engine`]).
    #[default]
    Exact,
    /// The first hazard-free run on the engine, recorded; later runs replay
    /// the recording ([`crate::replay`]), falling back to the engine for a
    /// run that faults (`q35sim run`'s default for `--prompt`/`--tokens`).
    Replay,
    /// Every run on the engine and, once recorded, on the replay too (on a
    /// copy of MEM): a difference in any MEM byte, the counters or the
    /// hazard stops the run with an internal error (a simulator bug). For
    /// tests: twice the time and MEM.
    Verify,
}

/// What a recording machine kept: every distinct timeline (a compiled
/// model's runs all have the same one: its schedule is static) and, per
/// run, the index of its timeline.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The distinct timelines, in the order first seen.
    pub timelines: Vec<Timeline>,
    /// For each run since recording started, its index in `timelines`.
    pub runs: Vec<usize>,
    /// For each of `timelines`, the program it ran ([`Machine::program`]).
    pub programs: Vec<usize>,
}

impl<'b> Machine<'b> {
    /// Decodes `binary` for `config` and builds its initial state.
    pub fn new(binary: &'b LpuBinary, config: MachineConfig) -> Result<Machine<'b>, LoadError> {
        let loaded = load::load(binary, &config)?;
        let state = load::initial_state(binary, &loaded, &config)?;
        let symbols = binary
            .symbols()
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let mut parked = vec![None];
        for view in binary.programs() {
            parked.push(Some(Parked {
                loaded: load::load_program(binary, &view, &config)?,
                symbols: view
                    .symbols()
                    .iter()
                    .map(|s| (s.name.clone(), s.clone()))
                    .collect(),
                replay: None,
                replay_timeline: None,
                unreplayable: false,
                in_replay: None,
            }));
        }
        Ok(Machine {
            binary,
            config,
            loaded,
            state: Some(state),
            symbols,
            max_cycles: None,
            runs: 0,
            record: None,
            mode: EngineMode::default(),
            replay: None,
            unreplayable: false,
            replay_timeline: None,
            lean: false,
            in_replay: None,
            scratch: Scratch::default(),
            replayed: (0, 0),
            current: 0,
            parked,
        })
    }

    /// The program later runs, symbol writes and reads use: 0 the binary's
    /// first, `i` the `i - 1`th of its `programs` section.
    pub fn program(&self) -> usize {
        self.current
    }

    /// Programs the binary holds (at least 1).
    pub fn programs(&self) -> usize {
        self.parked.len()
    }

    /// Makes program `index` ([`Machine::program`]) the current one. MEM,
    /// weights and KV cache stay; each program keeps its own recorded
    /// replay.
    pub fn set_program(&mut self, index: usize) -> Result<(), DeviceError> {
        if index == self.current {
            return Ok(());
        }
        let Some(next) = self.parked.get_mut(index).and_then(Option::take) else {
            return Err(DeviceError::NoProgram {
                name: format!("#{index}"),
            });
        };
        let old = Parked {
            loaded: std::mem::replace(&mut self.loaded, next.loaded),
            symbols: std::mem::replace(&mut self.symbols, next.symbols),
            replay: std::mem::replace(&mut self.replay, next.replay),
            replay_timeline: std::mem::replace(&mut self.replay_timeline, next.replay_timeline),
            unreplayable: std::mem::replace(&mut self.unreplayable, next.unreplayable),
            in_replay: std::mem::replace(&mut self.in_replay, next.in_replay),
        };
        self.parked[self.current] = Some(old);
        self.current = index;
        let tables = self.loaded.permute_tables();
        self.state_mut().tables = tables;
        Ok(())
    }

    /// The decoded program `index` ([`Machine::program`]), if there is one.
    pub fn loaded_program(&self, index: usize) -> Option<&Loaded> {
        if index == self.current {
            return Some(&self.loaded);
        }
        self.parked.get(index)?.as_ref().map(|p| &p.loaded)
    }

    /// The debug map of program `index`, if it has one.
    pub fn debug_map(&self, index: usize) -> Option<q35_lpubin::DebugMap<'b>> {
        match index {
            0 => self.binary.debug(),
            i => self.binary.programs().nth(i - 1)?.debug(),
        }
    }

    /// Stops each run with [`Stop::MaxCycles`] past `limit` cycles.
    pub fn set_max_cycles(&mut self, limit: Option<u64>) {
        self.max_cycles = limit;
    }

    /// Records the timeline of every later run ([`Machine::recorded`]).
    pub fn set_record(&mut self, on: bool) {
        self.record = on.then(Recorded::default);
        self.replay_timeline = None;
        self.lean = false;
        self.in_replay = None;
        for p in self.parked.iter_mut().flatten() {
            p.replay_timeline = None;
            p.in_replay = None;
        }
    }

    /// Records as [`Machine::set_record`], but the timeline of the run a
    /// replay was recorded from is not kept twice: once the replay exists,
    /// it holds those issues ([`Replay::timeline`] rebuilds them), which is
    /// a step's timeline less to keep resident (21 MB on SmolLM2 at
    /// context 256). [`Machine::recorded`] is then `None`;
    /// [`Machine::into_recorded`] gives every timeline, whole.
    pub fn set_record_lean(&mut self, on: bool) {
        self.set_record(on);
        self.lean = on;
    }

    /// Chooses how later runs execute (default [`EngineMode::Exact`]).
    pub fn set_mode(&mut self, mode: EngineMode) {
        self.mode = mode;
    }

    /// How runs execute.
    pub fn mode(&self) -> EngineMode {
        self.mode
    }

    /// Runs done by the replay so far, and replays abandoned for the engine
    /// (a run that faulted).
    pub fn replayed(&self) -> (u64, u64) {
        self.replayed
    }

    /// The recorded run, once there is one.
    pub fn replay(&self) -> Option<&Replay> {
        self.replay.as_ref()
    }

    /// What was recorded (`None` unless [`Machine::set_record`] is on, and
    /// `None` with [`Machine::set_record_lean`]: see
    /// [`Machine::into_recorded`]).
    pub fn recorded(&self) -> Option<&Recorded> {
        self.record.as_ref().filter(|_| !self.lean)
    }

    /// The decoded program.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The machine's parameters.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Runs completed so far.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// The machine's state (MEM after the last run).
    pub fn state(&self) -> &State {
        self.state
            .as_ref()
            .expect("the state is back after every run")
    }

    /// The machine's state, to change between runs (as a host writing MEM
    /// does; tests use it to give later runs other values).
    pub fn state_mut(&mut self) -> &mut State {
        self.state
            .as_mut()
            .expect("the state is back after every run")
    }

    /// Every decoded program (by [`Machine::program`] number) and what was
    /// recorded (every timeline whole, lean or not), consuming the machine:
    /// MEM, the replays and their buffers are freed before the caller
    /// analyses the timelines.
    pub fn into_recorded(mut self) -> (Vec<Loaded>, Option<Recorded>) {
        self.state = None;
        self.scratch = Scratch::default();
        let current = Parked {
            loaded: self.loaded,
            symbols: BTreeMap::new(),
            replay: self.replay,
            replay_timeline: self.replay_timeline,
            unreplayable: self.unreplayable,
            in_replay: self.in_replay,
        };
        self.parked[self.current] = Some(current);
        let mut programs = Vec::with_capacity(self.parked.len());
        for p in self.parked.into_iter().flatten() {
            if let (Some(rec), Some(i), Some(replay)) = (&mut self.record, p.in_replay, &p.replay)
                && let Some(t) = rec.timelines.get_mut(i)
            {
                t.issues = replay.timeline().issues;
            }
            programs.push(p.loaded);
        }
        (programs, self.record)
    }

    /// The state, consuming the machine.
    pub fn into_state(self) -> State {
        self.state.expect("the state is back after every run")
    }

    /// Runs the program once from cycle 0 on the current MEM. A hazard
    /// carries its source op from the binary's debug map when it has one.
    /// MEM keeps whatever the run wrote, even when it stops early.
    pub fn run_once(&mut self) -> Result<Profile, Stop> {
        let mut state = self
            .state
            .take()
            .expect("the state is back after every run");
        // A restart: no port bookings, planes empty (MEM stays).
        state.ports = (0..state.mem.len()).map(|_| Ports::default()).collect();
        let planes: Result<Vec<Plane>, _> = (0..state.planes.len())
            .map(|_| Plane::new(self.config.plane))
            .collect();
        // The plane configuration was accepted on load, so this cannot fail;
        // keep the old planes if it somehow does rather than panic.
        if let Ok(p) = planes {
            state.planes = p;
        }
        if self.mode == EngineMode::Replay
            && let Some(replay) = &self.replay
            && replay.fits(self.max_cycles)
            && (self.record.is_none() || self.replay_timeline.is_some())
        {
            match replay.run(
                &self.config,
                &mut state,
                &self.loaded.queues,
                &mut self.scratch,
            ) {
                Ok(()) => {
                    if let (Some(rec), Some(i)) = (&mut self.record, self.replay_timeline) {
                        rec.runs.push(i);
                    }
                    self.state = Some(state);
                    self.runs += 1;
                    self.replayed.0 += 1;
                    return Ok(replay.profile().clone());
                }
                // MEM is as before the run: the engine runs it instead.
                Err(Abandoned::Fault(_) | Abandoned::Log(_)) => {
                    self.replayed.1 += 1;
                    state.ports = (0..state.mem.len()).map(|_| Ports::default()).collect();
                    if let Ok(p) = (0..state.planes.len())
                        .map(|_| Plane::new(self.config.plane))
                        .collect::<Result<Vec<_>, _>>()
                    {
                        state.planes = p;
                    }
                }
            }
        }
        // Verify: the replay's run on a copy, compared after the engine's.
        let twin = match (&self.replay, self.mode) {
            (Some(replay), EngineMode::Verify) if replay.fits(self.max_cycles) => {
                let mut twin = state.clone();
                let run = replay.run(
                    &self.config,
                    &mut twin,
                    &self.loaded.queues,
                    &mut self.scratch,
                );
                Some((run, twin))
            }
            _ => None,
        };
        // The engine borrows the instruction lists for the run (no copy).
        let present: Vec<bool> = self.loaded.queues.iter().map(Option::is_some).collect();
        let mut engine = Engine::new(&self.config, state, std::mem::take(&mut self.loaded.queues));
        if self.record.is_some() {
            engine.record();
        }
        let record_replay = matches!(self.mode, EngineMode::Replay | EngineMode::Verify)
            && self.replay.is_none()
            && !self.unreplayable;
        if record_replay {
            engine.record_replay();
        }
        let result = engine.run(self.max_cycles).cloned();
        if let (Some(rec), Ok(profile)) = (&mut self.record, &result) {
            let t = Timeline {
                issues: engine.take_recorded(),
                profile: profile.clone(),
            };
            let (in_replay, replay, current) = (self.in_replay, &self.replay, self.current);
            let same = |(j, (x, &p)): (usize, (&Timeline, &usize))| {
                p == current
                    && match (in_replay, replay) {
                        (Some(k), Some(r)) if k == j => r.timeline() == t,
                        _ => *x == t,
                    }
            };
            let i = match rec
                .timelines
                .iter()
                .zip(&rec.programs)
                .enumerate()
                .position(same)
            {
                Some(i) => i,
                None => {
                    rec.timelines.push(t);
                    rec.programs.push(current);
                    rec.timelines.len() - 1
                }
            };
            rec.runs.push(i);
            if record_replay {
                self.replay_timeline = Some(i);
            }
        }
        let recording = engine.take_replay();
        let last_event = engine.last_event_cycle();
        let (state, lists) = engine.into_parts();
        self.loaded.queues = lists
            .into_iter()
            .zip(present)
            .map(|(list, present)| present.then_some(list))
            .collect();
        if record_replay
            && let Ok(profile) = &result
            && let Some(recording) = recording
        {
            self.replay = Replay::new(
                recording,
                profile.clone(),
                last_event,
                &self.config,
                &self.loaded.queues,
            );
            self.unreplayable = self.replay.is_none();
            if self.lean
                && self.replay.is_some()
                && let (Some(rec), Some(i)) = (&mut self.record, self.replay_timeline)
                && let Some(t) = rec.timelines.get_mut(i)
            {
                t.issues = Vec::new();
                self.in_replay = Some(i);
            }
        }
        self.state = Some(state);
        self.runs += 1;
        let result = match (twin, &self.replay) {
            (Some((run, twin)), Some(replay)) => {
                self.replayed.0 += 1;
                let state = self.state();
                let diverged = match (&run, &result) {
                    (Ok(()), Ok(p)) if p != replay.profile() => Some("the counters differ".into()),
                    (Ok(()), Ok(_)) => state
                        .mem
                        .iter()
                        .zip(&twin.mem)
                        .position(|(a, b)| a.bytes() != b.bytes())
                        .map(|s| format!("MEM slice {s} differs")),
                    (Ok(()), Err(_)) => Some("the engine stopped, the replay did not".into()),
                    // A fault: the replay leaves MEM as it was and the engine decides.
                    (Err(_), _) => {
                        self.replayed.1 += 1;
                        None
                    }
                };
                match diverged {
                    Some(what) => Err(Stop::Hazard(Box::new(Hazard {
                        cycle: 0,
                        queue: q35_isa::QueueId::from_index(0).expect("queue 0"),
                        index: 0,
                        text: "(replay check)".into(),
                        detail: None,
                        kind: HazardKind::Internal {
                            message: format!(
                                "run {}: the replay differs from the engine: {what}",
                                self.runs - 1
                            ),
                        },
                        source: None,
                    }))),
                    None => result,
                }
            }
            _ => result,
        };
        result.map_err(|stop| match stop {
            Stop::Hazard(mut h) => {
                h.source = self
                    .debug_map(self.current)
                    .and_then(|d| d.lookup(h.queue.index(), h.index))
                    .map(str::to_string);
                Stop::Hazard(h)
            }
            other => other,
        })
    }

    fn layout(&self, name: &str) -> Result<(SymbolLayout, &Symbol), DeviceError> {
        let sym = self
            .symbols
            .get(name)
            .ok_or_else(|| DeviceError::NoSymbol {
                name: name.to_string(),
            })?;
        let layout_err = |error| DeviceError::Layout {
            name: name.to_string(),
            error,
        };
        let l = SymbolLayout::of(sym).map_err(layout_err)?;
        let state = self.state();
        l.check_bounds(state.mem.len(), self.config.mem.words_per_slice)
            .map_err(layout_err)?;
        Ok((l, sym))
    }
}

impl Device for Machine<'_> {
    fn select_program(&mut self, program: Option<&str>) -> Result<(), DeviceError> {
        let index = match program {
            None => 0,
            Some(name) => {
                self.binary
                    .programs()
                    .position(|p| p.name() == name)
                    .ok_or_else(|| DeviceError::NoProgram {
                        name: name.to_string(),
                    })?
                    + 1
            }
        };
        self.set_program(index)
    }

    fn write_symbol(&mut self, name: &str, bytes: &[u8]) -> Result<(), DeviceError> {
        let (l, sym) = self.layout(name)?;
        if bytes.len() != l.byte_len() {
            return Err(DeviceError::Size {
                name: name.to_string(),
                got: bytes.len(),
                expected: l.byte_len(),
                what: format!("{} {:?}", sym.elem, sym.shape),
            });
        }
        let state = self
            .state
            .as_mut()
            .expect("the state is back after every run");
        for (slice, addr, word) in l.to_words(bytes) {
            state.mem[usize::from(slice)]
                .word_mut(addr)
                .copy_from_slice(&word);
        }
        Ok(())
    }

    fn read_symbol(&mut self, name: &str) -> Result<Vec<u8>, DeviceError> {
        let (l, _) = self.layout(name)?;
        let state = self.state();
        Ok(l.from_words(|slice, addr| &state.mem[usize::from(slice)].word(addr)[..]))
    }

    fn run(&mut self) -> Result<StepStats, DeviceError> {
        match self.run_once() {
            Ok(p) => Ok(StepStats {
                cycles: p.total_cycles(),
                instructions: p.instructions(),
            }),
            Err(Stop::Hazard(h)) => Err(DeviceError::Run(format!("run {}: {h}", self.runs))),
            Err(Stop::MaxCycles { limit, next }) => Err(DeviceError::Run(format!(
                "run {}: the next event is on cycle {next}, past the limit of {limit} cycles",
                self.runs
            ))),
        }
    }
}
