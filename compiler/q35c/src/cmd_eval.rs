//! `q35c eval MODEL.toml --text FILE --ctx N [--windows W] [--json]`: accuracy
//! of the reference model on a text.
//!
//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it: the text
//! is tokenized once (BOS first if the model adds BOS), cut into
//! non-overlapping windows of N tokens, each window run from an empty cache
//! and scored on its second half (the logits at positions N/2 .. N-2 predict
//! the next token). `--json` prints every figure and the token counts.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use q35_reference::PerplexityOptions;
use serde_json::json;

use crate::cmd_run::{load, read_utf8};

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
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `q35c eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let text = read_utf8(&args.text)?;
    let loaded = load(&args.model, args.threads)?;
    let tok = loaded.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer (its weights are not a GGUF file); eval needs text tokens",
            args.model.display()
        )
    })?;
    let mut tokens = Vec::new();
    if tok.add_bos_token() {
        tokens.push(tok.bos());
    }
    tokens.extend(tok.encode(&text, false));
    if tokens.is_empty() {
        anyhow::bail!("{} holds no text", args.text.display());
    }
    let opts = PerplexityOptions {
        ctx: args.ctx,
        windows: args.windows,
        bos: tok.add_bos_token().then(|| tok.bos()),
    };
    let r = loaded.model.perplexity(&tokens, &opts).with_context(|| {
        format!(
            "cannot evaluate {} on {}",
            args.model.display(),
            args.text.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
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
    }
    Ok(())
}
