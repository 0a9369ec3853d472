//! Attention for one decode step: the KV cache write ([`kv_write`]) and
//! masked attention over the whole context or its first `attend` positions
//! ([`attention`]), bit-exact with `q35_contract::semantics::attention_head`
//! on the first `pos + 1` positions (docs/q35-format.md 8.4) whenever `pos <
//! attend`.
//!
//! # Layouts (docs/backend-design: fixed by the lead)
//!
//! - `W = ceil(ctx / 320)`. K cache: row `r = kv_head * head_dim + d` is
//!   `W + 1` words at `kcache.addr + r * (W + 1)`: position `t` on lane
//!   `t % 320` of word `t / 320`, then one junk word (`kv_idx` sends every
//!   lane but `pos % 320` there).
//! - V cache: `Wv = ceil(kv_dim / 320)` words a position: word `t * Wv +
//!   w` (`vcache.addr + t * Wv + w`) holds channels `320 w ..` of position
//!   `t`'s value vector, channel `c = kv_head * head_dim + d` on lane `c %
//!   320` of word `c / 320` (one word a position when `kv_dim <= 320`, as
//!   on SmolLM2).
//! - `q`, `y`: f32 `[heads * head_dim]`, natural layout; `mask`: f32
//!   `[ctx]`, 0.0 for `t <= pos`, -inf after (lanes past `ctx` of its last
//!   word may hold any value but +inf or NaN: the kernel adds -inf to them).
//!
//! # How attention runs
//!
//! Three phases, each made of long dependent chains (a sum along lanes is
//! sequential in the contract: one `fadd` every `alu_latency` cycles). Queues
//! issue in program order, so two bundles that both use a MEM slice or an
//! SXM over a long span cannot overlap; the kernel therefore packs several
//! chains into one bundle itself (a private `Packer`), each at the earliest offset
//! where it collides with no other on a fixed queue, a MEM port or bank, or
//! the VXM's queues.
//!
//! 1. Scores (`sxm.w`), one chain per (head, word of positions):
//!    `s = +0.0; s = s + bcast(q_d) * k_row(d)` ascending `d`, then
//!    `(s * scale) + mask`.
//! 2. Softmax (`sxm.e`), one chain per head, all heads in one bundle: the max
//!    over every lane of every word and the contract's `lane_sum` of `e`
//!    (`fconst 0`, `fadd` per word, then the tree) are the shared lane
//!    reductions of `kernels::reduce` (several tree levels a round trip to
//!    the SXM, the result on every lane; here every term on `sxm.e`, since
//!    the score bundles keep `sxm.w` busy), `e = exp(x - m)` computed as
//!    the sum takes it, `inv = 1 / s`, `p = e * inv`. `m` and `inv` reach
//!    the words through MEM (`keep`, one word per head).
//! 3. Output (`sxm.w`), one chain per (group of heads that use different
//!    kv heads, word `vw` of a V row): heads `kv * group + j`, `j` fixed,
//!    have their `p` first packed side by side (`320 / kv_heads` positions
//!    of each head in one word: `permute` + `select`), then per position one
//!    `permute` of the packed word puts head `kv * group + j`'s `p_t` on
//!    every lane of word `vw` whose channel `c = 320 vw + l` is one of kv
//!    head `kv`'s (`kv = c / head_dim`), exactly the lanes of the V cache
//!    word it multiplies: the contract's four stripes, `o_r = o_r + p_t *
//!    v(t, vw)` for `t % 4 = r` ascending, serve every head of the group
//!    whose channels meet that word (a kv head's channels may straddle two
//!    words when `head_dim` does not divide 320, e.g. 128: each word's
//!    chain carries its part). One chain serves up to eight members `j` of
//!    the group at once (slot `s`: its permute on sxm.w for even `s`, sxm.e
//!    for odd, `s / 2` cycles into the position; members of one cycle share
//!    one read of the V word), so a position takes `ceil(n / 2)` cycles
//!    and the stripes let the next position's adds start before the last
//!    one's finish ([`OutPlan`]: stripe `r`'s next add is always exactly
//!    `alu_latency` cycles after its last, when the sum passes the VXM).
//!    The stripes go to `obuf` and are then added, `((o_0 + o_1) + o_2) +
//!    o_3`. Each head's lanes are finally permuted into `y` and merged with
//!    `select`, one piece per (head, word of `y`, V word) (lanes of `y` past
//!    `heads * head_dim` are +0.0). The score phase needs nothing of the
//!    sort: it broadcasts `q` element `h * head_dim + d` from wherever it
//!    lies. The output chains run in segments of 256 positions: a segment
//!    writes its stripes to `obuf` and the next reads them back and goes
//!    on adding, so the order of the additions is unchanged (an f32 stored
//!    and reloaded is the same f32), and bundles stay small enough for the
//!    scheduler at long contexts and many chains (Llama-70B: 8 group
//!    members x 4 V words).
//!
//! # Why the mask and the future positions are exact
//!
//! Let `x_t` be the contract's score (`dot_f32(q, k_t) * scale`) for `t <=
//! pos`. The kernel computes the same `x_t` (same operations, same order)
//! and then `x_t + 0.0`, which equals `x_t` unless `x_t = -0.0` (then
//! `+0.0`): `-0.0` is possible (a tiny negative dot product times `scale`
//! underflows), but the softmax cannot tell: `m` differs at most in the sign
//! of a zero; `x - m` is then `x` for every non-zero `x` (exact) and a zero
//! for zero `x`, and `exp(+0.0) = exp(-0.0) = 1` (the contract's `exp` maps
//! both to `p * 0 + r + 1` with `r = ±0`), so every `e_t` is bit-identical.
//! Positions `t > pos` (and lanes past `ctx`) get `-inf` (a finite score
//! plus `-inf`; the cache holds finite values only: it starts at 0 and only
//! ever receives finite keys and values), which never raises the max, and
//! `exp(-inf - m) = exp(-inf) = +0.0`. The lane sum then adds `+0.0` in
//! lanes and in whole extra words: a partial sum of non-negative `e`
//! starting at `+0.0` is never `-0.0`, so adding `+0.0` changes nothing, and
//! the sum equals `lane_sum` over the first `pos + 1` values bit for bit. So
//! `p_t = +0.0 * inv = +0.0` for `t > pos`, and in the output `p_t * v_t[d]`
//! is `±0.0` (v finite); each stripe starts at `+0.0` and is never `-0.0`
//! (a sum is `-0.0` only when both addends are), so `o_r + ±0.0 = o_r`:
//! future positions contribute nothing, and a stripe that only future
//! positions reach stays `+0.0`, as the contract's empty stripe is.
//!
//! The same argument covers a program that attends to the first `attend`
//! positions only (`pos < attend <= ctx`, a context bucket): the lanes it
//! reads past `pos` are `-inf` in the host's mask (positions below `ctx`),
//! and the positions it skips are all future ones, whose `e_t` and `p_t
//! v_t` are `+0.0`. Leaving out whole words of `+0.0` from the lane sum's
//! word-wise additions, and `+0.0` terms from the ends of the stripes,
//! changes no bit, so both programs give the contract's values.

use std::collections::{BTreeMap, HashSet};

use q35_isa::{
    DType, Dir, ElemWidth, F32Imm, Hemisphere, Instruction, QueueId, QueueKind, Stream, TableId,
};

use crate::alloc::Buffer;
use crate::kernels::dir_to;
use crate::kernels::reduce::{ReduceOp, Reducer, fconst_at, fconst_latency};
use crate::machine::{Cycle, Mach};
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, MemUse, QSel, SchedError, Val};
use q35_contract::semantics::ATTN_STRIPES;

const S: Stream = Stream::east(0);

fn err(label: &str, message: impl Into<String>) -> SchedError {
    SchedError::Kernel {
        label: label.to_string(),
        message: message.into(),
    }
}

fn sxm(h: Hemisphere) -> QueueId {
    QueueId::new(QueueKind::Sxm(h)).expect("lpu-v1 has two SXMs")
}

fn fconst(v: f32) -> Instruction {
    Instruction::Fconst {
        imm: F32Imm::new(v),
        dst: S,
    }
}
const FADD: Instruction = Instruction::Fadd { a: S, b: S, dst: S };
const FSUB: Instruction = Instruction::Fsub { a: S, b: S, dst: S };
const FMUL: Instruction = Instruction::Fmul { a: S, b: S, dst: S };
const FDIV: Instruction = Instruction::Fdiv { a: S, b: S, dst: S };
const FEXP: Instruction = Instruction::Fexp { a: S, dst: S };
const IADD32: Instruction = Instruction::Iadd32 { a: S, b: S, dst: S };
const SELECT: Instruction = Instruction::Select {
    m: S,
    a: S,
    b: S,
    dst: S,
};
fn bcast(l: u32) -> Instruction {
    Instruction::Bcast {
        src: S,
        dst: S,
        l,
        ew: ElemWidth::B4,
    }
}
fn permute(map: TableId) -> Instruction {
    Instruction::Permute {
        src: S,
        dst: S,
        map,
        ew: ElemWidth::B4,
    }
}
fn shift(n: u32, w: u32) -> Instruction {
    Instruction::Shift {
        src: S,
        dst: S,
        n,
        w,
        ew: ElemWidth::B4,
    }
}

/// A VXM instruction on any ALU queue at `t`, result flowing `dir`.
fn vx(
    b: &mut Bundle,
    m: &Mach,
    t: Cycle,
    ins: Instruction,
    inputs: &[(&str, Val)],
    dir: Dir,
) -> Result<Val, SchedError> {
    Ok(b.unit(m, QSel::AnyVxm, t, ins, inputs, Some(("dst", dir)))?
        .expect("a VXM result"))
}

/// An SXM instruction on `q` at `t` reading `src`; its result flows away
/// from the SXM (east from `sxm.w`, west from `sxm.e`).
fn sx(
    b: &mut Bundle,
    m: &Mach,
    q: QueueId,
    t: Cycle,
    ins: Instruction,
    src: Val,
) -> Result<Val, SchedError> {
    let dir = if m.position(q) < m.vxm {
        Dir::East
    } else {
        Dir::West
    };
    Ok(b.unit(
        m,
        QSel::Fixed(q),
        t,
        ins,
        &[("src", src)],
        Some(("dst", dir)),
    )?
    .expect("an SXM result"))
}

/// A resource one instruction holds on one cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Issue(u16, Cycle),
    Port(u16, Cycle, bool),
    Bank(u16, Cycle, u32),
}

impl Key {
    /// The same resource `off` cycles later.
    fn shifted(self, off: Cycle) -> Key {
        match self {
            Key::Issue(q, t) => Key::Issue(q, t + off),
            Key::Port(q, t, w) => Key::Port(q, t + off, w),
            Key::Bank(q, t, b) => Key::Bank(q, t + off, b),
        }
    }
}

/// Packs independent chains into one bundle (see the module doc): the
/// fixed-queue issues, MEM ports and banks and VXM queue counts taken so
/// far.
struct Packer {
    /// Membership only (never iterated), so a hash set keeps this
    /// deterministic.
    used: HashSet<Key>,
    vxm: BTreeMap<Cycle, u32>,
    vxm_queues: u32,
    write_latency: Cycle,
    banks: u32,
}

type Footprint = Vec<(QSel, Cycle, Option<MemUse>)>;

impl Packer {
    fn new(m: &Mach) -> Packer {
        Packer {
            used: HashSet::new(),
            vxm: BTreeMap::new(),
            vxm_queues: m.target.vxm.alus_per_lane,
            write_latency: m.write_latency,
            banks: m.banks.max(1),
        }
    }

    fn keys(&self, fp: &Footprint, off: Cycle) -> (Vec<Key>, Vec<Cycle>) {
        let mut keys = Vec::new();
        let mut vxm = Vec::new();
        for &(q, t, mem) in fp {
            let t = t + off;
            match q {
                QSel::Fixed(q) => keys.push(Key::Issue(q.index(), t)),
                QSel::AnyVxm => vxm.push(t),
            }
            let Some(mem) = mem else { continue };
            let wt = t + self.write_latency - 1;
            let (slice, c, write, bank) = match mem {
                MemUse::Read { slice, addr } => (slice, t, false, Some(addr % self.banks)),
                MemUse::Gather { slice, .. } => (slice, t, false, None),
                MemUse::Write { slice, addr } => (slice, wt, true, Some(addr % self.banks)),
                MemUse::Scatter { slice, .. } => (slice, wt, true, None),
            };
            keys.push(Key::Port(slice.index(), c, write));
            match bank {
                Some(bk) => keys.push(Key::Bank(slice.index(), c, bk)),
                None => keys.extend((0..self.banks).map(|bk| Key::Bank(slice.index(), c, bk))),
            }
        }
        (keys, vxm)
    }

    /// Whether the chain collides with itself (then no offset helps).
    fn self_conflict(&self, fp: &Footprint) -> Option<Key> {
        let (mut keys, _) = self.keys(fp, 0);
        keys.sort();
        keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
    }

    /// Whether a chain whose resources at offset 0 are `keys` and whose
    /// VXM instructions per cycle are `vxm` fits at `off` (stops at the
    /// first conflict: chains are long, and most offsets fail early).
    fn fits(&self, keys: &[Key], vxm: &BTreeMap<Cycle, u32>, off: Cycle) -> bool {
        if keys.iter().any(|k| self.used.contains(&k.shifted(off))) {
            return false;
        }
        vxm.iter()
            .all(|(t, n)| self.vxm.get(&(t + off)).copied().unwrap_or(0) + n <= self.vxm_queues)
    }

    fn take(&mut self, fp: &Footprint, off: Cycle) {
        let (keys, vxm) = self.keys(fp, off);
        self.used.extend(keys);
        for t in vxm {
            *self.vxm.entry(t).or_insert(0) += 1;
        }
    }

    /// Adds the chain `build` makes at the earliest offset `>= min_off`
    /// that collides with nothing packed so far; returns the offset and
    /// what `build` returned.
    fn pack<R>(
        &mut self,
        b: &mut Bundle,
        min_off: Cycle,
        build: impl Fn(&mut Bundle, Cycle) -> Result<R, SchedError>,
    ) -> Result<(Cycle, R), SchedError> {
        let mut probe = Bundle::new(b.label.clone());
        build(&mut probe, 0)?;
        let fp = probe.footprint();
        if let Some(k) = self.self_conflict(&fp) {
            return Err(err(
                &b.label,
                format!(
                    "a chain collides with itself ({k:?}): two of its buffers share a MEM slice \
                     (place q, the caches, the mask and y so that none shares a slice)"
                ),
            ));
        }
        let (keys, vxm_list) = self.keys(&fp, 0);
        let mut vxm: BTreeMap<Cycle, u32> = BTreeMap::new();
        for t in vxm_list {
            *vxm.entry(t).or_insert(0) += 1;
        }
        let mut off = min_off;
        while !self.fits(&keys, &vxm, off) {
            off += 1;
            if off - min_off > 1 << 20 {
                return Err(err(&b.label, "no offset fits a chain"));
            }
        }
        self.take(&fp, off);
        let r = build(b, off)?;
        Ok((off, r))
    }
}

/// The direction in which values from an SXM and index vectors read from
/// `idx` both pass every slice of `cache` (the index must be upstream of
/// all of them), and the SXM that sends that way.
fn cache_flow(m: &Mach, idx: &Buffer, cache: &Buffer) -> Option<(Dir, QueueId)> {
    let ip: Vec<u32> = idx.slices.iter().map(|&q| m.position(q)).collect();
    let cp: Vec<u32> = cache.slices.iter().map(|&q| m.position(q)).collect();
    let (imin, imax) = (*ip.iter().min()?, *ip.iter().max()?);
    let (cmin, cmax) = (*cp.iter().min()?, *cp.iter().max()?);
    if imax < cmin {
        Some((Dir::East, sxm(Hemisphere::West)))
    } else if imin > cmax {
        Some((Dir::West, sxm(Hemisphere::East)))
    } else {
        None
    }
}

/// The first slice of `cache` a value flowing `dir` passes.
fn first_slice(m: &Mach, cache: &Buffer, dir: Dir) -> u32 {
    let ps = cache.slices.iter().map(|&q| m.position(q));
    match dir {
        Dir::East => ps.min().unwrap_or(0),
        Dir::West => ps.max().unwrap_or(0),
    }
}

/// Stores this position's key and value into the caches (layouts in the
/// module doc).
///
/// `k`, `v`: f32 `[kv_dim]` (natural layout); `kv_idx`, `pos_idx`: u16
/// `[320]` (2 slices; `pos_idx` every lane = `pos`, `kv_idx` lane `pos % 320`
/// = `pos / 320`, every other lane = `W`). Key element `r` is broadcast by
/// an SXM to every lane and `scatter`ed into row `r` (lane `pos % 320` of
/// word `pos / 320`, the others into the junk word); the value vector is
/// copied through an SXM (`shift` by 0) and scattered into word `pos` of
/// the V cache. The index buffers must lie on one side of each cache's
/// slices (e.g. in the other hemisphere), so that an index read meets the
/// value at every cache slice. When `kv_dim > 320` the V row of a position
/// is `Wv = ceil(kv_dim / 320)` words and word `w` of `v` goes to word
/// `pos * Wv + w`, with the index `pos * Wv` computed on the chip from
/// `pos_idx` (exactly: integer adds; see `v_rows`).
#[expect(clippy::too_many_arguments, reason = "the op's buffers and sizes")]
pub fn kv_write(
    p: &mut ProgramBuilder,
    label: &str,
    k: &Buffer,
    v: &Buffer,
    kcache: &Buffer,
    vcache: &Buffer,
    kv_idx: &Buffer,
    pos_idx: &Buffer,
    kv_dim: u32,
    ctx: u32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let m = p.mach().clone();
    let w_words = ctx.div_ceil(LANES);
    let mut last = not_before;
    let Some((kdir, ksx)) = cache_flow(&m, kv_idx, kcache) else {
        return Err(err(
            label,
            format!(
                "`{}` lies between the slices of `{}`: no direction carries both to every slice",
                kv_idx.name, kcache.name
            ),
        ));
    };
    for r in 0..kv_dim {
        let mut b = Bundle::new(label);
        let sp = m.position(ksx);
        let kw = b.read(&m, &k.slices, k.addr + r / LANES, sp, 0)?;
        let val = sx(&mut b, &m, ksx, 0, bcast(r % LANES), kw)?;
        let f = first_slice(&m, kcache, kdir);
        let t = b
            .arrival(&m, val, f)
            .expect("the SXM is upstream of every slice");
        let idx = b.read(&m, &kv_idx.slices, kv_idx.addr, f, t)?;
        let base = kcache.addr + r * (w_words + 1);
        for (j, &slice) in kcache.slices.iter().enumerate() {
            let part = b.part(val, j as u8, 1)?;
            b.scatter(&m, slice, idx, part, base, (base, base + w_words + 1))?;
        }
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    let wv = kv_dim.div_ceil(LANES);
    if wv == 1 {
        let Some((vdir, vsx)) = cache_flow(&m, pos_idx, vcache) else {
            return Err(err(
                label,
                format!(
                    "`{}` lies between the slices of `{}`: no direction carries both to every slice",
                    pos_idx.name, vcache.name
                ),
            ));
        };
        let mut b = Bundle::new(label);
        let sp = m.position(vsx);
        let vw = b.read(&m, &v.slices, v.addr, sp, 0)?;
        let val = sx(&mut b, &m, vsx, 0, shift(0, LANES), vw)?;
        let f = first_slice(&m, vcache, vdir);
        let t = b
            .arrival(&m, val, f)
            .expect("the SXM is upstream of every slice");
        let idx = b.read(&m, &pos_idx.slices, pos_idx.addr, f, t)?;
        for (j, &slice) in vcache.slices.iter().enumerate() {
            let part = b.part(val, j as u8, 1)?;
            b.scatter(
                &m,
                slice,
                idx,
                part,
                vcache.addr,
                (vcache.addr, vcache.addr + ctx),
            )?;
        }
        last = last.max(p.sched.place(b, not_before)?.last);
        return Ok(last);
    }
    last = last.max(v_rows(p, label, v, vcache, pos_idx, wv, ctx, not_before)?);
    Ok(last)
}

/// The V rows of `Wv > 1` words a position: word `w` of `v` into word
/// `pos * Wv + w` of `vcache`. The scatter index `pos * Wv` is computed on
/// the chip, exactly: `pos_idx` (u16) is first copied into the low two
/// slices of an i32 scratch word whose high two slices stay zero
/// (`<label>.pos32`), so that reading it gives `pos` as an i32; `Wv - 1`
/// wrapping `iadd32`s (`2 pos`, `3 pos`, ..) give `pos * Wv` (at most
/// `ctx * Wv`, which fits u16: checked), whose low two byte planes are the
/// u16 index. It leaves the VXM towards the V cache on the cycle the value
/// word (sent back by the far SXM, `shift` by 0) passes the VXM, so both
/// travel together past every slice of the cache, where `scatter` at base
/// `vcache.addr + w` stores lane `l` into word `pos * Wv + w`.
#[expect(clippy::too_many_arguments, reason = "the op's buffers and sizes")]
fn v_rows(
    p: &mut ProgramBuilder,
    label: &str,
    v: &Buffer,
    vcache: &Buffer,
    pos_idx: &Buffer,
    wv: u32,
    ctx: u32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let m = p.mach().clone();
    let rows = ctx.saturating_mul(wv);
    if rows > u32::from(u16::MAX) + 1 || rows > vcache.words {
        return Err(err(
            label,
            format!(
                "a V cache of {ctx} positions x {wv} words does not fit the u16 scatter index \
                 or the {} words of `{}`",
                vcache.words, vcache.name
            ),
        ));
    }
    let Some(ch) = vcache.hemisphere() else {
        return Err(err(label, format!("`{}` has no slices", vcache.name)));
    };
    // Flowing from the VXM into the cache's hemisphere; the value word comes
    // from the other hemisphere's SXM.
    let (vdir, vsx) = match ch {
        Hemisphere::West => (Dir::West, sxm(Hemisphere::East)),
        Hemisphere::East => (Dir::East, sxm(Hemisphere::West)),
    };
    let other = |h: Hemisphere| match h {
        Hemisphere::West => Hemisphere::East,
        Hemisphere::East => Hemisphere::West,
    };
    let ph = pos_idx.hemisphere().unwrap_or(Hemisphere::East);
    let pos32 = p
        .buffer(
            &format!("{label}.pos32"),
            DType::I32,
            u64::from(LANES),
            other(ph),
        )
        .map_err(SchedError::mem(label))?;
    p.init(&pos32, DType::I32, vec![0; LANES as usize]);
    let mut last = not_before;
    // pos_idx's two byte planes into the low two of pos32.
    let mut b = Bundle::new(label);
    let x = b.read(&m, &pos_idx.slices, pos_idx.addr, m.vxm, 0)?;
    b.write(&m, x, &pos32.slices[..2], pos32.addr)?;
    last = last.max(p.sched.place(b, not_before)?.last);
    let la = m.latency(&IADD32);
    let sp = m.position(vsx);
    let lsh = m.latency(&shift(0, LANES));
    for w in 0..wv {
        let mut b = Bundle::new(label);
        // The value word passes the VXM on local cycle 0.
        let tp = -lsh - m.hops(sp, m.vxm);
        let vw = b.read(&m, &v.slices, v.addr + w, sp, tp)?;
        let val = sx(&mut b, &m, vsx, tp, shift(0, LANES), vw)?;
        // pos * Wv leaves the VXM on cycle 0.
        let t0 = -la * Cycle::from(wv - 1);
        let x = b.read(&m, &pos32.slices, pos32.addr, m.vxm, t0)?;
        let mut acc = x;
        for i in 1..wv {
            let t = t0 + la * Cycle::from(i - 1);
            let y = if i == 1 {
                x
            } else {
                b.read(&m, &pos32.slices, pos32.addr, m.vxm, t)?
            };
            let dir = if i + 1 == wv { vdir } else { Dir::East };
            acc = vx(&mut b, &m, t, IADD32, &[("a", acc), ("b", y)], dir)?;
        }
        let idx = b.part(acc, 0, 2)?;
        for (j, &slice) in vcache.slices.iter().enumerate() {
            let part = b.part(val, j as u8, 1)?;
            b.scatter(
                &m,
                slice,
                idx,
                part,
                vcache.addr + w,
                (vcache.addr, vcache.addr + rows),
            )?;
        }
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    Ok(last)
}

/// Positions one bundle of the output phase covers (the scheduler's cost
/// grows faster than a bundle's size, and a long context would make one
/// bundle of every chain very large).
const OUT_SEGMENT: u32 = 256;

/// Shapes of one attention op.
#[derive(Clone, Copy, Debug)]
struct Shape {
    heads: u32,
    /// Positions per kv head in a packed word of p (`320 / kv_heads`).
    blk: u32,
    group: u32,
    hd: u32,
    /// Positions the op reads (the cache's first `ctx`: a program for the
    /// positions below it, [`attention`]'s `attend`).
    ctx: u32,
    /// Words over those positions.
    w: u32,
    /// Words of a K cache row's positions (`ceil(cache ctx / 320)`; the
    /// row is `kw + 1` words, the junk word last).
    kw: u32,
    /// Words of one head in each half of the scores scratch.
    wh: u32,
    /// Words of a V cache row (`ceil(kv_dim / 320)`).
    wv: u32,
}

/// Views of the scratch block: two halves of scores (word `w` of head `h`
/// in half `w % 2`, word `h * wh + w / 2`) and the keep words.
struct Scratch {
    sc: [Buffer; 2],
    keep: Buffer,
}

impl Scratch {
    fn word(&self, s: &Shape, h: u32, w: u32) -> (&Buffer, u32) {
        let buf = &self.sc[(w % 2) as usize];
        (buf, buf.addr + h * s.wh + w / 2)
    }
}

fn view(block: &Buffer, name: &str, first: usize, n: usize) -> Buffer {
    Buffer {
        name: format!("{}.{name}", block.name),
        slices: block.slices[first..first + n].to_vec(),
        addr: block.addr,
        words: block.words,
    }
}

/// Masked attention for one token over the first `attend` positions of a
/// cache of `ctx` (layouts and method in the module doc): for every head
/// `h` (kv head `h / (heads / kv_heads)`), `y[h*head_dim ..][d] = sum_t
/// softmax((q_h . k_t) * scale + mask)_t * v_t[d]`, exactly as
/// `attention_head` over positions `0 ..= pos` whenever `pos < attend`
/// (`attend = ctx`: whole-context attention, any position).
///
/// Allocates its scratch buffers exactly as for `attend = ctx`, whatever
/// `attend` is: the same MEM image and placement, so a program attending
/// fewer positions (a context bucket, docs/backend.md 1.2) shares every
/// buffer and constant with the whole-context one and only reads less.
/// Returns the last cycle used.
#[expect(clippy::too_many_arguments, reason = "the op's buffers and sizes")]
pub fn attention(
    p: &mut ProgramBuilder,
    label: &str,
    q: &Buffer,
    kcache: &Buffer,
    vcache: &Buffer,
    mask: &Buffer,
    y: &Buffer,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    ctx: u32,
    attend: u32,
    scale: f32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim == 0 || ctx == 0 {
        return Err(err(
            label,
            format!("heads {heads}, kv_heads {kv_heads}, head_dim {head_dim}, ctx {ctx}"),
        ));
    }
    if attend == 0 || attend > ctx {
        return Err(err(
            label,
            format!("attends to {attend} positions of a cache of {ctx}: must be 1..={ctx}"),
        ));
    }
    let m = p.mach().clone();
    let kw = ctx.div_ceil(LANES);
    // The whole-context shape sizes every buffer; `s` is what is read.
    let full = Shape {
        heads,
        blk: LANES / kv_heads,
        group: heads / kv_heads,
        hd: head_dim,
        ctx,
        w: kw,
        wh: kw.div_ceil(2),
        wv: (kv_heads * head_dim).div_ceil(LANES),
        kw,
    };
    let w = attend.div_ceil(LANES);
    let s = Shape {
        ctx: attend,
        w,
        ..full
    };
    if kv_heads > LANES {
        return Err(err(
            label,
            format!("kv_heads {kv_heads} > {LANES}: a packed word holds a block per kv head"),
        ));
    }
    let alloc = |p: &mut ProgramBuilder, name: &str, h, n, words| {
        p.place_slices(&format!("{label}.{name}"), h, n, words)
            .map_err(SchedError::mem(label))
    };
    // Scores / e / p (two halves) and keep: 12 distinct east slices (keep
    // must be east: sxm.e's values flow east past it).
    let blocks = pack_blocks(&s);
    let packed_words = s.group * pack_blocks(&full).len() as u32;
    let block = p
        .scratch_slices(
            &format!("{label}.scratch"),
            "attention.scratch",
            Hemisphere::East,
            16,
            (heads * s.wh).max(heads + packed_words),
        )
        .map_err(SchedError::mem(label))?;
    let scratch = Scratch {
        sc: [view(&block, "sc0", 0, 4), view(&block, "sc1", 4, 4)],
        keep: view(&block, "keep", 8, 4),
    };
    // The packed words of even output slots (read by sxm.w) and of odd
    // ones (read by sxm.e, in the keep slices past the keep words): the
    // two SXMs read them on the same cycles.
    let mut packed_odd = view(&block, "packed_odd", 8, 4);
    packed_odd.addr += heads;
    let packed = [view(&block, "packed", 12, 4), packed_odd];
    // Per-head outputs and the select masks of the merge into y.
    let y_words = (heads * head_dim).div_ceil(LANES);
    let pairs = merge_pairs(&s, y_words);
    // obuf: each (group member, V word)'s output, then its stripes (the
    // contract's ATTN_STRIPES partial sums), even stripes beside the
    // outputs and odd ones in four more slices, so that two stripes are
    // read on one cycle when they are added.
    let outs = s.group * s.wv;
    let block2 = alloc(
        p,
        "out",
        Hemisphere::West,
        9,
        (3 * outs).max(pairs.len() as u32 + kv_heads),
    )?;
    let obuf = view(&block2, "o", 0, 4);
    let obuf_odd = view(&block2, "o_odd", 4, 4);
    let sel = view(&block2, "sel", 8, 1);
    let stripes = Stripes {
        bufs: [&obuf, &obuf_odd],
        base: outs,
        wv: s.wv,
        la: m.latency(&FADD),
    };
    let mut sel_init = Vec::new();
    for &(_, _, lo, hi, _) in &pairs {
        sel_init.extend((0..LANES).map(|l| u32::from(l >= lo && l < hi)));
    }
    // Then one mask per kv head for the packing of p: lanes of its block.
    let pack_mask0 = pairs.len() as u32;
    for i in 0..kv_heads {
        let (lo, hi) = (i * s.blk, (i + 1) * s.blk);
        sel_init.extend((0..LANES).map(|l| u32::from(l >= lo && l < hi)));
    }
    p.init(&sel, DType::U8, sel_init);

    // The mask's last word with -inf past ctx (made only when this op reads
    // that word; its buffers exist either way).
    let mut last_mask = (mask.clone(), mask.addr + kw - 1);
    let mut last = not_before;
    if !ctx.is_multiple_of(LANES) {
        let other = match mask.hemisphere() {
            Some(Hemisphere::West) => Hemisphere::East,
            _ => Hemisphere::West,
        };
        let pad = p
            .buffer(&format!("{label}.pad"), DType::F32, u64::from(LANES), other)
            .map_err(SchedError::mem(label))?;
        let r = ctx % LANES;
        p.init(
            &pad,
            DType::F32,
            (0..LANES)
                .map(|l| if l < r { 0f32 } else { f32::NEG_INFINITY }.to_bits())
                .collect(),
        );
        let mask2 = p
            .buffer(
                &format!("{label}.mask"),
                DType::F32,
                u64::from(LANES),
                other,
            )
            .map_err(SchedError::mem(label))?;
        if w == kw {
            let mut b = Bundle::new(label);
            let a = b.read(&m, &mask.slices, mask.addr + kw - 1, m.vxm, 0)?;
            let c = b.read(&m, &pad.slices, pad.addr, m.vxm, 0)?;
            let sum = vx(&mut b, &m, 0, FADD, &[("a", a), ("b", c)], dir_to(&mask2))?;
            b.write(&m, sum, &mask2.slices, mask2.addr)?;
            last = last.max(p.sched.place(b, not_before)?.last);
            last_mask = (mask2.clone(), mask2.addr);
        }
    }

    // Phase 1: scores, 4 chains a bundle.
    let chains: Vec<(u32, u32)> = (0..heads)
        .flat_map(|h| (0..w).map(move |ww| (h, ww)))
        .collect();
    let mut ready = vec![Cycle::MIN; heads as usize];
    for batch in chains.chunks(4) {
        let mut b = Bundle::new(label);
        let mut pk = Packer::new(&m);
        let mut done = Vec::new();
        for &(h, ww) in batch {
            let mk = if ww == kw - 1 {
                last_mask.clone()
            } else {
                (mask.clone(), mask.addr + ww)
            };
            let (_, end) = pk.pack(&mut b, 0, |b, off| {
                score_chain(b, &m, &s, off, h, ww, q, kcache, &mk, &scratch, scale)
            })?;
            done.push((h, end));
        }
        let placed = p.sched.place(b, not_before)?;
        last = last.max(placed.last);
        for (h, end) in done {
            let r = &mut ready[h as usize];
            *r = (*r).max(end + placed.shift);
        }
    }

    // Phase 2: softmax, every head in one bundle.
    // Both on sxm.e: the score bundles keep sxm.w busy (one broadcast of
    // q a cycle), and the softmax of the first heads overlaps them.
    let max = Reducer::new_on(p, ReduceOp::Max, Some(Hemisphere::East));
    let sum = Reducer::new_on(p, ReduceOp::Sum, Some(Hemisphere::East));
    let base = ready.iter().copied().min().unwrap_or(0);
    let mut b = Bundle::new(label);
    let mut pk = Packer::new(&m);
    for h in 0..heads {
        pk.pack(&mut b, ready[h as usize] - base, |b, off| {
            softmax_chain(b, &m, &s, off, h, &scratch, &max, &sum)
        })?;
    }
    last = last.max(p.sched.place(b, not_before)?.last);

    // Phase 3a: pack the p of the heads of one group (one head per kv
    // head) side by side, a block of positions per kv head.
    let la = m.latency(&FADD);
    let lp = m.latency(&permute(TableId(0)));
    let sxe = sxm(Hemisphere::East);
    let sep = m.position(sxe);
    for j in 0..s.group {
        for (kb, &(t0, len)) in blocks.iter().enumerate() {
            let mut b = Bundle::new(label);
            let mut acc = vx(&mut b, &m, 0, fconst(0.0), &[], Dir::West)?;
            let mut t = la;
            for i in 0..kv_heads {
                let h = i * s.group + j;
                let start = t0 % LANES;
                let map: Vec<u16> = (0..LANES)
                    .map(|l| {
                        if l >= i * s.blk && l < i * s.blk + len {
                            (start + l - i * s.blk) as u16
                        } else {
                            0
                        }
                    })
                    .collect();
                let tab = p.table(&format!("attn.pack.b{}.i{i}.s{start}.n{len}", s.blk), map);
                let tp = t - lp - m.hops(sep, m.vxm);
                let (buf, addr) = scratch.word(&s, h, t0 / LANES);
                let pw = b.read(&m, &buf.slices, addr, sep, tp)?;
                let per = sx(&mut b, &m, sxe, tp, permute(tab), pw)?;
                let mk = b.read(&m, &sel.slices, sel.addr + pack_mask0 + i, m.vxm, t)?;
                acc = vx(
                    &mut b,
                    &m,
                    t,
                    SELECT,
                    &[("m", mk), ("a", per), ("b", acc)],
                    dir_to(&packed[packed_side(j, la)]),
                )?;
                t += la;
            }
            let pk = &packed[packed_side(j, la)];
            b.write(
                &m,
                acc,
                &pk.slices,
                pk.addr + j * blocks.len() as u32 + kb as u32,
            )?;
            last = last.max(p.sched.place(b, not_before)?.last);
        }
    }
    // Phase 3b: outputs, one chain per group (its heads' kv segments side
    // by side), all groups in one bundle.
    // Per V word `vw` and position `r` of a block: lane `l` (channel `c =
    // 320 vw + l`) takes kv head `c / head_dim`'s block.
    let kv_dim = kv_heads * s.hd;
    let unpack: Vec<Vec<TableId>> = (0..s.wv)
        .map(|vw| {
            (0..s.blk)
                .map(|r| {
                    let name = if vw == 0 {
                        format!("attn.unpack.b{}.hd{}.kv{kv_heads}.r{r}", s.blk, s.hd)
                    } else {
                        format!("attn.unpack.b{}.hd{}.kv{kv_heads}.w{vw}.r{r}", s.blk, s.hd)
                    };
                    let map = (0..LANES)
                        .map(|l| {
                            let c = vw * LANES + l;
                            if c < kv_dim {
                                ((c / s.hd) * s.blk + r) as u16
                            } else {
                                0
                            }
                        })
                        .collect();
                    p.table(&name, map)
                })
                .collect()
        })
        .collect();
    // Segments of OUT_SEGMENT positions; in each, per V word and set of
    // group members, the sub-chains of `OutPlan` one after another (each
    // keeps both SXMs busy). A later segment continues the stripes from
    // obuf, so the order of the additions is the contract's.
    let mut t_a = 0;
    while t_a < s.ctx {
        let t_b = s.ctx.min(t_a + OUT_SEGMENT);
        for vw in 0..s.wv {
            for js in member_sets(&s, la) {
                let plan = OutPlan::new(js.len() as u32, la);
                for k in 0..plan.subchains() {
                    let mut b = Bundle::new(label);
                    output_chain(
                        &mut b,
                        &m,
                        &s,
                        &plan,
                        (vw, &js, k),
                        (t_a, t_b),
                        vcache,
                        &packed,
                        &blocks,
                        &unpack[vw as usize],
                        &stripes,
                    )?;
                    last = last.max(p.sched.place(b, not_before)?.last);
                }
            }
        }
        t_a = t_b;
    }
    // Each output: its stripes added in the contract's order,
    // ((o_0 + o_1) + o_2) + o_3, into its obuf word.
    for j in 0..s.group {
        for vw in 0..s.wv {
            let mut b = Bundle::new(label);
            let at = |r: usize| stripes.at(j, vw, r);
            // A stripe no position reaches (a context under four) is +0.0.
            let stripe = |b: &mut Bundle, r: usize, t: Cycle| {
                let (buf, addr) = at(r);
                if (r as u32) < s.ctx {
                    b.read(&m, &buf.slices, addr, m.vxm, t)
                } else {
                    vx(b, &m, t - la, fconst(0.0), &[], Dir::West)
                }
            };
            let o0 = stripe(&mut b, 0, la)?;
            let o1 = stripe(&mut b, 1, la)?;
            let mut acc = vx(&mut b, &m, la, FADD, &[("a", o0), ("b", o1)], Dir::West)?;
            for r in 2..ATTN_STRIPES {
                let t = la * r as Cycle;
                let o = stripe(&mut b, r, t)?;
                let dir = if r + 1 == ATTN_STRIPES {
                    dir_to(&obuf)
                } else {
                    Dir::West
                };
                acc = vx(&mut b, &m, t, FADD, &[("a", acc), ("b", o)], dir)?;
            }
            b.write(&m, acc, &obuf.slices, obuf.addr + j * s.wv + vw)?;
            last = last.max(p.sched.place(b, not_before)?.last);
        }
    }

    // Merge the heads into y, one bundle a word.
    for j in 0..y_words {
        let mut b = Bundle::new(label);
        let la = m.latency(&FADD);
        let lp = m.latency(&permute(TableId(0)));
        let sxe = sxm(Hemisphere::East);
        let sp = m.position(sxe);
        let mut acc = vx(&mut b, &m, 0, fconst(0.0), &[], Dir::West)?;
        let mut t = la;
        for (i, &(h, jj, lo, hi, vw)) in pairs.iter().enumerate() {
            if jj != j {
                continue;
            }
            let kvh = h / s.group;
            let map: Vec<u16> = (0..LANES)
                .map(|l| {
                    if l >= lo && l < hi {
                        ((kvh * s.hd + (j * LANES + l - h * s.hd)) % LANES) as u16
                    } else {
                        0
                    }
                })
                .collect();
            let name = if s.wv == 1 {
                format!("attn.o2y.hd{}.h{h}.kv{kvh}.j{j}", s.hd)
            } else {
                format!("attn.o2y.hd{}.h{h}.kv{kvh}.j{j}.w{vw}", s.hd)
            };
            let tab = p.table(&name, map);
            let tp = t - lp - m.hops(sp, m.vxm);
            let word = (h % s.group) * s.wv + vw;
            let o = b.read(&m, &obuf.slices, obuf.addr + word, sp, tp)?;
            let per = sx(&mut b, &m, sxe, tp, permute(tab), o)?;
            let mk = b.read(&m, &sel.slices, sel.addr + i as u32, m.vxm, t)?;
            acc = vx(
                &mut b,
                &m,
                t,
                SELECT,
                &[("m", mk), ("a", per), ("b", acc)],
                dir_to(y),
            )?;
            t += la;
        }
        b.write(&m, acc, &y.slices, y.addr + j)?;
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    Ok(last)
}

/// (head, y word, first lane, end lane, V word) of every piece of every
/// head's part of every word of `y`: a head's lanes in one word of `y`
/// whose channels (`kv_head * head_dim + d`) lie in one word of a V row,
/// i.e. in one word of the head's group's output (a head's part splits in
/// two where its kv head's channels cross a multiple of 320).
fn merge_pairs(s: &Shape, y_words: u32) -> Vec<(u32, u32, u32, u32, u32)> {
    let mut v = Vec::new();
    for j in 0..y_words {
        for h in 0..s.heads {
            let (a, e) = (h * s.hd, (h + 1) * s.hd);
            let (lo, hi) = (a.max(j * LANES), e.min((j + 1) * LANES));
            if lo >= hi {
                continue;
            }
            // Channel of y element i (head h): kv_head * hd + (i - h * hd).
            let shift = (h / s.group) * s.hd;
            let (c_lo, c_hi) = (shift + lo - a, shift + hi - a);
            let mut c = c_lo;
            while c < c_hi {
                let end = c_hi.min((c / LANES + 1) * LANES);
                let (l0, l1) = (c - shift + a, end - shift + a);
                v.push((h, j, l0 - j * LANES, l1 - j * LANES, c / LANES));
                c = end;
            }
        }
    }
    v
}

/// Scores of head `h` over positions of word `ww`, into the scratch.
/// Returns the local cycle the result leaves the VXM.
#[expect(clippy::too_many_arguments, reason = "one chain's inputs")]
fn score_chain(
    b: &mut Bundle,
    m: &Mach,
    s: &Shape,
    off: Cycle,
    h: u32,
    ww: u32,
    q: &Buffer,
    kcache: &Buffer,
    mask: &(Buffer, u32),
    scratch: &Scratch,
    scale: f32,
) -> Result<Cycle, SchedError> {
    let la = m.latency(&FADD);
    let lb = m.latency(&bcast(0));
    let sxw = sxm(Hemisphere::West);
    let sp = m.position(sxw);
    let kvh = h / s.group;
    let a0 = off + la;
    let mut acc = vx(b, m, off, fconst(0.0), &[], Dir::East)?;
    for d in 0..s.hd {
        let ad = a0 + la * Cycle::from(d);
        let cd = ad - la;
        let i = h * s.hd + d;
        let tb = cd - lb - m.hops(sp, m.vxm);
        let qw = b.read(m, &q.slices, q.addr + i / LANES, sp, tb)?;
        let qb = sx(b, m, sxw, tb, bcast(i % LANES), qw)?;
        let row = kvh * s.hd + d;
        let kw = b.read(
            m,
            &kcache.slices,
            kcache.addr + row * (s.kw + 1) + ww,
            m.vxm,
            cd,
        )?;
        let prod = vx(b, m, cd, FMUL, &[("a", qb), ("b", kw)], Dir::West)?;
        acc = vx(b, m, ad, FADD, &[("a", acc), ("b", prod)], Dir::East)?;
    }
    let end = a0 + la * Cycle::from(s.hd);
    let sc = vx(b, m, end - la, fconst(scale), &[], Dir::West)?;
    let x = vx(b, m, end, FMUL, &[("a", acc), ("b", sc)], Dir::West)?;
    let mk = b.read(m, &mask.0.slices, mask.1, m.vxm, end + la)?;
    let (buf, addr) = scratch.word(s, h, ww);
    let out = vx(b, m, end + la, FADD, &[("a", x), ("b", mk)], dir_to(buf))?;
    b.write(m, out, &buf.slices, addr)?;
    Ok(end + 2 * la)
}

/// The local cycle from which a value that left the VXM on `u` and was
/// written to `keep` on its way can be read back to arrive at the VXM.
fn keep_ready(m: &Mach, keep: &Buffer, u: Cycle) -> Cycle {
    keep.slices
        .iter()
        .map(|&q| {
            let h = m.hops(m.vxm, m.position(q));
            u + 2 * h + m.write_latency + m.read_latency
        })
        .max()
        .unwrap_or(u)
}

/// Softmax of head `h`'s scores (in place in the scratch: scores, then
/// `e`, then `p`). The max and the contract's lane sum are the shared
/// lane reductions ([`Reducer`]: a few tree levels a round trip, on both
/// SXMs, the result on every lane); `m` and `inv` reach the words through
/// the head's `keep` word. Returns the local cycle the last `p` leaves the
/// VXM.
#[expect(clippy::too_many_arguments, reason = "the chain's inputs")]
fn softmax_chain(
    b: &mut Bundle,
    m: &Mach,
    s: &Shape,
    off: Cycle,
    h: u32,
    scratch: &Scratch,
    max: &Reducer,
    sum: &Reducer,
) -> Result<Cycle, SchedError> {
    let la = m.latency(&FADD);
    let lsp = m.latency(&FEXP);
    let ld = m.latency(&FDIV);
    let lc = fconst_latency(m);
    let keep = &scratch.keep;
    let kaddr = keep.addr + h;
    // m: the max over every lane of every word (-inf past the context).
    let (mx, tm) = max.build(
        b,
        m,
        off,
        s.w,
        f32::NEG_INFINITY,
        &mut |b, ww, t| {
            let (buf, addr) = scratch.word(s, h, ww);
            b.read(m, &buf.slices, addr, m.vxm, t)
        },
        dir_to(keep),
    )?;
    b.write(m, mx, &keep.slices, kaddr)?;
    // e = exp(x - m), written over the scores, each word entering the
    // lane sum (`fconst 0`, `fadd` per word, then the tree) as it leaves
    // the VXM.
    let t1 = keep_ready(m, keep, tm);
    let (sv, ts) = sum.build(
        b,
        m,
        t1 + la + lsp - lc,
        s.w,
        0.0,
        &mut |b, ww, t| {
            let tw = t - lsp - la;
            let (buf, addr) = scratch.word(s, h, ww);
            let xw = b.read(m, &buf.slices, addr, m.vxm, tw)?;
            let mw = b.read(m, &keep.slices, kaddr, m.vxm, tw)?;
            let dw = vx(b, m, tw, FSUB, &[("a", xw), ("b", mw)], Dir::West)?;
            let ew = vx(b, m, tw + la, FEXP, &[("a", dw)], dir_to(buf))?;
            b.write(m, ew, &buf.slices, addr)?;
            Ok(ew)
        },
        Dir::East,
    )?;
    // inv = 1 / s on every lane; p = e * inv over the e words.
    let one = fconst_at(b, m, ts, 1.0, Dir::West)?;
    let inv = vx(b, m, ts, FDIV, &[("a", one), ("b", sv)], Dir::East)?;
    let ui = ts + ld;
    let mut end = ui + la;
    let (buf0, addr0) = scratch.word(s, h, 0);
    let e0 = b.read(m, &buf0.slices, addr0, m.vxm, ui)?;
    let p0 = vx(b, m, ui, FMUL, &[("a", e0), ("b", inv)], dir_to(buf0))?;
    b.write(m, p0, &buf0.slices, addr0)?;
    if s.w > 1 {
        b.write(m, inv, &keep.slices, kaddr)?;
        let t2 = keep_ready(m, keep, ui);
        for ww in 1..s.w {
            let tw = t2 + Cycle::from(ww - 1);
            let (buf, addr) = scratch.word(s, h, ww);
            let ew = b.read(m, &buf.slices, addr, m.vxm, tw)?;
            let iw = b.read(m, &keep.slices, kaddr, m.vxm, tw)?;
            let pw = vx(b, m, tw, FMUL, &[("a", ew), ("b", iw)], dir_to(buf))?;
            b.write(m, pw, &buf.slices, addr)?;
            end = end.max(tw + la);
        }
    }
    Ok(end)
}

/// (first position, count) of every block of positions packed in one
/// word: `blk` positions, never across a word of p.
fn pack_blocks(s: &Shape) -> Vec<(u32, u32)> {
    let mut v = Vec::new();
    let mut t0 = 0;
    while t0 < s.ctx {
        let word_end = (t0 / LANES + 1) * LANES;
        let len = s.blk.min(word_end - t0).min(s.ctx - t0);
        v.push((t0, len));
        t0 += len;
    }
    v
}

/// Where the stripes of the attention output live in obuf: stripe `r` of
/// output (group member `j`, V word `vw`) in `bufs[side(j) ^ (r % 2)]`
/// ([`packed_side`]), word `base + (j * wv + vw) * 2 + r / 2`. Two slots
/// of a chain add on the same cycles (one per SXM: opposite sides), and
/// the sum of the stripes reads two consecutive stripes on one cycle, so
/// neither ever finds both words in one slice.
struct Stripes<'a> {
    bufs: [&'a Buffer; 2],
    base: u32,
    wv: u32,
    la: Cycle,
}

impl Stripes<'_> {
    fn at(&self, j: u32, vw: u32, r: usize) -> (&Buffer, u32) {
        let buf = self.bufs[packed_side(j, self.la) ^ (r % 2)];
        let word = self.base + (j * self.wv + vw) * 2 + (r / 2) as u32;
        (buf, buf.addr + word)
    }
}

/// Group members an output chain serves at once: two per SXM cycle (even
/// slots on sxm.w, odd on sxm.e), for at most `alu_latency` cycles a
/// position, so that each stripe's adds can follow one another.
fn set_size(la: Cycle) -> u32 {
    let la = u32::try_from(la).unwrap_or(u32::MAX);
    2 * la.clamp(1, ATTN_STRIPES as u32)
}

/// The sets of group members (consecutive, [`set_size`] at most) whose
/// outputs one chain computes together.
fn member_sets(s: &Shape, la: Cycle) -> Vec<Vec<u32>> {
    let n = set_size(la);
    (0..s.group)
        .collect::<Vec<_>>()
        .chunks(n as usize)
        .map(<[u32]>::to_vec)
        .collect()
}

/// Which packed buffer (0: read by sxm.w, 1: by sxm.e) holds group member
/// `j`'s packed words: its slot's parity in its member set.
fn packed_side(j: u32, la: Cycle) -> usize {
    ((j % set_size(la)) % 2) as usize
}

/// How an output chain of `n` group members runs: each position takes `c =
/// ceil(n / 2)` SXM cycles (slot `s` on SXM `s % 2`, `s / 2` cycles in);
/// positions are `step = la / per` cycles apart, `per` the stripes a
/// sub-chain carries (the largest of 4, 2, 1 dividing `la` with
/// `la / per >= c`), so that stripe `r`'s next add comes exactly `la`
/// cycles after its last: the add's result passes the VXM once, on that
/// cycle. The
/// `ATTN_STRIPES / per` sub-chains take the positions `t` with `t %
/// subchains == k`.
#[derive(Clone, Copy, Debug)]
struct OutPlan {
    per: u32,
    step: Cycle,
}

impl OutPlan {
    fn new(n: u32, la: Cycle) -> OutPlan {
        let c = Cycle::from(n.div_ceil(2).max(1));
        let per = [4u32, 2, 1]
            .into_iter()
            .find(|&per| la % Cycle::from(per) == 0 && la / Cycle::from(per) >= c)
            .unwrap_or(1);
        OutPlan {
            per,
            step: (la / Cycle::from(per)).max(c),
        }
    }

    fn subchains(&self) -> u32 {
        ATTN_STRIPES as u32 / self.per
    }
}

/// Output sub-chain `k` of V word `vw` for group members `js` (heads `kv *
/// group + j`, one per kv head, for each `j`), over the positions `t` of
/// `[t_a, t_b)` with `t % subchains == k`, ascending, one every
/// `plan.step` cycles: member `js[s]`'s stripe `t % 4` adds `p_t * v_t`
/// (lane `l` holding channel `c = 320 vw + l = kv * head_dim + d`, i.e.
/// head `kv * group + j`'s dim `d`; `p_t` of all of them comes from one
/// `permute` of the member's packed word). The stripes start at +0.0 in
/// the first segment and from obuf in later ones, and go back to obuf.
#[expect(clippy::too_many_arguments, reason = "one chain's inputs")]
fn output_chain(
    b: &mut Bundle,
    m: &Mach,
    s: &Shape,
    plan: &OutPlan,
    (vw, js, k): (u32, &[u32], u32),
    (t_a, t_b): (u32, u32),
    vcache: &Buffer,
    packed: &[Buffer; 2],
    blocks: &[(u32, u32)],
    unpack: &[TableId],
    stripes: &Stripes<'_>,
) -> Result<Cycle, SchedError> {
    let la = m.latency(&FADD);
    let lp = m.latency(&permute(TableId(0)));
    let sxq = [sxm(Hemisphere::West), sxm(Hemisphere::East)];
    let sp = sxq.map(|q| m.position(q));
    let dir = dir_to(stripes.bufs[0]);
    let a0: Cycle = 0;
    let sub = plan.subchains();
    let mut acc: BTreeMap<(usize, usize), (Val, Cycle)> = BTreeMap::new();
    let mut end = a0;
    let mut i: Cycle = 0;
    for (kb, &(t0, len)) in blocks.iter().enumerate() {
        for r in 0..len {
            let t = t0 + r;
            if t < t_a || t >= t_b || t % sub != k {
                continue;
            }
            let base = a0 + plan.step * i;
            i += 1;
            let stripe = (t as usize) % ATTN_STRIPES;
            let mut vv: BTreeMap<Cycle, Val> = BTreeMap::new();
            for (slot, &j) in js.iter().enumerate() {
                let side = slot % 2;
                let ct = base + (slot / 2) as Cycle;
                let tp = ct - lp - m.hops(sp[side], m.vxm);
                let pk = &packed[side];
                let addr = pk.addr + j * blocks.len() as u32 + kb as u32;
                let pw = b.read(m, &pk.slices, addr, sp[side], tp)?;
                let pb = sx(b, m, sxq[side], tp, permute(unpack[r as usize]), pw)?;
                let v = match vv.get(&ct) {
                    Some(&v) => v,
                    None => {
                        let row = vcache.addr + t * s.wv + vw;
                        let v = b.read(m, &vcache.slices, row, m.vxm, ct)?;
                        vv.insert(ct, v);
                        v
                    }
                };
                let prod = vx(b, m, ct, FMUL, &[("a", pb), ("b", v)], Dir::West)?;
                let at = ct + la;
                let prev = match acc.get(&(slot, stripe)) {
                    Some(&(v, ready)) if ready == at => v,
                    Some(&(_, ready)) => {
                        return Err(SchedError::Kernel {
                            label: b.label.clone(),
                            message: format!(
                                "attention output: stripe {stripe} ready on {ready}, added on {at}"
                            ),
                        });
                    }
                    None if t_a == 0 => vx(b, m, at - la, fconst(0.0), &[], dir)?,
                    None => {
                        let (buf, addr) = stripes.at(j, vw, stripe);
                        b.read(m, &buf.slices, addr, m.vxm, at)?
                    }
                };
                let sum = vx(b, m, at, FADD, &[("a", prev), ("b", prod)], dir)?;
                acc.insert((slot, stripe), (sum, at + la));
                end = end.max(at + la);
            }
        }
    }
    for ((slot, stripe), (v, _)) in acc {
        let (buf, addr) = stripes.at(js[slot], vw, stripe);
        b.write(m, v, &buf.slices, addr)?;
    }
    Ok(end)
}
