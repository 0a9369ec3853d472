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
//!    contract's `fconst 0.0`). The last one is issued twice, one result
//!    flowing to each SXM.
//! 2. **Round trips.** Both SXMs sit 45 positions from the VXM, so a trip
//!    there and back costs ~110 cycles whatever the SXM does; each trip
//!    therefore does as much of the tree as pays. The partial vector is sent
//!    to each SXM as several *terms*: copies one ALU latency apart (`fmax v,
//!    v` is an exact copy), each transformed by one SXM instruction; the
//!    terms return one ALU latency apart and the VXM combines them (a value
//!    that must wait is delayed by `fmax v, v` copies, since values cannot
//!    wait on a stream), then sends the new partial vector out again. The
//!    split into trips is chosen per machine by building each candidate
//!    trip and keeping the split whose trips finish soonest.
//!
//! **Sum** (exactly `semantics::lane_sum`): the contract's levels `w = 320,
//! 160, .., 3, 2` (`h = ceil(w/2)`, `x_j = x_j + x_{j+h}` for `j < w - h`:
//! one `shift` by `h` within the first `w` lanes, which brings +0.0 into
//! lanes `j >= w - h`, then one `fadd`). A trip does a group of `k`
//! consecutive levels at once: a shift commutes with lane-wise addition
//! (`S(a + b) = S(a) + S(b)`, a zero lane being `+0.0 + +0.0`), so after
//! the group `x = sum over subsets I of the group's levels of S_I(x)`,
//! added in the contract's bracket order (the half without, then the half
//! with, the outermost level's shift, recursively). A composition `S_I` of
//! the levels' shifts is itself one `shift`: lane `j` takes lane `j + H`
//! (`H` = the sum of the chosen `h`) when `j + H < W`, `W = min over l in I
//! of (w_l + the h of the chosen levels inside l)`, else +0.0. Terms with
//! `H >= W` are zero on every lane and are left out (adding +0.0 changes no
//! lane, which is never -0.0: every lane starts from +0.0). In the last
//! group only lane 0 matters and every lane gets it: each term is `bcast`
//! of lane `H` (left out when `H >= W`), and their sum is the result on
//! every lane. On lpu-v1 the nine levels take two trips (4 + 5 levels).
//!
//! **Max** is exact in any order (`fmax` returns one of its operands), so a
//! trip folds the `w` live lanes onto the first `s = ceil(w / n)` with `n`
//! `permute` terms (term `i`: lane `l < s` takes lane `l + i s` when that
//! is below `w`; other lanes keep their own value, which is always the
//! maximum of some input lanes) and combines the returns as they come; the
//! last trip broadcasts every live lane (`bcast`), so the result is on
//! every lane. The result is `max(init, every lane of every word)`, init =
//! -inf: note that this includes the padding lanes of a partial last word
//! (zeros unless the caller fills them, e.g. with -inf).
//!
//! On lpu-v1 a reduction of `k` words takes about `4k + 350` cycles from
//! its `fconst` to its result (it was `4k + 1040` with one level per trip).

use q35_isa::TableId;
use q35_isa::{Dir, ElemWidth, F32Imm, Hemisphere, Instruction, QueueId, QueueKind, Stream};

use crate::alloc::Buffer;
use crate::kernels::{dir_to, from_vxm, to_vxm, toward};
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

/// The latency of `fconst`.
pub(crate) fn fconst_latency(m: &Mach) -> Cycle {
    m.latency(&Instruction::Fconst {
        imm: F32Imm::new(0.0),
        dst: S,
    })
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

/// One round trip of a reduction: the SXM instruction applied to each term
/// (a copy of the partial vector), in the combine tree's leaf order;
/// `None` is a term that is zero on every lane that matters (left out).
type Trip = Vec<Option<Instruction>>;

/// A reduction planned as SXM round trips (see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Reducer {
    op: ReduceOp,
    trips: Vec<Trip>,
    /// The one SXM every term goes to (`None`: both, alternately).
    side: Option<Hemisphere>,
}

/// The contract's tree levels `(w, h)`: `w = 320, 160, .., 3, 2`,
/// `h = ceil(w / 2)`.
fn levels() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut w = LANES;
    while w > 1 {
        let h = w.div_ceil(2);
        out.push((w, h));
        w = h;
    }
    out
}

/// The terms of the sum's levels `lv` done in one round trip (leaf `i`
/// shifts by the levels whose bit is set in `i`, bit 0 the innermost):
/// each is one `shift` by the sum `H` of those levels' `h` within the
/// window `W = min(w_l + (h of the chosen levels inside l))`, which is the
/// composition of the levels' shifts exactly; `None` when `H >= W` (zero on
/// every lane). With `last`, only lane 0 of the result matters and every
/// lane gets it: the term is `bcast` of lane `H`, `None` when `H >= W`.
fn sum_trip(lv: &[(u32, u32)], last: bool) -> Trip {
    (0..1u32 << lv.len())
        .map(|i| {
            let mut big_h = 0;
            let mut big_w = LANES;
            for (bit, &(w, h)) in lv.iter().enumerate() {
                if i & (1 << bit) != 0 {
                    big_w = big_w.min(w + big_h);
                    big_h += h;
                }
            }
            if big_h >= big_w {
                None
            } else if last {
                Some(Instruction::Bcast {
                    src: S,
                    dst: S,
                    l: big_h,
                    ew: ElemWidth::B4,
                })
            } else {
                Some(Instruction::Shift {
                    src: S,
                    dst: S,
                    n: big_h,
                    w: big_w,
                    ew: ElemWidth::B4,
                })
            }
        })
        .collect()
}

/// A term of a max round trip.
#[derive(Clone, Copy, Debug)]
enum MaxTerm {
    /// Lane `l < s` takes lane `l + i s` when that is below `w`.
    Fold { w: u32, s: u32, i: u32 },
    /// Every lane takes lane `i`.
    Bcast(u32),
}

/// The max's terms in `r` round trips: each trip but the last folds the
/// `w` live lanes onto the first `ceil(w / n)` with `n` terms (`n` the
/// smallest with `n^trips_left >= w`); the last broadcasts every live lane.
fn max_terms(r: u32) -> Vec<Vec<MaxTerm>> {
    let mut w = LANES;
    let mut out = Vec::new();
    for trip in 0..r {
        let left = r - trip;
        if left == 1 || w == 1 {
            out.push((0..w).map(MaxTerm::Bcast).collect());
            break;
        }
        let n = (1..=w)
            .find(|&n| u64::from(n).pow(left) >= u64::from(w))
            .unwrap_or(w);
        let s = w.div_ceil(n);
        out.push(
            (0..w.div_ceil(s))
                .map(|i| MaxTerm::Fold { w, s, i })
                .collect(),
        );
        w = s;
    }
    out
}

/// The SXM instruction of a max term (`map`: the fold's table).
fn max_ins(t: MaxTerm, map: TableId) -> Instruction {
    match t {
        MaxTerm::Fold { .. } => Instruction::Permute {
            src: S,
            dst: S,
            map,
            ew: ElemWidth::B4,
        },
        MaxTerm::Bcast(l) => Instruction::Bcast {
            src: S,
            dst: S,
            l,
            ew: ElemWidth::B4,
        },
    }
}

/// `fmax v, v`: an exact copy of `v` (delays a value by one ALU latency).
const FMAX: Instruction = Instruction::Fmax { a: S, b: S, dst: S };

impl Reducer {
    /// A reducer for `op` on `p`'s machine: the round trips that finish
    /// soonest (registers the max's permute maps in `p`).
    pub(crate) fn new(p: &mut ProgramBuilder, op: ReduceOp) -> Reducer {
        Reducer::new_on(p, op, None)
    }

    /// [`Reducer::new`] with every term on hemisphere `side`'s SXM when
    /// given (a kernel whose other bundles keep the other SXM busy: each
    /// trip then takes longer, but never waits for that SXM).
    pub(crate) fn new_on(
        p: &mut ProgramBuilder,
        op: ReduceOp,
        side: Option<Hemisphere>,
    ) -> Reducer {
        let m = p.mach().clone();
        match op {
            ReduceOp::Sum => {
                // Levels a..b in one trip; the best split by dynamic
                // programming over the trips' own lengths.
                let lv = levels();
                let n = lv.len();
                let mut best: Vec<(Cycle, usize)> = vec![(Cycle::MAX, n); n + 1];
                best[n] = (0, n);
                for a in (0..n).rev() {
                    for b in a + 1..=n.min(a + MAX_LEVELS_PER_TRIP) {
                        let trip = sum_trip(&lv[a..b], b == n);
                        let Some(c) = trip_cost(&m, op, &trip, side) else {
                            continue;
                        };
                        if best[b].0 != Cycle::MAX && c + best[b].0 < best[a].0 {
                            best[a] = (c + best[b].0, b);
                        }
                    }
                }
                let mut trips = Vec::new();
                let mut a = 0;
                while a < n {
                    let b = best[a].1.max(a + 1);
                    trips.push(sum_trip(&lv[a..b], b == n));
                    a = b;
                }
                Reducer { op, trips, side }
            }
            ReduceOp::Max => {
                let placeholder = TableId(0);
                let mut best = (Cycle::MAX, 1);
                for r in 1..=MAX_TRIPS {
                    let terms = max_terms(r);
                    let mut total = 0;
                    for trip in &terms {
                        let trip: Trip = trip
                            .iter()
                            .map(|&t| Some(max_ins(t, placeholder)))
                            .collect();
                        total += trip_cost(&m, op, &trip, side).unwrap_or(Cycle::MAX / 8);
                    }
                    if total < best.0 {
                        best = (total, r);
                    }
                }
                let trips = max_terms(best.1)
                    .into_iter()
                    .map(|trip| {
                        trip.into_iter()
                            .map(|t| {
                                let map = match t {
                                    MaxTerm::Fold { w, s, i } if i > 0 => {
                                        let map = (0..LANES)
                                            .map(|l| {
                                                if l < s && l + i * s < w {
                                                    (l + i * s) as u16
                                                } else {
                                                    l as u16
                                                }
                                            })
                                            .collect();
                                        p.table(&format!("lane_max_w{w}_s{s}_i{i}"), map)
                                    }
                                    MaxTerm::Fold { .. } => {
                                        p.table("lane_identity", (0..LANES as u16).collect())
                                    }
                                    MaxTerm::Bcast(_) => placeholder,
                                };
                                Some(max_ins(t, map))
                            })
                            .collect()
                    })
                    .collect();
                Reducer { op, trips, side }
            }
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
        let combine = self.op.combine();
        let lat = m.latency(&combine);
        let c = fconst(b, m, t0, init, Dir::East)?;
        let mut t = at_vxm(b, m, c)?;
        let mut acc = c;
        // The partial vector, one copy flowing to each SXM.
        let mut pair = None;
        for k in 0..words {
            let x = term(b, k, t)?;
            let inputs = [("a", acc), ("b", x)];
            if k + 1 < words {
                acc = vx(b, m, t, combine, &inputs, Dir::East)?;
                t += lat;
            } else {
                pair = Some(match self.side {
                    None => (
                        vx(b, m, t, combine, &inputs, Dir::West)?,
                        vx(b, m, t, combine, &inputs, Dir::East)?,
                    ),
                    Some(h) => {
                        let v = vx(b, m, t, combine, &inputs, toward(h))?;
                        (v, v)
                    }
                });
            }
        }
        let (pw, pe) = pair.expect("words > 0");
        let t = at_vxm(b, m, pw)?;
        run_trips(b, m, self.op, t, pw, pe, &self.trips, dir, self.side)
    }
}

/// Longest group of sum levels one round trip does (2^k terms).
const MAX_LEVELS_PER_TRIP: usize = 6;
/// Most round trips a max is planned with.
const MAX_TRIPS: u32 = 4;

/// Cycles from the partial vector at the VXM to the trip's result there
/// (`None` when the trip cannot be built on this machine).
fn trip_cost(m: &Mach, op: ReduceOp, trip: &Trip, side: Option<Hemisphere>) -> Option<Cycle> {
    let mut b = Bundle::new("reduction plan");
    let pw = fconst_at(&mut b, m, 0, 0.0, Dir::West).ok()?;
    let pe = fconst_at(&mut b, m, 0, 0.0, Dir::East).ok()?;
    // A trip ends the same way whether or not another one follows (its
    // last combine is issued once per direction, all on one cycle).
    let (v, _) = run_trips(
        &mut b,
        m,
        op,
        0,
        pw,
        pe,
        std::slice::from_ref(trip),
        Dir::East,
        side,
    )
    .ok()?;
    b.arrival(m, v, m.vxm)
}

/// The round trips `trips` from the partial vector at the VXM on `t` (`pw`
/// flowing west, `pe` east). Per trip, the terms go alternately to the west
/// and east SXM; each SXM gets copies of the vector one ALU latency apart
/// (`fmax v, v` chains), applies the term's instruction and sends the
/// result back; the VXM combines the returns (the sum in the tree's fixed
/// order, the max as they come) and, unless it is the last trip, sends the
/// new partial vector to both SXMs again. Returns the result flowing `dir`
/// and the cycle it is at the VXM.
#[expect(
    clippy::too_many_arguments,
    reason = "the round trips' whole description"
)]
fn run_trips(
    b: &mut Bundle,
    m: &Mach,
    op: ReduceOp,
    t: Cycle,
    pw: Val,
    pe: Val,
    trips: &[Trip],
    dir: Dir,
    side: Option<Hemisphere>,
) -> Result<(Val, Cycle), SchedError> {
    let lat = m.latency(&FMAX);
    let (mut pw, mut pe, mut t) = (pw, pe, t);
    for (k, trip) in trips.iter().enumerate() {
        let last = k + 1 == trips.len();
        let dirs = match (last, side) {
            (true, _) => vec![dir],
            (false, None) => vec![Dir::West, Dir::East],
            (false, Some(h)) => vec![toward(h)],
        };
        let mut sides: [Vec<(usize, Instruction)>; 2] = [Vec::new(), Vec::new()];
        for (leaf, ins) in trip.iter().enumerate() {
            if let Some(ins) = ins {
                let n = sides[0].len() + sides[1].len();
                let s = match side {
                    None => n % 2,
                    Some(Hemisphere::West) => 0,
                    Some(Hemisphere::East) => 1,
                };
                sides[s].push((leaf, *ins));
            }
        }
        let mut leaves: Vec<Option<(Val, Cycle)>> = vec![None; trip.len()];
        for (side, (h, d, p)) in [
            (Hemisphere::West, Dir::West, pw),
            (Hemisphere::East, Dir::East, pe),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = p;
            for (j, &(leaf, ins)) in sides[side].iter().enumerate() {
                if j > 0 {
                    let tc = t + lat * (j as Cycle - 1);
                    c = vx(b, m, tc, FMAX, &[("a", c), ("b", c)], d)?;
                }
                let r = sxm_op(b, m, h, ins, c)?;
                leaves[leaf] = Some((r, at_vxm(b, m, r)?));
            }
        }
        let outs = match op {
            ReduceOp::Sum => tree(b, m, op, &leaves, 0, leaves.len(), Some(&dirs))?,
            ReduceOp::Max => greedy(b, m, op, leaves.into_iter().flatten().collect(), &dirs)?,
        };
        let Some(outs) = outs else {
            return Err(SchedError::Kernel {
                label: b.label.clone(),
                message: "a reduction trip without terms".to_string(),
            });
        };
        if last {
            return Ok(outs[0]);
        }
        (pw, pe, t) = match side {
            None => (outs[0].0, outs[1].0, outs[0].1),
            Some(_) => (outs[0].0, outs[0].0, outs[0].1),
        };
    }
    Err(SchedError::Kernel {
        label: b.label.clone(),
        message: "a reduction without round trips".to_string(),
    })
}

/// `v` (at the VXM on `t`) delayed by `fmax v, v` copies until `until`.
pub(crate) fn delay(
    b: &mut Bundle,
    m: &Mach,
    v: Val,
    t: Cycle,
    until: Cycle,
) -> Result<Val, SchedError> {
    let lat = m.latency(&FMAX);
    let (mut v, mut t) = (v, t);
    while t < until {
        v = vx(b, m, t, FMAX, &[("a", v), ("b", v)], Dir::East)?;
        t += lat;
    }
    if t != until {
        return Err(SchedError::Kernel {
            label: b.label.clone(),
            message: format!(
                "reduction terms return on cycles {t} and {until}, not a whole number of ALU latencies apart"
            ),
        });
    }
    Ok(v)
}

/// `a (+|max) c` (each at the VXM on its cycle; the earlier one delayed),
/// once per direction in `dirs`.
fn combine2(
    b: &mut Bundle,
    m: &Mach,
    op: ReduceOp,
    a: (Val, Cycle),
    c: (Val, Cycle),
    dirs: &[Dir],
) -> Result<Vec<(Val, Cycle)>, SchedError> {
    let t = a.1.max(c.1);
    let va = delay(b, m, a.0, a.1, t)?;
    let vc = delay(b, m, c.0, c.1, t)?;
    let ins = op.combine();
    let lat = m.latency(&ins);
    dirs.iter()
        .map(|&d| Ok((vx(b, m, t, ins, &[("a", va), ("b", vc)], d)?, t + lat)))
        .collect()
}

/// Copies of `v` (at the VXM on `t`) flowing each of `dirs`.
fn copies(
    b: &mut Bundle,
    m: &Mach,
    v: (Val, Cycle),
    dirs: &[Dir],
) -> Result<Vec<(Val, Cycle)>, SchedError> {
    let lat = m.latency(&FMAX);
    dirs.iter()
        .map(|&d| {
            Ok((
                vx(b, m, v.1, FMAX, &[("a", v.0), ("b", v.0)], d)?,
                v.1 + lat,
            ))
        })
        .collect()
}

/// The sum of the leaves `lo .. hi` in the contract's bracket order (each
/// half of a range is the half without, then with, its outermost level's
/// shift); zero leaves are left out (adding +0.0 changes no lane, which is
/// never -0.0). With `dirs`, the result once per direction; without, one
/// value (any direction). `None` when every leaf is zero.
fn tree(
    b: &mut Bundle,
    m: &Mach,
    op: ReduceOp,
    leaves: &[Option<(Val, Cycle)>],
    lo: usize,
    hi: usize,
    dirs: Option<&[Dir]>,
) -> Result<Option<Vec<(Val, Cycle)>>, SchedError> {
    if hi - lo == 1 {
        return match (leaves[lo], dirs) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(Some(vec![v])),
            (Some(v), Some(ds)) => copies(b, m, v, ds).map(Some),
        };
    }
    let mid = lo + (hi - lo) / 2;
    let any = |r: std::ops::Range<usize>| leaves[r].iter().any(Option::is_some);
    match (any(lo..mid), any(mid..hi)) {
        (false, false) => Ok(None),
        (true, false) => tree(b, m, op, leaves, lo, mid, dirs),
        (false, true) => tree(b, m, op, leaves, mid, hi, dirs),
        (true, true) => {
            let a = tree(b, m, op, leaves, lo, mid, None)?.expect("a non-zero half")[0];
            let c = tree(b, m, op, leaves, mid, hi, None)?.expect("a non-zero half")[0];
            combine2(b, m, op, a, c, dirs.unwrap_or(&[Dir::East])).map(Some)
        }
    }
}

/// The maximum of `vals` (any order is exact): the values at the VXM on
/// the earliest cycle are combined in pairs, an odd one delayed one ALU
/// latency, until one is left; the last combine once per direction.
fn greedy(
    b: &mut Bundle,
    m: &Mach,
    op: ReduceOp,
    vals: Vec<(Val, Cycle)>,
    dirs: &[Dir],
) -> Result<Option<Vec<(Val, Cycle)>>, SchedError> {
    let lat = m.latency(&FMAX);
    let mut pend = vals;
    let Some(first) = pend.first().map(|v| v.1) else {
        return Ok(None);
    };
    if pend.iter().any(|v| (v.1 - first) % lat != 0) {
        return Err(SchedError::Kernel {
            label: b.label.clone(),
            message: "max terms return a fraction of an ALU latency apart".to_string(),
        });
    }
    loop {
        pend.sort_by_key(|v| v.1);
        let t = pend[0].1;
        let ready = pend.iter().take_while(|v| v.1 == t).count();
        if pend.len() == 1 {
            return copies(b, m, pend[0], dirs).map(Some);
        }
        if pend.len() == 2 && ready == 2 {
            return combine2(b, m, op, pend[0], pend[1], dirs).map(Some);
        }
        let rest = pend.split_off(ready);
        let now = std::mem::replace(&mut pend, rest);
        for pair in now.chunks(2) {
            match pair {
                [x, y] => pend.push(combine2(b, m, op, *x, *y, &[Dir::East])?[0]),
                [x] => pend.push((delay(b, m, x.0, x.1, x.1 + lat)?, x.1 + lat)),
                _ => {}
            }
        }
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

/// Several independent reductions (e.g. one per attention head): one
/// bundle each, all placed from `not_before`. The scheduler books queue
/// intervals, so a later reduction fills the SXM and VXM cycles an earlier
/// one leaves free (each trip uses an SXM only every ALU latency) and they
/// overlap. Same results as [`lane_reduce`] on each job. Returns the last
/// cycle used.
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
    let mut last = not_before;
    for job in jobs {
        let mut b = Bundle::new(label);
        let (v, _) = r.build(
            &mut b,
            &m,
            0,
            job.words,
            init,
            &mut |b, k, t| to_vxm(b, &m, job.x, k, t),
            dir_to(job.out),
        )?;
        from_vxm(&mut b, &m, v, job.out, 0)?;
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    Ok(last)
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
        .map_err(SchedError::mem(label))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The trips' terms applied in software (`shift`, `bcast` as the
    /// machine does them, the bracket order of `tree`).
    fn run_sum(trips: &[Trip], x: &[f32; 320]) -> [f32; 320] {
        fn bracket(leaves: &[Option<[f32; 320]>]) -> Option<[f32; 320]> {
            if leaves.len() == 1 {
                return leaves[0];
            }
            let (a, c) = leaves.split_at(leaves.len() / 2);
            match (bracket(a), bracket(c)) {
                (Some(a), Some(c)) => Some(std::array::from_fn(|l| a[l] + c[l])),
                (a, c) => a.or(c),
            }
        }
        let mut p = *x;
        for trip in trips {
            let leaves: Vec<Option<[f32; 320]>> = trip
                .iter()
                .map(|t| {
                    t.map(|ins| match ins {
                        Instruction::Shift { n, w, .. } => std::array::from_fn(|l| {
                            if (l as u32) + n < w {
                                p[l + n as usize]
                            } else {
                                0.0
                            }
                        }),
                        Instruction::Bcast { l, .. } => [p[l as usize]; 320],
                        other => panic!("unexpected {other:?}"),
                    })
                })
                .collect();
            p = bracket(&leaves).expect("a trip with terms");
        }
        p
    }

    #[test]
    fn grouped_levels_are_the_lane_sum() {
        {
            let lv = levels();
            let n = lv.len();
            // Every split of the levels into consecutive groups a trip can do.
            for mask in 0u32..1 << (n - 1) {
                let mut trips = Vec::new();
                let mut a = 0;
                for i in 0..n {
                    if i + 1 == n || mask & (1 << i) != 0 {
                        trips.push(sum_trip(&lv[a..=i], i + 1 == n));
                        a = i + 1;
                    }
                }
                if trips.iter().any(|t| t.len() > 1 << MAX_LEVELS_PER_TRIP) {
                    continue;
                }
                for seed in 0..3u32 {
                    let x: [f32; 320] = std::array::from_fn(|l| {
                        let v = (l as u32).wrapping_mul(2654435761).wrapping_add(seed * 77);
                        ((v % 20011) as f32 - 10000.0) * (1.0 + (v % 7) as f32 * 1e3)
                    });
                    let want = q35_contract::semantics::lane_sum(&x);
                    let got = run_sum(&trips, &x);
                    for g in got {
                        assert_eq!(g.to_bits(), want.to_bits(), "split {mask:b}");
                    }
                }
            }
        }
    }

    #[test]
    fn lpu_v1_plans_two_sum_trips_and_two_max_trips() {
        let target = q35_target::Target::builtin("lpu-v1").expect("lpu-v1");
        let mut p = ProgramBuilder::new(&target);
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            let r = Reducer::new(&mut p, op);
            assert_eq!(r.trips.len(), 2, "{op:?}: {:?}", r.trips);
        }
    }
}
