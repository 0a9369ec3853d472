//! `q35sim run FILE.lpubin --prompt TEXT` (or `--tokens 1,2,3`): generate
//! text with a compiled model on the simulator through the host runtime
//! (`q35_host::Session` driving a `q35_sim::Machine`).
//!
//! The binary carries everything: metadata, tokenizer, chat template and
//! embedding. Text streams to stdout as tokens come (control tokens are not
//! shown); then one line per run of the program with its cycles (and the
//! compile-time prediction when the metadata has one). `--json` prints one
//! object with the token ids, the text and the cycles instead. `--check`
//! builds the golden model from the model.toml the metadata records (or
//! `--model`) and compares logits and the KV cache after every run, bit for
//! bit; with it, a simulated cycle count other than the predicted one is an
//! error too. Prefill is one run per prompt token.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use q35_host::golden::{GoldenRecipe, build_with_progress};
use q35_host::{Checker, DeviceError, HostError, Session};
use q35_lpubin::LpuBinary;
use q35_reference::{GenerateOptions, SamplingParams, StopReason};
use q35_sim::{Machine, MachineConfig};
use q35_tokenizer::StreamDecoder;
use serde_json::json;

use crate::Failure;
use q35_sim::analysis::{StepProfile, analyse_events};
use q35_sim::trace::TraceStep;

/// The run's profile as text: totals, then the shown step's profile.
fn profile_text(summary: &serde_json::Value, step: Option<&StepProfile>, top: usize) -> String {
    let g = |k: &str| summary[k].as_f64().unwrap_or(0.0);
    let mut out = format!(
        "profile: {} cycles in all; prefill {} cycles ({} runs, {:.0} per prompt token); decode {} cycles ({} runs, {:.0} per token): {:.0} tokens/s decode, {:.0} tokens/s prefill at {} MHz\n",
        g("total_cycles"),
        g("prefill_cycles"),
        g("prefill_runs"),
        g("prefill_cycles_per_token"),
        g("decode_cycles"),
        g("decode_runs"),
        g("decode_cycles_per_token"),
        g("decode_tokens_per_second_at_clock"),
        g("prefill_tokens_per_second_at_clock"),
        g("clock_mhz"),
    );
    out.push_str(&format!(
        "achieved against the machine's bound for the same work: prefill {:.1}% ({:.0} bound cycles), decode {:.1}% ({:.0} bound cycles)\n",
        100.0 * g("prefill_achieved"),
        g("prefill_bound_cycles"),
        100.0 * g("decode_achieved"),
        g("decode_bound_cycles"),
    ));
    if let Some(step) = step {
        out.push_str(&format!(
            "one step ({} of the {} runs' schedules are distinct; `q35sim profile` gives the same from the binary):\n",
            g("distinct_step_schedules"),
            g("prefill_runs") + g("decode_runs"),
        ));
        out.push_str(&step.to_text(top));
    }
    out
}

/// The bar over a generation, when it does not mix with the text: the text
/// streams to stdout as tokens come, so on a terminal that streaming is
/// the progress; with `--json`, or stdout redirected, a bar on stderr (a
/// terminal) counts the tokens.
fn generation_bar(name: &str, json_out: bool, prompt: usize) -> Option<q35_host::bar::Bar> {
    use std::io::IsTerminal;
    if !json_out && std::io::stdout().is_terminal() {
        return None;
    }
    let bar = q35_host::bar::Bar::new(
        format!("run {name}: "),
        format!("prefill: {prompt} prompt tokens"),
        true,
    );
    Some(bar)
}

/// The machine's bound for the work of every prefill run and of every
/// decode run (each run's step profile's bound, summed by the phase the
/// host tagged it with).
fn phase_bounds(
    steps: &[q35_host::StepRecord],
    runs: &[usize],
    profiles: &[StepProfile],
) -> [f64; 2] {
    let mut out = [0.0; 2];
    for (s, &t) in steps.iter().zip(runs) {
        if let Some(p) = profiles.get(t) {
            out[usize::from(!s.prefill)] += p.bound_cycles;
        }
    }
    out
}

/// The generation arguments of `q35sim run`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Generate after this prompt (needs a compiled model with a tokenizer).
    #[arg(long, conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Generate after these comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// A batched binary (`q35c compile --batch B`): the users' prompts, one
    /// a line (user u takes line u; the lines repeat when the users
    /// outnumber them). `--prompt` gives every user the same prompt.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "tokens"])]
    pub prompts: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Apply the chat template: the prompt is the user's message.
    #[arg(long, requires = "prompt")]
    pub chat: bool,
    /// A system message for `--chat` (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
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
    /// Run the golden model beside the simulator and stop at the first
    /// difference in the logits or the KV cache (and at a cycle count other
    /// than the predicted one).
    #[arg(long)]
    pub check: bool,
    /// The model.toml to build the golden model from (default: the one the
    /// metadata records).
    #[arg(long, requires = "check")]
    pub model: Option<PathBuf>,
    /// The calibration text for the golden model (default: the metadata's).
    #[arg(long, requires = "check")]
    pub calib: Option<PathBuf>,
    /// How runs execute: `replay` records the first run and replays it
    /// (same bits, cycles and hazards; docs/simulator-speed.md), `exact`
    /// runs every step on the event-driven engine.
    #[arg(long, value_enum, default_value_t = Engine::Replay)]
    pub engine: Engine,
    /// Run every prompt token on the decode program, even when the binary
    /// has a prefill program (same tokens and logits, more cycles).
    #[arg(long)]
    pub no_prefill: bool,
    /// Run every decode step on the whole-context program, even when the
    /// binary has context buckets (same tokens and logits, more cycles).
    #[arg(long)]
    pub no_buckets: bool,
}

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Every run on the event-driven engine.
    Exact,
    /// The first run on the engine, recorded; the others replayed.
    Replay,
    /// Every run on the engine and on the replay, compared (a test mode).
    Verify,
}

impl GenArgs {
    /// Whether a generation was asked for.
    pub fn wanted(&self) -> bool {
        self.prompt.is_some() || self.tokens.is_some() || self.prompts.is_some()
    }
}

fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// A host error as a failure: the program's fault (a hazard, a `--check`
/// difference) exits 1, bad input 2.
pub(crate) fn failure(name: &str, e: HostError) -> Failure {
    match e {
        HostError::Device(DeviceError::Run(_)) | HostError::Check(_) => {
            eprintln!("{name}: {e}");
            Failure::Program
        }
        other => Failure::Input(anyhow!("{name}: {other}")),
    }
}

/// How a run is named in the step list and the trace.
fn step_name(i: usize, s: &q35_host::StepRecord) -> String {
    if s.chunk {
        format!(
            "step {i}: prefill {} tokens (first {}) at positions {}..={}",
            s.tokens,
            s.token,
            s.pos,
            s.pos + s.tokens - 1
        )
    } else {
        format!(
            "step {i}: {} token {} at position {}{}",
            if s.prefill { "prefill" } else { "decode" },
            s.token,
            s.pos,
            match s.bucket {
                Some(b) => format!(" (bucket < {b})"),
                None => String::new(),
            }
        )
    }
}

/// The program a run took (a prefill chunk's, a context bucket's by its
/// name in the binary, or the whole-context decode program).
pub(crate) fn program_name(meta: &q35_host::HostMeta, chunk: bool, bucket: Option<u32>) -> &str {
    match (chunk, bucket.and_then(|b| meta.bucket(b))) {
        (true, _) => "prefill",
        (false, Some(b)) => &b.program,
        (false, None) => "decode",
    }
}

/// Each step's line (its cycles against `predicted`'s) and, with
/// `check`, the line saying the golden model agreed: the text output of a
/// chip's run and of a system's.
fn write_steps(
    out: &mut impl Write,
    steps: &[q35_host::StepRecord],
    predicted: impl Fn(&q35_host::StepRecord) -> Option<u64>,
    check: bool,
) -> std::io::Result<()> {
    for (i, s) in steps.iter().enumerate() {
        let pred = match predicted(s) {
            Some(p) if p == s.stats.cycles => format!(" (predicted {p})"),
            Some(p) => format!(" (predicted {p}: DIFFERS)"),
            None => String::new(),
        };
        writeln!(out, "{}: {} cycles{pred}", step_name(i, s), s.stats.cycles)?;
    }
    if check {
        writeln!(
            out,
            "check: {} runs, logits and KV cache equal to the golden model bit for bit",
            steps.len()
        )?;
    }
    Ok(())
}

/// Generates with the compiled model in `binary`.
pub fn run(
    name: &str,
    binary: &LpuBinary,
    config: MachineConfig,
    max_cycles: Option<u64>,
    json_out: bool,
    args: &GenArgs,
    outputs: &crate::cmd_profile::Outputs,
) -> Result<(), Failure> {
    let mut machine = Machine::new(binary, config.clone()).with_context(|| name.to_string())?;
    machine.set_max_cycles(max_cycles);
    // The profile's timelines, the replay's not kept twice.
    machine.set_record_lean(true);
    machine.set_mode(match args.engine {
        Engine::Exact => q35_sim::EngineMode::Exact,
        Engine::Replay => q35_sim::EngineMode::Replay,
        Engine::Verify => q35_sim::EngineMode::Verify,
    });
    if crate::cmd_batch::is_batched(binary) {
        if outputs.files() {
            return Err(anyhow!(
                "{name}: --trace/--report of a batched binary: `q35sim profile {name}` (its runs share one schedule)"
            )
            .into());
        }
        let session = q35_host::BatchSession::new(machine, binary).map_err(|e| failure(name, e))?;
        return crate::cmd_batch::run(name, session, &config, json_out, args, 1);
    }
    crate::cmd_batch::refuse_prompts(name, args)?;
    let mut session = Session::new(machine, binary).map_err(|e| failure(name, e))?;
    if args.no_prefill {
        session.set_prefill(false);
    }
    if args.no_buckets {
        session.set_buckets(false);
    }
    let (meta, prompt_text, prompt, options) = prepare(name, &mut session, args)?;

    let tokenizer = session.shared_tokenizer();
    let mut decoder = StreamDecoder::new();
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let bar = generation_bar(name, json_out, prompt.len());
    let mut generated = 0usize;
    let generation = session.generate(&prompt, &options, |tok| {
        generated += 1;
        if let Some(b) = &bar {
            b.items(
                generated,
                args.max_tokens,
                &format!("tokens generated (last {tok})"),
            );
        }
        let piece = match &tokenizer {
            Some(t) if t.is_control(tok) => String::new(),
            Some(t) => decoder.push(t, tok),
            None => format!("{tok} "),
        };
        text.push_str(&piece);
        if !json_out
            && let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush())
        {
            write_err = Some(e);
            return false;
        }
        true
    });
    drop(bar);
    if let Some(e) = write_err {
        return Err(anyhow::Error::from(e)
            .context("cannot write to stdout")
            .into());
    }
    let generation = match generation {
        Ok(g) => g,
        Err(e) => {
            if !json_out {
                let _ = writeln!(stdout);
            }
            return Err(failure(name, e));
        }
    };
    let tail = decoder.finish();
    text.push_str(&tail);
    let predicted = meta.predicted_cycles_per_step;
    let chunk_predicted = meta.prefill.as_ref().and_then(|p| p.predicted_cycles);
    let predicted_of = |s: &q35_host::StepRecord| match (s.chunk, s.bucket) {
        (true, _) => chunk_predicted,
        (false, Some(b)) => meta.bucket(b).and_then(|m| m.predicted_cycles),
        (false, None) => predicted,
    };
    let stop = match generation.stop {
        StopReason::StopToken(_) => "eos",
        other => other.as_str(),
    };
    let off_prediction = first_off_prediction(
        generation
            .steps
            .iter()
            .map(|s| (s.stats.cycles, predicted_of(s))),
    );
    // The profile: every run's timeline was recorded (a compiled model's
    // runs share one schedule, so usually one distinct timeline).
    // MEM and the replay are freed before the analysis allocates.
    let replayed = session.device().replayed();
    let ctx = session.ctx();
    let prefill_tokens = session.prefill_tokens();
    let (programs, recorded) = session.into_device().into_recorded();
    let recorded = recorded.unwrap_or_default();
    let step_profiles: Vec<StepProfile> = recorded
        .timelines
        .iter()
        .zip(&recorded.programs)
        .map(|(t, &p)| {
            let debug = match p {
                0 => binary.debug(),
                i => binary.programs().nth(i - 1).and_then(|v| v.debug()),
            };
            analyse_events(
                debug,
                &programs[p.min(programs.len() - 1)],
                &config,
                t,
                outputs.events(),
            )
        })
        .collect();
    let cycles = |prefill: bool| -> (u64, u64) {
        let s = generation.steps.iter().filter(|s| s.prefill == prefill);
        (s.clone().map(|s| s.stats.cycles).sum(), s.count() as u64)
    };
    let (prefill_cycles, prefill_runs) = cycles(true);
    let (decode_cycles, decode_runs) = cycles(false);
    let per = |c: u64, n: u64| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    let decode_per_token = per(decode_cycles, decode_runs);
    // Per prompt token, whatever number of runs prefill took.
    let prefill_per_token = per(prefill_cycles, generation.prompt_tokens as u64);
    let bounds = phase_bounds(&generation.steps, &recorded.runs, &step_profiles);
    let summary = json!({
        "total_cycles": prefill_cycles + decode_cycles,
        "prefill_cycles": prefill_cycles,
        "prefill_runs": prefill_runs,
        "prefill_cycles_per_token": prefill_per_token,
        "decode_cycles": decode_cycles,
        "decode_runs": decode_runs,
        "decode_cycles_per_token": decode_per_token,
        "clock_mhz": config.target.clock_mhz,
        "decode_tokens_per_second_at_clock": crate::cmd_profile::tokens_per_second(&config, decode_per_token),
        "prefill_tokens_per_second_at_clock": crate::cmd_profile::tokens_per_second(&config, prefill_per_token),
        "distinct_step_schedules": recorded.timelines.len(),
        "prefill_bound_cycles": bounds[0],
        "prefill_achieved": if prefill_cycles == 0 { 0.0 } else { bounds[0] / prefill_cycles as f64 },
        "decode_bound_cycles": bounds[1],
        "decode_achieved": if decode_cycles == 0 { 0.0 } else { bounds[1] / decode_cycles as f64 },
    });
    // The step shown: the last decode run's (else the last run's).
    let shown = generation
        .steps
        .iter()
        .rposition(|s| !s.prefill)
        .or(generation.steps.len().checked_sub(1))
        .and_then(|i| recorded.runs.get(i).copied())
        .and_then(|i| step_profiles.get(i));
    if let Some(step) = shown {
        let mut offset = 0;
        let trace_steps: Vec<TraceStep<'_>> = generation
            .steps
            .iter()
            .zip(&recorded.runs)
            .enumerate()
            .map(|(i, (s, &t))| {
                let ts = TraceStep {
                    step: &step_profiles[t],
                    name: step_name(i, s),
                    offset,
                };
                offset += s.stats.cycles;
                ts
            })
            .collect();
        outputs
            .write(
                &config,
                &format!("q35sim run {name}"),
                &trace_steps,
                step,
                &summary,
            )
            .map_err(Failure::Input)?;
    }
    let io = |e: std::io::Error| {
        Failure::Input(anyhow::Error::from(e).context("cannot write to stdout"))
    };
    if json_out {
        let steps: Vec<serde_json::Value> = generation
            .steps
            .iter()
            .map(|s| {
                json!({
                    "token": s.token,
                    "pos": s.pos,
                    "tokens": s.tokens,
                    "program": program_name(&meta, s.chunk, s.bucket),
                    "prefill": s.prefill,
                    "cycles": s.stats.cycles,
                    "instructions": s.stats.instructions,
                })
            })
            .collect();
        let v = json!({
            "file": name,
            "model": meta.model,
            "mode": if args.chat { "chat" } else if args.tokens.is_some() { "tokens" } else { "text" },
            "prompt": prompt_text,
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": tokenizer.as_ref().map(|_| text.clone()),
            "stop_reason": stop,
            "sampling": {
                "temperature": shortest(args.temperature),
                "top_k": args.top_k,
                "top_p": shortest(args.top_p),
                "seed": args.seed,
            },
            "context": ctx,
            "predicted_cycles_per_step": predicted,
            "total_cycles": generation.steps.iter().map(|s| s.stats.cycles).sum::<u64>(),
            "steps": steps,
            "checked": args.check,
            "profile": {
                "run": summary,
                "step": shown.map(|s| s.to_json(outputs.top)),
            },
        });
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
        )
        .map_err(io)?;
    } else {
        write!(stdout, "{tail}").map_err(io)?;
        writeln!(stdout).map_err(io)?;
        let prefill_runs = generation.steps.iter().filter(|s| s.prefill).count();
        let mut how = match prefill_tokens {
            Some(n) => format!("the prefill program takes {n} tokens a run"),
            None if meta.prefill.is_some() => "--no-prefill: one run per prompt token".into(),
            None => "no prefill program: one run per prompt token".into(),
        };
        let bucketed = generation
            .steps
            .iter()
            .filter(|s| s.bucket.is_some())
            .count();
        if !meta.buckets.is_empty() {
            how.push_str(&if args.no_buckets {
                "; --no-buckets: every step on the whole-context program".to_string()
            } else {
                format!(
                    "; {bucketed} runs on context buckets ({})",
                    meta.buckets
                        .iter()
                        .map(|b| format!("< {}", b.positions))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
        writeln!(
            stdout,
            "[{} prompt tokens in {prefill_runs} runs ({how}), {} generated, stop: {stop}; {} runs]",
            generation.prompt_tokens,
            generation.tokens.len(),
            generation.steps.len()
        )
        .map_err(io)?;
        write_steps(&mut stdout, &generation.steps, predicted_of, args.check).map_err(io)?;
        if args.engine == Engine::Verify {
            let (verified, faulted) = replayed;
            writeln!(
                stdout,
                "verify: {verified} runs replayed beside the engine ({faulted} handed to it on a fault): every MEM byte and the counters equal"
            )
            .map_err(io)?;
        }
        write!(stdout, "{}", profile_text(&summary, shown, outputs.top)).map_err(io)?;
    }
    if args.check
        && let Some((i, got, want)) = off_prediction
    {
        eprintln!(
            "{name}: check failed: step {i} took {got} cycles, the compiler predicted {want}"
        );
        return Err(Failure::Program);
    }
    Ok(())
}

/// The prompt's text (if given as text) and its token ids, checked against
/// the context.
/// What a generation on any device starts with: the binary's metadata, the
/// prompt (its text, if given as text, and its tokens), the golden model's
/// checker installed when `--check` asks for one, and the options of the
/// token loop.
fn prepare<D: q35_host::Device>(
    name: &str,
    session: &mut Session<D>,
    args: &GenArgs,
) -> Result<
    (
        q35_host::HostMeta,
        Option<String>,
        Vec<u32>,
        GenerateOptions,
    ),
    Failure,
> {
    let meta = session.meta().clone();
    let (prompt_text, prompt) = prompt_of(name, session, args)?;
    if args.check {
        let checker = checker_for(name, &meta, session.ctx(), args)?;
        session.set_checker(checker);
    }
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_tokens: meta.stop_tokens(),
    };
    Ok((meta, prompt_text, prompt, options))
}

pub(crate) fn prompt_of<D: q35_host::Device>(
    name: &str,
    session: &mut Session<D>,
    args: &GenArgs,
) -> Result<(Option<String>, Vec<u32>), Failure> {
    let (prompt_text, prompt) = match (&args.tokens, &args.prompt) {
        (Some(ids), _) => (None, ids.clone()),
        (None, Some(text)) => {
            if text.is_empty() {
                return Err(anyhow!("the prompt is empty").into());
            }
            let (t, ids) = session
                .prompt_tokens(text, args.chat, args.system.as_deref())
                .map_err(|e| failure(name, e))?;
            (Some(t), ids)
        }
        (None, None) => return Err(anyhow!("no prompt: give --prompt or --tokens").into()),
    };
    if prompt.len() > session.ctx() {
        return Err(failure(
            name,
            HostError::PromptTooLong {
                tokens: prompt.len(),
                ctx: session.ctx(),
            },
        ));
    }
    Ok((prompt_text, prompt))
}

/// `--check`'s golden model, rebuilt from the recipe the metadata records
/// (or `--model`, `--calib`).
pub(crate) fn checker_for(
    name: &str,
    meta: &q35_host::HostMeta,
    ctx: usize,
    args: &GenArgs,
) -> Result<Checker, Failure> {
    let recipe_meta = meta.golden.clone();
    let model_toml = match (&args.model, &recipe_meta) {
        (Some(m), _) => m.clone(),
        (None, Some(r)) => PathBuf::from(&r.model_toml),
        (None, None) => {
            return Err(anyhow!(
                "{name}: the metadata does not say which model.toml the program was compiled from; give --model"
            )
            .into());
        }
    };
    let recipe = GoldenRecipe {
        model_toml,
        calib: args.calib.clone().or_else(|| {
            recipe_meta
                .as_ref()
                .and_then(|r| r.calib.clone().map(PathBuf::from))
        }),
        calib_ctx: recipe_meta.as_ref().map_or(512, |r| r.calib_ctx),
        calib_samples: recipe_meta
            .as_ref()
            .map_or(q35_host::golden::CALIB_SAMPLES, |r| r.calib_samples),
        positions: ctx,
        threads: 2,
    };
    let bar = q35_host::bar::Bar::new(
        format!("--check {}: ", recipe.model_toml.display()),
        "building the golden model",
        true,
    );
    let built = build_with_progress(&recipe, &|p| bar.report(p))
        .context("cannot build the golden model for --check")?;
    drop(bar);
    if let Some(w) = built.cache.warning() {
        eprintln!("q35sim: warning: {w}");
    }
    Checker::new(built.golden, meta).map_err(|e| failure(name, e))
}

/// Generates with a model split over a system of chips (docs/backend.md
/// 8): the host's sections are chip 0's, the token loop drives a
/// [`q35_sim::SystemDevice`] (every chip in lockstep, `threads` host
/// threads). Prints the text, one line per run with its cycles and the
/// prediction, `--check`'s verdict, and the last run's per-chip profile
/// and link use.
pub fn run_system(
    name: &str,
    chips: &[&LpuBinary],
    config: MachineConfig,
    threads: usize,
    max_cycles: Option<u64>,
    json_out: bool,
    args: &GenArgs,
) -> Result<(), Failure> {
    let host = chips
        .first()
        .ok_or_else(|| anyhow!("{name}: a system of no chips"))?;
    let topology = config
        .target
        .system(chips.len() as u32)
        .with_context(|| name.to_string())?;
    let mut device =
        q35_sim::SystemDevice::new(chips, config.clone()).with_context(|| name.to_string())?;
    device.system_mut().set_threads(threads);
    device.system_mut().set_max_cycles(max_cycles);
    if crate::cmd_batch::is_batched(host) {
        let session =
            q35_host::BatchSession::new_on(device, host, chips).map_err(|e| failure(name, e))?;
        return crate::cmd_batch::run(name, session, &config, json_out, args, chips.len());
    }
    crate::cmd_batch::refuse_prompts(name, args)?;
    let mut session = Session::new_on(device, host, chips).map_err(|e| failure(name, e))?;
    let (meta, prompt_text, prompt, options) = prepare(name, &mut session, args)?;
    let tokenizer = session.shared_tokenizer();
    let mut decoder = StreamDecoder::new();
    let mut text = String::new();
    let generation = session.generate(&prompt, &options, |tok| {
        let piece = match &tokenizer {
            Some(t) if t.is_control(tok) => String::new(),
            Some(t) => decoder.push(t, tok),
            None => format!("{tok} "),
        };
        text.push_str(&piece);
        true
    });
    let generation = generation.map_err(|e| failure(name, e))?;
    text.push_str(&decoder.finish());
    let predicted = meta.predicted_cycles_per_step;
    let off_prediction =
        first_off_prediction(generation.steps.iter().map(|s| (s.stats.cycles, predicted)));
    let stop = match generation.stop {
        StopReason::StopToken(_) => "eos",
        other => other.as_str(),
    };
    let last = session.device().last_run().cloned();
    let io = |e: std::io::Error| {
        Failure::Input(anyhow::Error::from(e).context("cannot write to stdout"))
    };
    let mut stdout = std::io::stdout().lock();
    if json_out {
        let v = json!({
            "file": name,
            "model": meta.model,
            "chips": chips.len(),
            "prompt": prompt_text,
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": tokenizer.as_ref().map(|_| text.clone()),
            "stop_reason": stop,
            "context": session.ctx(),
            "predicted_cycles_per_step": predicted,
            "total_cycles": generation.steps.iter().map(|s| s.stats.cycles).sum::<u64>(),
            "steps": generation.steps.iter().map(|s| json!({
                "token": s.token,
                "pos": s.pos,
                "prefill": s.prefill,
                "cycles": s.stats.cycles,
                "instructions": s.stats.instructions,
            })).collect::<Vec<_>>(),
            "checked": args.check,
            "last_run": last.as_ref().map(q35_sim::SystemRun::to_json),
        });
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
        )
        .map_err(io)?;
    } else {
        writeln!(stdout, "{text}").map_err(io)?;
        writeln!(
            stdout,
            "[{} prompt tokens in {} runs (a system: one run per prompt token), {} generated, stop: {stop}; {} runs on {} chips]",
            generation.prompt_tokens,
            generation.steps.iter().filter(|s| s.prefill).count(),
            generation.tokens.len(),
            generation.steps.len(),
            chips.len()
        )
        .map_err(io)?;
        write_steps(&mut stdout, &generation.steps, |_| predicted, args.check).map_err(io)?;
        if let Some(run) = &last {
            writeln!(stdout, "last run, per chip:").map_err(io)?;
            write!(stdout, "{}", crate::cmd_system::text(run, &topology, false)).map_err(io)?;
        }
    }
    if args.check
        && let Some((i, got, want)) = off_prediction
    {
        eprintln!(
            "{name}: check failed: step {i} took {got} cycles, the compiler predicted {want}"
        );
        return Err(Failure::Program);
    }
    Ok(())
}

/// The first run whose cycles differ from the compile-time prediction, as
/// (run, cycles, predicted), of `runs`' (cycles, prediction if any).
pub(crate) fn first_off_prediction(
    runs: impl IntoIterator<Item = (u64, Option<u64>)>,
) -> Option<(usize, u64, u64)> {
    runs.into_iter()
        .enumerate()
        .find_map(|(i, (got, want))| match want {
            Some(p) if p != got => Some((i, got, p)),
            _ => None,
        })
}
