//! `q35c quant-report MODEL.toml [--json]`: what each weight quantization
//! scheme costs and how much error it adds, per tensor and for the whole
//! model.
//!
//! For every scheme (default: all of `QuantScheme::ALL`: int8, int4, q35,
//! q35-rtn, q35-alternating, int3) at the model's group size it reports bits per weight including
//! scales and slot masks, the weights' relative RMSE, and the relative
//! layer-output error `||W X - Q(W) X|| / ||W X||` on calibration
//! activations `X` recorded from the f32 reference running `--calib` (the
//! same activations give `q35` its importance and in-group covariance). With
//! `--eval TEXT` it also runs each quantized model as the golden forward
//! pass (`q35_contract::golden`: int8 activations, integer matmuls and the f32
//! operators of docs/q35-format.md section 8, a tied quantized LM head also
//! serving the embedding lookup) and reports perplexity, mean KL divergence
//! from the f32 reference and top-1 agreement on that text (llama-perplexity
//! windows). Keep calibration and evaluation texts disjoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use q35_contract::QuantScheme;
use q35_contract::semantics::{ACT_MAX, accumulator_bound};
use q35_quant::model::{
    EvalReport, QuantPipeline, ReferenceLogits, SchemePolicy, TensorReport, tensor_report,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::splitmix64;
use serde_json::json;

use crate::cmd_eval::CALIB_SAMPLES;
use crate::load::{load, progress, read_utf8};

/// Arguments of `q35c quant-report`.
#[derive(Debug, clap::Args)]
pub struct QuantReportArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// Schemes to compare, comma-separated (default: all six).
    #[arg(long, value_delimiter = ',')]
    pub schemes: Vec<QuantScheme>,
    /// Group size along the reduction dimension (default: the model's
    /// `[quantization] group_size`).
    #[arg(long)]
    pub group: Option<usize>,
    /// LM-head scheme: `same` (the scheme under test), `f32` (not
    /// quantized), or a scheme name.
    #[arg(long, default_value = "same")]
    pub head: String,
    /// Calibration text (UTF-8). Without it, or for a model without a
    /// tokenizer, a fixed pseudo-random token sequence is used.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration window in tokens.
    #[arg(long, default_value_t = 512)]
    pub calib_ctx: usize,
    /// Calibration rows kept per layer for the layer-output error.
    #[arg(long, default_value_t = CALIB_SAMPLES)]
    pub samples: usize,
    /// Evaluation text: adds perplexity, KL divergence and top-1 agreement
    /// against the f32 reference.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Evaluation window in tokens.
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    /// Evaluate only the first W windows (default: every whole window).
    #[arg(long)]
    pub windows: Option<usize>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print wall times on stderr.
    #[arg(long)]
    pub timings: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Whole-model figures of one scheme.
struct SchemeSummary {
    policy: SchemePolicy,
    tensors: Vec<TensorReport>,
    bits: u64,
    weights: u64,
    rel_rmse: f64,
    mean_output_error: Option<f64>,
    max_accumulator: u64,
    eval: Option<EvalReport>,
}

/// A fixed pseudo-random token sequence (SplitMix64).
fn synthetic_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x0051_A7ED_u64;
    (0..n)
        .map(|_| (splitmix64(&mut s) % vocab as u64) as u32)
        .collect()
}

/// Runs `q35c quant-report`.
pub fn run(args: &QuantReportArgs) -> anyhow::Result<()> {
    let schemes = if args.schemes.is_empty() {
        QuantScheme::ALL.to_vec()
    } else {
        args.schemes.clone()
    };
    let head = match args.head.as_str() {
        "same" => None,
        "f32" => Some(None),
        s => Some(Some(
            s.parse::<QuantScheme>()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--head {s}: expected same, f32 or a scheme name"))?,
        )),
    };
    let loaded = load(&args.model, args.threads)?;
    let group = args.group.unwrap_or(loaded.quant.group_size as usize);
    let vocab = loaded.model.config().vocab;
    let (calib_tokens, calib_source) = match &args.calib {
        Some(p) => (loaded.text_tokens(&read_utf8(p)?), p.display().to_string()),
        None => (
            synthetic_tokens(512, vocab),
            "512 pseudo-random tokens".to_owned(),
        ),
    };
    if calib_tokens.is_empty() {
        anyhow::bail!("the calibration text {calib_source} holds no tokens");
    }
    let eval_tokens = match &args.eval {
        Some(p) => Some(loaded.text_tokens(&read_utf8(p)?)),
        None => None,
    };
    let timings = args.timings;
    let note = |what: &str, t: Instant| {
        let line = format!("{what}: {:.2} s", t.elapsed().as_secs_f64());
        if timings {
            eprintln!("{line}");
        } else {
            progress(line);
        }
    };

    let t = Instant::now();
    let options = QuantOptions {
        threads: args.threads.max(1),
    };
    let pipeline = QuantPipeline::calibrate(
        &loaded.model,
        &calib_tokens,
        args.calib_ctx,
        args.samples,
        group,
        options,
    )
    .with_context(|| format!("calibration of {} on {calib_source}", args.model.display()))?;
    note("calibration", t);
    let reference = match &eval_tokens {
        Some(tokens) => {
            let t = Instant::now();
            let r = ReferenceLogits::compute_with_bos(
                &loaded.model,
                tokens,
                args.ctx,
                args.windows,
                loaded.window_bos(),
            )
            .with_context(|| {
                format!(
                    "cannot evaluate on {}",
                    args.eval
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string())
                )
            })?;
            note("reference logits", t);
            Some(r)
        }
        None => None,
    };

    let mut summaries = Vec::new();
    for &scheme in &schemes {
        let policy = SchemePolicy {
            blocks: scheme,
            head: head.unwrap_or(Some(scheme)),
        };
        let t = Instant::now();
        let layers = pipeline
            .quantize(policy)
            .with_context(|| format!("cannot quantize {} with {scheme}", args.model.display()))?;
        note(&format!("quantize {scheme}"), t);
        let mut s = SchemeSummary {
            policy,
            tensors: Vec::new(),
            bits: 0,
            weights: 0,
            rel_rmse: 0.0,
            mean_output_error: None,
            max_accumulator: 0,
            eval: None,
        };
        let (mut se, mut sr, mut oe, mut no) = (0f64, 0f64, 0f64, 0usize);
        for l in &layers {
            let w = &pipeline
                .weights()
                .iter()
                .find(|(id, _)| *id == l.id)
                .context("quantized layer without weights")?
                .1;
            let r = tensor_report(
                l.id,
                w,
                &l.matrix,
                pipeline.calibration().layer(l.id),
                options.threads,
            )?;
            s.bits += r.storage_bits;
            s.weights += (r.rows * r.cols) as u64;
            se += r.sq_err;
            sr += r.sq_ref;
            if let Some(e) = r.output_error {
                oe += e;
                no += 1;
            }
            s.max_accumulator = s.max_accumulator.max(accumulator_bound(
                l.matrix.group_size() as u64,
                ACT_MAX as u64,
                l.matrix.code_max(),
            ));
            s.tensors.push(r);
        }
        s.rel_rmse = if sr > 0.0 { (se / sr).sqrt() } else { 0.0 };
        s.mean_output_error = (no > 0).then(|| oe / no as f64);
        if let Some(r) = &reference {
            let t = Instant::now();
            s.eval = Some(
                pipeline
                    .evaluate(&layers, r)
                    .with_context(|| format!("evaluation of {scheme}"))?,
            );
            note(&format!("evaluate {scheme}"), t);
        }
        summaries.push(s);
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
            "model": loaded.name,
            "model_file": args.model.display().to_string(),
            "group_size": group,
            "calibration": { "source": calib_source, "tokens": calib_tokens.len(), "samples_per_layer": args.samples },
            "evaluation": reference.as_ref().map(|r| json!({
                "source": args.eval.as_ref().map(|p| p.display().to_string()),
                "ctx": args.ctx,
                "reference_perplexity": r.ppl(),
            })),
            "schemes": summaries.iter().map(|s| json!({
                "scheme": s.policy.blocks.as_str(),
                "head": s.policy.head.map_or("f32", QuantScheme::as_str),
                "bits_per_weight": s.bits as f64 / s.weights.max(1) as f64,
                "storage_bits": s.bits,
                "weights": s.weights,
                "rel_rmse": s.rel_rmse,
                "mean_rel_output_error": s.mean_output_error,
                "max_accumulator_bound": s.max_accumulator,
                "eval": s.eval.as_ref().map(|e| json!({
                    "perplexity": e.ppl,
                    "reference_perplexity": e.reference_ppl,
                    "mean_kld": e.mean_kld,
                    "max_kld": e.max_kld,
                    "top1_agreement": e.top1_agreement,
                    "positions": e.positions,
                    "windows": e.windows,
                })),
                "tensors": s.tensors.iter().map(|t| json!({
                    "name": t.name,
                    "rows": t.rows,
                    "cols": t.cols,
                    "bits_per_weight": t.bits_per_weight,
                    "storage_bits": t.storage_bits,
                    "rel_rmse": t.rel_rmse,
                    "rel_output_error": t.output_error,
                    "output_samples": t.output_samples,
                    "multipliers": [t.multipliers.0, t.multipliers.1],
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?).context("cannot write to stdout")?;
        return Ok(());
    }
    write_text(
        &mut out,
        args,
        &loaded.name,
        group,
        &calib_source,
        &summaries,
    )
    .context("cannot write to stdout")
}

fn write_text(
    out: &mut impl Write,
    args: &QuantReportArgs,
    name: &str,
    group: usize,
    calib_source: &str,
    summaries: &[SchemeSummary],
) -> std::io::Result<()> {
    writeln!(
        out,
        "{name}: group {group}, calibration {calib_source}; per tensor: rel. RMSE / rel. layer-output error"
    )?;
    // Per tensor, one column per scheme.
    let mut rows: BTreeMap<usize, (String, usize, usize)> = BTreeMap::new();
    for s in summaries {
        for (i, t) in s.tensors.iter().enumerate() {
            rows.entry(i).or_insert((t.name.clone(), t.rows, t.cols));
        }
    }
    write!(out, "{:<24} {:>12}", "tensor", "shape")?;
    for s in summaries {
        write!(out, " {:>17}", s.policy.blocks.as_str())?;
    }
    writeln!(out)?;
    for (name, r, c) in rows.values() {
        write!(out, "{name:<24} {:>12}", format!("{r}x{c}"))?;
        for s in summaries {
            match s.tensors.iter().find(|t| &t.name == name) {
                Some(t) => write!(
                    out,
                    " {:>8.4}/{:<8}",
                    t.rel_rmse,
                    t.output_error.map_or("-".to_owned(), |e| format!("{e:.4}"))
                )?,
                None => write!(out, " {:>17}", "f32")?,
            }
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    write!(
        out,
        "{:<16} {:<16} {:>8} {:>9} {:>10} {:>11}",
        "scheme", "lm head", "bpw", "rel RMSE", "out error", "max |acc|"
    )?;
    let eval = summaries.iter().any(|s| s.eval.is_some());
    if eval {
        write!(out, " {:>10} {:>9} {:>7}", "ppl", "KLD", "top-1")?;
    }
    writeln!(out)?;
    for s in summaries {
        write!(
            out,
            "{:<16} {:<16} {:>8.4} {:>9.4} {:>10} {:>11}",
            s.policy.blocks.as_str(),
            s.policy.head.map_or("f32", QuantScheme::as_str),
            s.bits as f64 / s.weights.max(1) as f64,
            s.rel_rmse,
            s.mean_output_error
                .map_or("-".to_owned(), |e| format!("{e:.4}")),
            s.max_accumulator
        )?;
        if let Some(e) = &s.eval {
            write!(
                out,
                " {:>10.4} {:>9.5} {:>7.4}",
                e.ppl, e.mean_kld, e.top1_agreement
            )?;
        }
        writeln!(out)?;
    }
    if let Some(e) = summaries.iter().find_map(|s| s.eval.as_ref()) {
        writeln!(
            out,
            "f32 reference perplexity {:.4} on {} ({} windows of {}, {} positions)",
            e.reference_ppl,
            args.eval
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
            e.windows,
            e.ctx,
            e.positions
        )?;
    }
    Ok(())
}
