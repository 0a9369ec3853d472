//! The calibration's hot loop: adding `x_g x_g^T` of many tokens to one
//! group's covariance sums ([`accumulate`]).
//!
//! Every sum is exactly the plain loop's: for each element `(i, j)`, the
//! products `x_t[i] * x_t[j]` (an f32 multiply, then an f32 add; never
//! fused) are added one token at a time in token order. Two things make it
//! fast without changing a bit:
//!
//! - **symmetry**: `x_t[i] * x_t[j]` and `x_t[j] * x_t[i]` are the same
//!   f32 (multiplication is commutative), so the lower triangle is the
//!   upper one mirrored; only tiles on or above the diagonal are summed;
//! - **register tiles**: a tile of `I x J` sums stays in registers while
//!   every token passes, instead of a load and a store of each sum per
//!   token; the compiler vectorises the `J` columns (AVX2 when the CPU has
//!   it, chosen at run time; SSE2 otherwise).

/// Adds `sum_t x_t x_t^T` to `block` (`n x n`, row-major, symmetric on
/// entry, as every block that starts at zero and only grows through this
/// function is), where `x_t` is `rows[t * stride + lo ..][..n]` for each of
/// the `rows.len() / stride` tokens, in token order.
pub(crate) fn accumulate(block: &mut [f32], n: usize, rows: &[f32], stride: usize, lo: usize) {
    assert!(block.len() == n * n && lo + n <= stride, "covariance shape");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { accumulate_avx2(block, n, rows, stride, lo) };
            return;
        }
    }
    accumulate_tiles::<4, 8>(block, n, rows, stride, lo);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_avx2(block: &mut [f32], n: usize, rows: &[f32], stride: usize, lo: usize) {
    // Tiles of 8 x 16 measured fastest here (about 5x the plain loop at
    // n = 128, 512 tokens; 4 x 16 a little slower; AVX-512 builds of the
    // same code slower still, so they are not used).
    accumulate_tiles::<8, 16>(block, n, rows, stride, lo);
}

/// The upper triangle in tiles of `I` rows by `J` columns, then the lower
/// triangle mirrored from it.
#[inline(always)]
fn accumulate_tiles<const I: usize, const J: usize>(
    block: &mut [f32],
    n: usize,
    rows: &[f32],
    stride: usize,
    lo: usize,
) {
    let tokens = token_slices(rows, stride, lo, n);
    sum_tiles::<I, J>(block, n, &tokens, &tokens, true);
    for i in 1..n {
        for j in 0..i {
            block[i * n + j] = block[j * n + i];
        }
    }
}

/// Token `t`'s `n` channels from `lo`: `rows[t * stride + lo ..][..n]`.
fn token_slices(rows: &[f32], stride: usize, lo: usize, n: usize) -> Vec<&[f32]> {
    rows.chunks_exact(stride).map(|r| &r[lo..lo + n]).collect()
}

/// Adds `left[t][i] * right[t][j]` to every `block[i][j]` (only `j >= i`
/// when `upper`), token by token, in tiles of `I` rows by `J` columns (for
/// `upper`, from the tile column holding the diagonal on); edge tiles
/// element by element.
#[inline(always)]
fn sum_tiles<const I: usize, const J: usize>(
    block: &mut [f32],
    n: usize,
    left: &[&[f32]],
    right: &[&[f32]],
    upper: bool,
) {
    for i0 in (0..n).step_by(I) {
        let i1 = (i0 + I).min(n);
        let first = if upper { (i0 / J) * J } else { 0 };
        for j0 in (first..n).step_by(J) {
            let j1 = (j0 + J).min(n);
            if i1 - i0 == I && j1 - j0 == J {
                tile::<I, J>(block, n, left, right, i0, j0);
            } else {
                for i in i0..i1 {
                    let from = if upper { j0.max(i) } else { j0 };
                    for j in from..j1 {
                        let mut s = block[i * n + j];
                        for (l, r) in left.iter().zip(right) {
                            s += l[i] * r[j];
                        }
                        block[i * n + j] = s;
                    }
                }
            }
        }
    }
}

/// Sums of rows `i0..i0 + I`, columns `j0..j0 + J` over every token:
/// `left[t][i] * right[t][j]` added token by token.
#[inline(always)]
fn tile<const I: usize, const J: usize>(
    block: &mut [f32],
    n: usize,
    left: &[&[f32]],
    right: &[&[f32]],
    i0: usize,
    j0: usize,
) {
    let mut acc = [[0f32; J]; I];
    for (a, row) in acc.iter_mut().enumerate() {
        row.copy_from_slice(&block[(i0 + a) * n + j0..][..J]);
    }
    for (l, r) in left.iter().zip(right) {
        let xj: &[f32; J] = r[j0..j0 + J].try_into().expect("tile width");
        let xi: &[f32; I] = l[i0..i0 + I].try_into().expect("tile height");
        for (row, &v) in acc.iter_mut().zip(xi) {
            for (s, &w) in row.iter_mut().zip(xj) {
                *s += v * w;
            }
        }
    }
    for (a, row) in acc.iter().enumerate() {
        block[(i0 + a) * n + j0..][..J].copy_from_slice(row);
    }
}

/// Adds `sum_t d_t x_t^T` to `block` (`n x n`, row-major, not symmetric):
/// `d_t` and `x_t` are `delta[t * stride + lo ..][..n]` and
/// `rows[t * stride + lo ..][..n]`, token by token in token order, each
/// element's products added one token at a time (the asymmetric term's
/// cross moments, docs/q35-format.md section 14). The same register tiles
/// as [`accumulate`], over the whole block (it is not symmetric), so every
/// sum is the plain loop's.
pub(crate) fn accumulate_cross(
    block: &mut [f32],
    n: usize,
    delta: &[f32],
    rows: &[f32],
    stride: usize,
    lo: usize,
) {
    assert!(
        block.len() == n * n && lo + n <= stride && delta.len() == rows.len(),
        "cross moment shape"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { accumulate_cross_avx2(block, n, delta, rows, stride, lo) };
            return;
        }
    }
    accumulate_cross_tiles::<4, 8>(block, n, delta, rows, stride, lo);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_cross_avx2(
    block: &mut [f32],
    n: usize,
    delta: &[f32],
    rows: &[f32],
    stride: usize,
    lo: usize,
) {
    accumulate_cross_tiles::<8, 16>(block, n, delta, rows, stride, lo);
}

/// The whole block in tiles of `I` rows by `J` columns.
#[inline(always)]
fn accumulate_cross_tiles<const I: usize, const J: usize>(
    block: &mut [f32],
    n: usize,
    delta: &[f32],
    rows: &[f32],
    stride: usize,
    lo: usize,
) {
    let ds = token_slices(delta, stride, lo, n);
    let xs = token_slices(rows, stride, lo, n);
    sum_tiles::<I, J>(block, n, &ds, &xs, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain loop every sum must equal bit for bit.
    fn plain(block: &mut [f32], n: usize, rows: &[f32], stride: usize, lo: usize) {
        for r in rows.chunks_exact(stride) {
            let x = &r[lo..lo + n];
            for i in 0..n {
                for j in 0..n {
                    block[i * n + j] += x[i] * x[j];
                }
            }
        }
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Wide magnitudes, both signs: rounding differs with order.
                let m = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                m * f32::powi(2.0, ((s >> 20) % 16) as i32 - 8)
            })
            .collect()
    }

    #[test]
    fn equals_the_plain_loop_bit_for_bit() {
        // Full tiles, ragged edges, a tail group, several calls.
        for (n, stride, lo) in [
            (128, 576, 0),
            (64, 576, 512),
            (37, 50, 13),
            (1, 1, 0),
            (40, 40, 0),
        ] {
            let mut fast = vec![0f32; n * n];
            let mut want = vec![0f32; n * n];
            for (call, tokens) in [7usize, 1, 33].into_iter().enumerate() {
                let rows = values(tokens * stride, (n * 1000 + call) as u64);
                accumulate(&mut fast, n, &rows, stride, lo);
                plain(&mut want, n, &rows, stride, lo);
                let a: Vec<u32> = fast.iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(a, b, "n {n}, call {call}");
            }
        }
    }

    #[test]
    fn cross_moments_are_the_plain_sums() {
        // Tiny, full tiles with ragged edges, a tail group; several calls
        // (sums carried over), on every tile shape and the dispatched path.
        for (n, stride, lo, tokens) in [(5, 9, 3, 4), (128, 576, 0, 37), (37, 50, 13, 9)] {
            let mut want = vec![0f32; n * n];
            let mut got: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0f32; n * n]);
            for call in 0..2u64 {
                let rows = values(tokens * stride, 11 + call);
                let delta = values(tokens * stride, 12 + call);
                for i in 0..n {
                    for j in 0..n {
                        let mut s = want[i * n + j];
                        for t in 0..tokens {
                            s += delta[t * stride + lo + i] * rows[t * stride + lo + j];
                        }
                        want[i * n + j] = s;
                    }
                }
                accumulate_cross(&mut got[0], n, &delta, &rows, stride, lo);
                accumulate_cross_tiles::<4, 8>(&mut got[1], n, &delta, &rows, stride, lo);
                accumulate_cross_tiles::<8, 16>(&mut got[2], n, &delta, &rows, stride, lo);
                for g in &got {
                    assert_eq!(
                        g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "n {n}, call {call}"
                    );
                }
            }
            // Not symmetric in general.
            assert_ne!(got[0][1].to_bits(), got[0][n].to_bits());
        }
    }

    #[test]
    fn every_tile_shape_equals_the_plain_loop() {
        let (n, stride) = (70, 70);
        let rows = values(9 * stride, 5);
        let mut want = vec![0f32; n * n];
        plain(&mut want, n, &rows, stride, 0);
        for got in [
            {
                let mut b = vec![0f32; n * n];
                accumulate_tiles::<4, 8>(&mut b, n, &rows, stride, 0);
                b
            },
            {
                let mut b = vec![0f32; n * n];
                accumulate_tiles::<4, 16>(&mut b, n, &rows, stride, 0);
                b
            },
            {
                let mut b = vec![0f32; n * n];
                accumulate_tiles::<8, 16>(&mut b, n, &rows, stride, 0);
                b
            },
        ] {
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
