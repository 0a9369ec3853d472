//! `q35sim run FILE --tokens/--prompt`: the host runtime driving the
//! simulator end to end, on a hand-written "model" whose program copies
//! `x_in` to `logits` (so the greedy next token of `t` is the one-hot
//! position of its embedding row), and the errors a bare program gets.

use std::path::Path;
use std::process::Command;

use q35_host::{EmbeddingTable, HostMeta};
use q35_lpubin::LpuBinary;

/// `logits = x_in + 0` over 320 f32 lanes (the docs/isa.md example with
/// symbols), plus the inputs the host writes every step.
const ECHO: &str = "
.target lpu-v1
.mem mem.e0+mem.e1+mem.e2+mem.e3 @0 f32 fill 0.0, 320
.symbol x_in input f32 [320] at mem.w0+mem.w1+mem.w2+mem.w3 @0
.symbol logits f32 [320] at mem.e0+mem.e1+mem.e2+mem.e3 @8
.symbol pos_idx position u16 [320] at mem.w10+mem.w11 @0
.symbol kv_idx position u16 [320] at mem.w12+mem.w13 @0
.symbol attn_mask input f32 [8] at mem.w14 @0

.queue mem.w3
    read 0, s3.e
    halt
.queue mem.w2
    nop 1
    read 0, s2.e
    halt
.queue mem.w1
    nop 2
    read 0, s1.e
    halt
.queue mem.w0
    nop 3
    read 0, s0.e
    halt
.queue mem.e0
    nop 3
    read 0, s0.w
    nop 6
    write 8, s4.e
    halt
.queue mem.e1
    nop 2
    read 0, s1.w
    nop 8
    write 8, s5.e
    halt
.queue mem.e2
    nop 1
    read 0, s2.w
    nop 10
    write 8, s6.e
    halt
.queue mem.e3
    read 0, s3.w
    nop 12
    write 8, s7.e
    halt
.queue vxm.0
    nop 5
    fadd s0.e, s0.w -> s4.e
    halt
";

/// The next token the echo model picks after `t`.
fn next(t: u32) -> u32 {
    (t * 7 + 3) % 320
}

fn write_binary(dir: &Path, with_meta: bool) -> std::path::PathBuf {
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let p = q35_isa::assemble("echo.lpuasm", ECHO).expect("assembles");
    let mut b = p
        .to_lpubin(&config.target, "generate test")
        .expect("converts");
    if with_meta {
        let meta = HostMeta {
            model: "echo".into(),
            vocab: 320,
            hidden: 320,
            blocks: 1,
            kv_dim: 64,
            ctx: 8,
            bos: None,
            eos: None,
            add_bos: false,
            stop_tokens: Some(vec![next(next(next(1)))]),
            chat_template: None,
            kv_junk_offset: 0,
            predicted_cycles_per_step: None,
            golden: None,
            weights_hash: None,
            prefill: None,
            system: None,
            timing_only: false,
            batch: 1,
            buckets: Vec::new(),
        };
        b.metadata(meta.to_json());
        let mut data = vec![0f32; 320 * 320];
        for t in 0..320 {
            data[t as usize * 320 + next(t) as usize] = 1.0;
        }
        let (e, r, c, d) = EmbeddingTable::F32 { cols: 320, data }.section();
        b.embedding(e, r, c, d);
    }
    let path = dir.join(if with_meta {
        "echo.lpubin"
    } else {
        "bare.lpubin"
    });
    b.write_to(&path).expect("writes");
    LpuBinary::open(&path).expect("opens");
    path
}

fn q35sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_q35sim"))
        .args(args)
        .output()
        .expect("q35sim runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generates_on_the_simulator() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let bin = write_binary(dir.path(), true);
    let file = bin.to_str().expect("utf-8 path");
    let (code, out, err) = q35sim(&["run", file, "--tokens", "1", "--max-tokens", "5", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    // 1 -> 10 -> 73 -> 194 (the stop token, kept).
    assert_eq!(v["tokens"], serde_json::json!([10, 73, 194]));
    assert_eq!(v["stop_reason"], "eos");
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["prefill"], true);
    let cycles: Vec<u64> = steps
        .iter()
        .map(|s| s["cycles"].as_u64().expect("cycles"))
        .collect();
    assert!(
        cycles[0] > 0 && cycles.iter().all(|&c| c == cycles[0]),
        "{cycles:?}"
    );
    // Text mode: token ids stream (no tokenizer), then a line per run.
    let (code, out, err) = q35sim(&["run", file, "--tokens", "2,5", "--max-tokens", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("38 269 \n"), "{out}");
    assert!(
        out.contains("step 0: prefill token 2 at position 0:"),
        "{out}"
    );
    assert!(
        out.contains("step 2: decode token 38 at position 2:"),
        "{out}"
    );
    // A prompt longer than the compiled context of 8.
    let (code, _, err) = q35sim(&["run", file, "--tokens", "1,1,1,1,1,1,1,1,1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("the prompt is 9 tokens, longer than the compiled context of 8"),
        "{err}"
    );
    // Text needs a tokenizer.
    let (code, _, err) = q35sim(&["run", file, "--prompt", "hi"]);
    assert_eq!(code, 2);
    assert!(err.contains("no tokenizer section"), "{err}");
}

#[test]
fn a_bare_program_runs_as_before_and_refuses_a_prompt() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let bin = write_binary(dir.path(), false);
    let file = bin.to_str().expect("utf-8 path");
    let (code, out, err) = q35sim(&["run", file, "--dump", "logits"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("cycles: "), "{out}");
    let (code, out, err) = q35sim(&["run", file, "--prompt", "hello"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("no metadata section"), "{err}");
}
