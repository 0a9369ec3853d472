//! Sequential (block-by-block) calibration and the asymmetric GPTQ target
//! (docs/q35-format.md section 14) on synthetic data: one block at a time
//! gives the whole pass's bits, block 1 is calibrated on block 0's
//! quantized output exactly as a hand computation gives it, alpha 0 is plain
//! GPTQ, and the asymmetric target lowers the error against the f32 output.

mod common;

use common::SplitMix64;
use q35_contract::ActivationScales;
use q35_quant::QuantScheme;
use q35_quant::metrics::channel_importance;
use q35_quant::model::{
    Calibration, Methods, QuantPipeline, SchemePolicy, Sequential, asymmetric_target,
};
use q35_quant::quantize::{GroupCovariance, QuantOptions, quantize_gptq};
use q35_reference::{LinearId, LinearKind, Model, Observer};

const WINDOW: usize = 16;
const GROUP: usize = 32;

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 91 + 7) % 256).collect()
}

fn pipeline(model: &Model, methods: Methods) -> QuantPipeline<'_> {
    QuantPipeline::calibrate_with(
        model,
        &tokens(48),
        WINDOW,
        0,
        GROUP,
        QuantOptions { threads: 2 },
        methods,
        &q35_quant::progress::silent,
    )
    .unwrap()
}

fn embed(model: &Model, toks: &[u32]) -> Vec<f32> {
    let d = model.config().hidden;
    toks.iter()
        .flat_map(|&t| model.embedding()[t as usize * d..(t as usize + 1) * d].to_vec())
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The residual after the last block, as `Model::observe` shows it.
#[derive(Default)]
struct LastBlock(Vec<f32>);

impl Observer for LastBlock {
    fn linear_input(&mut self, _: LinearId, _: &[f32], _: usize) {}
    fn block_output(&mut self, _: usize, x: &[f32], _: usize) {
        self.0 = x.to_vec();
    }
}

#[test]
fn one_block_at_a_time_is_the_whole_pass() {
    let model = common::tiny_model(5);
    let toks = tokens(WINDOW);
    // The f32 reference.
    let mut whole = LastBlock::default();
    let mut s = model.new_session_with_capacity(WINDOW).unwrap();
    model.observe(&mut s, &toks, &mut whole).unwrap();
    let mut x = embed(&model, &toks);
    for b in 0..model.blocks().len() {
        model.run_block(b, None, &mut x, None).unwrap();
    }
    assert_eq!(bits(&x), bits(&whole.0));
    assert!(model.run_block(9, None, &mut x, None).is_err());
    assert!(model.run_block(0, None, &mut x[..10], None).is_err());
    // The golden model: token after token through every block, or block
    // after block over every token.
    let p = pipeline(&model, Methods::default());
    let layers = p.quantize(SchemePolicy::uniform(QuantScheme::Q35)).unwrap();
    let golden = p.golden(&layers, WINDOW).unwrap();
    let mut session = golden.new_session();
    let want: Vec<f32> = toks
        .iter()
        .flat_map(|&t| golden.advance(&mut session, t).unwrap())
        .collect();
    let d = model.config().hidden;
    let mut x: Vec<f32> = toks
        .iter()
        .flat_map(|&t| golden.embedding_row(t as usize).unwrap().to_vec())
        .collect();
    let mut session = golden.new_session();
    for b in 0..golden.blocks().len() {
        for row in x.chunks_exact_mut(d) {
            golden.advance_block(&mut session, b, row).unwrap();
        }
    }
    assert_eq!(bits(&x), bits(&want));
    assert!(golden.advance_block(&mut session, 7, &mut x[..d]).is_err());
    // Token-batched (`advance_block_tokens`, the sequential int8 stream's
    // form): the whole window at once, or in two runs (the second starting
    // at position 5 behind the first's cache), with token or group
    // activation scales: the same residuals and KV caches, bit for bit.
    for scales in [ActivationScales::PerToken, ActivationScales::PerGroup] {
        let golden = p
            .golden(&layers, WINDOW)
            .unwrap()
            .with_activation_scales(scales)
            .unwrap();
        let embedded: Vec<f32> = toks
            .iter()
            .flat_map(|&t| golden.embedding_row(t as usize).unwrap().to_vec())
            .collect();
        let mut want = embedded.clone();
        let mut one = golden.new_session();
        for b in 0..golden.blocks().len() {
            for row in want.chunks_exact_mut(d) {
                golden.advance_block(&mut one, b, row).unwrap();
            }
        }
        for split in [WINDOW, 5] {
            let mut x = embedded.clone();
            let mut batched = golden.new_session();
            for b in 0..golden.blocks().len() {
                let (head, tail) = x.split_at_mut(split * d);
                golden.advance_block_tokens(&mut batched, b, head).unwrap();
                if !tail.is_empty() {
                    golden.advance_block_tokens(&mut batched, b, tail).unwrap();
                }
            }
            assert_eq!(bits(&x), bits(&want), "{scales:?}, split {split}");
            for b in 0..golden.blocks().len() {
                assert_eq!(
                    (
                        bits(batched.keys(b).unwrap()),
                        bits(batched.values(b).unwrap())
                    ),
                    (bits(one.keys(b).unwrap()), bits(one.values(b).unwrap())),
                    "{scales:?}, split {split}, block {b}"
                );
            }
        }
        // Past the positions the model holds, and rows that are not whole.
        let mut s = golden.new_session();
        let mut long = vec![0f32; (WINDOW + 1) * d];
        assert!(golden.advance_block_tokens(&mut s, 0, &mut long).is_err());
        assert!(
            golden
                .advance_block_tokens(&mut s, 0, &mut long[..d + 1])
                .is_err()
        );
        assert!(
            golden
                .advance_block_tokens(&mut s, 9, &mut long[..d])
                .is_err()
        );
    }
}

fn q_input(block: usize) -> LinearId {
    LinearId {
        block: Some(block),
        kind: LinearKind::Q,
    }
}

#[test]
fn block_1_is_calibrated_behind_the_quantized_block_0() {
    let model = common::tiny_model(5);
    let p = pipeline(
        &model,
        Methods {
            sequential: Some(Sequential::Int8),
            ..Methods::default()
        },
    );
    let policy = SchemePolicy::uniform(QuantScheme::Q35);
    let (layers, rec) = p
        .quantize_sequential(policy, &q35_quant::progress::silent)
        .unwrap();
    assert_eq!(layers.len(), 2 * 7 + 1);
    // `quantize` gives the same layers.
    assert_eq!(
        p.quantize(policy)
            .unwrap()
            .iter()
            .map(|l| (l.id, l.matrix.clone()))
            .collect::<Vec<_>>(),
        layers
            .iter()
            .map(|l| (l.id, l.matrix.clone()))
            .collect::<Vec<_>>()
    );
    // Block 0 sees the f32 model's inputs: the f32 calibration's moments.
    let whole = pipeline(&model, Methods::default());
    assert_eq!(
        rec.covariance(q_input(0)).unwrap(),
        whole.calibration().covariance(q_input(0)).unwrap()
    );
    // Block 1 by hand: the embedding through block 0 as the golden model
    // runs it with the quantized matrices, then block 1's attention norm;
    // the in-group sums of x x^T in token order, over the token count.
    let golden = p.golden(&layers, WINDOW).unwrap();
    let c = model.config();
    let d = c.hidden;
    let mut sums = vec![vec![0f32; GROUP * GROUP]; d / GROUP];
    let mut n = 0usize;
    for window in tokens(48).chunks(WINDOW) {
        let mut session = golden.new_session();
        let mut x = embed(&model, window);
        for row in x.chunks_exact_mut(d) {
            golden.advance_block(&mut session, 0, row).unwrap();
            let mut h = vec![0f32; d];
            q35_reference::kernels::rms_norm(row, &model.blocks()[1].attn_norm, c.norm_eps, &mut h);
            for (g, s) in sums.iter_mut().enumerate() {
                let x = &h[g * GROUP..(g + 1) * GROUP];
                for i in 0..GROUP {
                    for j in 0..GROUP {
                        s[i * GROUP + j] += x[i] * x[j];
                    }
                }
            }
            n += 1;
        }
    }
    let want = GroupCovariance {
        group_size: GROUP,
        cols: d,
        blocks: sums
            .iter()
            .map(|b| b.iter().map(|v| v / n as f32).collect())
            .collect(),
    };
    let got = rec.covariance(q_input(1)).unwrap();
    assert_eq!(got, want);
    assert_ne!(got, whole.calibration().covariance(q_input(1)).unwrap());
    // No asymmetry asked: no cross moments.
    assert!(rec.cross_covariance(q_input(1)).is_none());
    // The dequantized-f32 stream is another stream again.
    let pd = pipeline(
        &model,
        Methods {
            sequential: Some(Sequential::Dequant),
            ..Methods::default()
        },
    );
    let (_, rec_d) = pd
        .quantize_sequential(policy, &q35_quant::progress::silent)
        .unwrap();
    let dq = rec_d.covariance(q_input(1)).unwrap();
    assert_ne!(dq, got);
    assert_ne!(dq, whole.calibration().covariance(q_input(1)).unwrap());
}

#[test]
fn asymmetry_zero_is_plain_gptq_bit_for_bit() {
    let model = common::tiny_model(7);
    let policy = SchemePolicy::uniform(QuantScheme::Q35);
    let run = |asymmetric| {
        let p = pipeline(
            &model,
            Methods {
                sequential: Some(Sequential::Int8),
                asymmetric,
                ..Methods::default()
            },
        );
        p.quantize_sequential(policy, &q35_quant::progress::silent)
            .unwrap()
    };
    let (plain, _) = run(None);
    let (zero, rec0) = run(Some(0.0));
    let (quarter, rec) = run(Some(0.25));
    let m = |l: &[q35_quant::model::QuantizedLayer]| {
        l.iter().map(|l| l.matrix.clone()).collect::<Vec<_>>()
    };
    assert_eq!(m(&plain), m(&zero));
    assert_ne!(m(&plain), m(&quarter));
    // Alpha 0 records no cross moments; block 0 sees the f32 inputs, so its
    // cross moments are zero, block 1's are not.
    assert!(rec0.cross_covariance(q_input(1)).is_none());
    let zero_blocks = |c: &GroupCovariance| c.blocks.iter().flatten().all(|&v| v == 0.0);
    assert!(zero_blocks(&rec.cross_covariance(q_input(0)).unwrap()));
    assert!(!zero_blocks(&rec.cross_covariance(q_input(1)).unwrap()));
    // The LM head's too (the final stream differs).
    let head = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    assert!(!zero_blocks(&rec.cross_covariance(head).unwrap()));
}

#[test]
fn asymmetric_target_lowers_the_error_against_the_f32_output() {
    const ROWS: usize = 32;
    const COLS: usize = 128;
    const G: usize = 64;
    const T: usize = 2000;
    let mut rng = SplitMix64(33);
    let w = rng.gaussians(ROWS * COLS, 0.05);
    let scale: Vec<f32> = (0..COLS)
        .map(|_| (rng.gaussian() * 0.6).exp() as f32)
        .collect();
    // f32 inputs, and the quantized model's: a known perturbation (a gain,
    // a leak from the next channel and noise).
    let mut x_fp = Vec::with_capacity(T * COLS);
    let mut x_q = Vec::with_capacity(T * COLS);
    for _ in 0..T {
        let z = rng.gaussians(COLS + 1, 1.0);
        let e = rng.gaussians(COLS, 0.1);
        for j in 0..COLS {
            let f = (z[j] + 0.5 * z[j + 1]) * scale[j];
            x_fp.push(f);
            x_q.push(0.85 * f + 0.2 * z[j + 1] * scale[j] + e[j] * scale[j]);
        }
    }
    let moments = |a: &[f32], b: &[f32]| GroupCovariance {
        group_size: G,
        cols: COLS,
        blocks: (0..COLS / G)
            .map(|g| {
                let mut m = vec![0f32; G * G];
                for (ra, rb) in a.chunks_exact(COLS).zip(b.chunks_exact(COLS)) {
                    for i in 0..G {
                        for j in 0..G {
                            m[i * G + j] += ra[g * G + i] * rb[g * G + j] / T as f32;
                        }
                    }
                }
                m
            })
            .collect(),
    };
    let delta: Vec<f32> = x_fp.iter().zip(&x_q).map(|(f, q)| f - q).collect();
    let h = moments(&x_q, &x_q);
    let dx = moments(&delta, &x_q);
    let imp = channel_importance(&x_q, COLS).unwrap();
    let opts = QuantOptions { threads: 2 };
    let q = |w: &[f32]| {
        quantize_gptq(w, ROWS, COLS, QuantScheme::Q35, G, &imp, &h, opts)
            .unwrap()
            .dequantize()
    };
    // sum_t ||W x_fp - Q x_q||^2 / sum_t ||W x_fp||^2.
    let err = |qw: &[f32]| {
        let (mut num, mut den) = (0f64, 0f64);
        for (f, xq) in x_fp.chunks_exact(COLS).zip(x_q.chunks_exact(COLS)) {
            for r in 0..ROWS {
                let row = &w[r * COLS..(r + 1) * COLS];
                let qrow = &qw[r * COLS..(r + 1) * COLS];
                let y: f64 = row.iter().zip(f).map(|(a, b)| f64::from(a * b)).sum();
                let yq: f64 = qrow.iter().zip(xq).map(|(a, b)| f64::from(a * b)).sum();
                num += (y - yq).powi(2);
                den += y * y;
            }
        }
        (num / den).sqrt()
    };
    let plain = err(&q(&w));
    let half = err(&q(&asymmetric_target(&w, &h, &dx, 0.5).unwrap()));
    let full = err(&q(&asymmetric_target(&w, &h, &dx, 1.0).unwrap()));
    println!(
        "||W X_fp - Q X_q|| / ||W X_fp||: gptq {plain:.4}, alpha 0.5 {half:.4}, alpha 1 {full:.4}"
    );
    assert!(full < plain, "alpha 1 {full} vs plain {plain}");
    assert!(half < plain, "alpha 0.5 {half} vs plain {plain}");
    // Alpha 0 leaves the weights as they are; out of [0, 1] is refused.
    assert_eq!(
        bits(&asymmetric_target(&w, &h, &dx, 0.0).unwrap()),
        bits(&w)
    );
    assert!(asymmetric_target(&w, &h, &dx, 1.5).is_err());
    assert!(asymmetric_target(&w, &h, &dx, -0.1).is_err());
}

#[test]
fn bad_values_are_refused_naming_the_option() {
    let model = common::tiny_model(5);
    let err = |methods: Methods| {
        QuantPipeline::calibrate_with(
            &model,
            &tokens(32),
            WINDOW,
            0,
            GROUP,
            QuantOptions { threads: 1 },
            methods,
            &q35_quant::progress::silent,
        )
        .unwrap_err()
        .to_string()
    };
    let e = err(Methods {
        sequential: Some(Sequential::Int8),
        asymmetric: Some(1.5),
        ..Methods::default()
    });
    assert!(
        e.contains("--asymmetric 1.5") && e.contains("[0, 1]"),
        "{e}"
    );
    let e = err(Methods {
        sequential: Some(Sequential::Int8),
        asymmetric: Some(-0.5),
        ..Methods::default()
    });
    assert!(e.contains("--asymmetric -0.5"), "{e}");
    let e = err(Methods {
        asymmetric: Some(0.25),
        ..Methods::default()
    });
    assert!(
        e.contains("--asymmetric") && e.contains("needs --sequential"),
        "{e}"
    );
    let e = err(Methods {
        sequential: Some(Sequential::Dequant),
        rotate_down: true,
        ..Methods::default()
    });
    assert!(
        e.contains("--sequential") && e.contains("--rotate-down"),
        "{e}"
    );
    assert_eq!("int8".parse::<Sequential>(), Ok(Sequential::Int8));
    assert_eq!("dequant".parse::<Sequential>(), Ok(Sequential::Dequant));
    let e = "int4".parse::<Sequential>().unwrap_err();
    assert!(e.contains("int4") && e.contains("int8 or dequant"), "{e}");
    // Without the method, quantize_sequential says so.
    let p = pipeline(&model, Methods::default());
    assert!(
        p.quantize_sequential(
            SchemePolicy::uniform(QuantScheme::Q35),
            &q35_quant::progress::silent
        )
        .is_err()
    );
    let _ = Calibration::new(0);
}
