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
    let n = a.len().min(b.len());
    let chunks = n / LANES;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    for i in 0..chunks {
        let o = i * LANES;
        // SAFETY: o + 16 <= n, which both slices hold.
        unsafe {
            a0 = _mm256_add_ps(
                a0,
                _mm256_mul_ps(
                    _mm256_loadu_ps(pa.wrapping_add(o)),
                    _mm256_loadu_ps(pb.wrapping_add(o)),
                ),
            );
            a1 = _mm256_add_ps(
                a1,
                _mm256_mul_ps(
                    _mm256_loadu_ps(pa.wrapping_add(o + 8)),
                    _mm256_loadu_ps(pb.wrapping_add(o + 8)),
                ),
            );
        }
    }
    let t = chunks * LANES;
    finish(a0, a1, &a[t..n], &b[t..n])
}

/// Four rows against one vector, each exactly [`dot`] (named accumulators
/// and raw loads, so it stays fast without optimisation of the callers).
///
/// # Panics
/// If a row's length differs from `x`'s.
#[target_feature(enable = "avx2")]
pub(crate) fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    assert!(w.iter().all(|r| r.len() == n), "dot4: row lengths");
    let chunks = n / LANES;
    let px = x.as_ptr();
    let [p0, p1, p2, p3] = w.map(<[f32]>::as_ptr);
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a10, mut a11) = (z, z, z, z);
    let (mut a20, mut a21, mut a30, mut a31) = (z, z, z, z);
    for i in 0..chunks {
        let o = i * LANES;
        // SAFETY: o + 16 <= n, the length of `x` and of every row (asserted).
        unsafe {
            let x0 = _mm256_loadu_ps(px.wrapping_add(o));
            let x1 = _mm256_loadu_ps(px.wrapping_add(o + 8));
            a00 = _mm256_add_ps(a00, _mm256_mul_ps(_mm256_loadu_ps(p0.wrapping_add(o)), x0));
            a01 = _mm256_add_ps(
                a01,
                _mm256_mul_ps(_mm256_loadu_ps(p0.wrapping_add(o + 8)), x1),
            );
            a10 = _mm256_add_ps(a10, _mm256_mul_ps(_mm256_loadu_ps(p1.wrapping_add(o)), x0));
            a11 = _mm256_add_ps(
                a11,
                _mm256_mul_ps(_mm256_loadu_ps(p1.wrapping_add(o + 8)), x1),
            );
            a20 = _mm256_add_ps(a20, _mm256_mul_ps(_mm256_loadu_ps(p2.wrapping_add(o)), x0));
            a21 = _mm256_add_ps(
                a21,
                _mm256_mul_ps(_mm256_loadu_ps(p2.wrapping_add(o + 8)), x1),
            );
            a30 = _mm256_add_ps(a30, _mm256_mul_ps(_mm256_loadu_ps(p3.wrapping_add(o)), x0));
            a31 = _mm256_add_ps(
                a31,
                _mm256_mul_ps(_mm256_loadu_ps(p3.wrapping_add(o + 8)), x1),
            );
        }
    }
    let t = chunks * LANES;
    [
        finish(a00, a01, &w[0][t..], &x[t..]),
        finish(a10, a11, &w[1][t..], &x[t..]),
        finish(a20, a21, &w[2][t..], &x[t..]),
        finish(a30, a31, &w[3][t..], &x[t..]),
    ]
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
            _mm_loadu_si128(q.as_ptr().wrapping_add(16).cast()),
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
    let xb = x.as_chunks::<QBLOCK>().0;
    two_rows(
        out,
        cols / QBLOCK,
        [_mm256_setzero_ps(); 2],
        |i| &xb[i],
        |acc, xv, j| q4_1_block(acc, dm[j][0], dm[j][1], &qs[j], xv),
        |a| hsum(a[0], a[1]),
    );
}

/// [`crate::kernels::rows_q8_0`], two rows at a time.
#[target_feature(enable = "avx2")]
pub(crate) fn rows_q8_0(d: &[f32], qs: &[[i8; QBLOCK]], cols: usize, x: &[f32], out: &mut [f32]) {
    let xb = x.as_chunks::<QBLOCK>().0;
    two_rows(
        out,
        cols / QBLOCK,
        [_mm256_setzero_ps(); 2],
        |i| &xb[i],
        |acc, xv, j| q8_0_block(acc, d[j], &qs[j], xv),
        |a| hsum(a[0], a[1]),
    );
}

/// The row loop of the quantized-row kernels: rows two at a time (two
/// independent accumulator chains), block `i` of row `r` being block
/// `r * bpr + i` of the weights. `input(i)` loads block `i` of the input
/// once for both rows; `block(acc, input, j)` adds weight block `j` times
/// it; `finish` reduces an accumulator to the row's result.
#[inline(always)]
fn two_rows<A: Copy, X>(
    out: &mut [f32],
    bpr: usize,
    zero: A,
    input: impl Fn(usize) -> X,
    block: impl Fn(&mut A, &X, usize),
    finish: impl Fn(A) -> f32,
) {
    let mut r = 0;
    while r < out.len() {
        let two = r + 1 < out.len();
        let (mut a, mut b) = (zero, zero);
        for i in 0..bpr {
            let xv = input(i);
            block(&mut a, &xv, r * bpr + i);
            if two {
                block(&mut b, &xv, (r + 1) * bpr + i);
            }
        }
        out[r] = finish(a);
        if two {
            out[r + 1] = finish(b);
        }
        r += 2;
    }
}

/// [`crate::kernels::matmul_t`]: rows in groups of four against each token.
#[target_feature(enable = "avx2")]
pub(crate) fn matmul_t(w: &[f32], cols: usize, xs: &[f32], n: usize, out_t: &mut [f32]) {
    crate::kernels::matmul_t_with(w, cols, xs, n, out_t, |rw, x| dot4(rw, x), |a, b| dot(a, b));
}

/// `reduce` on one 16-lane register: k += k+8, k += k+4, k += k+2, 0 += 1.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum16(a: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(a);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
    hsum(lo, hi)
}

/// [`crate::kernels::rows_q4_1`] with one 16-lane register per row (lane k
/// is the portable kernel's partial sum k).
#[target_feature(enable = "avx512f")]
pub(crate) fn rows_q4_1_512(
    dm: &[[f32; 2]],
    qs: &[[u8; Q4_1_QS]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    assert!(x.len() == bpr * QBLOCK && dm.len() >= out.len() * bpr && qs.len() >= out.len() * bpr);
    let mask = _mm_set1_epi8(0x0f);
    two_rows_512(out, x, bpr, |acc, &(x0, x1), j| {
        let [d, m] = dm[j];
        let (dv, mv) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
        // SAFETY: `qs[j]` holds exactly the 16 bytes read.
        let qv = unsafe { _mm_loadu_si128(qs[j].as_ptr().cast()) };
        let lo = _mm_and_si128(qv, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(qv), mask);
        let wl = _mm512_add_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), dv),
            mv,
        );
        let wh = _mm512_add_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), dv),
            mv,
        );
        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(wl, x0));
        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(wh, x1));
    });
}

/// [`crate::kernels::rows_q8_0`] with one 16-lane register per row.
#[target_feature(enable = "avx512f")]
pub(crate) fn rows_q8_0_512(
    d: &[f32],
    qs: &[[i8; QBLOCK]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    assert!(x.len() == bpr * QBLOCK && d.len() >= out.len() * bpr && qs.len() >= out.len() * bpr);
    two_rows_512(out, x, bpr, |acc, &(x0, x1), j| {
        let dv = _mm512_set1_ps(d[j]);
        let q = qs[j].as_ptr();
        // SAFETY: `qs[j]` holds exactly the 32 bytes read (two 16-byte loads).
        let (q0, q1) = unsafe {
            (
                _mm_loadu_si128(q.cast()),
                _mm_loadu_si128(q.wrapping_add(16).cast()),
            )
        };
        let w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), dv);
        let w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), dv);
        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(w0, x0));
        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(w1, x1));
    });
}

/// [`two_rows`] for the AVX-512 kernels: block `i` of `x` (`bpr` blocks)
/// loaded once as two 16-lane registers, one 16-lane accumulator per row.
#[inline]
#[target_feature(enable = "avx512f")]
fn two_rows_512(
    out: &mut [f32],
    x: &[f32],
    bpr: usize,
    block: impl Fn(&mut __m512, &(__m512, __m512), usize),
) {
    assert!(x.len() == bpr * QBLOCK, "two_rows_512: input length");
    let px = x.as_ptr();
    two_rows(
        out,
        bpr,
        _mm512_setzero_ps(),
        // SAFETY: block i < bpr of x holds floats i*32 .. i*32+32 (asserted length).
        |i| unsafe {
            (
                _mm512_loadu_ps(px.wrapping_add(i * QBLOCK)),
                _mm512_loadu_ps(px.wrapping_add(i * QBLOCK + LANES)),
            )
        },
        block,
        |a| hsum16(a),
    );
}

/// Finishes a 16-lane dot product: adds the scalar tail, then reduces.
#[inline]
#[target_feature(enable = "avx512f")]
fn finish16(a: __m512, ta: &[f32], tb: &[f32]) -> f32 {
    if ta.is_empty() {
        return hsum16(a);
    }
    let mut acc = [0.0f32; LANES];
    // SAFETY: `acc` holds exactly the 16 floats written.
    unsafe { _mm512_storeu_ps(acc.as_mut_ptr(), a) };
    for (k, (x, y)) in ta.iter().zip(tb).enumerate() {
        acc[k] += x * y;
    }
    reduce(acc)
}

/// [`crate::kernels::matmul_t`] with 16-lane registers: four rows against
/// two tokens at a time (eight independent sums), each exactly `dot`.
#[target_feature(enable = "avx512f")]
pub(crate) fn matmul_t_512(w: &[f32], cols: usize, xs: &[f32], n: usize, out_t: &mut [f32]) {
    let rows = w.len() / cols;
    assert!(
        xs.len() == n * cols && out_t.len() == rows * n,
        "matmul_t shapes"
    );
    let chunks = cols / LANES;
    let t0 = chunks * LANES;
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(4);
        let pw: [*const f32; 4] =
            std::array::from_fn(|i| w.as_ptr().wrapping_add((r + i.min(nr - 1)) * cols));
        let mut t = 0;
        while t < n {
            let nt = (n - t).min(2);
            let px0 = xs.as_ptr().wrapping_add(t * cols);
            let px1 = xs.as_ptr().wrapping_add((t + nt - 1) * cols);
            let mut acc = [[_mm512_setzero_ps(); 2]; 4];
            for c in 0..chunks {
                let o = c * LANES;
                // SAFETY: o + 16 <= cols; rows r..r+nr and tokens t..t+nt exist
                // (the pointers of missing ones repeat the last valid one).
                unsafe {
                    let x0 = _mm512_loadu_ps(px0.wrapping_add(o));
                    let x1 = _mm512_loadu_ps(px1.wrapping_add(o));
                    for (i, p) in pw.iter().enumerate() {
                        let wv = _mm512_loadu_ps(p.wrapping_add(o));
                        acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_mul_ps(wv, x0));
                        acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_mul_ps(wv, x1));
                    }
                }
            }
            for i in 0..nr {
                let row = &w[(r + i) * cols..(r + i + 1) * cols];
                for j in 0..nt {
                    let x = &xs[(t + j) * cols..(t + j + 1) * cols];
                    out_t[(r + i) * n + t + j] = finish16(acc[i][j], &row[t0..], &x[t0..]);
                }
            }
            t += nt;
        }
        r += nr;
    }
}
