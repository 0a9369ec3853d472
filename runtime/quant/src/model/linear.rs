//! Quantized layers in the reference model: [`QuantLinear`] runs a
//! quantized matrix as the integer matmul of [`q35_contract::semantics`], and
//! [`install`] / [`restore`] swap such layers into a model and back.

use std::borrow::Cow;

use q35_reference::{Linear, LinearId, Model};
use rayon::prelude::*;

use super::{ModelQuantError, QuantizedLayer};
use crate::{ActivationI8, IntMatrix, QuantizedMatrix};

/// A quantized linear layer: int8 activations per token and the integer
/// matmul of [`q35_contract::semantics`].
#[derive(Debug, Clone)]
pub struct QuantLinear {
    matrix: QuantizedMatrix,
    int: IntMatrix,
}

impl QuantLinear {
    /// Wraps a quantized matrix.
    pub fn new(matrix: QuantizedMatrix) -> QuantLinear {
        let int = matrix.unpack();
        QuantLinear { matrix, int }
    }

    /// The packed matrix.
    pub fn matrix(&self) -> &QuantizedMatrix {
        &self.matrix
    }

    /// Outputs `first .. first + FORWARD_ROWS` (fewer at the end) for every
    /// token, token-major; NaN for a token whose activations could not be
    /// quantized (non-finite input).
    fn row_chunk(&self, acts: &[Option<ActivationI8>], first: usize) -> Vec<f32> {
        let len = FORWARD_ROWS.min(self.int.rows() - first);
        let mut part = vec![f32::NAN; acts.len() * len];
        for (t, a) in acts.iter().enumerate() {
            if let Some(a) = a {
                // Lengths are the layer's own, so this cannot fail.
                let ok = self
                    .int
                    .matvec_rows(a, first, &mut part[t * len..(t + 1) * len]);
                debug_assert!(ok.is_ok());
            }
        }
        part
    }
}

/// Output rows per parallel task of [`QuantLinear::forward`].
const FORWARD_ROWS: usize = 64;

impl Linear for QuantLinear {
    fn in_features(&self) -> usize {
        self.int.cols()
    }

    fn out_features(&self) -> usize {
        self.int.rows()
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let acts = quantize_tokens(x, self.int.cols());
        // Row chunks in parallel, every token inside (weights stay in cache).
        let parts: Vec<Vec<f32>> = (0..self.int.rows().div_ceil(FORWARD_ROWS))
            .into_par_iter()
            .map(|c| self.row_chunk(&acts, c * FORWARD_ROWS))
            .collect();
        scatter_row_chunks(&parts, self.int.rows(), acts.len(), out);
    }

    fn weights_f32(&self) -> Option<Cow<'_, [f32]>> {
        Some(Cow::Owned(self.int.dequantize()))
    }
}

/// Each token's int8 activations (`x` row-major, `cols` wide); `None` for
/// a token with a non-finite value.
fn quantize_tokens(x: &[f32], cols: usize) -> Vec<Option<ActivationI8>> {
    x.chunks_exact(cols)
        .map(|r| ActivationI8::quantize(r).ok())
        .collect()
}

/// Copies the row chunks of [`QuantLinear::row_chunk`] (chunk `c` holds rows
/// `c * FORWARD_ROWS ..`, token-major) into `out` (`n` tokens of `rows`).
fn scatter_row_chunks(parts: &[Vec<f32>], rows: usize, n: usize, out: &mut [f32]) {
    for (c, part) in parts.iter().enumerate() {
        let first = c * FORWARD_ROWS;
        let len = part.len() / n.max(1);
        for t in 0..n {
            out[t * rows + first..t * rows + first + len]
                .copy_from_slice(&part[t * len..(t + 1) * len]);
        }
    }
}

/// Layers taken out of a model by [`install`].
pub type SavedLayers = Vec<(LinearId, Box<dyn Linear>)>;

/// Replaces `model`'s layers by quantized ones; returns the previous layers
/// (pass them to [`restore`] to undo).
pub fn install(
    model: &mut Model,
    layers: Vec<QuantizedLayer>,
) -> Result<SavedLayers, ModelQuantError> {
    let mut old = Vec::with_capacity(layers.len());
    for l in layers {
        let prev = model.replace_linear(l.id, Box::new(QuantLinear::new(l.matrix)))?;
        old.push((l.id, prev));
    }
    Ok(old)
}

/// Puts back layers returned by [`install`].
pub fn restore(model: &mut Model, old: SavedLayers) -> Result<(), ModelQuantError> {
    for (id, layer) in old {
        model.replace_linear(id, layer)?;
    }
    Ok(())
}
