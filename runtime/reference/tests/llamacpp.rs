//! The reference model against llama.cpp on SmolLM2-135M-Instruct (Q4_1),
//! compared with fixtures recorded by scripts/reference/record_llamacpp.py:
//!
//! - `llamacpp_smollm2_f32.json`: llama.cpp on an F32 copy of the same
//!   weights with an F32 KV cache, i.e. the same arithmetic as the reference
//!   up to summation order. Logits must agree to about 1e-3 and greedy
//!   continuations token for token.
//! - `llamacpp_smollm2.json`: llama.cpp as users run it (Q4_1 weights times
//!   Q8_1-quantized activations, f16 KV cache). Logits differ by a few
//!   tenths, so greedy continuations may part at near-ties; perplexity must
//!   agree within 1%, and greedy continuations must match for 24 tokens on
//!   the prompts whose llama.cpp top-2 margins stay clear of that noise.

mod common;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use q35_reference::{
    GenerateOptions, Logits, PerplexityOptions, PerplexityReport, SamplingParams, kernels::argmax,
};

/// Greedy tokens that must match llama.cpp's.
const MIN_MATCH: usize = 24;

/// The reference's greedy continuation (up to [`GENERATE`] tokens, stopping
/// at EOS) and last-position logits for one prompt.
struct Ours {
    generated: Vec<u32>,
    last_logits: Vec<f32>,
}

/// Tokens generated per prompt (the fixtures record 32).
const GENERATE: usize = 32;

/// Runs every prompt once per test binary; both fixtures share the prompts.
fn ours(prompt: &[u32], eos: u32) -> &'static Ours {
    type Cache = Mutex<HashMap<(Vec<u32>, u32), &'static Ours>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (prompt.to_vec(), eos);
    // Held while computing, so concurrent tests wait instead of repeating work.
    let mut guard = cache.lock().expect("cache");
    if let Some(o) = guard.get(&key) {
        return o;
    }
    let (_, model) = common::smollm2();
    let mut session = model.new_session();
    let last_logits = model
        .forward(&mut session, prompt, Logits::Last)
        .expect("forward");
    session.clear();
    let opts = GenerateOptions {
        max_tokens: GENERATE,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![eos],
    };
    let generated = model
        .generate(&mut session, prompt, &opts, |_| true)
        .expect("generate")
        .tokens;
    let o: &'static Ours = Box::leak(Box::new(Ours {
        generated,
        last_logits,
    }));
    guard.insert(key, o);
    o
}

/// Per prompt: tokens matching llama.cpp's greedy continuation, and our tokens.
fn greedy_matches(fx: &common::Fixture) -> Vec<(usize, Vec<u32>)> {
    fx.greedy
        .iter()
        .map(|g| {
            let o = ours(&g.prompt_tokens, fx.eos);
            let matched = o
                .generated
                .iter()
                .zip(&g.generated)
                .take_while(|(a, b)| a == b)
                .count();
            (matched, o.generated.clone())
        })
        .collect()
}

/// Per prompt: the largest |ours - llama.cpp| over the recorded top logits
/// at the last prompt position, and whether the top-1 tokens agree.
fn last_logits(fx: &common::Fixture) -> Vec<(f32, bool)> {
    fx.greedy
        .iter()
        .map(|g| {
            let logits = &ours(&g.prompt_tokens, fx.eos).last_logits;
            let diff = g
                .last_prompt_top_logits
                .iter()
                .map(|t| (logits[t.id as usize] - t.logit).abs())
                .fold(0.0, f32::max);
            let same_top = argmax(logits) == Some(g.last_prompt_top_logits[0].id as usize);
            (diff, same_top)
        })
        .collect()
}

/// Our perplexity with a fixture run's windows (computed once per token
/// sequence and window setting).
fn our_perplexity(tokens: &[u32], opts: &PerplexityOptions) -> PerplexityReport {
    type Key = (Vec<u32>, usize, Option<usize>, Option<u32>);
    static CACHE: OnceLock<Mutex<HashMap<Key, PerplexityReport>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (tokens.to_vec(), opts.ctx, opts.windows, opts.bos);
    let mut guard = cache.lock().expect("cache");
    if let Some(r) = guard.get(&key) {
        return r.clone();
    }
    let (_, model) = common::smollm2();
    let r = model.perplexity(tokens, opts).expect("perplexity");
    guard.insert(key, r.clone());
    r
}

/// Our perplexity against a fixture's run with window length `ctx`
/// (windows and scored counts must be llama.cpp's); returns (ours, theirs).
fn perplexity_vs(fx: &common::Fixture, ctx: usize) -> (f64, f64) {
    let run = fx
        .perplexity
        .runs
        .iter()
        .find(|r| r.ctx == ctx)
        .expect("a run with this ctx in the fixture");
    let opts = PerplexityOptions {
        ctx: run.ctx,
        windows: Some(run.windows),
        bos: fx.add_bos.then_some(1),
    };
    let ours = our_perplexity(&fx.perplexity.tokens, &opts);
    assert_eq!(ours.windows, run.windows);
    assert_eq!(ours.first, run.first);
    assert_eq!(ours.scored_tokens, run.count);
    for (a, b) in ours.per_window.iter().zip(&run.per_window) {
        assert_eq!((a.start, a.count), (b.start, b.count));
    }
    eprintln!(
        "perplexity ctx {} x {} windows on {}: ours {:.4}, llama.cpp {:.4} ({:+.3}%)",
        run.ctx,
        run.windows,
        fx.perplexity.text_file,
        ours.ppl,
        run.ppl,
        100.0 * (ours.ppl - run.ppl) / run.ppl
    );
    (ours.ppl, run.ppl)
}

#[test]
fn f32_llamacpp_same_logits_and_greedy_tokens() {
    if common::skip() {
        return;
    }
    let fx = common::fixture(common::F32);
    let last = last_logits(&fx);
    let worst = last.iter().map(|l| l.0).fold(0.0, f32::max);
    eprintln!("f32 llama.cpp: largest top-logit difference {worst:.5}");
    assert!(worst < 2e-3, "logits differ from f32 llama.cpp by {worst}");
    assert!(
        last.iter().all(|l| l.1),
        "a top-1 token differs from f32 llama.cpp"
    );
    for ((matched, ours), g) in greedy_matches(&fx).into_iter().zip(&fx.greedy) {
        assert_eq!(
            matched,
            g.generated.len(),
            "{:?}: greedy tokens differ from f32 llama.cpp after {matched}\n ours:  {ours:?}\n llama: {:?}",
            g.prompt,
            g.generated
        );
    }
}

#[test]
fn f32_llamacpp_same_perplexity() {
    if common::skip() {
        return;
    }
    let fx = common::fixture(common::F32);
    let (ours, theirs) = perplexity_vs(&fx, 256);
    assert!((ours - theirs).abs() / theirs < 1e-4, "{ours} vs {theirs}");
}

#[test]
fn q4_1_llamacpp_perplexity_within_one_percent() {
    if common::skip() {
        return;
    }
    let fx = common::fixture(common::Q4_1);
    let (ours, theirs) = perplexity_vs(&fx, 256);
    assert!((ours - theirs).abs() / theirs < 0.01, "{ours} vs {theirs}");
}

#[test]
fn q4_1_llamacpp_greedy_continuations() {
    if common::skip() {
        return;
    }
    let fx = common::fixture(common::Q4_1);
    let last = last_logits(&fx);
    let worst = last.iter().map(|l| l.0).fold(0.0, f32::max);
    eprintln!("Q4_1 llama.cpp: largest top-logit difference {worst:.4}");
    assert!(
        worst < 2.0 * NOISE,
        "logits differ from llama.cpp by {worst}"
    );
    let mut full = 0;
    for (((matched, ours), g), (_, same_top)) in
        greedy_matches(&fx).into_iter().zip(&fx.greedy).zip(&last)
    {
        let need = MIN_MATCH.min(g.generated.len());
        eprintln!(
            "{} {:?}: {matched}/{} tokens match{}",
            g.mode,
            g.prompt,
            g.generated.len(),
            g.margins
                .get(matched)
                .map(|m| format!(", llama.cpp's top-2 margin where they part: {m:.3}"))
                .unwrap_or_default()
        );
        assert_eq!(
            *same_top,
            matched > 0,
            "first token vs last-position argmax"
        );
        if matched >= need {
            full += 1;
        } else {
            // Parting is only acceptable at a near-tie in llama.cpp's logits,
            // within the arithmetic noise between the two.
            assert!(
                g.margins[matched] <= NOISE,
                "{:?}: greedy tokens part from llama.cpp at token {matched}, where its top-2 margin is {} (> {NOISE})\n ours:  {ours:?}\n llama: {:?}",
                g.prompt,
                g.margins[matched],
                g.generated
            );
        }
    }
    assert!(
        full >= MIN_FULL_PROMPTS,
        "only {full} prompts match llama.cpp for {MIN_MATCH} tokens"
    );
}

/// Logit noise between the f32 reference and llama.cpp's quantized
/// arithmetic (Q8_1 activations, f16 KV cache): over the recorded top logits
/// the differences are 0.17-0.86, against 0.00003 with llama.cpp in f32, so
/// they are arithmetic, not semantics. A top-2 margin below this is a
/// near-tie that either side may break; the logits may differ by up to twice
/// this.
const NOISE: f32 = 0.6;

/// Prompts whose greedy continuation must match Q4_1 llama.cpp for
/// [`MIN_MATCH`] tokens.
const MIN_FULL_PROMPTS: usize = 4;

#[test]
fn tokenizer_reproduces_the_fixture_tokens() {
    if common::skip() {
        return;
    }
    let fx = common::fixture(common::Q4_1);
    let (gguf, _) = common::smollm2();
    let tok = q35_tokenizer::Tokenizer::from_gguf(gguf).expect("tokenizer");
    let text_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(&fx.perplexity.text_file);
    let text = std::fs::read_to_string(&text_path).expect("eval text");
    assert_eq!(tok.encode(&text, false), fx.perplexity.tokens);
    for g in &fx.greedy {
        let special = g.mode == "chat";
        assert_eq!(
            tok.encode(&g.prompt, special),
            g.prompt_tokens,
            "{:?}",
            g.prompt
        );
    }
}
