//! `q35c eval --quant` and `q35c quant-report --eval` quantize and evaluate
//! a model the one same way (`q35_quant::model::QuantPipeline`: calibration
//! with covariances, the golden forward pass): on the same texts, windows
//! and calibration they must report the same figures, bit for bit. Runs on
//! examples/tiny.toml (synthetic weights; text bytes are its tokens).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn q35c_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_q35c"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("q35c runs");
    assert!(
        out.status.success(),
        "q35c {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("q35c prints one JSON object")
}

#[test]
fn eval_quant_equals_quant_report_eval_on_tiny() {
    let common = [
        "--calib",
        "tests/data/calib_en.txt",
        "--calib-ctx",
        "128",
        "--ctx",
        "64",
        "--windows",
        "3",
        "--json",
    ];
    let mut eval_args = vec![
        "eval",
        "examples/tiny.toml",
        "--text",
        "tests/data/eval_en.txt",
        "--quant",
    ];
    eval_args.extend(common);
    let eval = q35c_json(&eval_args);
    // tiny.toml quantizes with q35 at group 32.
    let mut report_args = vec![
        "quant-report",
        "examples/tiny.toml",
        "--schemes",
        "q35",
        "--eval",
        "tests/data/eval_en.txt",
    ];
    report_args.extend(common);
    let report = q35c_json(&report_args);

    let q = &eval["quantized"];
    assert_eq!(q["scheme"], "q35");
    assert_eq!(q["group_size"], 32);
    let schemes = report["schemes"].as_array().expect("schemes array");
    assert_eq!(schemes.len(), 1);
    assert_eq!(schemes[0]["scheme"], "q35");
    assert_eq!(schemes[0]["head"], "q35");
    let r = &schemes[0]["eval"];
    for key in [
        "perplexity",
        "mean_kld",
        "max_kld",
        "top1_agreement",
        "positions",
    ] {
        assert!(q[key].is_number(), "eval has no {key}: {q}");
        assert_eq!(
            q[key], r[key],
            "{key}: eval {} vs quant-report {}",
            q[key], r[key]
        );
    }
    // The reference figures agree too (llama-perplexity's protocol; the
    // two sum the same log-probabilities in different orders).
    let (a, b) = (
        eval["perplexity"].as_f64().unwrap(),
        r["reference_perplexity"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-12 * a,
        "reference perplexity {a} vs {b}"
    );
    assert_eq!(eval["scored_tokens"], r["positions"]);
    // A quantized model differs from the f32 one: the comparison is real.
    assert!(q["mean_kld"].as_f64().unwrap() > 0.0);
    assert_ne!(q["perplexity"], eval["perplexity"]);
}

/// The figures of `q35c eval --quant` under a model.toml with per-kind
/// group sizes (`group_size_of`), of `quant-report` by default on it, and of
/// `quant-report --group 32 --group-of attn_k=64` on plain tiny.toml are one
/// and the same: the model.toml's sizes reach the quantizer exactly as the
/// flags do.
#[test]
fn group_size_of_equals_group_of_flags_on_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("examples/tiny.toml")).unwrap();
    let text = text.replace(
        "group_size = 32\n",
        "group_size = 32\ngroup_size_of = { attn_k = 64 }\n",
    );
    assert!(text.contains("group_size_of"));
    let toml = dir.path().join("tiny-kinds.toml");
    std::fs::write(&toml, text).unwrap();
    let toml = toml.to_str().unwrap();
    let common = [
        "--calib",
        "tests/data/calib_en.txt",
        "--calib-ctx",
        "128",
        "--ctx",
        "64",
        "--windows",
        "2",
        "--json",
    ];
    let run = |first: &[&str]| {
        let mut args = first.to_vec();
        args.extend(common);
        q35c_json(&args)
    };
    let eval = run(&["eval", toml, "--text", "tests/data/eval_en.txt", "--quant"]);
    let q = &eval["quantized"];
    assert_eq!(q["group_size"], 32);
    assert_eq!(q["group_size_of"]["attn_k"], 64);
    let report_args = ["--schemes", "q35", "--eval", "tests/data/eval_en.txt"];
    let by_toml = run(&[&["quant-report", toml][..], &report_args].concat());
    let by_flags = run(&[
        &["quant-report", "examples/tiny.toml", "--group", "32"][..],
        &["--group-of", "attn_k=64"],
        &report_args,
    ]
    .concat());
    let uniform = run(&[&["quant-report", "examples/tiny.toml"][..], &report_args].concat());
    for report in [&by_toml, &by_flags] {
        assert_eq!(report["methods"]["group_of"][0], "attn_k=64", "{report}");
        let r = &report["schemes"][0]["eval"];
        for key in ["perplexity", "mean_kld", "max_kld", "top1_agreement"] {
            assert!(q[key].is_number(), "eval has no {key}: {q}");
            assert_eq!(
                q[key], r[key],
                "{key}: eval {} vs quant-report {}",
                q[key], r[key]
            );
        }
        assert_eq!(
            report["schemes"][0]["bits_per_weight"],
            by_toml["schemes"][0]["bits_per_weight"]
        );
    }
    // attn_k at 64 stores fewer scales than at 32: the sizes took effect.
    assert!(
        by_toml["schemes"][0]["bits_per_weight"].as_f64().unwrap()
            < uniform["schemes"][0]["bits_per_weight"].as_f64().unwrap()
    );
}
