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
//! One bundle, no MEM scratch. It reduces `a* = max(theta, |x_i|...)` with
//! the exact maximum of [`crate::kernels::reduce`], starting from `theta =
//! 2^-120 - 2^-144` (the float just below 2^-120) instead of 0: for a
//! non-zero token `a* = amax`; for a zero token `a* = theta`, which keeps
//! `127 / a*` finite. On the cycle `a*` leaves the VXM (every lane) it feeds
//! `scale_raw = a* / 127` and `inv = 127 / a*` (`fdiv`), and `a*` is kept
//! at the VXM by `fmax a, a` copies (exact) to recompute the zero-token
//! mask `nz = theta < a*` (`fcmplt`: 1 exactly when `amax >= 2^-120`)
//! where it is needed:
//!
//! - `scale = select(nz, scale_raw, +0.0)`, written to word 0 of `scale`;
//! - per word `k` (one every ALU latency: the words share slices), `x_k`
//!   read again from MEM, `xs_k = select(nz, x_k * inv, +0.0)` (for a
//!   non-zero token exactly `x_i * inv`, -0.0 included; for a zero token
//!   +0.0), written to word `k` of `xs`.
//!
//! [`build_quantize`] takes the per-word terms `|x_k|` from its caller, so
//! a producer can feed them straight from the VXM (the fused RMSNorm +
//! quantize of [`crate::kernels::norm::rmsnorm_quantize`]).

use q35_isa::Dir;

use crate::alloc::Buffer;
use crate::kernels::reduce::{
    FABS, FCMPLT, FDIV, FMUL, ReduceOp, Reducer, SELECT, Term, at_vxm, delay, fconst_at, vx,
};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::{Cycle, Mach};
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, SchedError, Val};

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
    let red = Reducer::new(p, ReduceOp::Max);
    let m = p.mach().clone();
    let fa = m.latency(&FABS);
    let mut conflict = String::new();
    for gap in 1..=MAX_GAP {
        let mut b = Bundle::new(label);
        build_quantize(
            &mut b,
            &m,
            &red,
            0,
            words,
            &mut |b, k, t| {
                let xv = to_vxm(b, &m, x, k, t - fa)?;
                vx(b, &m, t - fa, FABS, &[("a", xv)], Dir::East)
            },
            x,
            xs,
            scale,
            gap,
        )?;
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

/// Largest spacing (in ALU latencies) tried between the words of a
/// kernel's last phase when its buffers share slices and the accesses of
/// two words would collide.
pub(crate) const MAX_GAP: Cycle = 8;

/// Adds the quantization of the `words` words of `x` to `b`: the maximum
/// `red` (a [`ReduceOp::Max`] reducer) with its `fconst` at local cycle
/// `t0` over the terms `term(b, k, t)` (`|x_k|` at the VXM on `t`), then
/// `scale` and `xs` as the module doc says (`x` is read again for the
/// products, long after the terms; a caller that writes `x` in the same
/// bundle checks the order with [`read_after_write`]). The words of `xs`
/// are `gap` ALU latencies apart.
#[expect(
    clippy::too_many_arguments,
    reason = "the op's operands, as every kernel takes them"
)]
pub(crate) fn build_quantize(
    b: &mut Bundle,
    m: &Mach,
    red: &Reducer,
    t0: Cycle,
    words: u32,
    term: &mut Term<'_>,
    x: &Buffer,
    xs: &Buffer,
    scale: &Buffer,
    gap: Cycle,
) -> Result<(), SchedError> {
    let (a, t) = red.build(b, m, t0, words, THETA, term, Dir::East)?;
    let c127 = fconst_at(b, m, t, 127.0, Dir::East)?;
    let scale_raw = vx(b, m, t, FDIV, &[("a", a), ("b", c127)], Dir::East)?;
    let inv = vx(b, m, t, FDIV, &[("a", c127), ("b", a)], Dir::East)?;
    let ts = at_vxm(b, m, scale_raw)?;
    let lat = m.latency(&FMUL);
    let cmp = m.latency(&FCMPLT);
    // nz on cycle `at`, from a copy of a* kept at the VXM until `at - cmp`.
    let mut a_kept = (a, t);
    let mut nz_at = |b: &mut Bundle, at: Cycle| -> Result<Val, SchedError> {
        let v = delay(b, m, a_kept.0, a_kept.1, at - cmp)?;
        a_kept = (v, at - cmp);
        let th = fconst_at(b, m, at - cmp, THETA, Dir::East)?;
        vx(b, m, at - cmp, FCMPLT, &[("a", th), ("b", v)], Dir::East)
    };
    let sel = |b: &mut Bundle, at: Cycle, v: Val, nz: Val, dir: Dir| {
        let zero = fconst_at(b, m, at, 0.0, Dir::East)?;
        vx(b, m, at, SELECT, &[("m", nz), ("a", v), ("b", zero)], dir)
    };
    let nz = nz_at(b, ts)?;
    let sv = sel(b, ts, scale_raw, nz, dir_to(scale))?;
    from_vxm(b, m, sv, scale, 0)?;
    let mut inv_k = (inv, ts);
    for k in 0..words {
        let tk = ts + Cycle::from(k) * lat * gap;
        let iv = delay(b, m, inv_k.0, inv_k.1, tk)?;
        inv_k = (iv, tk);
        let xv = to_vxm(b, m, x, k, tk)?;
        let prod = vx(b, m, tk, FMUL, &[("a", xv), ("b", iv)], Dir::East)?;
        let nz = nz_at(b, tk + lat)?;
        let out = sel(b, tk + lat, prod, nz, dir_to(xs))?;
        from_vxm(b, m, out, xs, k)?;
    }
    Ok(())
}

/// An error unless every read in `b` of a word `b` also writes comes at
/// least the write latency after that write (the scheduler orders MEM
/// through dependencies between bundles only).
pub(crate) fn read_after_write(b: &Bundle, m: &Mach) -> Result<(), SchedError> {
    use crate::sched::MemUse;
    let fp = b.footprint();
    for (_, tw, mw) in &fp {
        let Some(MemUse::Write { slice, addr }) = mw else {
            continue;
        };
        for (_, tr, mr) in &fp {
            if let Some(MemUse::Read { slice: s, addr: a }) = mr
                && s == slice
                && a == addr
                && *tr < tw + m.write_latency
            {
                return Err(SchedError::Kernel {
                    label: b.label.clone(),
                    message: format!(
                        "word {addr} of {slice} is read on local cycle {tr}, before its write on {tw} is visible"
                    ),
                });
            }
        }
    }
    Ok(())
}
