//! The reference's logits are fixed bits: a few prefill and decode steps on
//! the tiny synthetic model (f32 weights, and as a GGUF of Q4_1/Q8_0 blocks
//! in both weight formats) and on SmolLM2-135M hash to values recorded from
//! the kernels as they were before the speed work (commit 0a39ebd), on every
//! instruction set this CPU has (`kernels::set_simd_level`). The golden
//! chain and the quantizer's calibration consume these logits and
//! activations, so a kernel change that moves a single bit fails here.

use std::path::PathBuf;
use std::sync::Mutex;

use q35_gguf::{GgmlType, Gguf, Value, write::GgufWriter};
use q35_model::Architecture;
use q35_reference::kernels::{SimdLevel, detected_simd_level, set_simd_level};
use q35_reference::{Config, Logits, Model, WeightFormat, synthetic_weights};

/// The SIMD level is process-wide: the tests here take turns setting it.
static LEVEL_LOCK: Mutex<()> = Mutex::new(());

/// FNV-1a over the logits' bit patterns, in order.
fn fnv(logits: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in logits {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Prefill of `prompt` (every position's logits), then `decode` greedy
/// single-token steps; the hash of all the logits, in order.
fn run(model: &Model, prompt: &[u32], decode: usize) -> u64 {
    let vocab = model.config().vocab;
    let mut s = model.new_session();
    let mut all = model.forward(&mut s, prompt, Logits::All).expect("prefill");
    let mut tok = q35_reference::kernels::argmax(&all[all.len() - vocab..]).expect("argmax") as u32;
    for _ in 0..decode {
        let l = model.forward(&mut s, &[tok], Logits::Last).expect("decode");
        tok = q35_reference::kernels::argmax(&l).expect("argmax") as u32;
        all.extend_from_slice(&l);
    }
    fnv(&all)
}

/// Every level this CPU can run, least capable first.
fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= detected_simd_level())
        .collect()
}

/// `run` at every level and thread count 1 and 2; each must equal `want`.
fn check(what: &str, model: &mut Model, prompt: &[u32], decode: usize, want: u64) {
    let _guard = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = q35_reference::kernels::simd_level();
    let mut got = Vec::new();
    for level in levels() {
        set_simd_level(level);
        for threads in [1, 2] {
            model.set_threads(threads).expect("threads");
            got.push((level, threads, run(model, prompt, decode)));
        }
    }
    set_simd_level(before);
    let report: Vec<String> = got
        .iter()
        .map(|(level, threads, h)| format!("{} x{threads}: {h:#018x}", level.name()))
        .collect();
    assert!(
        got.iter().all(|&(_, _, h)| h == want),
        "{what}: recorded {want:#018x}, got {}",
        report.join(", ")
    );
}

fn tiny_arch() -> Architecture {
    Architecture {
        family: "llama".into(),
        blocks: 2,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 128,
        vocab: 256,
        rope_base: 10_000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        context: 64,
    }
}

/// The tiny model as a GGUF: matrices Q4_1, embedding Q8_0, norms F32.
fn tiny_gguf() -> Gguf {
    let config = Config::from_architecture(&tiny_arch()).expect("valid");
    let w = synthetic_weights(&config, 23);
    let mut g = GgufWriter::new();
    g.metadata("general.architecture", Value::String("llama".into()));
    for (name, t) in &w.tensors {
        if t.dims.len() == 1 {
            g.tensor_f32(name, &t.dims, &t.data);
        } else if name == "token_embd.weight" {
            let q = q35_gguf::dequant::quantize_q8_0(&t.data);
            g.tensor_raw(name, &t.dims, GgmlType::Q8_0, q);
        } else {
            let q = q35_gguf::dequant::quantize_q4_1(&t.data);
            g.tensor_raw(name, &t.dims, GgmlType::Q4_1, q);
        }
    }
    Gguf::from_bytes(g.to_bytes()).expect("valid gguf")
}

const TINY_PROMPT: [u32; 6] = [1, 50, 100, 150, 200, 250];

#[test]
fn tiny_f32_weights_logits_are_the_recorded_bits() {
    let config = Config::from_architecture(&tiny_arch()).expect("valid");
    let mut m = Model::from_weights(&tiny_arch(), synthetic_weights(&config, 7)).expect("model");
    check("tiny f32", &mut m, &TINY_PROMPT, 8, TINY_F32);
}

#[test]
fn tiny_gguf_logits_are_the_recorded_bits_in_both_formats() {
    let g = tiny_gguf();
    for format in [WeightFormat::Native, WeightFormat::F32] {
        let mut m = Model::from_gguf_with(&g, &tiny_arch(), format).expect("model");
        check("tiny gguf", &mut m, &TINY_PROMPT, 8, TINY_GGUF);
    }
}

#[test]
fn smollm2_logits_are_the_recorded_bits() {
    if std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!("Q35_SKIP_MODEL_TESTS=1: skipping a real-model test");
        return;
    }
    // As tests/common finds it (that module's fixtures are unused here).
    let path = std::env::var_os("Q35_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let arch = q35_model::architecture_from_gguf(&gguf, &path).expect("architecture");
    let mut m = Model::from_gguf(&gguf, &arch).expect("model");
    // Five prompt tokens, then six decode steps.
    let prompt = [504u32, 3575, 282, 4649, 314];
    check("SmolLM2", &mut m, &prompt, 6, SMOLLM2);
}

/// Recorded at commit 0a39ebd (before the speed work) on an AVX-512 host;
/// scalar, AVX2 and AVX-512 all gave these.
const TINY_F32: u64 = 0x1771_6691_18f6_e85d;
const TINY_GGUF: u64 = 0x0270_91c7_8809_565a;
const SMOLLM2: u64 = 0x43af_4153_a15c_9f96;
