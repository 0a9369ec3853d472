//! SmoothQuant-style scale migration (docs/q35-format.md section 14): an
//! f32-equivalent rewrite of the model that divides each outlier-prone
//! activation channel by a factor `s_j` and multiplies the weight column
//! that reads it by the same factor, so the per-token int8 activation scale
//! is set by smaller maxima. Every division is folded into a weight the
//! model already has, so the machine runs the rewritten model as it is (no
//! run-time cost):
//!
//! - RMSNorm outputs (Q, K, V; gate, up): the norm weight is divided.
//! - The attention output (input of `attn_output`): V's rows are divided
//!   (attention mixes positions, not channels, so the division passes
//!   through it); with grouped-query attention every query head sharing a
//!   KV head shares its factors.
//! - The SwiGLU output (input of `ffn_down`): `up`'s rows are divided
//!   (`silu(g) * (u / s) = (silu(g) * u) / s`).
//!
//! The LM head is left alone (tied to the embedding, which the rewrite
//! must not change). Factors follow SmoothQuant:
//! `s_j = a_j^alpha / w_j^(1 - alpha)`, `a_j` the largest |activation| of
//! channel `j` over calibration, `w_j` the largest |weight| of column `j`
//! over every matrix reading it; a channel with a zero maximum keeps
//! `s_j = 1`.

use q35_reference::{Config, LinearId, LinearKind, Model, WeightMap};

use super::{Calibration, ModelQuantError};

/// Factors clamped to this range (and its inverse), so no channel is
/// scaled into overflow or to zero.
const MAX_FACTOR: f32 = 1.0e4;

/// The model rewritten with migration strength `alpha` (0: no change in
/// the activations, 1: all of the range moved into the weights), from the
/// per-channel activation maxima `calib` recorded on `model`.
pub fn smooth_model(
    model: &Model,
    calib: &Calibration,
    alpha: f32,
) -> Result<Model, ModelQuantError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(ModelQuantError::Input(format!(
            "smoothing strength {alpha} is not in 0..=1"
        )));
    }
    let c = model.config().clone();
    let (d, hd) = (c.hidden, c.head_dim);
    let group = c.heads / c.kv_heads;
    let mut map = WeightMap::new("smoothed model");
    map.insert(
        "token_embd.weight",
        vec![d as u64, c.vocab as u64],
        model.embedding().to_vec(),
    );
    for (b, blk) in model.blocks().iter().enumerate() {
        let id = |kind| LinearId {
            block: Some(b),
            kind,
        };
        let w = |kind| weights(model, id(kind));
        let act = |kind| -> Result<Vec<f32>, ModelQuantError> {
            calib
                .layer(id(kind))
                .map(|l| l.abs_max().to_vec())
                .ok_or_else(|| ModelQuantError::NoCalibration(id(kind).to_string()))
        };
        let (mut q, mut k, mut v) = (w(LinearKind::Q)?, w(LinearKind::K)?, w(LinearKind::V)?);
        let (mut o, mut gate, mut up) = (
            w(LinearKind::AttnOutput)?,
            w(LinearKind::Gate)?,
            w(LinearKind::Up)?,
        );
        let mut down = w(LinearKind::Down)?;

        // Attention norm -> Q, K, V.
        let s = factors(&act(LinearKind::Q)?, &col_max(&[&q, &k, &v], d), alpha);
        let attn_norm = divide(&blk.attn_norm, &s);
        for m in [&mut q, &mut k, &mut v] {
            scale_cols(m, d, &s);
        }
        // V rows -> attention output columns (one factor per KV channel).
        let a_o = act(LinearKind::AttnOutput)?;
        let w_o = col_max(&[&o], c.heads * hd);
        let kv = c.kv_heads * hd;
        let kv_of = |j: usize| (j / hd / group) * hd + j % hd;
        let (mut a_kv, mut w_kv) = (vec![0f32; kv], vec![0f32; kv]);
        for j in 0..c.heads * hd {
            a_kv[kv_of(j)] = a_kv[kv_of(j)].max(a_o[j]);
            w_kv[kv_of(j)] = w_kv[kv_of(j)].max(w_o[j]);
        }
        let s_kv = factors(&a_kv, &w_kv, alpha);
        scale_rows_inv(&mut v, d, &s_kv);
        let s_o: Vec<f32> = (0..c.heads * hd).map(|j| s_kv[kv_of(j)]).collect();
        scale_cols(&mut o, c.heads * hd, &s_o);
        // FFN norm -> gate, up.
        let s = factors(&act(LinearKind::Gate)?, &col_max(&[&gate, &up], d), alpha);
        let ffn_norm = divide(&blk.ffn_norm, &s);
        for m in [&mut gate, &mut up] {
            scale_cols(m, d, &s);
        }
        // up rows -> down columns.
        let s = factors(&act(LinearKind::Down)?, &col_max(&[&down], c.ffn), alpha);
        scale_rows_inv(&mut up, d, &s);
        scale_cols(&mut down, c.ffn, &s);

        map.insert(
            format!("blk.{b}.attn_norm.weight"),
            vec![d as u64],
            attn_norm,
        );
        map.insert(format!("blk.{b}.ffn_norm.weight"), vec![d as u64], ffn_norm);
        for (kind, m) in [
            (LinearKind::Q, q),
            (LinearKind::K, k),
            (LinearKind::V, v),
            (LinearKind::AttnOutput, o),
            (LinearKind::Gate, gate),
            (LinearKind::Up, up),
            (LinearKind::Down, down),
        ] {
            let (cols, rows) = dims(&c, kind);
            map.insert(id(kind).gguf_name(), vec![cols as u64, rows as u64], m);
        }
    }
    map.insert(
        "output_norm.weight",
        vec![d as u64],
        model.output_norm().to_vec(),
    );
    if !c.tied_embeddings {
        let head = LinearId {
            block: None,
            kind: LinearKind::LmHead,
        };
        map.insert(
            head.gguf_name(),
            vec![d as u64, c.vocab as u64],
            weights(model, head)?,
        );
    }
    let mut out = Model::from_config_weights(c, map)?;
    out.set_threads(model.threads())?;
    Ok(out)
}

/// GGUF dims `[cols, rows]` of a block matrix.
pub(crate) fn dims(c: &Config, kind: LinearKind) -> (usize, usize) {
    match kind {
        LinearKind::Q => (c.hidden, c.heads * c.head_dim),
        LinearKind::K | LinearKind::V => (c.hidden, c.kv_heads * c.head_dim),
        LinearKind::AttnOutput => (c.heads * c.head_dim, c.hidden),
        LinearKind::Gate | LinearKind::Up => (c.hidden, c.ffn),
        LinearKind::Down => (c.ffn, c.hidden),
        LinearKind::LmHead => (c.hidden, c.vocab),
    }
}

/// Layer `id`'s f32 weights, row-major.
pub(crate) fn weights(model: &Model, id: LinearId) -> Result<Vec<f32>, ModelQuantError> {
    model
        .linear(id)
        .and_then(|l| l.weights_f32())
        .map(|w| w.into_owned())
        .ok_or_else(|| ModelQuantError::NoWeights(id.to_string()))
}

/// SmoothQuant factors `a^alpha / w^(1-alpha)`, 1 where either is zero,
/// clamped to `1/MAX_FACTOR ..= MAX_FACTOR`.
pub(crate) fn factors(act: &[f32], w: &[f32], alpha: f32) -> Vec<f32> {
    act.iter()
        .zip(w)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1.0 / MAX_FACTOR, MAX_FACTOR)
            } else {
                1.0
            }
        })
        .collect()
}

/// Per column, the largest |weight| over every matrix (`cols` wide).
fn col_max(ms: &[&Vec<f32>], cols: usize) -> Vec<f32> {
    let mut m = vec![0f32; cols];
    for w in ms {
        for row in w.chunks_exact(cols) {
            for (a, &v) in m.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    }
    m
}

/// `x_j / s_j`.
fn divide(x: &[f32], s: &[f32]) -> Vec<f32> {
    x.iter().zip(s).map(|(&v, &f)| v / f).collect()
}

/// Column `j` of `w` (`cols` wide) times `s_j`.
fn scale_cols(w: &mut [f32], cols: usize, s: &[f32]) {
    for row in w.chunks_exact_mut(cols) {
        for (v, &f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    }
}

/// Row `r` of `w` (`cols` wide) divided by `s_r`.
fn scale_rows_inv(w: &mut [f32], cols: usize, s: &[f32]) {
    for (row, &f) in w.chunks_exact_mut(cols).zip(s) {
        for v in row.iter_mut() {
            *v /= f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_balance_activation_and_weight_ranges() {
        let s = factors(&[4.0, 1.0, 0.0, 9.0], &[1.0, 1.0, 2.0, 0.0], 0.5);
        assert_eq!(s, vec![2.0, 1.0, 1.0, 1.0]);
        // After migration the activation and weight maxima meet at
        // sqrt(a * w) when alpha = 0.5.
        let (a, w) = (16.0f32, 0.25f32);
        let f = factors(&[a], &[w], 0.5)[0];
        assert!((a / f - w * f).abs() < 1e-6);
        assert_eq!(factors(&[1e20], &[1e-20], 1.0), vec![MAX_FACTOR]);
    }
}
