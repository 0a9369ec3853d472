//! The decode kernels alone, per instruction set: nanoseconds per weight of
//! the Q4_1 and Q8_0 matrix-vector products on one thread, for a matrix that
//! stays in the L2 cache (the compute cost) and for one of LM-head size that
//! streams from memory (what decode sees). The fastest of many calls is kept,
//! so other work on the machine disturbs it little.
//!
//! `cargo run --release -p q35-reference --example kernels [-- --reps N]`

use std::time::Instant;

use q35_reference::kernels::{
    QBLOCK, SimdLevel, detected_simd_level, rows_q4_1, rows_q8_0, set_simd_level,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args
        .windows(2)
        .find(|w| w[0] == "--reps")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(200);
    let cols = 576;
    let bpr = cols / QBLOCK;
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13)
        .collect();
    let h = |v: f32| half::f16::from_f32(v).to_bits();
    for (name, rows, reps) in [
        ("L2-resident", 1536, reps),
        ("memory", 49152, reps / 20 + 3),
    ] {
        let nb = rows * bpr;
        let d: Vec<u16> = (0..nb).map(|i| h(0.01 * (i % 13) as f32 + 0.002)).collect();
        let m: Vec<u16> = (0..nb).map(|i| h(-0.05 * (i % 7) as f32)).collect();
        let q4: Vec<[u8; 16]> = (0..nb)
            .map(|i| std::array::from_fn(|k| ((i * 31 + k * 17) % 256) as u8))
            .collect();
        let q8: Vec<[i8; 32]> = (0..nb)
            .map(|i| std::array::from_fn(|k| ((i * 29 + k * 13) % 256) as u8 as i8))
            .collect();
        let mut out = vec![0.0f32; rows];
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            if level > detected_simd_level() {
                continue;
            }
            set_simd_level(level);
            let time = |f: &mut dyn FnMut()| {
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min)
                    * 1e9
                    / (rows * cols) as f64
            };
            let t4 = time(&mut || rows_q4_1(&d, &m, &q4, cols, &x, &mut out));
            let t8 = time(&mut || rows_q8_0(&d, &q8, cols, &x, &mut out));
            println!(
                "{{\"matrix\": \"{name}\", \"rows\": {rows}, \"cols\": {cols}, \"simd\": \"{}\", \
                 \"q4_1_ns_per_weight\": {t4:.4}, \"q8_0_ns_per_weight\": {t8:.4}}}",
                level.name()
            );
        }
    }
}
