//! Quantizer throughput on SmolLM2-135M-shaped synthetic weights (134.5 M
//! Gaussian weights in the model's matrix shapes): wall time per scheme.
//! Run with `cargo bench -p q35-quant --bench quantize`.

use q35_quant::{QuantScheme, quantize};
use std::time::Instant;

fn main() {
    // (rows, cols, copies): per block q, k, v, o, gate, up, down (x30), and
    // the tied embedding / output matrix.
    let shapes = [
        (576, 576, 60),
        (192, 576, 60),
        (1536, 576, 60),
        (576, 1536, 30),
        (49152, 576, 1),
    ];
    let mut state = 1u64;
    let mut gaussian = move || {
        // Irwin-Hall(4) approximation: fast and good enough for timing.
        let mut s = 0f32;
        for _ in 0..4 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s += (state >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 0.03
    };
    let mats: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = shapes
        .iter()
        .map(|&(r, c, _)| {
            let w: Vec<f32> = (0..r * c).map(|_| gaussian()).collect();
            let imp: Vec<f32> = (0..c).map(|_| gaussian().abs() * 30.0 + 0.01).collect();
            (r, c, w, imp)
        })
        .collect();
    let total: usize = shapes.iter().map(|&(r, c, n)| r * c * n).sum();
    println!("{total} weights");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for scheme in QuantScheme::ALL {
        if !only.is_empty() && !only.iter().any(|o| o == scheme.as_str()) {
            continue;
        }
        let t = Instant::now();
        for ((r, c, w, imp), &(_, _, copies)) in mats.iter().zip(&shapes) {
            for _ in 0..copies {
                let q = quantize(w, *r, *c, scheme, 128, Some(imp)).expect("quantize");
                std::hint::black_box(q);
            }
        }
        println!(
            "{:>16}: {:.2} s",
            scheme.as_str(),
            t.elapsed().as_secs_f64()
        );
    }
}
