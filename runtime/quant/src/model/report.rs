//! Per-tensor error measurements of a quantized matrix against its f32
//! weights ([`tensor_report`]).

use q35_reference::LinearId;

use super::{LayerCalibration, ModelQuantError};
use crate::metrics::{layer_output_error, rel_rmse};
use crate::{QuantScheme, QuantizedMatrix};

/// Error measurements of one quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    /// GGUF tensor name.
    pub name: String,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// Scheme.
    pub scheme: QuantScheme,
    /// Storage bits (codes + scales + mask).
    pub storage_bits: u64,
    /// Storage bits per weight.
    pub bits_per_weight: f64,
    /// `sum (w - q)^2` (for whole-model aggregation).
    pub sq_err: f64,
    /// `sum w^2`.
    pub sq_ref: f64,
    /// Relative RMSE of the weights.
    pub rel_rmse: f64,
    /// Relative layer-output error `||W X - Q X|| / ||W X||` on the
    /// calibration samples (weights only, f32 activations).
    pub output_error: Option<f64>,
    /// Calibration rows the output error used.
    pub output_samples: usize,
    /// Q35 multipliers `(m4, m3)`.
    pub multipliers: (u8, u8),
}

/// Measures one quantized tensor against its f32 weights.
pub fn tensor_report(
    id: LinearId,
    weights: &[f32],
    matrix: &QuantizedMatrix,
    calib: Option<&LayerCalibration>,
    threads: usize,
) -> Result<TensorReport, ModelQuantError> {
    let layer_err = |source| ModelQuantError::Layer {
        layer: id.to_string(),
        source,
    };
    let (rows, cols) = (matrix.rows(), matrix.cols());
    let deq = matrix.dequantize();
    let (sq_err, sq_ref) = squared_sums(weights, &deq);
    let rel = rel_rmse(weights, &deq).map_err(layer_err)?;
    let (output_error, output_samples) = match calib {
        Some(c) if !c.samples().is_empty() => (
            Some(
                layer_output_error(weights, &deq, rows, cols, c.samples(), threads)
                    .map_err(layer_err)?,
            ),
            c.samples().len() / cols,
        ),
        _ => (None, 0),
    };
    Ok(TensorReport {
        name: id.to_string(),
        rows,
        cols,
        scheme: matrix.scheme(),
        storage_bits: matrix.storage_bits(),
        bits_per_weight: matrix.bits_per_weight(),
        sq_err,
        sq_ref,
        rel_rmse: rel,
        output_error,
        output_samples,
        multipliers: matrix.multipliers(),
    })
}

/// `(sum (w - q)^2, sum w^2)` over the weights `w` and their dequantized
/// values `q`, in f64 and index order.
fn squared_sums(weights: &[f32], dequantized: &[f32]) -> (f64, f64) {
    let (mut sq_err, mut sq_ref) = (0f64, 0f64);
    for (&a, &b) in weights.iter().zip(dequantized) {
        let d = f64::from(a) - f64::from(b);
        sq_err += d * d;
        sq_ref += f64::from(a) * f64::from(a);
    }
    (sq_err, sq_ref)
}
