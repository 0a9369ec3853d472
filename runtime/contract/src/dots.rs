//! Fast exact group sums for the golden model's integer matmul.
//!
//! [`group_dots`] gives, for one weight row, every group's int32 accumulator
//! `sum_i x_i * w_i` ([`crate::semantics::group_dot`] of each group). Integer
//! addition is associative and no partial sum of a contract-checked matrix
//! overflows (docs/q35-format.md 8.3), so the SIMD paths give the scalar
//! path's values exactly: they only sum in another order. They widen int8 to
//! int16 and multiply-add pairs into int32 (`vpmaddwd`), 32 codes per
//! instruction on AVX-512BW, 16 on AVX2; four groups' lanes are reduced
//! together.
//!
//! [`Widened`] holds an activation vector sign-extended to int16 once, so
//! the many rows of one matmul do not widen it again.

/// An int8 activation vector widened to int16 (once per matmul).
#[derive(Debug, Clone)]
pub struct Widened {
    codes: Vec<i16>,
}

impl Widened {
    /// `x` widened.
    pub fn new(x: &[i8]) -> Widened {
        Widened {
            codes: x.iter().map(|&v| i16::from(v)).collect(),
        }
    }

    /// Number of codes.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// Which kernel [`group_dots`] uses on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DotLevel {
    /// Portable Rust.
    Scalar,
    /// 256-bit `vpmaddwd`.
    Avx2,
    /// 512-bit `vpmaddwd` (AVX-512BW).
    Avx512,
}

/// The best level the CPU supports.
pub fn dot_level() -> DotLevel {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<DotLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512bw") {
                return DotLevel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return DotLevel::Avx2;
            }
        }
        DotLevel::Scalar
    })
}

/// `accs[g] = sum_{i in group g} x_i * w_i` for every group of `group`
/// codes of the row `w` (the last group may be shorter), on the best level
/// the CPU has.
///
/// # Panics
/// If `x` and `w` differ in length, `group` is 0, or `accs` does not have
/// one entry per group.
pub fn group_dots(x: &Widened, w: &[i8], group: usize, accs: &mut [i32]) {
    group_dots_at(dot_level(), x, w, group, accs);
}

/// [`group_dots`] on `level` (capped by what the CPU supports), for tests
/// that compare the paths.
pub fn group_dots_at(level: DotLevel, x: &Widened, w: &[i8], group: usize, accs: &mut [i32]) {
    assert_eq!(x.len(), w.len(), "group_dots: lengths differ");
    assert!(group > 0, "group_dots: empty groups");
    assert_eq!(accs.len(), w.len().div_ceil(group), "group_dots: groups");
    let level = level.min(dot_level());
    #[cfg(target_arch = "x86_64")]
    {
        if level == DotLevel::Avx512 && group.is_multiple_of(32) {
            // SAFETY: the CPU supports AVX-512BW (`dot_level`); lengths checked.
            unsafe { group_dots_512(&x.codes, w, group, accs) };
            return;
        }
        if level >= DotLevel::Avx2 && group.is_multiple_of(16) {
            // SAFETY: the CPU supports AVX2 (`dot_level`); lengths checked.
            unsafe { group_dots_256(&x.codes, w, group, accs) };
            return;
        }
    }
    let _ = level;
    group_dots_scalar(&x.codes, w, group, accs);
}

fn group_dots_scalar(x: &[i16], w: &[i8], group: usize, accs: &mut [i32]) {
    for ((acc, xg), wg) in accs.iter_mut().zip(x.chunks(group)).zip(w.chunks(group)) {
        *acc = xg
            .iter()
            .zip(wg)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
    }
}

/// 32 codes a step; a ragged last group's tail scalar. Whole groups go
/// four at a time, their four 16-lane sums reduced together (one
/// transpose-and-add tree instead of four horizontal sums).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn group_dots_512(x: &[i16], w: &[i8], group: usize, accs: &mut [i32]) {
    use std::arch::x86_64::*;
    let n = w.len();
    // The 16 lanes of sum_i x_i w_i over [s, s + len), len a multiple of 32.
    let lanes = |s: usize, len: usize| -> __m512i {
        let mut v = _mm512_setzero_si512();
        let mut i = s;
        while i < s + len {
            // SAFETY: i + 32 <= s + len <= n = x.len() = w.len().
            unsafe {
                let wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.as_ptr().add(i).cast()));
                let xv = _mm512_loadu_si512(x.as_ptr().add(i).cast());
                v = _mm512_add_epi32(v, _mm512_madd_epi16(xv, wv));
            }
            i += 32;
        }
        v
    };
    let whole_groups = if group.is_multiple_of(32) {
        n / group
    } else {
        0
    };
    let mut g = 0;
    while g + 4 <= whole_groups {
        let v: [__m512i; 4] = std::array::from_fn(|k| lanes((g + k) * group, group));
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], likewise c, d.
        let ab = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[0], v[1]),
            _mm512_unpackhi_epi32(v[0], v[1]),
        );
        let cd = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[2], v[3]),
            _mm512_unpackhi_epi32(v[2], v[3]),
        );
        // Per 128-bit lane: one partial sum of each of a, b, c, d.
        let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
        // The four 128-bit lanes added.
        let half = _mm256_add_epi32(
            _mm512_castsi512_si256(abcd),
            _mm512_extracti64x4_epi64::<1>(abcd),
        );
        let quarter = _mm_add_epi32(
            _mm256_castsi256_si128(half),
            _mm256_extracti128_si256::<1>(half),
        );
        let mut out = [0i32; 4];
        // SAFETY: `out` holds exactly the 4 i32 written.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), quarter) };
        accs[g..g + 4].copy_from_slice(&out);
        g += 4;
    }
    for (g, acc) in accs.iter_mut().enumerate().skip(g) {
        let s = g * group;
        let e = (s + group).min(n);
        let whole = (e - s) / 32 * 32;
        let mut sum = _mm512_reduce_add_epi32(lanes(s, whole));
        for j in s + whole..e {
            sum += i32::from(x[j]) * i32::from(w[j]);
        }
        *acc = sum;
    }
}

/// 16 codes a step; a ragged last group's tail scalar. Whole groups go
/// four at a time, their four 8-lane sums reduced together by three
/// `vphaddd` (instead of four horizontal sums).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn group_dots_256(x: &[i16], w: &[i8], group: usize, accs: &mut [i32]) {
    use std::arch::x86_64::*;
    let n = w.len();
    // The 8 lanes of sum_i x_i w_i over [s, s + len), len a multiple of 16.
    let lanes = |s: usize, len: usize| -> __m256i {
        let mut v = _mm256_setzero_si256();
        let mut i = s;
        while i < s + len {
            // SAFETY: i + 16 <= s + len <= n = x.len() = w.len().
            unsafe {
                let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr().add(i).cast()));
                let xv = _mm256_loadu_si256(x.as_ptr().add(i).cast());
                v = _mm256_add_epi32(v, _mm256_madd_epi16(xv, wv));
            }
            i += 16;
        }
        v
    };
    let whole_groups = if group.is_multiple_of(16) {
        n / group
    } else {
        0
    };
    let mut g = 0;
    while g + 4 <= whole_groups {
        let v: [__m256i; 4] = std::array::from_fn(|k| lanes((g + k) * group, group));
        // Per 128-bit half: [a01, a23, b01, b23] and likewise c, d; then
        // [a, b, c, d] partial sums; the two halves added.
        let ab = _mm256_hadd_epi32(v[0], v[1]);
        let cd = _mm256_hadd_epi32(v[2], v[3]);
        let abcd = _mm256_hadd_epi32(ab, cd);
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(abcd),
            _mm256_extracti128_si256::<1>(abcd),
        );
        let mut out = [0i32; 4];
        // SAFETY: `out` holds exactly the 4 i32 written.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), sum) };
        accs[g..g + 4].copy_from_slice(&out);
        g += 4;
    }
    for (g, acc) in accs.iter_mut().enumerate().skip(g) {
        let s = g * group;
        let e = (s + group).min(n);
        let whole = (e - s) / 16 * 16;
        let v = lanes(s, whole);
        // Horizontal sum of 8 lanes.
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256::<1>(v);
        let s4 = _mm_add_epi32(lo, hi);
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
        let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
        let mut sum = _mm_cvtsi128_si32(s1);
        for j in s + whole..e {
            sum += i32::from(x[j]) * i32::from(w[j]);
        }
        *acc = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantics::group_dot;

    /// Every level gives `group_dot` of every group, for group sizes with and
    /// without a SIMD path, ragged last groups and extreme codes.
    #[test]
    fn every_level_is_group_dot() {
        let mut seed = 0x9E37_79B9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for &(cols, group) in &[
            (576usize, 64usize),
            (576, 128),
            (1536, 64),
            (576, 32),
            (100, 32),
            (90, 16),
            (77, 7),
            (64, 64),
            (260, 64),
        ] {
            let x: Vec<i8> = (0..cols).map(|_| next() as i8).collect();
            let mut w: Vec<i8> = (0..cols).map(|_| (next() % 15) as i8 - 7).collect();
            w[0] = -128;
            let mut xe = x.clone();
            xe[0] = -128;
            for x in [&x, &xe] {
                let wide = Widened::new(x);
                let want: Vec<i32> = x
                    .chunks(group)
                    .zip(w.chunks(group))
                    .map(|(a, b)| group_dot(a, b))
                    .collect();
                for level in [DotLevel::Scalar, DotLevel::Avx2, DotLevel::Avx512] {
                    let mut got = vec![0i32; cols.div_ceil(group)];
                    group_dots_at(level, &wide, &w, group, &mut got);
                    assert_eq!(got, want, "{level:?} cols {cols} group {group}");
                }
            }
        }
    }
}
