//! The kernels: each lpu op as bundles of machine instructions that compute
//! exactly what docs/q35-format.md section 8 defines, in its order.
//!
//! Conventions: f32 buffers are 4 slices (byte plane `j` in slice `j`) of
//! one hemisphere, word `w` holding elements `320 w ..`; values flow from
//! MEM to the VXM (position 46) and back. [`to_vxm`] and [`from_vxm`] are
//! the building blocks: a word of a buffer arriving at the VXM on a given
//! local cycle, and a VXM result written to a buffer word.

pub mod attention;
pub mod c2c;
pub mod matmul;
pub mod mix;
pub mod norm;
pub mod quantize;
pub mod reduce;
pub mod rope;
pub mod swiglu;
pub mod vector;

use q35_isa::{Dir, Hemisphere};

use crate::alloc::Buffer;
use crate::machine::{Cycle, Mach};
use crate::sched::{Bundle, SchedError, Val};

/// Word `w` of `buf` arriving at the VXM on local cycle `t`.
pub fn to_vxm(b: &mut Bundle, m: &Mach, buf: &Buffer, w: u32, t: Cycle) -> Result<Val, SchedError> {
    b.read(m, &buf.slices, buf.addr + w, m.vxm, t)
}

/// The direction a VXM result must flow to reach `buf`.
pub fn dir_to(buf: &Buffer) -> Dir {
    toward(buf.hemisphere().unwrap_or(Hemisphere::East))
}

/// The direction from the VXM towards hemisphere `h` (its MEM slices and
/// its SXM).
pub fn toward(h: Hemisphere) -> Dir {
    match h {
        Hemisphere::West => Dir::West,
        Hemisphere::East => Dir::East,
    }
}

/// Writes `v` (as wide as `buf` has slices) into word `w` of `buf`.
pub fn from_vxm(b: &mut Bundle, m: &Mach, v: Val, buf: &Buffer, w: u32) -> Result<(), SchedError> {
    b.write(m, v, &buf.slices, buf.addr + w)
}
