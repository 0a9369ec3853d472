//! Block-by-block (sequential) calibration and the asymmetric GPTQ target
//! (docs/q35-format.md section 14, `--sequential`, `--asymmetric`).
//!
//! [`quantize_sequential`] quantizes a model one decoder block at a time:
//! block `b`'s matrices are calibrated on the inputs produced by blocks
//! `0..b` already quantized ([`Sequential::Int8`]: run as the golden
//! integer model runs them, [`GoldenModel::advance_block`];
//! [`Sequential::Dequant`]: the f32 reference block with the dequantized
//! weights), block `b` itself running the f32 reference on that stream;
//! the LM head last, on the final quantized stream. With an asymmetry
//! strength `alpha`, each matrix is quantized towards the target
//! [`asymmetric_target`] (GPTAQ, arXiv 2504.02692): `W + alpha W dX X^T
//! H^-1`, which makes in-span GPTQ minimise `||W X_fp - Q X||^2` (the f32
//! model's output from its own input `X_fp`, against the quantized layer's
//! from the input `X` it really gets) instead of `||W X - Q X||^2`.
//!
//! The embedding lookup starts both streams from the f32 table (the tied
//! head, whose dequantized table the golden model looks up, is quantized
//! last).

use std::sync::Arc;

use q35_reference::{Block, DenseLinear, LinearId, LinearKind, Model, Observer};
use rayon::prelude::*;

use super::calibration::Recording;
use super::{Calibration, Methods, ModelQuantError, QuantizedLayer, SchemePolicy};
use crate::quantize::{GroupCovariance, QuantOptions};

/// How sequential calibration runs the blocks it has already quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequential {
    /// As the golden integer model does (docs/q35-format.md 8.5: int8
    /// activations, integer matmuls): what the machine computes.
    Int8,
    /// The f32 reference with the dequantized weights (f32 activations).
    Dequant,
}

impl Sequential {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [Sequential; 2] = [Sequential::Int8, Sequential::Dequant];

    /// The mode's name (`int8`, `dequant`).
    pub fn name(self) -> &'static str {
        match self {
            Sequential::Int8 => "int8",
            Sequential::Dequant => "dequant",
        }
    }
}

impl std::str::FromStr for Sequential {
    type Err = String;

    fn from_str(s: &str) -> Result<Sequential, String> {
        Sequential::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown sequential calibration mode {s} (expected int8 or dequant)")
            })
    }
}

impl std::fmt::Display for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`quantize_sequential`] works on.
pub(crate) struct SequentialJob<'a> {
    /// The model quantized (the rewritten one, when a method rewrites it).
    pub model: &'a Model,
    /// Its f32 matrices, in forward order.
    pub weights: &'a [(LinearId, Vec<f32>)],
    pub policy: SchemePolicy,
    pub group_size: usize,
    /// The group size covariances are recorded at.
    pub cov_group: usize,
    pub options: QuantOptions,
    pub methods: &'a Methods,
    /// Calibration tokens, run in windows of `window` tokens.
    pub tokens: &'a [u32],
    pub window: usize,
    /// The LM head's on-line mix (stream or head rotation).
    pub head_mix: Option<&'a Arc<[f32]>>,
}

/// One block pass of [`quantize_sequential`]: a window of the f32 model's
/// stream (advanced in place) or of the quantized stream (left as it is:
/// the pass only records its layer inputs).
enum BlockJob<'a> {
    F32(&'a mut Vec<f32>),
    Quantized(&'a [f32]),
}

/// Feeds a [`Calibration`] each input with the f32 model's input of the
/// same layer and tokens, when there is one.
struct Paired<'a> {
    calib: &'a mut Calibration,
    fp: Option<&'a Recording>,
}

impl Observer for Paired<'_> {
    fn linear_input(&mut self, id: LinearId, x: &[f32], n_tokens: usize) {
        match self.fp.and_then(|fp| fp.get(id)) {
            Some(x_fp) => self.calib.observe_pair(id, x, x_fp, n_tokens),
            None => self.calib.linear_input(id, x, n_tokens),
        }
    }
}

/// Quantizes every matrix of `job.model` block by block (module docs),
/// returning the layers in forward order, the calibration records they
/// were quantized with (every layer's, as the sequential pass saw it), and
/// `f32_record` (an empty recorder) holding the f32 model's rows as the
/// pass ran it, in the order a whole-model calibration sees them.
pub(crate) fn quantize_sequential(
    job: &SequentialJob<'_>,
    mode: Sequential,
    alpha: f32,
    mut f32_record: Calibration,
    progress: &dyn Fn(crate::Progress<'_>),
) -> Result<(Vec<QuantizedLayer>, Calibration, Calibration), ModelQuantError> {
    let m = job.model;
    let c = m.config();
    let d = c.hidden;
    if job.tokens.is_empty() || job.window == 0 {
        return Err(ModelQuantError::Input(
            "sequential calibration needs tokens and a positive window".into(),
        ));
    }
    let window = job.window.min(c.context);
    let asym = alpha > 0.0;
    let embed = |chunk: &[u32]| -> Result<Vec<f32>, ModelQuantError> {
        let mut x = Vec::with_capacity(chunk.len() * d);
        for &t in chunk {
            let row = m
                .embedding()
                .get(t as usize * d..(t as usize + 1) * d)
                .ok_or_else(|| {
                    ModelQuantError::Input(format!("token {t} is outside the vocabulary"))
                })?;
            x.extend_from_slice(row);
        }
        Ok(x)
    };
    // The stream behind the quantized blocks, and the f32 model's (only for
    // the asymmetric term), one entry per window.
    let mut stream: Vec<Vec<f32>> = job
        .tokens
        .chunks(window)
        .map(embed)
        .collect::<Result<_, _>>()?;
    let mut stream_fp: Vec<Vec<f32>> = stream.clone();
    // The table the one-block golden models carry but never read.
    let table: Option<Arc<[f32]>> = (mode == Sequential::Int8).then(|| m.embedding().into());
    let by_id = |id: LinearId| job.weights.iter().find(|(i, _)| *i == id);
    let mut layers = Vec::with_capacity(job.weights.len());
    let mut records = Calibration::sequential(job.cov_group, None, false);
    let blocks = m.blocks().len();
    let head_id = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    let head_quantized = job.policy.scheme_of(head_id).is_some();
    let total = blocks + usize::from(head_quantized);
    for b in 0..blocks {
        // Block b's layer inputs, window by window: the f32 model's (which
        // also advances its stream) and the quantized stream's through the
        // f32 block. The passes run two at a time, one job a window and
        // stream (so an odd window count leaves no window alone at the
        // end); the records are then observed in window order, so every
        // sum is the same as one window after the other.
        let jobs: Vec<BlockJob<'_>> = stream
            .iter()
            .zip(stream_fp.iter_mut())
            .flat_map(|(x, fp)| [BlockJob::F32(fp), BlockJob::Quantized(x)])
            .collect();
        let mut recorded = in_pairs(jobs, |job| {
            let mut owned;
            let x: &mut Vec<f32> = match job {
                BlockJob::F32(x_fp) => x_fp,
                BlockJob::Quantized(x) => {
                    owned = x.to_vec();
                    &mut owned
                }
            };
            let mut rec = Recording::of_tokens(x.len() / d);
            m.run_block(b, None, x, Some(&mut rec))?;
            Ok(rec)
        })?
        .into_iter();
        let recorded: Vec<(Recording, Recording)> = std::iter::from_fn(|| {
            let fp = recorded.next()?;
            let rec = recorded.next()?;
            Some((fp, rec))
        })
        .collect();
        let mut calib = Calibration::sequential(job.cov_group, None, asym);
        for (fp, rec) in &recorded {
            fp.replay(&mut f32_record);
            rec.replay(&mut Paired {
                calib: &mut calib,
                fp: asym.then_some(fp),
            });
        }
        drop(recorded);
        let ids: Vec<LinearId> = LinearKind::BLOCK
            .into_iter()
            .map(|kind| LinearId {
                block: Some(b),
                kind,
            })
            .collect();
        let quantized = quantize_with(job, &ids, &calib, alpha, &by_id)?;
        // Advance the quantized stream through block b as quantized.
        match mode {
            Sequential::Int8 => {
                let block = crate::golden::golden_block(m, &quantized, b)?;
                let table = table.clone().expect("int8 mode keeps the table");
                let golden = crate::golden::single_block(m, block, window, table)?
                    .with_activation_scales(job.methods.act_scales)?;
                stream
                    .par_iter_mut()
                    .try_for_each(|x| -> Result<(), ModelQuantError> {
                        let mut session = golden.new_session();
                        golden.advance_block_tokens(&mut session, 0, x)?;
                        Ok(())
                    })?;
            }
            Sequential::Dequant => {
                let block = dequantized_block(m, b, &quantized)?;
                in_pairs(stream.iter_mut().collect(), |x| {
                    m.run_block(b, Some(&block), x, None)
                        .map_err(ModelQuantError::from)
                })?;
            }
        }
        layers.extend(quantized);
        records.absorb(calib);
        progress(crate::Progress::Item {
            done: b + 1,
            total,
            item: &format!("blk.{b}"),
        });
    }
    if head_quantized {
        let mut calib = Calibration::sequential(job.cov_group, job.head_mix.cloned(), asym);
        let norm = |x: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; x.len()];
            for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                q35_reference::kernels::rms_norm(r, m.output_norm(), c.norm_eps, o);
            }
            out
        };
        for (x, x_fp) in stream.iter().zip(&stream_fp) {
            let n = x.len() / d;
            let xq = norm(x);
            let x_fp = norm(x_fp);
            f32_record.linear_input(head_id, &x_fp, n);
            if asym {
                calib.observe_pair(head_id, &xq, &x_fp, n);
            } else {
                calib.linear_input(head_id, &xq, n);
            }
        }
        layers.extend(quantize_with(job, &[head_id], &calib, alpha, &by_id)?);
        records.absorb(calib);
        progress(crate::Progress::Item {
            done: total,
            total,
            item: "output",
        });
    }
    // Forward order, as `quantize_model_with` returns them.
    let order: Vec<LinearId> = job.weights.iter().map(|(id, _)| *id).collect();
    layers.sort_by_key(|l| order.iter().position(|&i| i == l.id));
    Ok((layers, records, f32_record))
}

/// `f` of every item, in order, two items at a time on scoped threads: a
/// block pass of one window keeps the model's pool about 70 % busy (its
/// norms, rotary embedding and attention bookkeeping run on one thread),
/// as [`Calibration`]'s own passes found.
fn in_pairs<I: Send, T: Send>(
    items: Vec<I>,
    f: impl Fn(I) -> Result<T, ModelQuantError> + Sync,
) -> Result<Vec<T>, ModelQuantError> {
    let mut out = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    while let Some(first) = items.next() {
        let second = items.next();
        let f = &f;
        let (a, b) = std::thread::scope(|s| {
            let second = second.map(|item| s.spawn(move || f(item)));
            let a = f(first);
            let b = second.map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            });
            (a, b)
        });
        out.push(a?);
        if let Some(b) = b {
            out.push(b?);
        }
    }
    Ok(out)
}

/// The matrices `ids` (those the policy quantizes) quantized with `calib`,
/// each towards its asymmetric target when `alpha > 0`.
fn quantize_with<'w>(
    job: &SequentialJob<'_>,
    ids: &[LinearId],
    calib: &Calibration,
    alpha: f32,
    by_id: &dyn Fn(LinearId) -> Option<&'w (LinearId, Vec<f32>)>,
) -> Result<Vec<QuantizedLayer>, ModelQuantError> {
    let mut weights = Vec::with_capacity(ids.len());
    for &id in ids {
        if job.policy.scheme_of(id).is_none() {
            continue;
        }
        let (_, w) = by_id(id).ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))?;
        let w = match (
            alpha > 0.0,
            calib.covariance(id),
            calib.cross_covariance(id),
        ) {
            (true, Some(h), Some(dx)) => asymmetric_target(w, &h, &dx, alpha)?,
            _ => w.clone(),
        };
        weights.push((id, w));
    }
    super::quantize_model_with(
        job.model,
        &weights,
        job.policy,
        job.group_size,
        Some(calib),
        job.options,
        job.methods,
        &crate::progress::silent,
    )
}

/// Block `b` of `model` with its matrices replaced by the dequantized
/// `layers` (the [`Sequential::Dequant`] stream).
fn dequantized_block(
    model: &Model,
    b: usize,
    layers: &[QuantizedLayer],
) -> Result<Block, ModelQuantError> {
    let rb = &model.blocks()[b];
    let dense = |kind: LinearKind| -> Result<Box<dyn q35_reference::Linear>, ModelQuantError> {
        let id = LinearId {
            block: Some(b),
            kind,
        };
        match layers.iter().find(|l| l.id == id) {
            Some(l) => {
                let m = l.matrix.unpack();
                Ok(Box::new(DenseLinear::new(
                    m.rows(),
                    m.cols(),
                    crate::golden::dequantize_shared(&m),
                )))
            }
            // Not quantized (the policy keeps it): its f32 weights.
            None => {
                let l = model
                    .linear(id)
                    .ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))?;
                let w = l
                    .weights_f32()
                    .ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))?;
                Ok(Box::new(DenseLinear::new(
                    l.out_features(),
                    l.in_features(),
                    w.into_owned().into(),
                )))
            }
        }
    };
    Ok(Block {
        attn_norm: rb.attn_norm.clone(),
        wq: dense(LinearKind::Q)?,
        wk: dense(LinearKind::K)?,
        wv: dense(LinearKind::V)?,
        wo: dense(LinearKind::AttnOutput)?,
        ffn_norm: rb.ffn_norm.clone(),
        gate: dense(LinearKind::Gate)?,
        up: dense(LinearKind::Up)?,
        down: dense(LinearKind::Down)?,
    })
}

/// The asymmetric GPTQ target of a row-major matrix `w` (`h.cols` wide)
/// whose input `X` (second moments `h`, per span) differs from the f32
/// model's `X_fp` (cross moments `dx = mean dX X^T`, `dX = X_fp - X`, per
/// span): every row becomes `w + alpha w dX X^T (H + lambda I)^-1`, span by
/// span, with GPTQ's damping (`lambda` = 1 %, else 10 %, else 100 % of the
/// mean diagonal, the first that leaves it positive definite). At
/// `alpha = 1` in-span GPTQ of the target minimises
/// `||W X_fp - Q X||^2` (the part of `W X_fp` outside the span of `X` does
/// not depend on `Q`); `alpha = 0` gives `w` unchanged. In f64, rounded once
/// to f32. Spans whose input was never seen are left as they are.
pub fn asymmetric_target(
    w: &[f32],
    h: &GroupCovariance,
    dx: &GroupCovariance,
    alpha: f32,
) -> Result<Vec<f32>, ModelQuantError> {
    let cols = h.cols;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(ModelQuantError::Input(format!(
            "the asymmetry strength {alpha} is not in [0, 1]"
        )));
    }
    if cols == 0
        || !w.len().is_multiple_of(cols)
        || dx.cols != cols
        || dx.group_size != h.group_size
        || dx.blocks.len() != h.blocks.len()
    {
        return Err(ModelQuantError::Input(format!(
            "asymmetric target: a matrix of {} values against moments over {cols} and {} columns",
            w.len(),
            dx.cols
        )));
    }
    if alpha == 0.0 {
        return Ok(w.to_vec());
    }
    let span = h.group_size;
    // Per span: M = dx (H + lambda I)^-1, row-major (row j: how channel j's
    // weight moves the others).
    let maps: Vec<Option<Vec<f64>>> = h
        .blocks
        .par_iter()
        .zip(&dx.blocks)
        .map(|(hb, db)| asymmetry_map(hb, db))
        .collect();
    let mut out = w.to_vec();
    let a = f64::from(alpha);
    // Rows in tiles of `TARGET_ROWS` sharing each load of the maps (the
    // row count need not be a multiple: the last tile is shorter).
    out.par_chunks_mut(cols * TARGET_ROWS).for_each(|rows| {
        target_rows(rows, cols, span, &maps, a);
    });
    Ok(out)
}

/// Rows of [`asymmetric_target`] handled together.
const TARGET_ROWS: usize = 4;

/// [`asymmetric_target`]'s update of `rows` (whole rows of `cols`), on the
/// best instruction set the CPU has; the same bits on every one.
fn target_rows(rows: &mut [f32], cols: usize, span: usize, maps: &[Option<Vec<f64>>], a: f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { target_rows_avx2(rows, cols, span, maps, a) };
            return;
        }
    }
    target_rows_with::<2>(rows, cols, span, maps, a);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn target_rows_avx2(rows: &mut [f32], cols: usize, span: usize, maps: &[Option<Vec<f64>>], a: f64) {
    target_rows_with::<8>(rows, cols, span, maps, a);
}

/// Every row becomes `w + a (w M)` span by span, where `(w M)_k = sum_j
/// w_j M_jk` in `j` order, products of zero weights skipped, each an f64
/// multiply then an f64 add: the plain loop's arithmetic, element by
/// element. Full tiles of [`TARGET_ROWS`] rows by `K` columns keep their
/// sums in registers while `j` runs; the rest go element by element.
#[inline(always)]
fn target_rows_with<const K: usize>(
    rows: &mut [f32],
    cols: usize,
    span: usize,
    maps: &[Option<Vec<f64>>],
    a: f64,
) {
    const R: usize = TARGET_ROWS;
    let n_rows = rows.len() / cols;
    let mut add = vec![0f64; R * span];
    for (s, map) in maps.iter().enumerate() {
        let Some(map) = map else { continue };
        let lo = s * span;
        let n = span.min(cols - lo);
        let add = &mut add[..R * n];
        add.fill(0.0);
        let w = |r: usize, j: usize| f64::from(rows[r * cols + lo + j]);
        // Only a whole tile of rows goes through the register tiles.
        let tiled = n_rows == R;
        let full_cols = n / K * K;
        if tiled {
            for k0 in (0..full_cols).step_by(K) {
                let mut acc = [[0f64; K]; R];
                for j in 0..n {
                    let m: &[f64; K] = map[j * n + k0..][..K].try_into().expect("tile width");
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let wj = w(r, j);
                        if wj == 0.0 {
                            continue;
                        }
                        for (s, &mjk) in acc.iter_mut().zip(m) {
                            *s += wj * mjk;
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    add[r * n + k0..][..K].copy_from_slice(acc);
                }
            }
        }
        for r in 0..n_rows {
            let first = if tiled { full_cols } else { 0 };
            for k in first..n {
                let mut s = 0f64;
                for j in 0..n {
                    let wj = w(r, j);
                    if wj == 0.0 {
                        continue;
                    }
                    s += wj * map[j * n + k];
                }
                add[r * n + k] = s;
            }
        }
        for r in 0..n_rows {
            let part = &mut rows[r * cols + lo..][..n];
            for (v, &da) in part.iter_mut().zip(&add[r * n..(r + 1) * n]) {
                *v = (f64::from(*v) + a * da) as f32;
            }
        }
    }
}

/// Right-hand sides [`asymmetry_map`] solves side by side.
const SOLVE_ROWS: usize = 4;

/// One step of a triangular solve for `rows` right-hand sides side by
/// side: `start(r) - coef[0] x_r[off] - coef[1] x_r[off + 1] - ...`, each
/// row's terms subtracted one at a time in ascending order (row `r`'s
/// values are `x[r * n ..]`).
fn substitute(
    start: impl Fn(usize) -> f64,
    rows: usize,
    coef: &[f64],
    x: &[f64],
    n: usize,
    off: usize,
) -> [f64; SOLVE_ROWS] {
    let mut s: [f64; SOLVE_ROWS] = std::array::from_fn(|r| if r < rows { start(r) } else { 0.0 });
    for (k, &c) in coef.iter().enumerate() {
        for (r, s) in s.iter_mut().enumerate().take(rows) {
            *s -= c * x[r * n + off + k];
        }
    }
    s
}

/// `dx (H + lambda I)^-1` of one span (`n x n`, row-major), `None` when the
/// span saw no input or no damping makes `H` positive definite.
fn asymmetry_map(h: &[f32], dx: &[f32]) -> Option<Vec<f64>> {
    let n = h.len().isqrt();
    if n == 0 || n * n != h.len() || dx.len() != h.len() {
        return None;
    }
    let mean = (0..n).map(|i| f64::from(h[i * n + i])).sum::<f64>() / n as f64;
    if mean <= 0.0 || !mean.is_finite() {
        return None;
    }
    for damp in crate::quantize::DAMPING {
        let a = crate::quantize::damped(h, n, mean, damp);
        let Some(l) = crate::quantize::cholesky(&a, n) else {
            continue;
        };
        // L^T, row-major: the back substitution reads row i of it.
        let mut lt = vec![0f64; n * n];
        for i in 0..n {
            for k in 0..n {
                lt[i * n + k] = l[k * n + i];
            }
        }
        // Row j of M solves (H + lambda I) m_j = dx_j (H is symmetric):
        // L y = dx_j, then L^T m_j = y. `SOLVE_ROWS` rows at a time, so
        // their independent chains of subtractions overlap; each row's
        // arithmetic is the one-row solve's, term for term.
        let mut m = vec![0f64; n * n];
        let mut y = vec![0f64; SOLVE_ROWS * n];
        for (jb, outs) in m.chunks_mut(SOLVE_ROWS * n).enumerate() {
            let rows = outs.len() / n;
            let rhs = &dx[jb * SOLVE_ROWS * n..][..rows * n];
            for i in 0..n {
                let start = |r: usize| f64::from(rhs[r * n + i]);
                let s = substitute(start, rows, &l[i * n..i * n + i], &y, n, 0);
                for (r, s) in s.iter().enumerate().take(rows) {
                    y[r * n + i] = s / l[i * n + i];
                }
            }
            for i in (0..n).rev() {
                let start = |r: usize| y[r * n + i];
                let s = substitute(start, rows, &lt[i * n + i + 1..(i + 1) * n], outs, n, i + 1);
                for (r, s) in s.iter().enumerate().take(rows) {
                    outs[r * n + i] = s / l[i * n + i];
                }
            }
        }
        return Some(m);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update as first written: row by row, span by span, `j` outer.
    fn plain(rows: &mut [f32], cols: usize, span: usize, maps: &[Option<Vec<f64>>], a: f64) {
        for row in rows.chunks_mut(cols) {
            for (s, map) in maps.iter().enumerate() {
                let Some(map) = map else { continue };
                let lo = s * span;
                let n = span.min(cols - lo);
                let part = &mut row[lo..lo + n];
                let mut add = vec![0f64; n];
                for (j, &wj) in part.iter().enumerate() {
                    let wj = f64::from(wj);
                    if wj == 0.0 {
                        continue;
                    }
                    for (acc, &mjk) in add.iter_mut().zip(&map[j * n..(j + 1) * n]) {
                        *acc += wj * mjk;
                    }
                }
                for (v, da) in part.iter_mut().zip(add) {
                    *v = (f64::from(*v) + a * da) as f32;
                }
            }
        }
    }

    /// Every tile width and the dispatched path give the plain loop's bits:
    /// full tiles, ragged last spans and columns, fewer rows than a tile,
    /// zero weights (skipped) and spans without a map.
    #[test]
    fn tiled_target_update_is_the_plain_loop() {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        for (rows, cols, span) in [
            (9usize, 300usize, 128usize),
            (4, 64, 64),
            (3, 70, 32),
            (8, 13, 5),
        ] {
            let spans = cols.div_ceil(span);
            let maps: Vec<Option<Vec<f64>>> = (0..spans)
                .map(|s| {
                    let n = span.min(cols - s * span);
                    (s != 1).then(|| (0..n * n).map(|_| next() * 1e-2).collect())
                })
                .collect();
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    if i % 7 == 3 {
                        0.0
                    } else {
                        (next() * 4.0) as f32
                    }
                })
                .collect();
            let mut want = w.clone();
            plain(&mut want, cols, span, &maps, 0.25);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for k in [1usize, 2, 8] {
                let mut got = w.clone();
                for chunk in got.chunks_mut(cols * TARGET_ROWS) {
                    match k {
                        1 => target_rows_with::<1>(chunk, cols, span, &maps, 0.25),
                        2 => target_rows_with::<2>(chunk, cols, span, &maps, 0.25),
                        _ => target_rows_with::<8>(chunk, cols, span, &maps, 0.25),
                    }
                }
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "K {k}, {rows} x {cols}, span {span}"
                );
            }
            let mut got = w.clone();
            for chunk in got.chunks_mut(cols * TARGET_ROWS) {
                target_rows(chunk, cols, span, &maps, 0.25);
            }
            assert_eq!(bits(&got), bits(&want), "dispatched, {rows} x {cols}");
        }
    }

    /// The side-by-side solve is each row's own solve, bit for bit: spans
    /// whose row count is and is not a multiple of `SOLVE_ROWS`.
    #[test]
    fn batched_solve_is_the_one_row_solve() {
        fn one_row(h: &[f32], dx: &[f32]) -> Option<Vec<f64>> {
            let n = h.len().isqrt();
            let mean = (0..n).map(|i| f64::from(h[i * n + i])).sum::<f64>() / n as f64;
            let a = crate::quantize::damped(h, n, mean, crate::quantize::DAMPING[0]);
            let l = crate::quantize::cholesky(&a, n)?;
            let mut m = vec![0f64; n * n];
            for (j, out) in m.chunks_exact_mut(n).enumerate() {
                let mut y = vec![0f64; n];
                for i in 0..n {
                    let mut s = f64::from(dx[j * n + i]);
                    for k in 0..i {
                        s -= l[i * n + k] * y[k];
                    }
                    y[i] = s / l[i * n + i];
                }
                for i in (0..n).rev() {
                    let mut s = y[i];
                    for k in i + 1..n {
                        s -= l[k * n + i] * out[k];
                    }
                    out[i] = s / l[i * n + i];
                }
            }
            Some(m)
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
        };
        for n in [1usize, 3, 4, 7, 64] {
            // H = A A^T + I: symmetric positive definite.
            let a: Vec<f32> = (0..n * n).map(|_| next()).collect();
            let mut h = vec![0f32; n * n];
            for i in 0..n {
                for j in 0..n {
                    let dot: f32 = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum();
                    h[i * n + j] = dot + if i == j { 1.0 } else { 0.0 };
                }
            }
            let dx: Vec<f32> = (0..n * n).map(|_| next()).collect();
            let want = one_row(&h, &dx).expect("positive definite");
            let got = asymmetry_map(&h, &dx).expect("positive definite");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "span of {n}");
        }
    }
}
