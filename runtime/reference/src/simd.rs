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

/// Widens `src` (IEEE half bit patterns) into `dst` (exact, F16C), eight at
/// a time, then one at a time.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn widen_f16(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, which both slices hold.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().wrapping_add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().wrapping_add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for k in i..n {
        // One at a time through the low lane (no trip through memory).
        let h = _mm_cvtsi32_si128(i32::from(src[k]));
        dst[k] = _mm_cvtss_f32(_mm_cvtph_ps(h));
    }
}

/// Scales widened to f32 at a time (on the stack), per array.
const CHUNK: usize = 256;

/// The row loop of the quantized-row kernels, `R` rows at a time (`R`
/// independent accumulator chains sharing each input block). Block `i` of
/// row `r` is block `r * bpr + i` of the weights; its scales are `d[..]`
/// and, for Q4_1, `m[..]` (half bits, widened to f32 on the stack: a
/// group's rows at once when they fit in [`CHUNK`], else a part of each
/// row at a time). `input(i)` loads block `i` of the input once for the
/// group; `block(acc, input, j, d, m)` adds weight block `j` times it;
/// `finish` reduces an accumulator to the row's result. Rows past the last
/// whole group run one at a time.
#[expect(
    clippy::too_many_arguments,
    reason = "one loop shared by four kernels; each closure is a kernel's step"
)]
#[inline(always)]
fn row_groups<const R: usize, A: Copy, X>(
    out: &mut [f32],
    bpr: usize,
    d: &[u16],
    m: &[u16],
    widen: impl Fn(&[u16], &mut [f32]),
    zero: A,
    input: impl Fn(usize) -> X,
    block: impl Fn(&mut A, &X, usize, f32, f32),
    finish: impl Fn(A) -> f32,
) {
    let mut sd = [0.0f32; CHUNK];
    let mut sm = [0.0f32; CHUNK];
    let whole = out.len() / R * R;
    for r in (0..whole).step_by(R) {
        let acc = group::<R, A, X>(r, bpr, d, m, &widen, zero, &input, &block, &mut sd, &mut sm);
        for (o, a) in out[r..r + R].iter_mut().zip(acc) {
            *o = finish(a);
        }
    }
    for (r, o) in out.iter_mut().enumerate().skip(whole) {
        let [acc] = group::<1, A, X>(r, bpr, d, m, &widen, zero, &input, &block, &mut sd, &mut sm);
        *o = finish(acc);
    }
}

/// Rows `r..r + R` of [`row_groups`]: their accumulators after every block
/// (`R` is a constant, so the loops over it unroll and the accumulators
/// stay in registers).
#[expect(
    clippy::too_many_arguments,
    reason = "the state of row_groups' loop, passed down"
)]
#[inline(always)]
fn group<const R: usize, A: Copy, X>(
    r: usize,
    bpr: usize,
    d: &[u16],
    m: &[u16],
    widen: &impl Fn(&[u16], &mut [f32]),
    zero: A,
    input: &impl Fn(usize) -> X,
    block: &impl Fn(&mut A, &X, usize, f32, f32),
    sd: &mut [f32; CHUNK],
    sm: &mut [f32; CHUNK],
) -> [A; R] {
    let mut acc = [zero; R];
    let whole = R * bpr <= CHUNK;
    let cn_max = if whole { bpr } else { CHUNK / R };
    let mut c0 = 0;
    while c0 < bpr {
        let cn = cn_max.min(bpr - c0);
        // Scales of block c0 + b of row r + i go to i * cn + b.
        if whole {
            let span = r * bpr..(r + R) * bpr;
            widen(&d[span.clone()], &mut sd[..R * bpr]);
            if !m.is_empty() {
                widen(&m[span], &mut sm[..R * bpr]);
            }
        } else {
            for i in 0..R {
                let j0 = (r + i) * bpr + c0;
                widen(&d[j0..j0 + cn], &mut sd[i * cn..(i + 1) * cn]);
                if !m.is_empty() {
                    widen(&m[j0..j0 + cn], &mut sm[i * cn..(i + 1) * cn]);
                }
            }
        }
        for b in 0..cn {
            let xv = input(c0 + b);
            for (i, a) in acc.iter_mut().enumerate() {
                let s = i * cn + b;
                block(a, &xv, (r + i) * bpr + c0 + b, sd[s], sm[s]);
            }
        }
        c0 += cn;
    }
    acc
}

/// How far ahead of the block being read the kernels ask for weight codes.
const PREFETCH_BLOCKS: usize = 160;

/// A hint to bring `p`'s cache line into L1 (never faults, even past the end
/// of the weights: `p` is never dereferenced).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: prefetching has no architectural effect and cannot fault.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Checks the shapes every quantized-row kernel relies on.
fn check_rows(bpr: usize, x: &[f32], rows: usize, d: &[u16], m: Option<&[u16]>, qs: usize) {
    let blocks = rows * bpr;
    assert!(
        x.len() == bpr * QBLOCK
            && d.len() >= blocks
            && qs >= blocks
            && m.is_none_or(|m| m.len() >= blocks),
        "quantized rows: shapes"
    );
}

/// [`crate::kernels::rows_q4_1`], two rows at a time. Each weight is
/// dequantized as the portable loop does (`q` widened, `* d`, `+ m`).
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn rows_q4_1(
    d: &[u16],
    m: &[u16],
    qs: &[[u8; Q4_1_QS]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    check_rows(bpr, x, out.len(), d, Some(m), qs.len());
    let xb = x.as_chunks::<QBLOCK>().0;
    let mask = _mm256_set1_epi32(0x0f);
    row_groups::<2, _, _>(
        out,
        bpr,
        d,
        m,
        |s, o| widen_f16(s, o),
        [_mm256_setzero_ps(); 2],
        |i| &xb[i],
        |acc, xv, j, d, m| {
            let dv = _mm256_set1_ps(d);
            let mv = _mm256_set1_ps(m);
            let q = qs[j].as_ptr();
            // SAFETY: `qs[j]` holds the 16 bytes read (two 8-byte loads).
            let (b0, b1) = unsafe {
                (
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.cast())),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.wrapping_add(8).cast())),
                )
            };
            prefetch(q.wrapping_add(PREFETCH_BLOCKS * Q4_1_QS));
            // Bytes widened once; each lane's low nibble is one weight, its
            // high nibble the weight 16 places on.
            let w = |v: __m256i| _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), dv), mv);
            let lo = |v: __m256i| w(_mm256_and_si256(v, mask));
            let hi = |v: __m256i| w(_mm256_srli_epi32::<4>(v));
            let xs = xv.as_chunks::<8>().0;
            // Weights 0-15 (low nibbles), then 16-31 (high nibbles), as the portable loop.
            acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(lo(b0), load8(&xs[0])));
            acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(lo(b1), load8(&xs[1])));
            acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(hi(b0), load8(&xs[2])));
            acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(hi(b1), load8(&xs[3])));
        },
        |a| hsum(a[0], a[1]),
    );
}

/// [`crate::kernels::rows_q8_0`], two rows at a time.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn rows_q8_0(d: &[u16], qs: &[[i8; QBLOCK]], cols: usize, x: &[f32], out: &mut [f32]) {
    let bpr = cols / QBLOCK;
    check_rows(bpr, x, out.len(), d, None, qs.len());
    let xb = x.as_chunks::<QBLOCK>().0;
    row_groups::<2, _, _>(
        out,
        bpr,
        d,
        &[],
        |s, o| widen_f16(s, o),
        [_mm256_setzero_ps(); 2],
        |i| &xb[i],
        |acc, xv, j, d, _| {
            let dv = _mm256_set1_ps(d);
            let q = qs[j].as_ptr();
            prefetch(qs.as_ptr().wrapping_add(j + PREFETCH_BLOCKS));
            // Weights 8k..8k+8, widened straight from memory.
            let w = |k: usize| {
                debug_assert!(k < 4);
                // SAFETY: k < 4 (the four calls below), so the 8 bytes read lie in `qs[j]`'s 32.
                let v = unsafe { _mm_loadl_epi64(q.wrapping_add(8 * k).cast()) };
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), dv)
            };
            let xs = xv.as_chunks::<8>().0;
            acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(w(0), load8(&xs[0])));
            acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(w(1), load8(&xs[1])));
            acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(w(2), load8(&xs[2])));
            acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(w(3), load8(&xs[3])));
        },
        |a| hsum(a[0], a[1]),
    );
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

/// Widens `src` (IEEE half bit patterns) into `dst`, 16 at a time (exact).
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn widen_f16_512(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, which both slices hold.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().wrapping_add(i).cast());
            _mm512_storeu_ps(dst.as_mut_ptr().wrapping_add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    widen_f16(&src[i..n], &mut dst[i..n]);
}

/// One 32-float input block as two 16-lane registers.
#[inline]
#[target_feature(enable = "avx512f")]
fn input_512(xb: &[f32; QBLOCK]) -> (__m512, __m512) {
    let p = xb.as_ptr();
    // SAFETY: the block holds the 32 floats read.
    unsafe { (_mm512_loadu_ps(p), _mm512_loadu_ps(p.wrapping_add(LANES))) }
}

/// [`crate::kernels::rows_q4_1`] with one 16-lane register per row (lane k
/// is the portable kernel's partial sum k), four rows at a time. A block's
/// sixteen possible weights `q * d + m` (q = 0..15, the portable kernel's
/// arithmetic) are computed once into a register and each weight is picked
/// from it by its nibble (`vpermps`): the same values with a third of the
/// work of widening and scaling every nibble.
#[target_feature(enable = "avx512f,f16c")]
pub(crate) fn rows_q4_1_512(
    d: &[u16],
    m: &[u16],
    qs: &[[u8; Q4_1_QS]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    check_rows(bpr, x, out.len(), d, Some(m), qs.len());
    let iota = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    let xb = x.as_chunks::<QBLOCK>().0;
    row_groups::<4, _, _>(
        out,
        bpr,
        d,
        m,
        |s, o| widen_f16_512(s, o),
        _mm512_setzero_ps(),
        |i| input_512(&xb[i]),
        |acc, &(x0, x1), j, d, m| {
            let table = _mm512_add_ps(_mm512_mul_ps(iota, _mm512_set1_ps(d)), _mm512_set1_ps(m));
            // SAFETY: `qs[j]` holds exactly the 16 bytes read.
            let q = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(qs[j].as_ptr().cast()) });
            prefetch(qs.as_ptr().wrapping_add(j + PREFETCH_BLOCKS));

            // vpermps reads the low four bits of each index: the low nibble.
            let wl = _mm512_permutexvar_ps(q, table);
            let wh = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), table);
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(wl, x0));
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(wh, x1));
        },
        |a| hsum16(a),
    );
}

/// [`crate::kernels::rows_q8_0`] with one 16-lane register per row, four
/// rows at a time.
#[target_feature(enable = "avx512f,f16c")]
pub(crate) fn rows_q8_0_512(
    d: &[u16],
    qs: &[[i8; QBLOCK]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    check_rows(bpr, x, out.len(), d, None, qs.len());
    let xb = x.as_chunks::<QBLOCK>().0;
    row_groups::<4, _, _>(
        out,
        bpr,
        d,
        &[],
        |s, o| widen_f16_512(s, o),
        _mm512_setzero_ps(),
        |i| input_512(&xb[i]),
        |acc, &(x0, x1), j, d, _| {
            let dv = _mm512_set1_ps(d);
            let q = qs[j].as_ptr();
            prefetch(qs.as_ptr().wrapping_add(j + PREFETCH_BLOCKS));

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
        },
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
