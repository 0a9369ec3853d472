//! The reference on a tiny synthetic model: the forward pass against an
//! independent naive f64 implementation, prefill vs decode, the causal mask,
//! KV-cache truncation, sampling determinism, GGUF loading and bad input.

use q35_gguf::{GgmlType, Gguf, Value, write::GgufWriter};
use q35_model::Architecture;
use q35_reference::{
    Config, GenerateOptions, Linear, LinearId, LinearKind, Logits, Model, Observer,
    PerplexityOptions, ReferenceError, SamplingParams, StopReason, WeightFormat, WeightMap,
    synthetic_weights,
};

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

fn tiny_weights(seed: u64) -> WeightMap {
    synthetic_weights(
        &Config::from_architecture(&tiny_arch()).expect("valid"),
        seed,
    )
}

fn tiny_model(seed: u64) -> Model {
    Model::from_weights(&tiny_arch(), tiny_weights(seed)).expect("model")
}

/// A deliberately plain f64 LLaMA forward pass over all positions, written
/// from the definition (not from the crate's code).
fn naive_logits(w: &WeightMap, a: &Architecture, tokens: &[u32]) -> Vec<Vec<f64>> {
    let t =
        |name: &str| -> Vec<f64> { w.tensors[name].data.iter().map(|&v| f64::from(v)).collect() };
    let (d, hd, nh, nkv, ffn, vocab) = (
        a.hidden as usize,
        a.head_dim as usize,
        a.heads as usize,
        a.kv_heads as usize,
        a.ffn as usize,
        a.vocab as usize,
    );
    let eps = f64::from(a.norm_eps);
    let matvec = |m: &[f64], x: &[f64], rows: usize| -> Vec<f64> {
        (0..rows)
            .map(|r| (0..x.len()).map(|c| m[r * x.len() + c] * x[c]).sum())
            .collect()
    };
    let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + eps).sqrt();
        x.iter().zip(g).map(|(v, g)| v * s * g).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        for h in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let theta = pos as f64 * f64::from(a.rope_base).powf(-2.0 * i as f64 / hd as f64);
                let (c, s) = (theta.cos(), theta.sin());
                let (x0, x1) = (h[2 * i], h[2 * i + 1]);
                h[2 * i] = x0 * c - x1 * s;
                h[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    };
    let emb = t("token_embd.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| emb[tok as usize * d..(tok as usize + 1) * d].to_vec())
        .collect();
    for b in 0..a.blocks as usize {
        let g = |n: &str| t(&format!("blk.{b}.{n}.weight"));
        let (wq, wk, wv, wo) = (g("attn_q"), g("attn_k"), g("attn_v"), g("attn_output"));
        let (wg, wu, wd) = (g("ffn_gate"), g("ffn_up"), g("ffn_down"));
        let (an, fnrm) = (g("attn_norm"), g("ffn_norm"));
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let h = norm(x, &an);
            let mut q = matvec(&wq, &h, nh * hd);
            let mut k = matvec(&wk, &h, nkv * hd);
            rope(&mut q, p);
            rope(&mut k, p);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, &h, nkv * hd));
        }
        for p in 0..xs.len() {
            let mut att = vec![0.0; nh * hd];
            for h in 0..nh {
                let kvh = h * nkv / nh;
                let q = &qs[p][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let pj = (s - m).exp() / z;
                    for e in 0..hd {
                        att[h * hd + e] += pj * vs[j][kvh * hd + e];
                    }
                }
            }
            let o = matvec(&wo, &att, d);
            for (x, o) in xs[p].iter_mut().zip(o) {
                *x += o;
            }
            let h = norm(&xs[p], &fnrm);
            let gate = matvec(&wg, &h, ffn);
            let up = matvec(&wu, &h, ffn);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = matvec(&wd, &act, d);
            for (x, o) in xs[p].iter_mut().zip(down) {
                *x += o;
            }
        }
    }
    let on = t("output_norm.weight");
    xs.iter()
        .map(|x| matvec(&emb, &norm(x, &on), vocab))
        .collect()
}

#[test]
fn forward_matches_a_naive_f64_implementation() {
    let w = tiny_weights(7);
    let model = Model::from_weights(&tiny_arch(), w.clone()).expect("model");
    let tokens = [3u32, 141, 59, 26, 53, 58, 97, 93, 2, 38];
    let mut s = model.new_session();
    let ours = model
        .forward(&mut s, &tokens, Logits::All)
        .expect("forward");
    let want = naive_logits(&w, &tiny_arch(), &tokens);
    let mut worst = 0.0f64;
    for (p, row) in want.iter().enumerate() {
        for (v, &o) in row.iter().enumerate() {
            worst = worst.max((f64::from(ours[p * 256 + v]) - o).abs());
        }
    }
    assert!(worst < 1e-4, "largest logit difference {worst}");
}

#[test]
fn prefill_equals_token_by_token_decode_bitwise() {
    let model = tiny_model(11);
    let tokens = [5u32, 17, 200, 3, 99, 42, 7, 255];
    let mut s = model.new_session();
    let all = model
        .forward(&mut s, &tokens, Logits::All)
        .expect("prefill");
    let mut s2 = model.new_session();
    for (i, &t) in tokens.iter().enumerate() {
        let row = model.forward(&mut s2, &[t], Logits::Last).expect("decode");
        assert_eq!(row, all[i * 256..(i + 1) * 256], "position {i}");
    }
    // A prefill split in two chunks agrees too.
    let mut s3 = model.new_session();
    model
        .forward(&mut s3, &tokens[..3], Logits::None)
        .expect("chunk 1");
    let rest = model
        .forward(&mut s3, &tokens[3..], Logits::All)
        .expect("chunk 2");
    assert_eq!(rest, all[3 * 256..]);
}

#[test]
fn causal_mask_hides_later_tokens() {
    let model = tiny_model(3);
    let mut s = model.new_session();
    let a = model
        .forward(&mut s, &[1, 2, 3, 4, 5], Logits::All)
        .expect("a");
    let mut s = model.new_session();
    let b = model
        .forward(&mut s, &[1, 2, 3, 200, 100], Logits::All)
        .expect("b");
    assert_eq!(a[..3 * 256], b[..3 * 256]);
    assert_ne!(a[3 * 256..4 * 256], b[3 * 256..4 * 256]);
}

#[test]
fn truncating_the_session_rewinds_positions() {
    let model = tiny_model(5);
    let mut s = model.new_session();
    model
        .forward(&mut s, &[10, 20, 30, 40], Logits::None)
        .expect("run");
    s.truncate(2);
    assert_eq!(s.len(), 2);
    let again = model.forward(&mut s, &[7, 8], Logits::All).expect("again");
    let mut fresh = model.new_session();
    let want = model
        .forward(&mut fresh, &[10, 20, 7, 8], Logits::From(2))
        .expect("fresh");
    assert_eq!(again, want);
}

#[test]
fn thread_count_does_not_change_the_bits() {
    let mut model = tiny_model(9);
    let tokens = [9u32, 8, 7, 6, 5, 4, 3, 2, 1];
    let mut s = model.new_session();
    let two = model.forward(&mut s, &tokens, Logits::All).expect("2");
    model.set_threads(1).expect("1 thread");
    let mut s = model.new_session();
    let one = model.forward(&mut s, &tokens, Logits::All).expect("1");
    model.set_threads(3).expect("3 threads");
    let mut s = model.new_session();
    let three = model.forward(&mut s, &tokens, Logits::All).expect("3");
    assert_eq!(one, two);
    assert_eq!(one, three);
}

#[test]
fn sampling_is_reproducible_and_stops_as_asked() {
    let model = tiny_model(13);
    let run = |seed: u64, max_tokens: usize, stop: Vec<u32>| {
        let mut s = model.new_session();
        let opts = GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                temperature: 1.0,
                top_k: 40,
                top_p: 0.95,
                seed,
            },
            stop_tokens: stop,
        };
        let mut streamed = Vec::new();
        let g = model
            .generate(&mut s, &[1, 2, 3], &opts, |t| {
                streamed.push(t);
                true
            })
            .expect("generate");
        assert_eq!(streamed, g.tokens);
        g
    };
    let a = run(1, 20, vec![]);
    assert_eq!(a.tokens.len(), 20);
    assert_eq!(a.stop, StopReason::MaxTokens);
    assert_eq!(
        a.tokens,
        run(1, 20, vec![]).tokens,
        "same seed, different tokens"
    );
    let b = run(2, 20, vec![]);
    assert_ne!(a.tokens, b.tokens, "different seeds gave identical text");
    // Stop at the 5th token of run `a`, included in the output.
    let stop = a.tokens[4];
    let first = a.tokens.iter().position(|&t| t == stop).expect("present");
    let c = run(1, 20, vec![stop]);
    assert_eq!(c.tokens, a.tokens[..=first]);
    assert_eq!(c.stop, StopReason::StopToken(stop));
    // The context (64 tokens) ends generation.
    let d = run(1, 1000, vec![]);
    assert_eq!(d.stop, StopReason::ContextFull);
    assert_eq!(d.tokens.len(), 64 - 3 + 1);
    // The callback can stop it.
    let mut s = model.new_session();
    let g = model
        .generate(
            &mut s,
            &[1],
            &GenerateOptions {
                max_tokens: 10,
                ..Default::default()
            },
            |_| false,
        )
        .expect("generate");
    assert_eq!((g.tokens.len(), g.stop), (1, StopReason::Callback));
}

#[test]
fn greedy_generation_is_the_argmax_chain() {
    let model = tiny_model(21);
    let mut s = model.new_session();
    let opts = GenerateOptions {
        max_tokens: 6,
        ..Default::default()
    };
    let g = model
        .generate(&mut s, &[4, 5, 6], &opts, |_| true)
        .expect("generate");
    let mut seq = vec![4u32, 5, 6];
    for &t in &g.tokens {
        let mut s = model.new_session();
        let l = model.forward(&mut s, &seq, Logits::Last).expect("forward");
        assert_eq!(Some(t as usize), q35_reference::kernels::argmax(&l));
        seq.push(t);
    }
}

#[test]
fn perplexity_follows_the_llama_perplexity_windows() {
    let model = tiny_model(17);
    let tokens: Vec<u32> = (0..70u32).map(|i| (i * 37 + 11) % 256).collect();
    let opts = PerplexityOptions {
        ctx: 16,
        windows: None,
        bos: None,
    };
    let r = model.perplexity(&tokens, &opts).expect("ppl");
    assert_eq!((r.windows, r.first, r.scored_tokens), (4, 8, 4 * 7));
    // By hand from full logits: window w scores tokens w*16 + 9 .. w*16 + 15.
    let mut nll = 0.0f64;
    for w in 0..4 {
        let mut s = model.new_session();
        let l = model
            .forward(&mut s, &tokens[w * 16..(w + 1) * 16], Logits::All)
            .expect("fwd");
        for j in 8..15 {
            nll -= q35_reference::log_prob(&l[j * 256..(j + 1) * 256], tokens[w * 16 + j + 1]);
        }
    }
    assert!((r.nll_sum - nll).abs() < 1e-9);
    assert!((r.ppl - (nll / 28.0).exp()).abs() < 1e-9);
    // Capped windows, and BOS substitution changes the score.
    let two = model
        .perplexity(
            &tokens,
            &PerplexityOptions {
                windows: Some(2),
                ..opts.clone()
            },
        )
        .expect("2");
    assert_eq!(two.per_window, r.per_window[..2]);
    let bos = model
        .perplexity(
            &tokens,
            &PerplexityOptions {
                bos: Some(1),
                ..opts.clone()
            },
        )
        .expect("bos");
    assert_ne!(bos.nll_sum, r.nll_sum);
    // Too many windows, too long a window: errors.
    assert!(matches!(
        model.perplexity(
            &tokens,
            &PerplexityOptions {
                windows: Some(5),
                ..opts.clone()
            }
        ),
        Err(ReferenceError::NotEnoughTokens { .. })
    ));
    assert!(matches!(
        model.perplexity(
            &tokens,
            &PerplexityOptions {
                ctx: 65,
                ..opts.clone()
            }
        ),
        Err(ReferenceError::ContextOverflow { .. })
    ));
}

#[test]
fn comparing_a_model_with_itself_gives_zero_divergence() {
    let model = tiny_model(17);
    let other = tiny_model(18);
    let tokens: Vec<u32> = (0..64u32).map(|i| (i * 13 + 1) % 256).collect();
    let opts = PerplexityOptions {
        ctx: 32,
        windows: None,
        bos: None,
    };
    let same = model
        .compare(&tiny_model(17), &tokens, &opts)
        .expect("same");
    assert_eq!(same.mean_kld, 0.0);
    assert_eq!(same.top1_agreement, 1.0);
    assert_eq!(same.positions, 2 * 15);
    let diff = model.compare(&other, &tokens, &opts).expect("diff");
    assert!(diff.mean_kld > 0.01 && diff.top1_agreement < 1.0);
    assert_eq!(diff.reference, same.reference);
}

#[derive(Default)]
struct Seen(Vec<(LinearId, usize, usize)>, Vec<(usize, Vec<f32>)>);

impl Observer for Seen {
    fn linear_input(&mut self, id: LinearId, x: &[f32], n_tokens: usize) {
        self.0.push((id, x.len(), n_tokens));
    }

    fn block_output(&mut self, block: usize, x: &[f32], n_tokens: usize) {
        assert_eq!(x.len(), n_tokens * 64);
        self.1.push((block, x.to_vec()));
    }
}

#[test]
fn observer_sees_every_layer_input_in_order() {
    let model = tiny_model(1);
    let mut seen = Seen::default();
    let mut s = model.new_session();
    model
        .forward_observed(&mut s, &[1, 2, 3], Logits::Last, &mut seen)
        .expect("fwd");
    let ids: Vec<LinearId> = seen.0.iter().map(|e| e.0).collect();
    assert_eq!(ids, model.linear_ids());
    for (id, len, n) in &seen.0 {
        let layer = model.linear(*id).expect("layer");
        let rows = if id.kind == LinearKind::LmHead { 1 } else { 3 };
        assert_eq!((*len, *n), (rows * layer.in_features(), 3), "{id}");
    }
    // One residual-stream snapshot per block, in order.
    assert_eq!(seen.1.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 1]);
    assert_ne!(seen.1[0].1, seen.1[1].1);
}

#[derive(Default)]
struct Inputs(Vec<(LinearId, Vec<f32>)>);

impl Observer for Inputs {
    fn linear_input(&mut self, id: LinearId, x: &[f32], _n_tokens: usize) {
        self.0.push((id, x.to_vec()));
    }
}

#[test]
fn observe_sees_what_forward_observed_all_sees_without_logits() {
    let model = tiny_model(1);
    let (mut a, mut b) = (Inputs::default(), Inputs::default());
    let (mut sa, mut sb) = (model.new_session(), model.new_session());
    for chunk in [&[1u32, 2, 3][..], &[4, 5]] {
        let logits = model
            .forward_observed(&mut sa, chunk, Logits::All, &mut a)
            .expect("fwd");
        assert!(!logits.is_empty());
        model.observe(&mut sb, chunk, &mut b).expect("observe");
        assert_eq!(sa.len(), sb.len());
    }
    assert_eq!(a.0.len(), b.0.len());
    for ((ia, xa), (ib, xb)) in a.0.iter().zip(&b.0) {
        assert_eq!(ia, ib);
        let (ba, bb): (Vec<u32>, Vec<u32>) = (
            xa.iter().map(|v| v.to_bits()).collect(),
            xb.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(ba, bb, "{ia}");
    }
    assert!(a.0.iter().any(|(id, _)| id.kind == LinearKind::LmHead));
}

#[derive(Debug)]
struct Zero(usize, usize);

impl Linear for Zero {
    fn in_features(&self) -> usize {
        self.0
    }
    fn out_features(&self) -> usize {
        self.1
    }
    fn forward(&self, _x: &[f32], out: &mut [f32]) {
        out.fill(0.0);
    }
}

#[test]
fn replaced_layers_are_used_and_shapes_checked() {
    let mut model = tiny_model(2);
    let head = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    assert!(model.replace_linear(head, Box::new(Zero(64, 255))).is_err());
    let old = model
        .replace_linear(head, Box::new(Zero(64, 256)))
        .expect("replace");
    assert_eq!(old.out_features(), 256);
    let mut s = model.new_session();
    let l = model.forward(&mut s, &[1, 2], Logits::Last).expect("fwd");
    assert!(l.iter().all(|&v| v == 0.0));
    let bad = LinearId {
        block: Some(9),
        kind: LinearKind::Q,
    };
    assert!(model.replace_linear(bad, Box::new(Zero(64, 64))).is_err());
}

#[test]
fn bad_input_is_a_typed_error() {
    let model = tiny_model(4);
    let mut s = model.new_session();
    assert!(matches!(
        model.forward(&mut s, &[], Logits::Last),
        Err(ReferenceError::EmptyInput)
    ));
    assert!(matches!(
        model.forward(&mut s, &[256], Logits::Last),
        Err(ReferenceError::TokenOutOfRange {
            token: 256,
            vocab: 256
        })
    ));
    let long: Vec<u32> = vec![1; 65];
    assert!(matches!(
        model.forward(&mut s, &long, Logits::Last),
        Err(ReferenceError::ContextOverflow {
            needed: 65,
            context: 64
        })
    ));
    assert!(s.is_empty(), "failed calls leave the session untouched");
    let opts = GenerateOptions {
        max_tokens: 4,
        ..Default::default()
    };
    assert!(matches!(
        model.generate(&mut s, &[], &opts, |_| true),
        Err(ReferenceError::EmptyInput)
    ));
    assert!(matches!(
        model.generate(&mut s, &long, &opts, |_| true),
        Err(ReferenceError::ContextOverflow { .. })
    ));
    // Missing and misshapen weights name the tensor.
    let mut w = tiny_weights(1);
    w.tensors.remove("blk.1.ffn_up.weight");
    let e = Model::from_weights(&tiny_arch(), w).expect_err("missing");
    assert!(e.to_string().contains("blk.1.ffn_up.weight"), "{e}");
    let mut w = tiny_weights(1);
    w.tensors.get_mut("blk.0.attn_k.weight").expect("k").dims = vec![64, 64];
    let e = Model::from_weights(&tiny_arch(), w).expect_err("shape");
    assert!(e.to_string().contains("blk.0.attn_k.weight"), "{e}");
    // An inconsistent architecture.
    let mut a = tiny_arch();
    a.kv_heads = 3;
    assert!(matches!(
        Model::from_weights(&a, tiny_weights(1)),
        Err(ReferenceError::InvalidArchitecture(_))
    ));
}

/// The tiny model as a GGUF file: matrices Q4_1, embedding Q8_0, norms F32.
fn tiny_gguf(arch_name: &str) -> Gguf {
    let w = tiny_weights(23);
    let mut g = GgufWriter::new();
    g.metadata("general.architecture", Value::String(arch_name.into()));
    for (name, t) in &w.tensors {
        if t.dims.len() == 1 {
            g.tensor_f32(name, &t.dims, &t.data);
        } else if name == "token_embd.weight" {
            g.tensor_raw(
                name,
                &t.dims,
                GgmlType::Q8_0,
                q35_gguf::dequant::quantize_q8_0(&t.data),
            );
        } else {
            g.tensor_raw(
                name,
                &t.dims,
                GgmlType::Q4_1,
                q35_gguf::dequant::quantize_q4_1(&t.data),
            );
        }
    }
    Gguf::from_bytes(g.to_bytes()).expect("valid gguf")
}

#[test]
fn gguf_weights_load_identically_in_both_formats() {
    let g = tiny_gguf("llama");
    let native = Model::from_gguf_with(&g, &tiny_arch(), WeightFormat::Native).expect("native");
    let f32 = Model::from_gguf_with(&g, &tiny_arch(), WeightFormat::F32).expect("f32");
    let tokens = [1u32, 50, 100, 150, 200, 250];
    let mut s = native.new_session();
    let a = native.forward(&mut s, &tokens, Logits::All).expect("a");
    let mut s = f32.new_session();
    let b = f32.forward(&mut s, &tokens, Logits::All).expect("b");
    assert_eq!(a, b);
    // Decode (the fused kernels) agrees with prefill on quantized weights too.
    let mut s = native.new_session();
    for (i, &t) in tokens.iter().enumerate() {
        let row = native.forward(&mut s, &[t], Logits::Last).expect("decode");
        assert_eq!(row, a[i * 256..(i + 1) * 256]);
    }
}

#[test]
fn a_non_llama_gguf_is_refused() {
    let g = tiny_gguf("gpt2");
    let e = Model::from_gguf(&g, &tiny_arch()).expect_err("gpt2");
    assert!(
        matches!(e, ReferenceError::UnsupportedArchitecture { ref arch, .. } if arch == "gpt2")
    );
    assert!(e.to_string().contains("gpt2"));
}
