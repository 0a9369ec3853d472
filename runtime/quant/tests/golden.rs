//! The golden forward pass (docs/q35-format.md section 8) against the f32
//! reference running the same quantized matrices through `QuantLinear`: the
//! two differ only in the f32 vector kernels, so their logits must agree
//! closely; the golden pass must not depend on the thread count.

use q35_quant::QuantScheme;
use q35_quant::golden::from_reference;
use q35_quant::model::{
    Calibration, HeadPolicy, SchemePolicy, install, model_weights, quantize_model,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::{Logits, Model};

mod common;

fn tiny() -> Model {
    common::tiny_model(3)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let den: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn golden_matches_reference_path_on_tiny_model() {
    let mut model = tiny();
    let tokens: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 256).collect();
    let calib = Calibration::run(&model, &tokens, 24, 16).unwrap();
    let weights = model_weights(&model).unwrap();
    for scheme in [QuantScheme::Q35, QuantScheme::Q35Rtn, QuantScheme::Int8] {
        // LM head f32: both paths then read the same f32 embedding.
        let policy = SchemePolicy {
            blocks: scheme,
            head: HeadPolicy::KeepF32,
        };
        let layers = quantize_model(
            &model,
            &weights,
            policy,
            32,
            Some(&calib),
            QuantOptions { threads: 2 },
        )
        .unwrap();
        let golden = from_reference(&model, &layers, 32).unwrap();
        let mut gs = golden.new_session();
        let g = golden.run(&mut gs, &tokens[..12]).unwrap();
        assert_eq!(gs.len(), 12);

        let saved = install(&mut model, layers).unwrap();
        let mut rs = model.new_session_with_capacity(32).unwrap();
        let r = model.forward(&mut rs, &tokens[..12], Logits::All).unwrap();
        q35_quant::model::restore(&mut model, saved).unwrap();
        let e = rel_l2(&r, &g);
        println!("{scheme}: golden vs reference path rel L2 {e:.2e}");
        assert!(e < 1e-4, "{scheme}: golden vs reference path rel L2 {e}");
    }
}

#[test]
fn tied_quantized_head_is_also_the_embedding() {
    let model = tiny();
    let weights = model_weights(&model).unwrap();
    let layers = quantize_model(
        &model,
        &weights,
        SchemePolicy::uniform(QuantScheme::Int4),
        32,
        None,
        QuantOptions { threads: 1 },
    )
    .unwrap();
    let head = layers.last().unwrap();
    assert_eq!(head.id.kind, q35_reference::LinearKind::LmHead);
    let golden = from_reference(&model, &layers, 8).unwrap();
    let deq = head.matrix.dequantize();
    assert_eq!(golden.embedding_row(5), Some(&deq[5 * 64..6 * 64]));
    // The whole table, bit for bit (its rows are dequantized in parallel).
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(golden.embedding()), bits(&deq));
    assert_ne!(
        golden.embedding_row(5),
        Some(&model.embedding()[5 * 64..6 * 64])
    );
}

#[test]
fn golden_is_thread_count_independent() {
    let model = tiny();
    let weights = model_weights(&model).unwrap();
    let layers = quantize_model(
        &model,
        &weights,
        SchemePolicy {
            blocks: QuantScheme::Q35Rtn,
            head: HeadPolicy::KeepF32,
        },
        16,
        None,
        QuantOptions { threads: 1 },
    )
    .unwrap();
    let golden = from_reference(&model, &layers, 16).unwrap();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut s = golden.new_session();
            golden.run(&mut s, &[1, 2, 3, 250, 7]).unwrap()
        })
    };
    let a: Vec<u32> = run(1).iter().map(|v| v.to_bits()).collect();
    let b: Vec<u32> = run(3).iter().map(|v| v.to_bits()).collect();
    assert_eq!(a, b);
    // Past the table, and outside the vocabulary: errors, not panics.
    let mut s = golden.new_session();
    assert!(golden.step(&mut s, 256).is_err());
    for _ in 0..16 {
        golden.step(&mut s, 1).unwrap();
    }
    assert!(golden.step(&mut s, 1).is_err());
}
