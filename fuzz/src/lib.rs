//! Fuzz harnesses for every door into q35, as plain library functions.
//!
//! Each function takes arbitrary bytes, feeds them to one reader, and
//! asserts what the reader promises (issue 12, docs/fuzzing.md): no panic,
//! no arithmetic overflow, no hang; bad input comes back as a typed error
//! whose message is not empty; accepted input satisfies the reader's
//! invariants and round-trips through the writer where one exists. A broken
//! promise is a panic, which libFuzzer records as a crash.
//!
//! The same functions run in two places: the libFuzzer targets in
//! `fuzz/fuzz_targets/` (coverage-guided search, nightly, `scripts/fuzz`)
//! and the regression test `fuzz/tests/regressions.rs` (stable, part of
//! `cargo test`), which feeds every committed corpus file and every
//! minimised crash input to its target. [`TARGETS`] lists them by name; the
//! name is the directory under `fuzz/corpus/` and `fuzz/regressions/`.
//!
//! The MLIR door (`q35c opt`) is in the separate crate `q35-fuzz-mlir`
//! (`fuzz/mlir/`), so this crate stays free of MLIR like every runtime crate.

mod gguf;
mod isa;
mod lpubin;
mod model;
mod program;
mod sim;
mod tokenizer;

pub use gguf::gguf;
pub use isa::{isa_decode, lpuasm};
pub use lpubin::{fix_lpubin_crcs, fix_lpubin_system_crcs, lpubin, lpubin_system};
pub use model::{model_toml, tiny_gguf_bytes};
pub use program::{isa_program, program_from_bytes};
pub use sim::{MODEL_MAX_CYCLES, SIM_MAX_CYCLES, lpubin_model, sim_program, trim_model};
pub use tokenizer::{chat_template, smollm2, tokenizer_decode, tokenizer_encode};

/// A harness: takes any bytes, panics only when a promise is broken, and
/// returns whether the reader accepted the input (the regression test
/// checks every seed corpus gets something past its reader).
pub type Harness = fn(&[u8]) -> bool;

/// Every harness of this crate with its target name (the libFuzzer binary,
/// and the directory of its corpus and regression inputs).
pub const TARGETS: &[(&str, Harness)] = &[
    ("gguf", gguf),
    ("model_toml", model_toml),
    ("tokenizer_encode", tokenizer_encode),
    ("tokenizer_decode", tokenizer_decode),
    ("chat_template", chat_template),
    ("lpuasm", lpuasm),
    ("lpubin", lpubin),
    ("isa_decode", isa_decode),
    ("isa_program", isa_program),
    ("sim_program", sim_program),
    ("lpubin_model", lpubin_model),
    ("lpubin_system", lpubin_system),
];

/// Asserts that an error renders to a non-empty message (every door's
/// errors are shown to a user) and returns it.
fn message(e: &dyn std::error::Error) -> String {
    let m = e.to_string();
    assert!(
        !m.trim().is_empty(),
        "an error with an empty message: {e:?}"
    );
    m
}

/// The built-in target every program is checked against.
fn lpu_v1() -> &'static q35_target::Target {
    static T: std::sync::OnceLock<q35_target::Target> = std::sync::OnceLock::new();
    T.get_or_init(|| q35_target::Target::builtin("lpu-v1").expect("lpu-v1 is built in"))
}
