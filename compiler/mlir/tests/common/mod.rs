//! What the q35-mlir integration tests share: the repository root and the
//! SmolLM2 model.toml pointed at the GGUF the tests find.

use std::path::{Path, PathBuf};

use q35_model::ModelSpec;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The SmolLM2 GGUF: `$Q35_SMOLLM2_GGUF`, else the one scripts/setup
/// fetches. Missing, it fails the test unless `Q35_SKIP_MODEL_TESTS=1`,
/// which skips it (`None`).
pub fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("Q35_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1"),
        "SmolLM2 GGUF missing at {} (run scripts/setup, or set Q35_SKIP_MODEL_TESTS=1)",
        path.display()
    );
    None
}

/// examples/smollm2-135m.toml with its weights at `gguf`, resolved.
pub fn smollm2_spec(gguf: &Path) -> ModelSpec {
    let toml_path = root().join("examples/smollm2-135m.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("path = ") {
                format!("path = {:?}", gguf.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    q35_model::parse(&text, &toml_path)
        .and_then(q35_model::ModelToml::resolve)
        .unwrap()
}
