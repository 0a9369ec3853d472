//! Whole-module snapshots of the q35 dialect emitted for the example models
//! (tiny, SmolLM2-135M from its GGUF, a Llama-70B shape) and of the tiny
//! model in the lpu dialect, plus structural checks that hold whatever the
//! snapshot says.
//!
//! Bless changed output with `INSTA_UPDATE=always cargo test -p q35-mlir` (or
//! `cargo insta review`); CI fails on a stale snapshot. The GGUF file name is
//! normalised. The SmolLM2 test needs the GGUF (`Q35_SMOLLM2_GGUF`, else
//! `.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`) and fails without it
//! unless `Q35_SKIP_MODEL_TESTS=1`.

mod common;

use std::path::Path;

use q35_model::ModelSpec;

fn example(name: &str) -> ModelSpec {
    q35_model::load(common::root().join("examples").join(name)).unwrap()
}

fn emit(spec: &ModelSpec) -> String {
    q35_mlir::emit_q35(spec).unwrap()
}

fn snapshot(name: &str, module: &str) {
    insta::with_settings!({
        snapshot_path => "snapshots",
        prepend_module_to_snapshot => false,
        filters => vec![(r#"q35\.weights = "gguf:[^"]*""#, r#"q35.weights = "gguf:[GGUF]""#)],
    }, {
        insta::assert_snapshot!(name, module);
    });
}

fn count(module: &str, needle: &str) -> usize {
    module.matches(needle).count()
}

#[test]
fn tiny_module() {
    let m = emit(&example("tiny.toml"));
    assert_eq!(count(&m, "\"q35.weight\"()"), 1 + 2 * 9 + 1);
    assert_eq!(count(&m, "\"q35.matmul\""), 2 * 7);
    assert_eq!(m, emit(&example("tiny.toml")), "emission is deterministic");
    snapshot("tiny", &m);
}

/// The tiny model in the lpu dialect (`q35c compile --emit=lpu`): fixed
/// buffers, one const per norm, one tiled weight per matrix, one scratch
/// buffer per intermediate, one op per model op.
#[test]
fn tiny_lpu_module() {
    let spec = example("tiny.toml");
    let options = q35_mlir::passes::RunOptions::default();
    let m = q35_mlir::emit_lpu_with(&spec, None, options).unwrap();
    assert_eq!(count(&m, "\"lpu.weight\"()"), 2 * 7 + 1);
    assert_eq!(count(&m, "kind = \"const\""), 2 + 2 * 2 + 1);
    assert_eq!(count(&m, "kind = \"kv\""), 2 * 2);
    assert_eq!(count(&m, "\"lpu.matmul\""), 2 * 7 + 1);
    assert_eq!(count(&m, "\"q35."), 0, "no q35 op is left");
    assert_eq!(
        m,
        q35_mlir::emit_lpu_with(&spec, None, options).unwrap(),
        "emission is deterministic"
    );
    snapshot("tiny_lpu", &m);
}

#[test]
fn llama_70b_module() {
    let m = emit(&example("llama-70b.toml"));
    assert_eq!(count(&m, "\"q35.weight\"()"), 1 + 80 * 9 + 2);
    assert_eq!(count(&m, "\"q35.attention\""), 80);
    assert!(
        m.contains("sym_name = \"output\""),
        "untied head has its own weight"
    );
    // Weights are referenced by symbol, never inlined.
    assert!(!m.contains("dense<"), "no dense attributes");
    assert!(
        m.len() < 400_000,
        "the 70B module stays small ({} bytes)",
        m.len()
    );
    snapshot("llama_70b", &m);
}

#[test]
fn smollm2_module() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let spec = common::smollm2_spec(&gguf);
    let m = emit(&spec);
    assert_eq!(
        count(&m, "\"q35.weight\"()"),
        273,
        "as many as the GGUF's tensors, and the rotated model's head mix"
    );
    assert_eq!(count(&m, "source = \"output_mix\""), 1);
    assert_eq!(count(&m, "\"q35.mix\""), 1);
    assert_eq!(count(&m, "\"q35.lm_head\""), 1);
    snapshot("smollm2_135m", &m);
}

/// `q35.target` is the whole target: reading it back gives the same
/// description (and hash) the model was compiled for, and a missing or
/// broken attribute is a typed error.
#[test]
fn target_attribute_round_trips() {
    use q35_mlir::ir::{TargetAttrError, target_from_module};

    let spec = example("tiny.toml");
    let graph = q35_frontend::build(&spec).unwrap();
    let context = q35_mlir::create_context().unwrap();
    let module = q35_mlir::lower(&context, &spec, &graph).unwrap();
    let back = target_from_module(&module.as_operation()).unwrap();
    assert_eq!(back.source, Path::new("q35.target"));
    assert_eq!(back.hash(), spec.target.hash());
    assert_eq!(
        q35_model::Target {
            source: spec.target.source.clone(),
            ..back
        },
        spec.target
    );

    // Through the printed text too (floats print in a form that re-parses exactly).
    let text = module.as_operation().to_string();
    let reparsed = q35_mlir::parse_module(&context, &text, "t.mlir").unwrap();
    assert_eq!(
        target_from_module(&reparsed.as_operation()).unwrap().hash(),
        spec.target.hash()
    );

    let bare = q35_mlir::parse_module(&context, "module {}", "t.mlir").unwrap();
    assert!(matches!(
        target_from_module(&bare.as_operation()),
        Err(TargetAttrError::Missing)
    ));
    let broken = text.replacen("acc_bits = 32 : i64", "acc_bits = \"32\"", 1);
    let broken = q35_mlir::parse_module(&context, &broken, "t.mlir").unwrap();
    let e = target_from_module(&broken.as_operation()).unwrap_err();
    assert!(
        matches!(&e, TargetAttrError::Malformed(m) if m.contains("invalid type: string")),
        "{e}"
    );
    let invalid = text.replacen("planes = 4 : i64", "planes = 3 : i64", 1);
    let invalid = q35_mlir::parse_module(&context, &invalid, "t.mlir").unwrap();
    let e = target_from_module(&invalid.as_operation()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "q35.target: `mxm.planes`: 3 must be even: each hemisphere holds half"
    );
}
