//! The model.toml door: `q35_model::parse`, then `resolve` against a small
//! GGUF file the harness writes itself (the cross-check of `[architecture]`
//! against GGUF metadata).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use q35_gguf::write::GgufWriter;
use q35_gguf::{Array, Value};
use q35_model::{Architecture, WeightSource};

use crate::message;

/// The tiny model the harness cross-checks against: a 2-block LLaMA with
/// hidden 16, small enough (21 KiB) to be a seed of the `gguf` corpus too.
fn tiny_arch() -> Architecture {
    Architecture {
        family: "llama".into(),
        blocks: 2,
        hidden: 16,
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
        ffn: 32,
        vocab: 32,
        rope_base: 10_000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        context: 128,
    }
}

/// The tiny model's GGUF image, written by q35-gguf's writer: architecture
/// metadata, a 32-token vocabulary and every tensor (zeros, F32). Also a
/// seed of the `gguf` corpus.
pub fn tiny_gguf_bytes() -> Vec<u8> {
    let a = tiny_arch();
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()));
    w.metadata("llama.block_count", Value::U32(a.blocks));
    w.metadata("llama.embedding_length", Value::U32(a.hidden));
    w.metadata("llama.attention.head_count", Value::U32(a.heads));
    w.metadata("llama.attention.head_count_kv", Value::U32(a.kv_heads));
    w.metadata("llama.feed_forward_length", Value::U32(a.ffn));
    w.metadata("llama.context_length", Value::U32(a.context));
    w.metadata("llama.rope.freq_base", Value::F32(a.rope_base));
    w.metadata(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(a.norm_eps),
    );
    w.metadata(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(
            (0..a.vocab).map(|i| format!("t{i}")).collect(),
        )),
    );
    for (name, dims) in a.expected_tensors() {
        let n = dims.iter().product::<u64>() as usize;
        w.tensor_f32(&name, &dims, &vec![0.0; n]);
    }
    w.to_bytes()
}

/// A directory holding `tiny.gguf`, written once per process.
fn tiny_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("q35-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        std::fs::write(dir.join("tiny.gguf"), tiny_gguf_bytes()).expect("write tiny.gguf");
        dir
    })
}

/// Parses `data` as model.toml text. Errors must be located messages; an
/// accepted description is resolved when the only files it names are the
/// harness's own `tiny.gguf` (a fuzzer must not open arbitrary paths), and
/// a resolved model's architecture is consistent: its tensor list can be
/// built, its widths fit, its limits hold. Returns whether the text parsed.
pub fn model_toml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let dir = tiny_dir();
    let toml = match q35_model::parse(text, &dir.join("model.toml")) {
        Ok(t) => t,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    assert!(!toml.name.trim().is_empty());
    let tiny = dir.join("tiny.gguf");
    if toml.files().iter().any(|f| *f != tiny) {
        return true;
    }
    let spec = match toml.resolve() {
        Ok(s) => s,
        Err(e) => {
            message(&e);
            return true;
        }
    };
    let a = &spec.arch;
    if let WeightSource::Gguf { .. } = spec.weights {
        assert_eq!(*a, tiny_arch(), "resolved against tiny.gguf");
    }
    assert!(a.blocks > 0 && a.hidden > 0 && a.heads > 0 && a.kv_heads > 0);
    assert_eq!(a.heads % a.kv_heads, 0);
    assert!(spec.limits.max_seq_len >= 1 && spec.limits.max_seq_len <= a.context);
    assert!((1..=1024).contains(&spec.limits.batch));
    // Consumers build the tensor list and the widths; none may overflow.
    assert!(a.q_dim() > 0 && a.kv_dim() > 0);
    let tensors = a.expected_tensors();
    assert_eq!(
        tensors.len() as u64,
        9 * u64::from(a.blocks) + 2 + u64::from(!a.tied_embeddings)
    );
    let _ = a.parameters();
    true
}
