//! System files (docs/lpubin.md 8) in `q35sim run`, `profile`, `disasm`
//! and `asm`: many chips joined by links (`q35_sim::System`). `run` runs
//! every chip with values (`--threads`, default the host's cores; the
//! result does not depend on it) or, with `--timing`, the static schedule
//! only; `profile` is the timing-only run with `--trace` (one process per
//! chip) and `--report` (the system, then one chip in detail); both
//! print per chip its cycles,
//! instructions, unit utilisation and link use. A hazard prints `FILE:
//! chip N: cycle C: queue Q, instruction #I ...` and exits 1.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use q35_lpubin::{LpuBinary, LpuSystem, SystemBuilder};
use q35_sim::dump::read_symbol;
use q35_sim::system::{SystemRun, SystemStop};
use q35_sim::{MachineConfig, System};
use q35_target::SystemTopology;
use serde_json::json;

use crate::Failure;

/// Whether the file at `path` is a system file (by its first 8 bytes).
pub fn is_system_file(path: &Path) -> anyhow::Result<bool> {
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut got = 0;
    while got < head.len() {
        let n = f
            .read(&mut head[got..])
            .with_context(|| path.display().to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(q35_lpubin::is_system(&head[..got]))
}

/// Whether the system file at `path` was compiled for timing only (chip 0's
/// metadata says `timing_only`: a model with no weights, docs/backend.md 8).
pub fn is_timing_only(path: &Path) -> anyhow::Result<bool> {
    let file = LpuSystem::open(path)?;
    Ok(file
        .chips()
        .first()
        .and_then(|c| q35_host::HostMeta::from_binary(c).ok())
        .is_some_and(|m| m.timing_only))
}

/// Chip 0's metadata: whether the file is timing-only and the compiler's
/// predicted cycles a step.
fn compiled_meta(file: &LpuSystem) -> Option<q35_host::HostMeta> {
    file.chips()
        .first()
        .and_then(|c| q35_host::HostMeta::from_binary(c).ok())
}

/// Opens a system file for `config`'s target and builds its system.
fn open(path: &Path, config: &MachineConfig) -> anyhow::Result<(LpuSystem, String)> {
    let name = path.display().to_string();
    let file = LpuSystem::open(path)?;
    if file.target_hash() != &config.target_hash {
        bail!(
            "{name}: a system for target `{}` (hash {}), not `{}` (hash {})",
            file.target_name(),
            hex(file.target_hash()),
            config.target_name,
            hex(&config.target_hash)
        );
    }
    Ok((file, name))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The timing-only run (no chip state built; identical programs walked once).
fn timing_of(
    file: &LpuSystem,
    config: &MachineConfig,
    name: &str,
) -> anyhow::Result<Result<SystemRun, SystemStop>> {
    let chips: Vec<&LpuBinary> = file.chips().iter().collect();
    q35_sim::system::timing_of(&chips, config).with_context(|| name.to_string())
}

fn build<'f>(
    file: &'f LpuSystem,
    config: &MachineConfig,
    name: &str,
) -> anyhow::Result<System<'f>> {
    let chips: Vec<&LpuBinary> = file.chips().iter().collect();
    System::new(&chips, config.clone()).with_context(|| name.to_string())
}

/// Prints a stop and turns it into the exit code.
fn stopped(name: &str, stop: &SystemStop) -> Failure {
    eprintln!("{name}: {stop}");
    Failure::Program
}

/// `q35sim run SYSTEM.lpubin --prompt ...`: a compiled model split over
/// the system's chips generates through the host runtime
/// ([`crate::cmd_generate::run_system`]).
pub fn generate(
    path: &Path,
    config: MachineConfig,
    threads: Option<usize>,
    max_cycles: Option<u64>,
    json_out: bool,
    args: &crate::cmd_generate::GenArgs,
) -> Result<(), Failure> {
    let (file, name) = open(path, &config)?;
    let chips: Vec<&LpuBinary> = file.chips().iter().collect();
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    crate::cmd_generate::run_system(&name, &chips, config, threads, max_cycles, json_out, args)
}

/// `q35sim run SYSTEM.lpubin`.
pub fn run(
    path: &Path,
    config: MachineConfig,
    threads: Option<usize>,
    timing: bool,
    max_cycles: Option<u64>,
    json_out: bool,
    dumps: &[String],
) -> Result<(), Failure> {
    let (file, name) = open(path, &config)?;
    let topology = config
        .target
        .system(file.chips().len() as u32)
        .with_context(|| name.clone())?;
    // `CHIP:SYMBOL`, checked before the run.
    let mut wanted = Vec::new();
    for d in dumps {
        let (chip, sym) = d
            .split_once(':')
            .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s)))
            .ok_or_else(|| anyhow!("--dump `{d}`: a system's symbols are CHIP:SYMBOL"))?;
        let bin = file.chips().get(chip).ok_or_else(|| {
            anyhow!(
                "--dump `{d}`: no chip {chip} (chips 0..{})",
                file.chips().len()
            )
        })?;
        let s = bin
            .symbol(sym)
            .cloned()
            .ok_or_else(|| anyhow!("--dump `{d}`: chip {chip} has no symbol `{sym}`"))?;
        if timing {
            return Err(anyhow!("--dump needs values; it does not go with --timing").into());
        }
        wanted.push((chip, s));
    }
    let mut dumped = Vec::new();
    let run = if timing {
        timing_of(&file, &config, &name)?.map_err(|s| stopped(&name, &s))?
    } else {
        let mut system = build(&file, &config, &name)?;
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        system.set_threads(threads);
        system.set_max_cycles(max_cycles);
        let run = system.run_once().map_err(|s| stopped(&name, &s))?;
        for (chip, s) in &wanted {
            let state = system
                .state(*chip)
                .ok_or_else(|| anyhow!("chip {chip} has no state"))?;
            dumped.push((*chip, read_symbol(state, s).with_context(|| name.clone())?));
        }
        run
    };
    let meta = compiled_meta(&file);
    if json_out {
        let mut v = run.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("file".into(), json!(name));
            o.insert("timing_only".into(), json!(timing));
            per_token_json(o, &run, &config, meta.as_ref());
            o.insert(
                "dumps".into(),
                json!(
                    dumped
                        .iter()
                        .map(|(c, d)| json!({"chip": c, "dump": d.to_json()}))
                        .collect::<Vec<_>>()
                ),
            );
        }
        println!("{v}");
    } else {
        let mut out = per_token_text(&run, &config, meta.as_ref());
        out.push_str(&text(&run, &topology, timing));
        for (c, d) in &dumped {
            let _ = writeln!(out, "chip {c}: {}", d.to_text());
        }
        print!("{out}");
    }
    Ok(())
}

/// The run as text: the system, then each chip.
pub(crate) fn text(run: &SystemRun, topo: &SystemTopology, timing: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "system: {} chips in {} node{}, {} cycles{}",
        topo.chips(),
        topo.nodes(),
        if topo.nodes() == 1 { "" } else { "s" },
        run.cycles,
        if timing {
            " (timing only: static schedules, no values)"
        } else {
            ""
        }
    );
    for (i, c) in run.chips.iter().enumerate() {
        let p = &c.profile;
        let counts = p.mnemonic_counts();
        let _ = writeln!(
            out,
            "chip {i}: {} cycles, {} instructions{}",
            p.total_cycles(),
            p.instructions(),
            if counts.is_empty() {
                String::new()
            } else {
                format!(" ({counts})")
            }
        );
        for (group, units) in p.groups() {
            let busy: u64 = units.iter().map(|(_, b)| b).sum();
            if busy == 0 {
                continue;
            }
            let list: Vec<String> = units
                .iter()
                .filter(|(_, b)| *b > 0)
                .map(|(q, b)| format!("{q} {b} ({:.1}%)", p.percent(*b)))
                .collect();
            let _ = writeln!(out, "  {group}: {busy} busy [{}]", list.join(", "));
        }
        for l in &c.links {
            let _ = writeln!(
                out,
                "  link {} -> chip {} link {}: sent {}, received {}, busy {} cycles ({:.1}%), waited {} cycles",
                l.link,
                l.to.chip,
                l.to.link,
                l.sent,
                l.received,
                l.busy_cycles,
                p.percent(l.busy_cycles),
                l.waited_cycles
            );
        }
    }
    out
}

/// `q35sim profile SYSTEM.lpubin`: the timing-only run, with a trace of
/// one process per chip.
pub fn profile(
    path: &Path,
    config: MachineConfig,
    json_out: bool,
    outputs: &crate::cmd_profile::Outputs,
) -> Result<(), Failure> {
    let (file, name) = open(path, &config)?;
    let topology = config
        .target
        .system(file.chips().len() as u32)
        .with_context(|| name.clone())?;
    // Progress on a terminal: a system of hundreds of chips takes minutes.
    let bar = q35_host::bar::Bar::new(
        format!("profile {name}: "),
        "walking every distinct chip's schedule",
        true,
    );
    let run = timing_of(&file, &config, &name)?.map_err(|s| stopped(&name, &s))?;
    if outputs.files() {
        let n = file.chips().len();
        // The chip the report shows in detail: `--report-chip`, else the
        // one whose units were busiest.
        let detail = match outputs.report_chip {
            Some(c) if c >= n => {
                return Err(anyhow!("--report-chip {c}: {name} has chips 0..{n}").into());
            }
            Some(c) => c,
            None => busiest(&run),
        };
        // Only the traced chips and the detailed one keep their issues.
        let traced_chips = if outputs.trace.is_some() {
            n.min(outputs.trace_steps.max(1))
        } else {
            0
        };
        let mut steps = Vec::new();
        let mut activities = Vec::new();
        let mut detail_step = None;
        let width = q35_sim::report::system_bucket_width(run.cycles);
        for (i, bin) in file.chips().iter().enumerate() {
            bar.items(i, n, &format!("chip {i}: the trace's and report's figures"));
            let loaded = q35_sim::load::load(bin, &config).with_context(|| name.clone())?;
            let timeline = q35_sim::schedule::walk(&loaded, &config)
                .map_err(|e| anyhow!("{name}: chip {i}: {e}"))?;
            if outputs.report.is_some() {
                activities.push(q35_sim::analysis::activity(
                    bin.debug(),
                    &loaded,
                    &timeline,
                    width,
                ));
            }
            // Only the traced chips and the report's detailed one are
            // analysed (their issues kept for the drawing).
            let report_detail = outputs.report.is_some() && i == detail;
            if i < traced_chips || report_detail {
                let step = q35_sim::analysis::analyse(bin, &loaded, &config, &timeline);
                if report_detail && i >= traced_chips {
                    detail_step = Some(step);
                } else {
                    steps.push(step);
                }
            }
        }
        let detail_step = detail_step.as_ref().or(steps.get(detail));
        let traced: Vec<q35_sim::trace::TraceStep<'_>> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| q35_sim::trace::TraceStep {
                step: s,
                name: format!("chip {i}"),
                offset: 0,
            })
            .collect();
        let mut summary = json!({
            "file": name,
            "chips": n,
            "nodes": topology.nodes(),
            "cycles": run.cycles,
            "clock_mhz": config.target.clock_mhz,
        });
        if let Some(o) = summary.as_object_mut() {
            per_token_json(o, &run, &config, compiled_meta(&file).as_ref());
        }
        bar.stage("writing the trace and report");
        let received: Vec<&[q35_sim::link::Transfer]> =
            run.chips.iter().map(|c| c.received.as_slice()).collect();
        outputs
            .write_system(
                &config,
                &format!("q35sim profile {name} ({n} chips)"),
                &traced,
                &received,
                &run,
                &activities,
                detail_step.map(|s| (detail, s)),
                &summary,
            )
            .map_err(Failure::Input)?;
    }
    drop(bar);
    let meta = compiled_meta(&file);
    if json_out {
        let mut v = run.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("file".into(), json!(name));
            o.insert("timing_only".into(), json!(true));
            per_token_json(o, &run, &config, meta.as_ref());
        }
        println!("{v}");
    } else {
        print!("{}", per_token_text(&run, &config, meta.as_ref()));
        print!("{}", text(&run, &topology, true));
    }
    Ok(())
}

/// The chip whose units were busy the most cycles (the first of equals).
fn busiest(run: &SystemRun) -> usize {
    let busy = |c: &q35_sim::system::ChipRun| -> u64 {
        c.profile
            .groups()
            .iter()
            .flat_map(|(_, units)| units.iter().map(|(_, b)| *b))
            .sum()
    };
    run.chips
        .iter()
        .enumerate()
        .max_by_key(|(i, c)| (busy(c), std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i)
}

/// A compiled model's step as a token: cycles, projected tokens/s at the
/// target's clock, the compiler's prediction (empty for a bare system).
fn per_token_text(
    run: &SystemRun,
    config: &MachineConfig,
    meta: Option<&q35_host::HostMeta>,
) -> String {
    let Some(m) = meta else {
        return String::new();
    };
    let mut out = String::new();
    let per_user = config.target.clock_mhz * 1e6 / run.cycles.max(1) as f64;
    let _ = writeln!(
        out,
        "{}{}: {} cycles per decoded token ({:.1} tokens/s{} at {} MHz){}, context {}",
        m.model,
        if m.timing_only {
            " (timing only: no weights)"
        } else {
            ""
        },
        run.cycles,
        per_user,
        crate::cmd_profile::batch_note(m.batch, per_user),
        config.target.clock_mhz,
        match m.predicted_cycles_per_step {
            Some(p) if p == run.cycles => format!(", predicted {p}"),
            Some(p) => format!(", predicted {p} (differs)"),
            None => String::new(),
        },
        m.ctx
    );
    out
}

fn per_token_json(
    o: &mut serde_json::Map<String, serde_json::Value>,
    run: &SystemRun,
    config: &MachineConfig,
    meta: Option<&q35_host::HostMeta>,
) {
    if let Some(m) = meta {
        o.insert("model".into(), json!(m.model));
        o.insert("compiled_timing_only".into(), json!(m.timing_only));
        o.insert("context".into(), json!(m.ctx));
        o.insert("cycles_per_token".into(), json!(run.cycles));
        let per_user = config.target.clock_mhz * 1e6 / run.cycles.max(1) as f64;
        o.insert("projected_tokens_per_second".into(), json!(per_user));
        o.insert("batch".into(), json!(m.batch));
        o.insert(
            "projected_system_tokens_per_second".into(),
            json!(per_user * f64::from(m.batch)),
        );
        o.insert(
            "predicted_cycles_per_step".into(),
            json!(m.predicted_cycles_per_step),
        );
    }
}

/// `q35sim disasm SYSTEM.lpubin [--chip N]`: every chip's program (or
/// one), each as `.lpuasm` text that reassembles to the chip's bytes.
pub fn disasm(path: &Path, config: &MachineConfig, chip: Option<usize>) -> Result<(), Failure> {
    let (file, name) = open(path, config)?;
    let n = file.chips().len();
    let mut out = String::new();
    for (i, bin) in file.chips().iter().enumerate() {
        if chip.is_some_and(|c| c != i) {
            continue;
        }
        let program = q35_isa::Program::from_lpubin(bin, &config.target)
            .with_context(|| format!("{name}: chip {i}"))?;
        if chip.is_none() {
            let _ = writeln!(out, "; ---- chip {i} of {n} ----");
        }
        out.push_str(&program.to_lpuasm());
    }
    if let Some(c) = chip
        && c >= n
    {
        return Err(anyhow!("{name}: no chip {c} (chips 0..{n})").into());
    }
    print!("{out}");
    Ok(())
}

/// `q35sim asm` of several files (or `--chips N`): a system file. Each
/// input is `FILE` (the next chip) or `CHIP=FILE`; chips no file names
/// run an empty program.
pub fn assemble(
    inputs: &[String],
    chips: Option<u32>,
    output: &Path,
    config: &MachineConfig,
) -> anyhow::Result<()> {
    let mut by_chip: Vec<(u32, PathBuf)> = Vec::new();
    let mut next = 0u32;
    for i in inputs {
        let (chip, file) = match i.split_once('=') {
            Some((c, f)) if c.parse::<u32>().is_ok() => {
                (c.parse::<u32>().unwrap_or(0), PathBuf::from(f))
            }
            _ => (next, PathBuf::from(i)),
        };
        if by_chip.iter().any(|(c, _)| *c == chip) {
            bail!("chip {chip} is given two programs");
        }
        by_chip.push((chip, file));
        next = chip + 1;
    }
    let count = chips.unwrap_or_else(|| by_chip.iter().map(|(c, _)| c + 1).max().unwrap_or(1));
    if let Some((c, f)) = by_chip.iter().find(|(c, _)| *c >= count) {
        bail!(
            "{}: chip {c}, but the system has {count} chips (--chips)",
            f.display()
        );
    }
    // The links must exist for this many chips.
    config.target.system(count)?;
    let producer = crate::cmd_asm::PRODUCER;
    let empty = {
        let p = q35_isa::assemble("<empty chip>", &format!(".target {}\n", config.target_name))?;
        p.to_lpubin(&config.target, producer)?.to_bytes()?
    };
    let mut builder = SystemBuilder::new(&config.target_name, config.target_hash);
    for chip in 0..count {
        match by_chip.iter().find(|(c, _)| *c == chip) {
            None => {
                builder.chip(empty.clone());
            }
            Some((_, file)) => {
                let bytes = crate::cmd_asm::lpubin_of(file, config, producer)?
                    .to_bytes()
                    .with_context(|| file.display().to_string())?;
                builder.chip(bytes);
            }
        }
    }
    builder.write_to(output)?;
    Ok(())
}
