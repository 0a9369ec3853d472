//! Shared helpers for tests that need the real SmolLM2 GGUF.

use std::path::PathBuf;
use std::sync::OnceLock;

use q35_gguf::Gguf;
use q35_tokenizer::Tokenizer;

/// Where the model is: `$Q35_SMOLLM2_GGUF`, else the workspace cache.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("Q35_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The tokenizer of the real model, or `None` when the model is missing and
/// `Q35_SKIP_MODEL_TESTS=1`. A missing model without that variable fails
/// the test: CI always has the file.
pub fn smollm2() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = model_path();
        if !path.exists() {
            if std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
                eprintln!(
                    "skipping: {} missing and Q35_SKIP_MODEL_TESTS=1",
                    path.display()
                );
                return None;
            }
            panic!(
                "model GGUF {} is missing (set Q35_SMOLLM2_GGUF, run scripts/setup, \
                 or set Q35_SKIP_MODEL_TESTS=1 to skip)",
                path.display()
            );
        }
        let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("{e}"));
        Some(Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}")))
    })
    .as_ref()
}
