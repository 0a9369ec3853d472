//! The LLaMA-family architecture: hyperparameters, derived sizes, the tensors
//! a checkpoint must hold, and reading all of it from GGUF metadata.

use std::path::Path;

use q35_gguf::{Array, Gguf};

use crate::ModelError;

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

/// The GGUF metadata keys that define each architecture field, for a file
/// whose `general.architecture` is `arch`.
pub(crate) fn gguf_key(arch: &str, field: &str) -> String {
    let suffix = match field {
        "blocks" => "block_count",
        "hidden" => "embedding_length",
        "heads" => "attention.head_count",
        "kv_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "ffn" => "feed_forward_length",
        "vocab" => "vocab_size",
        "rope_base" => "rope.freq_base",
        "norm_eps" => "attention.layer_norm_rms_epsilon",
        "context" => "context_length",
        other => other,
    };
    format!("{arch}.{suffix}")
}

/// LLaMA-family architectures q35 runs (GGUF `general.architecture`).
pub const LLAMA_FAMILY: &[&str] = &["llama"];

/// Reads the architecture from a GGUF file's metadata and checks that every
/// tensor it implies is present with the right shape.
pub fn from_gguf(gguf: &Gguf, gguf_path: &Path) -> Result<Architecture, ModelError> {
    let werr = |message: String| ModelError::Weights {
        gguf: gguf_path.to_path_buf(),
        message,
    };
    let gerr = |source| ModelError::Weights {
        gguf: gguf_path.to_path_buf(),
        message: format!("{source}"),
    };
    let arch = gguf.get_str("general.architecture").map_err(gerr)?;
    if !LLAMA_FAMILY.contains(&arch) {
        return Err(werr(format!(
            "`general.architecture` is `{arch}`; q35 supports LLaMA-family models ({})",
            LLAMA_FAMILY.join(", ")
        )));
    }
    let u = |field: &str| -> Result<u32, ModelError> {
        let key = gguf_key(arch, field);
        let v = gguf.get_u64(&key).map_err(gerr)?;
        u32::try_from(v).map_err(|_| werr(format!("`{key}` = {v} is out of range")))
    };
    let f = |field: &str| -> Result<f32, ModelError> {
        Ok(gguf.get_f64(&gguf_key(arch, field)).map_err(gerr)? as f32)
    };
    let hidden = u("hidden")?;
    let heads = u("heads")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(werr(format!(
            "`{}` = {heads} does not divide `{}` = {hidden}",
            gguf_key(arch, "heads"),
            gguf_key(arch, "hidden")
        )));
    }
    let head_dim = match gguf.get(&gguf_key(arch, "head_dim")) {
        Some(_) => u("head_dim")?,
        None => hidden / heads,
    };
    let vocab = match gguf.get(&gguf_key(arch, "vocab")) {
        Some(_) => u("vocab")?,
        None => match gguf.get_array("tokenizer.ggml.tokens").map_err(gerr)? {
            Array::String(t) => t.len() as u32,
            other => {
                return Err(werr(format!(
                    "`tokenizer.ggml.tokens` should be an array of strings, found {}",
                    other.element_type_name()
                )));
            }
        },
    };
    let a = Architecture {
        family: "llama".into(),
        blocks: u("blocks")?,
        hidden,
        heads,
        kv_heads: u("kv_heads")?,
        head_dim,
        ffn: u("ffn")?,
        vocab,
        rope_base: if gguf.get(&gguf_key(arch, "rope_base")).is_some() {
            f("rope_base")?
        } else {
            10_000.0
        },
        norm_eps: f("norm_eps")?,
        tied_embeddings: gguf.tensor("output.weight").is_err(),
        context: u("context")?,
    };
    for (name, dims) in a.expected_tensors() {
        let t = gguf.tensor(&name).map_err(gerr)?;
        if t.dims != dims {
            return Err(werr(format!(
                "tensor `{name}` has dims {:?}, the architecture implies {dims:?}",
                t.dims
            )));
        }
    }
    Ok(a)
}
