//! SwiGLU (docs/q35-format.md 8.4, `semantics::swiglu`), bit-exact:
//! `y_i = silu(g_i) * u_i` with `silu(g) = g / (1 + exp(-g))`, in that
//! order: `fneg`, `fexp` (the contract's `exp`), `fadd(1.0, e)`,
//! `fdiv(g, d)`, `fmul(s, u)`. The words are pipelined one cycle apart in
//! one bundle (see `reduce::place_words`); `g` is read twice (values cannot
//! wait on a stream for the divide).

use q35_isa::Dir;

use crate::alloc::Buffer;
use crate::kernels::reduce::{FADD, FDIV, FEXP, FMUL, FNEG, at_vxm, fconst_at, place_words, vx};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::Cycle;
use crate::program::{LANES, ProgramBuilder};
use crate::sched::SchedError;

/// `y = silu(gate) * up` over `n` f32 elements (buffers of `ceil(n / 320)`
/// words, natural layout; padding lanes of zeros give zeros). Returns the
/// last cycle used.
pub fn swiglu(
    p: &mut ProgramBuilder,
    label: &str,
    gate: &Buffer,
    up: &Buffer,
    y: &Buffer,
    n: u32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let m = p.mach().clone();
    place_words(p, label, n.div_ceil(LANES), not_before, &mut |b, k, t0| {
        let g = to_vxm(b, &m, gate, k, t0)?;
        let ng = vx(b, &m, t0, FNEG, &[("a", g)], Dir::East)?;
        let t = at_vxm(b, &m, ng)?;
        let e = vx(b, &m, t, FEXP, &[("a", ng)], Dir::East)?;
        let t = at_vxm(b, &m, e)?;
        let one = fconst_at(b, &m, t, 1.0, Dir::East)?;
        let d = vx(b, &m, t, FADD, &[("a", one), ("b", e)], Dir::East)?;
        let t = at_vxm(b, &m, d)?;
        let g2 = to_vxm(b, &m, gate, k, t)?;
        let s = vx(b, &m, t, FDIV, &[("a", g2), ("b", d)], Dir::East)?;
        let t = at_vxm(b, &m, s)?;
        let u = to_vxm(b, &m, up, k, t)?;
        let out = vx(b, &m, t, FMUL, &[("a", s), ("b", u)], dir_to(y))?;
        from_vxm(b, &m, out, y, k)
    })
}
