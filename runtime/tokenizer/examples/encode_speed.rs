//! Measures tokenizer load and encode speed on 2.8 KB of English.
//!
//! `cargo run --release -p q35-tokenizer --example encode_speed [-- model.gguf]`
//! (default model: `$Q35_SMOLLM2_GGUF`, else the workspace cache). Prints
//! numbers; asserts nothing.

use std::path::PathBuf;
use std::time::Instant;

use q35_gguf::Gguf;
use q35_tokenizer::Tokenizer;

const TEXT: &str = include_str!("../tests/fixtures/english.txt");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("Q35_SMOLLM2_GGUF").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let t0 = Instant::now();
    let gguf = Gguf::open(&path)?;
    let t1 = Instant::now();
    let tok = Tokenizer::from_gguf(&gguf)?;
    let t2 = Instant::now();
    println!(
        "open GGUF {:.1} ms, build tokenizer {:.1} ms",
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3
    );

    let n_tokens = tok.encode(TEXT, false).len();
    // Repeat until at least a second has passed.
    let mut iters = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 1.0 {
        std::hint::black_box(tok.encode(std::hint::black_box(TEXT), false));
        iters += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens = n_tokens as f64 * iters as f64;
    let bytes = TEXT.len() as f64 * iters as f64;
    println!(
        "encode: {} bytes -> {n_tokens} tokens, {iters} iterations in {secs:.2} s: \
         {:.0} tokens/s, {:.2} MB/s",
        TEXT.len(),
        tokens / secs,
        bytes / secs / 1e6
    );

    let ids = tok.encode(TEXT, false);
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed().as_secs_f64() < 0.5 {
        std::hint::black_box(tok.decode(std::hint::black_box(&ids)));
        iters += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "decode: {:.0} tokens/s",
        ids.len() as f64 * iters as f64 / secs
    );
    Ok(())
}
