//! Reductions across the 320 lanes of f32 vectors (docs/isa.md 4): the
//! contract's `lane_sum` order exactly, and an exact maximum.
//!
//! # How a reduction runs
//!
//! One bundle does the whole reduction, with no MEM scratch:
//!
//! 1. **Words.** `acc = fconst init`, then `acc = acc (+|max) term_k` for
//!    each word `k` in ascending order (one VXM instruction every
//!    `alu_latency` cycles: each result is read by the next instruction on
//!    the cycle it leaves the VXM). `init` is +0.0 for the sum (the
//!    contract's `fconst 0.0`).
//! 2. **Tree steps** `w = 320, 160, 80, 40, 20, 10, 5, 3` (`h = ceil(w/2)`,
//!    while `w > 2`). The partial vector `p` is produced twice by the VXM
//!    (two ALUs, the same inputs on the same cycle): one copy flows west to
//!    the west SXM, which moves lane `j + h` onto lane `j`, the other flows
//!    east to the east SXM, which returns it unchanged (an identity of the
//!    same latency). Both SXMs sit 45 positions from the VXM, so both
//!    results are back at the VXM on the same cycle, where
//!    `p_j = p_j (+|max) p_{j+h}` combines them (values cannot wait on a
//!    stream, so the unshifted copy takes the same round trip instead of a
//!    MEM stash).
//! 3. **Last step** (`w = 2`): the west SXM broadcasts lane 0 and the east
//!    SXM lane 1 of `p`; one VXM op computes `p_0 (+|max) p_1` on every
//!    lane, which is the contract's last step and the broadcast at once.
//!
//! **Sum** uses `shift p -> n = h, w` (zeros shifted into lanes
//! `j >= w - h`, exactly the contract: adding +0.0 never changes a lane,
//! which is never -0.0 because every lane starts from +0.0) and `shift n = 0,
//! w = 320` as the identity: exactly `semantics::lane_sum`.
//!
//! **Max** cannot let zeros in (every value may be negative, as softmax's
//! scores are), so it uses `permute` with the map `l -> l + h if l < w - h,
//! else l` (a lane with no partner is combined with itself: `max(a, a) =
//! a`), and the identity map on the other side. The maximum is exact in any
//! order (`fmax` returns one of its operands), so the result is
//! `max(init, every lane of every word)`, init = -inf: note that this
//! includes the padding lanes of a partial last word (zeros unless the
//! caller fills them, e.g. with -inf).
//!
//! On lpu-v1 a reduction of `k` words takes `4k + 8 * 115 + 114 + 4`
//! cycles from its `fconst` to its result.

use q35_isa::TableId;
use q35_isa::{Dir, ElemWidth, F32Imm, Hemisphere, Instruction, QueueId, QueueKind, Stream};

use crate::alloc::Buffer;
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::{Cycle, Mach};
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, QSel, SchedError, Val};

const S: Stream = Stream::east(0);

/// Which reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The contract's `lane_sum` (docs/isa.md 4), bit for bit.
    Sum,
    /// The maximum over every lane (exact; see the module doc).
    Max,
}

impl ReduceOp {
    /// The VXM instruction combining `a` and `b`.
    fn combine(self) -> Instruction {
        match self {
            ReduceOp::Sum => Instruction::Fadd { a: S, b: S, dst: S },
            ReduceOp::Max => Instruction::Fmax { a: S, b: S, dst: S },
        }
    }
}

/// The SXM queue of hemisphere `h`.
pub(crate) fn sxm_queue(h: Hemisphere) -> QueueId {
    QueueId::new(QueueKind::Sxm(h)).expect("every target has two SXMs")
}

/// A VXM instruction on any ALU at local cycle `t`, its result flowing
/// `dir`.
pub(crate) fn vx(
    b: &mut Bundle,
    m: &Mach,
    t: Cycle,
    ins: Instruction,
    inputs: &[(&str, Val)],
    dir: Dir,
) -> Result<Val, SchedError> {
    let v = b.unit(m, QSel::AnyVxm, t, ins, inputs, Some(("dst", dir)))?;
    v.ok_or_else(|| SchedError::Kernel {
        label: b.label.clone(),
        message: format!("`{}` has no result", ins.mnemonic()),
    })
}

/// `fconst imm` at local cycle `t`.
pub(crate) fn fconst(
    b: &mut Bundle,
    m: &Mach,
    t: Cycle,
    imm: f32,
    dir: Dir,
) -> Result<Val, SchedError> {
    vx(
        b,
        m,
        t,
        Instruction::Fconst {
            imm: F32Imm::new(imm),
            dst: S,
        },
        &[],
        dir,
    )
}

/// `fconst imm` timed so that its result is at the VXM on local cycle `t`
/// (to meet another operand there).
pub(crate) fn fconst_at(
    b: &mut Bundle,
    m: &Mach,
    t: Cycle,
    imm: f32,
    dir: Dir,
) -> Result<Val, SchedError> {
    let lat = m.latency(&Instruction::Fconst {
        imm: F32Imm::new(imm),
        dst: S,
    });
    fconst(b, m, t - lat, imm, dir)
}

/// An SXM instruction on hemisphere `h`'s SXM, issued when `src` passes it,
/// its result flowing back towards the VXM.
pub(crate) fn sxm_op(
    b: &mut Bundle,
    m: &Mach,
    h: Hemisphere,
    ins: Instruction,
    src: Val,
) -> Result<Val, SchedError> {
    let q = sxm_queue(h);
    let pos = m.position(q);
    let Some(t) = b.arrival(m, src, pos) else {
        return Err(SchedError::Kernel {
            label: b.label.clone(),
            message: format!("the value for `{}` never passes {q}", ins.mnemonic()),
        });
    };
    let back = if pos < m.vxm { Dir::East } else { Dir::West };
    let v = b.unit(
        m,
        QSel::Fixed(q),
        t,
        ins,
        &[("src", src)],
        Some(("dst", back)),
    )?;
    v.ok_or_else(|| SchedError::Kernel {
        label: b.label.clone(),
        message: format!("`{}` has no result", ins.mnemonic()),
    })
}

/// The cycle `v` passes the VXM.
pub(crate) fn at_vxm(b: &Bundle, m: &Mach, v: Val) -> Result<Cycle, SchedError> {
    b.arrival(m, v, m.vxm).ok_or_else(|| SchedError::Kernel {
        label: b.label.clone(),
        message: "a value never reaches the VXM".to_string(),
    })
}

/// The per-word term of a reduction: `term(b, k, t)` adds what computes
/// word `k`'s contribution and returns it arriving at the VXM on local
/// cycle `t`.
pub(crate) type Term<'a> = dyn FnMut(&mut Bundle, u32, Cycle) -> Result<Val, SchedError> + 'a;

/// A reduction and its tables (the permute maps of [`ReduceOp::Max`]).
#[derive(Clone, Debug)]
pub(crate) enum Reducer {
    /// [`ReduceOp::Sum`].
    Sum,
    /// [`ReduceOp::Max`] with the identity map and one map per tree step.
    Max {
        /// `l -> l`.
        identity: TableId,
        /// `l -> l + h if l < w - h, else l`, per step.
        maps: Vec<TableId>,
    },
}

/// The tree steps `(w, h)` with `w > 2` (the last, `w = 2`, is the
/// broadcast step).
fn steps() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut w = LANES;
    while w > 2 {
        let h = w.div_ceil(2);
        out.push((w, h));
        w = h;
    }
    out
}

impl Reducer {
    /// A reducer for `op` (registers Max's permute maps in `p`).
    pub(crate) fn new(p: &mut ProgramBuilder, op: ReduceOp) -> Reducer {
        match op {
            ReduceOp::Sum => Reducer::Sum,
            ReduceOp::Max => {
                let identity = p.table("lane_identity", (0..LANES as u16).collect());
                let steps = steps()
                    .into_iter()
                    .map(|(w, h)| {
                        let map = (0..LANES)
                            .map(|l| if l < w - h { (l + h) as u16 } else { l as u16 })
                            .collect();
                        p.table(&format!("lane_max_w{w}"), map)
                    })
                    .collect();
                Reducer::Max {
                    identity,
                    maps: steps,
                }
            }
        }
    }

    /// The reduction it computes.
    pub(crate) fn op(&self) -> ReduceOp {
        match self {
            Reducer::Sum => ReduceOp::Sum,
            Reducer::Max { .. } => ReduceOp::Max,
        }
    }

    /// The reduction over `words` word terms inside `b`, starting with the
    /// `fconst` at local cycle `t0` (`init`: the sum's +0.0, the max's
    /// -inf or any lower bound). Returns the result (every lane) leaving
    /// the VXM flowing `dir`, and the local cycle it is there.
    #[expect(
        clippy::too_many_arguments,
        reason = "the reduction's whole description"
    )]
    pub(crate) fn build(
        &self,
        b: &mut Bundle,
        m: &Mach,
        t0: Cycle,
        words: u32,
        init: f32,
        term: &mut Term<'_>,
        dir: Dir,
    ) -> Result<(Val, Cycle), SchedError> {
        if words == 0 {
            return Err(SchedError::Kernel {
                label: b.label.clone(),
                message: "a lane reduction of no words".to_string(),
            });
        }
        let combine = self.op().combine();
        let lat = m.latency(&combine);
        let c = fconst(b, m, t0, init, Dir::East)?;
        let mut t = at_vxm(b, m, c)?;
        let mut acc = c;
        // The two copies of the partial vector (west, east).
        let mut pair = None;
        for k in 0..words {
            let x = term(b, k, t)?;
            let inputs = [("a", acc), ("b", x)];
            if k + 1 < words {
                acc = vx(b, m, t, combine, &inputs, Dir::East)?;
                t += lat;
            } else {
                pair = Some(self.dup(b, m, t, &inputs)?);
            }
        }
        let (mut pw, mut pe) = pair.expect("words > 0");
        for (i, (w, h)) in steps().into_iter().enumerate() {
            let (west, east) = match self {
                Reducer::Sum => (
                    Instruction::Shift {
                        src: S,
                        dst: S,
                        n: h,
                        w,
                        ew: ElemWidth::B4,
                    },
                    Instruction::Shift {
                        src: S,
                        dst: S,
                        n: 0,
                        w: LANES,
                        ew: ElemWidth::B4,
                    },
                ),
                Reducer::Max { identity, maps } => (
                    Instruction::Permute {
                        src: S,
                        dst: S,
                        map: maps[i],
                        ew: ElemWidth::B4,
                    },
                    Instruction::Permute {
                        src: S,
                        dst: S,
                        map: *identity,
                        ew: ElemWidth::B4,
                    },
                ),
            };
            let shifted = sxm_op(b, m, Hemisphere::West, west, pw)?;
            let same = sxm_op(b, m, Hemisphere::East, east, pe)?;
            let t = self.meet(b, m, shifted, same)?;
            // p_j = p_j (+|max) p_{j+h}.
            (pw, pe) = self.dup(b, m, t, &[("a", same), ("b", shifted)])?;
        }
        let bcast = |l| Instruction::Bcast {
            src: S,
            dst: S,
            l,
            ew: ElemWidth::B4,
        };
        let p0 = sxm_op(b, m, Hemisphere::West, bcast(0), pw)?;
        let p1 = sxm_op(b, m, Hemisphere::East, bcast(1), pe)?;
        let t = self.meet(b, m, p0, p1)?;
        let r = vx(b, m, t, combine, &[("a", p0), ("b", p1)], dir)?;
        let tr = at_vxm(b, m, r)?;
        Ok((r, tr))
    }

    /// The cycle both `a` and `b` are at the VXM (an error on a floor plan
    /// whose SXMs are not equally far from the VXM).
    fn meet(&self, b: &Bundle, m: &Mach, x: Val, y: Val) -> Result<Cycle, SchedError> {
        let (tx, ty) = (at_vxm(b, m, x)?, at_vxm(b, m, y)?);
        if tx != ty {
            return Err(SchedError::Kernel {
                label: b.label.clone(),
                message: format!(
                    "the two SXM paths of the lane reduction return on cycles {tx} and {ty}: \
                     the floor plan must put both SXMs equally far from the VXM"
                ),
            });
        }
        Ok(tx)
    }

    /// The combine op twice at `t` (same inputs): one result flowing west,
    /// one east.
    fn dup(
        &self,
        b: &mut Bundle,
        m: &Mach,
        t: Cycle,
        inputs: &[(&str, Val)],
    ) -> Result<(Val, Val), SchedError> {
        let ins = self.op().combine();
        let w = vx(b, m, t, ins, inputs, Dir::West)?;
        let e = vx(b, m, t, ins, inputs, Dir::East)?;
        Ok((w, e))
    }
}

/// Reduces `words` words (lanes 0..320 each) of the f32 buffer `x` across
/// every lane and writes the result to word 0 of `out` (f32, 4 slices) on
/// every lane. `Sum` is the contract's `lane_sum` order exactly; `Max` is
/// the maximum over every lane of every word, padding lanes included (see
/// the module doc). One bundle; returns its last cycle.
pub fn lane_reduce(
    p: &mut ProgramBuilder,
    label: &str,
    op: ReduceOp,
    x: &Buffer,
    words: u32,
    out: &Buffer,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    lane_reduce_many(p, label, op, &[ReduceJob { x, words, out }], not_before)
}

/// One reduction of [`lane_reduce_many`]: `words` words of `x` into word 0
/// of `out` (every lane).
#[derive(Clone, Copy, Debug)]
pub struct ReduceJob<'a> {
    /// The f32 input (4 slices).
    pub x: &'a Buffer,
    /// Words of `x` to reduce (at least 1).
    pub words: u32,
    /// The f32 result buffer (4 slices): word 0, every lane.
    pub out: &'a Buffer,
}

/// Several independent reductions (e.g. one per attention head) in one
/// bundle, each started one cycle after the previous one (later when their
/// buffers share slices and the accesses would collide): they overlap
/// almost entirely, where separate calls would run one after the other
/// (each holds both SXM queues from its first step to its last, and the
/// scheduler's queues are append-only). Same results as [`lane_reduce`]
/// on each job. Returns the last cycle used.
pub fn lane_reduce_many(
    p: &mut ProgramBuilder,
    label: &str,
    op: ReduceOp,
    jobs: &[ReduceJob<'_>],
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let r = Reducer::new(p, op);
    let m = p.mach().clone();
    let init = match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
    };
    let mut b = Bundle::new(label);
    let mut t0: Cycle = -1;
    for job in jobs {
        // The first start after the previous job's that adds no conflict
        // (a job's SXM steps are over 100 cycles apart, so a free start is
        // always found within that window when the buffers are disjoint).
        let mut placed = None;
        for start in t0 + 1..t0 + 1 + 4 * Cycle::from(LANES) {
            let mut trial = b.clone();
            let (v, _) = r.build(
                &mut trial,
                &m,
                start,
                job.words,
                init,
                &mut |b, k, t| to_vxm(b, &m, job.x, k, t),
                dir_to(job.out),
            )?;
            from_vxm(&mut trial, &m, v, job.out, 0)?;
            if trial.self_conflict(&m).is_none() {
                placed = Some((trial, start));
                break;
            }
        }
        let Some((trial, start)) = placed else {
            return Err(SchedError::Kernel {
                label: label.to_string(),
                message: format!(
                    "no start within {} cycles of the previous reduction avoids a conflict",
                    4 * LANES
                ),
            });
        };
        b = trial;
        t0 = start;
    }
    let placed = p.sched.place(b, not_before)?;
    Ok(placed.last)
}

/// A scratch buffer `<label>.<what>` of `elements` elements of `dtype` in
/// hemisphere `h` (an allocation failure as a [`SchedError::Kernel`]).
pub(crate) fn scratch(
    p: &mut ProgramBuilder,
    label: &str,
    what: &str,
    dtype: q35_isa::DType,
    elements: u64,
    h: Hemisphere,
) -> Result<Buffer, SchedError> {
    p.buffer(&format!("{label}.{what}"), dtype, elements, h)
        .map_err(|e| SchedError::Kernel {
            label: label.to_string(),
            message: e.to_string(),
        })
}

/// The hemisphere of `buf` (east when it has no slices).
pub(crate) fn hemisphere(buf: &Buffer) -> Hemisphere {
    buf.hemisphere().unwrap_or(Hemisphere::East)
}

/// `fadd` with placeholder streams (bound at placement).
pub(crate) const FADD: Instruction = Instruction::Fadd { a: S, b: S, dst: S };
/// `fmul`.
pub(crate) const FMUL: Instruction = Instruction::Fmul { a: S, b: S, dst: S };
/// `fdiv`.
pub(crate) const FDIV: Instruction = Instruction::Fdiv { a: S, b: S, dst: S };
/// `fsqrt`.
pub(crate) const FSQRT: Instruction = Instruction::Fsqrt { a: S, dst: S };
/// `fexp`.
pub(crate) const FEXP: Instruction = Instruction::Fexp { a: S, dst: S };
/// `fneg`.
pub(crate) const FNEG: Instruction = Instruction::Fneg { a: S, dst: S };
/// `fabs`.
pub(crate) const FABS: Instruction = Instruction::Fabs { a: S, dst: S };
/// `fcmplt`.
pub(crate) const FCMPLT: Instruction = Instruction::Fcmplt { a: S, b: S, dst: S };
/// `select`.
pub(crate) const SELECT: Instruction = Instruction::Select {
    m: S,
    a: S,
    b: S,
    dst: S,
};

/// Builds and places `words` independent per-word pieces: `build(b, k, t0)`
/// adds word `k`'s instructions to `b`, timed from local cycle `t0`. All
/// words go into one bundle, word `k` starting on `t0 = k` (a pipeline:
/// each queue is used in a short window, so later bundles are not held up
/// behind a long one), unless their instructions collide within that
/// bundle (buffers sharing slices, `Bundle::self_conflict`), in which case each word is its own
/// bundle. Returns the last cycle used.
///
/// (One bundle matters because the scheduler's queues are append-only: a
/// bundle that uses a queue at two distant cycles, such as a slice read
/// twice, holds every later bundle behind its last use of that queue.)
pub(crate) fn place_words(
    p: &mut ProgramBuilder,
    label: &str,
    words: u32,
    not_before: Cycle,
    build: &mut dyn FnMut(&mut Bundle, u32, Cycle) -> Result<(), SchedError>,
) -> Result<Cycle, SchedError> {
    let m = p.mach().clone();
    let mut b = Bundle::new(label);
    for k in 0..words {
        build(&mut b, k, Cycle::from(k))?;
    }
    if b.self_conflict(&m).is_none() {
        return Ok(p.sched.place(b, not_before)?.last.max(not_before));
    }
    let mut last = not_before;
    for k in 0..words {
        let mut b = Bundle::new(label);
        build(&mut b, k, 0)?;
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    Ok(last)
}
