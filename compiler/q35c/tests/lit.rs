//! Runs the lit suite (tests/lit) against the q35c built for this test, so
//! `cargo test` covers the FileCheck tests too. Needs LLVM 22's `lit`
//! (`$LLVM_BIN`, else /usr/lib/llvm-22/bin). `tests/lit/sim` is left out:
//! the simulator's own test (`simulator/tests/lit.rs`) runs it against the
//! q35sim it builds, so `cargo test --workspace` runs every lit test once.

use std::path::Path;
use std::process::Command;

#[test]
fn lit_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let llvm_bin = std::env::var("LLVM_BIN").unwrap_or_else(|_| "/usr/lib/llvm-22/bin".into());
    let lit = Path::new(&llvm_bin).join("lit");
    assert!(
        lit.exists(),
        "lit not found at {} (install LLVM 22 or set LLVM_BIN)",
        lit.display()
    );
    let output = Command::new(&lit)
        .arg("-sv")
        .arg("--filter-out=^q35 :: sim/")
        .arg(root.join("tests/lit"))
        .env("Q35C", env!("CARGO_BIN_EXE_q35c"))
        .output()
        .expect("lit runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "lit failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Passed"),
        "lit ran no tests:\n{stdout}\n{stderr}"
    );
}
