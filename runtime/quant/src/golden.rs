//! The quantized golden forward pass: a LLaMA-family decoder that runs every
//! operator exactly as docs/q35-format.md section 8 defines it, by calling
//! [`crate::semantics`] -- int8 activations and integer matmuls for every
//! weight matrix, f32 vector operators in a fixed order, the compiler's
//! RoPE table. It is the model the simulator is held to bit for bit; its
//! accuracy against the f32 reference is what `q35c quant-report --eval`
//! measures through the same integer matmuls.
//!
//! One token at a time (decode order), so every position runs the same
//! sequence of operations. Parallelism splits only independent outputs
//! (matmul rows, attention heads), so results do not depend on the thread
//! count.

use std::sync::Arc;

use q35_reference::{Config, LinearId, LinearKind, Model};
use rayon::prelude::*;

use crate::model::{ModelQuantError, QuantizedLayer};
use crate::semantics::{
    self, ActivationI8, RopeTable, add_in_place, attention_head, rmsnorm, rope_in_place, swiglu,
};
use crate::{IntMatrix, QuantError};

/// The LM head: quantized, or kept f32 (sequential dot products).
#[derive(Debug, Clone)]
enum Head {
    Quantized(IntMatrix),
    F32 {
        rows: usize,
        cols: usize,
        w: Arc<[f32]>,
    },
}

/// One block's quantized matrices and norms.
#[derive(Debug, Clone)]
struct GoldenBlock {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    q: IntMatrix,
    k: IntMatrix,
    v: IntMatrix,
    o: IntMatrix,
    gate: IntMatrix,
    up: IntMatrix,
    down: IntMatrix,
}

/// The golden quantized model.
#[derive(Debug, Clone)]
pub struct GoldenModel {
    /// The reference model's shape and constants.
    config: Config,
    /// Positions the RoPE table and KV cache hold.
    max_positions: usize,
    /// Token embedding rows (f32; the dequantized LM head when it is tied
    /// and quantized).
    embedding: Arc<[f32]>,
    blocks: Vec<GoldenBlock>,
    output_norm: Vec<f32>,
    head: Head,
    rope: RopeTable,
}

/// The KV cache of one sequence.
#[derive(Debug, Clone)]
pub struct GoldenSession {
    /// Per block: `len x kv_dim` keys and values.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl GoldenSession {
    /// Tokens processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token was processed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn matrix(
    layers: &[QuantizedLayer],
    id: LinearId,
    shape: (usize, usize),
) -> Result<IntMatrix, ModelQuantError> {
    let l = layers
        .iter()
        .find(|l| l.id == id)
        .ok_or_else(|| ModelQuantError::Input(format!("{id}: no quantized matrix given")))?;
    if (l.matrix.rows(), l.matrix.cols()) != shape {
        return Err(ModelQuantError::Input(format!(
            "{id}: quantized matrix is {}x{}, the model needs {}x{}",
            l.matrix.rows(),
            l.matrix.cols(),
            shape.0,
            shape.1
        )));
    }
    Ok(l.matrix.unpack())
}

impl GoldenModel {
    /// Builds the golden model from a reference model (norms, embedding,
    /// shape) and its quantized matrices (every block matrix; the LM head
    /// too, or it stays f32). With a tied, quantized LM head the embedding
    /// lookup reads the dequantized head, so the machine stores one copy.
    pub fn new(
        model: &Model,
        layers: &[QuantizedLayer],
        max_positions: usize,
    ) -> Result<GoldenModel, ModelQuantError> {
        let c = model.config();
        let (d, qd, kvd) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        if max_positions == 0 || max_positions > c.context {
            return Err(ModelQuantError::Input(format!(
                "max_positions {max_positions} is not in 1..={}",
                c.context
            )));
        }
        let mut blocks = Vec::with_capacity(c.blocks);
        for (b, rb) in model.blocks().iter().enumerate() {
            let id = |kind| LinearId {
                block: Some(b),
                kind,
            };
            blocks.push(GoldenBlock {
                attn_norm: rb.attn_norm.clone(),
                ffn_norm: rb.ffn_norm.clone(),
                q: matrix(layers, id(LinearKind::Q), (qd, d))?,
                k: matrix(layers, id(LinearKind::K), (kvd, d))?,
                v: matrix(layers, id(LinearKind::V), (kvd, d))?,
                o: matrix(layers, id(LinearKind::AttnOutput), (d, qd))?,
                gate: matrix(layers, id(LinearKind::Gate), (c.ffn, d))?,
                up: matrix(layers, id(LinearKind::Up), (c.ffn, d))?,
                down: matrix(layers, id(LinearKind::Down), (d, c.ffn))?,
            });
        }
        let head_id = LinearId {
            block: None,
            kind: LinearKind::LmHead,
        };
        let (head, embedding): (Head, Arc<[f32]>) = if layers.iter().any(|l| l.id == head_id) {
            let m = matrix(layers, head_id, (c.vocab, d))?;
            let emb: Arc<[f32]> = if c.tied_embeddings {
                m.dequantize().into()
            } else {
                model.embedding().into()
            };
            (Head::Quantized(m), emb)
        } else {
            let w = model
                .linear(head_id)
                .and_then(|l| l.weights_f32())
                .ok_or_else(|| ModelQuantError::NoWeights(head_id.to_string()))?;
            (
                Head::F32 {
                    rows: c.vocab,
                    cols: d,
                    w: w.into_owned().into(),
                },
                model.embedding().into(),
            )
        };
        Ok(GoldenModel {
            config: c.clone(),
            max_positions,
            embedding,
            blocks,
            output_norm: model.output_norm().to_vec(),
            head,
            rope: RopeTable::new(c.head_dim, c.rope_base, max_positions),
        })
    }

    /// The shape and constants (the reference model's).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Positions the RoPE table and KV cache hold.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Embedding row of `token` (what the lookup returns).
    pub fn embedding_row(&self, token: usize) -> &[f32] {
        let d = self.config.hidden;
        &self.embedding[token * d..(token + 1) * d]
    }

    /// The RoPE table the program ships.
    pub fn rope_table(&self) -> &RopeTable {
        &self.rope
    }

    /// An empty KV cache.
    pub fn new_session(&self) -> GoldenSession {
        GoldenSession {
            keys: vec![Vec::new(); self.blocks.len()],
            values: vec![Vec::new(); self.blocks.len()],
            len: 0,
        }
    }

    /// Runs one token at the session's next position and returns its
    /// logits.
    pub fn step(
        &self,
        session: &mut GoldenSession,
        token: u32,
    ) -> Result<Vec<f32>, ModelQuantError> {
        let x = self.advance(session, token)?;
        self.logits(&x)
    }

    /// Runs one token through the blocks (filling the KV cache) and returns
    /// the final residual, without the LM head.
    pub fn advance(
        &self,
        session: &mut GoldenSession,
        token: u32,
    ) -> Result<Vec<f32>, ModelQuantError> {
        let c = &self.config;
        let pos = session.len;
        if token as usize >= c.vocab {
            return Err(ModelQuantError::Input(format!(
                "token {token} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        if pos >= self.max_positions {
            return Err(ModelQuantError::Input(format!(
                "position {pos} is past the {} positions the model was built for",
                self.max_positions
            )));
        }
        let (d, hd) = (c.hidden, c.head_dim);
        let t = token as usize;
        let mut x = self.embedding[t * d..(t + 1) * d].to_vec();
        let mut h = vec![0f32; d];
        let scale = 1.0f32 / (hd as f32).sqrt();
        let group = c.heads / c.kv_heads;
        for (bi, b) in self.blocks.iter().enumerate() {
            rmsnorm(&x, &b.attn_norm, c.norm_eps, &mut h);
            let a = quantize_act(&h)?;
            let mut q = matvec(&b.q, &a)?;
            let mut k = matvec(&b.k, &a)?;
            let v = matvec(&b.v, &a)?;
            for head in q.chunks_exact_mut(hd) {
                rope_in_place(head, pos, &self.rope);
            }
            for head in k.chunks_exact_mut(hd) {
                rope_in_place(head, pos, &self.rope);
            }
            session.keys[bi].extend_from_slice(&k);
            session.values[bi].extend_from_slice(&v);
            let (kc, vc) = (&session.keys[bi], &session.values[bi]);
            let kvd = c.kv_heads * hd;
            let n = pos + 1;
            let mut att = vec![0f32; c.heads * hd];
            att.par_chunks_mut(hd).enumerate().for_each(|(head, out)| {
                let kvh = head / group;
                // Gather this kv head's rows (n x hd) for the contract's
                // attention (same values, contiguous).
                let keys: Vec<f32> = (0..n)
                    .flat_map(|j| {
                        kc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd]
                            .iter()
                            .copied()
                    })
                    .collect();
                let vals: Vec<f32> = (0..n)
                    .flat_map(|j| {
                        vc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd]
                            .iter()
                            .copied()
                    })
                    .collect();
                let mut scores = Vec::with_capacity(n);
                attention_head(
                    &q[head * hd..(head + 1) * hd],
                    &keys,
                    &vals,
                    scale,
                    &mut scores,
                    out,
                );
            });
            let o = matvec(&b.o, &quantize_act(&att)?)?;
            add_in_place(&mut x, &o);
            rmsnorm(&x, &b.ffn_norm, c.norm_eps, &mut h);
            let a = quantize_act(&h)?;
            let g = matvec(&b.gate, &a)?;
            let u = matvec(&b.up, &a)?;
            let mut act = vec![0f32; c.ffn];
            swiglu(&g, &u, &mut act);
            let down = matvec(&b.down, &quantize_act(&act)?)?;
            add_in_place(&mut x, &down);
        }
        session.len += 1;
        Ok(x)
    }

    /// Final RMSNorm and LM head of a residual from [`Self::advance`].
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>, ModelQuantError> {
        let mut h = vec![0f32; self.config.hidden];
        rmsnorm(x, &self.output_norm, self.config.norm_eps, &mut h);
        match &self.head {
            Head::Quantized(m) => matvec(m, &quantize_act(&h)?),
            Head::F32 { rows, cols, w } => {
                let mut out = vec![0f32; *rows];
                out.par_chunks_mut(256).enumerate().for_each(|(ci, o)| {
                    for (i, y) in o.iter_mut().enumerate() {
                        let r = ci * 256 + i;
                        *y = semantics::dot_f32(&w[r * cols..(r + 1) * cols], &h);
                    }
                });
                Ok(out)
            }
        }
    }

    /// Runs `tokens` from the session's position; returns every position's
    /// logits (`tokens.len() x vocab`).
    pub fn run(
        &self,
        session: &mut GoldenSession,
        tokens: &[u32],
    ) -> Result<Vec<f32>, ModelQuantError> {
        self.run_from(session, tokens, 0)
    }

    /// Runs `tokens`; returns the logits of tokens `first..` only.
    pub fn run_from(
        &self,
        session: &mut GoldenSession,
        tokens: &[u32],
        first: usize,
    ) -> Result<Vec<f32>, ModelQuantError> {
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(first) * self.config.vocab);
        for (i, &t) in tokens.iter().enumerate() {
            let x = self.advance(session, t)?;
            if i >= first {
                out.extend(self.logits(&x)?);
            }
        }
        Ok(out)
    }
}

fn quantize_act(x: &[f32]) -> Result<ActivationI8, ModelQuantError> {
    ActivationI8::quantize(x).map_err(|source| ModelQuantError::Layer {
        layer: "activation".into(),
        source,
    })
}

/// `W a` with output rows split across the rayon pool.
fn matvec(m: &IntMatrix, a: &ActivationI8) -> Result<Vec<f32>, ModelQuantError> {
    const ROWS: usize = 64;
    let mut y = vec![0f32; m.rows()];
    y.par_chunks_mut(ROWS)
        .enumerate()
        .try_for_each(|(ci, o)| m.matvec_rows(a, ci * ROWS, o))
        .map_err(|source: QuantError| ModelQuantError::Layer {
            layer: "matvec".into(),
            source,
        })?;
    Ok(y)
}
