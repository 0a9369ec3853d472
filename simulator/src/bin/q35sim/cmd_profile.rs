//! `q35sim profile FILE.lpubin [--json] [--trace F] [--report F] [--top N]
//! [--check]`: the profile of one run from the static schedule alone
//! (`q35_sim::schedule::walk`: no values, no arithmetic), and the
//! `--trace`/`--report` files shared with `run` ([`Outputs`]). `--check`
//! also runs the program once on the simulator (MEM as the binary holds
//! it) and fails unless the run's timeline, busy cycles and cycle count are
//! the static ones.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use q35_lpubin::LpuBinary;
use q35_sim::analysis::{Events, Labels, StepProfile, analyse_labelled};
use q35_sim::schedule::walk;
use q35_sim::trace::TraceStep;
use q35_sim::{Machine, MachineConfig};
use serde_json::{Value, json};

use crate::Failure;

/// `--trace`, `--report`, `--top`: what `run` and `profile` both write.
#[derive(Debug, Clone, clap::Args)]
pub struct Outputs {
    /// Write a Chrome/Perfetto trace (JSON) of the run's steps.
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
    /// Most steps in the trace (one process each).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub trace_steps: usize,
    /// Write a self-contained HTML report (timeline, utilisation, layers, roofline).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// A system's chip the report shows in detail (default: the busiest).
    #[arg(long, value_name = "N")]
    pub report_chip: Option<usize>,
    /// Ops and layers listed in the profile.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

impl Outputs {
    /// Whether a trace or report was asked for.
    pub fn files(&self) -> bool {
        self.trace.is_some() || self.report.is_some()
    }

    /// Whether the analysis keeps every issue: only a trace or report
    /// draws them.
    pub fn events(&self) -> Events {
        if self.files() {
            Events::Keep
        } else {
            Events::Drop
        }
    }

    /// [`Outputs::write`] for a system: one trace process per chip of
    /// `traced` (the first `--trace-steps`), with the link transfers
    /// between them; the report of the system `run` (`activities`: every
    /// chip's activity over the step) with `detail` (a chip and its
    /// analysis) in detail.
    #[expect(
        clippy::too_many_arguments,
        reason = "the trace's and the report's inputs"
    )]
    pub fn write_system(
        &self,
        config: &MachineConfig,
        title: &str,
        traced: &[TraceStep<'_>],
        received: &[&[q35_sim::link::Transfer]],
        run: &q35_sim::system::SystemRun,
        activities: &[q35_sim::analysis::Activity],
        detail: Option<(usize, &StepProfile)>,
        summary: &Value,
    ) -> anyhow::Result<()> {
        if let Some(path) = &self.trace {
            let mut v = q35_sim::trace::to_json(traced, config);
            q35_sim::trace::add_transfers(&mut v, received, traced.len(), config);
            write_atomic(path, serde_json::to_string(&v)?.as_bytes())?;
        }
        if let Some(path) = &self.report {
            let detail = detail.context("the report's detailed chip was not analysed")?;
            let html = q35_sim::report::system_to_html(title, run, activities, detail, summary);
            write_atomic(path, html.as_bytes())?;
        }
        Ok(())
    }

    /// Writes the trace of `steps` and the report of `report_step`.
    pub fn write(
        &self,
        config: &MachineConfig,
        title: &str,
        steps: &[TraceStep<'_>],
        report_step: &StepProfile,
        summary: &Value,
    ) -> anyhow::Result<()> {
        if self.report_chip.is_some() {
            anyhow::bail!("--report-chip goes with a system file (several chips)");
        }
        if let Some(path) = &self.trace {
            let v =
                q35_sim::trace::to_json(&steps[..steps.len().min(self.trace_steps.max(1))], config);
            write_atomic(path, serde_json::to_string(&v)?.as_bytes())?;
        }
        if let Some(path) = &self.report {
            let html = q35_sim::report::to_html(title, report_step, summary);
            write_atomic(path, html.as_bytes())?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file, so a failure leaves
/// no partial file.
fn write_atomic(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Arguments of `q35sim profile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The binary.
    file: PathBuf,
    /// Target description (default: the built-in lpu-v1).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Print the profile as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also run the program once and fail unless the run's timeline is the static one.
    #[arg(long)]
    check: bool,
    /// Profile this further program of the binary (`prefill`, or a
    /// context bucket such as `decode.64`) instead of the first (the
    /// whole-context decode step).
    #[arg(long, value_name = "NAME")]
    program: Option<String>,
    #[command(flatten)]
    outputs: Outputs,
}

/// Cycles per step at the target's clock, as tokens per second.
pub fn tokens_per_second(config: &MachineConfig, cycles: f64) -> f64 {
    if cycles > 0.0 {
        config.target.clock_mhz * 1e6 / cycles
    } else {
        0.0
    }
}

/// ` per user, a batch of B users: B T for the system` (empty for one
/// user).
pub fn batch_note(batch: u32, per_user: f64) -> String {
    if batch <= 1 {
        return String::new();
    }
    format!(
        " per user (a batch of {batch} users: {:.0} tokens/s for the system)",
        per_user * f64::from(batch)
    )
}

/// Profiles the binary statically.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = crate::target(args.target.as_ref())?;
    let name = args.file.display().to_string();
    if crate::cmd_system::is_system_file(&args.file)? {
        if args.check {
            return Err(anyhow!("{name}: --check is for single-chip binaries (`q35sim run --timing` and `run` give a system's two modes)").into());
        }
        return crate::cmd_system::profile(&args.file, config, args.json, &args.outputs);
    }
    let binary = LpuBinary::open(&args.file).map_err(anyhow::Error::from)?;
    let start = std::time::Instant::now();
    let bar = q35_host::bar::Bar::new(format!("profile {name}: "), "decoding", true);
    // Decoding the queues is all the walk needs: no MEM image (no values run).
    let (index, view) = match &args.program {
        None => (0, None),
        Some(p) => {
            let (i, v) = binary
                .programs()
                .enumerate()
                .find(|(_, v)| v.name() == p)
                .ok_or_else(|| {
                    let names: Vec<&str> = binary.programs().map(|v| v.name()).collect();
                    anyhow!(
                        "{name}: no program `{p}` (its further programs: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )
                })?;
            (i + 1, Some(v))
        }
    };
    let loaded = match &view {
        None => q35_sim::load::load(&binary, &config),
        Some(v) => q35_sim::load::load_program(&binary, v, &config),
    }
    .with_context(|| name.clone())?;
    bar.stage("walking the schedule");
    let debug = match &view {
        None => binary.debug(),
        Some(v) => v.debug(),
    };
    // The instructions' labels need no timeline: made beside the walk.
    let (walked, labels) = std::thread::scope(|s| {
        let labels = s.spawn(|| Labels::new(debug, &loaded));
        (walk(&loaded, &config), labels.join())
    });
    let timeline = match walked {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e}");
            return Err(Failure::Program);
        }
    };
    let labels = labels.map_err(|_| anyhow!("{name}: labelling the instructions failed"))?;
    bar.stage("attributing cycles");
    let step = analyse_labelled(labels, &loaded, &config, &timeline, args.outputs.events());
    let seconds = start.elapsed().as_secs_f64();
    if args.check {
        bar.stage("--check: running the program once");
        let mut m = Machine::new(&binary, config.clone()).with_context(|| name.clone())?;
        m.set_program(index).map_err(|e| anyhow!("{name}: {e}"))?;
        m.set_record(true);
        if let Err(e) = m.run_once() {
            eprintln!("{name}: --check: the run stopped: {e:?}");
            return Err(Failure::Program);
        }
        let run = &m
            .recorded()
            .ok_or_else(|| anyhow!("nothing recorded"))?
            .timelines[0];
        if run != &timeline {
            eprintln!(
                "{name}: --check: the static timeline ({} cycles, {} issues) differs from the run's ({} cycles, {} issues)",
                timeline.profile.total_cycles(),
                timeline.issues.len(),
                run.profile.total_cycles(),
                run.issues.len()
            );
            return Err(Failure::Program);
        }
    }
    let tps = tokens_per_second(&config, step.total_cycles as f64);
    // A batched decode program serves `batch` users a step.
    let batch = match &args.program {
        None => q35_host::HostMeta::from_binary(&binary).map_or(1, |m| m.batch),
        Some(_) => 1,
    };
    let summary = json!({
        "file": name,
        "target": config.target_name,
        "clock_mhz": config.target.clock_mhz,
        "cycles_per_step": step.total_cycles,
        "instructions_per_step": step.instructions,
        "tokens_per_second_at_clock": tps,
        "batch": batch,
        "system_tokens_per_second_at_clock": tps * f64::from(batch),
        "program": args.program.as_deref().unwrap_or("decode"),
        "predicted_cycles_per_step": q35_host::HostMeta::from_binary(&binary).ok().and_then(|m| match &args.program {
            None => m.predicted_cycles_per_step,
            Some(p) => match m.prefill.filter(|f| &f.program == p) {
                Some(f) => f.predicted_cycles,
                None => m.buckets.into_iter().find(|b| &b.program == p).and_then(|b| b.predicted_cycles),
            },
        }),
        "checked_against_a_run": args.check,
    });
    if args.outputs.files() {
        bar.stage("writing the trace and report");
    }
    args.outputs
        .write(
            &config,
            &format!("q35sim profile {name}"),
            &[TraceStep {
                step: &step,
                name: format!("{name}: one step (static schedule)"),
                offset: 0,
            }],
            &step,
            &summary,
        )
        .map_err(Failure::Input)?;
    drop(bar);
    let mut text = String::new();
    if args.json {
        let mut v = summary.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("step".into(), step.to_json(args.outputs.top));
            o.insert("profile_seconds".into(), json!(seconds));
        }
        text = serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)? + "\n";
    } else {
        text.push_str(&format!(
            "{name}: {} cycles per step ({} instructions), {:.0} tokens/s{} at {} MHz (static schedule, {:.3}s{})",
            step.total_cycles,
            step.instructions,
            tps,
            batch_note(batch, tps),
            config.target.clock_mhz,
            seconds,
            if args.check { "; equal to a run" } else { "" }
        ));
        text.push('\n');
        text.push_str(&step.to_text(args.outputs.top));
    }
    use std::io::Write as _;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}
