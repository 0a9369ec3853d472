//! `q35c quant-report MODEL.toml [--json]`: what each weight quantization
//! scheme costs and how much error it adds, per tensor and for the whole
//! model.
//!
//! For every scheme (default: all of `QuantScheme::ALL`: int8, int4, q35,
//! q35-rtn, q35-alternating, int3) at the model's group size it reports bits
//! per weight including scales and slot masks, the weights' relative RMSE, and the relative
//! layer-output error `||W X - Q(W) X|| / ||W X||` on calibration
//! activations `X` recorded from the f32 reference running `--calib` (the
//! same activations give `q35` its importance and in-group covariance). With
//! `--eval TEXT` it also runs each quantized model as the golden forward
//! pass (`q35_contract::golden`: int8 activations, integer matmuls and the f32
//! operators of docs/q35-format.md section 8, a tied quantized LM head also
//! serving the embedding lookup) and reports perplexity, mean KL divergence
//! from the f32 reference and top-1 agreement on that text (llama-perplexity
//! windows). Keep calibration and evaluation texts disjoint.
//!
//! The steps, one function each: [`resolve`] the arguments into
//! [`Inputs`]; [`measure`] runs the `QuantPipeline` (calibration, reference
//! logits, then per scheme quantization and evaluation); `summary` turns a
//! scheme's quantized layers into the report's rows; `text` and `json`
//! render them.

mod json;
mod summary;
mod text;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use q35_contract::QuantScheme;
use q35_contract::golden::ActivationScales;
use q35_quant::model::{
    HeadPolicy, Methods, QuantPipeline, ReferenceLogits, SchemePolicy, Sequential, StreamRotation,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::{LinearKind, splitmix64};

use crate::cmd_eval::CALIB_SAMPLES;
use crate::load::{Loaded, load, progress, read_utf8};
use summary::SchemeSummary;

/// Arguments of `q35c quant-report`.
#[derive(Debug, clap::Args)]
pub struct QuantReportArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// Schemes to compare, comma-separated (default: all six).
    #[arg(long, value_delimiter = ',')]
    pub schemes: Vec<QuantScheme>,
    /// Group size along the reduction dimension (default: the model's
    /// `[quantization] group_size`, with its `group_size_of` unless
    /// `--group` or `--group-of` is given).
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
    /// More calibration text (UTF-8), appended to `--calib` (repeatable;
    /// needs `--calib`).
    #[arg(long)]
    pub calib_extra: Vec<PathBuf>,
    /// Calibration window in tokens.
    #[arg(long, default_value_t = 512)]
    pub calib_ctx: usize,
    /// Activation scales of the golden pass: `token` (the contract, one
    /// scale per token) or `group` (one per quantization group: a contract
    /// variant, docs/q35-format.md section 14).
    #[arg(long, default_value = "token")]
    pub act_scales: String,
    /// SmoothQuant-style scale migration of strength ALPHA (0..=1), folded
    /// into the norms and weights before calibration (docs section 14).
    #[arg(long, value_name = "ALPHA")]
    pub smooth: Option<f32>,
    /// Search each block's scale against the calibration loss (the
    /// covariance-weighted error after in-group GPTQ; docs section 14).
    #[arg(long)]
    pub scale_search: bool,
    /// Group sizes of their own for some kinds of matrix, comma-separated
    /// `KIND=G` with KIND one of attn_q, attn_k, attn_v, attn_output,
    /// ffn_gate, ffn_up, ffn_down, output (the LM head); e.g. `--group 64
    /// --group-of attn_k=128,attn_v=128` (docs section 14). Every size must
    /// divide the largest. Replaces the model's `group_size_of`; with
    /// `--group` alone every matrix has that one size.
    #[arg(long, value_delimiter = ',', value_name = "KIND=G")]
    pub group_of: Vec<String>,
    /// Rotate ffn_down's input on line by a randomized block Hadamard
    /// transform (groups of the largest group size, a power of two), the
    /// weights rotated to match (a golden-pass variant, docs section 14).
    #[arg(long)]
    pub rotate_down: bool,
    /// Rotate the attention's value/output path per head by a randomized
    /// Hadamard matrix folded into attn_v and attn_output offline (no
    /// run-time cost; docs section 14).
    #[arg(long)]
    pub rotate_vo: bool,
    /// Rotate the whole residual stream by an orthogonal matrix
    /// (block-hadamard, block-hadamard-N for blocks of N channels,
    /// kron-hadamard or random): norms folded into the
    /// matrices reading them, the tied embedding/LM head stored rotated, and
    /// the final norm's output mixed on line by a dense hidden x hidden
    /// matrix before the head (a golden-pass variant, docs section 14).
    /// Without this, --rotate-head or --no-rotate-stream, the model.toml's
    /// `[quantization] rotation` applies (block-hadamard for
    /// examples/smollm2-135m.toml).
    #[arg(long, value_name = "KIND")]
    pub rotate_stream: Option<StreamRotation>,
    /// Do not rotate the residual stream even if the model.toml's
    /// `[quantization] rotation` asks for it (to measure the model as its
    /// weights give it).
    #[arg(long, conflicts_with = "rotate_stream")]
    pub no_rotate_stream: bool,
    /// Rotate only the tied embedding/LM-head table by an orthogonal matrix
    /// (same kinds): stored rotated, un-rotated on line after the lookup,
    /// the final norm's output mixed on line before the head; the blocks
    /// are unchanged (a golden-pass variant, docs section 14).
    #[arg(long, value_name = "KIND", conflicts_with = "rotate_stream")]
    pub rotate_head: Option<StreamRotation>,
    /// Spread GPTQ's rounding errors over spans of N channels (a multiple of
    /// every group size; default: the largest group size). A span as wide
    /// as the widest input is GPTQ over whole rows (docs section 14).
    #[arg(long, value_name = "N")]
    pub gptq_span: Option<usize>,
    /// Calibrate and quantize block by block (`int8` or `dequant`): each
    /// block's matrices are calibrated on the inputs the already-quantized
    /// blocks produce, run as the golden integer model runs them (`int8`)
    /// or in f32 with the dequantized weights (`dequant`) (docs section 14).
    #[arg(long, value_name = "MODE")]
    pub sequential: Option<Sequential>,
    /// GPTAQ's asymmetric calibration of strength ALPHA in [0, 1] (needs
    /// --sequential): each matrix is quantized towards the target that
    /// makes GPTQ match the f32 model's output from its own inputs; 0 is
    /// plain GPTQ on the sequential inputs (docs section 14). Without
    /// --sequential or --no-sequential, the model.toml's `[quantization]
    /// sequential` and `asymmetric` apply (dequant and 0.25 for
    /// examples/smollm2-135m.toml); with --sequential, this flag alone sets
    /// the strength.
    #[arg(long, value_name = "ALPHA")]
    pub asymmetric: Option<f32>,
    /// Calibrate every matrix on the f32 model's inputs even if the
    /// model.toml's `[quantization] sequential` asks for block-by-block
    /// calibration.
    #[arg(long, conflicts_with_all = ["sequential", "asymmetric"])]
    pub no_sequential: bool,
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

/// What the report works on, resolved from [`QuantReportArgs`].
struct Inputs {
    loaded: Loaded,
    /// The schemes to compare, in report order.
    schemes: Vec<QuantScheme>,
    /// What the LM head gets under every scheme.
    head: HeadPolicy,
    /// Group size along the reduction dimension.
    group: usize,
    /// Calibration tokens and where they came from (a path, or a description
    /// of the synthetic sequence).
    calib_tokens: Vec<u32>,
    calib_source: String,
    /// Evaluation tokens (`--eval`).
    eval_tokens: Option<Vec<u32>>,
    /// The accuracy methods (`--act-scales`, `--smooth`, `--scale-search`).
    methods: Methods,
}

/// Everything [`measure`] found.
struct Measured {
    /// One per scheme, in report order.
    summaries: Vec<SchemeSummary>,
    /// The f32 reference's perplexity on the evaluation windows (`--eval`).
    reference_ppl: Option<f64>,
}

/// Calibration tokens when no `--calib` text is given.
const SYNTHETIC_CALIB_TOKENS: usize = 512;

/// Runs `q35c quant-report`.
pub fn run(args: &QuantReportArgs) -> anyhow::Result<()> {
    let inputs = resolve(args)?;
    let measured = measure(args, &inputs)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        json::write(&mut out, args, &inputs, &measured)
    } else {
        text::write(&mut out, args, &inputs, &measured)
    }
    .context("cannot write to stdout")
}

/// The `--head` value: `same`, `f32` or a scheme name.
fn parse_head(s: &str) -> anyhow::Result<HeadPolicy> {
    Ok(match s {
        "same" => HeadPolicy::SameAsBlocks,
        "f32" => HeadPolicy::KeepF32,
        s => HeadPolicy::Scheme(
            s.parse::<QuantScheme>()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--head {s}: expected same, f32 or a scheme name"))?,
        ),
    })
}

/// Parses the flags, loads the model and tokenizes the texts.
fn resolve(args: &QuantReportArgs) -> anyhow::Result<Inputs> {
    let schemes = if args.schemes.is_empty() {
        QuantScheme::ALL.to_vec()
    } else {
        args.schemes.clone()
    };
    let head = parse_head(&args.head)?;
    let loaded = load(&args.model, args.threads)?;
    let group = args.group.unwrap_or(loaded.quant.group_size as usize);
    let (calib_tokens, calib_source) = match &args.calib {
        Some(p) => {
            let mut tokens = loaded.text_tokens(&read_utf8(p)?);
            let mut source = p.display().to_string();
            for extra in &args.calib_extra {
                tokens.extend(loaded.text_tokens(&read_utf8(extra)?));
                source.push_str(&format!(" + {}", extra.display()));
            }
            (tokens, source)
        }
        None if !args.calib_extra.is_empty() => {
            anyhow::bail!("--calib-extra needs --calib")
        }
        None => (
            synthetic_tokens(SYNTHETIC_CALIB_TOKENS, loaded.model.config().vocab),
            format!("{SYNTHETIC_CALIB_TOKENS} pseudo-random tokens"),
        ),
    };
    if calib_tokens.is_empty() {
        anyhow::bail!("the calibration text {calib_source} holds no tokens");
    }
    let eval_tokens = match &args.eval {
        Some(p) => Some(loaded.text_tokens(&read_utf8(p)?)),
        None => None,
    };
    let toml_methods = q35_host::golden::methods(&loaded.quant);
    let mut methods = parse_methods(args, &toml_methods)?;
    if args.group.is_none() && args.group_of.is_empty() {
        methods.group_overrides = toml_methods.group_overrides;
    }
    if args.rotate_stream.is_none() && args.rotate_head.is_none() && !args.no_rotate_stream {
        methods.rotate_stream = toml_methods.rotate_stream;
    }
    Ok(Inputs {
        loaded,
        schemes,
        head,
        group,
        calib_tokens,
        calib_source,
        eval_tokens,
        methods,
    })
}

/// The accuracy methods the flags ask for.
fn parse_methods(args: &QuantReportArgs, toml: &Methods) -> anyhow::Result<Methods> {
    let act_scales = match args.act_scales.as_str() {
        "token" => ActivationScales::PerToken,
        "group" => ActivationScales::PerGroup,
        s => anyhow::bail!("--act-scales {s}: expected token or group"),
    };
    if let Some(a) = args.smooth
        && !(0.0..=1.0).contains(&a)
    {
        anyhow::bail!("--smooth {a}: the strength must be in 0..=1");
    }
    // The model.toml's sequential calibration applies unless a flag
    // chooses (`--sequential`, `--no-sequential`).
    let (sequential, asymmetric) = match (args.sequential, args.no_sequential) {
        (Some(mode), _) => (Some(mode), args.asymmetric),
        (None, true) => (None, None),
        (None, false) => (toml.sequential, args.asymmetric.or(toml.asymmetric)),
    };
    if let Some(a) = args.asymmetric {
        if !(0.0..=1.0).contains(&a) {
            anyhow::bail!("--asymmetric {a}: the strength must be in [0, 1]");
        }
        if sequential.is_none() {
            anyhow::bail!(
                "--asymmetric {a} needs --sequential int8|dequant (without it every matrix sees the f32 model's inputs)"
            );
        }
    }
    if let Some(mode) = sequential
        && args.rotate_down
    {
        match args.sequential {
            Some(_) => anyhow::bail!("--sequential cannot be combined with --rotate-down"),
            None => anyhow::bail!(
                "--rotate-down cannot be combined with the model.toml's `[quantization] sequential = \"{mode}\"` (add --no-sequential)"
            ),
        }
    }
    let mut methods = Methods {
        act_scales,
        smooth: args.smooth,
        scale_search: args.scale_search,
        rotate_down: args.rotate_down,
        rotate_vo: args.rotate_vo,
        rotate_stream: args.rotate_stream,
        rotate_head: args.rotate_head,
        gptq_span: args.gptq_span,
        sequential,
        asymmetric,
        ..Methods::default()
    };
    for item in &args.group_of {
        let (kind, g) = item
            .split_once('=')
            .with_context(|| format!("--group-of {item}: expected KIND=G"))?;
        let kind = q35_host::golden::linear_kind(kind).with_context(|| {
            format!(
                "--group-of {item}: unknown matrix kind {kind} (kinds: {})",
                q35_model::MATRIX_KINDS.join(", ")
            )
        })?;
        let g: usize = g
            .parse()
            .with_context(|| format!("--group-of {item}: {g} is not a group size"))?;
        methods.set_group(kind, g);
    }
    Ok(methods)
}

/// The group sizes of their own in `methods`, as `KIND=G` in kind order.
fn group_of_text(methods: &Methods) -> Vec<String> {
    LinearKind::BLOCK
        .into_iter()
        .chain([LinearKind::LmHead])
        .filter_map(|k| {
            methods
                .group_of(k)
                .map(|g| format!("{}={g}", k.gguf_stem()))
        })
        .collect()
}

/// `group` and the sizes of their own, as people read them: `64`, or
/// `64 (attn_k=128, attn_v=128)`.
fn groups_text(group: usize, methods: &Methods) -> String {
    let own = group_of_text(methods);
    if own.is_empty() {
        group.to_string()
    } else {
        format!("{group} ({})", own.join(", "))
    }
}

/// A fixed pseudo-random token sequence (SplitMix64).
fn synthetic_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x0051_A7ED_u64;
    (0..n)
        .map(|_| (splitmix64(&mut s) % vocab as u64) as u32)
        .collect()
}

/// Reports how long a stage took since `start`: on stderr with
/// `--timings`, else as progress (stderr, when it is a terminal).
fn note(args: &QuantReportArgs, what: &str, start: Instant) {
    let line = format!("{what}: {:.2} s", start.elapsed().as_secs_f64());
    if args.timings {
        eprintln!("{line}");
    } else {
        progress(line);
    }
}

/// Calibrates, computes the reference logits (`--eval`), then quantizes,
/// summarises and evaluates every scheme in turn.
fn measure(args: &QuantReportArgs, inputs: &Inputs) -> anyhow::Result<Measured> {
    let options = QuantOptions {
        threads: args.threads.max(1),
    };
    let pipeline = calibrate(args, inputs, options)?;
    let reference = reference_logits(args, inputs)?;
    let summaries = inputs
        .schemes
        .iter()
        .map(|&scheme| {
            let policy = SchemePolicy {
                blocks: scheme,
                head: inputs.head,
            };
            measure_scheme(args, &pipeline, policy, reference.as_ref())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Measured {
        summaries,
        reference_ppl: reference.as_ref().map(ReferenceLogits::ppl),
    })
}

/// The pipeline calibrated on the calibration tokens.
fn calibrate<'m>(
    args: &QuantReportArgs,
    inputs: &'m Inputs,
    options: QuantOptions,
) -> anyhow::Result<QuantPipeline<'m>> {
    let t = Instant::now();
    let pipeline = QuantPipeline::calibrate_with(
        &inputs.loaded.model,
        &inputs.calib_tokens,
        args.calib_ctx,
        args.samples,
        inputs.group,
        options,
        inputs.methods,
        &q35_quant::progress::silent,
    )
    .with_context(|| {
        format!(
            "calibration of {} on {}",
            args.model.display(),
            inputs.calib_source
        )
    })?;
    note(args, "calibration", t);
    Ok(pipeline)
}

/// The f32 reference's logits on the evaluation windows (`None` without
/// `--eval`).
fn reference_logits(
    args: &QuantReportArgs,
    inputs: &Inputs,
) -> anyhow::Result<Option<ReferenceLogits>> {
    let Some(tokens) = &inputs.eval_tokens else {
        return Ok(None);
    };
    let t = Instant::now();
    let reference = ReferenceLogits::compute_with_bos(
        &inputs.loaded.model,
        tokens,
        args.ctx,
        args.windows,
        inputs.loaded.window_bos(),
    )
    .with_context(|| format!("cannot evaluate on {}", eval_source(args)))?;
    note(args, "reference logits", t);
    Ok(Some(reference))
}

/// One scheme: every matrix quantized under `policy`, measured per tensor,
/// and evaluated against `reference` when given.
fn measure_scheme(
    args: &QuantReportArgs,
    pipeline: &QuantPipeline<'_>,
    policy: SchemePolicy,
    reference: Option<&ReferenceLogits>,
) -> anyhow::Result<SchemeSummary> {
    let scheme = policy.blocks;
    let t = Instant::now();
    let layers = pipeline
        .quantize(policy)
        .with_context(|| format!("cannot quantize {} with {scheme}", args.model.display()))?;
    note(args, &format!("quantize {scheme}"), t);
    let mut summary = SchemeSummary::new(policy, &layers, pipeline, args.threads.max(1))?;
    if let Some(r) = reference {
        let t = Instant::now();
        summary.eval = Some(
            pipeline
                .evaluate(&layers, r)
                .with_context(|| format!("evaluation of {scheme}"))?,
        );
        note(args, &format!("evaluate {scheme}"), t);
    }
    Ok(summary)
}

/// The `--eval` path as printed (empty without one).
fn eval_source(args: &QuantReportArgs) -> String {
    args.eval
        .as_ref()
        .map_or(String::new(), |p| p.display().to_string())
}

/// How the LM head is named in reports: its scheme, or `f32`.
fn head_name(policy: &SchemePolicy) -> &'static str {
    policy.head_scheme().map_or("f32", QuantScheme::as_str)
}
