//! One chip's ends of its chip-to-chip links (docs/isa.md 3, "C2C"): what
//! `send`, `recv` and `fwd` do to them, and the link hazards.
//!
//! A chip's [`Links`] live in its [`crate::state::State`]. A `send` (or
//! `fwd`) on link `L` issued on cycle `t` holds the link's outbound
//! direction for `c2c_vector_cycles` cycles (a `send` or `fwd` sooner is a
//! **link overrun**) and leaves the vector in the chip's outbox with its
//! arrival cycle `t + c2c.link_latency_cycles`. The system
//! ([`crate::system`]) moves outboxes to the far ends' [`Inbound`] lists
//! between epochs; within a chip, nothing waits: a `recv` (or `fwd`) issued
//! on cycle `t` takes the oldest vector that arrived on or before `t`, or
//! is a **receive before arrival** hazard. A link's receiving end holds
//! `c2c.receive_buffer_vectors` vectors; a vector arriving while it is full
//! (arrivals come before issues within a cycle) is a **receive buffer
//! overrun**, found when the vector that should have made room is taken
//! late ([`Inbound::take`]) or by the system at an epoch boundary
//! ([`Inbound::overrun_before`]).
//!
//! A lone chip (a [`crate::Machine`]) has no connected link: a `send` is a
//! hazard and a `recv` never finds a vector.

use std::collections::VecDeque;

use q35_isa::{C2C_LINKS, Instruction, QueueId, QueueKind};

use crate::exec::{Ctx, Fault, Operands};
use crate::hazard::HazardKind;
use crate::streams::Vector;

/// Where a vector on a link came from: the instruction that put it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The sending chip (set by the system when it delivers the vector).
    pub chip: u32,
    /// The sending queue.
    pub queue: QueueId,
    /// The `send`'s or `fwd`'s index in its queue.
    pub index: u32,
    /// Its issue cycle.
    pub cycle: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chip {} {} #{} on cycle {}",
            self.chip, self.queue, self.index, self.cycle
        )
    }
}

/// One vector a chip took from a link: who sent it, when it arrived and
/// which instruction took it when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// The sender.
    pub from: Origin,
    /// The link it arrived on (at the taking chip).
    pub link: u16,
    /// Its arrival cycle.
    pub arrival: u64,
    /// The queue of the `recv` or `fwd` that took it.
    pub queue: QueueId,
    /// That instruction's index.
    pub index: u32,
    /// Its issue cycle (`taken - arrival` cycles waited at the link's end).
    pub taken: u64,
}

/// A vector sent, waiting in the outbox for the system to deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The link it left on.
    pub link: u16,
    /// When it arrives at the far end.
    pub arrival: u64,
    /// Its bytes (`None` in timing-only runs).
    pub data: Option<Box<Vector>>,
    /// Who sent it.
    pub origin: Origin,
}

/// A vector at a link's receiving end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The cycle it arrived.
    pub arrival: u64,
    /// Its bytes (`None` in timing-only runs).
    pub data: Option<Box<Vector>>,
    /// Who sent it.
    pub origin: Origin,
}

/// The receiving end of one link: every vector delivered to it this run,
/// oldest first, and which have been taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inbound {
    /// Vectors not yet taken, oldest first, and up to
    /// `receive_buffer_vectors` taken ones before them (kept for the
    /// overrun rule).
    entries: VecDeque<(Arrival, Option<u64>)>,
    /// Index (in arrival order over the run) of `entries[0]`.
    base: u64,
    /// Index of the oldest vector not taken.
    next: u64,
}

impl Inbound {
    /// Adds a delivered vector (arrivals on one link come in order).
    pub fn deliver(&mut self, a: Arrival) {
        self.entries.push_back((a, None));
    }

    /// The arrival cycle of the oldest vector not taken, if delivered.
    pub fn next_arrival(&self) -> Option<u64> {
        let i = usize::try_from(self.next - self.base).ok()?;
        self.entries.get(i).map(|(a, _)| a.arrival)
    }

    /// Takes the oldest vector that arrived on or before `cycle`, checking
    /// that the vector `buffer` places behind it did not arrive while it
    /// was still held: `Err((arrival, origin))` of that overrunning vector.
    /// `Ok(None)`: nothing has arrived.
    pub fn take(&mut self, cycle: u64, buffer: u32) -> Result<Option<Arrival>, (u64, Origin)> {
        let i = (self.next - self.base) as usize;
        let Some((a, taken)) = self.entries.get_mut(i) else {
            return Ok(None);
        };
        if a.arrival > cycle {
            return Ok(None);
        }
        *taken = Some(cycle);
        let got = a.clone();
        if let Some((late, _)) = self.entries.get(i + buffer as usize)
            && late.arrival <= cycle
        {
            return Err((late.arrival, late.origin));
        }
        self.next += 1;
        // Keep `buffer` taken entries for the rule; drop older ones.
        while self.next - self.base > u64::from(buffer) {
            self.entries.pop_front();
            self.base += 1;
        }
        Ok(Some(got))
    }

    /// A vector that arrived before `cycle` into a full buffer, with every
    /// take before `cycle` known: `(arrival, origin)` of the first.
    pub fn overrun_before(&self, cycle: u64, buffer: u32) -> Option<(u64, Origin)> {
        let i = (self.next - self.base) as usize;
        let (late, _) = self.entries.get(i + buffer as usize)?;
        (late.arrival < cycle).then_some((late.arrival, late.origin))
    }

    /// The vectors never taken.
    pub fn left(&self) -> impl Iterator<Item = &Arrival> {
        let i = (self.next - self.base) as usize;
        self.entries.iter().skip(i).map(|(a, _)| a)
    }
}

/// The link ends of one chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// Per link: whether it reaches a chip of the system.
    pub connected: Vec<bool>,
    /// Per link: the cycle its outbound direction is free again, and the
    /// cycle of the send that holds it.
    pub out_busy: Vec<(u64, u64)>,
    /// Vectors sent since the system last delivered them, in issue order.
    pub outbox: Vec<Sent>,
    /// Per link: its receiving end.
    pub inbound: Vec<Inbound>,
    /// Vectors sent and taken per link this run: `(sent, received)`.
    pub traffic: Vec<(u64, u64)>,
    /// Cycles between a vector's arrival and its taking, summed per link
    /// (time the schedule left it waiting in the buffer).
    pub waited: Vec<u64>,
    /// Every vector taken this run, in the order taken.
    pub taken: Vec<Transfer>,
}

impl Default for Links {
    fn default() -> Links {
        let n = usize::from(C2C_LINKS);
        Links {
            connected: vec![false; n],
            out_busy: vec![(0, 0); n],
            outbox: Vec::new(),
            inbound: vec![Inbound::default(); n],
            traffic: vec![(0, 0); n],
            waited: vec![0; n],
            taken: Vec::new(),
        }
    }
}

impl Links {
    /// Fresh ends for a new run (which links are connected stays).
    pub fn restart(&mut self) {
        let connected = std::mem::take(&mut self.connected);
        *self = Links {
            connected,
            ..Links::default()
        };
    }
}

/// The link a C2C queue drives.
fn link_of(queue: QueueId) -> u16 {
    match queue.kind() {
        QueueKind::C2c(l) => l,
        // The assembler and loader keep C2C instructions in C2C queues.
        QueueKind::Mem { .. } | QueueKind::Vxm(_) | QueueKind::Mxm(_) | QueueKind::Sxm(_) => 0,
    }
}

/// Puts a vector on the queue's link at `ctx.cycle`.
fn send_on<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    link: u16,
    data: Option<Box<Vector>>,
) -> Result<(), Fault> {
    let t = ctx.cycle;
    let l = usize::from(link);
    let links = &mut ctx.state.links;
    if !links.connected[l] {
        return Err(Fault {
            cycle: t,
            kind: HazardKind::LinkNotConnected { link },
        });
    }
    let (free, since) = links.out_busy[l];
    if t < free {
        return Err(Fault {
            cycle: t,
            kind: HazardKind::LinkOverrun {
                link,
                since,
                until: free,
            },
        });
    }
    links.out_busy[l] = (t + ctx.config.link_vector_cycles, t);
    links.traffic[l].0 += 1;
    links.outbox.push(Sent {
        link,
        arrival: t + ctx.config.link_latency,
        data,
        origin: Origin {
            chip: 0,
            queue: ctx.queue,
            index: ctx.index,
            cycle: t,
        },
    });
    Ok(())
}

/// Takes the oldest vector arrived on `link` by `ctx.cycle`.
fn take<O: Operands>(ctx: &mut Ctx<'_, O>, link: u16) -> Result<Arrival, Fault> {
    let t = ctx.cycle;
    let buffer = ctx.config.receive_buffer;
    let l = usize::from(link);
    let inbound = &mut ctx.state.links.inbound[l];
    match inbound.take(t, buffer) {
        Ok(Some(a)) => {
            ctx.state.links.traffic[l].1 += 1;
            ctx.state.links.waited[l] += t - a.arrival;
            ctx.state.links.taken.push(Transfer {
                from: a.origin,
                link,
                arrival: a.arrival,
                queue: ctx.queue,
                index: ctx.index,
                taken: t,
            });
            Ok(a)
        }
        Ok(None) => Err(Fault {
            cycle: t,
            kind: HazardKind::LinkReceiveBeforeArrival {
                link,
                next: inbound.next_arrival(),
            },
        }),
        Err((arrival, from)) => Err(Fault {
            cycle: arrival,
            kind: HazardKind::LinkBufferOverrun {
                link,
                held: buffer,
                from: from.to_string(),
            },
        }),
    }
}

/// Runs a C2C instruction (`send`, `recv`, `fwd`) issued on `ctx.cycle`.
pub fn execute<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    let link = link_of(ctx.queue);
    let position = ctx.config.position(ctx.queue);
    match *ins {
        Instruction::Send { src } => {
            let v = *ctx.operands.read(src, position, ctx.cycle)?;
            send_on(ctx, link, Some(Box::new(v)))
        }
        Instruction::Recv { dst } => {
            let a = take(ctx, link)?;
            let at = ctx.cycle + ctx.config.receive_latency;
            let data = a.data.map_or([0u8; crate::streams::LANES], |d| *d);
            ctx.operands
                .write(dst, position, at, &data, ctx.queue, ctx.index)
        }
        Instruction::Fwd { link: from } => {
            let a = take(ctx, from as u16)?;
            send_on(ctx, link, a.data)
        }
        control_ops!() | mem_ops!() | vxm_ops!() | sxm_ops!() | mxm_ops!() => {
            crate::exec::wrong_unit(ctx, ins)
        }
    }
}
