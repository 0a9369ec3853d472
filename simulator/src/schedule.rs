//! The static profile: a program's timeline from its instruction lists
//! alone, without values (`q35sim profile`).
//!
//! Every issue cycle of the machine is static (docs/isa.md 2: an
//! instruction issues `issue_cycles` after the previous one of its queue,
//! `sync` waits for the next `notify`; nothing depends on data), so this
//! walks the queues with the engine's own issue rules
//! ([`crate::engine`]: the same event order, `repeat` expansion and
//! `sync`/`notify` release) and does no arithmetic. What the cycle count
//! needs beyond issue cycles is modelled exactly as a run does: MEM writes
//! use their port on `t + write_latency - 1`, an `lw` reads a row group
//! on each of its cycles, and a value nobody reads keeps the program alive
//! until it leaves the chip. The last one needs to know which values are
//! read, so values travel through the engine's own stream model
//! ([`crate::streams::Streams`]) with empty bytes.
//!
//! The walk assumes a program that runs without hazards (a compiled one
//! does: the scheduler applies the simulator's rules). It checks what it
//! meets anyway (a stream collision, a read with no value, a queue running
//! past its end, a deadlock) and returns an error naming queue, instruction
//! and cycle; MEM port, MXM buffer and overflow hazards need a real run.
//! `tests/static_profile.rs` holds the walk to a real run's timeline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use q35_isa::{CycleExpr, Instruction, QUEUE_COUNT, QueueId, Unit};

use crate::config::MachineConfig;
use crate::issue_queue::IssueQueue;
use crate::load::Loaded;
use crate::profile::Profile;
use crate::streams::{Streams, Writer};
use crate::timeline::{Issue, Timeline};

/// Why the static walk stopped: the program breaks a rule a run would
/// report as a hazard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cycle {cycle}: queue {queue}, instruction #{index}: {what} (run it on the simulator for the full hazard report)"
)]
pub struct StaticError {
    /// The cycle.
    pub cycle: u64,
    /// The queue.
    pub queue: QueueId,
    /// Instruction index.
    pub index: u32,
    /// What went wrong.
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Parked,
    Halted,
}

#[derive(Debug, Clone, Copy)]
struct Repeating {
    at: u32,
    start: u64,
    k: u32,
    n: u32,
    d: u32,
}

/// Walks `loaded`'s queues on `config` and returns the timeline a run
/// would record: every issue with its cycle, busy cycles and the cycle
/// count.
pub fn walk(loaded: &Loaded, config: &MachineConfig) -> Result<Timeline, StaticError> {
    let queues = &loaded.queues;
    let mut status: Vec<Status> = queues
        .iter()
        .map(|q| match q {
            Some(_) => Status::Running,
            None => Status::Halted,
        })
        .collect();
    let mut pc = vec![0usize; queues.len()];
    let mut repeating: Vec<Option<Repeating>> = vec![None; queues.len()];
    let mut issue = IssueQueue::new();
    for q in (0..queues.len()).filter(|&q| queues[q].is_some()) {
        issue.push(0, q as u16);
    }
    let mut rows: BinaryHeap<Reverse<RowRead>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut streams = Streams::new(config.width, config.hop, config.max_latency());
    let mut collected = 0u64;
    let mut last_event = 0u64;
    let mut last_notify: Option<u64> = None;
    let mut profile = Profile::new(usize::from(QUEUE_COUNT));
    let mut issues = Vec::new();
    let notify = config.notify_latency;
    let wl = config.mem.write_latency;
    let err = |cycle, q: u16, index, what: String| StaticError {
        cycle,
        queue: QueueId::from_index(q).expect("queue index"),
        index,
        what,
    };

    loop {
        let next_issue = issue.peek().map(|r| r.0);
        let next_row = rows.peek().map(|r| r.0.0);
        let (t, row_first) = match (next_row, next_issue) {
            (None, None) => break,
            (Some(r), None) => (r, true),
            (None, Some(i)) => (i, false),
            (Some(r), Some(i)) => (r.min(i), r <= i),
        };
        if t > collected {
            streams.collect(t);
            collected = t;
        }
        if row_first {
            let Reverse((cycle, _, q, index, src, k, n, step)) = rows.pop().expect("peeked");
            last_event = last_event.max(cycle);
            let queue = QueueId::from_index(q).expect("queue index");
            let pos = config.position(queue);
            for j in 0..k {
                if step * k + j >= n {
                    break;
                }
                let s = q35_isa::Stream {
                    id: src.id + j as u8,
                    dir: src.dir,
                };
                if streams.read(s, pos, cycle).is_none() {
                    return Err(err(
                        cycle,
                        q,
                        index,
                        format!("lw reads {s} before a value arrives"),
                    ));
                }
            }
            continue;
        }
        let (_, q) = issue.pop().expect("peeked");
        let qi = usize::from(q);
        let list = queues[qi].as_deref().unwrap_or_default();
        let queue = QueueId::from_index(q).expect("queue index");
        last_event = last_event.max(t);
        // What issues: a repetition, or the instruction at pc.
        let (ins, index, is_rep) = if let Some(r) = repeating[qi] {
            (list[r.at as usize - 1], r.at - 1, true)
        } else {
            let Some(&ins) = list.get(pc[qi]) else {
                return Err(err(
                    t,
                    q,
                    pc[qi] as u32,
                    "the queue ran past its end".into(),
                ));
            };
            // Two lines ahead of what issues next on this queue.
            crate::issue_queue::prefetch(list.as_ptr().wrapping_add(pc[qi] + 8));
            (ins, pc[qi] as u32, false)
        };
        let info = ins.info();
        let occupancy = match info.occupancy {
            CycleExpr::Const(c) => u64::from(c),
            CycleExpr::Field(_) | CycleExpr::Product(..) | CycleExpr::CeilDiv(..) => {
                ins.occupancy()
            }
        };
        profile.issued(q, &ins, occupancy);
        issues.push(Issue {
            cycle: t,
            queue: q,
            index,
        });
        // Streams: inputs read now, results placed at t + latency.
        let pos = config.position(queue);
        let mut flow = Flow::Next;
        match ins {
            Instruction::Nop { n } => flow = Flow::Wait(u64::from(n)),
            Instruction::Repeat { n, d, .. } => flow = Flow::Repeat { n, d },
            Instruction::Sync {} => flow = Flow::Park,
            Instruction::Notify {} => flow = Flow::Notify,
            Instruction::Halt {} => flow = Flow::Halt,
            Instruction::Lw { src, k, n } => {
                for step in 0..n.div_ceil(k) {
                    seq += 1;
                    rows.push(Reverse((
                        t + u64::from(step),
                        seq,
                        q,
                        index,
                        src,
                        k,
                        n,
                        step,
                    )));
                }
            }
            Instruction::Write { .. } | Instruction::Scatter { .. } => {
                last_event = last_event.max(t + wl - 1);
                read_all(&mut streams, &ins, pos, t).map_err(|what| err(t, q, index, what))?;
            }
            Instruction::Read { .. }
            | Instruction::Gather { .. }
            | vxm_ops!()
            | sxm_ops!()
            | Instruction::Iw {}
            | Instruction::Mm { .. }
            | c2c_ops!() => {
                read_all(&mut streams, &ins, pos, t).map_err(|what| err(t, q, index, what))?;
                let lat = config.latency(ins.latency_class());
                for g in ins.writes().iter() {
                    for s in g.streams() {
                        let data = streams.alloc();
                        if let Err(c) =
                            streams.write(s, pos, t + lat, data, Writer { queue: q, index })
                        {
                            return Err(err(
                                c.cycle,
                                q,
                                index,
                                format!(
                                    "its result on {s} meets another value at position {}",
                                    c.position
                                ),
                            ));
                        }
                    }
                }
            }
        }
        debug_assert!(info.unit == Unit::Control || matches!(flow, Flow::Next));
        // Move the queue on (the engine's `advance`).
        if let Some(mut r) = repeating[qi] {
            debug_assert!(is_rep);
            if r.k < r.n {
                r.k += 1;
                repeating[qi] = Some(r);
                issue.push(r.start + u64::from(r.k - 1) * u64::from(r.d), q);
            } else {
                repeating[qi] = None;
                pc[qi] += 1;
                issue.push(r.start + u64::from(r.n) * u64::from(r.d), q);
            }
            continue;
        }
        match flow {
            Flow::Next => {
                pc[qi] += 1;
                issue.push(t + 1, q);
            }
            Flow::Wait(n) => {
                pc[qi] += 1;
                issue.push(t + n, q);
            }
            Flow::Repeat { n, d } => {
                // Repetition 1 issues now, as the engine issues it at once.
                repeating[qi] = Some(Repeating {
                    at: index,
                    start: t,
                    k: 1,
                    n,
                    d,
                });
                issue.push(t, q);
            }
            Flow::Park => {
                pc[qi] += 1;
                if last_notify == Some(t) {
                    issue.push(t + notify, q);
                } else {
                    status[qi] = Status::Parked;
                }
            }
            Flow::Notify => {
                pc[qi] += 1;
                issue.push(t + 1, q);
                last_notify = Some(t);
                for (i, s) in status.iter_mut().enumerate() {
                    if *s == Status::Parked {
                        *s = Status::Running;
                        issue.push(t + notify, i as u16);
                    }
                }
            }
            Flow::Halt => {
                pc[qi] += 1;
                status[qi] = Status::Halted;
            }
        }
    }
    if let Some(q) = status.iter().position(|s| *s == Status::Parked) {
        return Err(err(
            last_event,
            q as u16,
            pc[q].saturating_sub(1) as u32,
            "deadlock: parked by `sync` when every other queue halted".into(),
        ));
    }
    let last = last_event.max(streams.drain());
    let skew = (config.superlanes - 1) * config.superlane_skew;
    profile.finish(last, last + skew);
    Ok(Timeline { issues, profile })
}

/// An `lw` row group read: (cycle, schedule order, queue, index, first
/// stream, k, n, step).
type RowRead = (u64, u64, u16, u32, q35_isa::Stream, u32, u32, u32);

#[derive(Debug, Clone, Copy)]
enum Flow {
    Next,
    Wait(u64),
    Repeat { n: u32, d: u32 },
    Park,
    Notify,
    Halt,
}

/// Marks every stream value `ins` reads at (`pos`, `t`) as read.
fn read_all(streams: &mut Streams, ins: &Instruction, pos: u32, t: u64) -> Result<(), String> {
    for g in ins.reads().iter() {
        for s in g.streams() {
            if streams.read(s, pos, t).is_none() {
                return Err(format!("reads {s} before a value arrives"));
            }
        }
    }
    Ok(())
}
