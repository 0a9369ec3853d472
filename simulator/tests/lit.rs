//! Runs the simulator's lit tests (`tests/lit/sim`) against the q35sim built
//! for this test. Needs LLVM 22's `lit` and `FileCheck` (`$LLVM_BIN`, else
//! /usr/lib/llvm-22/bin). The rest of `tests/lit` runs from q35c's test.

use std::path::Path;
use std::process::Command;

#[test]
fn lit_sim_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let llvm_bin = std::env::var("LLVM_BIN").unwrap_or_else(|_| "/usr/lib/llvm-22/bin".into());
    let lit = Path::new(&llvm_bin).join("lit");
    assert!(
        lit.exists(),
        "lit not found at {} (install LLVM 22 or set LLVM_BIN)",
        lit.display()
    );
    let output = Command::new(&lit)
        .arg("-sv")
        .arg(root.join("tests/lit/sim"))
        .env("Q35SIM", env!("CARGO_BIN_EXE_q35sim"))
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
