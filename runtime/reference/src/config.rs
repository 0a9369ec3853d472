//! The shape and hyper-parameters the forward pass runs with, checked once.

use q35_model::Architecture;

use crate::ReferenceError;

/// A validated LLaMA-family configuration (all sizes as `usize`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Number of transformer blocks.
    pub blocks: usize,
    /// Residual stream width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads % kv_heads == 0`).
    pub kv_heads: usize,
    /// Width of one head; RoPE rotates all of it.
    pub head_dim: usize,
    /// SwiGLU inner width.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// The LM head is the token embedding.
    pub tied_embeddings: bool,
    /// Maximum sequence length (KV cache capacity).
    pub context: usize,
}

impl Config {
    /// Checks `arch` and converts it.
    pub fn from_architecture(arch: &Architecture) -> Result<Config, ReferenceError> {
        let bad = |what: String| Err(ReferenceError::InvalidArchitecture(what));
        if arch.family != "llama" {
            return bad(format!(
                "family `{}` is not supported (the reference runs `llama`)",
                arch.family
            ));
        }
        let c = Config {
            blocks: arch.blocks as usize,
            hidden: arch.hidden as usize,
            heads: arch.heads as usize,
            kv_heads: arch.kv_heads as usize,
            head_dim: arch.head_dim as usize,
            ffn: arch.ffn as usize,
            vocab: arch.vocab as usize,
            rope_base: arch.rope_base,
            norm_eps: arch.norm_eps,
            tied_embeddings: arch.tied_embeddings,
            context: arch.context as usize,
        };
        for (name, v) in [
            ("blocks", c.blocks),
            ("hidden", c.hidden),
            ("heads", c.heads),
            ("kv_heads", c.kv_heads),
            ("head_dim", c.head_dim),
            ("ffn", c.ffn),
            ("vocab", c.vocab),
            ("context", c.context),
        ] {
            if v == 0 {
                return bad(format!("`{name}` must be positive"));
            }
        }
        if !c.heads.is_multiple_of(c.kv_heads) {
            return bad(format!(
                "`heads` ({}) must be a multiple of `kv_heads` ({})",
                c.heads, c.kv_heads
            ));
        }
        if !c.head_dim.is_multiple_of(2) {
            return bad(format!("`head_dim` ({}) must be even for RoPE", c.head_dim));
        }
        if !(c.rope_base.is_finite() && c.rope_base > 0.0) {
            return bad(format!("`rope_base` ({}) must be positive", c.rope_base));
        }
        if !(c.norm_eps.is_finite() && c.norm_eps > 0.0) {
            return bad(format!("`norm_eps` ({}) must be positive", c.norm_eps));
        }
        Ok(c)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
