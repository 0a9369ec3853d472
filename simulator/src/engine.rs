//! The event-driven engine: when each instruction issues, and in what order
//! things happen within a cycle (docs/isa.md 2).
//!
//! Every queue has a next-issue cycle. The engine repeatedly takes the
//! earliest pending event and runs it: first the deferred work due on that
//! cycle (MEM writes becoming visible, the rows an `lw` reads that cycle),
//! in the order it was scheduled; then the queues issuing on that cycle, in
//! queue order. An instruction reads its inputs on its issue cycle
//! ([`crate::exec`]) and its results are placed in the stream model at
//! issue + latency; `repeat` is expanded lazily (one event per
//! repetition), `sync` parks a queue until a `notify` issued on the same or
//! a later cycle releases it `icu.notify_latency_cycles` after the notify.
//!
//! Asked to ([`Engine::record_replay`]), it also writes down every data
//! event with the stream slots it resolved, for [`crate::replay`].
//!
//! # Why skipping idle cycles is exact
//!
//! The machine has no state that changes on its own between events: stream
//! values move on fixed lines that [`crate::streams`] answers for any cycle
//! without stepping, MEM changes only by writes (deferred events), the MXM
//! plane model derives its cycles from formulas at each command, and a
//! queue does nothing until its next-issue cycle. Every rule the hardware
//! applies on a cycle where nothing issues and nothing is due is either
//! vacuous (no reads, no port use) or already decided when the value was
//! written (a collision is checked against a value's whole line when it is
//! placed, and reported with the cycle the two values meet). So running the
//! events in (cycle, deferred-before-issue, schedule order / queue order)
//! produces the same reads, writes, hazards and cycle counts as stepping
//! every cycle would; the only thing a stepping simulator does on the other
//! cycles is observe nothing.
//!
//! # Hazards
//!
//! A hazard found while running an event may lie in the future (a collision
//! on the cycle a result lands, an MXM overflow on the cycle a PE adds). The
//! engine therefore keeps running events up to and including that cycle,
//! keeps the first hazard by (cycle, queue, instruction), and then stops:
//! what it reports is the hazard a cycle-by-cycle machine would hit first.
//!
//! # Cycle count
//!
//! A program ends when every queue has halted and every value in flight has
//! been read or has left the chip. Its cycle count is the last cycle on
//! which anything happened on superlane 0 (an issue, a MEM write, an `lw`
//! row, a never-read value still on the chip) plus the superlane skew,
//! `(superlanes - 1) * superlane_skew_cycles` (docs/isa.md 1).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use q35_isa::{CycleExpr, Instruction, QUEUE_COUNT, QueueId, Unit};

use crate::config::MachineConfig;
use crate::exec::{self, Ctx, Deferred, Flow, Live, Pool};
use crate::hazard::{Hazard, HazardKind};
use crate::issue_queue::IssueQueue;
use crate::profile::Profile;
use crate::replay::Recording;
use crate::state::State;
use crate::streams::Streams;
use crate::timeline::Issue;

/// Where a queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Issuing; its next instruction issues on `next`.
    Running,
    /// Parked by the `sync` at `index` since `since`.
    Parked { since: u64, index: u32 },
    /// Halted (or never had instructions).
    Halted,
}

/// A `repeat` being expanded.
#[derive(Debug, Clone, Copy)]
struct Repeating {
    /// Index of the `repeat`.
    at: u32,
    /// Issue cycle of the `repeat`.
    start: u64,
    /// The next repetition (1-based).
    k: u32,
    n: u32,
    d: u32,
    stride: i32,
}

#[derive(Debug)]
struct QueueState {
    instrs: Vec<Instruction>,
    pc: usize,
    status: Status,
    repeating: Option<Repeating>,
    /// The unit is busy until this cycle (exclusive).
    busy_until: u64,
}

/// Deferred work, ordered by (cycle, schedule order).
#[derive(Debug)]
struct Pending {
    cycle: u64,
    seq: u64,
    queue: QueueId,
    index: u32,
    work: Deferred,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.cycle, self.seq) == (other.cycle, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.cycle, other.seq).cmp(&(self.cycle, self.seq))
    }
}

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The program broke a rule of the machine.
    Hazard(Box<Hazard>),
    /// The next event lies past the `--max-cycles` limit.
    MaxCycles {
        /// The limit.
        limit: u64,
        /// The cycle of the next event.
        next: u64,
    },
}

/// The engine: the machine's state plus the event queues.
#[derive(Debug)]
pub struct Engine<'c> {
    config: &'c MachineConfig,
    state: State,
    streams: Streams,
    pool: Pool,
    queues: Vec<QueueState>,
    /// (next issue cycle, queue) of every running queue.
    issue: IssueQueue,
    deferred: BinaryHeap<Pending>,
    seq: u64,
    /// Scratch for the deferred work one instruction schedules.
    scratch: Vec<(u64, Deferred)>,
    /// Cycle of the latest `notify` issued so far.
    last_notify: Option<u64>,
    first_hazard: Option<Hazard>,
    /// The last cycle anything happened.
    last_event: u64,
    /// The cycle of the last event run.
    last_run: u64,
    collected: u64,
    profile: Profile,
    /// Every issue, when recording ([`Engine::record`]).
    recorded: Option<Vec<Issue>>,
    /// The data events with their resolved operands, when recording a
    /// replay ([`Engine::record_replay`]).
    replay: Option<Recording>,
}

impl<'c> Engine<'c> {
    /// An engine for `state` with the instruction lists `queues` (indexed
    /// by dense queue number; `None` = the queue is unused and counts as
    /// halted).
    pub fn new(
        config: &'c MachineConfig,
        state: State,
        queues: Vec<Option<Vec<Instruction>>>,
    ) -> Self {
        let streams = Streams::new(config.width, config.hop, config.max_latency());
        let mut issue = IssueQueue::new();
        let queues: Vec<QueueState> = queues
            .into_iter()
            .enumerate()
            .map(|(i, list)| {
                let status = match &list {
                    Some(_) => {
                        issue.push(0, i as u16);
                        Status::Running
                    }
                    None => Status::Halted,
                };
                QueueState {
                    instrs: list.unwrap_or_default(),
                    pc: 0,
                    status,
                    repeating: None,
                    busy_until: 0,
                }
            })
            .collect();
        Engine {
            config,
            state,
            streams,
            pool: Pool::default(),
            queues,
            issue,
            deferred: BinaryHeap::new(),
            seq: 0,
            scratch: Vec::new(),
            last_notify: None,
            first_hazard: None,
            last_event: 0,
            last_run: 0,
            collected: 0,
            profile: Profile::new(usize::from(QUEUE_COUNT)),
            recorded: None,
            replay: None,
        }
    }

    /// Records every issue (cycle, queue, instruction index) from now on.
    pub fn record(&mut self) {
        self.recorded.get_or_insert_with(Vec::new);
    }

    /// The issues recorded so far (empty unless [`Engine::record`] was
    /// called), leaving the engine recording afresh.
    pub fn take_recorded(&mut self) -> Vec<Issue> {
        self.recorded
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records, from now on, every data event in the order it runs with the
    /// stream slots it reads and writes ([`crate::replay`]).
    pub fn record_replay(&mut self) {
        self.replay.get_or_insert_with(Recording::default);
    }

    /// The replay recording (if [`Engine::record_replay`] was called), with
    /// the slab size the run reached.
    pub fn take_replay(&mut self) -> Option<Recording> {
        let mut r = self.replay.take()?;
        r.slab_len = self.streams.slab_len();
        Some(r)
    }

    /// The latest cycle an event ran on (the issue or deferred work the
    /// engine processed last).
    pub fn last_event_cycle(&self) -> u64 {
        self.last_run
    }

    /// The machine's state (MEM contents after a run).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The machine's state, mutable: a system ([`crate::system`]) delivers
    /// link traffic into it between epochs.
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// The machine's state, consuming the engine.
    pub fn into_state(self) -> State {
        self.state
    }

    /// The state and the instruction lists the engine was made with (an
    /// unused queue's as an empty list), consuming the engine.
    pub fn into_parts(self) -> (State, Vec<Vec<Instruction>>) {
        let lists = self.queues.into_iter().map(|q| q.instrs).collect();
        (self.state, lists)
    }

    /// Runs to the end, to the first hazard, or to `max_cycles`.
    pub fn run(&mut self, max_cycles: Option<u64>) -> Result<&Profile, Stop> {
        loop {
            let next_issue = self.issue.peek().map(|r| r.0);
            let next_def = self.deferred.peek().map(|p| p.cycle);
            let (t, deferred_first) = match (next_def, next_issue) {
                (None, None) => break,
                (Some(d), None) => (d, true),
                (None, Some(i)) => (i, false),
                (Some(d), Some(i)) => (d.min(i), d <= i),
            };
            if let Some(h) = &self.first_hazard
                && t > h.cycle
            {
                break;
            }
            if let Some(limit) = max_cycles
                && t > limit
            {
                return Err(Stop::MaxCycles { limit, next: t });
            }
            self.last_run = t;
            if t > self.collected {
                self.streams.collect(t);
                self.collected = t;
            }
            if deferred_first {
                let p = self.deferred.pop().expect("peeked");
                self.run_deferred(p);
            } else {
                let (_, q) = self.issue.pop().expect("peeked");
                self.issue_one(t, q);
            }
        }
        if let Some(h) = self.first_hazard.take() {
            return Err(Stop::Hazard(Box::new(h)));
        }
        if let Some((q, qs)) = self
            .queues
            .iter()
            .enumerate()
            .find(|(_, qs)| matches!(qs.status, Status::Parked { .. }))
            && let Status::Parked { since, index } = qs.status
        {
            let queue = QueueId::from_index(q as u16).expect("queue index");
            let text = qs.instrs[index as usize].to_string();
            return Err(Stop::Hazard(Box::new(Hazard {
                cycle: self.last_event.max(since),
                queue,
                index,
                text,
                detail: None,
                kind: HazardKind::Deadlock {
                    parked_since: since,
                },
                source: None,
            })));
        }
        let last = self.last_event.max(self.streams.drain());
        let skew = (self.config.superlanes - 1) * self.config.superlane_skew;
        self.profile.finish(last, last + skew);
        Ok(&self.profile)
    }

    fn note(&mut self, cycle: u64) {
        self.last_event = self.last_event.max(cycle);
    }

    fn hazard(&mut self, h: Hazard) {
        if self.first_hazard.as_ref().is_none_or(|f| h.key() < f.key()) {
            self.first_hazard = Some(h);
        }
    }

    fn run_deferred(&mut self, p: Pending) {
        if let Some(r) = &mut self.replay {
            r.deferred(p.cycle, p.index, p.queue.index(), p.work);
        }
        match p.work {
            Deferred::MemWrite { .. } | Deferred::Scatter { .. } => {
                // The write port was used on the cycle before it is visible.
                self.note(p.cycle.saturating_sub(1));
                exec::commit(&mut self.state, &mut self.pool, p.work);
            }
            Deferred::LoadRows { .. } => {
                self.note(p.cycle);
                let mut ctx = Ctx {
                    config: self.config,
                    state: &mut self.state,
                    operands: Live {
                        streams: &mut self.streams,
                        log: self.replay.as_mut().map(|r| &mut r.slots),
                    },
                    pool: &mut self.pool,
                    deferred: &mut self.scratch,
                    cycle: p.cycle,
                    queue: p.queue,
                    index: p.index,
                    addr_offset: 0,
                };
                if let Err(f) = exec::load_rows(&mut ctx, p.work) {
                    let text = self.queues[usize::from(p.queue.index())].instrs[p.index as usize]
                        .to_string();
                    self.hazard(Hazard {
                        cycle: f.cycle,
                        queue: p.queue,
                        index: p.index,
                        text,
                        detail: None,
                        kind: f.kind,
                        source: None,
                    });
                }
            }
        }
    }

    /// Issues queue `q`'s next instruction (or repetition) on cycle `t`.
    fn issue_one(&mut self, t: u64, q: u16) {
        let queue = QueueId::from_index(q).expect("queue index");
        let qi = usize::from(q);
        self.note(t);
        // What issues: a repetition, or the instruction at pc.
        let (ins, index, offset, text_of) = if let Some(r) = self.queues[qi].repeating {
            let base = self.queues[qi].instrs[r.at as usize - 1];
            let offset = i64::from(r.k) * i64::from(r.stride);
            (base, r.at, offset, Some(r))
        } else {
            let pc = self.queues[qi].pc;
            let Some(&ins) = self.queues[qi].instrs.get(pc) else {
                self.queues[qi].status = Status::Halted;
                self.hazard(Hazard {
                    cycle: t,
                    queue,
                    index: pc as u32,
                    text: "(end of queue)".into(),
                    detail: None,
                    kind: HazardKind::QueueRanPastEnd,
                    source: None,
                });
                return;
            };
            (ins, pc as u32, 0, None)
        };
        let info = ins.info();
        let unit = info.unit;
        // Structural: the unit still busy from an earlier instruction.
        if unit != Unit::Control && t < self.queues[qi].busy_until {
            let until = self.queues[qi].busy_until;
            self.fail(
                t,
                queue,
                index,
                &ins,
                offset,
                text_of,
                HazardKind::UnitBusy { until },
            );
            return;
        }
        let occupancy = match info.occupancy {
            CycleExpr::Const(c) => u64::from(c),
            CycleExpr::Field(_) | CycleExpr::Product(..) | CycleExpr::CeilDiv(..) => {
                ins.occupancy()
            }
        };
        // An `lw` occupies the plane's install path, which the plane model
        // checks itself; `mm` may run meanwhile (double buffering).
        if !matches!(ins, Instruction::Lw { .. }) {
            self.queues[qi].busy_until = t + occupancy;
        }
        self.profile.issued(q, &ins, occupancy);
        if let Some(r) = &mut self.recorded {
            // A repetition is the repeated instruction, just before the `repeat`.
            let index = if text_of.is_some() { index - 1 } else { index };
            r.push(Issue {
                cycle: t,
                queue: q,
                index,
            });
        }
        self.scratch.clear();
        if let Some(r) = &mut self.replay {
            if unit == Unit::Control {
                let index = if text_of.is_some() { index - 1 } else { index };
                r.control(t, index, q);
            } else {
                r.issue(t, offset, index, q, text_of.is_some());
            }
        }
        let mut ctx = Ctx {
            config: self.config,
            state: &mut self.state,
            operands: Live {
                streams: &mut self.streams,
                log: self.replay.as_mut().map(|r| &mut r.slots),
            },
            pool: &mut self.pool,
            deferred: &mut self.scratch,
            cycle: t,
            queue,
            index,
            addr_offset: offset,
        };
        let flow = exec::execute(&mut ctx, &ins);
        for i in 0..self.scratch.len() {
            let (cycle, work) = self.scratch[i];
            self.seq += 1;
            self.deferred.push(Pending {
                cycle,
                seq: self.seq,
                queue,
                index,
                work,
            });
        }
        let flow = match flow {
            Ok(flow) => flow,
            Err(f) => {
                self.fail(f.cycle, queue, index, &ins, offset, text_of, f.kind);
                // Keep the queue going: an earlier hazard elsewhere may
                // still be found before this one's cycle.
                Flow::Next
            }
        };
        self.advance(t, q, flow);
    }

    /// Records a hazard of the instruction issued from queue `queue`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the hazard's fields, each named at the call"
    )]
    fn fail(
        &mut self,
        cycle: u64,
        queue: QueueId,
        index: u32,
        ins: &Instruction,
        offset: i64,
        repeating: Option<Repeating>,
        kind: HazardKind,
    ) {
        let (text, detail) = match repeating {
            None => (ins.to_string(), None),
            Some(r) => {
                let rep = self.queues[usize::from(queue.index())].instrs[r.at as usize];
                let moved = ins
                    .offset_addresses(offset)
                    .map_or_else(|_| format!("{ins}` {offset:+} words`"), |m| m.to_string());
                (
                    rep.to_string(),
                    Some(format!("repetition {} of {}: `{moved}`", r.k, r.n)),
                )
            }
        };
        self.hazard(Hazard {
            cycle,
            queue,
            index,
            text,
            detail,
            kind,
            source: None,
        });
    }

    /// Moves queue `q` on after what issued on `t`.
    fn advance(&mut self, t: u64, q: u16, flow: Flow) {
        let qi = usize::from(q);
        let notify = self.config.notify_latency;
        if let Some(mut r) = self.queues[qi].repeating {
            // A repetition issued; `flow` is the repeated instruction's.
            if r.k < r.n {
                r.k += 1;
                self.queues[qi].repeating = Some(r);
                self.issue
                    .push(r.start + u64::from(r.k - 1) * u64::from(r.d), q);
            } else {
                self.queues[qi].repeating = None;
                self.queues[qi].pc += 1;
                self.issue
                    .push(r.start + u64::from(r.n) * u64::from(r.d), q);
            }
            return;
        }
        let qs = &mut self.queues[qi];
        let index = qs.pc as u32;
        match flow {
            Flow::Next => {
                qs.pc += 1;
                self.issue.push(t + 1, q);
            }
            Flow::Wait(n) => {
                qs.pc += 1;
                self.issue.push(t + n, q);
            }
            Flow::Repeat { n, d, stride } => {
                // Repetition k issues on t + (k-1)*d: the first one now.
                qs.repeating = Some(Repeating {
                    at: index,
                    start: t,
                    k: 1,
                    n,
                    d,
                    stride,
                });
                self.issue_one(t, q);
            }
            Flow::Park => {
                qs.pc += 1;
                if self.last_notify == Some(t) {
                    // A notify on this cycle (from an earlier queue) releases it.
                    self.issue.push(t + notify, q);
                } else {
                    qs.status = Status::Parked { since: t, index };
                }
            }
            Flow::Notify => {
                qs.pc += 1;
                self.issue.push(t + 1, q);
                self.last_notify = Some(t);
                for (i, other) in self.queues.iter_mut().enumerate() {
                    if let Status::Parked { .. } = other.status {
                        other.status = Status::Running;
                        self.issue.push(t + notify, i as u16);
                    }
                }
            }
            Flow::Halt => {
                qs.pc += 1;
                qs.status = Status::Halted;
            }
        }
    }
}
