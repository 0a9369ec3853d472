//! The pass API: typed results for unknown passes, pass diagnostics with
//! location and op, and verification of parsed input.

use q35_mlir::passes::{self, RunOptions};
use q35_mlir::{Input, MlirError, opt};

const K_MISMATCH: &str = r#"module {
  "q35.weight"() {sym_name = "w", source = "w.weight", type = tensor<8x32x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  func.func @f(%x: tensor<?x64xf32>) -> tensor<?x8xf32> {
    %y = "q35.matmul"(%x) {weight = @w, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x8xf32>
    return %y : tensor<?x8xf32>
  }
}"#;

fn run(source: &str, pipeline: &[&str]) -> Result<String, MlirError> {
    let pipeline = passes::pipeline(pipeline)?;
    opt(
        Input::Text {
            source,
            name: "t.mlir",
        },
        &pipeline,
        RunOptions::default(),
    )
}

#[test]
fn unknown_pass_is_a_typed_error() {
    let err = run("module {}", &["q35-nope"]).unwrap_err();
    assert!(
        matches!(&err, MlirError::UnknownPass(p) if p == "q35-nope"),
        "{err}"
    );
}

#[test]
fn verify_reports_location_op_and_reason() {
    // IRDL alone accepts it: the mismatch is only visible to q35-verify.
    run(K_MISMATCH, &[]).unwrap();
    let err = run(K_MISMATCH, &["q35-verify"]).unwrap_err();
    let MlirError::Pass { pass, diagnostics } = &err else {
        panic!("{err}")
    };
    assert_eq!(*pass, "q35-verify");
    assert_eq!(diagnostics.len(), 1);
    let d = &diagnostics[0];
    assert_eq!(
        (d.location.as_str(), d.op.as_str()),
        ("t.mlir:4:10", "q35.matmul")
    );
    assert_eq!(
        d.message,
        "input has 64 features but weight @w has 32 columns"
    );
}

#[test]
fn parse_errors_carry_mlir_diagnostics() {
    let err = run("func.func @f( {", &[]).unwrap_err();
    let MlirError::Parse { diagnostics } = &err else {
        panic!("{err}")
    };
    assert!(diagnostics[0].starts_with("t.mlir:1:"), "{diagnostics:?}");
}

#[test]
fn every_pass_is_listed_once_and_prefixed() {
    let names = passes::names();
    for n in &names {
        // The dialect the pass works on: q35 passes, lpu-lower and later
        // lpu passes.
        assert!(n.starts_with("q35-") || n.starts_with("lpu-"), "{n}");
        assert_eq!(names.iter().filter(|m| *m == n).count(), 1);
        assert!(passes::find(n).is_some());
    }
    for n in passes::COMPILE_PIPELINE {
        assert!(names.contains(&n));
    }
}

#[test]
fn pipelines_parse_in_mlir_syntax_with_typed_options() {
    let p =
        passes::parse_pipeline("builtin.module(q35-verify,q35-quantize-activations{share=false})")
            .unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].pass.name, "q35-quantize-activations");
    assert!(!p[1].options.bool("share"));
    // Defaults, and the bare comma list.
    let p = passes::parse_pipeline("q35-verify, q35-quantize-activations").unwrap();
    assert!(p[1].options.bool("share"));
    for (text, wanted) in [
        (
            "q35-quantize-activations{share=maybe}",
            "option `share` must be true or false, not `maybe`",
        ),
        (
            "q35-quantize-activations{tile=4}",
            "no option `tile` (options: share)",
        ),
        (
            "q35-verify{share=true}",
            "no option `share` (options: none)",
        ),
        (
            "func.func(q35-verify)",
            "q35 passes run on builtin.module, not `func.func`",
        ),
        ("q35-verify{", "unbalanced `{`"),
    ] {
        let err = passes::parse_pipeline(text).unwrap_err().to_string();
        assert!(err.contains(wanted), "{text}: {err}");
    }
}

#[test]
fn every_pass_option_default_parses() {
    for p in passes::PASSES {
        p.default_options().unwrap();
    }
}
