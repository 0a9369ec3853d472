//! `q35c run MODEL.toml --prompt TEXT [--max-tokens N] [--json]`: generate text
//! with the f32 reference model (q35-reference).
//!
//! Greedy by default; `--temperature`, `--top-k`, `--top-p` and `--seed`
//! sample (the same seed gives the same text). `--chat` wraps the prompt in
//! the chat template stored in the GGUF. Tokens are printed to stdout as they
//! are generated; `--json` instead prints one JSON object at the end with the
//! prompt and generated token IDs. Models without a tokenizer (synthetic
//! weights) take `--tokens 1,2,3` instead of text.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use q35_reference::{GenerateOptions, Generation, SamplingParams, StopReason};
use q35_tokenizer::Tokenizer;
use serde_json::json;

use crate::load::{load, read_utf8};

/// Arguments of `q35c run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// The prompt text.
    #[arg(long, conflicts_with_all = ["prompt_file", "tokens"])]
    pub prompt: Option<String>,
    /// Read the prompt text from a file (UTF-8).
    #[arg(long, conflicts_with = "tokens")]
    pub prompt_file: Option<PathBuf>,
    /// The prompt as comma-separated token IDs (for models without a tokenizer).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// Apply the GGUF's chat template: the prompt is the user's message.
    #[arg(long, conflicts_with = "tokens")]
    pub chat: bool,
    /// A system message for `--chat` (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Context length (prompt plus generated tokens); default: the model's.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print one JSON object (with token IDs) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Report prefill and decode speed (on stderr, or in the JSON).
    #[arg(long)]
    pub timings: bool,
}

/// Prints token pieces as they come, holding back bytes until they form
/// whole UTF-8 characters; control tokens (EOS, chat markers) are not shown.
struct Streamer<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    text: Vec<u8>,
}

impl Streamer<'_> {
    fn push(&mut self, token: u32) -> Option<String> {
        if self.tokenizer.is_control(token) {
            return None;
        }
        let piece = self.tokenizer.token_bytes(token);
        self.text.extend_from_slice(piece);
        self.pending.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => self.pending.len(), // invalid: flush lossily
            Err(e) => e.valid_up_to(),
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    fn finish(&mut self) -> Option<String> {
        let out = std::mem::take(&mut self.pending);
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }
}

/// An f32 option as the f64 with the same shortest decimal form (0.9, not
/// 0.8999999761581421), for the JSON report.
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// Runs `q35c run`.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let loaded = load(&args.model, args.threads)?;
    let model = &loaded.model;

    // The prompt: text (plain or chat) through the tokenizer, or token IDs.
    let (prompt_text, prompt_tokens) = match (&args.tokens, &loaded.tokenizer) {
        (Some(ids), _) => (None, ids.clone()),
        (None, None) => bail!(
            "{} has no tokenizer (its weights are not a GGUF file); give the prompt as --tokens",
            args.model.display()
        ),
        (None, Some(tok)) => {
            let text = match (&args.prompt, &args.prompt_file) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) => read_utf8(f)?,
                (None, None) => bail!("no prompt: give --prompt, --prompt-file or --tokens"),
            };
            if text.is_empty() {
                bail!("the prompt is empty");
            }
            if args.chat {
                let (rendered, ids) = tok
                    .chat_prompt(args.system.as_deref(), &text)
                    .with_context(|| {
                        format!("cannot apply the chat template of {}", args.model.display())
                    })?;
                (Some(rendered), ids)
            } else {
                let ids = tok.encode_with_bos(&text);
                (Some(text), ids)
            }
        }
    };
    if prompt_tokens.is_empty() {
        bail!("the prompt is empty (no tokens)");
    }
    let context = model.config().context;
    let ctx = args.ctx.unwrap_or(context);
    let mut session = model
        .new_session_with_capacity(ctx)
        .with_context(|| format!("invalid --ctx {ctx}"))?;
    if prompt_tokens.len() > ctx {
        bail!(
            "the prompt is {} tokens, longer than the context of {ctx} tokens",
            prompt_tokens.len()
        );
    }

    let stop_tokens = loaded
        .tokenizer
        .as_ref()
        .map(|t| vec![t.eos()])
        .unwrap_or_default();
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_tokens,
    };

    let mut streamer = loaded.tokenizer.as_ref().map(|t| Streamer {
        tokenizer: t,
        pending: Vec::new(),
        text: Vec::new(),
    });
    let stream = !args.json;
    let mut stdout = std::io::stdout().lock();
    let mut write_err: Option<std::io::Error> = None;
    let generation: Generation = model
        .generate(&mut session, &prompt_tokens, &options, |tok| {
            // Always track the text; print only when streaming.
            let piece = match streamer.as_mut() {
                Some(s) => s.push(tok),
                None => Some(format!("{tok} ")),
            };
            if stream
                && let Some(p) = piece
                && let Err(e) = stdout.write_all(p.as_bytes()).and_then(|_| stdout.flush())
            {
                write_err = Some(e);
                return false;
            }
            true
        })
        .context("generation failed")?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }

    let tail = streamer.as_mut().and_then(Streamer::finish);
    let text = streamer
        .as_ref()
        .map(|s| String::from_utf8_lossy(&s.text).into_owned());
    let prefill_s = generation.prefill_time.as_secs_f64();
    let decode_s = generation.decode_time.as_secs_f64();
    let decode_steps = generation.tokens.len().saturating_sub(1);
    let stop = match generation.stop {
        StopReason::StopToken(_) => "eos",
        other => other.as_str(),
    };
    if args.json {
        let mut v = json!({
            "model": loaded.name,
            "model_file": args.model.display().to_string(),
            "mode": if args.chat { "chat" } else if args.tokens.is_some() { "tokens" } else { "text" },
            "prompt": prompt_text,
            "prompt_tokens": prompt_tokens,
            "tokens": generation.tokens,
            "text": text,
            "stop_reason": stop,
            "sampling": {
                "temperature": shortest(args.temperature),
                "top_k": args.top_k,
                "top_p": shortest(args.top_p),
                "seed": args.seed,
            },
            "context": ctx,
        });
        if args.timings {
            v["timings"] = json!({
                "threads": model.threads(),
                "prefill_seconds": prefill_s,
                "prefill_tokens_per_second": generation.prompt_tokens as f64 / prefill_s.max(1e-9),
                "decode_seconds": decode_s,
                "decode_tokens_per_second": decode_steps as f64 / decode_s.max(1e-9),
            });
        }
        writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)
            .context("cannot write to stdout")?;
    } else {
        if let Some(t) = tail {
            stdout
                .write_all(t.as_bytes())
                .context("cannot write to stdout")?;
        }
        writeln!(stdout).context("cannot write to stdout")?;
        if args.timings {
            eprintln!(
                "[{} prompt tokens, {} generated, stop: {stop}; prefill {:.1} tok/s, decode {:.1} tok/s, {} threads]",
                generation.prompt_tokens,
                generation.tokens.len(),
                generation.prompt_tokens as f64 / prefill_s.max(1e-9),
                decode_steps as f64 / decode_s.max(1e-9),
                model.threads()
            );
        }
    }
    Ok(())
}
