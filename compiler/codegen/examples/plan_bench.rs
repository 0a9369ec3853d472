//! Measures the code generator on a model's shape with placeholder weights
//! (placement and timing depend on shapes only): compile time, peak memory,
//! predicted cycles per decoded token against the machine's bound. One JSON
//! object on stdout. `scripts/bench --backend` runs it.
//!
//! ```text
//! cargo run --release -p q35-codegen --example plan_bench -- MODEL.toml \
//!     [--context N] [--group G] [--blocks B] [--target FILE] [--tokens N]
//!     [--after]
//! ```
//!
//! `--tokens N` compiles a prefill chunk of N tokens (`plan::compile_tokens`);
//! the bound is per token, so `predicted_over_bound` compares a token's
//! share of the chunk with it. With `--after` the chunk is compiled as
//! `q35c compile` ships it: a second program after the decode program
//! (`plan::compile_after`), whose MEM it must fit beside.

use std::time::Instant;

use q35_codegen::plan;

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model) = args.first() else {
        return Err(
            "usage: plan_bench MODEL.toml [--context N] [--group G] [--blocks B] [--target FILE] [--tokens N]"
                .into(),
        );
    };
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let spec = q35_model::load(model)?;
    let mut arch = spec.arch.clone();
    if let Some(b) = opt("--blocks") {
        arch.blocks = b.parse()?;
    }
    let ctx: u32 = opt("--context").map_or(Ok(spec.limits.max_seq_len), |c| c.parse())?;
    let group: usize = opt("--group").map_or(Ok(spec.quant.group_size as usize), |g| g.parse())?;
    let target = match opt("--target") {
        Some(t) => q35_target::Target::load(std::path::Path::new(&t))?,
        None => spec.target.clone(),
    };
    let t0 = Instant::now();
    let plan = plan::placeholder_plan(&arch, ctx, spec.quant.scheme, group)?;
    let t_plan = t0.elapsed().as_secs_f64();
    let tokens: u32 = opt("--tokens").map_or(Ok(1), |t| t.parse())?;
    let t1 = Instant::now();
    let compiled = if args.iter().any(|a| a == "--after") {
        let decode = plan::compile(&plan, &target)?;
        plan::compile_after(&plan, &target, tokens, &decode)?
    } else {
        plan::compile_tokens(&plan, &target, tokens)?
    };
    let t_compile = t1.elapsed().as_secs_f64();
    let bound = plan::bound(&plan, &target);
    let cycles = compiled.built.cycles;
    let instructions: usize = compiled.built.program.queues.values().map(Vec::len).sum();
    let mut kinds: std::collections::BTreeMap<&'static str, i64> = Default::default();
    for ((_, op), (_, first, last)) in plan.ops.iter().zip(&compiled.op_cycles) {
        *kinds.entry(op.name()).or_default() += last - first + 1;
    }
    let v = serde_json::json!({
        "model": model,
        "target": target.name,
        "blocks": arch.blocks,
        "context": ctx,
        "group": group,
        "plan_seconds": t_plan,
        "compile_seconds": t_compile,
        "peak_rss_bytes": peak_rss_bytes(),
        "instructions": instructions,
        "mem_bytes_used": compiled.mem_bytes,
        "tokens": tokens,
        "predicted_cycles": cycles,
        "predicted_cycles_per_token": cycles as f64 / f64::from(tokens),
        "tokens_per_second_at_clock": target.clock_mhz * 1e6 * f64::from(tokens) / cycles.max(1) as f64,
        "bound": {
            "weights": bound.weights,
            "mem_cycles": bound.mem_cycles,
            "install_cycles": bound.install_cycles,
            "mac_cycles": bound.mac_cycles,
            "vxm_cycles": bound.vxm_cycles,
            "cycles": bound.cycles(),
        },
        "predicted_over_bound": cycles as f64 / f64::from(tokens) / bound.cycles().max(1.0),
        "op_span_cycles": kinds,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
