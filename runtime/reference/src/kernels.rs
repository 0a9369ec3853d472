//! Numeric kernels of the forward pass, written to follow ggml's CPU ops.
//!
//! Dot products use a fixed summation order: [`LANES`] interleaved partial
//! sums (lane `k` accumulates elements `k, k + LANES, ...`), the tail added to
//! the first lanes, then a fixed halving tree. Products and sums are separate
//! f32 operations (no fused multiply-add), so the result is bit-for-bit the
//! same whichever instruction set the kernel is compiled for (the AVX2 copies
//! below only widen the registers), however rows are grouped, and whichever
//! thread runs it. That makes prefill and token-by-token decode give the same
//! bits, and the dense and on-the-fly-dequantized weight paths agree exactly.

use std::sync::atomic::{AtomicU8, Ordering};

use q35_contract::rope::rope_thetas;

use crate::ReferenceError;

/// Interleaved partial sums per dot product.
pub const LANES: usize = 16;

#[inline(always)]
pub(crate) fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for k in 0..w {
            acc[k] += acc[k + w];
        }
        w /= 2;
    }
    acc[0]
}

#[inline(always)]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    for (k, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[k] += x * y;
    }
    reduce(acc)
}

/// Four rows against one vector; each result equals `dot_impl(row, x)`.
#[inline(always)]
fn dot4_impl(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let (cx, rx) = x.as_chunks::<LANES>();
    let (c0, r0) = w[0].as_chunks::<LANES>();
    let (c1, r1) = w[1].as_chunks::<LANES>();
    let (c2, r2) = w[2].as_chunks::<LANES>();
    let (c3, r3) = w[3].as_chunks::<LANES>();
    let mut a0 = [0.0f32; LANES];
    let mut a1 = [0.0f32; LANES];
    let mut a2 = [0.0f32; LANES];
    let mut a3 = [0.0f32; LANES];
    for i in 0..cx.len() {
        let xv = &cx[i];
        let (w0, w1, w2, w3) = (&c0[i], &c1[i], &c2[i], &c3[i]);
        for k in 0..LANES {
            a0[k] += w0[k] * xv[k];
            a1[k] += w1[k] * xv[k];
            a2[k] += w2[k] * xv[k];
            a3[k] += w3[k] * xv[k];
        }
    }
    for k in 0..rx.len() {
        a0[k] += r0[k] * rx[k];
        a1[k] += r1[k] * rx[k];
        a2[k] += r2[k] * rx[k];
        a3[k] += r3[k] * rx[k];
    }
    [reduce(a0), reduce(a1), reduce(a2), reduce(a3)]
}

#[inline(always)]
fn matmul_t_impl(w: &[f32], cols: usize, xs: &[f32], n: usize, out_t: &mut [f32]) {
    matmul_t_with(w, cols, xs, n, out_t, dot4_impl, dot_impl);
}

/// The loop of [`matmul_t`] over given kernels: rows in groups of four
/// against each token (`dot4`), the last rows one by one (`dot`). Inlined
/// into each instruction-set variant so its kernels inline too.
#[inline(always)]
pub(crate) fn matmul_t_with(
    w: &[f32],
    cols: usize,
    xs: &[f32],
    n: usize,
    out_t: &mut [f32],
    dot4: impl Fn([&[f32]; 4], &[f32]) -> [f32; 4],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
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

/// The instruction set the kernels run on, least to most capable. Every level
/// gives the same bits (module docs); the choice only changes speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable Rust (whatever the compiler makes of it for the baseline target).
    Scalar,
    /// 256-bit AVX2 kernels (with F16C).
    Avx2,
    /// 512-bit AVX-512F kernels (with AVX2 and F16C).
    Avx512,
}

impl SimdLevel {
    /// The name `Q35_SIMD` takes: `scalar`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Parses [`SimdLevel::name`]'s spelling.
    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> SimdLevel {
        match v {
            0 => SimdLevel::Scalar,
            1 => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        }
    }
}

/// The environment variable that caps the kernels' instruction set
/// (`scalar`, `avx2`, `avx512`), so one machine can measure the paths of
/// others (an AVX2-only host's on an AVX-512 one).
pub const SIMD_ENV: &str = "Q35_SIMD";

/// What this CPU supports.
pub fn detected_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        // The quantized kernels widen the file's fp16 scales with F16C.
        let f16c = std::arch::is_x86_feature_detected!("f16c");
        let avx2 = f16c && std::arch::is_x86_feature_detected!("avx2");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        if avx2 {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

/// `u8::MAX` until the level is first needed or set.
static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

/// The instruction set the kernels use: the CPU's ([`detected_simd_level`]),
/// capped by `Q35_SIMD` when that names a valid level, or as last set by
/// [`set_simd_level`].
#[inline]
pub fn simd_level() -> SimdLevel {
    let v = LEVEL.load(Ordering::Relaxed);
    if v != u8::MAX {
        return SimdLevel::from_u8(v);
    }
    let level = match simd_level_from_env() {
        Ok(Some(cap)) => cap.min(detected_simd_level()),
        Ok(None) | Err(_) => detected_simd_level(),
    };
    LEVEL.store(level as u8, Ordering::Relaxed);
    level
}

/// Uses at most `level` from now on (never more than the CPU supports) and
/// returns the level in effect. Process-wide; since every level gives the
/// same bits, switching while other threads compute changes only their speed.
pub fn set_simd_level(level: SimdLevel) -> SimdLevel {
    let level = level.min(detected_simd_level());
    LEVEL.store(level as u8, Ordering::Relaxed);
    level
}

/// The cap `Q35_SIMD` asks for: `None` when unset or empty, an error naming
/// the variable when it is not one of `scalar`, `avx2`, `avx512`.
pub fn simd_level_from_env() -> Result<Option<SimdLevel>, ReferenceError> {
    match std::env::var(SIMD_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(s) if s.is_empty() => Ok(None),
        Ok(s) => SimdLevel::parse(&s)
            .map(Some)
            .ok_or_else(|| ReferenceError::InvalidParameter {
                name: SIMD_ENV,
                what: format!("`{s}` is not one of scalar, avx2, avx512"),
            }),
        Err(std::env::VarError::NotUnicode(s)) => Err(ReferenceError::InvalidParameter {
            name: SIMD_ENV,
            what: format!("{s:?} is not one of scalar, avx2, avx512"),
        }),
    }
}

#[inline]
fn has_avx512() -> bool {
    simd_level() >= SimdLevel::Avx512
}

#[inline]
fn has_avx2() -> bool {
    simd_level() >= SimdLevel::Avx2
}

/// `a . b` in the fixed summation order described in the module docs.
///
/// # Panics
/// In debug builds, if the lengths differ.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (`simd_level` never exceeds what it detects).
        return unsafe { crate::simd::dot(a, b) };
    }
    dot_impl(a, b)
}

/// `out_t[r * n + t] = dot(w_r, x_t)` for every row `w_r` of `w` (rows of
/// `cols` values) and every token vector `x_t` of `xs` (`n` of them). The
/// output is transposed (row-major by weight row) so that row-parallel
/// callers write disjoint contiguous ranges.
///
/// # Panics
/// If `w`, `xs` or `out_t` are not whole multiples of `cols`/`n` as described.
pub fn matmul_t(w: &[f32], cols: usize, xs: &[f32], n: usize, out_t: &mut [f32]) {
    assert!(
        cols > 0 && w.len().is_multiple_of(cols),
        "weight is not whole rows"
    );
    assert_eq!(xs.len(), n * cols, "input is not n rows");
    assert_eq!(out_t.len(), w.len() / cols * n, "output size");
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F (`simd_level` never exceeds what it detects).
        unsafe { crate::simd::matmul_t_512(w, cols, xs, n, out_t) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (`simd_level` never exceeds what it detects).
        unsafe { crate::simd::matmul_t(w, cols, xs, n, out_t) };
        return;
    }
    matmul_t_impl(w, cols, xs, n, out_t)
}

/// Bytes of quantized values in one 32-weight Q4_1 block.
pub const Q4_1_QS: usize = 16;
/// Weights per quantized block (Q4_1, Q8_0).
pub const QBLOCK: usize = 32;

/// An IEEE half (bit pattern) as f32, exactly.
#[inline(always)]
fn f16(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

#[inline(always)]
fn rows_q4_1_impl(
    d: &[u16],
    m: &[u16],
    qs: &[[u8; Q4_1_QS]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let bpr = cols / QBLOCK;
    for (r, o) in out.iter_mut().enumerate() {
        let mut acc = [0.0f32; LANES];
        let (xb, _) = x.as_chunks::<QBLOCK>();
        let blocks = r * bpr..(r + 1) * bpr;
        for (((&d, &m), q), xv) in d[blocks.clone()]
            .iter()
            .zip(&m[blocks.clone()])
            .zip(&qs[blocks])
            .zip(xb)
        {
            let (d, m) = (f16(d), f16(m));
            for k in 0..LANES {
                let w = f32::from(q[k] & 0x0f) * d + m;
                acc[k] += w * xv[k];
            }
            for k in 0..LANES {
                let w = f32::from(q[k] >> 4) * d + m;
                acc[k] += w * xv[LANES + k];
            }
        }
        *o = reduce(acc);
    }
}

#[inline(always)]
fn rows_q8_0_impl(d: &[u16], qs: &[[i8; QBLOCK]], cols: usize, x: &[f32], out: &mut [f32]) {
    let bpr = cols / QBLOCK;
    for (r, o) in out.iter_mut().enumerate() {
        let mut acc = [0.0f32; LANES];
        let (xb, _) = x.as_chunks::<QBLOCK>();
        let blocks = r * bpr..(r + 1) * bpr;
        for ((&d, q), xv) in d[blocks.clone()].iter().zip(&qs[blocks]).zip(xb) {
            let d = f16(d);
            for k in 0..LANES {
                acc[k] += (f32::from(q[k]) * d) * xv[k];
            }
            for k in 0..LANES {
                acc[k] += (f32::from(q[LANES + k]) * d) * xv[LANES + k];
            }
        }
        *o = reduce(acc);
    }
}

/// `out[r] = dot(dequant(row r), x)` for Q4_1 rows given as the file holds
/// them: per-block scales `d` and minimums `m` (IEEE half bit patterns,
/// widened exactly to f32) and nibbles (`q[k]` holds weight `k` low and
/// weight `k + 16` high). Each weight is `q * d + m` in f32, exactly
/// llama.cpp's dequantization, and the sum follows [`dot`]'s order, so the
/// result equals `dot` on the dequantized row bit for bit.
///
/// # Panics
/// If `cols` is not a multiple of 32 or the slices are too short.
pub fn rows_q4_1(
    d: &[u16],
    m: &[u16],
    qs: &[[u8; Q4_1_QS]],
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    assert!(
        cols.is_multiple_of(QBLOCK) && x.len() == cols,
        "Q4_1 row shape"
    );
    assert!(
        d.len() >= out.len() * cols / QBLOCK && qs.len() == d.len() && m.len() == d.len(),
        "Q4_1 rows"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F and F16C (`simd_level` never exceeds what it detects).
        unsafe { crate::simd::rows_q4_1_512(d, m, qs, cols, x, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (`simd_level` never exceeds what it detects).
        unsafe { crate::simd::rows_q4_1(d, m, qs, cols, x, out) };
        return;
    }
    rows_q4_1_impl(d, m, qs, cols, x, out)
}

/// As [`rows_q4_1`] for Q8_0 rows (per-block scale `d` as half bits, 32
/// signed bytes; weight `q * d`).
///
/// # Panics
/// If `cols` is not a multiple of 32 or the slices are too short.
pub fn rows_q8_0(d: &[u16], qs: &[[i8; QBLOCK]], cols: usize, x: &[f32], out: &mut [f32]) {
    assert!(
        cols.is_multiple_of(QBLOCK) && x.len() == cols,
        "Q8_0 row shape"
    );
    assert!(
        d.len() >= out.len() * cols / QBLOCK && qs.len() == d.len(),
        "Q8_0 rows"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F and F16C (`simd_level` never exceeds what it detects).
        unsafe { crate::simd::rows_q8_0_512(d, qs, cols, x, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (`simd_level` never exceeds what it detects).
        unsafe { crate::simd::rows_q8_0(d, qs, cols, x, out) };
        return;
    }
    rows_q8_0_impl(d, qs, cols, x, out)
}

/// RMSNorm as ggml computes it: the mean of squares summed in f64, `scale =
/// 1 / sqrt(mean + eps)` in f32, `out = (x * scale) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mut sum = 0.0f64;
    for &v in x {
        sum += f64::from(v * v);
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// Cosines and sines of the RoPE angles for one position, as ggml's
/// `ggml_rope_cache_init` computes them: the angles are the contract's
/// [`rope_thetas`] (`theta_0 = pos`, each next pair's angle the previous
/// times `theta_scale = base^(-2 / head_dim)`, an f32 running product), and
/// cos/sin are evaluated in f32 as ggml does.
#[derive(Debug, Clone)]
pub struct RopeAngles {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAngles {
    /// Angles for position `pos` over a head of `head_dim` (even) values.
    pub fn new(pos: usize, head_dim: usize, base: f32) -> RopeAngles {
        let (cos, sin) = rope_thetas(pos, head_dim, base)
            .map(|theta| (theta.cos(), theta.sin()))
            .unzip();
        RopeAngles { cos, sin }
    }

    /// Rotates every head of `x` (heads of `2 * cos.len()` values) in place,
    /// llama.cpp's `LLAMA_ROPE_TYPE_NORM`, the LLaMA type: adjacent pairs
    /// `(x[2i], x[2i+1])` rotate by angle `i`. (GGUF files store LLaMA's Q
    /// and K rows permuted so that this pairing is the right one.)
    pub fn apply(&self, x: &mut [f32]) {
        let hd = 2 * self.cos.len();
        for head in x.chunks_exact_mut(hd) {
            for (i, (&c, &s)) in self.cos.iter().zip(&self.sin).enumerate() {
                let x0 = head[2 * i];
                let x1 = head[2 * i + 1];
                head[2 * i] = x0 * c - x1 * s;
                head[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }
}

/// SiLU, `x / (1 + e^-x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Softmax in place as ggml's `soft_max` does it: subtract the maximum,
/// exponentiate, sum in f64, multiply by `1 / sum` rounded to f32.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `log(sum(exp(x)))` in f64, stable.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max);
    let sum: f64 = x.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    max + sum.ln()
}

/// Index of the largest value; the lowest index wins a tie (as a stable
/// descending sort would pick). `None` for an empty slice.
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    }

    #[test]
    fn dot_matches_f64_and_portable_path() {
        for len in [1usize, 5, 16, 17, 33, 576, 1000] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
                .collect();
            let d = dot(&a, &b);
            assert!((f64::from(d) - naive_dot(&a, &b)).abs() < 1e-3, "len {len}");
            assert_eq!(d.to_bits(), dot_impl(&a, &b).to_bits(), "len {len}");
        }
    }

    #[test]
    fn quantized_rows_equal_dequantized_dots() {
        // Row counts around the kernels' groups of 2 and 4; 70 blocks a row
        // cross the 64-block scale chunk.
        for (bpr, rows) in [(3usize, 5usize), (1, 1), (2, 4), (3, 9), (70, 7)] {
            check_quantized_rows(bpr, rows);
        }
    }

    fn check_quantized_rows(bpr: usize, rows: usize) {
        let cols = bpr * QBLOCK;
        let nb = rows * bpr;
        let h = |v: f32| half::f16::from_f32(v).to_bits();
        let d4: Vec<u16> = (0..nb).map(|i| h(0.01 * (i % 13) as f32 + 0.002)).collect();
        let m4: Vec<u16> = (0..nb).map(|i| h(-0.05 * (i % 7) as f32)).collect();
        let q4: Vec<[u8; Q4_1_QS]> = (0..nb)
            .map(|i| std::array::from_fn(|k| ((i * 31 + k * 17) % 256) as u8))
            .collect();
        let d8: Vec<u16> = (0..nb)
            .map(|i| h(0.003 * (i % 11) as f32 + 0.001))
            .collect();
        let q8: Vec<[i8; QBLOCK]> = (0..nb)
            .map(|i| std::array::from_fn(|k| ((i * 29 + k * 13) % 256) as u8 as i8))
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let mut o4 = vec![0.0; rows];
        let mut o8 = vec![0.0; rows];
        rows_q4_1(&d4, &m4, &q4, cols, &x, &mut o4);
        rows_q8_0(&d8, &q8, cols, &x, &mut o8);
        let mut p4 = vec![0.0; rows];
        let mut p8 = vec![0.0; rows];
        rows_q4_1_impl(&d4, &m4, &q4, cols, &x, &mut p4);
        rows_q8_0_impl(&d8, &q8, cols, &x, &mut p8);
        for r in 0..rows {
            let mut w4 = vec![0.0f32; cols];
            let mut w8 = vec![0.0f32; cols];
            for b in 0..bpr {
                let j = r * bpr + b;
                let (d, m) = (f16(d4[j]), f16(m4[j]));
                for k in 0..16 {
                    let q = q4[j][k];
                    w4[b * 32 + k] = f32::from(q & 0x0f) * d + m;
                    w4[b * 32 + 16 + k] = f32::from(q >> 4) * d + m;
                }
                for k in 0..32 {
                    w8[b * 32 + k] = f32::from(q8[j][k]) * f16(d8[j]);
                }
            }
            let what = format!("{bpr} blocks x {rows} rows, row {r}");
            assert_eq!(o4[r].to_bits(), dot_impl(&w4, &x).to_bits(), "q4_1 {what}");
            assert_eq!(o8[r].to_bits(), dot_impl(&w8, &x).to_bits(), "q8_0 {what}");
            assert_eq!(o4[r].to_bits(), p4[r].to_bits(), "q4_1 {what}");
            assert_eq!(o8[r].to_bits(), p8[r].to_bits(), "q8_0 {what}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            let detected = detected_simd_level();
            if detected >= SimdLevel::Avx2 {
                let mut a4 = vec![0.0; rows];
                let mut a8 = vec![0.0; rows];
                // SAFETY: AVX2 and F16C are available (checked just above).
                unsafe {
                    crate::simd::rows_q4_1(&d4, &m4, &q4, cols, &x, &mut a4);
                    crate::simd::rows_q8_0(&d8, &q8, cols, &x, &mut a8);
                }
                assert_eq!(a4, p4, "avx2 q4_1 {bpr}x{rows}");
                assert_eq!(a8, p8, "avx2 q8_0 {bpr}x{rows}");
            }
            if detected >= SimdLevel::Avx512 {
                let mut a4 = vec![0.0; rows];
                let mut a8 = vec![0.0; rows];
                // SAFETY: AVX-512F and F16C are available (checked just above).
                unsafe {
                    crate::simd::rows_q4_1_512(&d4, &m4, &q4, cols, &x, &mut a4);
                    crate::simd::rows_q8_0_512(&d8, &q8, cols, &x, &mut a8);
                }
                assert_eq!(a4, p4, "avx512 q4_1 {bpr}x{rows}");
                assert_eq!(a8, p8, "avx512 q8_0 {bpr}x{rows}");
            }
        }
    }

    #[test]
    fn matmul_t_rows_equal_single_dots() {
        for (cols, rows, n) in [
            (37, 7, 3),
            (64, 9, 2),
            (16, 4, 1),
            (5, 3, 2),
            (96, 6, 5),
            (33, 1, 1),
        ] {
            check_matmul(cols, rows, n);
        }
    }

    fn check_matmul(cols: usize, rows: usize, n: usize) {
        check_matmul_paths(cols, rows, n);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let xs: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 13 % 19) as f32 - 9.0) * 0.07)
            .collect();
        let mut out = vec![0.0; rows * n];
        matmul_t(&w, cols, &xs, n, &mut out);
        for r in 0..rows {
            for t in 0..n {
                let d = dot_impl(&w[r * cols..(r + 1) * cols], &xs[t * cols..(t + 1) * cols]);
                assert_eq!(out[r * n + t].to_bits(), d.to_bits());
            }
        }
    }

    /// The AVX2 and AVX-512 matmuls equal the portable one.
    fn check_matmul_paths(cols: usize, rows: usize, n: usize) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.03)
            .collect();
        let xs: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 17 % 23) as f32 - 11.0) * 0.09)
            .collect();
        let mut want = vec![0.0; rows * n];
        matmul_t_impl(&w, cols, &xs, n, &mut want);
        #[cfg(target_arch = "x86_64")]
        {
            if detected_simd_level() >= SimdLevel::Avx2 {
                let mut got = vec![0.0; rows * n];
                // SAFETY: AVX2 is available (checked just above).
                unsafe { crate::simd::matmul_t(&w, cols, &xs, n, &mut got) };
                assert_eq!(got, want, "avx2 {cols}x{rows}x{n}");
            }
            if detected_simd_level() >= SimdLevel::Avx512 {
                let mut got = vec![0.0; rows * n];
                // SAFETY: AVX-512F is available (checked just above).
                unsafe { crate::simd::matmul_t_512(&w, cols, &xs, n, &mut got) };
                assert_eq!(got, want, "avx512 {cols}x{rows}x{n}");
            }
        }
    }

    #[test]
    fn simd_levels_parse_and_never_exceed_the_cpu() {
        for l in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            assert_eq!(SimdLevel::parse(l.name()), Some(l));
        }
        assert_eq!(SimdLevel::parse("avx-512"), None);
        assert_eq!(SimdLevel::parse(""), None);
        let before = simd_level();
        assert_eq!(set_simd_level(SimdLevel::Avx512), detected_simd_level());
        assert_eq!(set_simd_level(SimdLevel::Scalar), SimdLevel::Scalar);
        assert_eq!(simd_level(), SimdLevel::Scalar);
        set_simd_level(before);
    }

    #[test]
    fn rope_matches_hand_computation() {
        // head_dim 4, base 100: theta_scale = 100^(-1/2) = 0.1.
        // Position 3: pair 0 rotates by 3 rad, pair 1 by 0.3 rad.
        let r = RopeAngles::new(3, 4, 100.0);
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        r.apply(&mut x);
        let (c0, s0) = (3.0f64.cos(), 3.0f64.sin());
        let (c1, s1) = (0.3f64.cos(), 0.3f64.sin());
        let want = [
            1.0 * c0 - 2.0 * s0,
            1.0 * s0 + 2.0 * c0,
            3.0 * c1 - 4.0 * s1,
            3.0 * s1 + 4.0 * c1,
        ];
        for (g, w) in x.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
        }
        // Position 0 is the identity.
        let mut y = vec![1.0f32, 2.0, 3.0, 4.0];
        RopeAngles::new(0, 4, 100.0).apply(&mut y);
        assert_eq!(y, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn rms_norm_and_softmax() {
        let x = [3.0f32, 4.0];
        let mut out = [0.0f32; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let s = (12.5f64).sqrt();
        assert!((f64::from(out[0]) - 3.0 / s).abs() < 1e-6);
        assert!((f64::from(out[1]) - 8.0 / s).abs() < 1e-6);
        let mut p = [1.0f32, 2.0, 3.0];
        softmax_in_place(&mut p);
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((f64::from(p[2]) - 3.0f64.exp() / z).abs() < 1e-6);
        assert!((log_sum_exp(&[1.0, 2.0, 3.0]) - z.ln()).abs() < 1e-12);
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 2.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
