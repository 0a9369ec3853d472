//! The accuracy methods of docs/q35-format.md section 14 on synthetic data:
//! scale migration keeps the f32 model's function, per-group activation
//! scales run as the golden pass and change only the activation rounding,
//! and the per-group scale search never raises the error it minimises.

mod common;

use common::SplitMix64;
use q35_contract::golden::ActivationScales;
use q35_quant::QuantScheme;
use q35_quant::golden::from_reference;
use q35_quant::metrics::{channel_importance, layer_output_error};
use q35_quant::model::{
    Calibration, Methods, QuantPipeline, ReferenceLogits, SchemePolicy, rotate_vo_model,
    smooth_model,
};
use q35_quant::quantize::{GroupCovariance, QuantOptions, quantize_gptq, quantize_gptq_with};
use q35_reference::{Logits, Model};

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 91 + 7) % 256).collect()
}

fn logits(model: &Model, toks: &[u32]) -> Vec<f32> {
    let mut s = model.new_session_with_capacity(toks.len()).unwrap();
    model.forward(&mut s, toks, Logits::All).unwrap()
}

#[test]
fn smoothing_keeps_the_f32_model() {
    let model = common::tiny_model(5);
    let toks = tokens(24);
    let calib = Calibration::run(&model, &toks, 24, 0).unwrap();
    for alpha in [0.0, 0.5, 0.8] {
        let smooth = smooth_model(&model, &calib, alpha).unwrap();
        let (a, b) = (logits(&model, &toks), logits(&smooth, &toks));
        let num: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum();
        let den: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
        let rel = (num / den).sqrt();
        assert!(rel < 1e-5, "alpha {alpha}: relative logit change {rel}");
        // The norms did change (unless alpha = 0 happens to give 1s).
        if alpha > 0.0 {
            assert_ne!(model.blocks()[0].attn_norm, smooth.blocks()[0].attn_norm);
        }
    }
    assert!(smooth_model(&model, &calib, 1.5).is_err());
    // The V/O rotation is orthogonal and folded both ways: same function.
    let rot = rotate_vo_model(&model).unwrap();
    let (a, b) = (logits(&model, &toks), logits(&rot, &toks));
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum();
    let den: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    assert!((num / den).sqrt() < 1e-5, "V/O rotation changed the logits");
    let v = |m: &Model| {
        m.linear(q35_reference::LinearId {
            block: Some(0),
            kind: q35_reference::LinearKind::V,
        })
        .unwrap()
        .weights_f32()
        .unwrap()
        .into_owned()
    };
    assert_ne!(v(&model), v(&rot));
}

#[test]
fn per_group_activation_scales_run_as_the_golden_pass() {
    let model = common::tiny_model(9);
    let toks = tokens(48);
    let r = ReferenceLogits::compute(&model, &toks, 16, None).unwrap();
    let opts = QuantOptions { threads: 2 };
    let run = |methods: Methods| {
        let p = QuantPipeline::calibrate_with(
            &model,
            &toks[..32],
            16,
            8,
            32,
            opts,
            methods,
            &q35_quant::progress::silent,
        )
        .unwrap();
        let layers = p
            .quantize(SchemePolicy::uniform(QuantScheme::Int8))
            .unwrap();
        (p.evaluate(&layers, &r).unwrap(), layers)
    };
    let (token, layers) = run(Methods::default());
    let (group, layers_g) = run(Methods {
        act_scales: ActivationScales::PerGroup,
        ..Methods::default()
    });
    // Same weights (the variant changes only the golden pass); int8 weights
    // leave mostly the activation rounding, which finer scales shrink.
    for (a, b) in layers.iter().zip(&layers_g) {
        assert_eq!(a.matrix, b.matrix);
    }
    println!(
        "int8 KLD: per token {}, per group {}",
        token.mean_kld, group.mean_kld
    );
    assert!(group.mean_kld > 0.0 && group.mean_kld < token.mean_kld);
    // The default golden model is per token; the variant needs one group
    // size everywhere.
    let golden = from_reference(&model, &layers, 16).unwrap();
    assert_eq!(golden.activation_scales(), ActivationScales::PerToken);
    assert!(
        golden
            .with_activation_scales(ActivationScales::PerGroup)
            .is_ok()
    );
}

#[test]
fn rotating_ffn_down_keeps_the_model() {
    let model = common::tiny_model(9);
    let toks = tokens(48);
    let r = ReferenceLogits::compute(&model, &toks, 16, None).unwrap();
    let opts = QuantOptions { threads: 2 };
    let run = |methods: Methods| {
        let p = QuantPipeline::calibrate_with(
            &model,
            &toks[..32],
            16,
            8,
            32,
            opts,
            methods,
            &q35_quant::progress::silent,
        )
        .unwrap();
        let layers = p
            .quantize(SchemePolicy::uniform(QuantScheme::Int8))
            .unwrap();
        p.evaluate(&layers, &r).unwrap()
    };
    let plain = run(Methods::default());
    let rotated = run(Methods {
        rotate_down: true,
        ..Methods::default()
    });
    // int8 weights of the rotated ffn_down on the rotated input compute the
    // same function: the KL divergence stays at the int8 level (a wrong
    // transform would make it large).
    println!(
        "int8 KLD: plain {}, ffn_down rotated {}",
        plain.mean_kld, rotated.mean_kld
    );
    assert!(rotated.mean_kld < 2.0 * plain.mean_kld + 1e-4);
    // The rotation group must be a power of two dividing ffn (128 here).
    let mut bad = Methods {
        rotate_down: true,
        ..Methods::default()
    };
    bad.set_group(q35_reference::LinearKind::LmHead, 48);
    assert!(
        QuantPipeline::calibrate_with(
            &model,
            &toks,
            16,
            8,
            16,
            opts,
            bad,
            &q35_quant::progress::silent
        )
        .is_err()
    );
}

#[test]
fn scale_search_never_raises_the_weighted_error() {
    const ROWS: usize = 64;
    const COLS: usize = 128;
    const G: usize = 64;
    let mut rng = SplitMix64(21);
    let w = rng.gaussians(ROWS * COLS, 0.05);
    let scale: Vec<f32> = (0..COLS)
        .map(|_| (rng.gaussian() * 0.8).exp() as f32)
        .collect();
    let xs: Vec<f32> = (0..1000)
        .flat_map(|_| {
            let z = rng.gaussians(COLS + 2, 1.0);
            (0..COLS)
                .map(|j| (z[j] + 0.7 * z[j + 1] + 0.5 * z[j + 2]) * scale[j])
                .collect::<Vec<_>>()
        })
        .collect();
    let imp = channel_importance(&xs, COLS).unwrap();
    let blocks = (0..COLS / G)
        .map(|g| {
            let mut b = vec![0f32; G * G];
            for x in xs.chunks_exact(COLS) {
                for i in 0..G {
                    for j in 0..G {
                        b[i * G + j] += x[g * G + i] * x[g * G + j] / 1000.0;
                    }
                }
            }
            b
        })
        .collect();
    let cov = GroupCovariance {
        group_size: G,
        cols: COLS,
        blocks,
    };
    let opts = QuantOptions { threads: 2 };
    let plain = quantize_gptq(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &cov, opts).unwrap();
    let searched =
        quantize_gptq_with(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &cov, opts, true).unwrap();
    let off =
        quantize_gptq_with(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &cov, opts, false).unwrap();
    assert_eq!(plain, off, "the search off is quantize_gptq");
    assert_eq!(plain.slot_mask(), searched.slot_mask());
    assert_ne!(
        plain.scales(),
        searched.scales(),
        "some block changed scale"
    );
    // The calibration-set output error is what the search lowers, block by
    // block (its `e^T C e` summed is this error's numerator).
    let e = |m: &q35_quant::QuantizedMatrix| {
        layer_output_error(&w, &m.dequantize(), ROWS, COLS, &xs, 2).unwrap()
    };
    let (ep, es) = (e(&plain), e(&searched));
    println!("calibration output error: gptq {ep:.5}, + scale search {es:.5}");
    assert!(es <= ep, "search {es} vs plain {ep}");
    // A span of two groups scales both groups by one factor per row.
    let wide = GroupCovariance {
        group_size: 2 * G,
        cols: COLS,
        blocks: vec![vec![0.0; 4 * G * G]],
    };
    let zero =
        quantize_gptq_with(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &wide, opts, true).unwrap();
    // A zero covariance means no GPTQ and nothing to search: plain rounding.
    let rtn =
        q35_quant::quantize::quantize_with(&w, ROWS, COLS, QuantScheme::Q35, G, Some(&imp), opts)
            .unwrap();
    assert_eq!(zero, rtn);
    // With a real two-group covariance the search lowers the error too.
    let mut span = vec![0f32; COLS * COLS];
    for x in xs.chunks_exact(COLS) {
        for i in 0..COLS {
            for j in 0..COLS {
                span[i * COLS + j] += x[i] * x[j] / 1000.0;
            }
        }
    }
    let wide = GroupCovariance {
        group_size: COLS,
        cols: COLS,
        blocks: vec![span],
    };
    let plain = quantize_gptq(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &wide, opts).unwrap();
    let searched =
        quantize_gptq_with(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &wide, opts, true).unwrap();
    let (ep, es) = (e(&plain), e(&searched));
    println!("two-group spans: gptq {ep:.5}, + scale search {es:.5}");
    assert!(es <= ep, "search {es} vs plain {ep}");
}

/// A tied synthetic model of hidden 96 (a power-of-two block of 32, three
/// blocks: the Kronecker form mixes across them).
fn model_96(seed: u64) -> Model {
    let config = q35_reference::Config {
        blocks: 2,
        hidden: 96,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 128,
        vocab: 256,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        context: 64,
    };
    let w = q35_reference::synthetic_weights(&config, seed);
    Model::from_config_weights(config, w).unwrap()
}

fn rel_change(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn stream_rotation_keeps_the_f32_model() {
    use q35_quant::model::{StreamRotation, rotate_head_model, rotate_stream_model};
    use q35_reference::{LinearId, LinearKind};
    let toks = tokens(24);
    for model in [common::tiny_model(5), model_96(6)] {
        let d = model.config().hidden;
        let want = logits(&model, &toks);
        for kind in StreamRotation::ALL {
            let rot = rotate_stream_model(&model, kind).unwrap();
            let got = logits(&rot.model, &toks);
            let rel = rel_change(&want, &got);
            assert!(
                rel < 1e-5,
                "{kind} at hidden {d}: relative logit change {rel}"
            );
            // Norms folded to 1, the table rotated (and it is what the head
            // quantizes), the head's mix a full matrix.
            let m = &rot.model;
            assert!(m.blocks()[1].ffn_norm.iter().all(|&g| g == 1.0));
            assert!(m.output_norm().iter().all(|&g| g == 1.0));
            assert_ne!(m.embedding(), model.embedding());
            let head = m
                .linear(LinearId {
                    block: None,
                    kind: LinearKind::LmHead,
                })
                .unwrap()
                .weights_f32()
                .unwrap();
            assert_eq!(&head[..], m.embedding());
            assert_eq!(rot.head_mix.len(), d * d);
            // Each embedding row keeps its length (R is orthogonal).
            let norm = |r: &[f32]| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
            let (a, b) = (norm(&model.embedding()[..d]), norm(&m.embedding()[..d]));
            assert!((a - b).abs() < 1e-5 * a, "{kind}: row norm {a} -> {b}");

            // With block Hadamard the mix is block-diagonal, and skipping its
            // zero entries (what a machine does) gives the same bits as the
            // definition's dense sum along lanes.
            if kind == StreamRotation::BlockHadamard {
                let b = 1usize << d.trailing_zeros();
                let mix = &rot.head_mix;
                assert!((0..d * d).all(|k| k / d / b == k % d / b || mix[k] == 0.0));
                let mut rng = common::SplitMix64(d as u64);
                for _ in 0..20 {
                    let x = rng.gaussians(d, 1.0);
                    let mut dense = vec![0f32; d];
                    q35_contract::semantics::mix_along_lanes(mix, &x, &mut dense);
                    let skipped: Vec<f32> = (0..d)
                        .map(|r| {
                            let lo = r / b * b;
                            let mut s = 0f32;
                            for i in lo..lo + b {
                                s += mix[r * d + i] * x[i];
                            }
                            s
                        })
                        .collect();
                    assert_eq!(
                        dense.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        skipped.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    );
                }
            }

            // The head rotation: blocks and lookup as they were, the head
            // mixes, then multiplies by the rotated table.
            let rot = rotate_head_model(&model, kind).unwrap();
            let got = logits(&rot.model, &toks);
            let rel = rel_change(&want, &got);
            assert!(
                rel < 1e-5,
                "head {kind} at hidden {d}: relative logit change {rel}"
            );
            let m = &rot.model;
            assert_eq!(m.embedding(), model.embedding());
            assert_eq!(m.blocks()[1].ffn_norm, model.blocks()[1].ffn_norm);
            let head = m
                .linear(LinearId {
                    block: None,
                    kind: LinearKind::LmHead,
                })
                .unwrap()
                .weights_f32()
                .unwrap();
            assert_ne!(&head[..], model.embedding());
            // The embedding mix undoes the table's rotation (R^T R = I).
            let mut back = vec![0f32; d];
            q35_contract::semantics::mix_along_lanes(&rot.embedding_mix, &head[..d], &mut back);
            let rel = rel_change(&model.embedding()[..d], &back);
            assert!(rel < 1e-6, "head {kind}: lookup un-rotation off by {rel}");
        }
    }
    assert!(rotate_head_model(&untied_96(), StreamRotation::Random).is_err());
    assert!(rotate_stream_model(&untied_96(), StreamRotation::Random).is_err());
}

fn untied_96() -> Model {
    let mut untied = model_96(7).config().clone();
    untied.tied_embeddings = false;
    let w = q35_reference::synthetic_weights(&untied, 7);
    Model::from_config_weights(untied, w).unwrap()
}

#[test]
fn stream_rotation_runs_as_the_golden_variant() {
    use q35_quant::model::StreamRotation;
    let model = model_96(9);
    let toks = tokens(48);
    let r = ReferenceLogits::compute(&model, &toks, 16, None).unwrap();
    let opts = QuantOptions { threads: 2 };
    let run = |methods: Methods, scheme| {
        let p = QuantPipeline::calibrate_with(
            &model,
            &toks[..32],
            16,
            8,
            32,
            opts,
            methods,
            &q35_quant::progress::silent,
        )
        .unwrap();
        let layers = p.quantize(SchemePolicy::uniform(scheme)).unwrap();
        let golden = from_reference(p.model(), &layers, 16).unwrap();
        (p.evaluate(&layers, &r).unwrap(), golden)
    };
    let (plain, golden) = run(Methods::default(), QuantScheme::Int8);
    assert!(golden.head_mix().is_none());
    for kind in StreamRotation::ALL {
        let methods = Methods {
            rotate_stream: Some(kind),
            ..Methods::default()
        };
        let (rotated, _) = run(methods, QuantScheme::Int8);
        // int8 weights of the rotated model, with the head mixed on line,
        // compute the same function: the KL divergence stays at the int8
        // level (a wrong fold or a missing mix would make it large).
        println!(
            "int8 KLD: plain {}, stream rotated ({kind}) {}",
            plain.mean_kld, rotated.mean_kld
        );
        assert!(rotated.mean_kld < 3.0 * plain.mean_kld + 1e-4);
        let (q35, _) = run(methods, QuantScheme::Q35);
        println!("q35 KLD, stream rotated ({kind}): {}", q35.mean_kld);
        assert!(q35.mean_kld.is_finite() && q35.mean_kld < 1.0);
        // The head rotation likewise (the lookup un-rotates the table).
        let methods = Methods {
            rotate_head: Some(kind),
            ..Methods::default()
        };
        let (head, _) = run(methods, QuantScheme::Int8);
        println!("int8 KLD, head rotated ({kind}) {}", head.mean_kld);
        assert!(head.mean_kld < 3.0 * plain.mean_kld + 1e-4);
    }
    // The two rotations exclude each other.
    let both = Methods {
        rotate_stream: Some(StreamRotation::Random),
        rotate_head: Some(StreamRotation::Random),
        ..Methods::default()
    };
    assert!(
        QuantPipeline::calibrate_with(
            &model,
            &toks,
            16,
            8,
            32,
            opts,
            both,
            &q35_quant::progress::silent
        )
        .is_err()
    );
    // Combined with the other variants it still builds and runs.
    let all = Methods {
        rotate_stream: Some(StreamRotation::KronHadamard),
        rotate_down: true,
        act_scales: ActivationScales::PerGroup,
        ..Methods::default()
    };
    let (both, _) = run(all, QuantScheme::Int8);
    assert!(both.mean_kld < 3.0 * plain.mean_kld + 1e-4);
}

/// `e^T C e` summed over the rows of `w - q` (`rows x cols`), `C` the
/// whole input covariance (one block as wide as the row).
fn full_weighted_error(w: &[f32], q: &[f32], cols: usize, c: &[f32]) -> f64 {
    w.chunks_exact(cols)
        .zip(q.chunks_exact(cols))
        .map(|(wr, qr)| {
            let e: Vec<f64> = wr
                .iter()
                .zip(qr)
                .map(|(a, b)| f64::from(*a) - f64::from(*b))
                .collect();
            (0..cols)
                .map(|i| {
                    e[i] * (0..cols)
                        .map(|j| f64::from(c[i * cols + j]) * e[j])
                        .sum::<f64>()
                })
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn gptq_over_whole_rows_lowers_the_rows_output_error() {
    let model = common::tiny_model(17);
    let toks = tokens(64);
    let opts = QuantOptions { threads: 2 };
    let calibrate = |methods: Methods| {
        QuantPipeline::calibrate_with(
            &model,
            &toks,
            32,
            8,
            32,
            opts,
            methods,
            &q35_quant::progress::silent,
        )
    };
    let in_group = calibrate(Methods::default()).unwrap();
    // ffn is 128 wide here: a span of 128 is GPTQ over ffn_down's whole rows
    // (and over the 64-wide inputs' whole rows, one ragged span).
    let whole = calibrate(Methods {
        gptq_span: Some(128),
        ..Methods::default()
    })
    .unwrap();
    let down = q35_reference::LinearId {
        block: Some(1),
        kind: q35_reference::LinearKind::Down,
    };
    let cov = whole.calibration().covariance(down).unwrap();
    assert_eq!((cov.group_size, cov.blocks.len()), (128, 1));
    let q = q35_reference::LinearId {
        block: Some(0),
        kind: q35_reference::LinearKind::Q,
    };
    let cov_q = whole.calibration().covariance(q).unwrap();
    assert_eq!(cov_q.blocks.len(), 1);
    assert_eq!(cov_q.blocks[0].len(), 64 * 64);
    let policy = SchemePolicy::uniform(QuantScheme::Q35);
    let (a, b) = (
        in_group.quantize(policy).unwrap(),
        whole.quantize(policy).unwrap(),
    );
    let w = model
        .linear(down)
        .unwrap()
        .weights_f32()
        .unwrap()
        .into_owned();
    let pick = |layers: &[q35_quant::model::QuantizedLayer]| {
        layers
            .iter()
            .find(|l| l.id == down)
            .unwrap()
            .matrix
            .dequantize()
    };
    let (qa, qb) = (pick(&a), pick(&b));
    assert_ne!(qa, qb, "the span changed nothing");
    let (ea, eb) = (
        full_weighted_error(&w, &qa, 128, &cov.blocks[0]),
        full_weighted_error(&w, &qb, 128, &cov.blocks[0]),
    );
    println!("ffn_down output error: in-group GPTQ {ea}, whole rows {eb}");
    assert!(eb < ea, "whole-row GPTQ {eb} >= in-group {ea}");
    // A span that is not a multiple of every group size is refused.
    for span in [16, 48] {
        let err = calibrate(Methods {
            gptq_span: Some(span),
            ..Methods::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("GPTQ span"), "{err}");
    }
}
