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
