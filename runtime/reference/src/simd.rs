//! AVX2 versions of the dot-product kernels in [`crate::kernels`].
//!
//! They keep the portable kernels' exact arithmetic: 16 interleaved partial
//! sums held in two 8-lane registers (lanes 0-7 and 8-15), products and sums
//! as separate f32 instructions (no FMA), the tail added lane by lane and the
//! same halving tree at the end. So every result is bit-for-bit the portable
//! one; the unit tests check that on odd sizes.

use std::arch::x86_64::*;

use crate::kernels::{LANES, Q4_1_QS, QBLOCK, reduce};

#[inline]
#[target_feature(enable = "avx2")]
fn load8(s: &[f32; 8]) -> __m256 {
    // SAFETY: `s` holds exactly the 8 floats read.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// `reduce` on lanes `a0` (0-7) and `a1` (8-15): k += k+8, k += k+4,
/// k += k+2, 0 += 1.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum(a0: __m256, a1: __m256) -> f32 {
    let s = _mm256_add_ps(a0, a1);
    let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    let v = _mm_add_ss(u, _mm_shuffle_ps::<1>(u, u));
    _mm_cvtss_f32(v)
}

/// Finishes a dot product: adds the scalar tail into the lanes, then reduces.
#[inline]
#[target_feature(enable = "avx2")]
fn finish(a0: __m256, a1: __m256, ta: &[f32], tb: &[f32]) -> f32 {
    if ta.is_empty() {
        return hsum(a0, a1);
    }
    let mut acc = [0.0f32; LANES];
    let (lo, hi) = acc.split_at_mut(8);
    // SAFETY: each half holds exactly the 8 floats written.
    unsafe {
        _mm256_storeu_ps(lo.as_mut_ptr(), a0);
        _mm256_storeu_ps(hi.as_mut_ptr(), a1);
    }
    for (k, (x, y)) in ta.iter().zip(tb).enumerate() {
        acc[k] += x * y;
    }
    reduce(acc)
}

/// [`crate::kernels::dot`].
#[target_feature(enable = "avx2")]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ta) = a.as_chunks::<LANES>();
    let (cb, tb) = b.as_chunks::<LANES>();
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    for (x, y) in ca.iter().zip(cb) {
        let (x0, x1) = x.as_chunks::<8>().0.split_at(1);
        let (y0, y1) = y.as_chunks::<8>().0.split_at(1);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(load8(&x0[0]), load8(&y0[0])));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(load8(&x1[0]), load8(&y1[0])));
    }
    finish(a0, a1, ta, tb)
}

/// Four rows against one vector, each exactly [`dot`].
#[target_feature(enable = "avx2")]
pub(crate) fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let (cx, tx) = x.as_chunks::<8>();
    let c: [(&[[f32; 8]], &[f32]); 4] = w.map(|r| r.as_chunks::<8>());
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let pairs = cx.len() / 2;
    for i in 0..pairs {
        let x0 = load8(&cx[2 * i]);
        let x1 = load8(&cx[2 * i + 1]);
        for r in 0..4 {
            acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_mul_ps(load8(&c[r].0[2 * i]), x0));
            acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_mul_ps(load8(&c[r].0[2 * i + 1]), x1));
        }
    }
    // The portable tail starts at the last whole 16-chunk.
    let t = pairs * LANES;
    let _ = tx;
    let mut out = [0.0f32; 4];
    for r in 0..4 {
        out[r] = finish(acc[r][0], acc[r][1], &w[r][t..], &x[t..]);
    }
    out
}

/// Adds one Q4_1 block (`q * d + m` per weight) times `x` into the lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn q4_1_block(acc: &mut [__m256; 2], d: f32, m: f32, q: &[u8; Q4_1_QS], x: &[f32; QBLOCK]) {
    let dv = _mm256_set1_ps(d);
    let mv = _mm256_set1_ps(m);
    // SAFETY: `q` holds exactly the 16 bytes read.
    let qv = unsafe { _mm_loadu_si128(q.as_ptr().cast()) };
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(qv, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(qv), mask);
    let w = |v: __m128i| {
        _mm256_add_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), dv),
            mv,
        )
    };
    let xs = x.as_chunks::<8>().0;
    // Weights 0-15 (low nibbles), then 16-31 (high nibbles), as the portable loop.
    acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(w(lo), load8(&xs[0])));
    acc[1] = _mm256_add_ps(
        acc[1],
        _mm256_mul_ps(w(_mm_srli_si128::<8>(lo)), load8(&xs[1])),
    );
    acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(w(hi), load8(&xs[2])));
    acc[1] = _mm256_add_ps(
        acc[1],
        _mm256_mul_ps(w(_mm_srli_si128::<8>(hi)), load8(&xs[3])),
    );
}

/// Adds one Q8_0 block (`q * d` per weight) times `x` into the lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn q8_0_block(acc: &mut [__m256; 2], d: f32, q: &[i8; QBLOCK], x: &[f32; QBLOCK]) {
    let dv = _mm256_set1_ps(d);
    // SAFETY: `q` holds exactly the 32 bytes read (two 16-byte loads).
    let (q0, q1) = unsafe {
        (
            _mm_loadu_si128(q.as_ptr().cast()),
            _mm_loadu_si128(q.as_ptr().add(16).cast()),
        )
    };
    let w = |v: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), dv);
    let xs = x.as_chunks::<8>().0;
    acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(w(q0), load8(&xs[0])));
    acc[1] = _mm256_add_ps(
        acc[1],
        _mm256_mul_ps(w(_mm_srli_si128::<8>(q0)), load8(&xs[1])),
    );
    acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(w(q1), load8(&xs[2])));
    acc[1] = _mm256_add_ps(
        acc[1],
        _mm256_mul_ps(w(_mm_srli_si128::<8>(q1)), load8(&xs[3])),
    );
}

/// [`crate::kernels::rows_q4_1`], two rows at a time (independent chains).
#[target_feature(enable = "avx2")]
pub(crate) fn rows_q4_1(
    dm: &[[f32; 2]],
    qs: &[[u8; Q4_1_QS]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    let xb = x.as_chunks::<QBLOCK>().0;
    let mut r = 0;
    while r < out.len() {
        let two = r + 1 < out.len();
        let mut a = [_mm256_setzero_ps(); 2];
        let mut b = [_mm256_setzero_ps(); 2];
        for (i, xv) in xb.iter().enumerate() {
            let j = r * bpr + i;
            q4_1_block(&mut a, dm[j][0], dm[j][1], &qs[j], xv);
            if two {
                let j = j + bpr;
                q4_1_block(&mut b, dm[j][0], dm[j][1], &qs[j], xv);
            }
        }
        out[r] = hsum(a[0], a[1]);
        if two {
            out[r + 1] = hsum(b[0], b[1]);
        }
        r += 2;
    }
}

/// [`crate::kernels::rows_q8_0`], two rows at a time.
#[target_feature(enable = "avx2")]
pub(crate) fn rows_q8_0(d: &[f32], qs: &[[i8; QBLOCK]], cols: usize, x: &[f32], out: &mut [f32]) {
    let bpr = cols / QBLOCK;
    let xb = x.as_chunks::<QBLOCK>().0;
    let mut r = 0;
    while r < out.len() {
        let two = r + 1 < out.len();
        let mut a = [_mm256_setzero_ps(); 2];
        let mut b = [_mm256_setzero_ps(); 2];
        for (i, xv) in xb.iter().enumerate() {
            let j = r * bpr + i;
            q8_0_block(&mut a, d[j], &qs[j], xv);
            if two {
                let j = j + bpr;
                q8_0_block(&mut b, d[j], &qs[j], xv);
            }
        }
        out[r] = hsum(a[0], a[1]);
        if two {
            out[r + 1] = hsum(b[0], b[1]);
        }
        r += 2;
    }
}

/// [`crate::kernels::matmul_t`]: rows in groups of four against each token.
#[target_feature(enable = "avx2")]
pub(crate) fn matmul_t(w: &[f32], cols: usize, xs: &[f32], n: usize, out_t: &mut [f32]) {
    let rows = w.len() / cols;
    let mut r = 0;
    while r + 4 <= rows {
        let rw = [
            &w[r * cols..(r + 1) * cols],
            &w[(r + 1) * cols..(r + 2) * cols],
            &w[(r + 2) * cols..(r + 3) * cols],
            &w[(r + 3) * cols..(r + 4) * cols],
        ];
        for t in 0..n {
            let v = dot4(rw, &xs[t * cols..(t + 1) * cols]);
            for (i, v) in v.into_iter().enumerate() {
                out_t[(r + i) * n + t] = v;
            }
        }
        r += 4;
    }
    while r < rows {
        let row = &w[r * cols..(r + 1) * cols];
        for t in 0..n {
            out_t[r * n + t] = dot(row, &xs[t * cols..(t + 1) * cols]);
        }
        r += 1;
    }
}
