//! The replay: a program's run as a flat list of data events with their
//! stream operands resolved, executed without the engine's scheduling.
//!
//! # What is recorded
//!
//! A compiled program is static: nothing in it branches on a value. When
//! the exact [`Engine`](crate::Engine) runs it with
//! [`Engine::record_replay`](crate::Engine::record_replay) on, it writes
//! down, in the order it runs them,
//!
//! - every **issue** of a non-control instruction (queue, instruction index,
//!   cycle, the `repeat` address offset; a repetition is marked as such),
//! - every **deferred event** (a MEM write or scatter becoming visible, a
//!   row step of an `lw`) with its [`Deferred`] work,
//! - and, across both, the **slab slot** of every stream value the
//!   instruction reads or writes, in the order [`exec`] asks for them
//!   ([`exec::Live`] logs them).
//!
//! # Why replaying the list is the engine
//!
//! [`Replay::run`] executes the list with the very same [`exec::execute`],
//! [`exec::load_rows`] and [`exec::commit`] the engine calls, on the same
//! [`State`] (MEM, fresh MXM planes and port bookings, the tables), with the
//! same cycle, queue, index and offset per event. Only the operands differ
//! in where they come from: [`Resolved`] hands out the recorded slab slots in
//! order instead of asking the stream model. This is exact because, in a
//! run without a hazard, nothing the engine decides depends on a value:
//!
//! - *when* an event runs comes from the instruction lists alone (issue
//!   cycles, `repeat`, `sync`/`notify`, latencies; [`crate::engine`] never
//!   reads a value to schedule), so the event order is the recorded one;
//! - *which* stream value an instruction reads is decided by the stream
//!   model from (stream, position, cycle) and the lines of earlier writes,
//!   again value-free; the slab slot a new value gets comes from the slab's
//!   free list, which changes only by allocations and by collection at
//!   cycles that are value-free too. So slot `k` of the log holds, at that
//!   point of every hazard-free run, the value the stream model would hand
//!   out, provided every earlier write to that slot was replayed, which it
//!   was (the same writes, in the same order);
//! - `exec` calls `read`/`write` in an order fixed by the instruction (the
//!   operand groups, never a value-dependent count), and the pool buffers of
//!   deferred writes are taken and returned in event order, so the recorded
//!   [`Deferred`] work names the buffers the replay fills;
//! - MEM port and bank bookings, address checks, the MXM plane model (its
//!   timing and its overflow checks) run in `exec` exactly as in the engine,
//!   so every value-dependent hazard (a gather or scatter index out of
//!   range, a bank clash of a gather or scatter, an accumulator overflow) is
//!   found by the replay too.
//!
//! The profile, the cycle count and the timeline are the recording run's
//! (value-free). What the replay cannot reproduce is the engine's reaction
//! to a hazard (it keeps running to the hazard's cycle and reports the
//! earliest), so on *any* fault the replay undoes its MEM writes (it saved
//! each word before its first write) and [`Machine`](crate::Machine) runs the
//! exact engine on the restored MEM instead: a run with a hazard is the
//! engine's, bit for bit and hazard for hazard. The same happens when the
//! log does not fit (a slot past the slab, the log running out), which would
//! be a simulator bug.
//!
//! The recording is valid for every later run of the same loaded program
//! on the same target; `tests/replay.rs` holds the replay equal to the
//! engine (every MEM byte, the cycle count, the hazard) on every program of
//! tests/lit/sim, on generated programs, on the tiny model and on SmolLM2
//! steps.

use q35_isa::{Instruction, LatencyClass, QueueId, Stream};

use crate::config::MachineConfig;
use crate::exec::{self, Ctx, Deferred, Fault, Operands, Pool};
use crate::hazard::HazardKind;
use crate::profile::Profile;
use crate::state::State;
use crate::streams::{LANES, Vector};

/// What kind of event an [`Event`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The issue of instruction `index` of the queue.
    Issue,
    /// A repetition of the instruction before the `repeat` at `index`.
    Repetition,
    /// The next entry of the recording's deferred work.
    Deferred,
}

/// One event of a recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Its cycle.
    pub cycle: u64,
    /// Words added to address fields (`repeat` strides).
    pub offset: i64,
    /// The instruction index the engine ran it as.
    pub index: u32,
    /// Dense queue number.
    pub queue: u16,
    /// What it is.
    pub kind: EventKind,
    /// Whether a MEM `read` or `write` must book its port and banks: a
    /// gather or scatter books the same slice on the same cycle (set by
    /// [`Replay::new`]; the engine books everything).
    pub book: bool,
}

/// What the engine writes down while recording.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Data events in engine order.
    pub events: Vec<Event>,
    /// The work of the [`EventKind::Deferred`] events, in order.
    pub deferred: Vec<Deferred>,
    /// Slab slots of the values read and written, in call order.
    pub slots: Vec<u32>,
    /// Slab slots the run allocated.
    pub slab_len: usize,
}

/// A program's recorded run, ready to run again.
#[derive(Debug, Clone)]
pub struct Replay {
    recording: Recording,
    /// The recording run's counters.
    profile: Profile,
    /// The latest cycle of any event (for `--max-cycles`).
    last_event: u64,
}

/// Why a replayed run was abandoned (MEM is as before the run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandoned {
    /// An instruction faulted: the exact engine must run to find the hazard
    /// it reports.
    Fault(Fault),
    /// The log does not fit the program (a simulator bug).
    Log(String),
}

/// Reusable buffers of replayed runs.
#[derive(Debug, Default)]
pub struct Scratch {
    slab: Vec<Vector>,
    deferred: Vec<(u64, Deferred)>,
    /// Words saved before their first write in this run: (slice, word, bytes).
    undo: Vec<(u16, u32, Vector)>,
    /// Per MEM word (slice-major), the run that last saved it.
    saved: Vec<u32>,
    /// This run's number (starts at 1; 0 in `saved` is "never").
    generation: u32,
}

/// The recorded operands, handed out in order.
#[derive(Debug)]
pub struct Resolved<'a> {
    slab: &'a mut [Vector],
    slots: &'a [u32],
    next: usize,
    /// This event's MEM port booking is needed ([`Event::book`]).
    book: bool,
}

impl Resolved<'_> {
    fn slot(&mut self, cycle: u64) -> Result<usize, Fault> {
        let slot = self.slots.get(self.next).map(|&s| s as usize);
        self.next += 1;
        match slot {
            Some(s) if s < self.slab.len() => Ok(s),
            _ => Err(Fault {
                cycle,
                kind: HazardKind::Internal {
                    message: format!("replay: operand {} is not in the log", self.next - 1),
                },
            }),
        }
    }
}

impl Operands for Resolved<'_> {
    fn read_slot(&mut self, _s: Stream, _position: u32, cycle: u64) -> Result<u32, Fault> {
        self.slot(cycle).map(|s| s as u32)
    }

    fn bytes(&self, slot: u32) -> &Vector {
        &self.slab[slot as usize]
    }

    fn books_static(&self) -> bool {
        self.book
    }

    fn write(
        &mut self,
        _s: Stream,
        _position: u32,
        cycle: u64,
        bytes: &Vector,
        _queue: QueueId,
        _index: u32,
    ) -> Result<(), Fault> {
        let s = self.slot(cycle)?;
        self.slab[s] = *bytes;
        Ok(())
    }
}

impl Replay {
    /// A replay of the run recorded in `recording`, which ended with
    /// `profile` and whose latest event was on `last_event`.
    pub fn new(
        mut recording: Recording,
        profile: Profile,
        last_event: u64,
        config: &MachineConfig,
        queues: &[Option<Vec<Instruction>>],
    ) -> Replay {
        // The (slice, cycle) bookings of every gather and scatter.
        let wl = config.latency(LatencyClass::MemWrite);
        let mut dynamic = Vec::new();
        let mut bookings = Vec::with_capacity(recording.events.len());
        for e in &recording.events {
            let ins = match e.kind {
                EventKind::Issue => Some(e.index),
                EventKind::Repetition => e.index.checked_sub(1),
                EventKind::Deferred => None,
            }
            .and_then(|i| queues.get(usize::from(e.queue))?.as_ref()?.get(i as usize));
            let at = ins.and_then(|ins| booking(ins, e.cycle, wl));
            if let Some((c, true)) = at {
                dynamic.push((e.queue, c));
            }
            bookings.push(at);
        }
        dynamic.sort_unstable();
        for (e, at) in recording.events.iter_mut().zip(bookings) {
            e.book = at.is_none_or(|(c, _)| dynamic.binary_search(&(e.queue, c)).is_ok());
        }
        Replay {
            recording,
            profile,
            last_event,
        }
    }

    /// The recording run's counters (every replayed run has the same).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Whether a run limited to `max_cycles` reaches the end (the engine
    /// stops before an event past the limit).
    pub fn fits(&self, max_cycles: Option<u64>) -> bool {
        max_cycles.is_none_or(|l| self.last_event <= l)
    }

    /// Events, deferred work and slots recorded (for reports).
    pub fn size(&self) -> (usize, usize, usize) {
        let r = &self.recording;
        (r.events.len(), r.deferred.len(), r.slots.len())
    }

    /// Runs the recorded events on `state` (fresh planes and port
    /// bookings, as the engine starts). On [`Abandoned`] every MEM word the
    /// run wrote has its old bytes back.
    pub fn run(
        &self,
        config: &MachineConfig,
        state: &mut State,
        queues: &[Option<Vec<Instruction>>],
        scratch: &mut Scratch,
    ) -> Result<(), Abandoned> {
        let r = &self.recording;
        if scratch.slab.len() < r.slab_len {
            scratch.slab.resize(r.slab_len, [0; LANES]);
        }
        let total = state.mem.len() * config.mem.words_per_slice as usize;
        if scratch.saved.len() != total {
            scratch.saved = vec![0; total];
            scratch.generation = 0;
        }
        scratch.generation = scratch.generation.wrapping_add(1);
        if scratch.generation == 0 {
            scratch.saved.fill(0);
            scratch.generation = 1;
        }
        scratch.undo.clear();
        let result = self.run_events(config, state, queues, scratch);
        if result.is_err() {
            for (slice, addr, bytes) in scratch.undo.drain(..).rev() {
                *state.mem[usize::from(slice)].word_mut(addr) = bytes;
            }
        }
        result
    }

    fn run_events(
        &self,
        config: &MachineConfig,
        state: &mut State,
        queues: &[Option<Vec<Instruction>>],
        scratch: &mut Scratch,
    ) -> Result<(), Abandoned> {
        let r = &self.recording;
        let Scratch {
            slab,
            deferred: pushed,
            undo,
            saved,
            generation,
        } = scratch;
        let mut undo = Undo {
            log: undo,
            saved,
            generation: *generation,
            words: config.mem.words_per_slice as usize,
        };
        let mut pool = Pool::default();
        let mut next = 0usize;
        let mut deferred = r.deferred.iter();
        for e in &r.events {
            let queue = QueueId::from_index(e.queue)
                .ok_or_else(|| Abandoned::Log(format!("queue {} in the log", e.queue)))?;
            let mut ctx = Ctx {
                config,
                state: &mut *state,
                operands: Resolved {
                    slab: slab.as_mut_slice(),
                    slots: &r.slots,
                    next,
                    book: e.book,
                },
                pool: &mut pool,
                deferred: &mut *pushed,
                cycle: e.cycle,
                queue,
                index: e.index,
                addr_offset: e.offset,
            };
            let run = match e.kind {
                EventKind::Issue | EventKind::Repetition => {
                    let at = match e.kind {
                        EventKind::Repetition => e.index.checked_sub(1),
                        EventKind::Issue | EventKind::Deferred => Some(e.index),
                    };
                    let ins = at
                        .and_then(|i| queues.get(usize::from(e.queue))?.as_ref()?.get(i as usize))
                        .ok_or_else(|| {
                            Abandoned::Log(format!(
                                "queue {queue}, #{} not in the program",
                                e.index
                            ))
                        })?;
                    // The engine schedules what this pushes; the log has it.
                    ctx.deferred.clear();
                    exec::execute(&mut ctx, ins).map(|_| ())
                }
                EventKind::Deferred => {
                    let work = *deferred
                        .next()
                        .ok_or_else(|| Abandoned::Log("deferred work ran out".into()))?;
                    match work {
                        Deferred::MemWrite { slice, addr, .. } => {
                            undo.save(ctx.state, slice, addr);
                            exec::commit(ctx.state, ctx.pool, work);
                            Ok(())
                        }
                        Deferred::Scatter {
                            slice,
                            base,
                            lo,
                            hi,
                            ..
                        } => {
                            let (lo, hi) = (ctx.pool.get(lo), ctx.pool.get(hi));
                            for l in 0..LANES {
                                let i = u16::from_le_bytes([lo[l], hi[l]]);
                                // Checked at issue: in range.
                                undo.save(ctx.state, slice, (base + i64::from(i)) as u32);
                            }
                            exec::commit(ctx.state, ctx.pool, work);
                            Ok(())
                        }
                        Deferred::LoadRows { .. } => {
                            ctx.addr_offset = 0;
                            exec::load_rows(&mut ctx, work)
                        }
                    }
                }
            };
            next = ctx.operands.next;
            run.map_err(Abandoned::Fault)?;
        }
        if next != r.slots.len() || deferred.next().is_some() {
            return Err(Abandoned::Log(format!(
                "{next} of {} operands used",
                r.slots.len()
            )));
        }
        Ok(())
    }
}

/// The cycle a MEM instruction issued on `cycle` books its slice's port
/// (`exec`'s rule: reads on issue, writes on the cycle before they land),
/// and whether its banks depend on values (gather, scatter).
fn booking(ins: &Instruction, cycle: u64, write_latency: u64) -> Option<(u64, bool)> {
    let written = (cycle + write_latency).saturating_sub(1);
    match ins {
        Instruction::Read { .. } => Some((cycle, false)),
        Instruction::Gather { .. } => Some((cycle, true)),
        Instruction::Write { .. } => Some((written, false)),
        Instruction::Scatter { .. } => Some((written, true)),
        control_ops!() | vxm_ops!() | sxm_ops!() | mxm_ops!() | c2c_ops!() => None,
    }
}

/// The words a run wrote, each saved before its first write.
struct Undo<'a> {
    log: &'a mut Vec<(u16, u32, Vector)>,
    saved: &'a mut [u32],
    generation: u32,
    words: usize,
}

impl Undo<'_> {
    /// Saves word `addr` of `slice` unless this run saved it already.
    fn save(&mut self, state: &State, slice: u16, addr: u32) {
        let at = usize::from(slice) * self.words + addr as usize;
        if let Some(g) = self.saved.get_mut(at)
            && *g != self.generation
        {
            *g = self.generation;
            self.log
                .push((slice, addr, *state.mem[usize::from(slice)].word(addr)));
        }
    }
}
