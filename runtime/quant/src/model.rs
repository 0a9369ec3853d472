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

use std::borrow::Cow;
use std::collections::BTreeMap;

use q35_reference::kernels::argmax;
use q35_reference::{
    Linear, LinearId, LinearKind, Logits, Model, Observer, ReferenceError, kl_divergence, log_prob,
    splitmix64,
};
use rayon::prelude::*;

use crate::golden::{GoldenError, GoldenModel};
use crate::metrics::{layer_output_error, rel_rmse};
use crate::quantize::{GroupCovariance, QuantOptions, quantize_gptq, quantize_with};
use crate::{ActivationI8, IntMatrix, QuantError, QuantScheme, QuantizedMatrix};

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
    Golden(#[from] GoldenError),
}

/// Calibration statistics of one linear layer's input.
#[derive(Debug, Clone)]
pub struct LayerCalibration {
    cols: usize,
    /// Group size and per-group sums of `x_g x_g^T` (when recorded).
    cov: Option<(usize, Vec<Vec<f32>>)>,
    sum_sq: Vec<f64>,
    tokens: u64,
    /// Reservoir sample of input rows, row-major.
    samples: Vec<f32>,
    rng: u64,
}

impl LayerCalibration {
    fn new(cols: usize, seed: u64) -> LayerCalibration {
        LayerCalibration {
            cols,
            cov: None,
            sum_sq: vec![0.0; cols],
            tokens: 0,
            samples: Vec::new(),
            rng: seed,
        }
    }

    fn next_rand(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    fn observe(&mut self, x: &[f32], max_samples: usize) {
        if let Some((group, blocks)) = self.cov.as_mut() {
            let (group, cols) = (*group, self.cols);
            // Groups are independent: one task each (sums stay in token order).
            blocks.par_iter_mut().enumerate().for_each(|(g, block)| {
                for row in x.chunks_exact(cols) {
                    let xg = &row[g * group..((g + 1) * group).min(row.len())];
                    let n = xg.len();
                    for (i, &xi) in xg.iter().enumerate() {
                        for (b, &xj) in block[i * n..(i + 1) * n].iter_mut().zip(xg) {
                            *b += xi * xj;
                        }
                    }
                }
            });
        }
        for row in x.chunks_exact(self.cols) {
            for (a, &v) in self.sum_sq.iter_mut().zip(row) {
                *a += f64::from(v) * f64::from(v);
            }
            let held = self.samples.len() / self.cols;
            if held < max_samples {
                self.samples.extend_from_slice(row);
            } else if max_samples > 0 {
                let j = (self.next_rand() % (self.tokens + 1)) as usize;
                if j < max_samples {
                    self.samples[j * self.cols..(j + 1) * self.cols].copy_from_slice(row);
                }
            }
            self.tokens += 1;
        }
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Tokens observed.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Per-input-channel importance: mean `x_j^2` over every observed token.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sum_sq.iter().map(|&s| (s / n) as f32).collect()
    }

    /// The mean in-group second moments, when recorded
    /// ([`Calibration::run_with_covariance`]).
    pub fn covariance(&self) -> Option<GroupCovariance> {
        let (group, blocks) = self.cov.as_ref()?;
        let n = self.tokens.max(1) as f32;
        Some(GroupCovariance {
            group_size: *group,
            cols: self.cols,
            blocks: blocks
                .iter()
                .map(|b| b.iter().map(|v| v / n).collect())
                .collect(),
        })
    }

    /// The sampled input rows (row-major, `cols` wide), for layer-output
    /// error measurements.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }
}

/// Records every linear layer's input during reference forward passes.
#[derive(Debug, Clone)]
pub struct Calibration {
    max_samples: usize,
    /// Group size of the in-group covariances to record (`None`: none).
    cov_group: Option<usize>,
    layers: BTreeMap<LinearId, LayerCalibration>,
}

impl Calibration {
    /// An empty recorder keeping up to `max_samples` input rows per layer.
    pub fn new(max_samples: usize) -> Calibration {
        Calibration {
            max_samples,
            cov_group: None,
            layers: BTreeMap::new(),
        }
    }

    /// Runs `model` over `tokens` in consecutive windows of `window` tokens
    /// (each from an empty KV cache; a shorter tail is run too) and records
    /// every layer's input.
    pub fn run(
        model: &Model,
        tokens: &[u32],
        window: usize,
        max_samples: usize,
    ) -> Result<Calibration, ModelQuantError> {
        if tokens.is_empty() || window == 0 {
            return Err(ModelQuantError::Input(
                "calibration needs at least one token and a positive window".into(),
            ));
        }
        Calibration::new(max_samples).record(model, tokens, window)
    }

    /// As [`Calibration::run`], also recording each layer input's in-group
    /// covariance for [`crate::quantize::quantize_gptq`]. Layers that share
    /// an input (Q, K, V; gate, up) share one record.
    pub fn run_with_covariance(
        model: &Model,
        tokens: &[u32],
        window: usize,
        max_samples: usize,
        group_size: usize,
    ) -> Result<Calibration, ModelQuantError> {
        if tokens.is_empty() || window == 0 || group_size == 0 {
            return Err(ModelQuantError::Input(
                "calibration needs tokens, a positive window and a positive group size".into(),
            ));
        }
        let mut calib = Calibration::new(max_samples);
        calib.cov_group = Some(group_size);
        calib.record(model, tokens, window)
    }

    /// Runs `model` over `tokens` in consecutive windows of `window` tokens,
    /// each from an empty KV cache, observing every layer's input.
    fn record(
        mut self,
        model: &Model,
        tokens: &[u32],
        window: usize,
    ) -> Result<Calibration, ModelQuantError> {
        for chunk in tokens.chunks(window) {
            let mut session = model.new_session_with_capacity(window)?;
            model.forward_observed(&mut session, chunk, Logits::All, &mut self)?;
        }
        Ok(self)
    }

    /// The statistics of layer `id`.
    pub fn layer(&self, id: LinearId) -> Option<&LayerCalibration> {
        self.layers.get(&id)
    }

    /// The in-group covariance of layer `id`'s input, if recorded.
    pub fn covariance(&self, id: LinearId) -> Option<GroupCovariance> {
        self.layers.get(&cov_source(id))?.covariance()
    }
}

impl Observer for Calibration {
    fn linear_input(&mut self, id: LinearId, x: &[f32], n_tokens: usize) {
        if n_tokens == 0 {
            return;
        }
        let cols = x.len() / n_tokens;
        let seed = 0x51A7_u64 ^ ((id.block.map_or(0xFFFF, |b| b as u64)) << 8) ^ id.kind as u64;
        let max = self.max_samples;
        let cov_group = (cov_source(id) == id).then_some(self.cov_group).flatten();
        self.layers
            .entry(id)
            .or_insert_with(|| {
                let mut l = LayerCalibration::new(cols, seed);
                l.cov = cov_group.map(|g| {
                    let blocks = (0..cols.div_ceil(g))
                        .map(|i| {
                            let n = g.min(cols - i * g);
                            vec![0f32; n * n]
                        })
                        .collect();
                    (g, blocks)
                });
                l
            })
            .observe(x, max);
    }
}

/// The layer whose input record `id` shares (K, V read Q's input; up reads
/// gate's).
fn cov_source(id: LinearId) -> LinearId {
    let kind = match id.kind {
        LinearKind::K | LinearKind::V => LinearKind::Q,
        LinearKind::Up => LinearKind::Gate,
        k => k,
    };
    LinearId { kind, ..id }
}

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
        let (rows, cols) = (self.int.rows(), self.int.cols());
        let acts: Vec<Option<ActivationI8>> = x
            .chunks_exact(cols)
            .map(|r| ActivationI8::quantize(r).ok())
            .collect();
        let n = acts.len();
        // Row chunks in parallel, every token inside (weights stay in cache).
        let parts: Vec<Vec<f32>> = (0..rows.div_ceil(FORWARD_ROWS))
            .into_par_iter()
            .map(|c| {
                let first = c * FORWARD_ROWS;
                let len = FORWARD_ROWS.min(rows - first);
                let mut part = vec![f32::NAN; n * len];
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
            })
            .collect();
        for (c, part) in parts.iter().enumerate() {
            let first = c * FORWARD_ROWS;
            let len = part.len() / n.max(1);
            for t in 0..n {
                out[t * rows + first..t * rows + first + len]
                    .copy_from_slice(&part[t * len..(t + 1) * len]);
            }
        }
    }

    fn weights_f32(&self) -> Option<Cow<'_, [f32]>> {
        Some(Cow::Owned(self.int.dequantize()))
    }
}

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
    let (mut sq_err, mut sq_ref) = (0f64, 0f64);
    for (&a, &b) in weights.iter().zip(&deq) {
        let d = f64::from(a) - f64::from(b);
        sq_err += d * d;
        sq_ref += f64::from(a) * f64::from(a);
    }
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

/// End-to-end accuracy of a candidate against the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Windows scored.
    pub windows: usize,
    /// Window length.
    pub ctx: usize,
    /// Positions scored.
    pub positions: usize,
    /// Reference perplexity.
    pub reference_ppl: f64,
    /// Candidate perplexity.
    pub ppl: f64,
    /// Candidate negative log-likelihood summed over the positions, nats.
    pub nll_sum: f64,
    /// Mean KL(reference || candidate), nats.
    pub mean_kld: f64,
    /// Largest per-position KL.
    pub max_kld: f64,
    /// Fraction of positions with the same most likely token.
    pub top1_agreement: f64,
}

/// The reference model's logits on the scored positions of a text, computed
/// once and compared against any number of candidates. Protocol as
/// llama-perplexity (and `q35_reference::Model::perplexity`): windows of
/// `ctx` tokens from an empty cache, positions `ctx/2 .. ctx-2` scored.
#[derive(Debug, Clone)]
pub struct ReferenceLogits {
    tokens: Vec<u32>,
    ctx: usize,
    vocab: usize,
    /// Per window: `(ctx - 1 - ctx/2) x vocab` logits.
    logits: Vec<Vec<f32>>,
    nll: f64,
    positions: usize,
}

impl ReferenceLogits {
    /// Runs the reference over `windows` windows of `ctx` tokens (`None`:
    /// every whole window).
    pub fn compute(
        model: &Model,
        tokens: &[u32],
        ctx: usize,
        windows: Option<usize>,
    ) -> Result<ReferenceLogits, ModelQuantError> {
        ReferenceLogits::compute_with_bos(model, tokens, ctx, windows, None)
    }

    /// As [`ReferenceLogits::compute`], with each window's first token
    /// replaced by `bos` when given (llama-perplexity's handling of models
    /// that add BOS; `q35_reference::PerplexityOptions::bos`). The scored
    /// targets are unchanged.
    pub fn compute_with_bos(
        model: &Model,
        tokens: &[u32],
        ctx: usize,
        windows: Option<usize>,
        bos: Option<u32>,
    ) -> Result<ReferenceLogits, ModelQuantError> {
        if ctx < 4 {
            return Err(ModelQuantError::Input(format!(
                "window of {ctx} tokens is too short (at least 4)"
            )));
        }
        let available = tokens.len() / ctx;
        let windows = windows.unwrap_or(available);
        if windows == 0 || windows > available {
            return Err(ModelQuantError::Input(format!(
                "the evaluation text has {} tokens: {available} whole windows of {ctx}, {windows} requested",
                tokens.len()
            )));
        }
        let vocab = model.config().vocab;
        let mut r = ReferenceLogits {
            tokens: tokens[..windows * ctx].to_vec(),
            ctx,
            vocab,
            logits: Vec::with_capacity(windows),
            nll: 0.0,
            positions: 0,
        };
        if let Some(bos) = bos {
            for window in r.tokens.chunks_exact_mut(ctx) {
                window[0] = bos;
            }
        }
        for w in 0..windows {
            let l = r.window_logits(model, w)?;
            for (j, row) in l.chunks_exact(vocab).enumerate() {
                r.nll -= log_prob(row, r.target(w, j));
                r.positions += 1;
            }
            r.logits.push(l);
        }
        Ok(r)
    }

    fn first(&self) -> usize {
        self.ctx / 2
    }

    fn target(&self, w: usize, j: usize) -> u32 {
        self.tokens[w * self.ctx + self.first() + j + 1]
    }

    fn window_logits(&self, model: &Model, w: usize) -> Result<Vec<f32>, ModelQuantError> {
        let mut session = model.new_session_with_capacity(self.ctx)?;
        let toks = &self.tokens[w * self.ctx..(w + 1) * self.ctx];
        let mut l = model.forward(&mut session, toks, Logits::From(self.first()))?;
        // The last position predicts past the window: not scored.
        l.truncate((self.ctx - 1 - self.first()) * self.vocab);
        Ok(l)
    }

    /// Reference perplexity.
    pub fn ppl(&self) -> f64 {
        (self.nll / self.positions as f64).exp()
    }

    /// Window length.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Scores `candidate` (the reference's forward pass with quantized
    /// layers installed) on the same windows.
    pub fn compare(&self, candidate: &Model) -> Result<EvalReport, ModelQuantError> {
        if candidate.config().vocab != self.vocab {
            return Err(ModelQuantError::Input(format!(
                "candidate vocabulary {} differs from the reference's {}",
                candidate.config().vocab,
                self.vocab
            )));
        }
        self.compare_with(|w| self.window_logits(candidate, w))
    }

    /// Scores the golden quantized model on the same windows.
    pub fn compare_golden(&self, golden: &GoldenModel) -> Result<EvalReport, ModelQuantError> {
        if golden.vocab() != self.vocab {
            return Err(ModelQuantError::Input(format!(
                "golden model vocabulary {} differs from the reference's {}",
                golden.vocab(),
                self.vocab
            )));
        }
        self.compare_with(|w| {
            let mut s = golden.new_session();
            let toks = &self.tokens[w * self.ctx..(w + 1) * self.ctx - 1];
            Ok(golden.run_from(&mut s, toks, self.first())?)
        })
    }

    /// Scores candidate logits (`window -> (ctx - 1 - ctx/2) x vocab`).
    fn compare_with(
        &self,
        mut candidate: impl FnMut(usize) -> Result<Vec<f32>, ModelQuantError>,
    ) -> Result<EvalReport, ModelQuantError> {
        let (mut nll, mut kl_sum, mut kl_max, mut agree, mut n) =
            (0f64, 0f64, 0f64, 0usize, 0usize);
        for (w, rl) in self.logits.iter().enumerate() {
            let cl = candidate(w)?;
            if cl.len() != rl.len() {
                return Err(ModelQuantError::Input(format!(
                    "candidate gave {} logits for window {w}, expected {}",
                    cl.len(),
                    rl.len()
                )));
            }
            for (j, (r, c)) in rl
                .chunks_exact(self.vocab)
                .zip(cl.chunks_exact(self.vocab))
                .enumerate()
            {
                nll -= log_prob(c, self.target(w, j));
                let kl = kl_divergence(r, c)?;
                kl_sum += kl;
                kl_max = kl_max.max(kl);
                agree += usize::from(argmax(r) == argmax(c));
                n += 1;
            }
        }
        Ok(EvalReport {
            windows: self.logits.len(),
            ctx: self.ctx,
            positions: n,
            reference_ppl: self.ppl(),
            ppl: (nll / n as f64).exp(),
            nll_sum: nll,
            mean_kld: kl_sum / n as f64,
            max_kld: kl_max,
            top1_agreement: agree as f64 / n as f64,
        })
    }
}

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
        let window = window.min(model.config().context);
        let calib = Calibration::run_with_covariance(model, tokens, window, samples, group_size)?;
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
        quantize_model(
            self.model,
            &self.weights,
            policy,
            self.group_size,
            Some(&self.calib),
            self.options,
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
