//! `q35c eval MODEL.toml --text FILE --ctx N [--windows W] [--json]`: accuracy
//! of the reference model on a text.
//!
//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it: the text
//! is tokenized once (BOS first if the model adds BOS), cut into
//! non-overlapping windows of N tokens, each window run from an empty cache
//! and scored on its second half (the logits at positions N/2 .. N-2 predict
//! the next token). `--json` prints every figure and the token counts.
//! A model without a tokenizer (synthetic weights) reads the text's bytes,
//! folded into its vocabulary, as tokens.
//!
//! With `--quant` the model is also quantized as its model.toml says
//! (`[quantization] scheme` and `group_size`, calibrated on `--calib`, a text
//! kept apart from `--text`) and run as the golden forward pass
//! (`q35_contract::golden`, the hardware contract of docs/q35-format.md section
//! 8.5: int8 activations, integer matmuls, a tied quantized LM head also
//! serving the embedding lookup). The report adds its perplexity, its mean
//! and largest KL divergence from the f32 reference and top-1 agreement, on
//! the same windows and positions. Quantization and evaluation are
//! `q35_quant::model::QuantPipeline`, the same path as `q35c quant-report
//! --eval`, so both report the same figures for the same texts and windows.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use q35_quant::model::{EvalReport, QuantPipeline, ReferenceLogits, SchemePolicy};
use q35_quant::quantize::QuantOptions;
use q35_reference::PerplexityOptions;
use serde_json::json;

use crate::load::{Loaded, load, progress, read_utf8};

/// Calibration input rows kept per layer (for layer-output errors; the
/// quantizers use importance and covariance over every calibration token).
/// `q35c quant-report --samples` defaults to the same.
pub(crate) const CALIB_SAMPLES: usize = q35_host::golden::CALIB_SAMPLES;

/// Arguments of `q35c eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// The text to score (UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first W windows (default: every whole window).
    #[arg(long)]
    pub windows: Option<usize>,
    /// Also evaluate the model quantized per its model.toml, as the golden
    /// forward pass: perplexity, KL divergence from the f32 reference, top-1
    /// agreement.
    #[arg(long, requires = "calib")]
    pub quant: bool,
    /// Calibration text for `--quant` (UTF-8; keep it disjoint from --text).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration window in tokens.
    #[arg(long, default_value_t = 512)]
    pub calib_ctx: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The model quantized as its model.toml says, calibrated on `calib_tokens`
/// and scored as the golden forward pass against the reference on the
/// windows of `opts` -- the same [`QuantPipeline`] `q35c quant-report
/// --eval` runs.
fn quantized_eval(
    args: &EvalArgs,
    loaded: &Loaded,
    calib_tokens: &[u32],
    tokens: &[u32],
    opts: &PerplexityOptions,
) -> anyhow::Result<EvalReport> {
    let scheme = loaded.quant.scheme;
    progress(format_args!(
        "calibrating on {} tokens...",
        calib_tokens.len()
    ));
    let pipeline = QuantPipeline::calibrate_with(
        &loaded.model,
        calib_tokens,
        args.calib_ctx,
        CALIB_SAMPLES,
        loaded.quant.group_size as usize,
        QuantOptions {
            threads: args.threads.max(1),
        },
        q35_host::golden::methods(&loaded.quant),
        &q35_quant::progress::silent,
    )
    .with_context(|| format!("calibration of {}", args.model.display()))?;
    progress(format_args!("quantizing to {scheme}..."));
    let layers = pipeline
        .quantize(SchemePolicy::uniform(scheme))
        .with_context(|| format!("cannot quantize {} with {scheme}", args.model.display()))?;
    progress("running the f32 reference and the golden integer model...");
    let reference =
        ReferenceLogits::compute_with_bos(&loaded.model, tokens, opts.ctx, opts.windows, opts.bos)
            .with_context(|| format!("cannot evaluate on {}", args.text.display()))?;
    pipeline
        .evaluate(&layers, &reference)
        .with_context(|| format!("evaluation of {scheme}"))
}

/// Runs `q35c eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let text = read_utf8(&args.text)?;
    let loaded = load(&args.model, args.threads)?;
    let tokens = loaded.text_tokens(&text);
    if tokens.is_empty() {
        anyhow::bail!("{} holds no text", args.text.display());
    }
    let opts = PerplexityOptions {
        ctx: args.ctx,
        windows: args.windows,
        bos: loaded.window_bos(),
    };
    let r = loaded.model.perplexity(&tokens, &opts).with_context(|| {
        format!(
            "cannot evaluate {} on {}",
            args.model.display(),
            args.text.display()
        )
    })?;
    let cmp = if args.quant {
        let calib_path = args.calib.as_ref().context("--quant needs --calib")?;
        let calib_tokens = loaded.text_tokens(&read_utf8(calib_path)?);
        if calib_tokens.is_empty() {
            anyhow::bail!("{} holds no text", calib_path.display());
        }
        Some(quantized_eval(
            args,
            &loaded,
            &calib_tokens,
            &tokens,
            &opts,
        )?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = json!({
            "model": loaded.name,
            "model_file": args.model.display().to_string(),
            "text_file": args.text.display().to_string(),
            "text_tokens": r.text_tokens,
            "ctx": r.ctx,
            "windows": r.windows,
            "first_scored_position": r.first,
            "scored_tokens": r.scored_tokens,
            "nll_sum": r.nll_sum,
            "mean_nll": r.nll_sum / r.scored_tokens as f64,
            "perplexity": r.ppl,
            "per_window": r.per_window.iter().map(|w| json!({
                "start": w.start,
                "scored_tokens": w.count,
                "nll_sum": w.nll_sum,
                "perplexity": (w.nll_sum / w.count as f64).exp(),
            })).collect::<Vec<_>>(),
        });
        if let Some(c) = &cmp {
            v["quantized"] = json!({
                "scheme": loaded.quant.scheme.as_str(),
                "group_size": loaded.quant.group_size,
                "group_size_of": loaded.quant.group_size_of_pairs().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "calibration_file": args.calib.as_ref().map(|p| p.display().to_string()),
                "perplexity": c.ppl,
                "nll_sum": c.nll_sum,
                "mean_kld": c.mean_kld,
                "max_kld": c.max_kld,
                "top1_agreement": c.top1_agreement,
                "positions": c.positions,
            });
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?).context("cannot write to stdout")?;
    } else {
        writeln!(
            out,
            "{}: {} tokens, {} windows of {} (scored from position {}), {} tokens scored",
            args.text.display(),
            r.text_tokens,
            r.windows,
            r.ctx,
            r.first,
            r.scored_tokens
        )
        .and_then(|_| {
            writeln!(
                out,
                "perplexity {:.4} (mean NLL {:.5})",
                r.ppl,
                r.nll_sum / r.scored_tokens as f64
            )
        })
        .context("cannot write to stdout")?;
        if let Some(c) = &cmp {
            writeln!(
                out,
                "quantized ({}, group {}): perplexity {:.4}, mean KLD {:.5} (max {:.4}), top-1 agreement {:.2}% over {} positions",
                loaded.quant.scheme.as_str(),
                loaded.quant.groups_text(),
                c.ppl,
                c.mean_kld,
                c.max_kld,
                100.0 * c.top1_agreement,
                c.positions
            )
            .context("cannot write to stdout")?;
        }
    }
    Ok(())
}
