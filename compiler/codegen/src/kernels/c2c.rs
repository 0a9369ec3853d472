//! Chip-to-chip transfers of a pipeline split (docs/backend.md 8): a
//! buffer's words sent vector by vector on one link, and received into a
//! buffer on the far chip.
//!
//! A `send` reads one stream register (one byte plane of a word: 320
//! bytes) at the link ports' position and holds its link for
//! `c2c_vector_cycles` (`V`) cycles, so an f32 buffer of `w` words is `4 w`
//! vectors, one every `V` cycles, all in one bundle (their times fixed
//! relative to each other). The receiving chip's bundle mirrors it: one
//! `recv` every `V` cycles, each vector written into its byte plane's
//! slice as it passes. Lockstep (docs/isa.md "C2C") means the receiving
//! schedule must issue each `recv` on or after its vector's arrival and
//! before the link's end overruns: [`recv`] is placed no earlier than the
//! first arrival and checked against every arrival ([`check_arrivals`]).

use q35_isa::{Instruction, QueueId, QueueKind, Stream};

use crate::alloc::Buffer;
use crate::kernels::dir_to;
use crate::machine::Cycle;
use crate::program::ProgramBuilder;
use crate::sched::{Bundle, QSel, SchedError};

const S: Stream = Stream::east(0);

/// The queue of link `link`.
pub fn link_queue(link: u16) -> Result<QueueId, SchedError> {
    QueueId::new(QueueKind::C2c(link)).ok_or_else(|| SchedError::Kernel {
        label: "c2c".into(),
        message: format!(
            "link {link} has no queue (the ISA has {})",
            q35_isa::C2C_LINKS
        ),
    })
}

/// Sends the words of `src` in the ranges `words` (in order) on link
/// `link`, vector by vector (word-major, byte plane within a word), one
/// every `V` cycles, no earlier than `not_before`. Returns each vector's
/// `send` issue cycle, in order.
pub fn send(
    p: &mut ProgramBuilder,
    label: &str,
    src: &Buffer,
    words: &[std::ops::Range<u32>],
    link: u16,
    not_before: Cycle,
) -> Result<Vec<Cycle>, SchedError> {
    let m = p.mach().clone();
    let q = link_queue(link)?;
    let at = m.position(q);
    let v = m.target.c2c_vector_cycles() as Cycle;
    let mut b = Bundle::new(label);
    let mut local = Vec::new();
    for w in words.iter().flat_map(|r| r.clone()) {
        for &slice in &src.slices {
            let t = local.len() as Cycle * v;
            let x = b.read(&m, &[slice], src.addr + w, at, t)?;
            b.unit(
                &m,
                QSel::Fixed(q),
                t,
                Instruction::Send { src: S },
                &[("src", x)],
                None,
            )?;
            local.push(t);
        }
    }
    let placed = p.sched.place(b, not_before)?;
    Ok(local.iter().map(|t| placed.shift + t).collect())
}

/// How [`recv`] places its `recv`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placing {
    /// One bundle, a `recv` every `V` cycles (as the far end sends them),
    /// placed no earlier than the first arrival.
    Rigid,
    /// A bundle per vector, each no earlier than its vector's arrival and
    /// the `recv` before it: a `recv` holds its queue one cycle, so a late
    /// one catches up on the vectors waiting. A tensor-parallel group's
    /// lead takes its matmuls' other slices' rows so, while its own
    /// slice's bundles hold the destination's slices on cycles a rigid
    /// bundle over thousands of cycles could not all avoid.
    EachVector,
}

impl Placing {
    /// The earliest a chip's next `recv` from the same peer may issue
    /// after one on cycle `t`.
    pub fn next_after(self, t: Cycle, v: Cycle) -> Cycle {
        match self {
            Placing::Rigid => t + v,
            Placing::EachVector => t + 1,
        }
    }
}

/// Receives the words of `dst` in the ranges `words` (in order) from link
/// `link`: the vectors [`send`] put on the far end, in the same order,
/// arriving on cycles `arrivals` (one per vector), placed as `placing`
/// says, none before `not_before` (the end of the chip's previous `recv`s
/// on the link). Every `recv` must take its vector before the link's end
/// holds more than `buffer` vectors ([`check_arrivals`]; else
/// [`SchedError::LateReceive`]). Returns each `recv`'s issue cycle.
#[expect(
    clippy::too_many_arguments,
    reason = "the transfer, its arrivals and the link's limits, each named at the one call"
)]
pub fn recv(
    p: &mut ProgramBuilder,
    label: &str,
    dst: &Buffer,
    words: &[std::ops::Range<u32>],
    link: u16,
    arrivals: &[Cycle],
    buffer: u32,
    not_before: Cycle,
    placing: Placing,
) -> Result<Vec<Cycle>, SchedError> {
    let m = p.mach().clone();
    let q = link_queue(link)?;
    let v = m.target.c2c_vector_cycles() as Cycle;
    let n = words.iter().map(|r| r.len()).sum::<usize>() * dst.slices.len();
    if arrivals.len() != n {
        return Err(SchedError::Kernel {
            label: label.to_string(),
            message: format!(
                "{n} vectors to receive into `{}`, {} sent",
                dst.name,
                arrivals.len()
            ),
        });
    }
    // One `recv` of the vector for word `w`'s byte plane in `slice`, at
    // local cycle `t` of bundle `b`.
    let unit = |b: &mut Bundle, t: Cycle, slice, w: u32| -> Result<(), SchedError> {
        let x = b
            .unit(
                &m,
                QSel::Fixed(q),
                t,
                Instruction::Recv { dst: S },
                &[],
                Some(("dst", dir_to(dst))),
            )?
            .ok_or_else(|| SchedError::Kernel {
                label: label.to_string(),
                message: "recv has no result".into(),
            })?;
        b.write(&m, x, &[slice], dst.addr + w)
    };
    let vectors = words
        .iter()
        .flat_map(|r| r.clone())
        .flat_map(|w| dst.slices.iter().map(move |&slice| (slice, w)));
    let issued: Vec<Cycle> = match placing {
        Placing::Rigid => {
            let mut b = Bundle::new(label);
            let mut local = Vec::with_capacity(n);
            for (slice, w) in vectors {
                let t = local.len() as Cycle * v;
                unit(&mut b, t, slice, w)?;
                local.push(t);
            }
            let first = arrivals.first().copied().unwrap_or(0).max(not_before);
            let placed = p.sched.place(b, first)?;
            local.iter().map(|t| placed.shift + t).collect()
        }
        Placing::EachVector => {
            let mut issued = Vec::with_capacity(n);
            let mut after = not_before;
            for (slice, w) in vectors {
                let mut b = Bundle::new(label);
                unit(&mut b, 0, slice, w)?;
                let placed = p.sched.place(b, arrivals[issued.len()].max(after))?;
                after = placed.shift + 1;
                issued.push(placed.shift);
            }
            issued
        }
    };
    check_arrivals(arrivals, &issued, buffer).map_err(|message| SchedError::LateReceive {
        label: label.to_string(),
        message,
    })?;
    Ok(issued)
}

/// Whether `recv`s issued on cycles `taken` (in order) take vectors
/// arriving on `arrivals` (in order) without a receive before arrival or
/// more than `buffer` vectors waiting at the link's end (an arrival counts
/// before an issue of the same cycle, docs/isa.md "C2C").
pub fn check_arrivals(arrivals: &[Cycle], taken: &[Cycle], buffer: u32) -> Result<(), String> {
    for (i, (&a, &t)) in arrivals.iter().zip(taken).enumerate() {
        if t < a {
            return Err(format!(
                "vector {i} is received on cycle {t}, before it arrives on cycle {a}"
            ));
        }
        // Vectors arrived by `a` and not yet taken (taken strictly before
        // `a`, or on `a` itself only after the arrival): at most `buffer`.
        let arrived = arrivals.iter().filter(|&&x| x <= a).count();
        let gone = taken.iter().filter(|&&x| x < a).count();
        if arrived - gone.min(arrived) > buffer as usize {
            return Err(format!(
                "vector {i} arrives on cycle {a} while {} vectors wait at the link's end (it holds {buffer}): the receiving schedule is too late",
                arrived - gone.min(arrived) - 1
            ));
        }
    }
    Ok(())
}
