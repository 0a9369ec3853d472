//! Point-wise f32 kernels over whole buffers (residual add, SwiGLU's
//! product, ...): one bundle per word, VXM queues chosen at placement.

use q35_isa::{Instruction, Stream};

use crate::alloc::Buffer;
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::Cycle;
use crate::program::ProgramBuilder;
use crate::sched::{Bundle, QSel, SchedError};

const S: Stream = Stream::east(0);

/// `out = a + b` over `words` words (docs/q35-format.md 8.4, residual add:
/// `h_i = h_i + y_i`).
pub fn add(
    p: &mut ProgramBuilder,
    label: &str,
    a: &Buffer,
    bb: &Buffer,
    out: &Buffer,
    words: u32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let mut last = not_before;
    let m = p.mach().clone();
    for w in 0..words {
        let mut b = Bundle::new(label);
        let x = to_vxm(&mut b, &m, a, w, 0)?;
        let y = to_vxm(&mut b, &m, bb, w, 0)?;
        let s = b
            .unit(
                &m,
                QSel::AnyVxm,
                0,
                Instruction::Fadd { a: S, b: S, dst: S },
                &[("a", x), ("b", y)],
                Some(("dst", dir_to(out))),
            )?
            .expect("fadd result");
        from_vxm(&mut b, &m, s, out, w)?;
        let placed = p.sched.place(b, not_before)?;
        last = last.max(placed.last);
    }
    Ok(last)
}

/// Copies `words` words of `src` to `dst` unchanged (every byte plane):
/// each word is read towards the VXM and written as it passes `dst`'s
/// slices, so `dst` must lie beyond the VXM from `src` (the other
/// hemisphere), as the step's index vectors do when a KV cache shares
/// their hemisphere (plan.rs).
pub fn copy(
    p: &mut ProgramBuilder,
    label: &str,
    src: &Buffer,
    dst: &Buffer,
    words: u32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let mut last = not_before;
    let m = p.mach().clone();
    for w in 0..words {
        let mut b = Bundle::new(label);
        let x = b.read(&m, &src.slices, src.addr + w, m.vxm, 0)?;
        b.write(&m, x, &dst.slices, dst.addr + w)?;
        last = last.max(p.sched.place(b, not_before)?.last);
    }
    Ok(last)
}
