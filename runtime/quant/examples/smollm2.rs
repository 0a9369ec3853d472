//! Quantizes SmolLM2-135M with every scheme and measures it against the f32
//! reference: per-scheme bits per weight, weight RMSE, layer-output error on
//! calibration activations, and (with `--eval`) perplexity, KL divergence
//! and top-1 agreement on a held-out text.
//!
//! `cargo run --release -p q35-quant --example smollm2 -- [--eval] [--golden]
//! [--gptq] [--ctx N] [--windows N] [--head f32|SCHEME] [--schemes a,b,..]
//! [--group G] [--samples N] [--only NAME_PART]`
//!
//! `--gptq` records in-group covariances so `q35` gets error compensation
//! (as `q35c quant-report` does); `--golden` evaluates the golden forward
//! pass instead of the reference with quantized layers installed; `--only`
//! quantizes just the layers whose name contains the given text.
//! Calibration text: tests/data/calib_en.txt; evaluation text:
//! tests/data/eval_en.txt (disjoint topics).

use std::time::Instant;

use q35_gguf::Gguf;
use q35_quant::QuantScheme;
use q35_quant::model::{
    Calibration, HeadPolicy, ReferenceLogits, SchemePolicy, install, model_weights, quantize_model,
    restore, tensor_report,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::Model;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let path = std::env::var("Q35_SMOLLM2_GGUF")
        .unwrap_or_else(|_| format!("{root}/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let group: usize = arg(&args, "--group").map_or(Ok(128), |s| s.parse())?;
    let ctx: usize = arg(&args, "--ctx").map_or(Ok(256), |s| s.parse())?;
    let windows: Option<usize> = arg(&args, "--windows").map(|s| s.parse()).transpose()?;
    let samples: usize = arg(&args, "--samples").map_or(Ok(64), |s| s.parse())?;
    let head = arg(&args, "--head");
    let schemes: Vec<QuantScheme> = match arg(&args, "--schemes") {
        Some(s) => s.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => QuantScheme::ALL.to_vec(),
    };
    let eval = args.iter().any(|a| a == "--eval");
    let golden = args.iter().any(|a| a == "--golden");
    let threads = 2;

    let gguf = Gguf::open(&path)?;
    let arch = q35_model::architecture_from_gguf(&gguf, std::path::Path::new(&path))?;
    let mut model = Model::from_gguf(&gguf, &arch)?;
    model.set_threads(threads)?;
    let tok = q35_tokenizer::Tokenizer::from_gguf(&gguf)?;
    let calib_text = std::fs::read_to_string(format!("{root}/tests/data/calib_en.txt"))?;
    let eval_text = std::fs::read_to_string(format!("{root}/tests/data/eval_en.txt"))?;
    let calib_tokens = tok.encode(&calib_text, false);
    let eval_tokens = tok.encode(&eval_text, false);
    eprintln!(
        "calibration {} tokens, evaluation {} tokens",
        calib_tokens.len(),
        eval_tokens.len()
    );

    let t = Instant::now();
    let calib = if args.iter().any(|a| a == "--gptq") {
        let span: usize = arg(&args, "--span").map_or(Ok(group), |s| s.parse())?;
        Calibration::run_with_covariance(&model, &calib_tokens, 512, samples, span)?
    } else {
        Calibration::run(&model, &calib_tokens, 512, samples)?
    };
    eprintln!("calibration pass {:.1} s", t.elapsed().as_secs_f64());
    let weights = model_weights(&model)?;
    let reference = if eval {
        let t = Instant::now();
        let r = ReferenceLogits::compute(&model, &eval_tokens, ctx, windows)?;
        eprintln!(
            "reference logits {:.1} s, ppl {:.4}",
            t.elapsed().as_secs_f64(),
            r.ppl()
        );
        Some(r)
    } else {
        None
    };

    for scheme in schemes {
        let policy = SchemePolicy {
            blocks: scheme,
            head: match head.as_deref() {
                None => HeadPolicy::SameAsBlocks,
                Some("f32") => HeadPolicy::KeepF32,
                Some(s) => HeadPolicy::Scheme(s.parse()?),
            },
        };
        let t = Instant::now();
        let layers = quantize_model(
            &model,
            &weights,
            policy,
            group,
            Some(&calib),
            QuantOptions { threads },
        )?;
        let qs = t.elapsed().as_secs_f64();
        // --only STEM: quantize just the layers whose name contains STEM.
        let layers: Vec<_> = match arg(&args, "--only") {
            Some(stem) => layers
                .into_iter()
                .filter(|l| l.id.to_string().contains(&stem))
                .collect(),
            None => layers,
        };
        let (mut bits, mut n, mut se, mut sr, mut oe, mut no) =
            (0u64, 0usize, 0f64, 0f64, 0f64, 0usize);
        let mut mults = std::collections::BTreeMap::new();
        for l in &layers {
            let w = &weights.iter().find(|(id, _)| *id == l.id).expect("layer").1;
            let r = tensor_report(l.id, w, &l.matrix, calib.layer(l.id), threads)?;
            bits += r.storage_bits;
            n += r.rows * r.cols;
            se += r.sq_err;
            sr += r.sq_ref;
            if let Some(e) = r.output_error {
                oe += e;
                no += 1;
            }
            *mults.entry(r.multipliers).or_insert(0) += 1;
        }
        print!(
            "{:>16} (head {:>16}): quantize {qs:5.2} s  bpw {:.4}  rel RMSE {:.4}  mean out err {:.4}  mults {:?}",
            scheme.as_str(),
            policy.head_scheme().map_or("f32", QuantScheme::as_str),
            bits as f64 / n as f64,
            (se / sr).sqrt(),
            oe / no.max(1) as f64,
            mults
        );
        if let Some(r) = &reference {
            let t = Instant::now();
            let e = if golden {
                let g = q35_quant::golden::from_reference(&model, &layers, ctx)?;
                r.compare_golden(&g)?
            } else {
                let saved = install(&mut model, layers)?;
                let e = r.compare(&model)?;
                restore(&mut model, saved)?;
                e
            };
            print!(
                "  | ppl {:.4} (ref {:.4})  KLD {:.5}  top1 {:.4}  [{:.1} s]",
                e.ppl,
                e.reference_ppl,
                e.mean_kld,
                e.top1_agreement,
                t.elapsed().as_secs_f64()
            );
        }
        println!();
    }
    Ok(())
}
