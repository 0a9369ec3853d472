//! [`QuantPipeline`]: the one way the driver calibrates, quantizes and
//! evaluates a model.

use q35_reference::{LinearId, Model};

use super::{
    Calibration, EvalReport, ModelQuantError, QuantizedLayer, ReferenceLogits, SchemePolicy,
    model_weights, quantize_model_with_progress,
};
use crate::quantize::QuantOptions;

/// The one way a model is quantized and evaluated (`q35c eval --quant` and
/// `q35c quant-report` both go through it, so they report the same figures):
/// calibration on the f32 reference recording in-group covariances
/// ([`Calibration::run_with_covariance`], so the activation-aware scheme
/// gets in-group error compensation), quantization of every matrix
/// ([`quantize_model`]), and evaluation as the golden forward pass
/// ([`GoldenModel`], the hardware contract, whose tied quantized LM head also
/// serves the embedding lookup) scored against the reference's logits
/// ([`ReferenceLogits::compare_golden`]).
#[derive(Debug, Clone)]
pub struct QuantPipeline<'m> {
    model: &'m Model,
    group_size: usize,
    calib: Calibration,
    weights: Vec<(LinearId, Vec<f32>)>,
    options: QuantOptions,
}

impl<'m> QuantPipeline<'m> {
    /// Calibrates `model` on `tokens` in windows of `window` tokens (at most
    /// the model's context), keeping up to `samples` input rows per layer
    /// for layer-output errors and recording covariances at `group_size`,
    /// the group size every later [`QuantPipeline::quantize`] uses.
    pub fn calibrate(
        model: &'m Model,
        tokens: &[u32],
        window: usize,
        samples: usize,
        group_size: usize,
        options: QuantOptions,
    ) -> Result<QuantPipeline<'m>, ModelQuantError> {
        QuantPipeline::calibrate_with_progress(
            model,
            tokens,
            window,
            samples,
            group_size,
            options,
            &crate::progress::silent,
        )
    }

    /// [`QuantPipeline::calibrate`], reporting each calibration window to
    /// `progress`.
    pub fn calibrate_with_progress(
        model: &'m Model,
        tokens: &[u32],
        window: usize,
        samples: usize,
        group_size: usize,
        options: QuantOptions,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<QuantPipeline<'m>, ModelQuantError> {
        let window = window.min(model.config().context);
        let calib = Calibration::run_with_covariance_progress(
            model, tokens, window, samples, group_size, progress,
        )?;
        let weights = model_weights(model)?;
        Ok(QuantPipeline {
            model,
            group_size,
            calib,
            weights,
            options,
        })
    }

    /// The calibration record.
    pub fn calibration(&self) -> &Calibration {
        &self.calib
    }

    /// The f32 weights of every linear layer, in forward order.
    pub fn weights(&self) -> &[(LinearId, Vec<f32>)] {
        &self.weights
    }

    /// The group size.
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// Every matrix quantized under `policy`.
    pub fn quantize(&self, policy: SchemePolicy) -> Result<Vec<QuantizedLayer>, ModelQuantError> {
        self.quantize_with_progress(policy, &crate::progress::silent)
    }

    /// [`QuantPipeline::quantize`], reporting each matrix to `progress`.
    pub fn quantize_with_progress(
        &self,
        policy: SchemePolicy,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<Vec<QuantizedLayer>, ModelQuantError> {
        quantize_model_with_progress(
            self.model,
            &self.weights,
            policy,
            self.group_size,
            Some(&self.calib),
            self.options,
            progress,
        )
    }

    /// The golden model built from `layers`, scored against `reference`
    /// (computed on the same model).
    pub fn evaluate(
        &self,
        layers: &[QuantizedLayer],
        reference: &ReferenceLogits,
    ) -> Result<EvalReport, ModelQuantError> {
        let golden = crate::golden::from_reference(self.model, layers, reference.ctx())?;
        reference.compare_golden(&golden)
    }
}
