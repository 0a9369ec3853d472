//! `q35sim run FILE.lpubin [--target FILE] [--dump SYMBOL]... [--json]
//! [--max-cycles N]`: run to the end and report cycles, per-unit busy
//! cycles with utilisation, instruction counts and the dumped symbols; a
//! hazard prints `FILE: cycle C: queue Q, instruction #I `asm`: <hazard>
//! (source: op)` and exits 1.
//!
//! With `--prompt TEXT` or `--tokens IDS` the binary must be a compiled
//! model: generation runs through the host runtime instead
//! ([`crate::cmd_generate`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use q35_lpubin::LpuBinary;
use q35_sim::dump::{Dumped, read_symbol};
use q35_sim::{Finished, Profile, Stop};
use serde_json::json;

use crate::Failure;

/// Arguments of `q35sim run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The binary.
    file: PathBuf,
    /// Target description (default: the built-in lpu-v1).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Print this symbol's values after the run (repeatable).
    #[arg(long = "dump", value_name = "SYMBOL")]
    dumps: Vec<String>,
    /// Print everything as one JSON object.
    #[arg(long)]
    json: bool,
    /// Stop with an error when the program runs past this cycle.
    #[arg(long, value_name = "N")]
    max_cycles: Option<u64>,
    /// A system file: host threads to run its chips on (default: the
    /// host's cores; results do not depend on it).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// A system file: the static schedules only, no values (fast).
    #[arg(long)]
    timing: bool,
    #[command(flatten)]
    generate: crate::cmd_generate::GenArgs,
    #[command(flatten)]
    outputs: crate::cmd_profile::Outputs,
}

/// Runs the program.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = crate::target(args.target.as_ref())?;
    let name = args.file.display().to_string();
    if crate::cmd_system::is_system_file(&args.file)? {
        if crate::cmd_system::is_timing_only(&args.file)? {
            // Compiled from a model with no weights: its programs run
            // their static schedules only.
            if args.generate.wanted() || !args.dumps.is_empty() {
                return Err(anyhow!(
                    "{name}: a timing-only system (compiled from a model with no weights, [weights] source = \"none\"): it has no weights to generate text, --check or --dump with; `q35sim run {name}` gives its cycles per token"
                )
                .into());
            }
            if args.outputs.files() {
                return Err(
                    anyhow!("{name}: --trace/--report of a system: `q35sim profile`").into(),
                );
            }
            return crate::cmd_system::run(
                &args.file,
                config,
                args.threads,
                true,
                args.max_cycles,
                args.json,
                &[],
            );
        }
        if args.generate.wanted() && !args.timing && args.dumps.is_empty() && !args.outputs.files()
        {
            // A compiled model split over the chips (q35c compile --chips N).
            return crate::cmd_system::generate(
                &args.file,
                config,
                args.threads,
                args.max_cycles,
                args.json,
                &args.generate,
            );
        }
        if args.generate.wanted() || args.outputs.files() {
            return Err(anyhow!(
                "{name}: a system file generates with --prompt/--tokens (and --threads, --json, --max-cycles, --check), or runs once with --threads, --timing, --dump CHIP:SYMBOL, --json and --max-cycles (--trace/--report: `q35sim profile`)"
            )
            .into());
        }
        return crate::cmd_system::run(
            &args.file,
            config,
            args.threads,
            args.timing,
            args.max_cycles,
            args.json,
            &args.dumps,
        );
    }
    if args.threads.is_some() || args.timing {
        return Err(anyhow!("{name}: --threads and --timing are for system files").into());
    }
    let binary = LpuBinary::open(&args.file).map_err(anyhow::Error::from)?;
    if args.generate.wanted() {
        if !args.dumps.is_empty() {
            return Err(anyhow!(
                "--dump shows one run of a bare program; it does not go with --prompt or --tokens"
            )
            .into());
        }
        return crate::cmd_generate::run(
            &name,
            &binary,
            config,
            args.max_cycles,
            args.json,
            &args.generate,
            &args.outputs,
        );
    }
    // Symbols are checked before the run, so a typo costs nothing.
    let symbols = args
        .dumps
        .iter()
        .map(|s| {
            binary.symbol(s).cloned().ok_or_else(|| {
                let known: Vec<&str> = binary.symbols().iter().map(|s| s.name.as_str()).collect();
                anyhow!(
                    "{name}: no symbol `{s}` (symbols: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut machine =
        q35_sim::Machine::new(&binary, config.clone()).with_context(|| name.clone())?;
    machine.set_max_cycles(args.max_cycles);
    machine.set_record(args.outputs.files());
    let run = machine
        .run_once()
        .map(|profile| (profile, machine.recorded().cloned()));
    let finished = match run {
        Ok((profile, recorded)) => {
            if let Some(t) = recorded.as_ref().and_then(|r| r.timelines.first()) {
                let step = q35_sim::analysis::analyse(&binary, machine.loaded(), &config, t);
                let summary = json!({
                    "file": name,
                    "cycles": step.total_cycles,
                    "instructions": step.instructions,
                    "clock_mhz": config.target.clock_mhz,
                });
                args.outputs
                    .write(
                        &config,
                        &format!("q35sim run {name}"),
                        &[q35_sim::trace::TraceStep {
                            step: &step,
                            name: format!("{name}: run"),
                            offset: 0,
                        }],
                        &step,
                        &summary,
                    )
                    .map_err(Failure::Input)?;
            }
            Finished {
                profile,
                state: machine.into_state(),
            }
        }
        Err(Stop::Hazard(h)) => {
            eprintln!("{name}: {h}");
            return Err(Failure::Program);
        }
        Err(Stop::MaxCycles { limit, next }) => {
            eprintln!(
                "{name}: stopped: the next event is on cycle {next}, past --max-cycles {limit}"
            );
            return Err(Failure::Program);
        }
    };
    let dumped = symbols
        .iter()
        .map(|s| read_symbol(&finished.state, s))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| name.clone())?;
    if args.json {
        println!("{}", to_json(&name, &finished, &dumped));
    } else {
        print!("{}", to_text(&finished.profile, &dumped));
    }
    Ok(())
}

fn to_text(p: &Profile, dumped: &[Dumped]) -> String {
    let mut out = String::new();
    let total = p.total_cycles();
    let _ = writeln!(
        out,
        "cycles: {total} (last event on cycle {} of superlane 0, + {} superlane skew)",
        p.last_cycle(),
        total - p.last_cycle()
    );
    let _ = writeln!(
        out,
        "instructions: {} ({})",
        p.instructions(),
        p.mnemonic_counts()
    );
    let _ = writeln!(out, "busy cycles (utilisation of {total} cycles):");
    for (group, units) in p.groups() {
        let busy: u64 = units.iter().map(|(_, b)| b).sum();
        if let [(q, b)] = units.as_slice()
            && group.starts_with("MXM")
        {
            let _ = writeln!(out, "  MXM {q}: {b} ({:.1}%)", p.percent(*b));
            continue;
        }
        let _ = write!(out, "  {group}: {busy}");
        if units.is_empty() {
            let _ = writeln!(out);
            continue;
        }
        let list: Vec<String> = units
            .iter()
            .map(|(q, b)| format!("{q} {b} ({:.1}%)", p.percent(*b)))
            .collect();
        let _ = writeln!(out, " [{}]", list.join(", "));
    }
    for d in dumped {
        let _ = writeln!(out, "{}", d.to_text());
    }
    out
}

fn to_json(name: &str, f: &Finished, dumped: &[Dumped]) -> serde_json::Value {
    let mut v = f.profile.to_json();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("file".into(), json!(name));
        obj.insert(
            "dumps".into(),
            json!(dumped.iter().map(Dumped::to_json).collect::<Vec<_>>()),
        );
    }
    v
}
