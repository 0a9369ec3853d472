//! The fuzz harness of q35c's MLIR door: MLIR text into what `q35c opt
//! --q35-verify --q35-check-overflow` runs (q35-mlir's parser entry with the
//! q35 dialect loaded, then the pass pipeline).
//!
//! The promises (issue 12): MLIR's parser rejects bad input with a
//! diagnostic (a typed `MlirError` whose message is not empty), and q35's
//! passes never crash on a module that verifies; they succeed, or fail with
//! a typed error. A module that survives the passes prints as text that
//! parses back and prints identically.
//!
//! This crate links MLIR, so it is apart from q35-fuzz (scripts/test allows
//! it, like q35-mlir and q35c). Its corpus and minimised crashes live in
//! `fuzz/mlir/corpus/mlir_opt/` and `fuzz/mlir/regressions/mlir_opt/`, run
//! by `tests/regressions.rs` on every `cargo test`.

use std::cell::RefCell;

use melior::Context;

/// Inputs run on one MLIR context before a fresh one replaces it: a context
/// keeps every type and attribute it ever uniqued, so a long fuzzing run on
/// one context would grow without bound.
const RUNS_PER_CONTEXT: u32 = 1000;

thread_local! {
    static CONTEXT: RefCell<Option<(Context, u32)>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's MLIR context (the q35 dialect loaded).
fn with_context<T>(f: impl FnOnce(&Context) -> T) -> T {
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(_, runs)| *runs >= RUNS_PER_CONTEXT)
        {
            *slot = None;
            let context = q35_mlir::create_context()
                .unwrap_or_else(|e| panic!("the q35 dialect does not load: {e}"));
            *slot = Some((context, 0));
        }
        let (context, runs) = slot.as_mut().expect("set above");
        *runs += 1;
        f(context)
    })
}

/// The passes `q35c opt --q35-verify --q35-check-overflow` runs.
pub const PIPELINE: [&str; 2] = ["q35-verify", "q35-check-overflow"];

/// Parses `data` (UTF-8 only: MLIR source is text) as an MLIR module and
/// runs [`PIPELINE`] on it. Returns whether the module parsed (and so
/// verified: parsing verifies).
pub fn mlir_opt(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    with_context(|context| {
        let mut module = match q35_mlir::parse_module(context, text, "fuzz.mlir") {
            Ok(m) => m,
            Err(e) => {
                assert!(!e.to_string().trim().is_empty(), "empty diagnostic: {e:?}");
                return false;
            }
        };
        if let Err(e) = q35_mlir::passes::run(context, &mut module, &PIPELINE) {
            assert!(!e.to_string().trim().is_empty(), "empty pass error: {e:?}");
            return true;
        }
        let printed = module.as_operation().to_string();
        let again = q35_mlir::parse_module(context, &printed, "printed.mlir")
            .unwrap_or_else(|e| panic!("the printed module does not parse: {e}\n{printed}"));
        assert_eq!(
            again.as_operation().to_string(),
            printed,
            "printing is not a fixed point"
        );
        true
    })
}
