//! `q35c compile --emit=asm|lpubin`: the backend's emission (docs/backend.md).
//!
//! 1. The q35 module through the backend pipeline (`lpu-lower`,
//!    `lpu-place`, `lpu-schedule`): the scheduled lpu module and its
//!    predicted cycle count.
//! 2. The model quantized as its description says (the golden model's
//!    recipe, `q35_host::golden::build`: the same path `q35sim run --check`
//!    rebuilds the golden model with).
//! 3. The lpu module with the real weights bound into the code generator's
//!    plan, compiled into the program; its cycle count must be the one
//!    `lpu-schedule` recorded (timing does not depend on weight values).
//! 4. The `.lpubin`: instruction streams, MEM image, symbols, tables, debug
//!    map (queue, instruction) -> source op, and the host's sections
//!    (metadata, tokenizer, embedding) so `q35sim run` needs nothing else.

use std::path::{Path, PathBuf};

use anyhow::Context;
use q35_codegen::plan::Compiled;
use q35_host::golden::{self, BuiltGolden, CALIB_SAMPLES, GoldenRecipe};
use q35_host::meta::{GoldenRecipeMeta, HostMeta};
use q35_model::ModelSpec;

use q35_host::bar::Bar;

use crate::timings::Timings;

/// Calibration window in tokens (as `q35c eval --quant` and `interp`).
pub const CALIB_CTX: usize = 512;

/// What the backend produced.
pub struct Emitted {
    /// The compiled program and its placement (a system's: chip 0's; the
    /// other chips' are in `system`).
    pub compiled: Compiled,
    /// A model split over several chips (`--chips N`, docs/backend.md 8):
    /// every chip's stage and chips 1.. 's programs.
    pub system: Option<SystemPart>,
    /// The machine's bound on one decode step.
    pub bound: q35_codegen::plan::Bound,
    /// The golden model and tokenizer it was compiled from.
    pub built: BuiltGolden,
    /// [`golden::weights_hash`] of `built.golden` (computed beside the
    /// scheduler, which runs on one thread).
    pub weights_hash: String,
    /// The compiled context.
    pub ctx: u32,
    /// The recipe (recorded for `--check`).
    pub recipe: GoldenRecipe,
    /// The prefill program (tokens per run, the program), compiled after
    /// the decode program over the same weights and KV caches.
    pub prefill: Option<(u32, Compiled)>,
    /// Why there is no prefill program, when one was wanted but did not fit.
    pub prefill_note: Option<String>,
    /// Users a decode step serves (`--batch`; 1: one sequence).
    pub batch: u32,
    /// The context buckets (positions attended, the program), ascending:
    /// the decode step compiled to read the first positions of the caches
    /// only ([`q35_codegen::plan::compile_bucket`]).
    pub buckets: Vec<(u32, Compiled)>,
    /// Why buckets that were asked for are missing, if any are.
    pub buckets_note: Option<String>,
}

/// Context buckets: further decode programs attending to the first
/// positions of the caches only (docs/backend.md 1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buckets {
    /// [`auto_buckets`] of the compiled context.
    Auto,
    /// Exactly these positions (each below the context; empty: none).
    List(Vec<u32>),
}

/// The smallest bucket `Buckets::Auto` makes.
pub const AUTO_BUCKET_MIN: u32 = 64;

/// `Buckets::Auto`'s buckets below context `ctx`: 64, 256, 1024, ...
/// (4x apart). Attention's cycles grow with the positions it reads, above a
/// fixed part (SmolLM2's shapes, one op, kernel test at context 1024: 2,750
/// cycles attending to 64 positions, 3,575 to 330, 6,025 to all 1,024), so
/// a step at position `pos` on the bucket above it reads at most 4x the
/// positions it needs, and each bucket costs one more code generation.
pub fn auto_buckets(ctx: u32) -> Vec<u32> {
    std::iter::successors(Some(AUTO_BUCKET_MIN), |b| b.checked_mul(4))
        .take_while(|&b| b < ctx)
        .collect()
}

/// The chips past the first of a pipeline-split model.
pub struct SystemPart {
    /// Every chip's stage (its blocks, weights, transfers), chip 0's first.
    pub stages: Vec<q35_codegen::partition::Stage>,
    /// Chips 1.. 's programs.
    pub rest: Vec<Compiled>,
}

/// Tokens per prefill run: exactly `n`, or up to the default, halved
/// until the program fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefill {
    /// The largest of 8, 4, 2 tokens whose program fits MEM beside the
    /// decode program's (none if even 2 does not, or if the decode program
    /// uses more than [`AUTO_PREFILL_MEM_SHARE`] of MEM).
    Auto,
    /// Exactly this many tokens (1: no prefill program); an error if it
    /// does not fit.
    Tokens(u32),
}

/// The default prefill chunk (tokens per run) `Prefill::Auto` starts from.
pub const PREFILL_TOKENS: u32 = 8;

/// `Prefill::Auto` tries no prefill program beside a decode program using
/// more than this share of the chip's MEM.
pub const AUTO_PREFILL_MEM_SHARE: f64 = 0.6;

/// Compiles `spec` (from `model_path`) into a program.
#[expect(
    clippy::too_many_arguments,
    reason = "the compile's inputs and options, each named at the one call"
)]
pub fn compile(
    spec: &ModelSpec,
    model_path: &Path,
    context: Option<u64>,
    calib: Option<&Path>,
    options: q35_mlir::passes::RunOptions,
    threads: usize,
    prefill: Prefill,
    chips: u32,
    // The pipeline's cut and the tensor-parallel group size.
    (split, tensor): (q35_codegen::partition::Split, u32),
    batch: u32,
    buckets: Buckets,
    timings: &Timings,
) -> anyhow::Result<Emitted> {
    let shown = model_path.display();
    if let Buckets::List(list) = &buckets
        && !list.is_empty()
        && chips > 1
    {
        anyhow::bail!(
            "{shown}: --buckets goes with one chip (a system's stages have no context buckets yet); --buckets none compiles without"
        );
    }
    if chips == 0 {
        anyhow::bail!("{shown}: --chips 0: a system needs at least one chip");
    }
    if batch == 0 {
        anyhow::bail!("{shown}: --batch 0: a decode step serves at least one user");
    }
    if batch > 1 && matches!(prefill, Prefill::Tokens(n) if n > 1) {
        anyhow::bail!(
            "{shown}: --prefill goes with --batch 1: a batched binary has no prefill program (each user's prompt runs a token a step)"
        );
    }
    if chips > 1 && matches!(prefill, Prefill::Tokens(n) if n > 1) {
        anyhow::bail!(
            "{shown}: --prefill goes with one chip; a model split over {chips} chips has no prefill program yet (its prompt runs token by token)"
        );
    }
    if chips > 1 {
        // The wiring must exist before anything is compiled for it.
        spec.target
            .system(chips)
            .with_context(|| format!("{shown}: --chips {chips}"))?;
    }
    timings.mark("lowering and placement (MLIR)");
    let mlir = q35_mlir::create_context()?;
    let bar = Bar::new(
        format!("compile {shown}: "),
        "lowering, placing and scheduling (lpu-lower, lpu-place, lpu-schedule)",
        !options.print_ir_after_all,
    );
    // One chip: lowering and lpu-place (which refuses a model over the
    // chip's MEM from its shapes). Many: each stage is placed on its own
    // chip (docs/backend.md 8), so the module is only lowered, and what it
    // needs is checked against the whole system's MEM before any weight
    // is quantized.
    let module = if chips > 1 {
        let module = q35_mlir::lower::compile_lpu(&mlir, spec, context, options)
            .with_context(|| format!("cannot compile {shown} for the LPU"))?;
        let need = q35_mlir::lpu::plan::mem_need(&module.as_operation())
            .map_err(|e| anyhow::anyhow!("cannot compile {shown} for the LPU: {e}"))?
            .batched(batch);
        let chip = spec.target.mem_bytes();
        if need.total() > u64::from(chips) * chip {
            anyhow::bail!(
                "{shown}: the model does not fit on {chips} chips: it needs at least {} bytes of MEM ({} bytes of weights, {} bytes of KV cache, {} bytes of other buffers); {chips} {} chips have {} bytes, so by MEM alone it needs at least {} chips",
                need.total(),
                need.weight_bytes,
                need.kv_bytes,
                need.other_bytes,
                spec.target.name,
                u64::from(chips) * chip,
                need.total().div_ceil(chip)
            );
        }
        module
    } else {
        q35_mlir::compile_placed(&mlir, spec, context, options)
            .with_context(|| format!("cannot compile {shown} for the LPU"))?
    };
    let ctx = q35_mlir::ir::int_attr(&module.as_operation(), q35_frontend::lpu_ops::CONTEXT_ATTR)
        .and_then(|c| u32::try_from(c).ok())
        .with_context(|| format!("{shown}: the lpu module has no context"))?;

    let model_toml =
        std::fs::canonicalize(model_path).with_context(|| format!("cannot resolve {shown}"))?;
    let calib: Option<PathBuf> = calib
        .map(Path::to_path_buf)
        .or_else(|| spec.calibration.clone())
        .map(|c| std::fs::canonicalize(&c).unwrap_or(c));
    let recipe = GoldenRecipe {
        model_toml,
        calib,
        calib_ctx: CALIB_CTX,
        calib_samples: CALIB_SAMPLES,
        positions: ctx as usize,
        threads,
    };
    let built = golden::build_with_progress(&recipe, &|p| {
        if let q35_quant::Progress::Stage(s) = p {
            timings.mark(s);
        }
        bar.report(p);
    })
    .with_context(|| format!("cannot quantize {shown}"))?;
    if let Some(w) = built.cache.warning() {
        bar.println(&format!("q35c: warning: {w}"));
    }

    // lpu-schedule with the real weights (the pass itself uses placeholders
    // of the same shapes; the schedule does not depend on values).
    bar.stage("scheduling with the real weights and generating code");
    timings.mark("scheduling and code generation");
    let source = q35_mlir::lpu::plan::GoldenSource::new(&built.layers, &built.golden);
    if chips > 1 {
        // The pipeline split of the module's plan (docs/backend.md 8): the
        // stages compiled in chip order, each receive after its arrival.
        bar.stage(format!("splitting over {chips} chips and generating code"));
        let plan = q35_mlir::lpu::plan::op_to_plan(&module.as_operation(), &source)
            .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
        let plan = plan
            .batched(batch)
            .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
        let bound = q35_codegen::plan::bound(&plan, &spec.target);
        let opts = q35_codegen::partition::SystemOptions {
            split,
            tensor,
            ..Default::default()
        };
        let mut stages = Vec::new();
        let mut rest = Vec::new();
        q35_codegen::partition::compile_system_with(
            &plan,
            &spec.target,
            chips,
            &opts,
            &mut |s, c| {
                stages.push(s);
                rest.push(c);
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot split {shown} over {chips} chips: {e}"))?;
        drop(plan);
        drop(bar);
        timings.finish();
        let compiled = rest.remove(0);
        let weights_hash = golden::weights_hash(&built.golden);
        return Ok(Emitted {
            compiled,
            system: Some(SystemPart { stages, rest }),
            bound,
            weights_hash,
            built,
            ctx,
            recipe,
            prefill: None,
            prefill_note: Some(format!(
                "a model split over {chips} chips has no prefill program yet: the prompt runs token by token"
            )),
            batch,
            buckets: Vec::new(),
            buckets_note: None,
        });
    }
    // The scheduler runs on one thread; the weights' hash (for the host's
    // metadata, a SHA-256 over the whole golden model) is taken beside it.
    let (scheduled, weights_hash) = std::thread::scope(|s| {
        let hash = s.spawn(|| golden::weights_hash(&built.golden));
        let scheduled =
            q35_mlir::passes::lpu_codegen::schedule(&mlir, &module, &source, &spec.target);
        let hash = match hash.join() {
            Ok(h) => h,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (scheduled, hash)
    });
    let (plan, compiled) = scheduled
            .map_err(|e| {
                let hint = if e.contains("does not fit") {
                    format!(
                        " (the KV caches grow with the compiled context, {ctx} positions here: a smaller --context frees MEM)"
                    )
                } else {
                    String::new()
                };
                anyhow::anyhow!("cannot generate code for {shown}: {e}{hint}")
            })?;
    let mut prefill_note = None;
    // A batch: the plan compiled for every user's row (the lpu module and
    // lpu-schedule's program above are one user's step, as a prefill
    // chunk's program is compiled from the plan beside them).
    let (plan, compiled, prefill) = if batch > 1 {
        bar.stage(format!(
            "generating the batched decode program ({batch} users a step)"
        ));
        let plan = plan
            .batched(batch)
            .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
        let c = q35_codegen::plan::compile(&plan, &spec.target).map_err(|e| {
            anyhow::anyhow!(
                "cannot generate the decode program for a batch of {batch} users for {shown}: {e} (every user has its own KV caches: a smaller --batch or --context frees MEM)"
            )
        })?;
        prefill_note = Some(format!(
            "a batched binary has no prefill program: each user's prompt runs a token a step{}",
            if c.scratch_shared {
                "; kernel scratch shared between the users, their own did not fit MEM"
            } else {
                ""
            }
        ));
        (plan, c, Prefill::Tokens(1))
    } else {
        (plan, compiled, prefill)
    };
    let bound = q35_codegen::plan::bound(&plan, &spec.target);
    // The prefill program, placed after everything the decode program
    // placed (docs/backend.md): its chunk is capped by the context.
    timings.mark("generating the prefill program");
    let prefill = match prefill {
        Prefill::Tokens(n) if n <= 1 => None,
        Prefill::Tokens(n) if n > ctx => anyhow::bail!(
            "{shown}: --prefill {n} is longer than the compiled context of {ctx} tokens"
        ),
        Prefill::Tokens(n) => {
            bar.stage(format!("generating the prefill program ({n} tokens a run)"));
            let c = q35_codegen::plan::compile_after(&plan, &spec.target, n, &compiled)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot generate the prefill program of {n} tokens for {shown}: {e} (a smaller --prefill, or --prefill 1 for none)"
                    )
                })?;
            Some((n, c))
        }
        Prefill::Auto => {
            // A failed try costs a whole code generation, and the prefill
            // program fits only beside a decode program that leaves room
            // (measured on SmolLM2: none fits beside 72% of MEM, at context
            // 1024), so auto does not try past AUTO_PREFILL_MEM_SHARE.
            let share = compiled.mem_bytes as f64 / spec.target.mem_bytes() as f64;
            let mut got = None;
            if share > AUTO_PREFILL_MEM_SHARE {
                prefill_note = Some(format!(
                    "the decode program uses {:.0}% of MEM, more than the {:.0}% beside which auto tries one; --prefill N tries N tokens",
                    share * 100.0,
                    AUTO_PREFILL_MEM_SHARE * 100.0
                ));
            } else {
                let mut n = PREFILL_TOKENS.min(ctx);
                while n >= 2 {
                    bar.stage(format!("generating the prefill program ({n} tokens a run)"));
                    match q35_codegen::plan::compile_after(&plan, &spec.target, n, &compiled) {
                        Ok(c) => {
                            got = Some((n, c));
                            break;
                        }
                        Err(e) => {
                            prefill_note = Some(format!("{n} tokens a run did not fit: {e}"));
                            n /= 2;
                        }
                    }
                }
            }
            got
        }
    };
    // The context buckets: the same step reading fewer positions, each a
    // whole code generation, two at a time (the scheduler is one thread).
    timings.mark("generating the context buckets");
    let mut buckets_note = None;
    let wanted = match buckets {
        Buckets::Auto => auto_buckets(ctx),
        Buckets::List(mut list) => {
            list.sort_unstable();
            list.dedup();
            if let Some(&b) = list.iter().find(|&&b| b >= ctx) {
                anyhow::bail!(
                    "{shown}: --buckets {b}: a context bucket must be below the compiled context of {ctx} positions"
                );
            }
            list
        }
    };
    let mut made = Vec::new();
    if !wanted.is_empty() {
        bar.stage(format!(
            "generating {} context bucket{} ({})",
            wanted.len(),
            if wanted.len() == 1 { "" } else { "s" },
            wanted
                .iter()
                .map(|b| format!("positions < {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for pair in wanted.chunks(threads.clamp(1, 2)) {
            let got: Vec<_> = std::thread::scope(|sc| {
                let handles: Vec<_> = pair
                    .iter()
                    .map(|&b| {
                        let (plan, target, compiled) = (&plan, &spec.target, &compiled);
                        sc.spawn(move || {
                            (
                                b,
                                q35_codegen::plan::compile_bucket(plan, target, b, compiled),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h.join() {
                        Ok(r) => r,
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                    .collect()
            });
            for (b, r) in got {
                match r {
                    // A bucket that does not come out faster than the whole
                    // context is no use (it would only grow the binary).
                    Ok(c) if c.built.cycles < compiled.built.cycles => made.push((b, c)),
                    Ok(c) => {
                        buckets_note = Some(format!(
                            "the bucket for positions < {b} takes {} cycles, no fewer than the whole context's {}: left out",
                            c.built.cycles, compiled.built.cycles
                        ));
                    }
                    Err(e) => anyhow::bail!(
                        "cannot generate the context bucket for positions < {b} for {shown}: {e} (--buckets none compiles without)"
                    ),
                }
            }
        }
    }
    timings.mark("freeing the plan");
    drop(plan);
    drop(bar);
    timings.finish();
    if options.print_ir_after_all {
        eprintln!(
            "// -----// IR Dump After lpu-schedule (lpu-schedule) ('builtin.module' operation) //----- //\n{}",
            module.as_operation()
        );
    }
    Ok(Emitted {
        compiled,
        system: None,
        bound,
        weights_hash,
        built,
        ctx,
        recipe,
        prefill,
        prefill_note,
        batch,
        buckets: made,
        buckets_note,
    })
}

impl Emitted {
    /// Every chip's program, chip 0's first (one for a single chip).
    pub fn chips(&self) -> Vec<&Compiled> {
        let mut v = vec![&self.compiled];
        if let Some(s) = &self.system {
            v.extend(&s.rest);
        }
        v
    }

    /// Predicted cycles of one decode step: the program's, or for a
    /// lockstep system the last chip's end (every chip starts on cycle 0).
    pub fn cycles(&self) -> u64 {
        self.chips()
            .iter()
            .map(|c| c.built.cycles)
            .max()
            .unwrap_or(0)
    }

    /// MEM bytes the binary's programs use together (a later program
    /// allocates past the earlier ones); a system's largest chip's.
    pub fn mem_bytes(&self) -> u64 {
        if self.system.is_some() {
            return self.chips().iter().map(|c| c.mem_bytes).max().unwrap_or(0);
        }
        self.prefill
            .as_ref()
            .map_or(self.compiled.mem_bytes, |(_, c)| c.mem_bytes)
    }
}

/// The host's metadata for `e`.
pub fn host_meta(e: &Emitted) -> HostMeta {
    let a = e.built.golden.arch();
    let tok = e.built.tokenizer.as_ref();
    HostMeta {
        model: e.built.name.clone(),
        vocab: a.vocab,
        hidden: a.hidden,
        blocks: a.blocks,
        kv_dim: a.kv_heads * a.head_dim,
        ctx: e.ctx,
        bos: tok.map(|t| t.bos()),
        eos: tok.map(|t| t.eos()),
        add_bos: tok.is_some_and(|t| t.add_bos_token()),
        stop_tokens: tok.map(|t| vec![t.eos()]),
        chat_template: tok.and_then(|t| t.chat_template().map(str::to_string)),
        kv_junk_offset: u16::try_from(e.ctx.div_ceil(q35_codegen::program::LANES))
            .unwrap_or(u16::MAX),
        predicted_cycles_per_step: Some(e.cycles()),
        golden: Some(GoldenRecipeMeta {
            model_toml: e.recipe.model_toml.display().to_string(),
            calib: e.recipe.calib.as_ref().map(|c| c.display().to_string()),
            calib_ctx: e.recipe.calib_ctx,
            calib_samples: e.recipe.calib_samples,
        }),
        weights_hash: Some(e.weights_hash.clone()),
        prefill: e.prefill.as_ref().map(|(n, c)| q35_host::PrefillMeta {
            program: PREFILL_PROGRAM.to_string(),
            tokens: *n,
            predicted_cycles: Some(c.built.cycles),
        }),
        buckets: e
            .buckets
            .iter()
            .map(|(b, c)| q35_host::BucketMeta {
                program: bucket_program(*b),
                positions: *b,
                predicted_cycles: Some(c.built.cycles),
            })
            .collect(),
        system: e.system.as_ref().map(|s| q35_host::SystemMeta {
            chips: s
                .stages
                .iter()
                .zip(e.chips())
                .map(|(st, c)| q35_host::ChipMeta {
                    chip: st.chip,
                    blocks: [st.blocks.start, st.blocks.end],
                    head: st.head,
                    part: st.part.clone(),
                    symbols: c
                        .built
                        .program
                        .symbols
                        .iter()
                        .map(|s| s.name.clone())
                        .collect(),
                    predicted_cycles: c.built.cycles,
                    mem_bytes: c.mem_bytes,
                })
                .collect(),
        }),
        timing_only: false,
        batch: e.batch,
    }
}

/// The prefill program's name in the binary's `programs` section.
pub const PREFILL_PROGRAM: &str = "prefill";

/// The name of the context bucket attending to `positions` positions in
/// the binary's `programs` section.
pub fn bucket_program(positions: u32) -> String {
    format!("decode.{positions}")
}

/// The `.lpubin` bytes of `e`.
pub fn lpubin(e: &Emitted, target: &q35_target::Target) -> anyhow::Result<Vec<u8>> {
    let producer = format!("q35c {}", env!("CARGO_PKG_VERSION"));
    let mut b = e
        .compiled
        .built
        .program
        .to_lpubin(target, &producer)
        .context("cannot encode the program")?;
    b.metadata(host_meta(e).to_json());
    if let Some(t) = &e.built.tokenizer_gguf {
        b.tokenizer(t.clone());
    }
    let (encoding, rows, cols, data) = e.built.embedding_table().section();
    b.embedding(encoding, rows, cols, data);
    for (queue, index, label) in &e.compiled.built.debug {
        b.debug(*queue, *index, label.clone());
    }
    if let Some((_, c)) = &e.prefill {
        // Its own MEM contents (kernel constants past the decode program's
        // allocation) join the file's image; the rest is its own.
        for (slice, first, bytes) in c.built.program.mem_extents() {
            b.mem_extent(slice, first, bytes);
        }
        let mut p = c
            .built
            .program
            .to_lpubin_program(target, &producer)
            .context("cannot encode the prefill program")?;
        for (queue, index, label) in &c.built.debug {
            p.debug(*queue, *index, label.clone());
        }
        b.program(PREFILL_PROGRAM, p);
    }
    // A bucket's MEM image is the first program's (checked when it was
    // compiled): its queues, symbols, tables and debug map only.
    for (positions, c) in &e.buckets {
        let mut p = c
            .built
            .program
            .to_lpubin_program(target, &producer)
            .with_context(|| {
                format!("cannot encode the context bucket for {positions} positions")
            })?;
        for (queue, index, label) in &c.built.debug {
            p.debug(*queue, *index, label.clone());
        }
        b.program(bucket_program(*positions), p);
    }
    let chip0 = b.to_bytes().context("cannot build the .lpubin container")?;
    let Some(system) = &e.system else {
        return Ok(chip0);
    };
    // A system file (docs/lpubin.md 8): chip 0's image carries the host's
    // sections, every other chip its program, MEM image, symbols and debug
    // map.
    let mut sys = q35_lpubin::SystemBuilder::new(&target.name, target.hash().0);
    sys.chip(chip0);
    for (i, c) in system.rest.iter().enumerate() {
        let mut b = c
            .built
            .program
            .to_lpubin(target, &producer)
            .with_context(|| format!("cannot encode chip {}'s program", i + 1))?;
        for (queue, index, label) in &c.built.debug {
            b.debug(*queue, *index, label.clone());
        }
        sys.chip(
            b.to_bytes()
                .with_context(|| format!("cannot build chip {}'s .lpubin image", i + 1))?,
        );
    }
    sys.to_bytes().context("cannot build the system file")
}

/// The `--json` summary of a compile.
/// What the compile did with the quantized-model cache, for `--json`:
/// `use` (`off`, `hit`, `stored`, `not stored`, `replaced`), the entry and
/// why when there is one.
fn cache_json(c: &q35_host::quant_cache::CacheUse) -> serde_json::Value {
    use q35_host::quant_cache::CacheUse;
    match c {
        CacheUse::Off => serde_json::json!({"use": "off"}),
        CacheUse::Hit(p) => serde_json::json!({"use": "hit", "entry": p.display().to_string()}),
        CacheUse::Stored(p) => {
            serde_json::json!({"use": "stored", "entry": p.display().to_string()})
        }
        CacheUse::NotStored(why) => serde_json::json!({"use": "not stored", "why": why}),
        CacheUse::Replaced(why) => serde_json::json!({"use": "replaced", "why": why}),
    }
}

/// The summary line's note on the quantized-model cache (a hit explains a
/// fast compile).
pub fn cache_note(c: &q35_host::quant_cache::CacheUse) -> &'static str {
    match c {
        q35_host::quant_cache::CacheUse::Hit(_) => " (the quantized model from the cache)",
        _ => "",
    }
}

pub fn summary(
    e: &Emitted,
    target: &q35_target::Target,
    output: &Path,
    bytes: usize,
) -> serde_json::Value {
    let p = &e.compiled.built.program;
    let instructions: usize = e
        .chips()
        .iter()
        .map(|c| c.built.program.queues.values().map(Vec::len).sum::<usize>())
        .sum();
    let cycles = e.cycles();
    let clock_hz = target.clock_mhz * 1e6;
    // Time per op kind along the schedule (first to last cycle of each op).
    let mut kinds: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
    for (label, first, last) in e.chips().iter().flat_map(|c| &c.op_cycles) {
        let kind = label.rsplit('.').next().unwrap_or(label).to_string();
        let k = kinds.entry(kind).or_default();
        k.0 += 1;
        k.1 += last - first + 1;
    }
    serde_json::json!({
        "model": e.built.name,
        "quant_cache": cache_json(&e.built.cache),
        "output": output.display().to_string(),
        "bytes": bytes,
        "target": target.name,
        "context": e.ctx,
        "predicted_cycles_per_step": cycles,
        "projected_tokens_per_second": if cycles > 0 { clock_hz / cycles as f64 } else { 0.0 },
        "batch": e.batch,
        "projected_system_tokens_per_second": if cycles > 0 { clock_hz * f64::from(e.batch) / cycles as f64 } else { 0.0 },
        "instructions": instructions,
        "queues": p.queues.len(),
        "tables": p.tables.len(),
        "mem_bytes_used": e.mem_bytes(),
        "mem_bytes_chip": target.mem_bytes(),
        "buffers": e.compiled.placement.len(),
        "ops": e.compiled.op_cycles.len(),
        "op_spans": kinds.iter().map(|(k, (n, c))| serde_json::json!({"op": k, "count": n, "cycles": c})).collect::<Vec<_>>(),
        "weights_hash": e.weights_hash,
        "prefill": match &e.prefill {
            Some((n, c)) => serde_json::json!({
                "tokens_per_run": n,
                "predicted_cycles_per_run": c.built.cycles,
                "predicted_cycles_per_token": c.built.cycles as f64 / f64::from(*n),
                "projected_tokens_per_second": if c.built.cycles > 0 { clock_hz * f64::from(*n) / c.built.cycles as f64 } else { 0.0 },
                "instructions": c.built.program.queues.values().map(Vec::len).sum::<usize>(),
                "mem_bytes_used": c.mem_bytes,
                "note": e.prefill_note,
            }),
            None => serde_json::json!({"tokens_per_run": 1, "note": e.prefill_note}),
        },
        "buckets": e.buckets.iter().map(|(b, c)| serde_json::json!({
            "program": bucket_program(*b),
            "positions": b,
            "predicted_cycles_per_step": c.built.cycles,
            "projected_tokens_per_second": if c.built.cycles > 0 { clock_hz / c.built.cycles as f64 } else { 0.0 },
            "instructions": c.built.program.queues.values().map(Vec::len).sum::<usize>(),
        })).collect::<Vec<_>>(),
        "buckets_note": e.buckets_note,
        "chips": e.chips().len(),
        "system": e.system.as_ref().map(|s| {
            s.stages
                .iter()
                .zip(e.chips())
                .map(|(st, c)| serde_json::json!({
                    "chip": st.chip,
                    "blocks": [st.blocks.start, st.blocks.end],
                    "part": st.part,
                    "head": st.head,
                    "weight_bytes": st.weight_bytes,
                    "tensor": st.tensor.map(|(slice, of)| serde_json::json!({"slice": slice, "of": of})),
                    "predicted_cycles": c.built.cycles,
                    "mem_bytes_used": c.mem_bytes,
                    "instructions": c.built.program.queues.values().map(Vec::len).sum::<usize>(),
                }))
                .collect::<Vec<_>>()
        }),
        "bound": {
            "weights": e.bound.weights,
            "mem_cycles": e.bound.mem_cycles,
            "install_cycles": e.bound.install_cycles,
            "mac_cycles": e.bound.mac_cycles,
            "vxm_cycles": e.bound.vxm_cycles,
            "cycles": e.bound.cycles(),
            "predicted_over_bound": cycles as f64 / e.bound.cycles().max(1.0),
        },
    })
}

/// A timing-only system (`[weights] source = "none"`, docs/backend.md 8):
/// the chips' encoded images and what the summary reports of them.
pub struct TimingOnly {
    /// The system file (written with `SystemBuilder::write_to`, which
    /// streams the chips' images: a 70B system is gigabytes).
    pub system: q35_lpubin::SystemBuilder,
    /// The compiled context.
    pub ctx: u32,
    /// Per chip: its stage (without its plan), predicted cycles, MEM bytes
    /// and instructions.
    pub chips: Vec<(q35_codegen::partition::Stage, u64, u64, usize)>,
    /// The machine's bound on one decode step.
    pub bound: q35_codegen::plan::Bound,
}

impl TimingOnly {
    /// Predicted cycles of one decode step (the lockstep system's: the
    /// last chip's end).
    pub fn cycles(&self) -> u64 {
        self.chips.iter().map(|c| c.1).max().unwrap_or(0)
    }
}

/// Compiles a model with no weights over `chips` chips for timing only:
/// the module is lowered, its plan taken without weights
/// (`op_to_plan_shapes`), and each chip's stage compiled with placeholder
/// weights of the right shapes (made for the stage and dropped after it)
/// and no weight images; nothing is quantized and there is no golden
/// model. The system file's chips carry programs, constants and symbols;
/// chip 0's metadata says `timing_only` (`q35sim run` then runs the
/// static schedules only).
#[expect(
    clippy::too_many_arguments,
    reason = "the compile's inputs and options, each named at the one call"
)]
pub fn compile_timing_only(
    spec: &ModelSpec,
    model_path: &Path,
    context: Option<u64>,
    options: q35_mlir::passes::RunOptions,
    chips: u32,
    // The pipeline's cut and the tensor-parallel group size.
    (split, tensor): (q35_codegen::partition::Split, u32),
    batch: u32,
    timings: &Timings,
) -> anyhow::Result<TimingOnly> {
    let shown = model_path.display();
    let target = &spec.target;
    spec.target
        .system(chips)
        .with_context(|| format!("{shown}: --chips {chips}"))?;
    timings.mark("lowering (MLIR)");
    let mlir = q35_mlir::create_context()?;
    let bar = Bar::new(
        format!("compile {shown} (timing only): "),
        "lowering (lpu-lower)",
        !options.print_ir_after_all,
    );
    let module = q35_mlir::lower::compile_lpu(&mlir, spec, context, options)
        .with_context(|| format!("cannot compile {shown} for the LPU"))?;
    if batch == 0 {
        anyhow::bail!("{shown}: --batch 0: a decode step serves at least one user");
    }
    let need = q35_mlir::lpu::plan::mem_need(&module.as_operation())
        .map_err(|e| anyhow::anyhow!("cannot compile {shown} for the LPU: {e}"))?
        .batched(batch);
    let chip = target.mem_bytes();
    if need.total() > u64::from(chips) * chip {
        let (on, have) = if chips == 1 {
            (
                "one chip".to_string(),
                format!("one {} chip has", target.name),
            )
        } else {
            (
                format!("{chips} chips"),
                format!("{chips} {} chips have", target.name),
            )
        };
        anyhow::bail!(
            "{shown}: the model does not fit on {on}: it needs at least {} bytes of MEM ({} bytes of weights, {} bytes of KV cache, {} bytes of other buffers); {have} {} bytes, so by MEM alone it needs at least {} chips",
            need.total(),
            need.weight_bytes,
            need.kv_bytes,
            need.other_bytes,
            u64::from(chips) * chip,
            need.total().div_ceil(chip)
        );
    }
    let ctx = q35_mlir::ir::int_attr(&module.as_operation(), q35_frontend::lpu_ops::CONTEXT_ATTR)
        .and_then(|c| u32::try_from(c).ok())
        .with_context(|| format!("{shown}: the lpu module has no context"))?;
    let (plan, shapes) = q35_mlir::lpu::plan::op_to_plan_shapes(
        &module.as_operation(),
        &q35_mlir::lpu::plan::ShapeOnly,
    )
    .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
    drop(module);
    let plan = plan
        .batched(batch)
        .map_err(|e| anyhow::anyhow!("cannot generate code for {shown}: {e}"))?;
    let bound = bound_of_shapes(&plan, &shapes, target);
    timings.mark("scheduling and code generation");
    bar.stage(format!(
        "splitting over {chips} chips and generating code (placeholder weights)"
    ));
    let opts = q35_codegen::partition::SystemOptions {
        split,
        placeholders: shapes,
        timing_only: true,
        max_weight_bytes: None,
        tensor,
    };
    let producer = format!("q35c {}", env!("CARGO_PKG_VERSION"));
    let encode = |c: &Compiled, chip: u32| -> anyhow::Result<q35_lpubin::Builder> {
        let mut b = c
            .built
            .program
            .to_lpubin(target, &producer)
            .with_context(|| format!("cannot encode chip {chip}'s program"))?;
        for (queue, index, label) in &c.built.debug {
            b.debug(*queue, *index, label.clone());
        }
        Ok(b)
    };
    let mut first: Option<Compiled> = None;
    let mut images: Vec<Vec<u8>> = Vec::new();
    let mut info = Vec::new();
    let mut symbols: Vec<Vec<String>> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let result = q35_codegen::partition::compile_system_with(
        &plan,
        target,
        chips,
        &opts,
        &mut |mut s, c| {
            bar.stage(format!(
                "chip {} of {chips} ({}): {} cycles",
                s.chip,
                s.describe(),
                c.built.cycles
            ));
            s.plan = q35_codegen::plan::Plan {
                ctx: s.plan.ctx,
                buffers: Vec::new(),
                weights: Default::default(),
                ops: Vec::new(),
                users: s.plan.users,
                attend: None,
            };
            let instructions = c.built.program.queues.values().map(Vec::len).sum::<usize>();
            info.push((s, c.built.cycles, c.mem_bytes, instructions));
            symbols.push(
                c.built
                    .program
                    .symbols
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
            );
            if first.is_none() {
                first = Some(c);
                return Ok(());
            }
            let chip = info.len() as u32 - 1;
            match encode(&c, chip).and_then(|b| {
                b.to_bytes()
                    .with_context(|| format!("cannot build chip {chip}'s .lpubin image"))
            }) {
                Ok(bytes) => {
                    images.push(bytes);
                    Ok(())
                }
                Err(e) => {
                    let message = e.to_string();
                    failure = Some(e);
                    Err(q35_codegen::plan::CodegenError::Plan {
                        op: format!("chip {chip}"),
                        message,
                    })
                }
            }
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    result.map_err(|e| anyhow::anyhow!("cannot split {shown} over {chips} chips: {e}"))?;
    drop(plan);
    timings.mark("encoding the programs");
    let first = first.with_context(|| format!("{shown}: no chip compiled"))?;
    let cycles = info.iter().map(|c| c.1).max().unwrap_or(0);
    let arch = &spec.arch;
    let meta = HostMeta {
        model: spec.name.clone(),
        vocab: arch.vocab,
        hidden: arch.hidden,
        blocks: arch.blocks,
        kv_dim: arch.kv_heads * arch.head_dim,
        ctx,
        bos: None,
        eos: None,
        add_bos: false,
        stop_tokens: None,
        chat_template: None,
        kv_junk_offset: u16::try_from(ctx.div_ceil(q35_codegen::program::LANES))
            .unwrap_or(u16::MAX),
        predicted_cycles_per_step: Some(cycles),
        golden: None,
        weights_hash: None,
        prefill: None,
        system: Some(q35_host::SystemMeta {
            chips: info
                .iter()
                .zip(&symbols)
                .map(|((st, cyc, mem, _), syms)| q35_host::ChipMeta {
                    chip: st.chip,
                    blocks: [st.blocks.start, st.blocks.end],
                    head: st.head,
                    part: st.part.clone(),
                    symbols: syms.clone(),
                    predicted_cycles: *cyc,
                    mem_bytes: *mem,
                })
                .collect(),
        }),
        timing_only: true,
        batch,
        buckets: Vec::new(),
    };
    let mut b = encode(&first, 0)?;
    b.metadata(meta.to_json());
    drop(first);
    let mut sys = q35_lpubin::SystemBuilder::new(&target.name, target.hash().0);
    sys.chip(
        b.to_bytes()
            .context("cannot build chip 0's .lpubin image")?,
    );
    for image in images {
        sys.chip(image);
    }
    drop(bar);
    timings.finish();
    Ok(TimingOnly {
        system: sys,
        ctx,
        chips: info,
        bound,
    })
}

/// [`q35_codegen::plan::bound`] of a plan whose weights are given by shape.
fn bound_of_shapes(
    plan: &q35_codegen::plan::Plan,
    shapes: &std::collections::BTreeMap<String, q35_codegen::partition::WeightShape>,
    target: &q35_target::Target,
) -> q35_codegen::plan::Bound {
    let shapes = shapes
        .iter()
        .map(|(n, s)| (n.clone(), (s.rows as u64, s.cols as u64, s.group as u64)))
        .collect();
    q35_codegen::plan::bound_with(plan, target, &shapes)
}
