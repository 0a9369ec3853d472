//! Token selection: greedy, or temperature / top-k / top-p sampling with a
//! seeded generator (same seed, same tokens).
//!
//! The filters run in llama.cpp's default order: top-k on the logits, top-p on
//! the softmax of the surviving logits (before temperature), then the
//! temperature-scaled softmax is sampled with one uniform draw.

use crate::ReferenceError;
use crate::kernels::argmax;

/// A small, fast, seedable generator (xoshiro256**, seeded by splitmix64).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// One step of SplitMix64: advances `state` and returns the next 64 bits.
/// Seeds [`Rng`]; also the workspace's small deterministic stream (reservoir
/// sampling, synthetic token sequences).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || splitmix64(&mut z);
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); otherwise logits are divided
    /// by it before sampling.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches
    /// `top_p` (1 keeps all).
    pub top_p: f32,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams::greedy()
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Checks ranges: temperature finite and >= 0, top-p in (0, 1].
    pub fn validate(&self) -> Result<(), ReferenceError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(ReferenceError::InvalidParameter {
                name: "temperature",
                what: format!("{} is not a finite value >= 0", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ReferenceError::InvalidParameter {
                name: "top_p",
                what: format!("{} is not in (0, 1]", self.top_p),
            });
        }
        Ok(())
    }
}

/// Picks tokens from logits according to [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler; errors on invalid parameters.
    pub fn new(params: SamplingParams) -> Result<Sampler, ReferenceError> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Sampler { params, rng })
    }

    /// The next token for one row of logits (`logits` must not be empty).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits).unwrap_or(0) as u32;
        }
        // Candidates by descending logit, ties by ascending ID (a total order,
        // so partial selection is deterministic too).
        let order = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        let mut cand: Vec<usize> = (0..logits.len()).collect();
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(order);

        let max = f64::from(logits[cand[0]]);
        if p.top_p < 1.0 {
            let w: Vec<f64> = cand
                .iter()
                .map(|&i| (f64::from(logits[i]) - max).exp())
                .collect();
            let total: f64 = w.iter().sum();
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (n, wi) in w.iter().enumerate() {
                cum += wi / total;
                if cum >= f64::from(p.top_p) {
                    keep = n + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }

        let t = f64::from(p.temperature);
        let w: Vec<f64> = cand
            .iter()
            .map(|&i| ((f64::from(logits[i]) - max) / t).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (&i, wi) in cand.iter().zip(&w) {
            if r < *wi {
                return i as u32;
            }
            r -= wi;
        }
        *cand.last().expect("at least one candidate") as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).expect("valid");
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_filters_hold() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37 % 100) as f32) * 0.05).collect();
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 10,
            top_p: 0.9,
            seed: 42,
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).expect("valid");
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        let other = draw(&SamplingParams {
            seed: 43,
            ..params.clone()
        });
        assert_ne!(a, other);
        // top-k 10: only the ten largest logits can appear.
        let mut top: Vec<usize> = (0..100).collect();
        top.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        let allowed: Vec<u32> = top[..10].iter().map(|&i| i as u32).collect();
        assert!(a.iter().all(|t| allowed.contains(t)));
        // More than one token is drawn at temperature 1.5.
        assert!(a.iter().any(|&t| t != a[0]));
    }

    #[test]
    fn top_p_keeps_the_head() {
        // One dominant token (p ~ 0.99) and top_p 0.5: always that token.
        let mut logits = vec![0.0f32; 50];
        logits[7] = 10.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        })
        .expect("valid");
        assert!((0..100).all(|_| s.sample(&logits) == 7));
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let bad = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::greedy()
        };
        assert!(Sampler::new(bad).is_err());
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::greedy()
        };
        assert!(Sampler::new(bad).is_err());
    }
}
