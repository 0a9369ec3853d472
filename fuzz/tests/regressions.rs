//! The regression pass: every committed corpus file (`fuzz/corpus/<target>/`)
//! and every minimised crash input (`fuzz/regressions/<target>/`) through its
//! harness. Runs on stable in `cargo test`, so CI holds every input found so
//! far without nightly or cargo-fuzz; `scripts/fuzz` is the search.

use std::path::{Path, PathBuf};

/// The files of `fuzz/<kind>/<target>/`, sorted (none if it does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Feeds every input of `kind` to every harness; a panic names the file.
/// Returns, per target, (inputs run, inputs the reader accepted).
fn run(kind: &str) -> Vec<(&'static str, usize, usize)> {
    let mut counts = Vec::new();
    for &(target, harness) in q35_fuzz::TARGETS {
        let (mut n, mut accepted) = (0, 0);
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).expect("read a corpus file");
            let shown = path.display().to_string();
            let result = std::panic::catch_unwind(|| harness(&data));
            match result {
                Ok(ok) => accepted += usize::from(ok),
                Err(_) => panic!("{target}: {shown} fails its harness (see the panic above)"),
            }
            n += 1;
        }
        counts.push((target, n, accepted));
    }
    counts
}

#[test]
fn every_corpus_file_passes() {
    // Without the model (Q35_SKIP_MODEL_TESTS=1) the tokenizer targets
    // accept nothing; every other seed corpus must get inputs past its
    // reader, or the fuzzer would start from nothing but errors.
    let model = q35_fuzz::smollm2().is_some();
    for (target, n, accepted) in run("corpus") {
        eprintln!("{target}: {n} corpus inputs passed, {accepted} accepted by the reader");
        assert!(n > 0, "fuzz/corpus/{target}/ is empty");
        if model || !target.contains("token") && target != "chat_template" {
            assert!(
                accepted > 0,
                "no input of fuzz/corpus/{target}/ is accepted"
            );
        }
    }
}

#[test]
fn every_minimised_crash_passes() {
    for (target, n, _) in run("regressions") {
        eprintln!("{target}: {n} regression inputs passed");
    }
}
