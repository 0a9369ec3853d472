//! The golden integer forward pass (docs/q35-format.md section 8.5): a
//! LLaMA-family decoder that runs every operator exactly as section 8
//! defines it, by calling [`crate::semantics`] -- int8 activations and
//! integer matmuls for every weight matrix, f32 vector operators in a fixed
//! order, the compiler's RoPE table ([`crate::rope::RopeTable`]). It is the
//! model the simulator is held to bit for bit.
//!
//! It is built from plain data ([`GoldenModel::new`]: the [`Architecture`],
//! f32 embedding rows, per-block norms and unpacked [`IntMatrix`]es, the
//! output norm and the LM head), so the quantizer (`q35_quant::golden`
//! builds one from the reference model) and a simulator reading a compiled
//! program can both construct it. A [`GoldenSession`] exposes its KV cache
//! and position, so a simulator's `--check` mode can compare state.
//!
//! One token at a time (decode order), so every position runs the same
//! sequence of operations. Parallelism splits only independent outputs
//! (matmul rows, attention heads), so results do not depend on the thread
//! count.

use std::sync::Arc;

use rayon::prelude::*;

use crate::ContractError;
use crate::arch::Architecture;
use crate::format::IntMatrix;
use crate::rope::RopeTable;
use crate::semantics::{
    self, ActivationI8, GroupedActivationI8, add_in_place, rmsnorm, rope_in_place, swiglu,
};

/// What can go wrong building or running the golden model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GoldenError {
    /// The plain data does not make a model of the architecture (a shape,
    /// a length or a hyperparameter is wrong); the message names the part.
    #[error("{0}")]
    Invalid(String),
    /// A token id outside the vocabulary.
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token {
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The session is full: every position the model was built for is used.
    #[error("position {pos} is past the {max} positions the model was built for")]
    Position {
        /// The position the next token would take.
        pos: usize,
        /// Positions the RoPE table and KV cache hold.
        max: usize,
    },
    /// An operator of the contract refused its input (a non-finite
    /// activation, a length mismatch).
    #[error("{op}: {source}")]
    Op {
        /// The operator (`activation`, `matvec`).
        op: &'static str,
        /// What went wrong.
        source: ContractError,
    },
}

/// The LM head: quantized, or kept f32 (dot products summed across lanes).
#[derive(Debug, Clone)]
pub enum GoldenHead {
    /// A quantized `vocab x hidden` matrix, applied to the int8 final-norm
    /// output.
    Quantized(IntMatrix),
    /// f32 weights, row-major `vocab x hidden`, applied with
    /// [`semantics::dot_lanes`] (products summed by the machine's lane
    /// reduction, [`semantics::lane_sum`]) to the f32 final-norm output.
    F32(Arc<[f32]>),
}

/// One decoder block's norms and quantized matrices (integer weights, f32
/// group scales; `rows x cols` as applied, `y = W x`).
#[derive(Debug, Clone)]
pub struct GoldenBlock {
    /// Attention RMSNorm weight (`hidden`).
    pub attn_norm: Vec<f32>,
    /// FFN RMSNorm weight (`hidden`).
    pub ffn_norm: Vec<f32>,
    /// `q_dim x hidden`.
    pub q: IntMatrix,
    /// `kv_dim x hidden`.
    pub k: IntMatrix,
    /// `kv_dim x hidden`.
    pub v: IntMatrix,
    /// `hidden x q_dim`.
    pub o: IntMatrix,
    /// `ffn x hidden`.
    pub gate: IntMatrix,
    /// `ffn x hidden`.
    pub up: IntMatrix,
    /// `hidden x ffn`.
    pub down: IntMatrix,
}

/// How the golden pass quantizes the activations entering every integer
/// matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationScales {
    /// One scale per token (docs/q35-format.md 8.1): the contract.
    #[default]
    PerToken,
    /// One scale per quantization group of the reduction dimension
    /// ([`GroupedActivationI8`], combined by
    /// [`semantics::combine_groups_act`]): the variant measured in
    /// docs/q35-format.md section 14, not (yet) the contract.
    PerGroup,
}

/// The golden quantized model.
#[derive(Debug, Clone)]
pub struct GoldenModel {
    arch: Architecture,
    /// Positions the RoPE table and KV cache hold.
    max_positions: usize,
    /// Token embedding rows, `vocab x hidden` f32 (the dequantized LM head
    /// when it is tied and quantized).
    embedding: Arc<[f32]>,
    blocks: Vec<GoldenBlock>,
    output_norm: Vec<f32>,
    head: GoldenHead,
    rope: RopeTable,
    /// How activations are quantized ([`ActivationScales::PerToken`] unless
    /// [`GoldenModel::with_activation_scales`] chose the variant).
    act_scales: ActivationScales,
    /// The rotation of `ffn_down`'s input (signs and group), when
    /// [`GoldenModel::with_down_rotation`] chose the variant.
    down_rotation: Option<(Arc<[f32]>, usize)>,
    /// The dense `hidden x hidden` mixing matrix applied to the final-norm
    /// output before the LM head, when [`GoldenModel::with_head_mix`] chose
    /// the stream-rotation variant.
    head_mix: Option<Arc<[f32]>>,
    /// The dense `hidden x hidden` matrix every embedding row is mixed by
    /// after the lookup, when [`GoldenModel::with_embedding_mix`] chose the
    /// head-rotation variant.
    embedding_mix: Option<Arc<[f32]>>,
}

/// One activation vector quantized for the integer matmuls.
enum QAct {
    Token(ActivationI8),
    Group(GroupedActivationI8),
}

/// The KV cache of one sequence and its position.
#[derive(Debug, Clone, PartialEq)]
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

    /// The position the next token takes (= tokens processed).
    pub fn position(&self) -> usize {
        self.len
    }

    /// Number of blocks whose cache the session holds.
    pub fn blocks(&self) -> usize {
        self.keys.len()
    }

    /// Block `block`'s cached keys, after RoPE: `position() x kv_dim`
    /// values, position-major, then kv head, then the head's `head_dim`
    /// values; `None` past the last block.
    pub fn keys(&self, block: usize) -> Option<&[f32]> {
        self.keys.get(block).map(Vec::as_slice)
    }

    /// Block `block`'s cached values, laid out as [`Self::keys`].
    pub fn values(&self, block: usize) -> Option<&[f32]> {
        self.values.get(block).map(Vec::as_slice)
    }
}

/// Checks a matrix's shape.
fn check_matrix(m: &IntMatrix, what: &str, rows: u32, cols: u32) -> Result<(), GoldenError> {
    if (m.rows(), m.cols()) != (rows as usize, cols as usize) {
        return Err(GoldenError::Invalid(format!(
            "{what}: matrix is {}x{}, the architecture needs {rows}x{cols}",
            m.rows(),
            m.cols()
        )));
    }
    Ok(())
}

/// Checks a mixing matrix: `d x d` finite values.
fn check_mix(mix: &[f32], d: usize, what: &str) -> Result<(), GoldenError> {
    if mix.len() != d * d {
        return Err(GoldenError::Invalid(format!(
            "{what}: {} values, a {d} x {d} matrix needs {}",
            mix.len(),
            d * d
        )));
    }
    if let Some(i) = mix.iter().position(|v| !v.is_finite()) {
        return Err(GoldenError::Invalid(format!(
            "{what}: entry ({}, {}) is {}, not finite",
            i / d,
            i % d,
            mix[i]
        )));
    }
    Ok(())
}

/// Checks a vector's length.
fn check_vec(len: usize, what: &str, expected: usize) -> Result<(), GoldenError> {
    if len != expected {
        return Err(GoldenError::Invalid(format!(
            "{what} has {len} values, the architecture needs {expected}"
        )));
    }
    Ok(())
}

/// Checks the hyperparameters the forward pass relies on.
fn check_arch(a: &Architecture) -> Result<(), GoldenError> {
    let bad = |m: String| Err(GoldenError::Invalid(m));
    for (name, v) in [
        ("blocks", a.blocks),
        ("hidden", a.hidden),
        ("heads", a.heads),
        ("kv_heads", a.kv_heads),
        ("head_dim", a.head_dim),
        ("ffn", a.ffn),
        ("vocab", a.vocab),
        ("context", a.context),
    ] {
        if v == 0 {
            return bad(format!("architecture `{name}` must be positive"));
        }
    }
    if !a.heads.is_multiple_of(a.kv_heads) {
        return bad(format!(
            "architecture `heads` ({}) must be a multiple of `kv_heads` ({})",
            a.heads, a.kv_heads
        ));
    }
    if !a.head_dim.is_multiple_of(2) {
        return bad(format!(
            "architecture `head_dim` ({}) must be even for RoPE",
            a.head_dim
        ));
    }
    for (name, v) in [("rope_base", a.rope_base), ("norm_eps", a.norm_eps)] {
        if !(v.is_finite() && v > 0.0) {
            return bad(format!("architecture `{name}` ({v}) must be positive"));
        }
    }
    Ok(())
}

impl GoldenModel {
    /// Builds the golden model from plain data, checking every shape
    /// against `arch`: `embedding` is `vocab x hidden` f32 (with a tied,
    /// quantized LM head, that head dequantized, so the machine stores one
    /// copy), `blocks` has one entry per decoder block, `output_norm` is
    /// `hidden` long, and the RoPE table and KV cache hold `max_positions`
    /// positions (`1 ..= arch.context`).
    pub fn new(
        arch: Architecture,
        max_positions: usize,
        embedding: Arc<[f32]>,
        blocks: Vec<GoldenBlock>,
        output_norm: Vec<f32>,
        head: GoldenHead,
    ) -> Result<GoldenModel, GoldenError> {
        check_arch(&arch)?;
        let a = &arch;
        if max_positions == 0 || max_positions > a.context as usize {
            return Err(GoldenError::Invalid(format!(
                "max_positions {max_positions} is not in 1..={}",
                a.context
            )));
        }
        let (d, vocab) = (a.hidden as usize, a.vocab as usize);
        check_vec(embedding.len(), "embedding", vocab * d)?;
        check_vec(blocks.len(), "block list", a.blocks as usize)?;
        for (i, b) in blocks.iter().enumerate() {
            check_vec(b.attn_norm.len(), &format!("blk.{i}.attn_norm"), d)?;
            check_vec(b.ffn_norm.len(), &format!("blk.{i}.ffn_norm"), d)?;
            let m = |what: &str| format!("blk.{i}.{what}");
            check_matrix(&b.q, &m("attn_q"), a.q_dim(), a.hidden)?;
            check_matrix(&b.k, &m("attn_k"), a.kv_dim(), a.hidden)?;
            check_matrix(&b.v, &m("attn_v"), a.kv_dim(), a.hidden)?;
            check_matrix(&b.o, &m("attn_output"), a.hidden, a.q_dim())?;
            check_matrix(&b.gate, &m("ffn_gate"), a.ffn, a.hidden)?;
            check_matrix(&b.up, &m("ffn_up"), a.ffn, a.hidden)?;
            check_matrix(&b.down, &m("ffn_down"), a.hidden, a.ffn)?;
        }
        check_vec(output_norm.len(), "output_norm", d)?;
        match &head {
            GoldenHead::Quantized(m) => check_matrix(m, "LM head", a.vocab, a.hidden)?,
            GoldenHead::F32(w) => check_vec(w.len(), "LM head", vocab * d)?,
        }
        let rope = RopeTable::new(a.head_dim as usize, a.rope_base, max_positions);
        Ok(GoldenModel {
            arch,
            max_positions,
            embedding,
            blocks,
            output_norm,
            head,
            rope,
            act_scales: ActivationScales::PerToken,
            down_rotation: None,
            head_mix: None,
            embedding_mix: None,
        })
    }

    /// The same model with the final-norm output mixed by the dense
    /// `hidden x hidden` matrix `mix` (row-major, finite) before the LM head,
    /// `v = mix_along_lanes(mix, rmsnorm(x, output_norm))`
    /// ([`semantics::mix_along_lanes`]): the stream-rotation variant of
    /// docs/q35-format.md section 14, for a model whose residual stream is
    /// rotated by an orthogonal `R` (embedding rows, and so the tied head,
    /// stored as `R e`), where `mix = R diag(gamma_out) R^T` restores the
    /// head's view of the unrotated stream.
    pub fn with_head_mix(mut self, mix: Arc<[f32]>) -> Result<GoldenModel, GoldenError> {
        check_mix(&mix, self.arch.hidden as usize, "head mix")?;
        self.head_mix = Some(mix);
        Ok(self)
    }

    /// The head's mixing matrix, when the stream-rotation variant is on.
    pub fn head_mix(&self) -> Option<&[f32]> {
        self.head_mix.as_deref()
    }

    /// The same model with every embedding row mixed by the dense
    /// `hidden x hidden` matrix `mix` (row-major, finite) right after the
    /// lookup, `x = mix_along_lanes(mix, embedding_row(token))`
    /// ([`semantics::mix_along_lanes`]): the head-rotation variant of
    /// docs/q35-format.md section 14, for a tied table stored rotated
    /// (rows `R e`, `mix = R^T`) while the blocks keep the unrotated
    /// stream; the head then needs [`GoldenModel::with_head_mix`] with
    /// `R diag(gamma_out)`.
    pub fn with_embedding_mix(mut self, mix: Arc<[f32]>) -> Result<GoldenModel, GoldenError> {
        check_mix(&mix, self.arch.hidden as usize, "embedding mix")?;
        self.embedding_mix = Some(mix);
        Ok(self)
    }

    /// The embedding's mixing matrix, when the head-rotation variant is on.
    pub fn embedding_mix(&self) -> Option<&[f32]> {
        self.embedding_mix.as_deref()
    }

    /// The same model with `ffn_down`'s input rotated before it is
    /// quantized ([`semantics::rotate_groups`] with `signs` (`+-1`, `ffn`
    /// of them) in groups of `group`, a power of two dividing `ffn`): the
    /// rotation variant of docs/q35-format.md section 14, for `ffn_down`
    /// matrices quantized from the weights rotated to match.
    pub fn with_down_rotation(
        mut self,
        signs: Arc<[f32]>,
        group: usize,
    ) -> Result<GoldenModel, GoldenError> {
        let ffn = self.arch.ffn as usize;
        if signs.len() != ffn || !group.is_power_of_two() || !ffn.is_multiple_of(group) {
            return Err(GoldenError::Invalid(format!(
                "down rotation: {} signs in groups of {group} for ffn {ffn} (needs ffn signs, a power-of-two group dividing ffn)",
                signs.len()
            )));
        }
        if let Some(i) = signs.iter().position(|&s| s != 1.0 && s != -1.0) {
            return Err(GoldenError::Invalid(format!(
                "down rotation: sign {i} is {}, not +-1",
                signs[i]
            )));
        }
        self.down_rotation = Some((signs, group));
        Ok(self)
    }

    /// The same model with activations quantized as `scales` says. With
    /// [`ActivationScales::PerGroup`] each matrix's input is quantized in
    /// that matrix's groups (matrices reading one input with different group
    /// sizes get one quantization each).
    pub fn with_activation_scales(
        mut self,
        scales: ActivationScales,
    ) -> Result<GoldenModel, GoldenError> {
        self.act_scales = scales;
        Ok(self)
    }

    /// How activations are quantized.
    pub fn activation_scales(&self) -> ActivationScales {
        self.act_scales
    }

    /// `x` quantized for the matmuls with `m`'s group size.
    fn quantize_for(&self, x: &[f32], m: &IntMatrix) -> Result<QAct, GoldenError> {
        match self.act_scales {
            ActivationScales::PerToken => Ok(QAct::Token(quantize_act(x)?)),
            ActivationScales::PerGroup => GroupedActivationI8::quantize(x, m.group_size())
                .map(QAct::Group)
                .map_err(|source| GoldenError::Op {
                    op: "activation",
                    source,
                }),
        }
    }

    /// The architecture (shape and constants).
    pub fn arch(&self) -> &Architecture {
        &self.arch
    }

    /// Vocabulary size (logits per position).
    pub fn vocab(&self) -> usize {
        self.arch.vocab as usize
    }

    /// Positions the RoPE table and KV cache hold.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The token embedding rows, `vocab x hidden` f32 (the dequantized LM
    /// head when it is tied and quantized).
    pub fn embedding(&self) -> &[f32] {
        &self.embedding
    }

    /// The decoder blocks' norms and matrices, in order.
    pub fn blocks(&self) -> &[GoldenBlock] {
        &self.blocks
    }

    /// The final RMSNorm weight (`hidden`).
    pub fn output_norm(&self) -> &[f32] {
        &self.output_norm
    }

    /// The LM head.
    pub fn head(&self) -> &GoldenHead {
        &self.head
    }

    /// Embedding row of `token` (what the lookup returns, before the
    /// head-rotation variant's [`GoldenModel::with_embedding_mix`]); `None`
    /// outside the vocabulary.
    pub fn embedding_row(&self, token: usize) -> Option<&[f32]> {
        let d = self.arch.hidden as usize;
        self.embedding.get(token * d..(token + 1) * d)
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
    pub fn step(&self, session: &mut GoldenSession, token: u32) -> Result<Vec<f32>, GoldenError> {
        let x = self.advance(session, token)?;
        self.logits(&x)
    }

    /// Runs one token through the blocks (filling the KV cache) and returns
    /// the final residual, without the LM head.
    pub fn advance(
        &self,
        session: &mut GoldenSession,
        token: u32,
    ) -> Result<Vec<f32>, GoldenError> {
        let a = &self.arch;
        let pos = session.len;
        if token >= a.vocab {
            return Err(GoldenError::Token {
                token,
                vocab: a.vocab as usize,
            });
        }
        if pos >= self.max_positions {
            return Err(GoldenError::Position {
                pos,
                max: self.max_positions,
            });
        }
        if session.keys.len() != self.blocks.len() || session.values.len() != self.blocks.len() {
            return Err(GoldenError::Invalid(format!(
                "session holds {} blocks, the model has {}",
                session.keys.len(),
                self.blocks.len()
            )));
        }
        let (d, t) = (a.hidden as usize, token as usize);
        let mut x = self.embedding[t * d..(t + 1) * d].to_vec();
        if let Some(mix) = &self.embedding_mix {
            semantics::mix_along_lanes(mix, &self.embedding[t * d..(t + 1) * d], &mut x);
        }
        for bi in 0..self.blocks.len() {
            self.block_rows(session, bi, pos, &mut x)?;
        }
        session.len += 1;
        Ok(x)
    }

    /// Runs block `block` alone for one token: `x` is the residual stream
    /// entering it (`hidden` values), updated in place to the stream leaving
    /// it, at the position the block's KV cache in `session` reaches (its
    /// keys and values are appended there). Running every block in order
    /// with this, token after token, is [`Self::advance`] without the
    /// lookup; running one block over every token of a sequence, then the
    /// next, gives the same bits (each block reads only its own cache), which
    /// is how block-by-block (sequential) calibration runs the quantized
    /// blocks. The session's length does not change.
    pub fn advance_block(
        &self,
        session: &mut GoldenSession,
        block: usize,
        x: &mut [f32],
    ) -> Result<(), GoldenError> {
        let a = &self.arch;
        let (d, kvd) = (a.hidden as usize, a.kv_dim() as usize);
        if block >= self.blocks.len() || session.keys.len() != self.blocks.len() {
            return Err(GoldenError::Invalid(format!(
                "block {block} of a session holding {} blocks, the model has {}",
                session.keys.len(),
                self.blocks.len()
            )));
        }
        if x.len() != d {
            return Err(GoldenError::Op {
                op: "block",
                source: ContractError::LengthMismatch {
                    what: "residual",
                    got: x.len(),
                    expected: d,
                },
            });
        }
        let pos = session.keys[block].len() / kvd;
        if pos >= self.max_positions {
            return Err(GoldenError::Position {
                pos,
                max: self.max_positions,
            });
        }
        self.block_rows(session, block, pos, x)
    }

    /// [`Self::advance_block`] of every token of `xs` (rows of `hidden`
    /// values, in order), each row updated in place: the same bits as one
    /// call a token, with each matrix's rows read once for all the tokens
    /// instead of once a token (the block's matrices are streamed from
    /// memory once, not `n` times). A token's products depend only on its
    /// own row, and its attention on the cached keys and values up to its
    /// own position, so the matrices go token-batched and only attention
    /// goes position by position.
    pub fn advance_block_tokens(
        &self,
        session: &mut GoldenSession,
        block: usize,
        xs: &mut [f32],
    ) -> Result<(), GoldenError> {
        let a = &self.arch;
        let (d, kvd) = (a.hidden as usize, a.kv_dim() as usize);
        if block >= self.blocks.len() || session.keys.len() != self.blocks.len() {
            return Err(GoldenError::Invalid(format!(
                "block {block} of a session holding {} blocks, the model has {}",
                session.keys.len(),
                self.blocks.len()
            )));
        }
        if xs.is_empty() || !xs.len().is_multiple_of(d) {
            return Err(GoldenError::Op {
                op: "block",
                source: ContractError::LengthMismatch {
                    what: "residual rows",
                    got: xs.len(),
                    expected: d,
                },
            });
        }
        let n = xs.len() / d;
        let pos0 = session.keys[block].len() / kvd;
        if pos0 + n > self.max_positions {
            return Err(GoldenError::Position {
                pos: pos0 + n - 1,
                max: self.max_positions,
            });
        }
        self.block_rows(session, block, pos0, xs)
    }

    /// Block `bi` of the forward pass (docs/q35-format.md 8.5) for the
    /// tokens of `xs` (rows of `hidden` values) at positions `pos0..`, each
    /// residual updated in place: the matrices token-batched, attention
    /// position by position. One row is [`Self::advance`]'s step.
    fn block_rows(
        &self,
        session: &mut GoldenSession,
        bi: usize,
        pos0: usize,
        xs: &mut [f32],
    ) -> Result<(), GoldenError> {
        let a = &self.arch;
        let (d, hd, kvd) = (a.hidden as usize, a.head_dim as usize, a.kv_dim() as usize);
        let n = xs.len() / d;
        let b = &self.blocks[bi];
        let (heads, kv_heads, ffn) = (a.heads as usize, a.kv_heads as usize, a.ffn as usize);
        let scale = 1.0f32 / (hd as f32).sqrt();
        let group = heads / kv_heads;
        let norm = |xs: &[f32], w: &[f32]| -> Vec<f32> {
            let mut h = vec![0f32; xs.len()];
            for (h, x) in h.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                rmsnorm(x, w, a.norm_eps, h);
            }
            h
        };
        let h = norm(xs, &b.attn_norm);
        let acts = self.quantize_rows(&h, d, &b.q)?;
        let mut q = matmul_tokens(&b.q, &acts)?;
        let mut k = self.matmul_tokens_shared(&b.k, &h, d, &acts, &b.q)?;
        let v = self.matmul_tokens_shared(&b.v, &h, d, &acts, &b.q)?;
        for (t, (qt, kt)) in q
            .chunks_exact_mut(heads * hd)
            .zip(k.chunks_exact_mut(kvd))
            .enumerate()
        {
            for head in qt.chunks_exact_mut(hd) {
                rope_in_place(head, pos0 + t, &self.rope);
            }
            for head in kt.chunks_exact_mut(hd) {
                rope_in_place(head, pos0 + t, &self.rope);
            }
        }
        session.keys[bi].extend_from_slice(&k);
        session.values[bi].extend_from_slice(&v);
        let (kc, vc) = (&session.keys[bi], &session.values[bi]);
        // Token t attends to positions 0..=pos0 + t, all cached now.
        let mut att = vec![0f32; n * heads * hd];
        att.par_chunks_mut(hd).enumerate().for_each(|(i, out)| {
            let (t, head) = (i / heads, i % heads);
            let kvh = head / group;
            let row = |j: usize| j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd;
            let mut scores = Vec::with_capacity(pos0 + t + 1);
            let qh = &q[(t * heads + head) * hd..(t * heads + head + 1) * hd];
            semantics::attention_head_rows(
                qh,
                pos0 + t + 1,
                |j| &kc[row(j)],
                |j| &vc[row(j)],
                scale,
                &mut scores,
                out,
            );
        });
        let o = matmul_tokens(&b.o, &self.quantize_rows(&att, heads * hd, &b.o)?)?;
        for (x, o) in xs.chunks_exact_mut(d).zip(o.chunks_exact(d)) {
            add_in_place(x, o);
        }
        let h = norm(xs, &b.ffn_norm);
        let acts = self.quantize_rows(&h, d, &b.gate)?;
        let g = matmul_tokens(&b.gate, &acts)?;
        let u = self.matmul_tokens_shared(&b.up, &h, d, &acts, &b.gate)?;
        let mut s = vec![0f32; n * ffn];
        for ((s, g), u) in s
            .chunks_exact_mut(ffn)
            .zip(g.chunks_exact(ffn))
            .zip(u.chunks_exact(ffn))
        {
            swiglu(g, u, s);
            if let Some((signs, group)) = &self.down_rotation {
                semantics::rotate_groups(s, signs, *group);
            }
        }
        let down = matmul_tokens(&b.down, &self.quantize_rows(&s, ffn, &b.down)?)?;
        for (x, o) in xs.chunks_exact_mut(d).zip(down.chunks_exact(d)) {
            add_in_place(x, o);
        }
        Ok(())
    }

    /// Each row of `xs` (`cols` wide) quantized for the matmuls with `m`.
    fn quantize_rows(
        &self,
        xs: &[f32],
        cols: usize,
        m: &IntMatrix,
    ) -> Result<Vec<QAct>, GoldenError> {
        xs.chunks_exact(cols)
            .map(|x| self.quantize_for(x, m))
            .collect()
    }

    /// [`Self::matvec_shared`] of every row: `acts` (made for `first`)
    /// reused unless per-group scales need `m`'s own grouping.
    fn matmul_tokens_shared(
        &self,
        m: &IntMatrix,
        xs: &[f32],
        cols: usize,
        acts: &[QAct],
        first: &IntMatrix,
    ) -> Result<Vec<f32>, GoldenError> {
        match acts.first() {
            Some(QAct::Group(_)) if m.group_size() != first.group_size() => {
                matmul_tokens(m, &self.quantize_rows(xs, cols, m)?)
            }
            _ => matmul_tokens(m, acts),
        }
    }

    /// Final RMSNorm and LM head of a residual from [`Self::advance`].
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>, GoldenError> {
        let d = self.arch.hidden as usize;
        if x.len() != d {
            return Err(GoldenError::Op {
                op: "logits",
                source: ContractError::LengthMismatch {
                    what: "residual",
                    got: x.len(),
                    expected: d,
                },
            });
        }
        let mut h = vec![0f32; d];
        rmsnorm(x, &self.output_norm, self.arch.norm_eps, &mut h);
        if let Some(mix) = &self.head_mix {
            let n = h.clone();
            semantics::mix_along_lanes(mix, &n, &mut h);
        }
        match &self.head {
            GoldenHead::Quantized(m) => matvec(m, &self.quantize_for(&h, m)?),
            GoldenHead::F32(w) => {
                let cols = d;
                let mut out = vec![0f32; self.arch.vocab as usize];
                out.par_chunks_mut(256).enumerate().for_each(|(ci, o)| {
                    for (i, y) in o.iter_mut().enumerate() {
                        let r = ci * 256 + i;
                        *y = semantics::dot_lanes(&w[r * cols..(r + 1) * cols], &h);
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
    ) -> Result<Vec<f32>, GoldenError> {
        self.run_from(session, tokens, 0)
    }

    /// Runs `tokens`; returns the logits of tokens `first..` only.
    pub fn run_from(
        &self,
        session: &mut GoldenSession,
        tokens: &[u32],
        first: usize,
    ) -> Result<Vec<f32>, GoldenError> {
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(first) * self.vocab());
        for (i, &t) in tokens.iter().enumerate() {
            let x = self.advance(session, t)?;
            if i >= first {
                out.extend(self.logits(&x)?);
            }
        }
        Ok(out)
    }
}

fn quantize_act(x: &[f32]) -> Result<ActivationI8, GoldenError> {
    ActivationI8::quantize(x).map_err(|source| GoldenError::Op {
        op: "activation",
        source,
    })
}

/// `W a_t` for every activation `a_t` of `acts`, token-major (`acts.len()`
/// rows of `m.rows()`): output rows in chunks across the rayon pool, each
/// chunk's weights read once for all the tokens; every output exactly
/// [`matvec`]'s.
fn matmul_tokens(m: &IntMatrix, acts: &[QAct]) -> Result<Vec<f32>, GoldenError> {
    const ROWS: usize = 64;
    let (rows, n) = (m.rows(), acts.len());
    let chunks: Vec<Vec<f32>> = (0..rows.div_ceil(ROWS))
        .into_par_iter()
        .map(|ci| {
            let first = ci * ROWS;
            let len = ROWS.min(rows - first);
            let mut out = vec![0f32; n * len];
            for (a, o) in acts.iter().zip(out.chunks_exact_mut(len)) {
                match a {
                    QAct::Token(a) => m.matvec_rows(a, first, o),
                    QAct::Group(a) => m.matvec_rows_grouped(a, first, o),
                }?;
            }
            Ok(out)
        })
        .collect::<Result<_, ContractError>>()
        .map_err(|source| GoldenError::Op {
            op: "matvec",
            source,
        })?;
    let mut y = vec![0f32; n * rows];
    for (ci, chunk) in chunks.iter().enumerate() {
        let first = ci * ROWS;
        let len = ROWS.min(rows - first);
        for (t, part) in chunk.chunks_exact(len).enumerate() {
            y[t * rows + first..t * rows + first + len].copy_from_slice(part);
        }
    }
    Ok(y)
}

/// `W a` with output rows split across the rayon pool.
fn matvec(m: &IntMatrix, a: &QAct) -> Result<Vec<f32>, GoldenError> {
    const ROWS: usize = 64;
    let mut y = vec![0f32; m.rows()];
    y.par_chunks_mut(ROWS)
        .enumerate()
        .try_for_each(|(ci, o)| match a {
            QAct::Token(a) => m.matvec_rows(a, ci * ROWS, o),
            QAct::Group(a) => m.matvec_rows_grouped(a, ci * ROWS, o),
        })
        .map_err(|source| GoldenError::Op {
            op: "matvec",
            source,
        })?;
    Ok(y)
}
