//! RMSNorm (docs/q35-format.md 8.4, `semantics::rmsnorm`), bit-exact:
//!
//! ```text
//! ss = lane_sum(x_i * x_i)        (products rounded, then the lane reduction)
//! mean = ss / n
//! r = 1 / sqrt(mean + eps)
//! y_i = (x_i * r) * w_i
//! ```
//!
//! One bundle, no MEM scratch: the reduction of [`crate::kernels::reduce`]
//! with the squares as its per-word terms, then `fdiv`, `fadd`, `fsqrt`,
//! `fdiv` on every lane (`n` and `eps` from `fconst`) give `r` at the VXM;
//! `r` stays there as `fmax r, r` copies (exact), one ALU latency apart,
//! to meet the words of `x` (one every ALU latency: they share slices)
//! and then those of `w`.
//!
//! [`rmsnorm_quantize`] fuses the quantization of `y` that follows every
//! RMSNorm in a decode step: the words `y_k` feed the quantize's maximum
//! on the cycle they leave the VXM (as well as being written to `y`),
//! with no MEM round trip between the two ops.

use q35_isa::Dir;

use crate::alloc::Buffer;
use crate::kernels::quantize::{MAX_GAP, build_quantize, read_after_write};
use crate::kernels::reduce::{
    FABS, FADD, FDIV, FMUL, FSQRT, ReduceOp, Reducer, at_vxm, delay, fconst_at, fconst_latency, vx,
};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::{Cycle, Mach};
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, SchedError, Val};

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
    let red = Reducer::new(p, ReduceOp::Sum);
    let m = p.mach().clone();
    let lat = m.latency(&FMUL);
    let mut conflict = String::new();
    for gap in 1..=MAX_GAP {
        let mut b = Bundle::new(label);
        let mut r = rms_r(&mut b, &m, &red, x, n, eps)?;
        for k in 0..words {
            let t = r.1 + Cycle::from(k.min(1)) * lat * gap;
            r = (delay(&mut b, &m, r.0, r.1, t)?, t);
            y_word(&mut b, &m, x, weight, y, k, r)?;
        }
        match b.self_conflict(&m) {
            None => return Ok(p.sched.place(b, not_before)?.last.max(not_before)),
            Some(why) => conflict = why,
        }
    }
    Err(SchedError::Kernel {
        label: label.to_string(),
        message: format!("the operands' slices collide inside the kernel: {conflict}"),
    })
}

/// [`rmsnorm`] of `x` into `y` followed by
/// [`crate::kernels::quantize::quantize`] of `y` into `xs` and `scale`, in
/// one bundle (see the module doc): the same bits in `y`, `xs` and `scale`
/// as the two kernels one after the other (which it falls back to when
/// buffers sharing slices would collide inside the bundle). Returns the
/// last cycle used.
#[expect(
    clippy::too_many_arguments,
    reason = "the two ops' operands, as every kernel takes them"
)]
pub fn rmsnorm_quantize(
    p: &mut ProgramBuilder,
    label: &str,
    x: &Buffer,
    weight: &Buffer,
    y: &Buffer,
    n: u32,
    eps: f32,
    xs: &Buffer,
    scale: &Buffer,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let words = n.div_ceil(LANES);
    let sum = Reducer::new(p, ReduceOp::Sum);
    let max = Reducer::new(p, ReduceOp::Max);
    let m = p.mach().clone();
    let mut b = Bundle::new(label);
    let (r, tr) = rms_r(&mut b, &m, &sum, x, n, eps)?;
    let (fm, fa) = (m.latency(&FMUL), m.latency(&FABS));
    // Term k (|y_k| at the VXM on t) needs r on t - fa - 2 fm; the first
    // term comes one fconst latency after the reduction's fconst.
    let lead = fa + 2 * fm;
    let t0 = tr + lead - fconst_latency(&m);
    let rk = (r, tr);
    let with_r = b.clone();
    let mut fused = None;
    for gap in 1..=MAX_GAP {
        let mut b = with_r.clone();
        let mut rk = rk;
        build_quantize(
            &mut b,
            &m,
            &max,
            t0,
            words,
            &mut |b, k, t| {
                let at = t - lead;
                rk = (delay(b, &m, rk.0, rk.1, at)?, at);
                let yv = y_word(b, &m, x, weight, y, k, rk)?;
                vx(b, &m, t - fa, FABS, &[("a", yv)], Dir::East)
            },
            y,
            xs,
            scale,
            gap,
        )?;
        if b.self_conflict(&m).is_none() {
            fused = Some(b);
            break;
        }
    }
    let Some(b) = fused else {
        // Buffers sharing slices collide inside the fused bundle: the two
        // kernels one after the other.
        let last = rmsnorm(p, label, x, weight, y, n, eps, not_before)?;
        return crate::kernels::quantize::quantize(p, label, y, n, xs, scale, not_before)
            .map(|q| q.max(last));
    };
    read_after_write(&b, &m)?;
    Ok(p.sched.place(b, not_before)?.last.max(not_before))
}

/// Adds `r = 1 / sqrt(lane_sum(x_i^2) / n + eps)` to `b` (the reduction's
/// `fconst` on local cycle 0); returns `r` (every lane) and the cycle it
/// is at the VXM.
fn rms_r(
    b: &mut Bundle,
    m: &Mach,
    red: &Reducer,
    x: &Buffer,
    n: u32,
    eps: f32,
) -> Result<(Val, Cycle), SchedError> {
    let words = n.div_ceil(LANES);
    let fm = m.latency(&FMUL);
    let (ss, t) = red.build(
        b,
        m,
        0,
        words,
        0.0,
        &mut |b, k, t| {
            let xv = to_vxm(b, m, x, k, t - fm)?;
            vx(b, m, t - fm, FMUL, &[("a", xv), ("b", xv)], Dir::East)
        },
        Dir::East,
    )?;
    // mean = ss / n
    let nc = fconst_at(b, m, t, n as f32, Dir::East)?;
    let mean = vx(b, m, t, FDIV, &[("a", ss), ("b", nc)], Dir::East)?;
    // mean + eps
    let t = at_vxm(b, m, mean)?;
    let ec = fconst_at(b, m, t, eps, Dir::East)?;
    let s = vx(b, m, t, FADD, &[("a", mean), ("b", ec)], Dir::East)?;
    // sqrt
    let t = at_vxm(b, m, s)?;
    let sq = vx(b, m, t, FSQRT, &[("a", s)], Dir::East)?;
    // r = 1 / sqrt(..)
    let t = at_vxm(b, m, sq)?;
    let one = fconst_at(b, m, t, 1.0, Dir::East)?;
    let r = vx(b, m, t, FDIV, &[("a", one), ("b", sq)], Dir::East)?;
    Ok((r, at_vxm(b, m, r)?))
}

/// `y_k = (x_k * r) * w_k` with `r` at the VXM on `r.1` (word `k` of `x`
/// read to meet it), written to word `k` of `y`; returns `y_k`, which is
/// at the VXM two multiplications later.
fn y_word(
    b: &mut Bundle,
    m: &Mach,
    x: &Buffer,
    weight: &Buffer,
    y: &Buffer,
    k: u32,
    r: (Val, Cycle),
) -> Result<Val, SchedError> {
    let xv = to_vxm(b, m, x, k, r.1)?;
    let xr = vx(b, m, r.1, FMUL, &[("a", xv), ("b", r.0)], Dir::East)?;
    let t = at_vxm(b, m, xr)?;
    let wv = to_vxm(b, m, weight, k, t)?;
    let yv = vx(b, m, t, FMUL, &[("a", xr), ("b", wv)], dir_to(y))?;
    from_vxm(b, m, yv, y, k)?;
    Ok(yv)
}
