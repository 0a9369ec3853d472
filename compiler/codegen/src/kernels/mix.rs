//! The block-diagonal f32 mix along lanes (docs/q35-format.md 8.4 and
//! 14.5; `semantics::mix_blocks_along_lanes`, which is
//! `semantics::mix_along_lanes` bit for bit for such a matrix): the rotated
//! residual stream's final-norm output mixed by `M = R diag(gamma_out) R^T`
//! before the LM head.
//!
//! `M` is zero outside its diagonal blocks of `block` channels, and
//! `block` divides the 320 lanes, so a block never straddles a lane word:
//! output `r` (lane `r mod 320` of word `r / 320`) needs only inputs
//! `b + i` (`b = block floor(r / block)`, `i < block`) of its own word. The
//! kernel is `block` steps; step `i`, for every word `w`:
//!
//! ```text
//! p   = permute(x_w, map_i)        (SXM of x's hemisphere: lane l takes lane block floor(l / block) + i)
//! q   = p * m[i][w]                (VXM fmul; m[i][w] lane l = M[r, b + i], r = 320 w + l)
//! y_w = y_w + q                    (VXM fadd; y_w starts as fconst +0.0)
//! ```
//!
//! which is the contract's sum in its order (ascending `i`, each product
//! rounded, then added). The matrix is a const buffer of `block x words`
//! lane words laid out as the steps read them ([`block_columns`]); the
//! `block` permute maps are program tables shared by every mix of the
//! same block size. Each word's adds form one chain, one `fadd` every ALU
//! latency (its result read on the cycle it leaves the VXM); the words'
//! chains are interleaved a cycle or more apart, in one bundle.

use q35_isa::{Dir, ElemWidth, Instruction, Stream, TableId};

use crate::alloc::Buffer;
use crate::kernels::quantize::MAX_GAP;
use crate::kernels::reduce::{FADD, FMUL, fconst_at, sxm_queue, vx};
use crate::kernels::{dir_to, from_vxm, to_vxm};
use crate::machine::Cycle;
use crate::program::{LANES, ProgramBuilder};
use crate::sched::{Bundle, QSel, SchedError};

const S: Stream = Stream::east(0);

fn permute(map: TableId) -> Instruction {
    Instruction::Permute {
        src: S,
        dst: S,
        map,
        ew: ElemWidth::B4,
    }
}

/// The `n x n` row-major matrix `m`, block-diagonal in blocks of `block`,
/// as [`mix`] reads it: `block` steps of `ceil(n / lanes)` lane words,
/// step `i` word `w` lane `l` holding `M[r, block floor(r / block) + i]`
/// for `r = lanes w + l < n`, and +0.0 past `n`. An error when `block`
/// does not divide `n` and `lanes`, or when `m` is not zero outside its
/// diagonal blocks (the kernel skips those terms, which is exact only for
/// zeros).
pub fn block_columns(m: &[f32], n: usize, block: usize, lanes: usize) -> Result<Vec<f32>, String> {
    if m.len() != n * n {
        return Err(format!(
            "the matrix holds {} values, not {n} x {n}",
            m.len()
        ));
    }
    if block == 0 || !n.is_multiple_of(block) || !lanes.is_multiple_of(block) {
        return Err(format!(
            "blocks of {block} must divide the {n} channels and the {lanes} lanes"
        ));
    }
    if let Some(k) = (0..n * n).find(|&k| (k / n) / block != (k % n) / block && m[k] != 0.0) {
        return Err(format!(
            "the matrix has {} at ({}, {}), outside its diagonal blocks of {block}",
            m[k],
            k / n,
            k % n
        ));
    }
    let words = n.div_ceil(lanes);
    let mut out = vec![0f32; block * words * lanes];
    for i in 0..block {
        for r in 0..n {
            out[i * words * lanes + r] = m[r * n + block * (r / block) + i];
        }
    }
    Ok(out)
}

/// `y = M x` over `n` f32 channels (buffers of `ceil(n / 320)` words,
/// natural layout; `x`'s padding lanes zero of either sign) with `M` given
/// as [`block_columns`] in `matrix`. Returns the last cycle used.
#[expect(
    clippy::too_many_arguments,
    reason = "the op's operands, as every kernel takes them"
)]
pub fn mix(
    p: &mut ProgramBuilder,
    label: &str,
    x: &Buffer,
    matrix: &Buffer,
    y: &Buffer,
    n: u32,
    block: u32,
    not_before: Cycle,
) -> Result<Cycle, SchedError> {
    let kernel_err = |message: String| SchedError::Kernel {
        label: label.to_string(),
        message,
    };
    if block == 0 || !n.is_multiple_of(block) || !LANES.is_multiple_of(block) {
        return Err(kernel_err(format!(
            "blocks of {block} must divide the {n} channels and the {LANES} lanes"
        )));
    }
    let words = n.div_ceil(LANES);
    if matrix.words < block * words {
        return Err(kernel_err(format!(
            "the matrix buffer holds {} words, the mix reads {}",
            matrix.words,
            block * words
        )));
    }
    let maps: Vec<TableId> = (0..block)
        .map(|i| {
            let map = (0..LANES)
                .map(|l| (block * (l / block) + i) as u16)
                .collect();
            p.table(&format!("mix.b{block}.i{i}"), map)
        })
        .collect();
    let m = p.mach().clone();
    let h = x
        .hemisphere()
        .ok_or_else(|| kernel_err("x is in no hemisphere".into()))?;
    let sxq = sxm_queue(h);
    let sxp = m.position(sxq);
    let (fm, la) = (m.latency(&FMUL), m.latency(&FADD));
    let lp = m.latency(&permute(maps[0]));
    let back = if sxp < m.vxm { Dir::East } else { Dir::West };
    let mut conflict = String::new();
    // `gap` spaces a chain's adds (in ALU latencies), `off` the words'
    // chains (in cycles): the smallest that fit the MEM ports and banks.
    for gap in 1..=MAX_GAP {
        for off in 1..=la * gap {
            if Cycle::from(words) * off > la * gap {
                break;
            }
            let mut b = Bundle::new(label);
            for w in 0..words {
                // The add of step i at t0 + i la gap; its product leaves
                // the multiplier on that cycle.
                let t0 = Cycle::from(w) * off + fm;
                let mut acc = fconst_at(&mut b, &m, t0, 0.0, Dir::East)?;
                for i in 0..block {
                    let t = t0 + Cycle::from(i) * la * gap;
                    let tm = t - fm;
                    let tp = tm - lp - m.hops(sxp, m.vxm);
                    let xv = b.read(&m, &x.slices, x.addr + w, sxp, tp)?;
                    let per = b
                        .unit(
                            &m,
                            QSel::Fixed(sxq),
                            tp,
                            permute(maps[i as usize]),
                            &[("src", xv)],
                            Some(("dst", back)),
                        )?
                        .ok_or_else(|| kernel_err("permute without a result".into()))?;
                    let mv = to_vxm(&mut b, &m, matrix, i * words + w, tm)?;
                    let q = vx(&mut b, &m, tm, FMUL, &[("a", per), ("b", mv)], Dir::East)?;
                    let dir = if i + 1 == block { dir_to(y) } else { Dir::East };
                    acc = vx(&mut b, &m, t, FADD, &[("a", acc), ("b", q)], dir)?;
                }
                from_vxm(&mut b, &m, acc, y, w)?;
            }
            match b.self_conflict(&m) {
                None => return Ok(p.sched.place(b, not_before)?.last.max(not_before)),
                Some(why) => conflict = why,
            }
        }
    }
    Err(kernel_err(format!(
        "the operands' slices collide inside the kernel: {conflict}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_columns_lays_out_each_step_and_refuses_off_block_entries() {
        // n = 4 in blocks of 2 on 4 lanes: one word.
        let m = [
            1.0f32, 2.0, 0.0, 0.0, 3.0, 4.0, -0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 0.0, 0.0, 7.0, 8.0,
        ];
        let t = block_columns(&m, 4, 2, 4).unwrap();
        // Step 0: M[r, b + 0]; step 1: M[r, b + 1].
        assert_eq!(t, [1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0]);
        // Padding lanes past n are +0.0: n = 2 on 4 lanes.
        let t = block_columns(&[1.0, 2.0, 3.0, 4.0], 2, 2, 4).unwrap();
        assert_eq!(t, [1.0, 3.0, 0.0, 0.0, 2.0, 4.0, 0.0, 0.0]);
        let mut bad = m;
        bad[2] = 0.5;
        let e = block_columns(&bad, 4, 2, 4).unwrap_err();
        assert!(e.contains("(0, 2)"), "{e}");
        assert!(block_columns(&m, 4, 3, 4).is_err());
        assert!(block_columns(&m, 4, 4, 6).is_err());
        assert!(block_columns(&m[..15], 4, 2, 4).is_err());
    }
}
