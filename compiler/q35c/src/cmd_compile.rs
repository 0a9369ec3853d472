//! `q35c compile MODEL.toml --emit=q35|lpu|graph [--context N] [-o OUT]`:
//! model description to q35 MLIR, to the lpu dialect (one decode step at
//! the machine's level, docs/lpu-dialect.md), or to the frontend's graph in
//! DOT.
//!
//! Loads and validates the model description (and its GGUF, if any), builds
//! the decoder graph, lowers it into the `q35` dialect, verifies the module,
//! runs the compile pipeline (`q35-verify`, `q35-check-overflow`; for
//! `--emit=lpu` then `q35-quantize-activations` and `lpu-lower`) and writes
//! the module. `--print-ir-after-all` prints the module after every pass to
//! stderr under MLIR's `// -----// IR Dump After <pass> ... //----- //`
//! headers. `-o -` (the default) writes to stdout; a file is written
//! through a temporary in the same directory and renamed on success, so a
//! failed compile leaves nothing behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Arguments of `q35c compile`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// What to emit (default: from the output's extension: `.mlir` q35,
    /// `.lpuasm` asm, `.dot` graph, anything else an `.lpubin` program;
    /// q35 MLIR on stdout).
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Print the module to stderr after every pass of the compile pipeline.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// Positions of the compiled context (lpu, asm, lpubin; default: the
    /// model.toml's [runtime] max_seq_len).
    #[arg(long, value_name = "N")]
    pub context: Option<u64>,
    /// Calibration text for the activation-aware scheme (default: the
    /// model.toml's [quantization] calibration).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// A target description file instead of the model.toml's [target].
    #[arg(long, value_name = "FILE")]
    pub target: Option<PathBuf>,
    /// Print a JSON summary (sizes, predicted cycles, MEM use) on stdout
    /// (asm, lpubin).
    #[arg(long)]
    pub json: bool,
    /// Tokens a prefill run takes: the binary gets a second program that
    /// streams N prompt tokens through each installed weight tile (1: none,
    /// the prompt runs token by token). Default: the largest of 8, 4, 2
    /// that fits MEM beside the decode program, tried only when the decode
    /// program uses at most 60% of MEM.
    #[arg(long, value_name = "N")]
    pub prefill: Option<u32>,
    /// Context buckets (docs/backend.md 1.2): further decode programs whose
    /// attention reads only the first N positions of the KV caches; the
    /// host runs a step at position `pos` on the smallest bucket above
    /// `pos` (same bits, fewer cycles early in a sequence). `auto`: 64,
    /// 256, 1024, ... (4x apart) below the compiled context; `none`; or a
    /// comma-separated list such as `128,512`. One chip (a batched run takes
    /// the bucket of its furthest user).
    #[arg(long, value_name = "auto|none|N,N,...", value_parser = parse_buckets, default_value = "auto")]
    pub buckets: crate::backend::Buckets,
    /// Print each phase's wall and CPU time to stderr (and, with --json,
    /// as `timings` in the summary) (asm, lpubin).
    #[arg(long)]
    pub timings: bool,
    /// Split the model over a system of N chips, pipeline-parallel
    /// (contiguous blocks per chip, the LM head on the last; docs/backend.md
    /// 8): the output is one system file (lpubin only). `auto`: the fewest
    /// chips the model fits, and the split with the fewest cycles a token
    /// among them; the candidates compared are printed on stderr (and in
    /// --json's `auto`). Default: the model.toml's [target] chips, else 1
    /// (today's single-chip file).
    #[arg(long, value_name = "N|auto", value_parser = parse_chips)]
    pub chips: Option<q35_model::Chips>,
    /// With --chips auto: print the candidates and the choice, compile
    /// nothing and write no output.
    #[arg(long)]
    pub search_only: bool,
    /// How a system split cuts the model (with --chips): `auto` by whole
    /// blocks when every chip's weights and KV caches fit its MEM, else
    /// between ops (a chip may hold part of a block); `blocks`; `ops`
    /// (docs/backend.md 8). With --chips auto: the splits searched (auto:
    /// both).
    #[arg(long, value_enum, default_value_t = SplitArg::Auto)]
    pub split: SplitArg,
    /// Tensor parallelism (with --chips N): groups of T chips, each
    /// group one pipeline stage whose matmuls are cut by output rows over
    /// its T chips, computed at the same time from one broadcast input
    /// (docs/backend.md 10). T divides N and the chips of a node. 1: the
    /// pipeline alone. `auto` (with --chips auto): at the chip count the
    /// search chooses, also groups of 2, 4 and 8, each compiled with
    /// placeholder weights, the fewest cycles a token taken.
    #[arg(long, value_name = "T|auto", value_parser = parse_tensor, default_value = "1")]
    pub tensor: Tensor,
    /// Users a decode step serves (batched decode, lpubin): each run takes
    /// one token of each of B sequences, every user with its own KV caches
    /// (B times the cache MEM) and the weights read once for all. A
    /// batched binary has no prefill program. Default: the model.toml's
    /// [runtime] batch, else 1.
    #[arg(long, value_name = "B", value_parser = parse_batch)]
    pub batch: Option<u32>,
    /// Worker threads for quantization (results do not depend on it).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Output file; `-` writes to stdout.
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
}

/// `--buckets auto|none|N,N,...`.
fn parse_buckets(s: &str) -> Result<crate::backend::Buckets, String> {
    match s {
        "auto" => Ok(crate::backend::Buckets::Auto),
        "none" => Ok(crate::backend::Buckets::List(Vec::new())),
        _ => s
            .split(',')
            .map(|n| {
                n.trim().parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!(
                        "expected `auto`, `none` or a comma-separated list of positive position counts, found `{n}` in `{s}`"
                    )
                })
            })
            .collect::<Result<Vec<u32>, String>>()
            .map(crate::backend::Buckets::List),
    }
}

/// `--chips N|auto`.
fn parse_chips(s: &str) -> Result<q35_model::Chips, String> {
    if s == "auto" {
        return Ok(q35_model::Chips::Auto);
    }
    s.parse::<u32>().map(q35_model::Chips::Count).map_err(|_| {
        format!(
            "expected a number of chips (at least 1) or `auto` (the fewest that fit), found `{s}`"
        )
    })
}

impl CompileArgs {
    /// Users a decode step serves: `--batch`, which [`run`] fills from the
    /// model.toml's `[runtime] batch` when it is not given.
    fn users(&self) -> u32 {
        self.batch.unwrap_or(1)
    }
}

/// `--tensor T|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tensor {
    /// Groups of this many chips (1: none).
    Count(u32),
    /// Compared by `--chips auto`.
    Auto,
}

impl Tensor {
    /// The group size given (1 for `auto`, whose search decides).
    fn count(self) -> u32 {
        match self {
            Tensor::Count(t) => t,
            Tensor::Auto => 1,
        }
    }
}

/// `--tensor T|auto`.
fn parse_tensor(s: &str) -> Result<Tensor, String> {
    if s == "auto" {
        return Ok(Tensor::Auto);
    }
    match s.parse::<u32>() {
        Ok(t) if t >= 1 => Ok(Tensor::Count(t)),
        _ => Err(format!(
            "expected the chips of a tensor-parallel group (a whole number, at least 1) or `auto`, found `{s}`"
        )),
    }
}

/// `--batch B`.
fn parse_batch(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(b) if b >= 1 => Ok(b),
        _ => Err(format!(
            "expected the users a decode step serves (a whole number, at least 1), found `{s}`"
        )),
    }
}

/// `--split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// Whole blocks when they fit, else between ops.
    Auto,
    /// Whole blocks (at least one a chip).
    Blocks,
    /// Between ops.
    Ops,
}

impl SplitArg {
    fn split(self) -> q35_codegen::partition::Split {
        match self {
            SplitArg::Auto => q35_codegen::partition::Split::Auto,
            SplitArg::Blocks => q35_codegen::partition::Split::Blocks,
            SplitArg::Ops => q35_codegen::partition::Split::Ops,
        }
    }
}

/// The stop-point of a compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The module in the q35 dialect (MLIR text).
    Q35,
    /// The module in the lpu dialect: one decode step in MEM buffers, tiled
    /// weights (MLIR text).
    Lpu,
    /// The frontend's dataflow graph in Graphviz DOT (before MLIR).
    Graph,
    /// The scheduled program as `.lpuasm` text.
    Asm,
    /// The `.lpubin` binary q35sim runs.
    Lpubin,
}

impl Emit {
    /// What an output path asks for when `--emit` is not given.
    fn infer(output: &Path) -> Emit {
        if output.as_os_str() == "-" {
            return Emit::Q35;
        }
        match output.extension().and_then(|e| e.to_str()) {
            Some("mlir") => Emit::Q35,
            Some("lpuasm") => Emit::Asm,
            Some("dot") => Emit::Graph,
            _ => Emit::Lpubin,
        }
    }
}

/// Runs `q35c compile`.
pub fn run(args: &CompileArgs) -> anyhow::Result<()> {
    let mut spec = q35_model::load(&args.model)
        .with_context(|| format!("cannot load model description {}", args.model.display()))?;
    if let Some(t) = &args.target {
        spec.target = q35_target::Target::load(t)
            .with_context(|| format!("cannot load target description {}", t.display()))?;
    }
    let options = q35_mlir::passes::RunOptions {
        print_ir_after_all: args.print_ir_after_all,
    };
    // --search-only writes nothing: it stands for the .lpubin it would make.
    let emit = args.emit.unwrap_or_else(|| {
        if args.search_only {
            Emit::Lpubin
        } else {
            Emit::infer(&args.output)
        }
    });
    if args.context.is_some() && matches!(emit, Emit::Q35 | Emit::Graph) {
        anyhow::bail!(
            "--context applies to --emit=lpu, asm and lpubin (the q35 module keeps max_seq_len)"
        );
    }
    if args.json && !matches!(emit, Emit::Asm | Emit::Lpubin) {
        anyhow::bail!("--json applies to --emit=asm and lpubin");
    }
    if args.timings && !matches!(emit, Emit::Asm | Emit::Lpubin) {
        anyhow::bail!("--timings applies to --emit=asm and lpubin");
    }
    if matches!(args.batch, Some(b) if b > 1) && !matches!(emit, Emit::Asm | Emit::Lpubin) {
        anyhow::bail!(
            "--batch applies to --emit=asm and lpubin (the q35 and lpu modules are one user's step)"
        );
    }
    // The model.toml's `[runtime] batch` when --batch is not given (the q35
    // and lpu modules are one user's step whatever it says).
    let resolved;
    let args = match args.batch {
        Some(_) => args,
        None => {
            let batch = spec.limits.batch;
            if batch > 1 && matches!(args.prefill, Some(n) if n > 1) {
                anyhow::bail!(
                    "{}: runtime.batch = {batch}: --prefill goes with a batch of 1: a batched binary has no prefill program (give --batch 1 to compile one user's binary with a prefill program)",
                    args.model.display()
                );
            }
            resolved = CompileArgs {
                batch: Some(batch),
                ..args.clone()
            };
            &resolved
        }
    };
    let chips = match args.chips.unwrap_or(spec.chips) {
        q35_model::Chips::Count(n) => n,
        q35_model::Chips::Auto if args.tensor.count() > 1 => anyhow::bail!(
            "--tensor {} with --chips auto: give --tensor auto to compare groups at the count the search chooses, or --chips N with --tensor {}",
            args.tensor.count(),
            args.tensor.count()
        ),
        q35_model::Chips::Auto => return run_auto(args, &spec, emit, options),
    };
    if args.search_only {
        anyhow::bail!("--search-only goes with --chips auto");
    }
    if args.tensor == Tensor::Auto {
        anyhow::bail!("--tensor auto goes with --chips auto (give --chips N with --tensor T)");
    }
    let t = args.tensor.count();
    if t > 1 && !chips.is_multiple_of(t) {
        anyhow::bail!(
            "--tensor {t}: the {chips} chips must be whole tensor-parallel groups of {t}"
        );
    }
    compile_with(args, &spec, emit, chips, args.split.split(), options, None)
}

/// `--chips auto`: the search, then the choice compiled as `--chips N`
/// would (and, if its compile refuses it after all, the next candidate).
fn run_auto(
    args: &CompileArgs,
    spec: &q35_model::ModelSpec,
    emit: Emit,
    options: q35_mlir::passes::RunOptions,
) -> anyhow::Result<()> {
    let shown = args.model.display();
    if !args.search_only && emit != Emit::Lpubin {
        anyhow::bail!(
            "{shown}: --chips auto may make a system file of several programs: emit an .lpubin (--emit=lpubin)"
        );
    }
    if !args.search_only && args.output.as_os_str() == "-" {
        anyhow::bail!("an .lpubin is binary: give an output file with -o");
    }
    let mut auto = crate::auto::Auto::search(
        spec,
        &args.model,
        args.context,
        options,
        &crate::auto::splits(args.split.split()),
        args.users(),
    )?;
    if args.tensor == Tensor::Auto {
        auto.compare_tensor()
            .with_context(|| format!("{shown}: --chips auto --tensor auto"))?;
    }
    loop {
        let Some(i) = auto.choice() else {
            eprint!("{}", auto.table());
            anyhow::bail!("{shown}: --chips auto: no candidate fits (the table above says why)");
        };
        if args.search_only {
            eprint!("{}", auto.table());
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"auto": auto.to_json()}))?
                );
            }
            return Ok(());
        }
        let c = &auto.rows[i].candidate;
        let (n, split) = (
            c.chips,
            if c.chips == 1 {
                q35_codegen::partition::Split::Auto
            } else {
                c.split
            },
        );
        match compile_with(args, spec, emit, n, split, options, Some((&mut auto, i))) {
            Ok(()) => return Ok(()),
            Err(e) if crate::auto::refusal(&format!("{e:#}")).is_some() => {
                let why = format!("{e:#}");
                auto.refuse(i, &why)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The rest of `q35c compile` for `chips` chips cut as `split`; with
/// `auto` (the search and the row chosen) its table and `--json`'s `auto`
/// follow the compile, the row's cycles the compiled ones.
fn compile_with(
    args: &CompileArgs,
    spec: &q35_model::ModelSpec,
    emit: Emit,
    chips: u32,
    split: q35_codegen::partition::Split,
    options: q35_mlir::passes::RunOptions,
    mut auto: Option<(&mut crate::auto::Auto, usize)>,
) -> anyhow::Result<()> {
    if chips == 0 {
        anyhow::bail!("--chips 0: a system needs at least one chip");
    }
    if chips > 1 && emit != Emit::Lpubin {
        anyhow::bail!(
            "--chips {chips} makes one system file of {chips} programs: emit an .lpubin (--emit=lpubin)"
        );
    }
    if emit == Emit::Lpubin && args.output.as_os_str() == "-" {
        anyhow::bail!("an .lpubin is binary: give an output file with -o");
    }
    if args.split != SplitArg::Auto && chips == 1 && auto.is_none() {
        anyhow::bail!("--split goes with --chips N (N > 1)");
    }
    let tensor = match &auto {
        Some((a, i)) => a.rows[*i].candidate.tensor,
        None => args.tensor.count(),
    };
    let weightless = spec.weights == q35_model::WeightSource::None;
    if weightless && matches!(emit, Emit::Asm | Emit::Lpubin) {
        return compile_timing_only(args, spec, emit, chips, (split, tensor), options, auto);
    }
    let bytes = match emit {
        Emit::Q35 => q35_mlir::emit_q35_with(spec, options)
            .with_context(|| format!("cannot compile {} to the q35 dialect", args.model.display()))?
            .into_bytes(),
        Emit::Lpu => q35_mlir::emit_lpu_with(spec, args.context, options)
            .with_context(|| format!("cannot compile {} to the lpu dialect", args.model.display()))?
            .into_bytes(),
        Emit::Graph => q35_frontend::build(spec)
            .with_context(|| format!("cannot build the graph of {}", args.model.display()))?
            .to_dot()
            .into_bytes(),
        Emit::Asm | Emit::Lpubin => {
            let t0 = std::time::Instant::now();
            let timings = crate::timings::Timings::new();
            let e = crate::backend::compile(
                spec,
                &args.model,
                args.context,
                args.calib.as_deref(),
                options,
                args.threads,
                match args.prefill {
                    Some(n) => crate::backend::Prefill::Tokens(n),
                    None => crate::backend::Prefill::Auto,
                },
                chips,
                (split, tensor),
                args.users(),
                args.buckets.clone(),
                &timings,
            )?;
            if let Some((a, i)) = auto.as_mut() {
                a.settle(*i, e.cycles());
                eprint!("{}", a.table());
            }
            timings.mark("encoding the program");
            let bytes = if emit == Emit::Asm {
                e.compiled.built.program.to_lpuasm().into_bytes()
            } else {
                crate::backend::lpubin(&e, &spec.target)?
            };
            timings.mark("writing the output");
            write_output(&args.output, &bytes)?;
            timings.finish();
            if args.timings {
                eprint!("{}", timings.table());
            }
            if args.json {
                let mut v = crate::backend::summary(&e, &spec.target, &args.output, bytes.len());
                v["compile_seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
                if let Some((a, _)) = &auto {
                    v["auto"] = a.to_json();
                }
                if args.timings {
                    v["timings"] = timings.to_json();
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(system) = &e.system {
                let per_chip: Vec<String> = system
                    .stages
                    .iter()
                    .zip(e.chips())
                    .map(|(st, c)| {
                        format!(
                            "chip {} {}: {} cycles, {:.1} MB",
                            st.chip,
                            st.describe(),
                            c.built.cycles,
                            c.mem_bytes as f64 / 1e6
                        )
                    })
                    .collect();
                let cycles = e.cycles();
                eprintln!(
                    "{}: {} ({} bytes): {chips} chips, {}, context {}, {} cycles per decoded token predicted ({:.0} tokens/s at {} MHz; the last chip's end){}, no prefill program (a system's prompt runs token by token); {}; compiled in {:.1?}{}",
                    args.model.display(),
                    args.output.display(),
                    bytes.len(),
                    parallelism(system.stages.iter()),
                    e.ctx,
                    cycles,
                    spec.target.clock_mhz * 1e6 / cycles.max(1) as f64,
                    spec.target.clock_mhz,
                    batch_note(
                        args.users(),
                        spec.target.clock_mhz * 1e6 / cycles.max(1) as f64
                    ),
                    per_chip.join("; "),
                    t0.elapsed(),
                    crate::backend::cache_note(&e.built.cache)
                );
            } else if args.output.as_os_str() != "-" {
                let cycles = e.compiled.built.cycles;
                let prefill = match &e.prefill {
                    Some((n, c)) => format!(
                        ", prefill {n} tokens a run in {} cycles ({:.0} a token)",
                        c.built.cycles,
                        c.built.cycles as f64 / f64::from(*n)
                    ),
                    None => match &e.prefill_note {
                        Some(why) => format!(", no prefill program ({why})"),
                        None => ", no prefill program".to_string(),
                    },
                };
                let prefill = if e.buckets.is_empty() {
                    prefill
                } else {
                    let list: Vec<String> = e
                        .buckets
                        .iter()
                        .map(|(b, c)| format!("{} below position {b}", c.built.cycles))
                        .collect();
                    format!(
                        "{prefill}, context buckets (cycles per decoded token): {}",
                        list.join(", ")
                    )
                };
                eprintln!(
                    "{}: {} ({} bytes): context {}, {} cycles per decoded token predicted ({:.0} tokens/s at {} MHz){}{prefill}, {:.1} MB of {:.1} MB MEM, compiled in {:.1?}{}",
                    args.model.display(),
                    args.output.display(),
                    bytes.len(),
                    e.ctx,
                    cycles,
                    spec.target.clock_mhz * 1e6 / cycles.max(1) as f64,
                    spec.target.clock_mhz,
                    batch_note(
                        args.users(),
                        spec.target.clock_mhz * 1e6 / cycles.max(1) as f64
                    ),
                    e.mem_bytes() as f64 / 1e6,
                    spec.target.mem_bytes() as f64 / 1e6,
                    t0.elapsed(),
                    crate::backend::cache_note(&e.built.cache)
                );
            }
            return Ok(());
        }
    };
    write_output(&args.output, &bytes)
}

/// `q35c compile` of a model with no weights (`[weights] source =
/// "none"`): a timing-only system file (docs/backend.md 8).
fn compile_timing_only(
    args: &CompileArgs,
    spec: &q35_model::ModelSpec,
    emit: Emit,
    chips: u32,
    split: (q35_codegen::partition::Split, u32),
    options: q35_mlir::passes::RunOptions,
    mut auto: Option<(&mut crate::auto::Auto, usize)>,
) -> anyhow::Result<()> {
    let shown = args.model.display();
    if emit != Emit::Lpubin {
        anyhow::bail!(
            "{shown}: the model has no weights ([weights] source = \"none\"): it compiles only to a timing-only .lpubin (--emit=lpubin)"
        );
    }
    if matches!(args.prefill, Some(n) if n > 1) {
        anyhow::bail!(
            "{shown}: --prefill: a model with no weights compiles a timing-only system of decode programs, with no prefill program"
        );
    }
    if args.calib.is_some() {
        anyhow::bail!("{shown}: --calib: a model with no weights is not quantized");
    }
    let t0 = std::time::Instant::now();
    let timings = crate::timings::Timings::new();
    let t = crate::backend::compile_timing_only(
        spec,
        &args.model,
        args.context,
        options,
        chips,
        split,
        args.users(),
        &timings,
    )?;
    if let Some((a, i)) = auto.as_mut() {
        a.settle(*i, t.cycles());
        eprint!("{}", a.table());
    }
    timings.mark("writing the output");
    t.system
        .write_to(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let bytes = fs::metadata(&args.output)
        .with_context(|| format!("cannot read {}", args.output.display()))?
        .len();
    timings.finish();
    if args.timings {
        eprint!("{}", timings.table());
    }
    let cycles = t.cycles();
    let clock_hz = spec.target.clock_mhz * 1e6;
    let tokens_per_second = clock_hz / cycles.max(1) as f64;
    if args.json {
        let mut v = serde_json::json!({
            "model": spec.name,
            "output": args.output.display().to_string(),
            "bytes": bytes,
            "target": spec.target.name,
            "context": t.ctx,
            "timing_only": true,
            "chips": chips,
            "predicted_cycles_per_step": cycles,
            "projected_tokens_per_second": tokens_per_second,
            "batch": args.users(),
            "projected_system_tokens_per_second": tokens_per_second * f64::from(args.users()),
            "instructions": t.chips.iter().map(|c| c.3).sum::<usize>(),
            "mem_bytes_used": t.chips.iter().map(|c| c.2).max().unwrap_or(0),
            "mem_bytes_chip": spec.target.mem_bytes(),
            "system": t.chips.iter().map(|(st, cyc, mem, ins)| serde_json::json!({
                "chip": st.chip,
                "blocks": [st.blocks.start, st.blocks.end],
                "part": st.part,
                "head": st.head,
                "weight_bytes": st.weight_bytes,
                "kv_bytes": st.kv_bytes,
                "receives": st.receives.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "tensor": st.tensor.map(|(slice, of)| serde_json::json!({"slice": slice, "of": of})),
                "predicted_cycles": cyc,
                "mem_bytes_used": mem,
                "instructions": ins,
            })).collect::<Vec<_>>(),
            "bound": {
                "weights": t.bound.weights,
                "cycles": t.bound.cycles(),
                "predicted_over_bound": cycles as f64 / t.bound.cycles().max(1.0),
            },
            "compile_seconds": t0.elapsed().as_secs_f64(),
        });
        if let Some((a, _)) = &auto {
            v["auto"] = a.to_json();
        }
        if args.timings {
            v["timings"] = timings.to_json();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let per_chip: Vec<String> = t
            .chips
            .iter()
            .map(|(st, cyc, mem, _)| {
                format!(
                    "chip {} {}: {cyc} cycles, {:.1} MB",
                    st.chip,
                    st.describe(),
                    *mem as f64 / 1e6
                )
            })
            .collect();
        eprintln!(
            "{}: {} ({} bytes): timing only (no weights), {chips} chip{}{}, context {}, {cycles} cycles per decoded token predicted ({tokens_per_second:.0} tokens/s at {} MHz; the last chip's end){}; {}; compiled in {:.1?}",
            args.model.display(),
            args.output.display(),
            bytes,
            if chips == 1 { "" } else { "s" },
            if chips == 1 {
                String::new()
            } else {
                format!(", {}", parallelism(t.chips.iter().map(|c| &c.0)))
            },
            t.ctx,
            spec.target.clock_mhz,
            batch_note(args.users(), tokens_per_second),
            per_chip.join("; "),
            t0.elapsed()
        );
    }
    Ok(())
}

/// How a system's chips share the step: `pipeline-parallel`, or `N
/// pipeline stages of T tensor-parallel chips` (docs/backend.md 10).
fn parallelism<'s>(stages: impl Iterator<Item = &'s q35_codegen::partition::Stage>) -> String {
    let mut n = 0u32;
    let mut group = None;
    for s in stages {
        n += 1;
        group = group.or(s.tensor.map(|t| t.1));
    }
    match group {
        Some(t) if t > 1 => {
            let g = n / t;
            format!(
                "{g} pipeline stage{} of {t} tensor-parallel chips",
                if g == 1 { "" } else { "s" }
            )
        }
        _ => "pipeline-parallel".to_string(),
    }
}

/// `, a batch of B users: T tokens/s per user, B T for the system` (empty
/// for one user).
fn batch_note(batch: u32, per_user: f64) -> String {
    if batch <= 1 {
        return String::new();
    }
    format!(
        ", a batch of {batch} users: {per_user:.0} tokens/s per user, {:.0} for the system",
        per_user * f64::from(batch)
    )
}

/// Writes `bytes` to `path` (`-` is stdout). A file is written to a temporary
/// in the destination directory and renamed into place, so an error leaves no
/// partial output behind.
pub(crate) fn write_output(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).context("cannot write to stdout")?;
        return out.flush().context("cannot write to stdout");
    }
    let name = path
        .file_name()
        .with_context(|| format!("output path {} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()));
    if result.is_err() {
        // Best effort: the temporary may not exist if the write never started.
        let _ = fs::remove_file(&tmp);
    }
    result
}
