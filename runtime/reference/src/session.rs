//! A sequence in progress: its KV cache and length.

use crate::Config;

/// The KV cache of one sequence. Keys are stored after RoPE, in f32.
#[derive(Debug, Clone)]
pub struct Session {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
}

impl Session {
    pub(crate) fn new(config: &Config, capacity: usize) -> Session {
        Session {
            keys: vec![Vec::new(); config.blocks],
            values: vec![Vec::new(); config.blocks],
            kv_dim: config.kv_dim(),
            len: 0,
            capacity,
        }
    }

    /// Tokens held (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been run yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum tokens this session holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token from position `len` on (no-op if already shorter),
    /// so the next forward pass starts at `len`.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            k.truncate(len * self.kv_dim);
            v.truncate(len * self.kv_dim);
        }
        self.len = len;
    }

    /// Forgets every token.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub(crate) fn fits(&self, config: &Config) -> bool {
        self.keys.len() == config.blocks && self.kv_dim == config.kv_dim()
    }

    /// Appends a batch's keys and values for `layer` (the length advances
    /// once all layers have been appended, see `advance`).
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.keys[layer].extend_from_slice(k);
        self.values[layer].extend_from_slice(v);
    }

    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Records that a forward pass appended `n` tokens to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.keys.iter().all(|k| k.len() == self.len * self.kv_dim));
    }
}
