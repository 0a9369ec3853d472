//! Error metrics and calibration statistics.
//!
//! Weight-space metrics ([`rel_rmse`], [`weighted_rel_rmse`]) are a weak
//! proxy; [`layer_output_error`] measures what a layer actually emits on
//! calibration activations. All sums are f64 in a fixed order.

use crate::QuantError;

/// Relative RMSE `||a - b|| / ||a||` (0 when both are zero).
pub fn rel_rmse(reference: &[f32], approx: &[f32]) -> Result<f64, QuantError> {
    check_len("approximation", approx.len(), reference.len())?;
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in reference.iter().zip(approx) {
        let d = f64::from(a) - f64::from(b);
        num += d * d;
        den += f64::from(a) * f64::from(a);
    }
    Ok(ratio(num, den))
}

/// Importance-weighted relative RMSE of a row-major `rows x cols` matrix:
/// `sqrt(sum_rj imp_j (a - b)^2 / sum_rj imp_j a^2)`.
pub fn weighted_rel_rmse(
    reference: &[f32],
    approx: &[f32],
    cols: usize,
    importance: &[f32],
) -> Result<f64, QuantError> {
    check_len("approximation", approx.len(), reference.len())?;
    check_len("importance", importance.len(), cols)?;
    let (mut num, mut den) = (0f64, 0f64);
    for (ra, rb) in reference.chunks_exact(cols).zip(approx.chunks_exact(cols)) {
        for ((&a, &b), &w) in ra.iter().zip(rb).zip(importance) {
            let d = f64::from(a) - f64::from(b);
            num += f64::from(w) * d * d;
            den += f64::from(w) * f64::from(a) * f64::from(a);
        }
    }
    Ok(ratio(num, den))
}

/// Per-input-channel importance: the mean of `x_j^2` over the calibration
/// activations `xs` (row-major, `n x cols`), as llama.cpp's importance
/// matrix.
pub fn channel_importance(xs: &[f32], cols: usize) -> Result<Vec<f32>, QuantError> {
    if cols == 0 || xs.is_empty() || !xs.len().is_multiple_of(cols) {
        return Err(QuantError::LengthMismatch {
            what: "calibration activations",
            got: xs.len(),
            expected: cols.max(1) * (xs.len() / cols.max(1)).max(1),
        });
    }
    let n = xs.len() / cols;
    let mut acc = vec![0f64; cols];
    for x in xs.chunks_exact(cols) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    Ok(acc.into_iter().map(|a| (a / n as f64) as f32).collect())
}

/// Relative layer-output error on calibration activations:
/// `||W X - Q X||_F / ||W X||_F` for row-major `rows x cols` matrices `w`
/// (reference) and `q` (dequantized), and activations `xs` (`n x cols`).
/// Uses up to `threads` threads; the result does not depend on the count.
pub fn layer_output_error(
    w: &[f32],
    q: &[f32],
    rows: usize,
    cols: usize,
    xs: &[f32],
    threads: usize,
) -> Result<f64, QuantError> {
    check_len("reference weights", w.len(), rows * cols)?;
    check_len("quantized weights", q.len(), rows * cols)?;
    if cols == 0 || !xs.len().is_multiple_of(cols) {
        return Err(QuantError::LengthMismatch {
            what: "calibration activations",
            got: xs.len(),
            expected: cols,
        });
    }
    const CHUNK: usize = 64;
    let n_chunks = rows.div_ceil(CHUNK);
    let threads = threads.max(1).min(n_chunks.max(1));
    let mut parts = vec![(0f64, 0f64); n_chunks];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut diff = vec![0f32; cols];
                    (t..n_chunks)
                        .step_by(threads)
                        .map(|c| {
                            let (mut num, mut den) = (0f64, 0f64);
                            for r in c * CHUNK..((c + 1) * CHUNK).min(rows) {
                                let wr = &w[r * cols..(r + 1) * cols];
                                let qr = &q[r * cols..(r + 1) * cols];
                                for ((d, &a), &b) in diff.iter_mut().zip(wr).zip(qr) {
                                    *d = a - b;
                                }
                                for x in xs.chunks_exact(cols) {
                                    let e = f64::from(dot8(&diff, x));
                                    let y = f64::from(dot8(wr, x));
                                    num += e * e;
                                    den += y * y;
                                }
                            }
                            (c, (num, den))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (c, v) in h.join().expect("metrics worker panicked") {
                parts[c] = v;
            }
        }
    });
    let (num, den) = parts
        .into_iter()
        .fold((0f64, 0f64), |(a, b), (c, d)| (a + c, b + d));
    Ok(ratio(num, den))
}

/// f32 dot product with eight fixed lanes (vectorisable, deterministic).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ac = a.chunks_exact(8);
    let bc = b.chunks_exact(8);
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (&x, &y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        if num == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (num / den).sqrt()
    }
}

/// `Ok` when a vector has the expected length, else
/// [`QuantError::LengthMismatch`] naming it.
pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), QuantError> {
    if got == expected {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch {
            what,
            got,
            expected,
        })
    }
}
