//! `q35sim run BATCHED.lpubin --prompt TEXT | --prompts FILE`: a binary
//! compiled for a batch of users (`q35c compile --batch B`) generates for
//! all of them at once through the host runtime
//! ([`q35_host::BatchSession`]): one run of the program takes one token of
//! every user, each user with its own KV caches, prompt, sampler and stop.
//!
//! `--prompt` gives every user the same prompt; `--prompts FILE` one per
//! line (blank lines skipped), user `u` taking line `u` (the lines repeat
//! when the users outnumber them). User `u` samples with seed `--seed + u`.
//! The output is each user's text, then one line per run (the users in it
//! and its cycles against the compile-time prediction), `--check`'s verdict
//! (every user's logits and KV cache against its own golden session), and
//! the decode rate per user and for the system.

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use q35_host::{BatchSession, Device};
use q35_reference::{GenerateOptions, SamplingParams, StopReason};
use q35_tokenizer::StreamDecoder;
use serde_json::json;

use crate::Failure;
use crate::cmd_generate::{GenArgs, checker_for, failure};

/// One user's prompt: its text as shown (none for `--tokens`) and its
/// token ids.
type Prompt = (Option<String>, Vec<u32>);

/// The users' prompts: `--prompts FILE`'s lines in turn, else `--prompt`
/// (or `--tokens`) for everyone.
fn prompts<D: Device>(
    name: &str,
    session: &BatchSession<D>,
    args: &GenArgs,
) -> Result<Vec<Prompt>, Failure> {
    let texts: Vec<String> = match (&args.prompts, &args.prompt) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow!("cannot read --prompts {}: {e}", file.display()))?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                return Err(
                    anyhow!("--prompts {}: no prompt in it (one a line)", file.display()).into(),
                );
            }
            lines
        }
        (None, Some(p)) => {
            if p.is_empty() {
                return Err(anyhow!("the prompt is empty").into());
            }
            vec![p.clone()]
        }
        (None, None) => {
            let ids = args
                .tokens
                .clone()
                .ok_or_else(|| anyhow!("no prompt: give --prompt, --prompts or --tokens"))?;
            return Ok(vec![(None, ids); session.users()]);
        }
    };
    let mut out = Vec::with_capacity(session.users());
    for u in 0..session.users() {
        let text = &texts[u % texts.len()];
        let (t, ids) = session
            .prompt_tokens(text, args.chat, args.system.as_deref())
            .map_err(|e| failure(name, e))?;
        out.push((Some(t), ids));
    }
    Ok(out)
}

/// Generates for every user of a batched binary on `device` (one chip's
/// machine or a system); `chips` names the system's size in the output.
pub fn run<D: Device>(
    name: &str,
    mut session: BatchSession<D>,
    config: &q35_sim::MachineConfig,
    json_out: bool,
    args: &GenArgs,
    chips: usize,
) -> Result<(), Failure> {
    if args.no_prefill {
        return Err(anyhow!(
            "{name}: --no-prefill: a batched binary has no prefill program (each prompt runs a token a run)"
        )
        .into());
    }
    if args.no_buckets {
        session.set_buckets(false);
    }
    let meta = session.meta().clone();
    let users = session.users();
    let prompts = prompts(name, &session, args)?;
    if args.check {
        let checker = checker_for(name, &meta, session.ctx(), args)?;
        session.set_checker(checker);
    }
    let options: Vec<GenerateOptions> = (0..users)
        .map(|u| GenerateOptions {
            max_tokens: args.max_tokens,
            sampling: SamplingParams {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed.wrapping_add(u as u64),
            },
            stop_tokens: meta.stop_tokens(),
        })
        .collect();
    let tokenizer = session.shared_tokenizer();
    let bar = q35_host::bar::Bar::new(
        format!("run {name}: "),
        format!("a batch of {users} users"),
        true,
    );
    let mut generated = 0usize;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.1.clone()).collect();
    let generation = session
        .generate(&ids, &options, |_, tok| {
            generated += 1;
            bar.items(
                generated,
                args.max_tokens * users,
                &format!("tokens generated for {users} users (last {tok})"),
            );
            true
        })
        .map_err(|e| failure(name, e));
    drop(bar);
    let generation = generation?;
    let texts: Vec<Option<String>> = generation
        .users
        .iter()
        .map(|g| {
            tokenizer.as_ref().map(|t| {
                let mut d = StreamDecoder::new();
                let mut s: String = g
                    .tokens
                    .iter()
                    .filter(|&&tok| !t.is_control(tok))
                    .map(|&tok| d.push(t, tok))
                    .collect();
                s.push_str(&d.finish());
                s
            })
        })
        .collect();
    let predicted = meta.predicted_cycles_per_step;
    // A run's prediction: its program's (a context bucket's, or the
    // whole-context program's).
    let predicted_of = |r: &q35_host::BatchRun| match r.bucket {
        Some(b) => meta.bucket(b).and_then(|m| m.predicted_cycles),
        None => predicted,
    };
    let off_prediction = crate::cmd_generate::first_off_prediction(
        generation
            .runs
            .iter()
            .map(|r| (r.stats.cycles, predicted_of(r))),
    );
    let total: u64 = generation.runs.iter().map(|r| r.stats.cycles).sum();
    let runs = generation.runs.len();
    let per_run = if runs == 0 {
        0.0
    } else {
        total as f64 / runs as f64
    };
    let per_user = crate::cmd_profile::tokens_per_second(config, per_run);
    let tokens: usize = generation.users.iter().map(|g| g.tokens.len()).sum();
    let prompt_tokens: usize = generation.users.iter().map(|g| g.prompt_tokens).sum();
    let stop = |g: &q35_host::HostGeneration| match g.stop {
        StopReason::StopToken(_) => "eos",
        other => other.as_str(),
    };
    let io = |e: std::io::Error| {
        Failure::Input(anyhow::Error::from(e).context("cannot write to stdout"))
    };
    let mut stdout = std::io::stdout().lock();
    if json_out {
        let v = json!({
            "file": name,
            "model": meta.model,
            "chips": chips,
            "batch": users,
            "users": generation.users.iter().zip(&prompts).zip(&texts).enumerate().map(|(u, ((g, p), t))| json!({
                "user": u,
                "prompt": p.0,
                "prompt_tokens": p.1,
                "tokens": g.tokens,
                "text": t,
                "stop_reason": stop(g),
                "seed": options[u].sampling.seed,
            })).collect::<Vec<_>>(),
            "context": meta.ctx,
            "predicted_cycles_per_step": predicted,
            "total_cycles": total,
            "runs": generation.runs.iter().map(|r| json!({
                "users": r.rows.iter().map(|row| row.map(|(t, p, prompt)| json!({"token": t, "pos": p, "prefill": prompt}))).collect::<Vec<_>>(),
                "program": crate::cmd_generate::program_name(&meta, false, r.bucket),
                "cycles": r.stats.cycles,
                "instructions": r.stats.instructions,
            })).collect::<Vec<_>>(),
            "cycles_per_run": per_run,
            "tokens_per_second_per_user_at_clock": per_user,
            "tokens_per_second_system_at_clock": per_user * users as f64,
            "clock_mhz": config.target.clock_mhz,
            "checked": args.check,
        });
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
        )
        .map_err(io)?;
    } else {
        for (u, (g, t)) in generation.users.iter().zip(&texts).enumerate() {
            let shown = t.clone().unwrap_or_else(|| format!("{:?}", g.tokens));
            writeln!(stdout, "user {u}: {shown} [stop: {}]", stop(g)).map_err(io)?;
        }
        writeln!(
            stdout,
            "[a batch of {users} users{}: {prompt_tokens} prompt tokens, {tokens} generated; {runs} runs, each one token of every running user]",
            if chips > 1 {
                format!(" on {chips} chips")
            } else {
                String::new()
            }
        )
        .map_err(io)?;
        for (i, r) in generation.runs.iter().enumerate() {
            let running = r.rows.iter().flatten().count();
            let prompt = r.rows.iter().flatten().filter(|row| row.2).count();
            let pred = match predicted_of(r) {
                Some(p) if p == r.stats.cycles => format!(" (predicted {p})"),
                Some(p) => format!(" (predicted {p}: DIFFERS)"),
                None => String::new(),
            };
            let users = if running == 1 { "user" } else { "users" };
            let bucket = match r.bucket {
                Some(b) => format!(" (bucket < {b})"),
                None => String::new(),
            };
            writeln!(
                stdout,
                "run {i}: {running} {users} ({prompt} on prompt tokens){bucket}: {} cycles{pred}",
                r.stats.cycles
            )
            .map_err(io)?;
        }
        if args.check {
            writeln!(
                stdout,
                "check: {runs} runs, every user's logits and KV cache equal to its golden model bit for bit"
            )
            .map_err(io)?;
        }
        writeln!(
            stdout,
            "profile: {total} cycles in all, {per_run:.0} a run: {per_user:.0} tokens/s per user, {:.0} tokens/s for the system of {users} users at {} MHz",
            per_user * users as f64,
            config.target.clock_mhz
        )
        .map_err(io)?;
    }
    if args.check
        && let Some((i, got, want)) = off_prediction
    {
        eprintln!("{name}: check failed: run {i} took {got} cycles, the compiler predicted {want}");
        return Err(Failure::Program);
    }
    Ok(())
}

/// Whether `path`'s metadata says it serves a batch of users.
pub fn is_batched(binary: &q35_lpubin::LpuBinary) -> bool {
    q35_host::HostMeta::from_binary(binary).is_ok_and(|m| m.batch > 1)
}

/// Names the batch file arguments a single-user binary does not take.
pub fn refuse_prompts(name: &str, args: &GenArgs) -> Result<(), Failure> {
    if let Some(f) = &args.prompts {
        return Err(anyhow!(
            "{name}: --prompts {}: the binary serves one user (compile with q35c compile --batch B for several)",
            Path::new(f).display()
        )
        .into());
    }
    Ok(())
}
