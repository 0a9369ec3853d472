//! The regression pass of `mlir_opt`: every committed corpus file and every
//! minimised crash input through the harness (stable, `cargo test`).

use std::path::{Path, PathBuf};

fn inputs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join("mlir_opt");
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

#[test]
fn every_corpus_file_passes() {
    let files = inputs("corpus");
    assert!(!files.is_empty(), "fuzz/mlir/corpus/mlir_opt/ is empty");
    let mut accepted = 0;
    for path in &files {
        let data = std::fs::read(path).expect("read a corpus file");
        accepted += usize::from(q35_fuzz_mlir::mlir_opt(&data));
    }
    eprintln!(
        "mlir_opt: {} corpus inputs passed, {accepted} parsed",
        files.len()
    );
    assert!(accepted > 0, "no corpus input parses");
}

#[test]
fn every_minimised_crash_passes() {
    for path in inputs("regressions") {
        let data = std::fs::read(&path).expect("read a regression input");
        q35_fuzz_mlir::mlir_opt(&data);
    }
}
