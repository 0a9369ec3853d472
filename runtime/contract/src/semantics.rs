//! The arithmetic contract between the quantized model and the hardware
//! (docs/q35-format.md, "Integer semantics" and "Other operators").
//!
//! Every function here is defined by a fixed sequence of IEEE-754 binary32
//! operations (add, subtract, multiply, divide, square root, each correctly
//! rounded to nearest-even) and exact integer arithmetic, evaluated in the
//! order written. Rust never contracts `a * b + c` into a fused multiply-add
//! and never reassociates float sums, so the code is the specification: the
//! quantized forward pass and the simulator call these functions, and any
//! other implementation that performs the same operations in the same order
//! agrees bit for bit. No libm transcendental is used: [`exp`] is a fixed
//! polynomial, and rotary tables are data computed by the compiler.

use crate::ContractError;
use crate::rope::RopeTable;

/// Largest |int8 activation code|: activations saturate to `-127 ..= 127`
/// (the code -128 is never produced).
pub const ACT_MAX: i32 = 127;

/// Tokens whose largest |activation| is below `2^-120` quantize to zero.
pub const ACT_ZERO_BELOW: f32 = f32::from_bits(0x0380_0000); // 2^-120

/// An activation vector quantized to int8 with one dynamic f32 scale (per
/// token).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationI8 {
    scale: f32,
    codes: Vec<i8>,
}

impl ActivationI8 {
    /// Quantizes one token's activations:
    ///
    /// ```text
    /// amax  = max_i |x_i|                      (exact)
    /// scale = amax / 127                       (f32 division)
    /// inv   = 127 / amax                       (f32 division)
    /// q_i   = clamp(round_half_away(x_i * inv), -127, 127)
    /// ```
    ///
    /// If `amax < 2^-120` (including 0; below it `127 / amax` could
    /// overflow) the token is zero: `scale = 0` and every code is 0. A NaN
    /// or infinity is an error.
    pub fn quantize(x: &[f32]) -> Result<ActivationI8, ContractError> {
        let mut amax = 0f32;
        for (index, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(ContractError::NonFinite {
                    what: "activation",
                    index,
                });
            }
            amax = amax.max(v.abs());
        }
        if amax < ACT_ZERO_BELOW {
            return Ok(ActivationI8 {
                scale: 0.0,
                codes: vec![0; x.len()],
            });
        }
        let scale = amax / 127.0;
        let inv = 127.0 / amax;
        let codes = x
            .iter()
            .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Ok(ActivationI8 { scale, codes })
    }

    /// Builds an activation from codes and a scale (e.g. read back from a
    /// simulator). Codes must lie in `-127 ..= 127` and the scale must be
    /// finite and non-negative.
    pub fn from_parts(scale: f32, codes: Vec<i8>) -> Result<ActivationI8, ContractError> {
        if !scale.is_finite() || scale < 0.0 {
            return Err(ContractError::NonFinite {
                what: "activation scale",
                index: 0,
            });
        }
        if let Some(index) = codes.iter().position(|&c| c == i8::MIN) {
            return Err(ContractError::NonFinite {
                what: "activation code (-128 is outside -127..=127)",
                index,
            });
        }
        Ok(ActivationI8 { scale, codes })
    }

    /// The per-token scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The int8 codes.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// `scale * q_i` in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .iter()
            .map(|&c| self.scale * f32::from(c))
            .collect()
    }
}

/// The int32 accumulator of one group: `sum_i x_i * w_i`, exact. Integer
/// addition is associative, so any summation order (systolic, SIMD) gives
/// the same value as long as no partial sum overflows, which
/// [`check_no_overflow`] proves.
pub fn group_dot(x: &[i8], w: &[i8]) -> i32 {
    debug_assert_eq!(x.len(), w.len());
    x.iter()
        .zip(w)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// Dequantizes and combines a row's group accumulators:
///
/// ```text
/// y = +0.0
/// for g in 0, 1, ..., n_groups - 1:      (ascending)
///     p = f32(acc_g) * scale_g           (i32 -> f32 round-to-nearest-even, then f32 multiply)
///     y = y + p                          (f32 add)
/// return y * act_scale                   (f32 multiply)
/// ```
///
/// `f32(acc_g)` is exact while `|acc_g| <= 2^24`.
pub fn combine_groups(accs: &[i32], scales: &[f32], act_scale: f32) -> f32 {
    debug_assert_eq!(accs.len(), scales.len());
    let mut y = 0f32;
    for (&a, &s) in accs.iter().zip(scales) {
        let p = a as f32 * s;
        y += p;
    }
    y * act_scale
}

/// Worst-case |int32 accumulator| of a `k`-long dot product of values with
/// |activation| <= `act_max` and |weight| <= `code_max`:
/// `k * act_max * code_max` (saturating at `u64::MAX`).
pub fn accumulator_bound(k: u64, act_max: u64, code_max: u64) -> u64 {
    k.saturating_mul(act_max).saturating_mul(code_max)
}

/// Proves that an int32 accumulator over `k` products cannot overflow, or
/// returns a diagnostic naming `op` and the bound.
pub fn check_no_overflow(
    op: &str,
    k: u64,
    act_max: u64,
    code_max: u64,
) -> Result<(), ContractError> {
    let bound = accumulator_bound(k, act_max, code_max);
    if bound > i32::MAX as u64 {
        return Err(ContractError::AccumulatorOverflow {
            op: op.to_owned(),
            k,
            act_max,
            code_max,
            bound,
        });
    }
    Ok(())
}

/// Sequential f32 dot product: `s = +0.0; s = s + a_i * b_i` for ascending
/// `i` (product rounded, then sum rounded).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut s = 0f32;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// RMSNorm in f32:
///
/// ```text
/// ss = +0.0; ss = ss + x_i * x_i       (ascending i)
/// mean = ss / n
/// r = 1 / sqrt(mean + eps)             (add, IEEE sqrt, divide)
/// out_i = (x_i * r) * w_i
/// ```
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), weight.len());
    debug_assert_eq!(x.len(), out.len());
    let ss = dot_f32(x, x);
    let mean = ss / x.len() as f32;
    let r = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * r) * w;
    }
}

/// Residual add in f32: `acc_i = acc_i + x_i`.
pub fn add_in_place(acc: &mut [f32], x: &[f32]) {
    debug_assert_eq!(acc.len(), x.len());
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `log2(e)` rounded to f32 (`0x3fb8aa3b`).
pub const EXP_LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
/// High part of `ln 2` (`0x3f318000` = 0.693359375, exact).
pub const EXP_LN2_HI: f32 = f32::from_bits(0x3f31_8000);
/// Low part of `ln 2` (`0xb95e8083` ~ -2.12194440e-4).
pub const EXP_LN2_LO: f32 = f32::from_bits(0xb95e_8083);
/// Cephes `expf` polynomial, highest degree first: ~1.9875691500e-4,
/// 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 0.5.
pub const EXP_POLY: [f32; 6] = [
    f32::from_bits(0x3950_6967),
    f32::from_bits(0x3ab7_43ce),
    f32::from_bits(0x3c08_8908),
    f32::from_bits(0x3d2a_a9c1),
    f32::from_bits(0x3e2a_aaaa),
    f32::from_bits(0x3f00_0000),
];

/// `2^n` as an f32 for `-126 <= n <= 127` (exact).
fn pow2(n: i32) -> f32 {
    debug_assert!((-126..=127).contains(&n));
    f32::from_bits(((n + 127) as u32) << 23)
}

/// The contract's exponential (Cephes `expf`): for `x > 88.72283` it is
/// `+inf`, for `x < -103.97208` it is `+0.0`, NaN stays NaN; otherwise
///
/// ```text
/// n = floor(x * EXP_LOG2E + 0.5)                      (f32 mul, add, floor)
/// r = (x - n * EXP_LN2_HI) - n * EXP_LN2_LO           (each op rounded)
/// z = r * r
/// p = EXP_POLY[0]; p = p * r + EXP_POLY[k] for k = 1..5 (multiply, then add)
/// y = ((p * z + r) + 1)
/// result = (y * 2^127) * 2^(n-127)   if n > 127
///          y * 2^n                     if -126 <= n <= 127
///          (y * 2^(n+64)) * 2^-64      if n < -126
/// ```
///
/// Relative error about 2e-7 against the true exponential.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.722_83 {
        return f32::INFINITY;
    }
    if x < -103.972_08 {
        return 0.0;
    }
    let n = (x * EXP_LOG2E + 0.5).floor();
    let r = x - n * EXP_LN2_HI;
    let r = r - n * EXP_LN2_LO;
    let z = r * r;
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * z + r + 1.0;
    let n = n as i32;
    if n > 127 {
        (y * pow2(127)) * pow2(n - 127)
    } else if n >= -126 {
        y * pow2(n)
    } else {
        (y * pow2(n + 64)) * pow2(-64)
    }
}

/// SiLU in f32: `x / (1 + exp(-x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// SwiGLU: `out_i = silu(gate_i) * up_i`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    debug_assert_eq!(gate.len(), up.len());
    debug_assert_eq!(gate.len(), out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// Softmax in place, f32:
///
/// ```text
/// m = max_i x_i                        (exact)
/// e_i = exp(x_i - m)
/// s = +0.0; s = s + e_i                (ascending i)
/// inv = 1 / s
/// x_i = e_i * inv
/// ```
pub fn softmax_in_place(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = exp(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Rotates one head vector (`head_dim` values) in place at position `pos`,
/// pairing adjacent elements (llama.cpp's "normal" rope, matching the GGUF
/// row permutation of Q and K):
///
/// ```text
/// a = x[2i], b = x[2i+1], (c, s) = table(pos, i)
/// x[2i]   = a * c - b * s
/// x[2i+1] = a * s + b * c
/// ```
pub fn rope_in_place(x: &mut [f32], pos: usize, table: &RopeTable) {
    debug_assert_eq!(x.len(), table.head_dim());
    for i in 0..x.len() / 2 {
        let (c, s) = table.get(pos, i);
        let a = x[2 * i];
        let b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/// One attention head over `n` cached positions, f32:
///
/// ```text
/// score_t = dot_f32(q, k_t) * scale    for t in 0..n
/// p = softmax(score)
/// out_d = +0.0; out_d = out_d + p_t * v_t[d]   (ascending t)
/// ```
///
/// `keys` and `values` hold `n` rows of `q.len()` values; `scale` is
/// `1 / sqrt(head_dim)` computed in f32 by the caller.
pub fn attention_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    let n = keys.len() / d;
    scores.clear();
    scores.extend((0..n).map(|t| dot_f32(q, &keys[t * d..(t + 1) * d]) * scale));
    softmax_in_place(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[t * d..(t + 1) * d]) {
            *o += p * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_quantization_rounds_half_away_and_saturates() {
        // amax = 127 => inv = 1, so codes are round(x).
        let a = ActivationI8::quantize(&[127.0, -2.5, 2.5, 0.49, -127.0]).unwrap();
        assert_eq!(a.scale(), 1.0);
        assert_eq!(a.codes(), &[127, -3, 3, 0, -127]);
        let z = ActivationI8::quantize(&[0.0, -0.0]).unwrap();
        assert_eq!((z.scale(), z.codes()), (0.0, &[0i8, 0][..]));
        assert_eq!(ACT_ZERO_BELOW, 2f32.powi(-120));
        let tiny = ActivationI8::quantize(&[1e-37, -5e-38]).unwrap();
        assert_eq!((tiny.scale(), tiny.codes()), (0.0, &[0i8, 0][..]));
        let small = ActivationI8::quantize(&[2f32.powi(-118), -(2f32.powi(-119))]).unwrap();
        assert_eq!(small.codes(), &[127, -64]); // -63.5 rounds away from zero
        assert!(matches!(
            ActivationI8::quantize(&[1.0, f32::NAN]),
            Err(ContractError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn activation_codes_stay_in_range() {
        for amax in [1e-30f32, 1e-3, 0.7, 3.0, 1e30] {
            let x: Vec<f32> = (0..100).map(|i| amax * ((i as f32) / 50.0 - 1.0)).collect();
            let a = ActivationI8::quantize(&x).unwrap();
            assert!(
                a.codes()
                    .iter()
                    .all(|&c| (-127..=127).contains(&i32::from(c)))
            );
            assert!(a.codes().contains(&-127), "amax {amax} should map to -127");
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -100f32;
        while x < 88.0 {
            let got = f64::from(exp(x));
            let want = f64::from(x).exp();
            if want > 1e-37 {
                worst = worst.max(((got - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(-100.0) > 0.0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0f32, 2.0, 3.0, -50.0];
        softmax_in_place(&mut x);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0] && x[0] > x[3]);
    }

    #[test]
    fn rmsnorm_matches_definition() {
        let x = [3.0f32, 4.0];
        let mut out = [0f32; 2];
        rmsnorm(&x, &[1.0, 2.0], 0.0, &mut out);
        // mean square 12.5
        let r = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * r, (4.0 * r) * 2.0]);
    }

    #[test]
    fn rope_rotates_pairs() {
        let t = RopeTable::new(4, 10000.0, 3);
        let mut x = [1.0f32, 0.0, 1.0, 0.0];
        rope_in_place(&mut x, 0, &t);
        assert_eq!(x, [1.0, 0.0, 1.0, 0.0]);
        rope_in_place(&mut x, 2, &t);
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[1] - 2f32.sin()).abs() < 1e-6);
        let norm = x[2] * x[2] + x[3] * x[3];
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn overflow_bound() {
        assert_eq!(accumulator_bound(28_672, 127, 8), 29_130_752);
        assert!(check_no_overflow("ffn_down", 28_672, 127, 8).is_ok());
        let k = (i32::MAX as u64) / (127 * 8);
        assert!(check_no_overflow("edge", k, 127, 8).is_ok());
        let err = check_no_overflow("blk.0.ffn_down", k + 1, 127, 8).unwrap_err();
        assert!(err.to_string().contains("blk.0.ffn_down"));
        assert!(err.to_string().contains(&((k + 1) * 127 * 8).to_string()));
        assert_eq!(accumulator_bound(u64::MAX, 2, 2), u64::MAX);
    }
}
