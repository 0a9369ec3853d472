//! Shared helpers for the real-model tests: locating SmolLM2 and the
//! recorded llama.cpp fixture.

use std::path::PathBuf;
use std::sync::OnceLock;

use q35_gguf::Gguf;
use q35_reference::Model;
use serde::Deserialize;

/// `Q35_SMOLLM2_GGUF`, else `<workspace>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn model_path() -> PathBuf {
    std::env::var_os("Q35_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

/// True when the caller asked to skip real-model tests (`Q35_SKIP_MODEL_TESTS=1`).
pub fn skip() -> bool {
    if std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!("Q35_SKIP_MODEL_TESTS=1: skipping a real-model test");
        return true;
    }
    false
}

/// The GGUF and the reference model on it, loaded once per test binary.
/// Panics (fails the test) if the file is missing: CI always has it.
pub fn smollm2() -> &'static (Gguf, Model) {
    static MODEL: OnceLock<(Gguf, Model)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = model_path();
        let gguf = Gguf::open(&path).unwrap_or_else(|e| {
            panic!(
                "cannot open SmolLM2 at {} ({e}); run scripts/setup, set Q35_SMOLLM2_GGUF, \
                 or set Q35_SKIP_MODEL_TESTS=1",
                path.display()
            )
        });
        let arch = q35_model::architecture_from_gguf(&gguf, &path).expect("architecture");
        let model = Model::from_gguf(&gguf, &arch).expect("model");
        (gguf, model)
    })
}

#[derive(Debug, Deserialize)]
pub struct TopLogit {
    pub id: u32,
    pub logit: f32,
}

#[derive(Debug, Deserialize)]
pub struct Greedy {
    pub mode: String,
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub generated: Vec<u32>,
    pub margins: Vec<f32>,
    pub last_prompt_top_logits: Vec<TopLogit>,
}

#[derive(Debug, Deserialize)]
pub struct PplWindow {
    pub start: usize,
    pub count: usize,
}

#[derive(Debug, Deserialize)]
pub struct PplRun {
    pub ctx: usize,
    pub windows: usize,
    pub first: usize,
    pub per_window: Vec<PplWindow>,
    pub count: usize,
    pub ppl: f64,
}

#[derive(Debug, Deserialize)]
pub struct Perplexity {
    pub text_file: String,
    pub tokens: Vec<u32>,
    pub runs: Vec<PplRun>,
}

#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub eos: u32,
    pub add_bos: bool,
    pub greedy: Vec<Greedy>,
    pub perplexity: Perplexity,
}

/// llama.cpp on the GGUF as stored (Q4_1 weights, Q8_1 activations, f16 KV cache).
pub const Q4_1: &str = "llamacpp_smollm2.json";
/// llama.cpp on an F32 copy of the GGUF with an F32 KV cache.
pub const F32: &str = "llamacpp_smollm2_f32.json";

/// A recorded llama.cpp fixture (scripts/reference/record_llamacpp.py).
pub fn fixture(name: &str) -> Fixture {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
