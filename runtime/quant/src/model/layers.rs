//! Quantizing a model's matrices: their f32 weights ([`model_weights`]),
//! which scheme each gets ([`SchemePolicy`]), one layer
//! ([`quantize_layer`]) and every layer ([`quantize_model`]).

use q35_reference::{LinearId, LinearKind, Model};

use super::{Calibration, ModelQuantError};
use crate::quantize::{QuantOptions, quantize_gptq, quantize_with};
use crate::{QuantScheme, QuantizedMatrix, SchemeExt};

/// One quantized matrix of a model.
#[derive(Debug, Clone)]
pub struct QuantizedLayer {
    /// Which layer.
    pub id: LinearId,
    /// Its quantized weights.
    pub matrix: QuantizedMatrix,
}

/// The f32 weights of every linear layer of `model`, in forward order.
pub fn model_weights(model: &Model) -> Result<Vec<(LinearId, Vec<f32>)>, ModelQuantError> {
    model
        .linear_ids()
        .into_iter()
        .map(|id| {
            let layer = model
                .linear(id)
                .ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))?;
            let w = layer
                .weights_f32()
                .ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))?;
            Ok((id, w.into_owned()))
        })
        .collect()
}

/// Shape `(rows, cols)` of layer `id` in `model`.
pub fn layer_shape(model: &Model, id: LinearId) -> Option<(usize, usize)> {
    model
        .linear(id)
        .map(|l| (l.out_features(), l.in_features()))
}

/// Quantizes one layer's weights. The activation-aware scheme takes its
/// importance from `calib`, and also its in-group covariance when `calib`
/// recorded one at this group size ([`Calibration::run_with_covariance`]),
/// which turns on in-group error compensation
/// ([`crate::quantize::quantize_gptq`]); other schemes use no calibration.
pub fn quantize_layer(
    id: LinearId,
    weights: &[f32],
    (rows, cols): (usize, usize),
    scheme: QuantScheme,
    group_size: usize,
    calib: Option<&Calibration>,
    options: QuantOptions,
) -> Result<QuantizedMatrix, ModelQuantError> {
    let importance = match (scheme.needs_importance(), calib) {
        (false, _) => None,
        (true, Some(c)) => Some(
            c.layer(id)
                .ok_or_else(|| ModelQuantError::NoCalibration(id.to_string()))?
                .importance(),
        ),
        (true, None) => return Err(ModelQuantError::NoCalibration(id.to_string())),
    };
    let cov = match (scheme, calib) {
        (QuantScheme::Q35, Some(c)) => c
            .covariance(id)
            .filter(|c| c.group_size.is_multiple_of(group_size)),
        _ => None,
    };
    match (cov, importance.as_deref()) {
        (Some(cov), Some(imp)) => {
            quantize_gptq(weights, rows, cols, scheme, group_size, imp, &cov, options)
        }
        (_, imp) => quantize_with(weights, rows, cols, scheme, group_size, imp, options),
    }
    .map_err(|source| ModelQuantError::Layer {
        layer: id.to_string(),
        source,
    })
}

/// Which scheme each layer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemePolicy {
    /// The scheme of the blocks' matrices.
    pub blocks: QuantScheme,
    /// The scheme of the LM head (`None`: keep it f32).
    pub head: Option<QuantScheme>,
}

impl SchemePolicy {
    /// Every matrix, LM head included, with `scheme`.
    pub fn uniform(scheme: QuantScheme) -> SchemePolicy {
        SchemePolicy {
            blocks: scheme,
            head: Some(scheme),
        }
    }

    /// The scheme of layer `id` (`None`: not quantized).
    pub fn scheme_of(&self, id: LinearId) -> Option<QuantScheme> {
        if id.kind == LinearKind::LmHead {
            self.head
        } else {
            Some(self.blocks)
        }
    }
}

/// Quantizes every linear layer of a model (from `weights`, as returned by
/// [`model_weights`]) under `policy`.
pub fn quantize_model(
    model: &Model,
    weights: &[(LinearId, Vec<f32>)],
    policy: SchemePolicy,
    group_size: usize,
    calib: Option<&Calibration>,
    options: QuantOptions,
) -> Result<Vec<QuantizedLayer>, ModelQuantError> {
    let mut out = Vec::new();
    for (id, w) in weights {
        let Some(scheme) = policy.scheme_of(*id) else {
            continue;
        };
        let shape =
            layer_shape(model, *id).ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))?;
        let matrix = quantize_layer(*id, w, shape, scheme, group_size, calib, options)?;
        out.push(QuantizedLayer { id: *id, matrix });
    }
    Ok(out)
}
