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
//! earliest), so on *any* fault the replay undoes its MEM changes (below)
//! and [`Machine`](crate::Machine) runs the exact engine on that MEM
//! instead: a run with a hazard is the engine's, bit for bit and hazard for
//! hazard. The same happens when the log does not fit (a slot past the
//! slab, the log running out), which would be a simulator bug.
//!
//! # Undo
//!
//! A run saves a word before its first change only if the word is *kept*
//! ([`Replay::new`] decides, from the recording): a `read` of it comes
//! before the first `write` of the whole word, or it lies in a slice some
//! gather reads (a gather's addresses are values). A SmolLM2 step writes
//! ~76,000 words, mostly activations written before they are read; ~26,000
//! are kept. Why restoring only the kept words gives the engine's run:
//! the replay faulted at event `k`, so its changes are the commits of
//! events before `k`, the engine's own first `k` events. Rerun on the
//! restored MEM, the engine runs those same events in the same order; a
//! word not kept is read only after a `write` of all of it (`read`s are at
//! fixed addresses, no gather reads its slice), so until that `write` the
//! run cannot see it, and the `write` (an event before `k` whenever the
//! replay made it) stores the same bytes in both. So the engine computes
//! exactly what it computes on the MEM before the run, and it leaves each
//! such word with the bytes of its own last change (every change the replay
//! made is one the engine makes again before it stops) or untouched (the
//! replay did not change it either).
//!
//! # Size
//!
//! An [`Event`] is 12 bytes and a slot 2 bytes: a SmolLM2 step at context
//! 256 records ~1.04 M events and ~3.85 M slots, 20 MB. A run whose cycles, offsets or slots do not fit
//! is not replayed ([`Recording::fits`]).
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
use crate::timeline::{Issue, Timeline};

/// What kind of event an [`Event`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The issue of instruction `index` of the queue.
    Issue,
    /// A repetition of the instruction before the `repeat` at `index`.
    Repetition,
    /// The next entry of the recording's deferred work.
    Deferred,
    /// The issue of a control instruction (`index` as the timeline has
    /// it): nothing to run, kept for [`Replay::timeline`].
    Control,
}

/// One event of a recorded run, packed into 12 bytes (a SmolLM2 step
/// records about a million): the cycle in 32 bits, and the `repeat` offset
/// (21 bits, signed), the [`BOOK`] flag, the kind and the queue (8 bits)
/// in one word. A run that needs more is not replayed ([`Recording::fits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    cycle: u32,
    index: u32,
    /// `offset << 11 | book << 10 | kind << 8 | queue`.
    packed: u32,
}

const _: () = assert!(std::mem::size_of::<Event>() == 12);

/// [`Event`] flag: a MEM `read` or `write` must book its port and banks (a
/// gather or scatter books the same slice on the same cycle; set by
/// [`Replay::new`], the engine books everything).
const BOOK: u32 = 1 << 10;
/// The `repeat` offsets an [`Event`] holds: `-OFFSET_RANGE .. OFFSET_RANGE`.
const OFFSET_RANGE: i64 = 1 << 20;

impl Event {
    fn new(cycle: u64, offset: i64, index: u32, queue: u16, kind: EventKind) -> Option<Event> {
        let cycle = u32::try_from(cycle).ok()?;
        let queue = u8::try_from(queue).ok()?;
        if !(-OFFSET_RANGE..OFFSET_RANGE).contains(&offset) {
            return None;
        }
        let kind = match kind {
            EventKind::Issue => 0u32,
            EventKind::Repetition => 1,
            EventKind::Deferred => 2,
            EventKind::Control => 3,
        };
        Some(Event {
            cycle,
            index,
            packed: ((offset as i32 as u32) << 11) | BOOK | (kind << 8) | u32::from(queue),
        })
    }

    /// Its cycle.
    pub fn cycle(&self) -> u64 {
        u64::from(self.cycle)
    }

    /// Words added to address fields (`repeat` strides).
    pub fn offset(&self) -> i64 {
        i64::from((self.packed as i32) >> 11)
    }

    /// The instruction index the engine ran it as.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Dense queue number.
    pub fn queue(&self) -> u16 {
        (self.packed & 0xff) as u16
    }

    /// What it is.
    pub fn kind(&self) -> EventKind {
        match (self.packed >> 8) & 3 {
            0 => EventKind::Issue,
            1 => EventKind::Repetition,
            2 => EventKind::Deferred,
            _ => EventKind::Control,
        }
    }

    /// Whether a MEM `read` or `write` books its port and banks.
    pub fn books(&self) -> bool {
        self.packed & BOOK != 0
    }

    fn set_books(&mut self, book: bool) {
        self.packed = (self.packed & !BOOK) | if book { BOOK } else { 0 };
    }
}

/// The slab slots of a recording, 16 bits each (a step's live values
/// take about two thousand slots; a run that needs more than 65,536 is
/// not replayed, [`Recording::fits`]).
#[derive(Debug, Clone, Default)]
pub struct SlotLog {
    slots: Vec<u16>,
    unfit: bool,
}

impl SlotLog {
    /// Logs `slot`.
    pub fn push(&mut self, slot: u32) {
        match u16::try_from(slot) {
            Ok(s) => self.slots.push(s),
            Err(_) => self.unfit = true,
        }
    }

    /// Slots logged.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none was logged.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// What the engine writes down while recording.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Data events in engine order.
    events: Vec<Event>,
    /// The work of the [`EventKind::Deferred`] events, in order.
    deferred: Vec<Deferred>,
    /// Slab slots of the values read and written, in call order.
    pub slots: SlotLog,
    /// Slab slots the run allocated.
    pub slab_len: usize,
    /// An event did not fit [`Event`]'s fields.
    unfit: bool,
}

impl Recording {
    /// Records the issue (or `repeat` repetition) of instruction `index`
    /// of queue `queue` on `cycle`, with address offset `offset`.
    pub fn issue(&mut self, cycle: u64, offset: i64, index: u32, queue: u16, repetition: bool) {
        let kind = if repetition {
            EventKind::Repetition
        } else {
            EventKind::Issue
        };
        self.push(cycle, offset, index, queue, kind);
    }

    /// Records the issue of a control instruction: instruction `index` of
    /// `queue` (a repetition's as the repeated instruction) on `cycle`.
    pub fn control(&mut self, cycle: u64, index: u32, queue: u16) {
        self.push(cycle, 0, index, queue, EventKind::Control);
    }

    /// Records deferred work `work` of instruction `index` of `queue`
    /// running on `cycle`.
    pub fn deferred(&mut self, cycle: u64, index: u32, queue: u16, work: Deferred) {
        self.push(cycle, 0, index, queue, EventKind::Deferred);
        self.deferred.push(work);
    }

    fn push(&mut self, cycle: u64, offset: i64, index: u32, queue: u16, kind: EventKind) {
        match Event::new(cycle, offset, index, queue, kind) {
            Some(e) => self.events.push(e),
            None => self.unfit = true,
        }
    }

    /// Whether every event and slot fit the packed form (else the run is
    /// not replayed: the engine runs every run).
    pub fn fits(&self) -> bool {
        !self.unfit && !self.slots.unfit
    }

    /// The events, in engine order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// A program's recorded run, ready to run again.
#[derive(Debug, Clone)]
pub struct Replay {
    recording: Recording,
    /// Per MEM word (slice-major, a bit each): whether a run saves it
    /// before its first change (module doc, "Undo").
    keep: Vec<u64>,
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
    /// Per MEM word (slice-major, a bit each): saved in this run.
    saved: Vec<u64>,
}

/// The recorded operands, handed out in order.
#[derive(Debug)]
pub struct Resolved<'a> {
    slab: &'a mut [Vector],
    slots: &'a [u16],
    next: usize,
    /// This event's MEM port booking is needed ([`Event::book`]).
    book: bool,
}

impl Resolved<'_> {
    fn slot(&mut self, cycle: u64) -> Result<usize, Fault> {
        let slot = self.slots.get(self.next).map(|&s| usize::from(s));
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

    #[inline(always)]
    fn write_mut(
        &mut self,
        _s: Stream,
        _position: u32,
        cycle: u64,
        _queue: QueueId,
        _index: u32,
    ) -> Result<&mut Vector, Fault> {
        let s = self.slot(cycle)?;
        Ok(&mut self.slab[s])
    }
}

impl Replay {
    /// A replay of the run recorded in `recording`, which ended with
    /// `profile` and whose latest event was on `last_event`; `None` when
    /// the recording did not fit its packed form ([`Recording::fits`]).
    pub fn new(
        mut recording: Recording,
        profile: Profile,
        last_event: u64,
        config: &MachineConfig,
        queues: &[Option<Vec<Instruction>>],
    ) -> Option<Replay> {
        if !recording.fits() {
            return None;
        }
        let ins_of = |e: &Event| -> Option<&Instruction> {
            match e.kind() {
                EventKind::Issue => Some(e.index()),
                EventKind::Repetition => e.index().checked_sub(1),
                EventKind::Deferred | EventKind::Control => None,
            }
            .and_then(|i| {
                queues
                    .get(usize::from(e.queue()))?
                    .as_ref()?
                    .get(i as usize)
            })
        };
        // The (slice, cycle) bookings of every gather and scatter.
        let wl = config.latency(LatencyClass::MemWrite);
        let mut dynamic = Vec::new();
        for e in &recording.events {
            if let Some((c, true)) = ins_of(e).and_then(|ins| booking(ins, e.cycle(), wl)) {
                dynamic.push((e.queue(), c));
            }
        }
        dynamic.sort_unstable();
        // Per MEM word, which comes first in the run: a `read` of it
        // (`READ`) or a `write` of all of it becoming visible (`WRITTEN`).
        const READ: u8 = 1;
        const WRITTEN: u8 = 2;
        let words = config.mem.words_per_slice as usize;
        let slices = usize::from(crate::config::ISA_COUNTS.0);
        let mut first = vec![0u8; slices * words];
        let mut gathered = vec![false; slices];
        let at = |slice: u16, addr: i64| -> Option<usize> {
            let a = usize::try_from(addr).ok().filter(|&a| a < words)?;
            Some(usize::from(slice) * words + a)
        };
        let mut work = recording.deferred.iter();
        for e in &mut recording.events {
            let ins = ins_of(e);
            let book = ins
                .and_then(|ins| booking(ins, e.cycle(), wl))
                .is_none_or(|(c, _)| dynamic.binary_search(&(e.queue(), c)).is_ok());
            e.set_books(book);
            let (w, access) = match (e.kind(), ins) {
                (
                    EventKind::Issue | EventKind::Repetition,
                    Some(Instruction::Read { addr, .. }),
                ) => (at(e.queue(), i64::from(*addr) + e.offset()), READ),
                (EventKind::Issue | EventKind::Repetition, Some(Instruction::Gather { .. })) => {
                    if let Some(g) = gathered.get_mut(usize::from(e.queue())) {
                        *g = true;
                    }
                    continue;
                }
                (EventKind::Issue | EventKind::Repetition | EventKind::Control, _) => continue,
                (EventKind::Deferred, _) => match work.next() {
                    Some(Deferred::MemWrite { slice, addr, .. }) => {
                        (at(*slice, i64::from(*addr)), WRITTEN)
                    }
                    Some(Deferred::Scatter { .. } | Deferred::LoadRows { .. }) | None => continue,
                },
            };
            if let Some(f) = w.and_then(|w| first.get_mut(w))
                && *f == 0
            {
                *f = access;
            }
        }
        // Kept: read before it is first written whole, or in a slice a
        // gather reads (its addresses are values).
        let mut keep = vec![0u64; (slices * words).div_ceil(64)];
        for (w, &f) in first.iter().enumerate() {
            if f == READ || gathered[w / words] {
                keep[w / 64] |= 1 << (w % 64);
            }
        }
        Some(Replay {
            recording,
            keep,
            profile,
            last_event,
        })
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

    /// The recording run's timeline: every issue, control instructions
    /// included, in the order the engine issued them (what
    /// [`Machine::set_record`](crate::Machine::set_record) records), rebuilt
    /// from the events.
    pub fn timeline(&self) -> Timeline {
        let issues = self
            .recording
            .events
            .iter()
            .filter_map(|e| {
                let index = match e.kind() {
                    EventKind::Issue | EventKind::Control => e.index(),
                    // The repeated instruction, just before the `repeat`.
                    EventKind::Repetition => e.index().wrapping_sub(1),
                    EventKind::Deferred => return None,
                };
                Some(Issue {
                    cycle: e.cycle(),
                    queue: e.queue(),
                    index,
                })
            })
            .collect();
        Timeline {
            issues,
            profile: self.profile.clone(),
        }
    }

    /// Events, deferred work and slots recorded (for reports).
    pub fn size(&self) -> (usize, usize, usize) {
        let r = &self.recording;
        (r.events.len(), r.deferred.len(), r.slots.slots.len())
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
        scratch.saved.clear();
        scratch.saved.resize(total.div_ceil(64), 0);
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
        } = scratch;
        let mut undo = Undo {
            keep: &self.keep,
            log: undo,
            saved,
            words: config.mem.words_per_slice as usize,
        };
        let mut pool = Pool::default();
        let mut next = 0usize;
        let mut deferred = r.deferred.iter();
        for e in &r.events {
            if e.kind() == EventKind::Control {
                continue;
            }
            let queue = QueueId::from_index(e.queue())
                .ok_or_else(|| Abandoned::Log(format!("queue {} in the log", e.queue())))?;
            let mut ctx = Ctx {
                config,
                state: &mut *state,
                operands: Resolved {
                    slab: slab.as_mut_slice(),
                    slots: &r.slots.slots,
                    next,
                    book: e.books(),
                },
                pool: &mut pool,
                deferred: &mut *pushed,
                cycle: e.cycle(),
                queue,
                index: e.index(),
                addr_offset: e.offset(),
            };
            let run = match e.kind() {
                EventKind::Control => Ok(()),
                EventKind::Issue | EventKind::Repetition => {
                    let at = match e.kind() {
                        EventKind::Repetition => e.index().checked_sub(1),
                        EventKind::Issue | EventKind::Deferred | EventKind::Control => {
                            Some(e.index())
                        }
                    };
                    let ins = at
                        .and_then(|i| {
                            queues
                                .get(usize::from(e.queue()))?
                                .as_ref()?
                                .get(i as usize)
                        })
                        .ok_or_else(|| {
                            Abandoned::Log(format!(
                                "queue {queue}, #{} not in the program",
                                e.index()
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
                            let mut last = None;
                            for l in 0..LANES {
                                let i = u16::from_le_bytes([lo[l], hi[l]]);
                                // Lanes often share a word: saved once anyway.
                                if last != Some(i) {
                                    last = Some(i);
                                    // Checked at issue: in range.
                                    undo.save(ctx.state, slice, (base + i64::from(i)) as u32);
                                }
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

/// The kept words a run changed, each saved before its first change.
struct Undo<'a> {
    keep: &'a [u64],
    log: &'a mut Vec<(u16, u32, Vector)>,
    saved: &'a mut [u64],
    words: usize,
}

impl Undo<'_> {
    /// Saves word `addr` of `slice` if it is kept and this run did not
    /// save it already (inlined: most words a run writes are not kept).
    #[inline(always)]
    fn save(&mut self, state: &State, slice: u16, addr: u32) {
        let at = usize::from(slice) * self.words + addr as usize;
        if self
            .keep
            .get(at / 64)
            .is_some_and(|k| k & (1 << (at % 64)) != 0)
            && let Some(g) = self.saved.get_mut(at / 64)
            && *g & (1 << (at % 64)) == 0
        {
            *g |= 1 << (at % 64);
            self.push(state, slice, addr);
        }
    }

    /// Logs the word's bytes.
    #[inline(never)]
    fn push(&mut self, state: &State, slice: u16, addr: u32) {
        self.log
            .push((slice, addr, *state.mem[usize::from(slice)].word(addr)));
    }
}
