//! Whole-model plumbing on a synthetic tiny model: calibration records,
//! shared covariances, the evaluation protocol (cross-checked against
//! q35-reference's own perplexity), install/restore.

use q35_quant::QuantScheme;
use q35_quant::golden::from_reference;
use q35_quant::model::{
    Calibration, HeadPolicy, ReferenceLogits, SchemePolicy, install, model_weights, quantize_model,
    restore,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::{LinearId, LinearKind, Logits, Model, PerplexityOptions};

mod common;

fn tiny() -> Model {
    common::tiny_model(9)
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 91 + 7) % 256).collect()
}

/// Bits of every value, so equal means bit for bit.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn concurrent_calibration_windows_record_the_same_bits() {
    // With two or more threads the windows run two at a time and are
    // replayed in order: every sum and the reservoir sample must be those
    // of one window after the other. Five windows (the last short) and a
    // reservoir of 8 rows that replaces rows in every window.
    let toks = tokens(70);
    let mut one = tiny();
    one.set_threads(1).unwrap();
    let serial = Calibration::run_with_covariance(&one, &toks, 16, 8, 32).unwrap();
    for threads in [2, 3] {
        let mut model = tiny();
        model.set_threads(threads).unwrap();
        let calib = Calibration::run_with_covariance(&model, &toks, 16, 8, 32).unwrap();
        for lid in model.linear_ids() {
            let (a, b) = (serial.layer(lid).unwrap(), calib.layer(lid).unwrap());
            assert_eq!(a.tokens(), 70, "{lid}");
            assert_eq!(a.tokens(), b.tokens(), "{lid}");
            assert_eq!(bits(&a.importance()), bits(&b.importance()), "{lid}");
            assert_eq!(bits(a.abs_max()), bits(b.abs_max()), "{lid}");
            assert_eq!(bits(a.samples()), bits(b.samples()), "{lid}");
            let (ca, cb) = (
                serial.covariance(lid).unwrap(),
                calib.covariance(lid).unwrap(),
            );
            assert_eq!(ca.blocks.len(), cb.blocks.len(), "{lid}");
            for (x, y) in ca.blocks.iter().zip(&cb.blocks) {
                assert_eq!(bits(x), bits(y), "{lid} at {threads} threads");
            }
        }
    }
}

#[test]
fn shared_gptq_factors_quantize_as_fresh_ones() {
    // quantize_model computes each input's GPTQ factors once (Q, K, V and
    // gate, up share them, on any worker); every matrix must be the one
    // quantize_gptq gives from the covariance alone.
    let model = tiny();
    let calib = Calibration::run_with_covariance(&model, &tokens(40), 16, 8, 32).unwrap();
    let weights = model_weights(&model).unwrap();
    for threads in [1, 3] {
        let layers = quantize_model(
            &model,
            &weights,
            SchemePolicy::uniform(QuantScheme::Q35),
            32,
            Some(&calib),
            QuantOptions { threads },
        )
        .unwrap();
        for (l, (id, w)) in layers.iter().zip(&weights) {
            assert_eq!(l.id, *id);
            let lin = model.linear(*id).unwrap();
            let (rows, cols) = (lin.out_features(), lin.in_features());
            let imp = calib.layer(*id).unwrap().importance();
            let cov = calib.covariance(*id).unwrap();
            let fresh = q35_quant::quantize::quantize_gptq(
                w,
                rows,
                cols,
                QuantScheme::Q35,
                32,
                &imp,
                &cov,
                QuantOptions { threads: 1 },
            )
            .unwrap();
            assert_eq!(l.matrix, fresh, "{id} at {threads} threads");
        }
    }
}

#[test]
fn calibration_records_every_layer() {
    let model = tiny();
    let toks = tokens(40);
    let calib = Calibration::run_with_covariance(&model, &toks, 16, 8, 32).unwrap();
    let id = |b, kind| LinearId {
        block: Some(b),
        kind,
    };
    for lid in model.linear_ids() {
        let l = calib
            .layer(lid)
            .unwrap_or_else(|| panic!("{lid} not recorded"));
        assert_eq!(l.tokens(), 40, "{lid}");
        assert_eq!(
            l.samples().len(),
            8 * l.cols(),
            "{lid}: reservoir holds max_samples rows"
        );
        assert!(l.importance().iter().all(|&v| v >= 0.0 && v.is_finite()));
        let cov = calib.covariance(lid).unwrap();
        assert_eq!((cov.group_size, cov.cols), (32, l.cols()));
        // The diagonal of the covariance is the importance.
        let imp = l.importance();
        let n = 32.min(l.cols());
        for (i, &want) in imp.iter().take(n).enumerate() {
            let d = cov.blocks[0][i * n + i];
            assert!(
                (d - want).abs() <= 1e-4 * want.max(1e-6),
                "{lid}: {d} vs {want}"
            );
        }
    }
    // Q, K, V (and gate, up) read the same input and share one record.
    assert_eq!(
        calib.covariance(id(1, LinearKind::K)),
        calib.covariance(id(1, LinearKind::Q))
    );
    assert_eq!(
        calib.covariance(id(0, LinearKind::Up)),
        calib.covariance(id(0, LinearKind::Gate))
    );
    assert_ne!(
        calib.covariance(id(0, LinearKind::Down)),
        calib.covariance(id(0, LinearKind::Gate))
    );
    // Plain calibration records no covariance.
    let plain = Calibration::run(&model, &toks, 16, 8).unwrap();
    assert!(plain.covariance(id(0, LinearKind::Q)).is_none());
    assert!(Calibration::run(&model, &[], 16, 8).is_err());
}

#[test]
fn evaluation_protocol_matches_reference_perplexity() {
    let mut model = tiny();
    let toks = tokens(64);
    let r = ReferenceLogits::compute(&model, &toks, 16, None).unwrap();
    let want = model
        .perplexity(
            &toks,
            &PerplexityOptions {
                ctx: 16,
                windows: None,
                bos: None,
            },
        )
        .unwrap();
    assert!(
        (r.ppl() - want.ppl).abs() <= 1e-9 * want.ppl,
        "{} vs {}",
        r.ppl(),
        want.ppl
    );
    // The reference against itself.
    let same = r.compare(&model).unwrap();
    assert_eq!(
        (same.mean_kld, same.top1_agreement, same.positions),
        (0.0, 1.0, 4 * 7)
    );
    // A quantized model through the reference path and as the golden pass.
    let weights = model_weights(&model).unwrap();
    let layers = quantize_model(
        &model,
        &weights,
        SchemePolicy {
            blocks: QuantScheme::Int4,
            head: HeadPolicy::KeepF32,
        },
        32,
        None,
        QuantOptions { threads: 2 },
    )
    .unwrap();
    let golden = from_reference(&model, &layers, 16).unwrap();
    let g = r.compare_golden(&golden).unwrap();
    let saved = install(&mut model, layers).unwrap();
    let q = r.compare(&model).unwrap();
    restore(&mut model, saved).unwrap();
    assert!(
        g.mean_kld > 0.0 && (g.mean_kld - q.mean_kld).abs() < 1e-3 * q.mean_kld.max(1e-9) + 1e-7
    );
    assert!((g.ppl - q.ppl).abs() < 1e-3 * q.ppl);
    // Restored: the f32 model is back.
    let mut s = model.new_session_with_capacity(16).unwrap();
    let back = model.forward(&mut s, &toks[..16], Logits::Last).unwrap();
    let mut s2 = tiny().new_session_with_capacity(16).unwrap();
    assert_eq!(
        back,
        tiny().forward(&mut s2, &toks[..16], Logits::Last).unwrap()
    );
    // Bad protocols are errors.
    assert!(ReferenceLogits::compute(&model, &toks, 3, None).is_err());
    assert!(ReferenceLogits::compute(&model, &toks, 16, Some(5)).is_err());
}
