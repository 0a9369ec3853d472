//! Seeded test data shared by the integration tests: a SplitMix64 generator
//! (the project's one, `q35_reference::splitmix64`), Gaussian samples
//! (Box-Muller), and a tiny synthetic model.

#![allow(dead_code, reason = "each test file uses a different subset")]

/// SplitMix64 (Steele, Lea, Flood 2014).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        q35_reference::splitmix64(&mut self.0)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn gaussians(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.gaussian() as f32 * sigma).collect()
    }
}

/// A 2-block synthetic LLaMA (hidden 64, 4 heads, 2 KV heads, vocab 256,
/// tied head, 64 positions) with weights from `seed`.
pub fn tiny_model(seed: u64) -> q35_reference::Model {
    let config = q35_reference::Config {
        blocks: 2,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 128,
        vocab: 256,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        context: 64,
    };
    let w = q35_reference::synthetic_weights(&config, seed);
    q35_reference::Model::from_config_weights(config, w).expect("tiny model")
}
