//! Activation quantization, f32 side (docs/q35-format.md 8.1): one
//! token's `scale` and the f32 products `xs_i = x_i * inv` that the matmul
//! kernel turns into the int8 codes with `f32toi8` (round half away from
//! zero, clamp to +-127: exactly the contract's `q_i`).
//!
//! ```text
//! amax = max_i |x_i|                   (exact)
//! zero token (amax < 2^-120): scale = +0.0, xs_i = +0.0
//! else: scale = amax / 127, inv = 127 / amax, xs_i = x_i * inv
//! ```
//!
//! # How
//!
//! One bundle reduces `a* = max(theta, |x_i|...)` with the exact maximum of
//! [`crate::kernels::reduce`], starting from `theta = 2^-120 - 2^-144` (the
//! float just below 2^-120) instead of 0: for a non-zero token `a* = amax`;
//! for a zero token `a* = theta`, which keeps `127 / a*` finite. On the
//! cycle `a*` leaves the VXM (every lane) it feeds
//!
//! - `scale_raw = a* / 127`, `inv_raw = 127 / a*` (`fdiv`),
//! - `nz = theta < a*` (`fcmplt`: 1 exactly when `amax >= 2^-120`),
//!   written to the u8 scratch word `<label>.q_nz`, and turned into the f32
//!   `f = nz ? 1.0 : 0.0` (`select`), passed through `f + 0.0` until
//!   `scale_raw` is ready (values cannot wait on a stream);
//! - `scale = scale_raw * f` and `inv = inv_raw * f` (a product with 1.0 is
//!   exact, with +0.0 gives +0.0 since both are finite and positive),
//!   written to word 0 of `scale` and to the scratch word `<label>.q_inv`.
//!
//! Then the words, pipelined one cycle apart in one bundle
//! (`reduce::place_words`): `xs = select(nz, x, +0.0) * inv` (for a
//! non-zero token exactly `x_i * inv`, -0.0 included; for a zero token
//! `+0.0 * +0.0 = +0.0`).

use q35_isa::{DType, Dir};

use crate::alloc::Buffer;
use crate::kernels::reduce::{
    FABS, FADD, FCMPLT, FDIV, FMUL, ReduceOp, Reducer, SELECT, at_vxm, fconst_at, hemisphere,
    place_words, scratch, vx,
};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::Cycle;
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, SchedError};

/// The float just below `semantics::ACT_ZERO_BELOW` (2^-120): `theta < a`
/// is `a >= 2^-120`.
const THETA: f32 = f32::from_bits(q35_contract::semantics::ACT_ZERO_BELOW.to_bits() - 1);

/// Quantizes one token of `n` f32 values in `x` (natural layout, `ceil(n /
/// 320)` words, finite; its padding lanes zeros): writes `scale` (word 0,
/// every lane: `amax / 127`, or +0.0 for a zero token) and `xs` (f32,
/// natural layout, `x_i * (127 / amax)`; all +0.0 for a zero token; its
/// padding lanes are `x`'s padding times `inv`, i.e. zeros). A NaN in `x`
/// is ignored by the maximum (`fmax`), where the contract reports an
/// error. Returns the last cycle used.
pub fn quantize(
    p: &mut ProgramBuilder,
    label: &str,
    x: &Buffer,
    n: u32,
    xs: &Buffer,
    scale: &Buffer,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let words = n.div_ceil(LANES);
    let h = hemisphere(xs);
    let inv_buf = scratch(p, label, "q_inv", DType::F32, u64::from(LANES), h)?;
    let nz_buf = scratch(p, label, "q_nz", DType::U8, u64::from(LANES), h)?;
    let red = Reducer::new(p, ReduceOp::Max);
    let m = p.mach().clone();
    let mut b = Bundle::new(label);
    let fa = m.latency(&FABS);
    let (a, t) = red.build(
        &mut b,
        &m,
        0,
        words,
        THETA,
        &mut |b, k, t| {
            let xv = to_vxm(b, &m, x, k, t - fa)?;
            vx(b, &m, t - fa, FABS, &[("a", xv)], Dir::East)
        },
        Dir::East,
    )?;
    let c127 = fconst_at(&mut b, &m, t, 127.0, Dir::East)?;
    let th = fconst_at(&mut b, &m, t, THETA, Dir::East)?;
    let scale_raw = vx(&mut b, &m, t, FDIV, &[("a", a), ("b", c127)], Dir::East)?;
    let inv_raw = vx(&mut b, &m, t, FDIV, &[("a", c127), ("b", a)], Dir::East)?;
    let nz = vx(
        &mut b,
        &m,
        t,
        FCMPLT,
        &[("a", th), ("b", a)],
        dir_to(&nz_buf),
    )?;
    from_vxm(&mut b, &m, nz, &nz_buf, 0)?;
    let t = at_vxm(&b, &m, nz)?;
    let one = fconst_at(&mut b, &m, t, 1.0, Dir::East)?;
    let zero = fconst_at(&mut b, &m, t, 0.0, Dir::East)?;
    let mut f = vx(
        &mut b,
        &m,
        t,
        SELECT,
        &[("m", nz), ("a", one), ("b", zero)],
        Dir::East,
    )?;
    let ready = at_vxm(&b, &m, scale_raw)?;
    let mut tf = at_vxm(&b, &m, f)?;
    while tf < ready {
        let zero = fconst_at(&mut b, &m, tf, 0.0, Dir::East)?;
        f = vx(&mut b, &m, tf, FADD, &[("a", f), ("b", zero)], Dir::East)?;
        tf = at_vxm(&b, &m, f)?;
    }
    if tf != ready {
        return Err(SchedError::Kernel {
            label: label.to_string(),
            message: format!(
                "the zero-token mask is ready on cycle {tf}, the scale on {ready}: \
                 the target's divide latency is not the mask path's plus a multiple of the ALU latency"
            ),
        });
    }
    let sv = vx(
        &mut b,
        &m,
        tf,
        FMUL,
        &[("a", scale_raw), ("b", f)],
        dir_to(scale),
    )?;
    from_vxm(&mut b, &m, sv, scale, 0)?;
    let iv = vx(
        &mut b,
        &m,
        tf,
        FMUL,
        &[("a", inv_raw), ("b", f)],
        dir_to(&inv_buf),
    )?;
    from_vxm(&mut b, &m, iv, &inv_buf, 0)?;
    let last = p.sched.place(b, not_before)?.last;
    place_words(p, label, words, not_before, &mut |b, k, t0| {
        let xv = to_vxm(b, &m, x, k, t0)?;
        let nzv = to_vxm(b, &m, &nz_buf, 0, t0)?;
        let zero = fconst_at(b, &m, t0, 0.0, Dir::East)?;
        let xsel = vx(
            b,
            &m,
            t0,
            SELECT,
            &[("m", nzv), ("a", xv), ("b", zero)],
            Dir::East,
        )?;
        let t = at_vxm(b, &m, xsel)?;
        let invv = to_vxm(b, &m, &inv_buf, 0, t)?;
        let out = vx(b, &m, t, FMUL, &[("a", xsel), ("b", invv)], dir_to(xs))?;
        from_vxm(b, &m, out, xs, k)
    })
    .map(|l| l.max(last))
}
