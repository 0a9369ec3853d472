//! The offline V/O rotation (docs/q35-format.md section 14): QuaRot's
//! rotation of the attention's value/output path, folded into `attn_v`'s
//! rows and `attn_output`'s columns, so the machine runs the rewritten
//! weights at no cost. (The on-line rotation of `ffn_down`'s input is a
//! golden-pass variant: `q35_contract::semantics::rotate_groups`, set up by
//! the pipeline.)

use q35_reference::{LinearId, LinearKind, Model, WeightMap};

use super::ModelQuantError;
use super::smooth::{dims, weights};

/// The model with the attention's value/output path rotated, entirely
/// offline (QuaRot's V/O rotation; docs/q35-format.md section 14): every
/// value head's rows are multiplied by `R = H D / sqrt(head_dim)` (`H` the
/// Walsh-Hadamard matrix, `D` fixed random signs; orthogonal, and exact in
/// f32 for a power-of-two `head_dim` whose square root is a power of two,
/// else rounded) and the matching columns of `attn_output` by `R^T`.
/// Attention mixes positions, not channels, so every head's output is
/// rotated by `R` and `attn_output` undoes it: the f32 model is unchanged,
/// while `attn_output`'s input and `attn_v`'s rows see an incoherent basis.
pub fn rotate_vo_model(model: &Model) -> Result<Model, ModelQuantError> {
    let c = model.config().clone();
    let hd = c.head_dim;
    if !hd.is_power_of_two() {
        return Err(ModelQuantError::Input(format!(
            "the V/O rotation needs a power-of-two head_dim, not {hd}"
        )));
    }
    let signs = super::pipeline::rotation_signs(hd);
    let norm = 1.0 / (hd as f64).sqrt();
    // R as a dense hd x hd matrix (f64): R = H D * norm.
    let mut r = vec![0f64; hd * hd];
    for j in 0..hd {
        let mut col = vec![0f64; hd];
        col[j] = f64::from(signs[j]) * norm;
        super::calibration::hadamard_f64(&mut col);
        for i in 0..hd {
            r[i * hd + j] = col[i];
        }
    }
    let d = c.hidden;
    let mut map = WeightMap::new("rotated model");
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
        for kind in [
            LinearKind::Q,
            LinearKind::K,
            LinearKind::V,
            LinearKind::AttnOutput,
            LinearKind::Gate,
            LinearKind::Up,
            LinearKind::Down,
        ] {
            let mut w = weights(model, id(kind))?;
            let (cols, rows) = dims(&c, kind);
            match kind {
                // v'_head = R v_head: rows of each head mixed.
                LinearKind::V => {
                    for head in w.chunks_exact_mut(hd * cols) {
                        let old: Vec<f64> = head.iter().map(|&v| f64::from(v)).collect();
                        for i in 0..hd {
                            for k in 0..cols {
                                let s: f64 =
                                    (0..hd).map(|j| r[i * hd + j] * old[j * cols + k]).sum();
                                head[i * cols + k] = s as f32;
                            }
                        }
                    }
                }
                // O'_h = O_h R^T: the columns of each query head mixed.
                LinearKind::AttnOutput => {
                    for row in w.chunks_exact_mut(cols) {
                        for head in row.chunks_exact_mut(hd) {
                            let old: Vec<f64> = head.iter().map(|&v| f64::from(v)).collect();
                            for (i, h) in head.iter_mut().enumerate() {
                                let s: f64 = (0..hd).map(|j| old[j] * r[i * hd + j]).sum();
                                *h = s as f32;
                            }
                        }
                    }
                }
                LinearKind::Q
                | LinearKind::K
                | LinearKind::Gate
                | LinearKind::Up
                | LinearKind::Down
                | LinearKind::LmHead => {}
            }
            map.insert(id(kind).gguf_name(), vec![cols as u64, rows as u64], w);
        }
        map.insert(
            format!("blk.{b}.attn_norm.weight"),
            vec![d as u64],
            blk.attn_norm.clone(),
        );
        map.insert(
            format!("blk.{b}.ffn_norm.weight"),
            vec![d as u64],
            blk.ffn_norm.clone(),
        );
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
