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
//!
//! Sums follow the machine: a sum across the lanes of a vector (RMSNorm's
//! sum of squares, softmax's sum of exponentials, an f32 LM head's dot
//! products) is [`lane_sum`], the fixed word-then-shift-and-add order of
//! docs/isa.md section 4; a sum along a dimension that is not on the lanes
//! (attention scores over the head dimension, attention output over
//! positions, group partial sums over groups) is sequential in ascending
//! order, one lane at a time. Maxima are exact in any order.

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
    ///
    /// It is [`prescale_activation`] (the f32 half: `scale` and `x_i * inv`)
    /// followed by [`f32_to_i8`] of each prescaled value, the split the
    /// machine runs (docs/lpu-dialect.md, `lpu.quantize` and `lpu.matmul`).
    pub fn quantize(x: &[f32]) -> Result<ActivationI8, ContractError> {
        let (scale, xs) = prescale_activation(x)?;
        let codes = xs.into_iter().map(f32_to_i8).collect();
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

/// The f32 half of [`ActivationI8::quantize`]: the scale and the prescaled
/// values `x_i * inv`, before rounding:
///
/// ```text
/// amax  = max_i |x_i|                      (exact)
/// scale = amax / 127, inv = 127 / amax     (f32 divisions)
/// xs_i  = x_i * inv                        (f32 multiply)
/// ```
///
/// If `amax < 2^-120` the scale is 0 and every `xs_i` is `+0.0`. A NaN or
/// infinity is an error.
pub fn prescale_activation(x: &[f32]) -> Result<(f32, Vec<f32>), ContractError> {
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
        return Ok((0.0, vec![0.0; x.len()]));
    }
    let scale = amax / 127.0;
    let inv = 127.0 / amax;
    Ok((scale, x.iter().map(|&v| v * inv).collect()))
}

/// A prescaled activation to its int8 code (the VXM's `f32toi8`): round
/// half away from zero, clamp to `-127 ..= 127`; NaN gives 0.
pub fn f32_to_i8(v: f32) -> i8 {
    // `as` saturates and maps NaN to 0; the clamp keeps -128 out.
    v.round().clamp(-127.0, 127.0) as i8
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
/// `f32(acc_g)` is exact while `|acc_g| <= 2^24`. The sum over groups is
/// sequential because that is the machine's order: the MXM's int32 output
/// puts output rows on the lanes, one vector per group, and each lane adds
/// its groups one after another.
pub fn combine_groups(accs: &[i32], scales: &[f32], act_scale: f32) -> f32 {
    debug_assert_eq!(accs.len(), scales.len());
    let mut y = 0f32;
    for (&a, &s) in accs.iter().zip(scales) {
        let p = a as f32 * s;
        y += p;
    }
    y * act_scale
}

/// An activation vector quantized to int8 with one dynamic f32 scale per
/// group of `group` consecutive channels (the last group ragged): the
/// per-group activation-scale *variant* of docs/q35-format.md section 14,
/// not the default contract (8.1 has one scale per token). Each group is
/// quantized exactly as [`ActivationI8::quantize`] quantizes a token
/// ([`prescale_activation`] of the group, then [`f32_to_i8`]), so a group
/// whose largest |value| is below `2^-120` has scale 0 and codes 0.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedActivationI8 {
    group: usize,
    scales: Vec<f32>,
    codes: Vec<i8>,
}

impl GroupedActivationI8 {
    /// Quantizes `x` in groups of `group` channels (group `g` is
    /// `x[g*group .. min((g+1)*group, len)]`). A zero `group` is a length
    /// error; a NaN or infinity is an error naming its index in `x`.
    pub fn quantize(x: &[f32], group: usize) -> Result<GroupedActivationI8, ContractError> {
        if group == 0 {
            return Err(ContractError::LengthMismatch {
                what: "activation group size",
                got: 0,
                expected: 1,
            });
        }
        let mut scales = Vec::with_capacity(x.len().div_ceil(group));
        let mut codes = Vec::with_capacity(x.len());
        for (g, part) in x.chunks(group).enumerate() {
            let (scale, xs) = prescale_activation(part).map_err(|e| match e {
                ContractError::NonFinite { what, index } => ContractError::NonFinite {
                    what,
                    index: g * group + index,
                },
                other => other,
            })?;
            scales.push(scale);
            codes.extend(xs.into_iter().map(f32_to_i8));
        }
        Ok(GroupedActivationI8 {
            group,
            scales,
            codes,
        })
    }

    /// Channels per group.
    pub fn group(&self) -> usize {
        self.group
    }

    /// The per-group scales, in group order.
    pub fn scales(&self) -> &[f32] {
        &self.scales
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

    /// `scale_g * q_i` in f32, `g` the group of channel `i`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| self.scales[i / self.group] * f32::from(c))
            .collect()
    }
}

/// [`combine_groups`] for per-group activation scales (the variant of
/// docs/q35-format.md section 14): each group's product gets its own
/// activation scale before the sum, and there is no final multiply:
///
/// ```text
/// y = +0.0
/// for g in 0, 1, ..., n_groups - 1:      (ascending)
///     p = f32(acc_g) * scale_g           (i32 -> f32 round-to-nearest-even, then f32 multiply)
///     p = p * act_scale_g                (f32 multiply)
///     y = y + p                          (f32 add)
/// return y
/// ```
pub fn combine_groups_act(accs: &[i32], scales: &[f32], act_scales: &[f32]) -> f32 {
    debug_assert_eq!(accs.len(), scales.len());
    debug_assert_eq!(accs.len(), act_scales.len());
    let mut y = 0f32;
    for ((&a, &s), &t) in accs.iter().zip(scales).zip(act_scales) {
        let p = a as f32 * s;
        let p = p * t;
        y += p;
    }
    y
}

/// The unnormalised Walsh-Hadamard transform of `x` in place (length a
/// power of two), f32, in this order (each add and subtract rounded):
///
/// ```text
/// h = 1
/// while h < n:
///     for i in (0, 2h, 4h, ...): for j in i .. i + h:
///         (a, b) = (x_j, x_{j+h});  x_j = a + b;  x_{j+h} = a - b
///     h = 2h
/// ```
///
/// `H H = n I`, so applying it twice multiplies by `n`. Part of the
/// rotation variant of docs/q35-format.md section 14, not the contract.
pub fn hadamard_in_place(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two() || n == 0);
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// The randomized block Hadamard rotation of the section 14 variant: each
/// `x_i` times `signs_i` (`+-1`, exact), then [`hadamard_in_place`] on each
/// group of `group` channels (`group` a power of two dividing `x.len()`).
pub fn rotate_groups(x: &mut [f32], signs: &[f32], group: usize) {
    debug_assert_eq!(x.len(), signs.len());
    for (v, &s) in x.iter_mut().zip(signs) {
        *v *= s;
    }
    for part in x.chunks_exact_mut(group) {
        hadamard_in_place(part);
    }
}

/// The dense f32 mixing product of the stream-rotation variant
/// (docs/q35-format.md section 14): `out = M x` for a square `n x n`
/// matrix `m` (row-major, `n = x.len()`), each output row summed **along
/// lanes** (8.4): the output rows sit on the lanes, and every lane adds its
/// row's products in ascending input order,
///
/// ```text
/// out_r = +0.0
/// for i = 0, 1, ..., n - 1:  out_r = out_r + m[r, i] * x_i   (product rounded, then sum)
/// ```
///
/// so the machine broadcasts `x_i` to every lane, multiplies it by column
/// `i` of `M` (held in MEM as lane words) and adds, once per input channel.
/// The contract for a model whose `[quantization] rotation` is
/// `block-hadamard` (section 14.5), where `M` is block-diagonal and the
/// machine computes it as [`mix_blocks_along_lanes`].
pub fn mix_along_lanes(m: &[f32], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    debug_assert_eq!(m.len(), n * n);
    debug_assert_eq!(out.len(), n);
    dot_f32_rows(x, n, |r| &m[r * n..(r + 1) * n], |r, v| out[r] = v);
}

/// [`mix_along_lanes`] of a block-diagonal `M` (zero outside its diagonal
/// blocks of `block` consecutive channels), its zero terms skipped:
///
/// ```text
/// out_r = +0.0;  b = block * floor(r / block)
/// for i = 0, 1, ..., block - 1:  out_r = out_r + coef(r, i) * x_{b + i}
/// ```
///
/// with `coef(r, i) = M[r, b + i]`. Bit for bit [`mix_along_lanes`]: a
/// skipped term is `(+-0) * x_i = +-0` (`x` finite), and adding `+-0` to a
/// running sum that starts at `+0.0` leaves it unchanged (the sum is never
/// `-0.0`: `+0 + -0 = +0`, and an exact cancellation rounds to `+0`). This
/// is what the machine does (`lpu.mix`: `block` steps of a permute, a
/// multiply and an add per lane word).
pub fn mix_blocks_along_lanes(
    block: usize,
    coef: impl Fn(usize, usize) -> f32,
    x: &[f32],
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), x.len());
    debug_assert!(block > 0 && x.len().is_multiple_of(block));
    for (r, o) in out.iter_mut().enumerate() {
        let b = block * (r / block);
        let mut s = 0f32;
        for i in 0..block {
            s += coef(r, i) * x[b + i];
        }
        *o = s;
    }
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

/// Lanes of the machine's vector word (lpu-v1's `vector.lanes`,
/// docs/isa.md section 1): the width of the lane reduction [`lane_sum`].
/// A test in `q35-model` (which sees both crates) checks it against the
/// built-in target.
pub const LANES: usize = 320;

/// The machine's sum across lanes (docs/isa.md section 4,
/// docs/q35-format.md 8.4), on [`LANES`] lanes:
///
/// ```text
/// p_l = +0.0                                   for l in 0..LANES
/// for k = 0, 1, ... (words, ascending):        word k = x[k*LANES .. (k+1)*LANES], zero-padded
///     p_l = p_l + x[k*LANES + l]               (f32 add, every lane)
/// w = LANES
/// while w > 1:
///     h = ceil(w / 2)
///     p_j = p_j + p_{j+h}   for j < w - h      (one SXM shift, one VXM add)
///     w = h
/// return p_0
/// ```
///
/// So `p_l = ((+0.0 + x_l) + x_{l+320}) + ...`, then a fixed shift-and-add
/// tree over 320 lanes whatever the length (an empty `x` sums to +0.0).
/// Padding lanes hold +0.0; adding +0.0 is exact for every value except
/// -0.0 (`-0.0 + +0.0 = +0.0`), and no lane is ever -0.0 because every
/// lane starts from +0.0 (an f32 sum is -0.0 only when both operands are),
/// so the padding changes no value, and lanes the machine adds a shifted-in
/// zero to (those the tree leaves alone) keep theirs. NaN and infinities
/// propagate as IEEE addition says.
pub fn lane_sum(x: &[f32]) -> f32 {
    lane_reduce::<LANES>(x.len(), |i| x[i])
}

/// f32 dot product summed across lanes: `t_i = a_i * b_i` (each product
/// rounded), then [`lane_sum`] of `t`. Element `i` sits on lane `i mod 320`
/// of word `i / 320`, as the machine streams a vector.
pub fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    lane_reduce::<LANES>(a.len(), |i| a[i] * b[i])
}

/// The lane reduction of `t(0) .. t(n-1)` on `W` lanes (see [`lane_sum`];
/// `W = LANES` there, a few lanes in the worked examples of the tests),
/// without materialising `t`.
fn lane_reduce<const W: usize>(n: usize, t: impl Fn(usize) -> f32) -> f32 {
    let mut p = [0f32; W];
    for base in (0..n).step_by(W) {
        let len = W.min(n - base);
        for (l, acc) in p.iter_mut().enumerate() {
            // Lanes past the end of the last word add the padding +0.0.
            let v = if l < len { t(base + l) } else { 0.0 };
            *acc += v;
        }
    }
    let mut w = W;
    while w > 1 {
        let h = w.div_ceil(2);
        for j in 0..w - h {
            p[j] += p[j + h];
        }
        w = h;
    }
    p[0]
}

/// Sequential f32 dot product: `s = +0.0; s = s + a_i * b_i` for ascending
/// `i` (product rounded, then sum rounded). The contract uses it where the
/// summed dimension is not on the lanes: attention scores (lanes are
/// positions, each lane sums over the head dimension in ascending order).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut s = 0f32;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// How many [`dot_f32`] chains [`dot_f32_rows`] runs side by side.
const DOT_ROWS: usize = 8;

/// `out(j, dot_f32(row(j), x))` for every `j < n`, in ascending `j`: each
/// value exactly [`dot_f32`]'s (the same products, added in the same
/// ascending order from +0.0), computed [`DOT_ROWS`] rows at a time so
/// their independent chains of additions overlap instead of each waiting
/// for the latency of the one before. Every row must be `x.len()` long.
pub fn dot_f32_rows<'a>(
    x: &[f32],
    n: usize,
    row: impl Fn(usize) -> &'a [f32],
    mut out: impl FnMut(usize, f32),
) {
    let d = x.len();
    let mut j = 0;
    while j + DOT_ROWS <= n {
        let rows: [&[f32]; DOT_ROWS] = std::array::from_fn(|k| {
            let r = row(j + k);
            assert_eq!(r.len(), d, "dot_f32_rows: row {} is not {d} long", j + k);
            r
        });
        let mut s = [0f32; DOT_ROWS];
        for (i, &xi) in x.iter().enumerate() {
            for (acc, r) in s.iter_mut().zip(&rows) {
                *acc += r[i] * xi;
            }
        }
        for (k, &v) in s.iter().enumerate() {
            out(j + k, v);
        }
        j += DOT_ROWS;
    }
    for j in j..n {
        let r = row(j);
        assert_eq!(r.len(), d, "dot_f32_rows: row {j} is not {d} long");
        out(j, dot_f32(r, x));
    }
}

/// RMSNorm in f32:
///
/// ```text
/// ss = lane_sum(x_i * x_i)             (products rounded, then the lane reduction)
/// mean = ss / n
/// r = 1 / sqrt(mean + eps)             (add, IEEE sqrt, divide)
/// out_i = (x_i * r) * w_i
/// ```
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), weight.len());
    debug_assert_eq!(x.len(), out.len());
    let ss = dot_lanes(x, x);
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
/// m = max_i x_i                        (exact in any order)
/// e_i = exp(x_i - m)
/// s = lane_sum(e)                      (the lane reduction, [`lane_sum`])
/// inv = 1 / s
/// x_i = e_i * inv
/// ```
///
/// The maximum is exact whatever the order (`f32::max` returns one of its
/// operands), so it needs no fixed order; the sum does.
pub fn softmax_in_place(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp(*v - m);
    }
    let s = lane_sum(x);
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

/// Partial sums of the attention output over positions: position `t` adds
/// into stripe `t % ATTN_STRIPES` ([`attention_head`]). Four is lpu-v1's
/// VXM add latency (`vxm.alu_latency`), so the machine issues one position's
/// add a cycle instead of one every four; a machine with another latency
/// still computes exactly this order.
pub const ATTN_STRIPES: usize = 4;

/// One attention head over `n` cached positions, f32:
///
/// ```text
/// score_t = dot_f32(q, k_t) * scale    for t in 0..n   (sequential, ascending d)
/// p = softmax(score)                                   (its sum: lane_sum)
/// o_r[d] = +0.0; o_r[d] = o_r[d] + p_t * v_t[d]        for t in 0..n with t % 4 == r,
///                                                      ascending t, r = 0, 1, 2, 3
/// out_d = ((o_0[d] + o_1[d]) + o_2[d]) + o_3[d]
/// ```
///
/// The sums are the machine's natural order: for the scores the positions
/// `t` sit on the lanes and each lane adds its products over `d` one after
/// another; for the output the head dimension `d` sits on the lanes and
/// each lane adds over `t`, in [`ATTN_STRIPES`] interleaved partial sums
/// (each one sequential) so that consecutive positions do not wait on one
/// another's add. Neither sums across lanes. A stripe with no position
/// (`n < 4`) stays +0.0, and adding it changes nothing (no partial sum is
/// ever -0.0: each starts at +0.0).
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
    attention_head_rows(
        q,
        n,
        |t| &keys[t * d..(t + 1) * d],
        |t| &values[t * d..(t + 1) * d],
        scale,
        scores,
        out,
    );
}

/// [`attention_head`] over `n` positions whose key and value rows
/// (`q.len()` values each) `key(t)` and `value(t)` give, wherever they are
/// held (a KV cache's rows of every head, without gathering a head's rows
/// first): the same arithmetic.
pub fn attention_head_rows<'a>(
    q: &[f32],
    n: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    scores.clear();
    scores.resize(n, 0.0);
    dot_f32_rows(q, n, key, |t, s| scores[t] = s * scale);
    softmax_in_place(scores);
    attention_output(scores, value, out);
}

/// The attention output of [`attention_head`] from the probabilities `p`
/// and a position's value row (`value(t)`, at least `out.len()` long):
/// `out = ((o_0 + o_1) + o_2) + o_3` with `o_r` the sequential sum of `p_t
/// * v_t` over ascending `t` with `t % ATTN_STRIPES == r`, each from +0.0.
pub fn attention_output<'a>(p: &[f32], value: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    let mut stripes = [const { Vec::new() }; ATTN_STRIPES];
    for o in &mut stripes {
        o.resize(out.len(), 0.0f32);
    }
    for (t, &pt) in p.iter().enumerate() {
        let o = &mut stripes[t % ATTN_STRIPES];
        for (o, &v) in o.iter_mut().zip(value(t)) {
            *o += pt * v;
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = stripes[0][i];
        for stripe in &stripes[1..] {
            acc += stripe[i];
        }
        *o = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_output_sums_in_four_stripes() {
        // Equal scores: p_t = 1/5 for all five positions. Sequentially the
        // output would be ((((2e7 + 0.2) - 2e7) + 0.2) + 0.6) = 0.8; in
        // stripes o_0 = 2e7 + 0.6 = 2e7 (t = 0, 4), o_1 = 0.2, o_2 = -2e7,
        // o_3 = 0.2, and ((o_0 + o_1) + o_2) + o_3 = 0.2.
        let q = [0.0f32];
        let keys = [0.0f32; 5];
        let values = [1e8f32, 1.0, -1e8, 1.0, 3.0];
        let (mut scores, mut out) = (Vec::new(), [0.0f32]);
        attention_head(&q, &keys, &values, 1.0, &mut scores, &mut out);
        let p = scores[0];
        assert_eq!(p, 1.0 / 5.0);
        assert_eq!(out[0].to_bits(), p.to_bits());
        // Fewer positions than stripes: the empty stripes add +0.0.
        attention_head(&q, &keys[..2], &values[1..3], 1.0, &mut scores, &mut out);
        let p = scores[0];
        assert_eq!(out[0].to_bits(), (p * 1.0 + p * -1e8).to_bits());
    }

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
    fn grouped_activation_quantizes_each_group_like_a_token() {
        let x = [127.0f32, -2.5, 0.5, 0.25, 0.0, 0.0, 1e-3, -7.0, 3.0];
        let a = GroupedActivationI8::quantize(&x, 4).unwrap();
        assert_eq!(a.group(), 4);
        assert_eq!(a.scales().len(), 3);
        for (g, part) in x.chunks(4).enumerate() {
            let t = ActivationI8::quantize(part).unwrap();
            assert_eq!(a.scales()[g].to_bits(), t.scale().to_bits(), "group {g}");
            assert_eq!(
                &a.codes()[g * 4..g * 4 + part.len()],
                t.codes(),
                "group {g}"
            );
        }
        // The first group's amax is 127 (inv = 1); the second has its own
        // scale 7 / 127, so -7 reaches -127 instead of -7 at 127 / 127.
        assert_eq!(&a.codes()[..4], &[127, -3, 1, 0]);
        assert_eq!(&a.codes()[4..8], &[0, 0, 0, -127]);
        assert_eq!(a.scales()[1], 7.0 / 127.0);
        assert_eq!(a.codes()[8], 127);
        let d = a.dequantize();
        assert_eq!(d[7], a.scales()[1] * -127.0);
        // One group spanning everything is the per-token quantization.
        let whole = GroupedActivationI8::quantize(&x, x.len()).unwrap();
        let token = ActivationI8::quantize(&x).unwrap();
        assert_eq!(
            (whole.scales(), whole.codes()),
            (&[token.scale()][..], token.codes())
        );
        assert!(matches!(
            GroupedActivationI8::quantize(&[1.0, 2.0, f32::NAN], 2),
            Err(ContractError::NonFinite { index: 2, .. })
        ));
        assert!(GroupedActivationI8::quantize(&x, 0).is_err());
        let zero = GroupedActivationI8::quantize(&[0.0, 1e-38, 5.0, 1.0], 2).unwrap();
        assert_eq!(zero.scales()[0], 0.0);
        assert_eq!(&zero.codes()[..2], &[0, 0]);
    }

    #[test]
    fn combine_groups_act_scales_each_group_then_sums_in_order() {
        let accs = [1000, -3, 16_777_217];
        let w = [0.5f32, 2.0, 1.0];
        let t = [0.25f32, 3.0, 1.0 / 3.0];
        let mut want = 0f32;
        for g in 0..3 {
            let p = accs[g] as f32 * w[g];
            want += p * t[g];
        }
        assert_eq!(combine_groups_act(&accs, &w, &t).to_bits(), want.to_bits());
        // 2^24 + 1 rounds to 2^24 on the conversion, as in combine_groups.
        assert_eq!(
            combine_groups_act(&[16_777_217], &[1.0], &[1.0]),
            16_777_216.0
        );
        // With one shared activation scale that is a power of two the
        // variant equals the per-token combination exactly.
        let same = [0.5f32; 3];
        assert_eq!(
            combine_groups_act(&accs, &w, &same).to_bits(),
            combine_groups(&accs, &w, 0.5).to_bits()
        );
        assert_eq!(combine_groups_act(&[], &[], &[]).to_bits(), 0f32.to_bits());
    }

    #[test]
    fn hadamard_is_its_own_inverse_up_to_n() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        hadamard_in_place(&mut x);
        assert_eq!(x, [10.0, -2.0, -4.0, 0.0]);
        hadamard_in_place(&mut x);
        assert_eq!(x, [4.0, 8.0, 12.0, 16.0]);
        let mut y = [1.0f32, -1.0, 0.5, 2.0, 3.0, 0.0, 1.0, -2.0];
        rotate_groups(&mut y, &[1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0], 4);
        // Group 0 is H [1, 1, 0.5, 2], group 1 is H [-3, 0, 1, -2].
        assert_eq!(y, [4.5, -1.5, -0.5, 1.5, -4.0, 0.0, -2.0, -6.0]);
    }

    #[test]
    fn mix_along_lanes_sums_each_row_in_ascending_order() {
        // Row 0 shows the order: (2^24 + 1) + 1 rounds twice to 2^24,
        // while 1 + 1 + 2^24 would give 2^24 + 2.
        let m = [1.0f32, 1.0, 1.0, 0.0, 2.0, -1.0, 0.5, 0.0, 0.25];
        let x = [BIG, 1.0, 1.0];
        let mut out = [0f32; 3];
        mix_along_lanes(&m, &x, &mut out);
        assert_eq!(out[0], BIG);
        assert_eq!(out[1], 1.0);
        assert_eq!(out[2], BIG * 0.5 + 0.25);
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o.to_bits(), dot_f32(&m[r * 3..r * 3 + 3], &x).to_bits());
        }
        let y = vector(576, 3);
        let eye: Vec<f32> = (0..576 * 576)
            .map(|k| if k / 576 == k % 576 { 1.0 } else { 0.0 })
            .collect();
        let mut z = vec![0f32; 576];
        mix_along_lanes(&eye, &y, &mut z);
        assert_eq!(z, y, "the identity mixes nothing");
    }

    #[test]
    fn interleaved_dots_are_each_rows_sequential_dot() {
        // Row counts around the interleave width (none, fewer, exactly,
        // a ragged tail), lengths down to zero, and rows whose first two
        // terms are large and of opposite signs, so that summing in any
        // other order would round the small terms differently.
        for d in [0, 1, 5, 64, 67] {
            for n in [0, 1, 7, 8, 9, 16, 23] {
                let x = vector(d, 5 + d as u64);
                let mut rows = vector(n * d, 9 + n as u64);
                for (j, r) in rows.chunks_exact_mut(d.max(1)).enumerate() {
                    if d > 2 && j % 3 == 0 {
                        r[0] = BIG / x[0].max(1e-3);
                        r[1] = -r[0];
                    }
                }
                let mut got = vec![f32::NAN; n];
                dot_f32_rows(&x, n, |j| &rows[j * d..(j + 1) * d], |j, v| got[j] = v);
                for (j, g) in got.iter().enumerate() {
                    let want = dot_f32(&rows[j * d..(j + 1) * d], &x);
                    assert_eq!(g.to_bits(), want.to_bits(), "row {j} of {n}, length {d}");
                }
            }
        }
    }

    #[test]
    fn block_mix_skipping_zeros_is_the_dense_mix_bit_for_bit() {
        // A block-diagonal 576 x 576 matrix (blocks of 64) with -0.0 and
        // +0.0 outside the blocks and some zeros inside; inputs with zeros,
        // negative zeros and values that cancel exactly.
        let (n, block) = (576, 64);
        let vals = vector(n * n, 11);
        let m: Vec<f32> = (0..n * n)
            .map(|k| {
                let (r, c) = (k / n, k % n);
                if r / block != c / block {
                    if k % 3 == 0 { -0.0 } else { 0.0 }
                } else if k % 17 == 0 {
                    -0.0
                } else {
                    vals[k]
                }
            })
            .collect();
        for seed in [1, 2, 3] {
            let mut x = vector(n, seed);
            x[5] = 0.0;
            x[6] = -0.0;
            x[70] = -x[71];
            let mut dense = vec![0f32; n];
            mix_along_lanes(&m, &x, &mut dense);
            let mut blocks = vec![0f32; n];
            mix_blocks_along_lanes(
                block,
                |r, i| m[r * n + block * (r / block) + i],
                &x,
                &mut blocks,
            );
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dense), bits(&blocks), "seed {seed}");
        }
        // A row whose products cancel exactly sums to +0.0, never -0.0.
        let m2 = [1.0f32, 1.0, -0.0, -0.0, 0.0, 0.0, 1.0, 1.0];
        let x2 = [2.0f32, -2.0, 0.0, 0.0];
        let mut out = [1f32; 4];
        mix_blocks_along_lanes(2, |r, i| m2[r * 2 + i], &x2, &mut out);
        assert_eq!(
            out.map(f32::to_bits),
            [0.0f32, 0.0, 0.0, 0.0].map(f32::to_bits)
        );
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

    /// `2^24`: adding 1 to it rounds back to it (ties to even), so sums
    /// that meet it early lose the ones that follow.
    const BIG: f32 = 16_777_216.0;

    /// The sequential sum the contract used to specify.
    fn sequential(x: &[f32]) -> f32 {
        x.iter().fold(0f32, |s, &v| s + v)
    }

    /// The machine's reduction spelled out as docs/isa.md's instructions:
    /// `fconst 0.0`, one `fadd` per word, then `shift p -> s, h, w` (lane `l`
    /// gets lane `l + h` if `l + h < w`, else 0) and `fadd p, s` on every
    /// lane until one lane is left.
    fn shift_and_add(x: &[f32]) -> f32 {
        let mut p = [0f32; LANES];
        for word in x.chunks(LANES) {
            let mut v = [0f32; LANES];
            v[..word.len()].copy_from_slice(word);
            p = std::array::from_fn(|l| p[l] + v[l]);
        }
        let mut w = LANES;
        let mut steps = 0;
        while w > 1 {
            let h = w.div_ceil(2);
            let shifted: [f32; LANES] =
                std::array::from_fn(|l| if l + h < w { p[l + h] } else { 0.0 });
            p = std::array::from_fn(|l| p[l] + shifted[l]);
            w = h;
            steps += 1;
        }
        assert_eq!(steps, 9, "320 lanes reduce in ceil(log2 320) = 9 steps");
        p[0]
    }

    /// Deterministic test vectors: magnitudes over 2^-20 .. 2^20, both
    /// signs, some signed zeros and some exact cancellations.
    fn vector(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut x: Vec<f32> = (0..n)
            .map(|_| {
                let r = next();
                let mant = 1.0 + (r & 0xff_ffff) as f32 / 16_777_216.0;
                let exp = ((r >> 24) % 41) as i32 - 20;
                let sign = if r >> 63 == 1 { -1.0 } else { 1.0 };
                match (r >> 32) % 16 {
                    0 => -0.0,
                    1 => 0.0,
                    _ => sign * mant * 2f32.powi(exp),
                }
            })
            .collect();
        for i in (7..n).step_by(11) {
            x[i] = -x[i - 7];
        }
        x
    }

    #[test]
    fn lane_sum_five_lanes_worked_example() {
        // One word on a 5-lane machine. Tree: w=5, h=3: p0 = 2^24 + -2^24
        // = 0, p1 = 1 + 1 = 2; w=3, h=2: p0 = 0 + 1 = 1; w=2, h=1:
        // p0 = 1 + 2 = 3, the exact sum. Sequentially the ones after 2^24
        // are lost: ((((0 + 2^24) + 1) + 1) - 2^24) + 1 = 1.
        let x = [BIG, 1.0, 1.0, -BIG, 1.0];
        assert_eq!(lane_reduce::<5>(x.len(), |i| x[i]), 3.0);
        assert_eq!(sequential(&x), 1.0);
    }

    #[test]
    fn lane_sum_seven_lanes_worked_example() {
        // Ten values on a 7-lane machine: two words, the second padded with
        // four +0.0. Words: p0 = 2^24 + 1 = 2^24 (tie to even), p1 = 1 + 1
        // = 2, p2 = 1 + 1 = 2, p3 = p4 = p5 = 1, p6 = -2^24. Tree: w=7, h=4:
        // p0 = 2^24 + 1 = 2^24, p1 = 2 + 1 = 3, p2 = 2 - 2^24 = -16777214;
        // w=4, h=2: p0 = 2^24 - 16777214 = 2, p1 = 3 + 1 = 4; w=2: 2 + 4 = 6.
        // (Exact: 8; sequentially: 3.)
        let x = [BIG, 1.0, 1.0, 1.0, 1.0, 1.0, -BIG, 1.0, 1.0, 1.0];
        assert_eq!(lane_reduce::<7>(x.len(), |i| x[i]), 6.0);
        assert_eq!(sequential(&x), 3.0);
    }

    #[test]
    fn lane_sum_is_the_shift_and_add_of_the_machine() {
        for (seed, n) in [
            0usize, 1, 2, 5, 159, 160, 161, 319, 320, 321, 576, 639, 640, 641, 1000, 1536,
        ]
        .into_iter()
        .enumerate()
        {
            let x = vector(n, seed as u64 + 1);
            let got = lane_sum(&x);
            let want = shift_and_add(&x);
            assert_eq!(got.to_bits(), want.to_bits(), "n = {n}: {got} vs {want}");
            let exact: f64 = x.iter().map(|&v| f64::from(v)).sum();
            let scale: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
            assert!(
                (f64::from(got) - exact).abs() <= 1e-6 * scale.max(1e-30),
                "n = {n}: {got} vs exact {exact}"
            );
        }
    }

    #[test]
    fn lane_sum_of_576_values_folds_the_second_word_onto_lanes_0_to_255() {
        // SmolLM2's hidden size: word 0 is x[0..320], word 1 is x[320..576]
        // on lanes 0..256 plus 64 padding lanes. x[0] = 2^24 and
        // x[320] = -2^24 meet on lane 0 and cancel before any 1 is added,
        // so every partial sum is a small integer and the result is exact;
        // sequentially the 319 ones after 2^24 are lost.
        let mut x = vec![1.0f32; 576];
        x[0] = BIG;
        x[320] = -BIG;
        assert_eq!(lane_sum(&x), 574.0);
        assert_eq!(sequential(&x), 255.0);
        assert_eq!(lane_sum(&x).to_bits(), shift_and_add(&x).to_bits());
        // Shifting -2^24 one lane (x[321]) puts it on lane 1: no early
        // cancellation, and the order shows.
        x[320] = 1.0;
        x[321] = -BIG;
        assert_eq!(lane_sum(&x).to_bits(), shift_and_add(&x).to_bits());
        assert_ne!(lane_sum(&x), 574.0);
    }

    #[test]
    fn lane_sum_signed_zeros_and_specials() {
        assert_eq!(lane_sum(&[]).to_bits(), 0f32.to_bits());
        assert_eq!(lane_sum(&[-0.0]).to_bits(), 0f32.to_bits());
        assert_eq!(lane_sum(&[-0.0; 700]).to_bits(), 0f32.to_bits());
        assert!(lane_sum(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(lane_sum(&[1.0, f32::INFINITY]), f32::INFINITY);
        assert!(lane_sum(&[f32::INFINITY, f32::NEG_INFINITY]).is_nan());
    }

    #[test]
    fn rmsnorm_softmax_and_dot_lanes_use_the_lane_sum() {
        let x = vector(576, 99);
        let w = vector(576, 7);
        let sq: Vec<f32> = x.iter().map(|&v| v * v).collect();
        assert_eq!(dot_lanes(&x, &x).to_bits(), lane_sum(&sq).to_bits());
        let prod: Vec<f32> = x.iter().zip(&w).map(|(&a, &b)| a * b).collect();
        assert_eq!(dot_lanes(&x, &w).to_bits(), lane_sum(&prod).to_bits());

        let mut out = vec![0f32; 576];
        rmsnorm(&x, &w, 1e-5, &mut out);
        let r = 1.0 / (lane_sum(&sq) / 576.0 + 1e-5).sqrt();
        let want: Vec<u32> = x
            .iter()
            .zip(&w)
            .map(|(&v, &g)| ((v * r) * g).to_bits())
            .collect();
        assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);

        // A sum of squares whose order shows: 4096^2 = 2^24 and 575 ones.
        let mut y = vec![1.0f32; 576];
        y[0] = 4096.0;
        let sq: Vec<f32> = y.iter().map(|&v| v * v).collect();
        assert_ne!(dot_lanes(&y, &y), sequential(&sq));
        assert_eq!(sequential(&sq), BIG);

        let mut s: Vec<f32> = (0..400).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|&v| exp(v - m)).collect();
        let inv = 1.0 / lane_sum(&e);
        softmax_in_place(&mut s);
        let want: Vec<u32> = e.iter().map(|&v| (v * inv).to_bits()).collect();
        assert_eq!(s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
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
