//! Rotary position embedding (docs/q35-format.md 8.4,
//! `semantics::rope_in_place`: adjacent pairs), bit-exact.
//!
//! # Layout and why it is exact
//!
//! A position takes `P = head_dim / gcd(320, head_dim)` table words
//! ([`rope_words`]: 1 when `head_dim` divides 320, as SmolLM2's 64; 2 for
//! Llama's 128). `cos` and `sin` are f32 tables of `P * ctx` words (4
//! slices), word-major: row `w * ctx + t` is word `w` of position `t`, and
//! its lane `l` stands for channel `c = 320 w + l` of a head vector laid out
//! naturally, pair `i = (c % head_dim) / 2`: `C[l] = cos_i`, `S[l] = -sin_i`
//! on even lanes and `+sin_i` on odd lanes ([`rope_tables`]). Because `320
//! P` is a multiple of `head_dim`, word `k` of `x` (channels `320 k ..`,
//! any number of heads, a head possibly straddling two words) sees exactly
//! the pattern of table word `k % P`. With `swap(x)` exchanging lanes `2i`
//! and `2i + 1` (an SXM `permute`; `head_dim` and 320 are even, so a pair
//! never straddles a word), the kernel computes `y = x * C + swap(x) * S`
//! (`fmul`, `fmul`, `fadd(x*C, swap(x)*S)`). For pair `(a, b) = (x[2i],
//! x[2i+1])` the contract asks `y0 = a*c - b*s`, `y1 = a*s + b*c`:
//!
//! - even lane: `a*c + b*(-s)`. IEEE multiplication rounds the exact
//!   product and rounding to nearest-even is symmetric, so `b*(-s) =
//!   -(b*s)` bit for bit (zeros and infinities included); and IEEE defines
//!   `p - q` as `p + (-q)`, so `a*c + (-(b*s)) = a*c - b*s` exactly.
//! - odd lane: `b*c + a*s`; IEEE addition is commutative, so this is
//!   `a*s + b*c` exactly.
//!
//! # Bundles
//!
//! 1. Row `w * ctx + pos` of each table for each `w < P` (one bundle
//!    each): `pos_idx` (u16, every lane = pos) is read towards the SXM of
//!    the table's hemisphere, which sends it back unchanged (`shift` by 0)
//!    so that it passes every slice of that hemisphere in the direction the
//!    gathered bytes flow: the four `gather`s (one per byte plane, lane `l`
//!    = byte `l` of word `base + w * ctx + pos`) then travel together, and
//!    are written to a scratch word in the other hemisphere
//!    (`<label>.rope_c`, `<label>.rope_s`, `P` words each).
//! 2. Per word `k` of `x` (pipelined one cycle apart in one bundle,
//!    `reduce::place_words`): `x` is read towards its hemisphere's SXM and
//!    swapped there (`permute` with the map `l -> l ^ 1`), read again to
//!    meet it at the VXM with rows `k % P` of the two scratch words; `y` is
//!    written.

use q35_contract::rope::RopeTable;
use q35_isa::{DType, Dir, ElemWidth, Hemisphere, Instruction, Stream};

use crate::alloc::Buffer;
use crate::kernels::reduce::{
    FADD, FMUL, at_vxm, hemisphere, place_words, scratch, sxm_op, sxm_queue, vx,
};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::Cycle;
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, SchedError};

const S: Stream = Stream::east(0);

/// The RoPE tables cannot be laid out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RopeTableError {
    /// `head_dim` is odd or zero.
    #[error("rope tables: head_dim {head_dim} must be even and non-zero ({lanes} lanes)")]
    HeadDim {
        /// The head size asked for.
        head_dim: usize,
        /// Lanes of a vector.
        lanes: u32,
    },
    /// The contract's table was built for another head size.
    #[error("rope tables: the RopeTable has head_dim {table}, the model {head_dim}")]
    Mismatch {
        /// The table's head size.
        table: usize,
        /// The head size asked for.
        head_dim: usize,
    },
    /// The contract's table has fewer positions than the context.
    #[error("rope tables: the RopeTable has {have} positions, the context needs {need}")]
    Positions {
        /// Positions in the table.
        have: usize,
        /// The compiled context.
        need: usize,
    },
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Table words per position for `head_dim`: `head_dim / gcd(320,
/// head_dim)`, the period (in words) of the lane pattern (1 when
/// `head_dim` divides 320). An error for an odd or zero `head_dim`.
pub fn rope_words(head_dim: usize) -> Result<usize, RopeTableError> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(RopeTableError::HeadDim {
            head_dim,
            lanes: LANES,
        });
    }
    Ok(head_dim / gcd(LANES as usize, head_dim))
}

/// The RoPE tables of a compiled context (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RopeTables {
    /// Words per position (`P`, [`rope_words`]).
    pub words: usize,
    /// The f32 bits of `cos`: `words * ctx` rows of 320 lanes, row `w * ctx
    /// + t` at elements `(w * ctx + t) * 320 ..`.
    pub cos: Vec<u32>,
    /// The f32 bits of `sin` (signed per lane), same layout.
    pub sin: Vec<u32>,
}

/// The `cos` and `sin` tables (word-major, `P * ctx` words of 320 lanes
/// each; see the module doc) for positions `0 .. ctx` of `table`, to
/// initialise MEM with, and `P`, the words a position takes.
pub fn rope_tables(
    table: &RopeTable,
    head_dim: usize,
    ctx: usize,
) -> Result<RopeTables, RopeTableError> {
    let words = rope_words(head_dim)?;
    if table.head_dim() != head_dim {
        return Err(RopeTableError::Mismatch {
            table: table.head_dim(),
            head_dim,
        });
    }
    if table.positions() < ctx {
        return Err(RopeTableError::Positions {
            have: table.positions(),
            need: ctx,
        });
    }
    let lanes = LANES as usize;
    let mut cos = Vec::with_capacity(words * ctx * lanes);
    let mut sin = Vec::with_capacity(words * ctx * lanes);
    for w in 0..words {
        for t in 0..ctx {
            for l in 0..lanes {
                let c = w * lanes + l;
                let (cv, sv) = table.get(t, (c % head_dim) / 2);
                cos.push(cv.to_bits());
                sin.push(if l % 2 == 0 { -sv } else { sv }.to_bits());
            }
        }
    }
    Ok(RopeTables { words, cos, sin })
}

/// Gathers row `first + pos` of `table` (the index `pos_idx`, u16 on 2
/// slices) and writes it to word `dst_word` of `dst` (a scratch buffer in
/// the other hemisphere), in `b`.
fn gather_row(
    b: &mut Bundle,
    m: &crate::machine::Mach,
    pos_idx: &Buffer,
    (table, first): (&Buffer, u32),
    (dst, dst_word): (&Buffer, u32),
) -> Result<(), SchedError> {
    let h = hemisphere(table);
    let sxm = m.position(sxm_queue(h));
    let idx = b.read(m, &pos_idx.slices, pos_idx.addr, sxm, 0)?;
    let idx = sxm_op(
        b,
        m,
        h,
        Instruction::Shift {
            src: S,
            dst: S,
            n: 0,
            w: LANES,
            ew: ElemWidth::B2,
        },
        idx,
    )?;
    let dir = if sxm < m.vxm { Dir::East } else { Dir::West };
    let slot = b.slot(dir, table.slices.len() as u8);
    for (j, &slice) in table.slices.iter().enumerate() {
        let pos = m.position(slice);
        let Some(issue) = b.arrival(m, idx, pos) else {
            return Err(SchedError::Kernel {
                label: b.label.clone(),
                message: format!("the rope index never passes {slice}"),
            });
        };
        let t = issue + m.read_latency + m.hops(pos, m.vxm);
        let v = b.gather_into(
            m,
            slice,
            idx,
            table.addr + first,
            (table.addr, table.addr + table.words),
            m.vxm,
            t,
            slot,
            j as u8,
        )?;
        b.write(m, v, &[dst.slices[j]], dst.addr + dst_word)?;
    }
    Ok(())
}

/// Rotates `heads` heads of `head_dim` f32 values in `x` (natural layout,
/// `ceil(heads * head_dim / 320)` words) at the position held by `pos_idx`
/// (u16, 2 slices, every lane = pos), with the tables `cos` and `sin`
/// ([`rope_tables`] layout, 4 slices each, [`rope_words`] words per
/// position, word-major: their `words` must be a multiple of it), into
/// `y` (same layout as `x`; its padding lanes are `x`'s padding rotated,
/// i.e. zeros of either sign when `x`'s are zeros). Returns the last cycle
/// used.
#[expect(
    clippy::too_many_arguments,
    reason = "the op's operands, as every kernel takes them"
)]
pub fn rope(
    p: &mut ProgramBuilder,
    label: &str,
    x: &Buffer,
    y: &Buffer,
    heads: u32,
    head_dim: u32,
    pos_idx: &Buffer,
    cos: &Buffer,
    sin: &Buffer,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let kerr = |message: String| SchedError::Kernel {
        label: label.to_string(),
        message,
    };
    let per_pos = rope_words(head_dim as usize).map_err(|e| kerr(e.to_string()))? as u32;
    if cos.words != sin.words || !cos.words.is_multiple_of(per_pos) {
        return Err(kerr(format!(
            "rope tables of {} and {} words: both must be {per_pos} words a position",
            cos.words, sin.words
        )));
    }
    let ctx = cos.words / per_pos;
    let words = (heads * head_dim).div_ceil(LANES);
    // Table words this x uses (fewer than P when x is short).
    let used = per_pos.min(words);
    let other = |buf: &Buffer| match hemisphere(buf) {
        Hemisphere::West => Hemisphere::East,
        Hemisphere::East => Hemisphere::West,
    };
    let rows = u64::from(used * LANES);
    let c_row = scratch(p, label, "rope_c", DType::F32, rows, other(cos))?;
    let s_row = scratch(p, label, "rope_s", DType::F32, rows, other(sin))?;
    let swap = p.table("rope_swap", (0..LANES as u16).map(|l| l ^ 1).collect());
    let m = p.mach().clone();
    let mut last = not_before;
    for w in 0..used {
        for (table, row) in [(cos, &c_row), (sin, &s_row)] {
            let mut b = Bundle::new(label);
            gather_row(&mut b, &m, pos_idx, (table, w * ctx), (row, w))?;
            last = last.max(p.sched.place(b, not_before)?.last);
        }
    }
    let hx = hemisphere(x);
    let sxm = m.position(sxm_queue(hx));
    place_words(p, label, words, not_before, &mut |b, k, t0| {
        let xs = b.read(&m, &x.slices, x.addr + k, sxm, t0)?;
        let sw = sxm_op(
            b,
            &m,
            hx,
            Instruction::Permute {
                src: S,
                dst: S,
                map: swap,
                ew: ElemWidth::B4,
            },
            xs,
        )?;
        let t = at_vxm(b, &m, sw)?;
        let xv = to_vxm(b, &m, x, k, t)?;
        let cv = to_vxm(b, &m, &c_row, k % per_pos, t)?;
        let sv = to_vxm(b, &m, &s_row, k % per_pos, t)?;
        let xc = vx(b, &m, t, FMUL, &[("a", xv), ("b", cv)], Dir::East)?;
        let ws = vx(b, &m, t, FMUL, &[("a", sw), ("b", sv)], Dir::East)?;
        let t = at_vxm(b, &m, xc)?;
        let out = vx(b, &m, t, FADD, &[("a", xc), ("b", ws)], dir_to(y))?;
        from_vxm(b, &m, out, y, k)
    })
    .map(|l| l.max(last))
}
