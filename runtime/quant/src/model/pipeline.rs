//! [`QuantPipeline`]: the one way the driver calibrates, quantizes and
//! evaluates a model.

use std::sync::Arc;

use q35_contract::golden::ActivationScales;
use q35_reference::{LinearId, LinearKind, Model};

use super::sequential::{SequentialJob, quantize_sequential};
use super::{
    Calibration, EvalReport, ModelQuantError, QuantizedLayer, ReferenceLogits, SchemePolicy,
    Sequential, StreamRotation, model_weights, quantize_model_with, rotate_head_model,
    rotate_stream_model, rotate_vo_model, smooth_model,
};
use crate::quantize::QuantOptions;

/// Accuracy methods beyond today's contract and quantizer
/// (docs/q35-format.md section 14), each off by default, so
/// `Methods::default()` is exactly the pipeline without them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Methods {
    /// How the golden pass quantizes activations (the per-group variant
    /// changes the integer semantics; per token is the contract).
    pub act_scales: ActivationScales,
    /// SmoothQuant-style scale migration of this strength (0..=1), folded
    /// into norms and weights before calibration ([`smooth_model`]).
    pub smooth: Option<f32>,
    /// Per-group scale search against the calibration loss: each block's
    /// scale is chosen among candidates by the in-group GPTQ result's
    /// covariance-weighted output error, not by the per-weight error.
    pub scale_search: bool,
    /// Group sizes of their own for some kinds of matrix (indexed by
    /// `LinearKind as usize`; `None`: the pipeline's group size): bits
    /// allocated between matrices. Set with [`Methods::set_group`].
    pub group_overrides: [Option<usize>; 8],
    /// Rotate `ffn_down`'s input on line by a randomized block Hadamard
    /// transform in groups of the covariance group (a power of two), with
    /// the weights rotated to match (QuaRot-style; a golden-pass variant).
    pub rotate_down: bool,
    /// Rotate the attention's value/output path by a randomized Hadamard
    /// matrix per head, folded into `attn_v` and `attn_output` offline
    /// ([`rotate_vo_model`]; no run-time cost).
    pub rotate_vo: bool,
    /// Rotate the whole residual stream by this orthogonal matrix, every
    /// norm folded into the matrices reading it, the tied table stored
    /// rotated, and the final norm's output mixed on line before the head
    /// ([`rotate_stream_model`]; a golden-pass variant,
    /// `GoldenModel::with_head_mix`).
    pub rotate_stream: Option<StreamRotation>,
    /// Rotate only the tied embedding/LM-head table by this orthogonal
    /// matrix: stored rotated, un-rotated on line after the lookup, and the
    /// final norm's output mixed on line before the head
    /// ([`rotate_head_model`]; a golden-pass variant,
    /// `GoldenModel::with_embedding_mix` and `with_head_mix`).
    pub rotate_head: Option<StreamRotation>,
    /// Channels over which GPTQ spreads each rounding error (a multiple of
    /// every group size; `None`: the largest group size, so GPTQ stays
    /// within spans of whole groups). A span as wide as the widest input
    /// (e.g. 1536 for SmolLM2's `ffn_down`) is GPTQ over whole rows, the
    /// groups' scales fixed beforehand.
    pub gptq_span: Option<usize>,
    /// Calibrate and quantize block by block, each block's matrices on the
    /// inputs the already-quantized blocks produce, run this way
    /// ([`Sequential`]; `None`: every matrix on the f32 model's inputs).
    pub sequential: Option<Sequential>,
    /// GPTAQ's asymmetric calibration of this strength (in `[0, 1]`; needs
    /// [`Methods::sequential`]): each matrix is quantized towards
    /// [`asymmetric_target`], so GPTQ minimises the error against the f32
    /// model's output from its own inputs (`0`: plain GPTQ on the
    /// sequential inputs, bit for bit).
    pub asymmetric: Option<f32>,
}

impl Methods {
    /// The group size of `kind`'s matrices, when it has its own.
    pub fn group_of(&self, kind: LinearKind) -> Option<usize> {
        self.group_overrides[kind as usize]
    }

    /// Gives `kind`'s matrices group size `group`.
    pub fn set_group(&mut self, kind: LinearKind, group: usize) {
        self.group_overrides[kind as usize] = Some(group);
    }

    /// The group size covariances are recorded at: the largest of `base`
    /// and every override (the others must divide it, so GPTQ spans whole
    /// groups).
    fn covariance_group(&self, base: usize) -> usize {
        self.group_overrides
            .iter()
            .flatten()
            .chain(&self.gptq_span)
            .fold(base, |a, &g| a.max(g))
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
    /// The rewritten model (scale migration), when a method rewrites it.
    rewritten: Option<Arc<Model>>,
    group_size: usize,
    calib: Calibration,
    /// With [`Methods::sequential`], the f32 model's record (sampled rows
    /// only), made by the first block-by-block pass: sequential
    /// calibration runs the f32 model block by block anyway, so
    /// [`QuantPipeline::calibrate_with`] does not run it a first time.
    f32_record: std::sync::OnceLock<Calibration>,
    weights: Vec<(LinearId, Vec<f32>)>,
    options: QuantOptions,
    methods: Methods,
    /// The on-line rotation of `ffn_down`'s input (signs, group), with
    /// [`Methods::rotate_down`].
    rotation: Option<(Arc<[f32]>, usize)>,
    /// The head's on-line mix, with [`Methods::rotate_stream`] or
    /// [`Methods::rotate_head`].
    head_mix: Option<Arc<[f32]>>,
    /// The embedding's on-line mix, with [`Methods::rotate_head`].
    embedding_mix: Option<Arc<[f32]>>,
    /// The calibration tokens and window, kept for [`Methods::sequential`].
    tokens: Vec<u32>,
    window: usize,
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
        QuantPipeline::calibrate_with(
            model,
            tokens,
            window,
            samples,
            group_size,
            options,
            Methods::default(),
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
        QuantPipeline::calibrate_with(
            model,
            tokens,
            window,
            samples,
            group_size,
            options,
            Methods::default(),
            progress,
        )
    }

    /// [`QuantPipeline::calibrate`] with accuracy `methods`, reporting each
    /// calibration window to `progress`. With scale migration the model is
    /// first calibrated as it is (activation maxima), rewritten, then
    /// calibrated again; everything after that (quantization, the golden
    /// model) uses the rewritten model.
    #[expect(
        clippy::too_many_arguments,
        reason = "calibrate's inputs, the methods and the progress callback"
    )]
    pub fn calibrate_with(
        model: &'m Model,
        tokens: &[u32],
        window: usize,
        samples: usize,
        group_size: usize,
        options: QuantOptions,
        methods: Methods,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<QuantPipeline<'m>, ModelQuantError> {
        let window = window.min(model.config().context);
        let cov_group = methods.covariance_group(group_size);
        if let Some(a) = methods.asymmetric {
            if !(0.0..=1.0).contains(&a) {
                return Err(ModelQuantError::Input(format!(
                    "--asymmetric {a}: the strength must be in [0, 1]"
                )));
            }
            if methods.sequential.is_none() {
                return Err(ModelQuantError::Input(format!(
                    "--asymmetric {a} needs --sequential (without it every input is the f32 model's)"
                )));
            }
        }
        if methods.sequential.is_some() && methods.rotate_down {
            return Err(ModelQuantError::Input(
                "--sequential and --rotate-down cannot be combined (the on-line ffn_down rotation is not run block by block)".into(),
            ));
        }
        if let Some(span) = methods.gptq_span {
            let groups = || {
                std::iter::once(group_size).chain(methods.group_overrides.iter().flatten().copied())
            };
            if let Some(g) = groups().find(|&g| g == 0 || !span.is_multiple_of(g)) {
                return Err(ModelQuantError::Input(format!(
                    "the GPTQ span {span} is not a multiple of the group size {g}"
                )));
            }
        }
        if let Some(g) = std::iter::once(group_size)
            .chain(methods.group_overrides.iter().flatten().copied())
            .find(|&g| g == 0 || !cov_group.is_multiple_of(g))
        {
            return Err(ModelQuantError::Input(format!(
                "group size {g} does not divide the largest group size {cov_group}"
            )));
        }
        let rewritten = match methods.smooth {
            Some(alpha) => {
                let first = Calibration::run(model, tokens, window, 0)?;
                Some(Arc::new(smooth_model(model, &first, alpha)?))
            }
            None => None,
        };
        let rewritten = match (methods.rotate_vo, rewritten) {
            (true, Some(m)) => Some(Arc::new(rotate_vo_model(&m)?)),
            (true, None) => Some(Arc::new(rotate_vo_model(model)?)),
            (false, r) => r,
        };
        let (rewritten, head_mix, embedding_mix) =
            match (methods.rotate_stream, methods.rotate_head) {
                (Some(_), Some(_)) => {
                    return Err(ModelQuantError::Input(
                        "the stream rotation and the head rotation exclude each other".into(),
                    ));
                }
                (Some(kind), None) => {
                    let r = rotate_stream_model(rewritten.as_deref().unwrap_or(model), kind)?;
                    (Some(Arc::new(r.model)), Some(r.head_mix), None)
                }
                (None, Some(kind)) => {
                    let r = rotate_head_model(rewritten.as_deref().unwrap_or(model), kind)?;
                    (
                        Some(Arc::new(r.model)),
                        Some(r.head_mix),
                        Some(r.embedding_mix),
                    )
                }
                (None, None) => (rewritten, None, None),
            };
        let m = rewritten.as_deref().unwrap_or(model);
        // The f32 copy of every matrix (about 0.5 GB for SmolLM2, a second
        // of page faults and copying on one thread) is made beside the
        // calibration, which leaves part of a core idle.
        let (calib, weights) = std::thread::scope(|s| {
            let weights = s.spawn(|| model_weights(m));
            let calib = match &head_mix {
                // Sequential calibration records block by block, the f32
                // stream's rows included (`f32_record`).
                _ if methods.sequential.is_some() => {
                    Ok(Calibration::sequential_f32(samples, head_mix.clone()))
                }
                Some(mix) => Calibration::run_with_covariance_mixed_head(
                    m,
                    tokens,
                    window,
                    samples,
                    cov_group,
                    mix.clone(),
                    progress,
                ),
                None => Calibration::run_with_covariance_progress(
                    m, tokens, window, samples, cov_group, progress,
                ),
            };
            let weights = match weights.join() {
                Ok(w) => w,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            (calib, weights)
        });
        let (mut calib, mut weights) = (calib?, weights?);
        let rotation = if methods.rotate_down {
            let ffn = m.config().ffn;
            if !cov_group.is_power_of_two() || !ffn.is_multiple_of(cov_group) {
                return Err(ModelQuantError::Input(format!(
                    "the ffn_down rotation works in groups of {cov_group}, which must be a power of two dividing {ffn}"
                )));
            }
            let signs: Arc<[f32]> = rotation_signs(ffn).into();
            calib.rotate_input(LinearKind::Down, &signs, cov_group)?;
            for (id, w) in &mut weights {
                if id.kind == LinearKind::Down {
                    rotate_columns(w, ffn, &signs, cov_group);
                }
            }
            Some((signs, cov_group))
        } else {
            None
        };
        Ok(QuantPipeline {
            model,
            rewritten,
            group_size,
            calib,
            f32_record: std::sync::OnceLock::new(),
            weights,
            options,
            methods,
            rotation,
            head_mix,
            embedding_mix,
            tokens: tokens.to_vec(),
            window,
        })
    }

    /// The model quantized: the given one, or its rewrite.
    pub fn model(&self) -> &Model {
        self.rewritten.as_deref().unwrap_or(self.model)
    }

    /// The accuracy methods in use.
    pub fn methods(&self) -> Methods {
        self.methods
    }

    /// The f32 model's calibration record. With [`Methods::sequential`] it
    /// is made by the first quantization (block by block, sampled rows
    /// only, no moments: each block's moments are the sequential pass's,
    /// [`QuantPipeline::quantize_sequential`]) and is empty before it.
    pub fn calibration(&self) -> &Calibration {
        self.f32_record.get().unwrap_or(&self.calib)
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
        if self.methods.sequential.is_some() {
            return self
                .quantize_sequential(policy, progress)
                .map(|(layers, _)| layers);
        }
        quantize_model_with(
            self.model(),
            &self.weights,
            policy,
            self.group_size,
            Some(&self.calib),
            self.options,
            &self.methods,
            progress,
        )
    }

    /// Every matrix quantized under `policy` block by block
    /// ([`Methods::sequential`], with [`Methods::asymmetric`]), with the
    /// calibration records each was quantized with (block `b`'s inputs
    /// behind the quantized blocks `0..b`); an error without
    /// [`Methods::sequential`].
    pub fn quantize_sequential(
        &self,
        policy: SchemePolicy,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<(Vec<QuantizedLayer>, Calibration), ModelQuantError> {
        let mode = self.methods.sequential.ok_or_else(|| {
            ModelQuantError::Input("sequential quantization needs Methods::sequential".into())
        })?;
        let job = SequentialJob {
            model: self.model(),
            weights: &self.weights,
            policy,
            group_size: self.group_size,
            cov_group: self.methods.covariance_group(self.group_size),
            options: self.options,
            methods: &self.methods,
            tokens: &self.tokens,
            window: self.window,
            head_mix: self.head_mix.as_ref(),
        };
        let (layers, records, f32_record) = quantize_sequential(
            &job,
            mode,
            self.methods.asymmetric.unwrap_or(0.0),
            self.calib.clone(),
            progress,
        )?;
        // Every pass records the same f32 rows: the first one is kept.
        let _ = self.f32_record.set(f32_record);
        Ok((layers, records))
    }

    /// The golden model built from `layers`, scored against `reference`
    /// (computed on the same model).
    pub fn evaluate(
        &self,
        layers: &[QuantizedLayer],
        reference: &ReferenceLogits,
    ) -> Result<EvalReport, ModelQuantError> {
        reference.compare_golden(&self.golden(layers, reference.ctx())?)
    }

    /// The head's on-line mix (`M`, row-major `hidden x hidden`), with
    /// [`Methods::rotate_stream`] or [`Methods::rotate_head`].
    pub fn head_mix(&self) -> Option<&Arc<[f32]>> {
        self.head_mix.as_ref()
    }

    /// The golden model of the quantized `layers` holding `positions`
    /// positions: built from [`QuantPipeline::model`] (the rewritten one,
    /// when a method rewrites it) with every golden-pass variant the
    /// methods ask for. [`QuantPipeline::evaluate`] scores this model.
    pub fn golden(
        &self,
        layers: &[QuantizedLayer],
        positions: usize,
    ) -> Result<q35_contract::GoldenModel, ModelQuantError> {
        let golden = crate::golden::from_reference(self.model(), layers, positions)?
            .with_activation_scales(self.methods.act_scales)?;
        let golden = match &self.rotation {
            Some((signs, group)) => golden.with_down_rotation(signs.clone(), *group)?,
            None => golden,
        };
        let golden = match &self.head_mix {
            Some(mix) => golden.with_head_mix(mix.clone())?,
            None => golden,
        };
        // The lookup reads the rotated table only when the tied head is
        // quantized (else the golden model keeps the f32 embedding).
        let head_quantized = layers.iter().any(|l| l.id.kind == LinearKind::LmHead);
        let golden = match &self.embedding_mix {
            Some(mix) if head_quantized => golden.with_embedding_mix(mix.clone())?,
            Some(_) | None => golden,
        };
        Ok(golden)
    }
}

/// The fixed `+-1` signs of the `ffn_down` rotation (SplitMix64, seed
/// 0x5154_4152, one bit per channel).
pub(crate) fn rotation_signs(n: usize) -> Vec<f32> {
    let mut state = 0x5154_4152_u64;
    (0..n)
        .map(|_| {
            if q35_reference::splitmix64(&mut state) >> 63 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

/// Every row of `w` (`cols` wide) as `W' = W D H / group` per group
/// (`D` = diag(`signs`), `H` the unnormalised Walsh-Hadamard matrix), so
/// that `W' (H D x) = W x`: the weights that read a rotated input. In f64,
/// rounded once to f32.
fn rotate_columns(w: &mut [f32], cols: usize, signs: &[f32], group: usize) {
    let mut buf = vec![0f64; group];
    for row in w.chunks_exact_mut(cols) {
        for (part, s) in row.chunks_exact_mut(group).zip(signs.chunks_exact(group)) {
            for ((b, &v), &sg) in buf.iter_mut().zip(part.iter()).zip(s) {
                *b = f64::from(v) * f64::from(sg);
            }
            super::calibration::hadamard_f64(&mut buf);
            for (v, &b) in part.iter_mut().zip(&buf) {
                *v = (b / group as f64) as f32;
            }
        }
    }
}
