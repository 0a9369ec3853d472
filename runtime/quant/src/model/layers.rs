//! Quantizing a model's matrices: their f32 weights ([`model_weights`]),
//! one layer ([`quantize_layer`]) and every layer under a [`SchemePolicy`]
//! ([`quantize_model`]).

use q35_reference::{LinearId, Model};

use super::{Calibration, Methods, ModelQuantError, SchemePolicy};
use crate::quantize::{GroupCovariance, QuantOptions, quantize_gptq_factored, quantize_with};
use crate::{QuantScheme, QuantizedMatrix};

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
    shape: (usize, usize),
    scheme: QuantScheme,
    group_size: usize,
    calib: Option<&Calibration>,
    options: QuantOptions,
) -> Result<QuantizedMatrix, ModelQuantError> {
    quantize_layer_with(
        id, weights, shape, scheme, group_size, calib, options, false,
    )
}

/// [`quantize_layer`], with the per-group scale search of
/// [`crate::quantize::quantize_gptq_with`] when `scale_search` is set (and
/// the layer gets in-group error compensation).
#[expect(
    clippy::too_many_arguments,
    reason = "quantize_layer plus the search switch"
)]
pub fn quantize_layer_with(
    id: LinearId,
    weights: &[f32],
    (rows, cols): (usize, usize),
    scheme: QuantScheme,
    group_size: usize,
    calib: Option<&Calibration>,
    options: QuantOptions,
    scale_search: bool,
) -> Result<QuantizedMatrix, ModelQuantError> {
    let importance = layer_importance(id, scheme, calib)?;
    let cov = layer_covariance(id, scheme, group_size, calib);
    match (cov, importance.as_deref()) {
        (Some(cov), Some(imp)) => quantize_gptq_factored(
            weights,
            rows,
            cols,
            scheme,
            group_size,
            imp,
            (&cov, calib.and_then(|c| c.gptq_factors(id, &cov))),
            options,
            scale_search,
        ),
        (_, imp) => quantize_with(weights, rows, cols, scheme, group_size, imp, options),
    }
    .map_err(|source| ModelQuantError::Layer {
        layer: id.to_string(),
        source,
    })
}

/// The per-input-channel importance of layer `id`, when `scheme` needs
/// one (an error when it does and `calib` has no record of the layer).
fn layer_importance(
    id: LinearId,
    scheme: QuantScheme,
    calib: Option<&Calibration>,
) -> Result<Option<Vec<f32>>, ModelQuantError> {
    if !scheme.needs_importance() {
        return Ok(None);
    }
    calib
        .and_then(|c| c.layer(id))
        .map(|l| Some(l.importance()))
        .ok_or_else(|| ModelQuantError::NoCalibration(id.to_string()))
}

/// The in-group covariance of layer `id`'s input for the activation-aware
/// scheme, when `calib` recorded one at a multiple of `group_size`.
fn layer_covariance(
    id: LinearId,
    scheme: QuantScheme,
    group_size: usize,
    calib: Option<&Calibration>,
) -> Option<GroupCovariance> {
    match scheme {
        QuantScheme::Q35 => calib?
            .covariance(id)
            .filter(|c| c.group_size.is_multiple_of(group_size)),
        QuantScheme::Q35Rtn
        | QuantScheme::Q35Alternating
        | QuantScheme::Int8
        | QuantScheme::Int4
        | QuantScheme::Int3 => None,
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
    quantize_model_with(
        model,
        weights,
        policy,
        group_size,
        calib,
        options,
        &Methods::default(),
        &crate::progress::silent,
    )
}

/// A matrix to quantize: its layer, weights, scheme and shape (or the error
/// the sequential loop would stop at).
type Job<'a> = (
    LinearId,
    &'a [f32],
    QuantScheme,
    Result<(usize, usize), ModelQuantError>,
);

/// [`quantize_model`] with the quantizer's accuracy `methods` (the
/// per-group scale search ([`quantize_layer_with`]) and per-kind group
/// sizes ([`Methods::group_of`], `group_size` for the others)), reporting
/// each matrix to `progress` as it is done.
#[expect(
    clippy::too_many_arguments,
    reason = "quantize_model's inputs, the methods and the progress callback"
)]
pub fn quantize_model_with(
    model: &Model,
    weights: &[(LinearId, Vec<f32>)],
    policy: SchemePolicy,
    group_size: usize,
    calib: Option<&Calibration>,
    options: QuantOptions,
    methods: &Methods,
    progress: &dyn Fn(crate::Progress<'_>),
) -> Result<Vec<QuantizedLayer>, ModelQuantError> {
    // The matrices to quantize, in order, with their shapes (or the error
    // the sequential loop would stop at).
    let jobs: Vec<Job<'_>> = weights
        .iter()
        .filter_map(|(id, w)| {
            let scheme = policy.scheme_of(*id)?;
            let shape =
                layer_shape(model, *id).ok_or_else(|| ModelQuantError::NoWeights(id.to_string()));
            Some((*id, w.as_slice(), scheme, shape))
        })
        .collect();
    let total = jobs.len();
    // Matrices are independent: `options.threads` workers take whole
    // matrices (largest first, so the LM head does not run alone at the
    // end), each on one thread; results are kept by index and returned (and
    // reported) in order, so they are the sequential loop's for any thread
    // count (each matrix's quantization does not depend on its thread
    // count).
    let mut order: Vec<usize> = (0..total).filter(|&i| jobs[i].3.is_ok()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].1.len()));
    let workers = options.threads.max(1).min(order.len()).max(1);
    let one = QuantOptions { threads: 1 };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<QuantizedMatrix, ModelQuantError>>> =
        (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let (tx, next, order, jobs) = (tx.clone(), &next, &order, &jobs);
            scope.spawn(move || {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let (id, w, scheme, shape) = &jobs[i];
                    let Ok(shape) = shape else { continue };
                    let matrix = quantize_layer_with(
                        *id,
                        w,
                        *shape,
                        *scheme,
                        methods.group_of(id.kind).unwrap_or(group_size),
                        calib,
                        one,
                        methods.scale_search,
                    );
                    if tx.send((i, matrix)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Progress in matrix order, as the sequential loop reported it: each
        // matrix once every one before it is done, none from the first
        // that failed on.
        let mut reported = 0;
        for (i, matrix) in rx.iter() {
            results[i] = Some(matrix);
            while let Some(Some(Ok(_))) = results.get(reported) {
                reported += 1;
                progress(crate::Progress::Item {
                    done: reported,
                    total,
                    item: &jobs[reported - 1].0.gguf_name(),
                });
            }
        }
    });
    let mut out = Vec::with_capacity(total);
    for ((id, _, _, shape), result) in jobs.into_iter().zip(results) {
        shape?;
        // Every job with a shape was sent back (a panicking worker would
        // have ended the scope with its panic).
        let matrix =
            result.ok_or_else(|| ModelQuantError::Input(format!("{id} was not quantized")))??;
        out.push(QuantizedLayer { id, matrix });
    }
    Ok(out)
}
