//! Hazards (docs/isa.md): a program that breaks a rule of the machine
//! stops the run with one of these, never with a silent wrong answer.
//!
//! Each hazard names the cycle, the queue, the instruction (index and
//! assembly text, with the `repeat` that issued it when it is a
//! repetition) and, when the binary's debug map has one, the source op.
//! When several hazards happen, the run reports the first by (cycle,
//! queue, instruction index): the engine keeps running until no event
//! earlier than the first hazard found is left (see [`crate::engine`]).

use std::fmt;

use q35_isa::{QueueId, Stream};

use crate::mxm;
use crate::state::PortConflict;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HazardKind {
    /// An instruction read a stream where no value was present.
    StreamReadBeforeArrival {
        /// The stream.
        stream: Stream,
        /// The reader's position.
        position: u32,
        /// When the next value passes that position, if one is in flight.
        next: Option<u64>,
    },
    /// A value was written where another value was present.
    StreamWriteCollision {
        /// The stream.
        stream: Stream,
        /// Where the two values meet.
        position: u32,
        /// Queue of the other value's writer.
        other_queue: QueueId,
        /// Instruction index of the other value's writer.
        other_index: u32,
    },
    /// More accesses to a MEM slice in one cycle than it has ports, or two
    /// accesses to one bank.
    MemPortConflict {
        /// What was exceeded.
        conflict: PortConflict,
    },
    /// A MEM address outside the slice.
    AddressOutOfRange {
        /// The address (after `repeat` strides and gather/scatter offsets).
        address: i64,
        /// Words in the slice.
        words: u32,
    },
    /// An MXM sum outside the accumulator's range.
    AccumulatorOverflow {
        /// The plane model's account (column, PE row or accumulator).
        detail: mxm::HazardKind,
    },
    /// An MXM weight buffer used while it is being installed (`iw` while a
    /// vector is in the array or before the `lw` finished, `lw` over a
    /// running `lw`, `mm` during a swap, ...).
    WeightBufferInUse {
        /// The plane model's account.
        detail: mxm::HazardKind,
    },
    /// A unit still busy from an earlier instruction (structural).
    UnitBusy {
        /// The cycle it is free again.
        until: u64,
    },
    /// A queue's instruction list ended without `halt`.
    QueueRanPastEnd,
    /// A queue parked at `sync` when every other queue has halted.
    Deadlock {
        /// The cycle it parked.
        parked_since: u64,
    },
    /// A `send` or `fwd` on a link that reaches no chip of the system.
    LinkNotConnected {
        /// The link.
        link: u16,
    },
    /// A `send` or `fwd` on a link still carrying the previous vector
    /// (`Target::c2c_vector_cycles` after it).
    LinkOverrun {
        /// The link.
        link: u16,
        /// The issue cycle of the vector it carries.
        since: u64,
        /// The cycle it is free again.
        until: u64,
    },
    /// A `recv` or `fwd` with no vector arrived on its link: the schedule
    /// did not leave the link's latency.
    LinkReceiveBeforeArrival {
        /// The link.
        link: u16,
        /// When the next vector arrives, if it was sent by the end of the
        /// hazard's epoch (`crate::system`).
        next: Option<u64>,
    },
    /// A vector arrived at a link's receiving end while it held
    /// `c2c.receive_buffer_vectors` vectors not taken.
    LinkBufferOverrun {
        /// The link.
        link: u16,
        /// Vectors the end holds.
        held: u32,
        /// The sender of the vector that did not fit.
        from: String,
    },
    /// A vector arrived on a link and no `recv` or `fwd` took it by the end
    /// of the run.
    LinkNeverReceived {
        /// The link.
        link: u16,
        /// Its sender.
        from: String,
    },
    /// A simulator bug (a model refused a command the engine should never
    /// give it); reported like a hazard instead of a panic.
    Internal {
        /// What the model said.
        message: String,
    },
}

impl HazardKind {
    /// The hazard's name in docs/isa.md.
    pub fn name(&self) -> &'static str {
        match self {
            HazardKind::StreamReadBeforeArrival { .. } => "stream read before arrival",
            HazardKind::StreamWriteCollision { .. } => "stream write collision",
            HazardKind::MemPortConflict { .. } => "MEM port conflict",
            HazardKind::AddressOutOfRange { .. } => "address out of range",
            HazardKind::AccumulatorOverflow { .. } => "accumulator overflow",
            HazardKind::WeightBufferInUse { .. } => "weight buffer used while installing",
            HazardKind::UnitBusy { .. } => "unit busy",
            HazardKind::QueueRanPastEnd => "queue ran past its end",
            HazardKind::Deadlock { .. } => "deadlock",
            HazardKind::LinkNotConnected { .. } => "link not connected",
            HazardKind::LinkOverrun { .. } => "link overrun",
            HazardKind::LinkReceiveBeforeArrival { .. } => "receive before arrival",
            HazardKind::LinkBufferOverrun { .. } => "receive buffer overrun",
            HazardKind::LinkNeverReceived { .. } => "vector never received",
            HazardKind::Internal { .. } => "simulator internal error",
        }
    }
}

impl fmt::Display for HazardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name())?;
        match self {
            HazardKind::StreamReadBeforeArrival {
                stream,
                position,
                next,
            } => {
                write!(f, "no value on {stream} at position {position}")?;
                match next {
                    Some(c) => write!(f, " (the next one passes on cycle {c})"),
                    None => f.write_str(" (none is in flight)"),
                }
            }
            HazardKind::StreamWriteCollision {
                stream,
                position,
                other_queue,
                other_index,
            } => write!(
                f,
                "{stream} at position {position} already holds the value of {other_queue} #{other_index}"
            ),
            HazardKind::MemPortConflict { conflict } => match conflict {
                PortConflict::Reads(n) => write!(f, "{n} reads in one cycle"),
                PortConflict::Writes(n) => write!(f, "{n} writes in one cycle"),
                PortConflict::Bank(b) => write!(f, "bank {b} accessed twice in one cycle"),
            },
            HazardKind::AddressOutOfRange { address, words } => {
                write!(f, "word {address} is outside the slice (0..{words})")
            }
            HazardKind::AccumulatorOverflow { detail } => match detail {
                mxm::HazardKind::AccumulatorOverflow {
                    column,
                    site: mxm::OverflowSite::PartialSum { row },
                } => write!(f, "partial sum of PE({row}, {column})"),
                mxm::HazardKind::AccumulatorOverflow {
                    column,
                    site: mxm::OverflowSite::Accumulator,
                } => write!(f, "accumulator of column {column}"),
                other @ (mxm::HazardKind::LoadIntoBufferInUse
                | mxm::HazardKind::SwapBeforeLoadDone
                | mxm::HazardKind::SwapWithoutLoad
                | mxm::HazardKind::LoadWhileLoading
                | mxm::HazardKind::LoadDuringSwap
                | mxm::HazardKind::MultiplyDuringSwap
                | mxm::HazardKind::MultiplyPortBusy) => write!(f, "{other}"),
            },
            HazardKind::WeightBufferInUse { detail } => write!(f, "{detail}"),
            HazardKind::UnitBusy { until } => write!(f, "the unit is busy until cycle {until}"),
            HazardKind::QueueRanPastEnd => f.write_str("no `halt` at the end of the queue"),
            HazardKind::Deadlock { parked_since } => write!(
                f,
                "parked at `sync` since cycle {parked_since}, every other queue has halted"
            ),
            HazardKind::LinkNotConnected { link } => {
                write!(f, "link {link} reaches no chip of the system")
            }
            HazardKind::LinkOverrun { link, since, until } => write!(
                f,
                "link {link} still carries the vector sent on cycle {since} until cycle {until}"
            ),
            HazardKind::LinkReceiveBeforeArrival { link, next } => {
                write!(f, "no vector has arrived on link {link}")?;
                match next {
                    Some(c) => write!(f, " (the next one arrives on cycle {c})"),
                    None => f.write_str(" (none is on its way)"),
                }
            }
            HazardKind::LinkBufferOverrun { link, held, from } => write!(
                f,
                "the vector sent by {from} arrived on link {link} while it held {held} vectors not yet received"
            ),
            HazardKind::LinkNeverReceived { link, from } => write!(
                f,
                "the vector sent by {from} arrived on link {link} and was never received"
            ),
            HazardKind::Internal { message } => f.write_str(message),
        }
    }
}

/// One hazard: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hazard {
    /// The cycle it happens (superlane 0's timeline).
    pub cycle: u64,
    /// The queue of the offending instruction.
    pub queue: QueueId,
    /// Its index in the queue (for a repetition, the `repeat`'s index).
    pub index: u32,
    /// The instruction in assembly syntax (for a repetition, the repeated
    /// instruction with its addresses advanced, and the `repeat`).
    pub text: String,
    /// For a repetition: which one, of what, at which address offset.
    pub detail: Option<String>,
    /// What happened.
    pub kind: HazardKind,
    /// The source op from the binary's debug map, if it has one.
    pub source: Option<String>,
}

impl Hazard {
    /// The order in which simultaneous hazards are reported.
    pub fn key(&self) -> (u64, u16, u32) {
        (self.cycle, self.queue.index(), self.index)
    }
}

impl fmt::Display for Hazard {
    /// `cycle C: queue Q, instruction #I `text`: <kind> (source: op)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cycle {}: queue {}, instruction #{} `{}`",
            self.cycle, self.queue, self.index, self.text
        )?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        write!(f, ": {}", self.kind)?;
        if let Some(s) = &self.source {
            write!(f, " (source: {s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Hazard {}
