//! Reference speed yardstick: prefill and decode tokens/s and peak memory.
//!
//! `cargo run --release -p q35-reference --example bench -- [GGUF] [--threads N]
//! [--prefill N] [--decode N] [--repeat N] [--format f32|native]` prints one
//! JSON object: the median over the repeats of prefill tokens/s (one forward
//! pass over N prompt tokens) and decode tokens/s (N single-token steps after
//! it, greedy), the CPU time the process spent per token in each (all
//! threads; steadier than wall time on a busy machine), the kernels'
//! instruction set (`Q35_SIMD=avx2` forces the AVX2 path on an AVX-512 host)
//! and the process's peak resident memory. `scripts/bench` runs it on
//! SmolLM2-135M with 2 threads.

use std::time::Instant;

use q35_gguf::Gguf;
use q35_reference::{Logits, Model, WeightFormat};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    // The last occurrence wins, so flags after scripts/bench's defaults apply.
    args.windows(2)
        .rfind(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size in KiB (Linux `VmHWM`), if known.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system, all threads) the process has used so far
/// (Linux `/proc/self/stat`, in clock ticks of 10 ms), if known.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default_path = std::env::var("Q35_SMOLLM2_GGUF").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        .to_owned()
    });
    let path = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or(default_path);
    let threads: usize = arg(&args, "--threads", 2);
    let n_prefill: usize = arg(&args, "--prefill", 128);
    let n_decode: usize = arg(&args, "--decode", 64);
    let repeat: usize = arg(&args, "--repeat", 3).max(1);
    let format = match arg(&args, "--format", "native".to_owned()).as_str() {
        "f32" => WeightFormat::F32,
        _ => WeightFormat::Native,
    };

    let t = Instant::now();
    let gguf = Gguf::open(&path)?;
    let arch = q35_model::architecture_from_gguf(&gguf, std::path::Path::new(&path))?;
    let mut model = Model::from_gguf_with(&gguf, &arch, format)?;
    model.set_threads(threads)?;
    let load_s = t.elapsed().as_secs_f64();
    let vocab = model.config().vocab as u32;

    // A deterministic token sequence (the content does not change the cost).
    let prompt: Vec<u32> = (0..n_prefill as u32)
        .map(|i| (i * 7919 + 17) % vocab)
        .collect();
    // Warm-up (page in the weights).
    let mut s = model.new_session();
    model.forward(&mut s, &prompt[..8.min(prompt.len())], Logits::Last)?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let (mut prefill_cpu, mut decode_cpu) = (0.0, 0.0);
    for _ in 0..repeat {
        let mut s = model.new_session();
        let c = cpu_seconds();
        let t = Instant::now();
        let logits = model.forward(&mut s, &prompt, Logits::Last)?;
        prefill.push(n_prefill as f64 / t.elapsed().as_secs_f64());
        let c1 = cpu_seconds();
        prefill_cpu += c1.zip(c).map_or(f64::NAN, |(b, a)| b - a);

        let mut tok = q35_reference::kernels::argmax(&logits).unwrap_or(0) as u32;
        let t = Instant::now();
        for _ in 0..n_decode {
            let l = model.forward(&mut s, &[tok], Logits::Last)?;
            tok = q35_reference::kernels::argmax(&l).unwrap_or(0) as u32;
        }
        decode.push(n_decode as f64 / t.elapsed().as_secs_f64());
        decode_cpu += cpu_seconds().zip(c1).map_or(f64::NAN, |(b, a)| b - a);
    }
    let per_token_ms = |cpu: f64, n: usize| cpu * 1000.0 / (n * repeat).max(1) as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    println!(
        "{{\"engine\": \"q35-reference\", \"model\": {:?}, \"threads\": {threads}, \"simd\": \"{}\", \
         \"weight_format\": \"{}\", \"load_s\": {load_s:.3}, \
         \"prefill_tokens\": {n_prefill}, \"prefill_tok_s\": {:.2}, \"prefill_cpu_ms_per_token\": {:.3}, \
         \"decode_tokens\": {n_decode}, \"decode_tok_s\": {:.2}, \"decode_cpu_ms_per_token\": {:.3}, \
         \"repeats\": {repeat}, \"peak_rss_mib\": {}}}",
        path,
        q35_reference::kernels::simd_level().name(),
        if format == WeightFormat::F32 {
            "f32"
        } else {
            "native"
        },
        median(&mut prefill),
        per_token_ms(prefill_cpu, n_prefill),
        median(&mut decode),
        per_token_ms(decode_cpu, n_decode),
        peak_rss_kib()
            .map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "null".into()),
    );
    Ok(())
}
