//! In-group error compensation (GPTQ restricted to each group) against
//! plain activation-aware Q35 on correlated synthetic activations.

mod common;

use common::SplitMix64;
use q35_quant::QuantScheme;
use q35_quant::metrics::{channel_importance, layer_output_error};
use q35_quant::quantize::{GroupCovariance, QuantOptions, quantize_gptq, quantize_with};

const ROWS: usize = 96;
const COLS: usize = 200; // ragged: groups of 64, 64, 64, 8 (padded to 16)
const G: usize = 64;

/// Uneven per-channel scales (log-normal).
fn channel_scales(rng: &mut SplitMix64) -> Vec<f32> {
    (0..COLS)
        .map(|_| (rng.gaussian() * 0.8).exp() as f32)
        .collect()
}

/// `n` activation rows with channel correlations (x = A z, A banded) and
/// the given channel scales.
fn activations(rng: &mut SplitMix64, scale: &[f32], n: usize) -> Vec<f32> {
    let mut xs = vec![0f32; n * COLS];
    for t in 0..n {
        let z = rng.gaussians(COLS + 4, 1.0);
        for j in 0..COLS {
            let v = z[j] + 0.8 * z[j + 1] + 0.6 * z[j + 2] + 0.4 * z[j + 4];
            xs[t * COLS + j] = v * scale[j];
        }
    }
    xs
}

fn covariance(xs: &[f32]) -> GroupCovariance {
    let n = xs.len() / COLS;
    let blocks = (0..COLS.div_ceil(G))
        .map(|g| {
            let (s, e) = (g * G, ((g + 1) * G).min(COLS));
            let len = e - s;
            let mut b = vec![0f32; len * len];
            for x in xs.chunks_exact(COLS) {
                for i in 0..len {
                    for j in 0..len {
                        b[i * len + j] += x[s + i] * x[s + j];
                    }
                }
            }
            b.iter().map(|v| v / n as f32).collect()
        })
        .collect();
    GroupCovariance {
        group_size: G,
        cols: COLS,
        blocks,
    }
}

#[test]
fn gptq_lowers_layer_output_error_out_of_sample() {
    let mut rng = SplitMix64(11);
    let w = rng.gaussians(ROWS * COLS, 0.05);
    let scale = channel_scales(&mut rng);
    let calib = activations(&mut rng, &scale, 2000);
    // Same channels, fresh draws.
    let held_out = activations(&mut SplitMix64(12), &scale, 500);
    let imp = channel_importance(&calib, COLS).unwrap();
    let cov = covariance(&calib);
    let opts = QuantOptions { threads: 2 };
    let plain = quantize_with(&w, ROWS, COLS, QuantScheme::Q35, G, Some(&imp), opts).unwrap();
    let gptq = quantize_gptq(&w, ROWS, COLS, QuantScheme::Q35, G, &imp, &cov, opts).unwrap();
    // Same format decisions (slots, multipliers, scales); only codes differ.
    assert_eq!(plain.slot_mask(), gptq.slot_mask());
    assert_eq!(plain.scales(), gptq.scales());
    assert_ne!(plain.packed(), gptq.packed());
    let e = |m: &q35_quant::QuantizedMatrix| {
        layer_output_error(&w, &m.dequantize(), ROWS, COLS, &held_out, 2).unwrap()
    };
    let (ep, eg) = (e(&plain), e(&gptq));
    println!("held-out layer-output error: q35 {ep:.4}, q35 + in-group GPTQ {eg:.4}");
    assert!(eg < 0.9 * ep, "gptq {eg} vs plain {ep}");
}

#[test]
fn gptq_rejects_mismatched_covariance() {
    let mut rng = SplitMix64(3);
    let w = rng.gaussians(4 * COLS, 0.05);
    let scale = channel_scales(&mut rng);
    let xs = activations(&mut rng, &scale, 50);
    let imp = channel_importance(&xs, COLS).unwrap();
    let mut cov = covariance(&xs);
    let opts = QuantOptions { threads: 1 };
    // The covariance span must be a multiple of the group size.
    assert!(quantize_gptq(&w, 4, COLS, QuantScheme::Q35, 128, &imp, &cov, opts).is_err());
    // A span of two groups of 32 is accepted.
    assert!(quantize_gptq(&w, 4, COLS, QuantScheme::Q35, 32, &imp, &cov, opts).is_ok());
    cov.blocks[1].pop();
    assert!(quantize_gptq(&w, 4, COLS, QuantScheme::Q35, G, &imp, &cov, opts).is_err());
    // A zero covariance (no activations seen) falls back to plain rounding.
    let zero = GroupCovariance {
        group_size: G,
        cols: COLS,
        blocks: covariance(&xs)
            .blocks
            .iter()
            .map(|b| vec![0.0; b.len()])
            .collect(),
    };
    let a = quantize_gptq(&w, 4, COLS, QuantScheme::Q35, G, &imp, &zero, opts).unwrap();
    let b = quantize_with(&w, 4, COLS, QuantScheme::Q35, G, Some(&imp), opts).unwrap();
    assert_eq!(a, b);
}
