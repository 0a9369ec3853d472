//! `q35c interp MODEL.toml --tokens 1,2,3 [--max-tokens N] [--check]`: runs
//! the compiled q35 IR in the interpreter (`q35_mlir::interp`).
//!
//! The model is compiled to the q35 dialect exactly as `q35c compile` does,
//! quantized as its model.toml says (the `q35c eval --quant` pipeline:
//! calibration on `--calib` for the activation-aware scheme, every matrix
//! and the LM head in the model's scheme) and built into the golden model;
//! the interpreter binds that golden model's own weights by GGUF name and
//! runs `@decode` one token per call, the position advancing and the KV
//! cache threaded through. For each position it prints the token, the
//! greedy next token and its logit; after the prompt it feeds its own
//! greedy tokens for `--max-tokens` more positions, and ends with the
//! greedy continuation (every prediction from the last prompt token on). `--check` runs the golden model beside it and stops
//! at the first difference (a block's KV cache or the logits, not equal in
//! every bit), naming the op, the token and the position.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use q35_host::golden::{CALIB_SAMPLES, GoldenRecipe, build};
use q35_mlir::interp::{Interpreter, Lockstep, WeightBinder};

use crate::load::progress;

/// Arguments of `q35c interp`.
#[derive(Debug, clap::Args)]
pub struct InterpArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// The prompt as comma-separated token IDs, fed one per call.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<u32>,
    /// Greedy tokens to generate and run after the prompt (the line
    /// `greedy continuation` shows them and the next prediction).
    #[arg(long, default_value_t = 0)]
    pub max_tokens: usize,
    /// Run the golden model beside the interpreter and stop at the first
    /// difference in the KV cache or the logits.
    #[arg(long)]
    pub check: bool,
    /// Calibration text (UTF-8) for the activation-aware scheme (`q35`).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration window in tokens.
    #[arg(long, default_value_t = 512)]
    pub calib_ctx: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// The index and value of the largest logit (the first on ties).
fn argmax(logits: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}

/// Runs `q35c interp`.
pub fn run(args: &InterpArgs) -> anyhow::Result<()> {
    let model_path = args.model.display();
    if args.tokens.is_empty() {
        bail!("no tokens: give --tokens 1,2,3");
    }
    let spec = q35_model::load(&args.model)
        .with_context(|| format!("cannot load model description {model_path}"))?;
    let positions = args.tokens.len() + args.max_tokens;
    let context = spec.arch.context as usize;
    if positions > context {
        bail!("{positions} positions (prompt plus --max-tokens) exceed the context of {context}");
    }
    if let Some(calib) = &args.calib {
        progress(format_args!("calibrating on {}...", calib.display()));
    }
    // The MLIR-free builder `q35sim run --check` uses too.
    let built = build(&GoldenRecipe {
        model_toml: args.model.clone(),
        calib: args.calib.clone(),
        calib_ctx: args.calib_ctx,
        calib_samples: CALIB_SAMPLES,
        positions,
        threads: args.threads,
    })?;
    let golden = built.golden;
    let (scheme, group_size) = (built.scheme, built.quant.groups_text());

    let mlir = q35_mlir::create_context()?;
    let module = q35_mlir::compile(&mlir, &spec)
        .with_context(|| format!("cannot compile {model_path} to the q35 dialect"))?;
    let binder = WeightBinder::from_golden(&golden);
    let interp = Interpreter::new(&module, &binder)
        .with_context(|| format!("cannot interpret the q35 module of {model_path}"))?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: q35 IR interpreter, {} ops, {} weights ({scheme}, group {group_size}){}",
        spec.name,
        interp.ops().count(),
        interp.weight_symbols().count(),
        if args.check {
            ", checked against the golden model"
        } else {
            ""
        }
    )
    .context("cannot write to stdout")?;

    let mut lockstep = if args.check {
        Some(Lockstep::new(&interp, &golden)?)
    } else {
        None
    };
    let mut cache = Some(interp.new_cache()?);
    let mut token = args.tokens[0];
    let mut generated = Vec::new();
    for pos in 0..positions {
        let logits = match &mut lockstep {
            Some(l) => l.step(token),
            None => match cache.take() {
                Some(c) => interp.decode(&[token], pos, c).map(|o| {
                    cache = Some(o.cache);
                    o.logits.into_data()
                }),
                None => bail!("the KV cache was lost"),
            },
        }
        .with_context(|| format!("position {pos} (token {token})"))?;
        let (next, logit) = argmax(&logits);
        let next = u32::try_from(next).context("vocabulary beyond u32")?;
        writeln!(
            out,
            "pos {pos}: token {token} -> next {next} (logit {logit:.6})"
        )
        .context("cannot write to stdout")?;
        token = match args.tokens.get(pos + 1) {
            Some(&t) => t,
            None => {
                generated.push(next);
                next
            }
        };
    }
    let shown: Vec<String> = generated.iter().map(ToString::to_string).collect();
    writeln!(out, "greedy continuation: {}", shown.join(" ")).context("cannot write to stdout")?;
    if args.check {
        writeln!(
            out,
            "check: {positions} positions, KV cache and logits equal to the golden model bit for bit"
        )
        .context("cannot write to stdout")?;
    }
    Ok(())
}
