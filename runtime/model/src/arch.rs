//! Reading the LLaMA-family architecture ([`Architecture`], defined in
//! q35-contract) from GGUF metadata, and the metadata key of each field.

use std::path::Path;

use q35_gguf::{Array, Gguf};

use crate::ModelError;
pub use q35_contract::arch::{Architecture, LinearSpec};

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

/// Most decoder blocks a model may declare: far above any LLaMA-family
/// model (Llama 3.1 405B has 126), and low enough that a hostile
/// description (a billion blocks) is refused before anything is built per
/// block, such as the tensor list.
pub const MAX_BLOCKS: u32 = 1024;

/// Widest `hidden`, `ffn`, `vocab`, `head_dim`, query width (`heads x
/// head_dim`) and key/value width a model may declare (2^20; the widest
/// LLaMA-family dimension, a 256k vocabulary, is a quarter of it). Every
/// matrix then has at most 2^40 elements and a model's parameter count fits
/// a u64 with room to spare, so no consumer's arithmetic can overflow.
pub const MAX_WIDTH: u32 = 1 << 20;

/// The size limits every consumer of an [`Architecture`] relies on: the
/// block count and widths above, and key/value heads dividing the query
/// heads. Returns the offending field (a model.toml key) and why.
pub(crate) fn check_limits(a: &Architecture) -> Result<(), (&'static str, String)> {
    if a.blocks > MAX_BLOCKS {
        return Err((
            "blocks",
            format!(
                "{} decoder blocks; q35 takes at most {MAX_BLOCKS}",
                a.blocks
            ),
        ));
    }
    for (field, value) in [
        ("hidden", a.hidden),
        ("ffn", a.ffn),
        ("vocab", a.vocab),
        ("head_dim", a.head_dim),
    ] {
        if value > MAX_WIDTH {
            return Err((field, format!("{value} is wider than {MAX_WIDTH}")));
        }
    }
    if a.kv_heads == 0 || !a.heads.is_multiple_of(a.kv_heads) {
        return Err((
            "kv_heads",
            format!(
                "{} key/value heads do not divide heads = {}",
                a.kv_heads, a.heads
            ),
        ));
    }
    let width = |heads: u32| u64::from(heads) * u64::from(a.head_dim);
    if width(a.heads) > u64::from(MAX_WIDTH) {
        return Err((
            "heads",
            format!(
                "heads x head_dim = {} x {} = {} is wider than {MAX_WIDTH}",
                a.heads,
                a.head_dim,
                width(a.heads)
            ),
        ));
    }
    Ok(())
}

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
    // Before the tensor list is built: its length follows `blocks`.
    check_limits(&a)
        .map_err(|(field, message)| werr(format!("`{}`: {message}", gguf_key(arch, field))))?;
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
