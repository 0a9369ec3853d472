//! Writes the seed corpus of `mlir_opt` (`fuzz/mlir/corpus/mlir_opt/`):
//! `cargo run -p q35-fuzz-mlir --example make_mlir_corpus`. The q35 module
//! `q35c compile --emit=q35` writes for examples/tiny.toml (the 70B one is
//! 280 KB, too long a seed), the lit suite's pass input, and small modules
//! of the upstream dialects the context loads.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("fuzz/mlir/corpus/mlir_opt");
    std::fs::create_dir_all(&out).expect("create the corpus directory");
    let spec = q35_model::load(root.join("examples/tiny.toml")).expect("example");
    let text = q35_mlir::emit_q35(&spec).expect("emit");
    std::fs::write(out.join("tiny.mlir"), text).expect("write");
    let lit = root.join("tests/lit/passes/q35-verify.mlir");
    std::fs::copy(&lit, out.join("lit-q35-verify.mlir")).expect("copy the lit input");
    let small = [
        ("empty.mlir", "module {}\n"),
        (
            "func.mlir",
            "func.func @f(%a: i32) -> i32 {\n  %b = arith.addi %a, %a : i32\n  return %b : i32\n}\n",
        ),
        ("syntax.mlir", "func.func @f( {\n"),
    ];
    for (name, text) in small {
        std::fs::write(out.join(name), text).expect("write");
    }
}
