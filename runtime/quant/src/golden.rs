//! Builds the contract's golden integer forward pass
//! ([`q35_contract::GoldenModel`], docs/q35-format.md section 8.5) from the
//! f32 reference model (shape, norms, embedding, an unquantized LM head)
//! and its quantized layers. Its accuracy against the f32 reference is what
//! `q35c quant-report --eval` and `q35c eval --quant` measure.

use std::sync::Arc;

use q35_contract::{Architecture, GoldenBlock, GoldenHead, IntMatrix, QuantizedMatrix};
use q35_reference::{Config, LinearId, LinearKind, Model};
use rayon::prelude::*;

use crate::model::{ModelQuantError, QuantizedLayer};

pub use q35_contract::golden::{GoldenError, GoldenModel, GoldenSession};

/// The unpacked matrix of layer `id`, checked against the shape the model
/// needs.
fn matrix(
    layers: &[QuantizedLayer],
    id: LinearId,
    shape: (usize, usize),
) -> Result<IntMatrix, ModelQuantError> {
    let l = layers
        .iter()
        .find(|l| l.id == id)
        .ok_or_else(|| ModelQuantError::Input(format!("{id}: no quantized matrix given")))?;
    let m: &QuantizedMatrix = &l.matrix;
    if (m.rows(), m.cols()) != shape {
        return Err(ModelQuantError::Input(format!(
            "{id}: quantized matrix is {}x{}, the model needs {}x{}",
            m.rows(),
            m.cols(),
            shape.0,
            shape.1
        )));
    }
    Ok(m.unpack())
}

/// Block `b` of the golden model: the reference model's norms and the
/// quantized `layers` of that block, checked against the shapes it needs.
pub(crate) fn golden_block(
    model: &Model,
    layers: &[QuantizedLayer],
    b: usize,
) -> Result<GoldenBlock, ModelQuantError> {
    let c = model.config();
    let (d, qd, kvd) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let rb = model
        .blocks()
        .get(b)
        .ok_or_else(|| ModelQuantError::Input(format!("the model has no block {b}")))?;
    let id = |kind| LinearId {
        block: Some(b),
        kind,
    };
    Ok(GoldenBlock {
        attn_norm: rb.attn_norm.clone(),
        ffn_norm: rb.ffn_norm.clone(),
        q: matrix(layers, id(LinearKind::Q), (qd, d))?,
        k: matrix(layers, id(LinearKind::K), (kvd, d))?,
        v: matrix(layers, id(LinearKind::V), (kvd, d))?,
        o: matrix(layers, id(LinearKind::AttnOutput), (d, qd))?,
        gate: matrix(layers, id(LinearKind::Gate), (c.ffn, d))?,
        up: matrix(layers, id(LinearKind::Up), (c.ffn, d))?,
        down: matrix(layers, id(LinearKind::Down), (d, c.ffn))?,
    })
}

/// A golden model of one decoder block alone (`block`, in the reference
/// model's shape) for `max_positions` positions, to run that block with
/// [`GoldenModel::advance_block`] (block index 0). Its lookup and head
/// (`table`, a `vocab x hidden` table shared, not copied) are never used
/// that way.
pub(crate) fn single_block(
    model: &Model,
    block: GoldenBlock,
    max_positions: usize,
    table: Arc<[f32]>,
) -> Result<GoldenModel, ModelQuantError> {
    let c = model.config();
    let mut arch = architecture(c)?;
    arch.blocks = 1;
    Ok(GoldenModel::new(
        arch,
        max_positions,
        table.clone(),
        vec![block],
        model.output_norm().to_vec(),
        GoldenHead::F32(table),
    )?)
}

/// `m` dequantized (the values of [`IntMatrix::dequantize`]), its rows on the
/// rayon pool, written into the shared slice the golden model keeps (no
/// second copy of the table).
pub(crate) fn dequantize_shared(m: &IntMatrix) -> Arc<[f32]> {
    let (rows, cols) = (m.rows(), m.cols());
    let mut w: Arc<[f32]> = std::iter::repeat_n(0f32, rows * cols).collect();
    if cols > 0 {
        let out = Arc::get_mut(&mut w).expect("a slice just made has one owner");
        out.par_chunks_exact_mut(cols)
            .enumerate()
            .for_each(|(r, row)| {
                if let Some(v) = m.dequantize_row(r) {
                    row.copy_from_slice(&v);
                }
            });
    }
    w
}

/// The reference configuration as the contract's architecture.
fn architecture(c: &Config) -> Result<Architecture, ModelQuantError> {
    let u = |name: &str, v: usize| {
        u32::try_from(v)
            .map_err(|_| ModelQuantError::Input(format!("`{name}` = {v} does not fit in u32")))
    };
    Ok(Architecture {
        family: "llama".into(),
        blocks: u("blocks", c.blocks)?,
        hidden: u("hidden", c.hidden)?,
        heads: u("heads", c.heads)?,
        kv_heads: u("kv_heads", c.kv_heads)?,
        head_dim: u("head_dim", c.head_dim)?,
        ffn: u("ffn", c.ffn)?,
        vocab: u("vocab", c.vocab)?,
        rope_base: c.rope_base,
        norm_eps: c.norm_eps,
        tied_embeddings: c.tied_embeddings,
        context: u("context", c.context)?,
    })
}

/// Builds the golden model from a reference model (norms, embedding,
/// shape) and its quantized matrices (every block matrix; the LM head too,
/// or it stays f32), for `max_positions` positions. With a tied, quantized
/// LM head the embedding lookup reads the dequantized head, so the machine
/// stores one copy.
pub fn from_reference(
    model: &Model,
    layers: &[QuantizedLayer],
    max_positions: usize,
) -> Result<GoldenModel, ModelQuantError> {
    let c = model.config();
    let d = c.hidden;
    if max_positions == 0 || max_positions > c.context {
        return Err(ModelQuantError::Input(format!(
            "max_positions {max_positions} is not in 1..={}",
            c.context
        )));
    }
    // Blocks are unpacked on the rayon pool (collected in order) beside
    // the head, whose tied table is dequantized by rows straight into the
    // shared embedding: the same values as one thread gives.
    let block = |b: usize| golden_block(model, layers, b);
    let head_id = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    let head = || -> Result<(GoldenHead, Arc<[f32]>), ModelQuantError> {
        if layers.iter().any(|l| l.id == head_id) {
            let m = matrix(layers, head_id, (c.vocab, d))?;
            let emb = if c.tied_embeddings {
                dequantize_shared(&m)
            } else {
                model.embedding().into()
            };
            Ok((GoldenHead::Quantized(m), emb))
        } else {
            let w = model
                .linear(head_id)
                .and_then(|l| l.weights_f32())
                .ok_or_else(|| ModelQuantError::NoWeights(head_id.to_string()))?;
            Ok((
                GoldenHead::F32(w.into_owned().into()),
                model.embedding().into(),
            ))
        }
    };
    let (blocks, head) = rayon::join(
        || {
            (0..model.blocks().len())
                .into_par_iter()
                .map(block)
                .collect::<Result<Vec<_>, _>>()
        },
        head,
    );
    let (blocks, (head, embedding)) = (blocks?, head?);
    Ok(GoldenModel::new(
        architecture(c)?,
        max_positions,
        embedding,
        blocks,
        model.output_norm().to_vec(),
        head,
    )?)
}
