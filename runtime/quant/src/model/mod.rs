//! Whole-model quantization on top of the f32 reference (`q35-reference`):
//! calibration ([`Calibration`], an activation observer), quantized layers
//! that run the integer matmul semantics ([`QuantLinear`]), quantizing and
//! installing every matrix of a model ([`quantize_model`], [`install`]),
//! per-tensor error reports ([`tensor_report`]) and the end-to-end
//! comparison of a quantized model against the f32 reference on held-out
//! text ([`ReferenceLogits`]). [`QuantPipeline`] strings these together the
//! one way the driver quantizes and evaluates a model: calibration with
//! in-group covariances, quantization, and the golden forward pass scored
//! against the reference's logits.
//!
//! One file per job: `calibration` (the observer and its statistics),
//! `covariance` (its hot loop, the in-group covariance sums),
//! `policy` (which scheme each layer gets: [`SchemePolicy`], [`HeadPolicy`]),
//! `layers` (quantizing every matrix), `linear` ([`QuantLinear`], installing
//! and restoring layers), `report` (per-tensor errors), `logits` (the
//! reference's logits and the scoring of candidates against them) and
//! `pipeline` ([`QuantPipeline`], [`Methods`]), `smooth` (scale
//! migration, [`smooth_model`]), `rotate` (the offline V/O rotation,
//! [`rotate_vo_model`]) and `stream` (the residual-stream rotation with
//! its on-line head mix, [`rotate_stream_model`]), `sequential`
//! (block-by-block calibration behind the quantized blocks, [`Sequential`],
//! and the asymmetric GPTQ target, [`asymmetric_target`]).

mod calibration;
mod covariance;
mod layers;
mod linear;
mod logits;
mod pipeline;
mod policy;
mod report;
mod rotate;
mod sequential;
mod smooth;
mod stream;

pub use calibration::{Calibration, LayerCalibration};
pub use layers::{
    QuantizedLayer, layer_shape, model_weights, quantize_layer, quantize_layer_with,
    quantize_model, quantize_model_with,
};
pub use linear::{QuantLinear, SavedLayers, install, restore};
pub use logits::{EvalReport, ReferenceLogits};
pub use pipeline::{Methods, QuantPipeline};
pub use policy::{HeadPolicy, SchemePolicy};
pub use report::{TensorReport, tensor_report};
pub use rotate::rotate_vo_model;
pub use sequential::{Sequential, asymmetric_target};
pub use smooth::smooth_model;
pub use stream::{
    RotatedHead, RotatedStream, StreamRotation, rotate_head_model, rotate_stream_model,
    stream_rotation_matrix,
};

use q35_reference::ReferenceError;

use crate::QuantError;

/// Errors of whole-model quantization and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum ModelQuantError {
    /// Quantizing one layer failed.
    #[error("{layer}: {source}")]
    Layer {
        /// The layer (GGUF tensor name).
        layer: String,
        /// What went wrong.
        source: QuantError,
    },
    /// The reference model failed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A layer has no f32 form to quantize.
    #[error("{0}: the layer exposes no f32 weights to quantize")]
    NoWeights(String),
    /// The activation-aware scheme needs calibration for a layer.
    #[error("{0}: no calibration activations were recorded for this layer")]
    NoCalibration(String),
    /// Bad evaluation input.
    #[error("{0}")]
    Input(String),
    /// The golden model refused its input.
    #[error(transparent)]
    Golden(#[from] crate::golden::GoldenError),
}
