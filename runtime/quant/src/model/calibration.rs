//! Calibration: an [`Observer`] recording every linear layer's input while
//! the f32 reference runs ([`Calibration`]), and the statistics kept per
//! layer ([`LayerCalibration`]): per-channel importance, in-group
//! covariances and a reservoir sample of input rows.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use q35_reference::{LinearId, LinearKind, Model, Observer, splitmix64};
use rayon::prelude::*;

use super::ModelQuantError;
use crate::quantize::{GptqFactors, GroupCovariance, gptq_factors};

/// Calibration statistics of one linear layer's input.
#[derive(Debug, Clone)]
pub struct LayerCalibration {
    cols: usize,
    /// Group size and per-group sums of `x_g x_g^T` (when recorded).
    cov: Option<(usize, Vec<Vec<f32>>)>,
    /// Per-group sums of `(x_fp - x)_g x_g^T` (row-major, `x` the recorded
    /// input, `x_fp` the f32 model's input of the same token), at the
    /// covariance's group size, when sequential calibration records the
    /// asymmetry ([`Calibration::cross_covariance`]).
    cross: Option<Vec<Vec<f32>>>,
    sum_sq: Vec<f64>,
    /// Per channel: the largest |value| seen.
    abs_max: Vec<f32>,
    tokens: u64,
    /// Reservoir sample of input rows, row-major.
    samples: Vec<f32>,
    rng: u64,
    /// The GPTQ factors of [`LayerCalibration::covariance`], computed once
    /// for every matrix reading this input.
    factors: OnceLock<GptqFactors>,
}

impl LayerCalibration {
    /// An empty record of layer `id`'s input, `cols` wide, with zeroed
    /// covariance sums at group size `cov_group` when given.
    fn new(id: LinearId, cols: usize, cov_group: Option<usize>, cross: bool) -> LayerCalibration {
        LayerCalibration {
            cols,
            cov: cov_group.map(|g| (g, zero_covariance(cols, g))),
            cross: cov_group
                .filter(|_| cross)
                .map(|g| zero_covariance(cols, g)),
            sum_sq: vec![0.0; cols],
            abs_max: vec![0.0; cols],
            tokens: 0,
            samples: Vec::new(),
            rng: sampling_seed(id),
            factors: OnceLock::new(),
        }
    }

    fn next_rand(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    /// Adds the rows of `x` (row-major, `cols` wide) to every statistic.
    fn observe(&mut self, x: &[f32], max_samples: usize) {
        self.accumulate_covariance(x);
        for row in x.chunks_exact(self.cols) {
            self.accumulate_squares(row);
            self.sample_row(row, max_samples);
            self.tokens += 1;
        }
    }

    /// Adds `(x_fp - x)_g x_g^T` of every row's groups to the cross sums,
    /// when they are recorded (`x`, `x_fp`: the same tokens' rows).
    fn accumulate_cross(&mut self, x: &[f32], x_fp: &[f32]) {
        let (Some((group, _)), Some(blocks)) = (self.cov.as_ref(), self.cross.as_mut()) else {
            return;
        };
        let (group, cols) = (*group, self.cols);
        let delta: Vec<f32> = x_fp.iter().zip(x).map(|(f, q)| f - q).collect();
        blocks.par_iter_mut().enumerate().for_each(|(g, block)| {
            let lo = g * group;
            let n = group.min(cols - lo);
            super::covariance::accumulate_cross(block, n, &delta, x, cols, lo);
        });
    }

    /// Adds `x_g x_g^T` of every row's groups to the covariance sums, when
    /// they are recorded.
    fn accumulate_covariance(&mut self, x: &[f32]) {
        let Some((group, blocks)) = self.cov.as_mut() else {
            return;
        };
        let (group, cols) = (*group, self.cols);
        // Groups are independent: one task each (sums stay in token order).
        blocks.par_iter_mut().enumerate().for_each(|(g, block)| {
            let lo = g * group;
            let n = group.min(cols - lo);
            super::covariance::accumulate(block, n, x, cols, lo);
        });
    }

    /// Adds `row`'s squares to the per-channel sums behind the importance.
    fn accumulate_squares(&mut self, row: &[f32]) {
        for (a, &v) in self.sum_sq.iter_mut().zip(row) {
            *a += f64::from(v) * f64::from(v);
        }
        for (m, &v) in self.abs_max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }

    /// Reservoir sampling: keeps `row` (the token number `self.tokens`)
    /// with probability `max_samples / (tokens + 1)` once the sample is
    /// full, so the kept rows are a uniform sample of every row seen.
    fn sample_row(&mut self, row: &[f32], max_samples: usize) {
        let held = self.samples.len() / self.cols;
        if held < max_samples {
            self.samples.extend_from_slice(row);
        } else if max_samples > 0 {
            let j = (self.next_rand() % (self.tokens + 1)) as usize;
            if j < max_samples {
                self.samples[j * self.cols..(j + 1) * self.cols].copy_from_slice(row);
            }
        }
    }

    /// Rewrites the record as if the input had been rotated by
    /// `R = H D` in groups of `group` channels (`D` = diag(`signs`), `H` the
    /// unnormalised Walsh-Hadamard matrix; [`q35_contract::semantics::rotate_groups`]):
    /// covariance sums become `R C R^T`, the squares behind the importance
    /// their diagonal, and the sampled rows are rotated. The activation
    /// maxima stay those of the unrotated input. Needs covariances recorded
    /// at exactly `group`.
    fn rotate(&mut self, signs: &[f32], group: usize) -> Result<(), ModelQuantError> {
        let Some((g, blocks)) = self.cov.as_mut() else {
            return Err(ModelQuantError::Input(
                "rotation needs the input's covariance".into(),
            ));
        };
        if *g != group || signs.len() != self.cols || !self.cols.is_multiple_of(group) {
            return Err(ModelQuantError::Input(format!(
                "rotation in groups of {group} needs covariances at that group over {} channels",
                self.cols
            )));
        }
        for (b, block) in blocks.iter_mut().enumerate() {
            let s = &signs[b * group..(b + 1) * group];
            let mut m: Vec<f64> = (0..group * group)
                .map(|k| f64::from(block[k]) * f64::from(s[k / group] * s[k % group]))
                .collect();
            for row in m.chunks_exact_mut(group) {
                hadamard_f64(row);
            }
            let mut col = vec![0f64; group];
            for j in 0..group {
                for i in 0..group {
                    col[i] = m[i * group + j];
                }
                hadamard_f64(&mut col);
                for i in 0..group {
                    m[i * group + j] = col[i];
                }
            }
            for (i, sq) in self.sum_sq[b * group..(b + 1) * group]
                .iter_mut()
                .enumerate()
            {
                *sq = m[i * group + i];
            }
            for (v, &x) in block.iter_mut().zip(&m) {
                *v = x as f32;
            }
        }
        for row in self.samples.chunks_exact_mut(self.cols) {
            q35_contract::semantics::rotate_groups(row, signs, group);
        }
        self.factors = OnceLock::new();
        Ok(())
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

    /// Per-input-channel largest |activation| over every observed token
    /// (what SmoothQuant-style scale migration balances).
    pub fn abs_max(&self) -> &[f32] {
        &self.abs_max
    }

    /// The mean in-group second moments, when recorded
    /// ([`Calibration::run_with_covariance`]).
    pub fn covariance(&self) -> Option<GroupCovariance> {
        let (group, blocks) = self.cov.as_ref()?;
        Some(self.mean_moments(*group, blocks))
    }

    /// Summed per-group moments `blocks` divided by the tokens seen.
    fn mean_moments(&self, group: usize, blocks: &[Vec<f32>]) -> GroupCovariance {
        let n = self.tokens.max(1) as f32;
        GroupCovariance {
            group_size: group,
            cols: self.cols,
            blocks: blocks
                .iter()
                .map(|b| b.iter().map(|v| v / n).collect())
                .collect(),
        }
    }

    /// The mean in-group cross moments `mean_t (x_fp - x)_g x_g^T`
    /// (row-major, not symmetric), when sequential calibration recorded
    /// them: `x` the input the layer saw behind the quantized blocks, `x_fp`
    /// the f32 model's input of the same token.
    pub fn cross_covariance(&self) -> Option<GroupCovariance> {
        let (group, _) = self.cov.as_ref()?;
        Some(self.mean_moments(*group, self.cross.as_ref()?))
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
    /// The LM head's input is recorded mixed by this `hidden x hidden`
    /// matrix (the stream rotation's on-line mix), when set.
    head_mix: Option<Arc<[f32]>>,
    /// Record the cross moments of [`Calibration::observe_pair`].
    cross: bool,
}

impl Calibration {
    /// An empty recorder keeping up to `max_samples` input rows per layer.
    pub fn new(max_samples: usize) -> Calibration {
        Calibration {
            max_samples,
            cov_group: None,
            layers: BTreeMap::new(),
            head_mix: None,
            cross: false,
        }
    }

    /// An empty recorder of the f32 model's sampled rows for block-by-block
    /// calibration (no moments), the LM head's input mixed by `head_mix`
    /// when given.
    pub(crate) fn sequential_f32(max_samples: usize, head_mix: Option<Arc<[f32]>>) -> Calibration {
        Calibration {
            head_mix,
            ..Calibration::new(max_samples)
        }
    }

    /// An empty recorder for block-by-block (sequential) calibration:
    /// covariances at `group_size`, no sampled rows, the LM head's input
    /// mixed by `head_mix` when given, and the cross moments of
    /// [`Calibration::observe_pair`] when `cross` is set.
    pub(crate) fn sequential(
        group_size: usize,
        head_mix: Option<Arc<[f32]>>,
        cross: bool,
    ) -> Calibration {
        Calibration {
            max_samples: 0,
            cov_group: Some(group_size),
            layers: BTreeMap::new(),
            head_mix,
            cross,
        }
    }

    /// Observes layer `id`'s input `x` (`n_tokens` rows), as
    /// [`Observer::linear_input`] does, and, when cross moments are
    /// recorded, `x_fp`: the f32 model's input of the same tokens (mixed
    /// like `x` for the LM head).
    pub(crate) fn observe_pair(&mut self, id: LinearId, x: &[f32], x_fp: &[f32], n_tokens: usize) {
        self.linear_input(id, x, n_tokens);
        if !self.cross || n_tokens == 0 || x.len() != x_fp.len() || cov_source(id) != id {
            return;
        }
        let x = self.head_mixed(id, x, n_tokens);
        let x_fp = self.head_mixed(id, x_fp, n_tokens);
        if let Some(layer) = self.layers.get_mut(&id) {
            layer.accumulate_cross(&x, &x_fp);
        }
    }

    /// `x` as layer `id`'s record holds it: mixed by the head mix for the LM
    /// head, else as it is.
    fn head_mixed<'a>(
        &self,
        id: LinearId,
        x: &'a [f32],
        n_tokens: usize,
    ) -> std::borrow::Cow<'a, [f32]> {
        let cols = x.len() / n_tokens.max(1);
        match &self.head_mix {
            Some(m) if id.kind == LinearKind::LmHead && m.len() == cols * cols => {
                let mut v = vec![0f32; x.len()];
                v.par_chunks_mut(cols)
                    .zip(x.par_chunks(cols))
                    .for_each(|(o, row)| q35_contract::semantics::mix_along_lanes(m, row, o));
                std::borrow::Cow::Owned(v)
            }
            Some(_) | None => std::borrow::Cow::Borrowed(x),
        }
    }

    /// Moves every layer record of `other` into this one (records of the
    /// same layer are replaced).
    pub(crate) fn absorb(&mut self, other: Calibration) {
        self.layers.extend(other.layers);
    }

    /// The cross moments of layer `id`'s input
    /// ([`LayerCalibration::cross_covariance`]), if recorded.
    pub fn cross_covariance(&self, id: LinearId) -> Option<GroupCovariance> {
        self.layers.get(&cov_source(id))?.cross_covariance()
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
        Calibration::new(max_samples).record(model, tokens, window, &crate::progress::silent)
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
        Calibration::run_with_covariance_progress(
            model,
            tokens,
            window,
            max_samples,
            group_size,
            &crate::progress::silent,
        )
    }

    /// [`Calibration::run_with_covariance`], reporting each window to
    /// `progress` as it is done.
    pub fn run_with_covariance_progress(
        model: &Model,
        tokens: &[u32],
        window: usize,
        max_samples: usize,
        group_size: usize,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<Calibration, ModelQuantError> {
        if tokens.is_empty() || window == 0 || group_size == 0 {
            return Err(ModelQuantError::Input(
                "calibration needs tokens, a positive window and a positive group size".into(),
            ));
        }
        let mut calib = Calibration::new(max_samples);
        calib.cov_group = Some(group_size);
        calib.record(model, tokens, window, progress)
    }

    /// [`Calibration::run_with_covariance_progress`] for a model whose LM
    /// head mixes its input by `head_mix` (`hidden x hidden`, row-major)
    /// before its matrix (the stream rotation, [`super::rotate_stream_model`]):
    /// the head's record holds the mixed rows
    /// ([`q35_contract::semantics::mix_along_lanes`]), the input its
    /// quantized matrix reads.
    pub fn run_with_covariance_mixed_head(
        model: &Model,
        tokens: &[u32],
        window: usize,
        max_samples: usize,
        group_size: usize,
        head_mix: Arc<[f32]>,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<Calibration, ModelQuantError> {
        let d = model.config().hidden;
        if tokens.is_empty() || window == 0 || group_size == 0 || head_mix.len() != d * d {
            return Err(ModelQuantError::Input(format!(
                "calibration needs tokens, a positive window and group size, and a {d} x {d} head mix"
            )));
        }
        let mut calib = Calibration::new(max_samples);
        calib.cov_group = Some(group_size);
        calib.head_mix = Some(head_mix);
        calib.record(model, tokens, window, progress)
    }

    /// Runs `model` over `tokens` in consecutive windows of `window` tokens,
    /// each from an empty KV cache, observing every layer's input.
    fn record(
        mut self,
        model: &Model,
        tokens: &[u32],
        window: usize,
        progress: &dyn Fn(crate::Progress<'_>),
    ) -> Result<Calibration, ModelQuantError> {
        let total = tokens.len().div_ceil(window);
        let report = |done| {
            progress(crate::Progress::Item {
                done,
                total,
                item: "calibration windows",
            })
        };
        if model.threads() < 2 || total < 2 {
            for (i, chunk) in tokens.chunks(window).enumerate() {
                let mut session = model.new_session_with_capacity(window)?;
                model.observe(&mut session, chunk, &mut self)?;
                report(i + 1);
            }
            return Ok(self);
        }
        // Each window starts from an empty KV cache, so windows are
        // independent forward passes: two run at once (a window alone keeps
        // the model's pool about 70% busy: its norms, rotary embedding and
        // observer run on one thread). The first of a pair is observed as
        // it runs; the second is recorded and replayed once the first is
        // done, so every sum and the reservoir sample see the rows in the
        // same order as one window after the other (same bits). The
        // recording's memory is reused from pair to pair.
        let chunks: Vec<&[u32]> = tokens.chunks(window).collect();
        let mut rec = Recording::default();
        let mut done = 0;
        for pair in chunks.chunks(2) {
            let (first, second) = (pair[0], pair.get(1).copied());
            let this = &mut self;
            let (a, b) = std::thread::scope(|s| {
                let rec = &mut rec;
                let second = second.map(|c| s.spawn(move || rec.run(model, c, window)));
                let a = model
                    .new_session_with_capacity(window)
                    .and_then(|mut session| model.observe(&mut session, first, this));
                let b = second.map(|h| match h.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                });
                (a, b)
            });
            a?;
            done += 1;
            report(done);
            if let Some(b) = b {
                b?;
                rec.replay(&mut self);
                done += 1;
                report(done);
            }
        }
        Ok(self)
    }

    /// The statistics of layer `id`.
    pub fn layer(&self, id: LinearId) -> Option<&LayerCalibration> {
        self.layers.get(&id)
    }

    /// Rewrites the records of every layer of `kind` (which must hold
    /// their own covariance, e.g. `ffn_down`) for an input rotated by
    /// [`q35_contract::semantics::rotate_groups`] with `signs` in groups of
    /// `group`.
    pub fn rotate_input(
        &mut self,
        kind: LinearKind,
        signs: &[f32],
        group: usize,
    ) -> Result<(), ModelQuantError> {
        for (id, layer) in self.layers.iter_mut() {
            if id.kind == kind {
                layer
                    .rotate(signs, group)
                    .map_err(|e| ModelQuantError::Input(format!("{id}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The in-group covariance of layer `id`'s input, if recorded.
    pub fn covariance(&self, id: LinearId) -> Option<GroupCovariance> {
        self.layers.get(&cov_source(id))?.covariance()
    }

    /// The GPTQ factors of `cov`, [`Calibration::covariance`] of `id` as
    /// the caller took it, computed by the first matrix that asks (the
    /// others reading the same input wait for them, then share them).
    pub(crate) fn gptq_factors(&self, id: LinearId, cov: &GroupCovariance) -> Option<GptqFactors> {
        let layer = self.layers.get(&cov_source(id))?;
        Some(layer.factors.get_or_init(|| gptq_factors(cov)).clone())
    }
}

impl Observer for Calibration {
    fn linear_input(&mut self, id: LinearId, x: &[f32], n_tokens: usize) {
        if n_tokens == 0 {
            return;
        }
        let cols = x.len() / n_tokens;
        let max = self.max_samples;
        let x = self.head_mixed(id, x, n_tokens);
        // Layers sharing an input share one covariance, kept by the source.
        let cov_group = (cov_source(id) == id).then_some(self.cov_group).flatten();
        let cross = self.cross;
        self.layers
            .entry(id)
            .or_insert_with(|| LayerCalibration::new(id, cols, cov_group, cross))
            .observe(&x, max);
    }
}

/// The reservoir-sampling seed of layer `id` (fixed per layer, so samples
/// are reproducible).
fn sampling_seed(id: LinearId) -> u64 {
    0x51A7_u64 ^ ((id.block.map_or(0xFFFF, |b| b as u64)) << 8) ^ id.kind as u64
}

/// Zeroed `n x n` sums for each group of `group` channels of `cols` (the
/// last group ragged).
fn zero_covariance(cols: usize, group: usize) -> Vec<Vec<f32>> {
    (0..cols.div_ceil(group))
        .map(|i| {
            let n = group.min(cols - i * group);
            vec![0f32; n * n]
        })
        .collect()
}

/// The layer inputs one calibration window showed, in the order the
/// forward pass showed them ([`Calibration::record`] runs two windows at
/// once and replays the second's recording after the first).
#[derive(Default)]
pub(crate) struct Recording {
    /// Tokens in the window.
    n_tokens: usize,
    /// Every distinct input, one after the other.
    data: Vec<f32>,
    /// Each observation: the layer and where its input is in `data` (Q, K
    /// and V read the same rows, and so do gate and up: an input bit for
    /// bit the one before is not held twice).
    inputs: Vec<(LinearId, std::ops::Range<usize>)>,
}

impl Recording {
    /// Records `model` over `chunk` from an empty cache of `window`
    /// positions, in place of what the recording held (keeping its memory).
    fn run(&mut self, model: &Model, chunk: &[u32], window: usize) -> Result<(), ModelQuantError> {
        self.n_tokens = chunk.len();
        self.data.clear();
        self.inputs.clear();
        let mut session = model.new_session_with_capacity(window)?;
        model.observe(&mut session, chunk, self)?;
        Ok(())
    }

    /// An empty recording of a window of `n_tokens` tokens.
    pub(crate) fn of_tokens(n_tokens: usize) -> Recording {
        Recording {
            n_tokens,
            ..Recording::default()
        }
    }

    /// The first input recorded for layer `id`.
    pub(crate) fn get(&self, id: LinearId) -> Option<&[f32]> {
        self.inputs
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| &self.data[r.clone()])
    }

    /// Shows `observer` every recorded input in the recorded order.
    pub(crate) fn replay(&self, observer: &mut dyn Observer) {
        for (id, r) in &self.inputs {
            observer.linear_input(*id, &self.data[r.clone()], self.n_tokens);
        }
    }
}

impl Observer for Recording {
    fn linear_input(&mut self, id: LinearId, x: &[f32], n_tokens: usize) {
        debug_assert_eq!(n_tokens, self.n_tokens);
        let same = self.inputs.last().map(|(_, r)| r.clone()).filter(|r| {
            let held = &self.data[r.clone()];
            held.len() == x.len() && held.iter().zip(x).all(|(a, b)| a.to_bits() == b.to_bits())
        });
        let r = same.unwrap_or_else(|| {
            let start = self.data.len();
            self.data.extend_from_slice(x);
            start..self.data.len()
        });
        self.inputs.push((id, r));
    }
}

/// The layer whose input record `id` shares (K, V read Q's input; up reads
/// gate's).
pub(crate) fn cov_source(id: LinearId) -> LinearId {
    let kind = match id.kind {
        LinearKind::K | LinearKind::V => LinearKind::Q,
        LinearKind::Up => LinearKind::Gate,
        k => k,
    };
    LinearId { kind, ..id }
}

/// The unnormalised Walsh-Hadamard transform in f64, in place (the order of
/// [`q35_contract::semantics::hadamard_in_place`]).
pub(crate) fn hadamard_f64(x: &mut [f64]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}
