//! RMSNorm (docs/q35-format.md 8.4, `semantics::rmsnorm`), bit-exact:
//!
//! ```text
//! ss = lane_sum(x_i * x_i)        (products rounded, then the lane reduction)
//! mean = ss / n
//! r = 1 / sqrt(mean + eps)
//! y_i = (x_i * r) * w_i
//! ```
//!
//! One bundle computes `r` (the reduction of [`crate::kernels::reduce`]
//! with the squares as its per-word terms, then `fdiv`, `fadd`, `fsqrt`,
//! `fdiv` on every lane, `n` and `eps` from `fconst`) and writes it, on
//! every lane, to a scratch word `<label>.rms_r`; then the words of `y`,
//! pipelined one cycle apart in one bundle (`reduce::place_words`). The scheduler orders them through that word.

use q35_isa::{DType, Dir};

use crate::alloc::Buffer;
use crate::kernels::reduce::{
    FADD, FDIV, FMUL, FSQRT, ReduceOp, Reducer, at_vxm, fconst_at, hemisphere, place_words,
    scratch, vx,
};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::Cycle;
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, SchedError};

/// `y = rmsnorm(x) * weight` over `n` f32 elements (buffers of
/// `ceil(n / 320)` words, natural layout). The padding lanes of `x`'s last
/// word must be zeros (either sign; `lane_sum` pads with zeros), those of
/// `weight` zeros too, so that `y`'s padding is zero. Returns the last
/// cycle used.
#[expect(
    clippy::too_many_arguments,
    reason = "the op's operands, as every kernel takes them"
)]
pub fn rmsnorm(
    p: &mut ProgramBuilder,
    label: &str,
    x: &Buffer,
    weight: &Buffer,
    y: &Buffer,
    n: u32,
    eps: f32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let words = n.div_ceil(LANES);
    let r_buf = scratch(
        p,
        label,
        "rms_r",
        DType::F32,
        u64::from(LANES),
        hemisphere(y),
    )?;
    let red = Reducer::new(p, ReduceOp::Sum);
    let m = p.mach().clone();
    let mut b = Bundle::new(label);
    let fm = m.latency(&FMUL);
    let (ss, t) = red.build(
        &mut b,
        &m,
        0,
        words,
        0.0,
        &mut |b, k, t| {
            let xv = to_vxm(b, &m, x, k, t - fm)?;
            vx(b, &m, t - fm, FMUL, &[("a", xv), ("b", xv)], Dir::East)
        },
        Dir::East,
    )?;
    // mean = ss / n
    let nc = fconst_at(&mut b, &m, t, n as f32, Dir::East)?;
    let mean = vx(&mut b, &m, t, FDIV, &[("a", ss), ("b", nc)], Dir::East)?;
    // mean + eps
    let t = at_vxm(&b, &m, mean)?;
    let ec = fconst_at(&mut b, &m, t, eps, Dir::East)?;
    let s = vx(&mut b, &m, t, FADD, &[("a", mean), ("b", ec)], Dir::East)?;
    // sqrt
    let t = at_vxm(&b, &m, s)?;
    let sq = vx(&mut b, &m, t, FSQRT, &[("a", s)], Dir::East)?;
    // r = 1 / sqrt(..)
    let t = at_vxm(&b, &m, sq)?;
    let one = fconst_at(&mut b, &m, t, 1.0, Dir::East)?;
    let r = vx(
        &mut b,
        &m,
        t,
        FDIV,
        &[("a", one), ("b", sq)],
        dir_to(&r_buf),
    )?;
    from_vxm(&mut b, &m, r, &r_buf, 0)?;
    let last = p.sched.place(b, not_before)?.last;
    place_words(p, label, words, not_before, &mut |b, k, t0| {
        let xv = to_vxm(b, &m, x, k, t0)?;
        let rv = to_vxm(b, &m, &r_buf, 0, t0)?;
        let xr = vx(b, &m, t0, FMUL, &[("a", xv), ("b", rv)], Dir::East)?;
        let t = at_vxm(b, &m, xr)?;
        let wv = to_vxm(b, &m, weight, k, t)?;
        let yv = vx(b, &m, t, FMUL, &[("a", xr), ("b", wv)], dir_to(y))?;
        from_vxm(b, &m, yv, y, k)
    })
    .map(|l| l.max(last))
}
