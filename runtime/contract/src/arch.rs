//! The LLaMA-family architecture: hyperparameters, derived sizes and the
//! tensors a checkpoint must hold. The one source of tensor names and shapes
//! (`Architecture::expected_tensors`); q35-model reads it from GGUF metadata
//! and model.toml, the golden model and the compiler consume it.

/// Hyperparameters of a LLaMA-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// Model family; only `llama` is supported.
    pub family: String,
    /// Number of decoder blocks.
    pub blocks: u32,
    /// Model (residual stream) width.
    pub hidden: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: u32,
    /// Width of one head.
    pub head_dim: u32,
    /// Feed-forward (SwiGLU) inner width.
    pub ffn: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Whether the LM head reuses the token embedding matrix.
    pub tied_embeddings: bool,
    /// Training context length.
    pub context: u32,
}

/// A matrix multiplication's weight: `y[n] = W[n x k] x[k]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearSpec {
    /// GGUF tensor name (`blk.3.attn_q.weight`).
    pub name: String,
    /// Reduction length (input features).
    pub k: u32,
    /// Output features.
    pub n: u32,
}

impl Architecture {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> u32 {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> u32 {
        self.kv_heads * self.head_dim
    }

    /// The weight matrices of block `b`, in execution order.
    pub fn block_linears(&self, b: u32) -> Vec<LinearSpec> {
        let l = |what: &str, k, n| LinearSpec {
            name: format!("blk.{b}.{what}.weight"),
            k,
            n,
        };
        vec![
            l("attn_q", self.hidden, self.q_dim()),
            l("attn_k", self.hidden, self.kv_dim()),
            l("attn_v", self.hidden, self.kv_dim()),
            l("attn_output", self.q_dim(), self.hidden),
            l("ffn_gate", self.hidden, self.ffn),
            l("ffn_up", self.hidden, self.ffn),
            l("ffn_down", self.ffn, self.hidden),
        ]
    }

    /// The LM head's weight (the embedding matrix when tied).
    pub fn lm_head(&self) -> LinearSpec {
        LinearSpec {
            name: if self.tied_embeddings {
                "token_embd.weight".into()
            } else {
                "output.weight".into()
            },
            k: self.hidden,
            n: self.vocab,
        }
    }

    /// Every tensor a checkpoint of this architecture holds, with GGUF-order
    /// dims (fastest first).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let mut t = vec![(
            "token_embd.weight".to_owned(),
            vec![self.hidden.into(), self.vocab.into()],
        )];
        for b in 0..self.blocks {
            t.push((
                format!("blk.{b}.attn_norm.weight"),
                vec![self.hidden.into()],
            ));
            for l in self.block_linears(b).into_iter().take(4) {
                t.push((l.name, vec![l.k.into(), l.n.into()]));
            }
            t.push((format!("blk.{b}.ffn_norm.weight"), vec![self.hidden.into()]));
            for l in self.block_linears(b).into_iter().skip(4) {
                t.push((l.name, vec![l.k.into(), l.n.into()]));
            }
        }
        t.push(("output_norm.weight".into(), vec![self.hidden.into()]));
        if !self.tied_embeddings {
            t.push((
                "output.weight".into(),
                vec![self.hidden.into(), self.vocab.into()],
            ));
        }
        t
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn parameters(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|(_, d)| d.iter().product::<u64>())
            .sum()
    }
}
