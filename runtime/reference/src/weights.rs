//! In-memory weight maps (llama.cpp tensor names, f32 data) and
//! deterministic synthetic weights for tests and weightless examples.

use std::collections::BTreeMap;

use crate::Config;
use crate::linear::{LinearId, LinearKind};
use crate::sampling::Rng;

/// One f32 tensor: GGUF-order dims (fastest first) and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, fastest-varying first (`[in, out]` for a weight matrix).
    pub dims: Vec<u64>,
    /// `dims.iter().product()` values; a `[in, out]` matrix is `out` rows of `in`.
    pub data: Vec<f32>,
}

/// Named f32 tensors, keyed by llama.cpp's GGUF tensor names
/// (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightMap {
    /// Where the weights came from, for error messages.
    pub source: String,
    /// The tensors.
    pub tensors: BTreeMap<String, Tensor>,
}

impl WeightMap {
    /// An empty map whose errors will name `source`.
    pub fn new(source: impl Into<String>) -> WeightMap {
        WeightMap {
            source: source.into(),
            tensors: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, dims: Vec<u64>, data: Vec<f32>) {
        self.tensors.insert(name.into(), Tensor { dims, data });
    }
}

/// The GGUF dims `[cols, rows]` of a block matrix or the LM head.
pub(crate) fn linear_dims(c: &Config, kind: LinearKind) -> (usize, usize) {
    match kind {
        LinearKind::Q => (c.hidden, c.q_dim()),
        LinearKind::K | LinearKind::V => (c.hidden, c.kv_dim()),
        LinearKind::AttnOutput => (c.q_dim(), c.hidden),
        LinearKind::Gate | LinearKind::Up => (c.hidden, c.ffn),
        LinearKind::Down => (c.ffn, c.hidden),
        LinearKind::LmHead => (c.hidden, c.vocab),
    }
}

/// Deterministic random weights of the right shapes: uniform values scaled
/// by `1/sqrt(fan_in)` for matrices (unit-variance outputs), norms near 1,
/// embeddings of standard deviation `2/sqrt(hidden)` (so tied logits have a
/// standard deviation near 2). The same `seed` always gives the same bits.
pub fn synthetic_weights(config: &Config, seed: u64) -> WeightMap {
    let mut rng = Rng::new(seed);
    let mut uniform = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
            .collect()
    };
    let mut m = WeightMap::new(format!("synthetic weights (seed {seed})"));
    let h = config.hidden as u64;
    // Uniform on [-a, a] has variance a^2 / 3.
    let sqrt3 = 3.0f32.sqrt();
    m.insert(
        "token_embd.weight",
        vec![h, config.vocab as u64],
        uniform(
            config.hidden * config.vocab,
            2.0 * sqrt3 / (config.hidden as f32).sqrt(),
        ),
    );
    for b in 0..config.blocks {
        let norm = |u: Vec<f32>| u.into_iter().map(|v| 1.0 + v).collect::<Vec<f32>>();
        m.insert(
            format!("blk.{b}.attn_norm.weight"),
            vec![h],
            norm(uniform(config.hidden, 0.1)),
        );
        m.insert(
            format!("blk.{b}.ffn_norm.weight"),
            vec![h],
            norm(uniform(config.hidden, 0.1)),
        );
        for kind in LinearKind::BLOCK {
            let (cols, rows) = linear_dims(config, kind);
            let id = LinearId {
                block: Some(b),
                kind,
            };
            m.insert(
                id.gguf_name(),
                vec![cols as u64, rows as u64],
                uniform(cols * rows, sqrt3 / (cols as f32).sqrt()),
            );
        }
    }
    let norm: Vec<f32> = uniform(config.hidden, 0.1)
        .into_iter()
        .map(|v| 1.0 + v)
        .collect();
    m.insert("output_norm.weight", vec![h], norm);
    if !config.tied_embeddings {
        m.insert(
            "output.weight",
            vec![h, config.vocab as u64],
            uniform(
                config.hidden * config.vocab,
                sqrt3 / (config.hidden as f32).sqrt(),
            ),
        );
    }
    m
}
