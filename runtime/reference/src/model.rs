//! The model: weights, loading (GGUF or an in-memory map) and the forward pass.
//!
//! The forward pass is llama.cpp's LLaMA graph in f32: token embedding;
//! per block `x += Wo · attn(rope(Wq · n), rope(Wk · n), Wv · n)` with `n =
//! rms_norm(x) * attn_norm`, then `x += Wdown · (silu(Wgate · n') * Wup · n')`
//! with `n' = rms_norm(x) * ffn_norm`; final RMSNorm and the LM head (the
//! token embedding when tied). Attention is causal, grouped-query (query head
//! `h` reads key/value head `h / (heads / kv_heads)`), scaled by
//! `1/sqrt(head_dim)`, over a KV cache. Prefill of many tokens and decode of
//! one run the same per-token arithmetic and give the same bits.

use std::sync::Arc;

use q35_gguf::{GgmlType, Gguf};
use q35_model::{Architecture, ModelSpec, WeightSource};
use rayon::prelude::*;

use crate::kernels::{RopeAngles, dot, rms_norm, silu, softmax_in_place};
use crate::linear::{
    DenseLinear, DequantLinear, Linear, LinearId, LinearKind, forward_fused, forward_swiglu,
};
use crate::session::Session;
use crate::weights::{WeightMap, linear_dims, synthetic_weights};
use crate::{Config, ReferenceError};

/// How the GGUF's quantized matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dequantize everything to f32 at load (about 4 bytes a weight).
    F32,
    /// Keep the GGUF's blocks and dequantize rows during each product
    /// (same numbers, a fraction of the memory traffic).
    #[default]
    Native,
}

/// Attention work (query heads x positions attended x head width) below
/// which heads run on the calling thread rather than in parallel.
const ATTENTION_SERIAL_WORK: usize = 1 << 18;

/// Which positions of a forward pass produce logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's.
    Last,
    /// Every token's.
    All,
    /// Tokens `i..` of the batch (indices within the batch, not positions).
    From(usize),
    /// None (only fill the KV cache).
    None,
}

/// Sees the input of every linear layer during a forward pass (activation
/// statistics for calibration, or debugging).
pub trait Observer: Send {
    /// `x` holds `n_tokens` rows of the layer's input width.
    fn linear_input(&mut self, id: LinearId, x: &[f32], n_tokens: usize);

    /// The residual stream after block `block` (`n_tokens` rows of `hidden`),
    /// for layer-by-layer comparisons. Ignored by default.
    fn block_output(&mut self, block: usize, x: &[f32], n_tokens: usize) {
        let _ = (block, x, n_tokens);
    }
}

/// One transformer block's weights.
#[derive(Debug)]
pub struct Block {
    /// RMSNorm weight before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub wq: Box<dyn Linear>,
    /// Key projection.
    pub wk: Box<dyn Linear>,
    /// Value projection.
    pub wv: Box<dyn Linear>,
    /// Attention output projection.
    pub wo: Box<dyn Linear>,
    /// RMSNorm weight before the feed-forward network.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate.
    pub gate: Box<dyn Linear>,
    /// SwiGLU up projection.
    pub up: Box<dyn Linear>,
    /// SwiGLU down projection.
    pub down: Box<dyn Linear>,
}

impl Block {
    /// The layer of `kind` (`LmHead` is not a block layer: `None`).
    pub fn linear(&self, kind: LinearKind) -> Option<&dyn Linear> {
        Some(match kind {
            LinearKind::Q => &*self.wq,
            LinearKind::K => &*self.wk,
            LinearKind::V => &*self.wv,
            LinearKind::AttnOutput => &*self.wo,
            LinearKind::Gate => &*self.gate,
            LinearKind::Up => &*self.up,
            LinearKind::Down => &*self.down,
            LinearKind::LmHead => return None,
        })
    }

    fn slot(&mut self, kind: LinearKind) -> Option<&mut Box<dyn Linear>> {
        Some(match kind {
            LinearKind::Q => &mut self.wq,
            LinearKind::K => &mut self.wk,
            LinearKind::V => &mut self.wv,
            LinearKind::AttnOutput => &mut self.wo,
            LinearKind::Gate => &mut self.gate,
            LinearKind::Up => &mut self.up,
            LinearKind::Down => &mut self.down,
            LinearKind::LmHead => return None,
        })
    }
}

/// A LLaMA-family model ready to run.
#[derive(Debug)]
pub struct Model {
    config: Config,
    embedding: Arc<[f32]>,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    lm_head: Box<dyn Linear>,
    pool: Arc<rayon::ThreadPool>,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn build_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, ReferenceError> {
    // A misspelt `Q35_SIMD` is an error here rather than silently ignored.
    crate::kernels::simd_level_from_env()?;
    if threads == 0 {
        return Err(ReferenceError::InvalidParameter {
            name: "threads",
            what: "must be at least 1".into(),
        });
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("q35-ref-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| ReferenceError::ThreadPool {
            threads,
            what: e.to_string(),
        })
}

/// Where weights come from while building a model.
trait Weights {
    fn name(&self) -> &str;
    /// A vector (norm weight) of `len` values: a one-row matrix.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ReferenceError> {
        self.matrix_f32(name, len, 1)
    }
    /// A matrix of GGUF dims `[cols, rows]` as f32.
    fn matrix_f32(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Vec<f32>, ReferenceError>;
    /// A matrix of GGUF dims `[cols, rows]` as a layer.
    fn linear(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Box<dyn Linear>, ReferenceError> {
        let w = self.matrix_f32(name, cols, rows)?;
        Ok(Box::new(DenseLinear::new(rows, cols, w.into())))
    }
    fn has(&self, name: &str) -> bool;
    /// The LM head of a tied model: by default the f32 embedding table itself.
    fn tied_head(
        &mut self,
        embedding: &Arc<[f32]>,
        vocab: usize,
        hidden: usize,
    ) -> Box<dyn Linear> {
        Box::new(DenseLinear::new(vocab, hidden, embedding.clone()))
    }
}

fn shape_error(source: &str, name: &str, expected: Vec<u64>, found: &[u64]) -> ReferenceError {
    ReferenceError::WeightShape {
        source_name: source.to_owned(),
        name: name.to_owned(),
        expected,
        found: found.to_vec(),
    }
}

/// Dims equal up to trailing 1s (GGUF writers differ on those).
fn same_dims(found: &[u64], expected: &[u64]) -> bool {
    let trim = |d: &[u64]| {
        let mut v = d.to_vec();
        while v.len() > 1 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    trim(found) == trim(expected)
}

struct MapSource {
    map: WeightMap,
}

impl Weights for MapSource {
    fn name(&self) -> &str {
        &self.map.source
    }

    fn matrix_f32(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Vec<f32>, ReferenceError> {
        let expected = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        let source = self.map.source.clone();
        let t = self
            .map
            .tensors
            .remove(name)
            .ok_or_else(|| ReferenceError::MissingWeight {
                source_name: source.clone(),
                name: name.to_owned(),
            })?;
        if !same_dims(&t.dims, &expected) || t.data.len() != cols * rows {
            return Err(shape_error(&source, name, expected, &t.dims));
        }
        Ok(t.data)
    }

    fn has(&self, name: &str) -> bool {
        self.map.tensors.contains_key(name)
    }
}

struct GgufSource<'a> {
    gguf: &'a Gguf,
    name: String,
    format: WeightFormat,
}

impl GgufSource<'_> {
    fn info(
        &self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<&q35_gguf::TensorInfo, ReferenceError> {
        let t = self.gguf.tensor(name)?;
        let expected = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        if !same_dims(&t.dims, &expected) {
            return Err(shape_error(&self.name, name, expected, &t.dims));
        }
        Ok(t)
    }
}

impl Weights for GgufSource<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn matrix_f32(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Vec<f32>, ReferenceError> {
        self.info(name, cols, rows)?;
        Ok(self.gguf.tensor_f32(name)?)
    }

    fn linear(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Box<dyn Linear>, ReferenceError> {
        let t = self.info(name, cols, rows)?;
        if self.format == WeightFormat::Native
            && !matches!(t.ggml_type, GgmlType::F32)
            && let Some(l) = DequantLinear::new(rows, cols, t.ggml_type, self.gguf.tensor_bytes(t))
        {
            return Ok(Box::new(l));
        }
        let w = self.gguf.tensor_f32(name)?;
        Ok(Box::new(DenseLinear::new(rows, cols, w.into())))
    }

    fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_ok()
    }

    fn tied_head(
        &mut self,
        embedding: &Arc<[f32]>,
        vocab: usize,
        hidden: usize,
    ) -> Box<dyn Linear> {
        if self.format == WeightFormat::Native
            && let Ok(t) = self.gguf.tensor("token_embd.weight")
            && let Some(l) =
                DequantLinear::new(vocab, hidden, t.ggml_type, self.gguf.tensor_bytes(t))
        {
            return Box::new(l);
        }
        Box::new(DenseLinear::new(vocab, hidden, embedding.clone()))
    }
}

impl Model {
    /// Loads a LLaMA-family model from a GGUF file, keeping matrices in the
    /// file's block format ([`WeightFormat::Native`]).
    pub fn from_gguf(gguf: &Gguf, arch: &Architecture) -> Result<Model, ReferenceError> {
        Self::from_gguf_with(gguf, arch, WeightFormat::default())
    }

    /// Loads a LLaMA-family model from a GGUF file with the given weight format.
    pub fn from_gguf_with(
        gguf: &Gguf,
        arch: &Architecture,
        format: WeightFormat,
    ) -> Result<Model, ReferenceError> {
        let name = gguf
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<memory>".to_owned());
        let file_arch = gguf.get_str("general.architecture")?;
        if file_arch != "llama" {
            return Err(ReferenceError::UnsupportedArchitecture {
                file: name,
                arch: file_arch.to_owned(),
            });
        }
        let config = Config::from_architecture(arch)?;
        if let Ok(dims) = gguf.get_u64("llama.rope.dimension_count")
            && dims as usize != config.head_dim
        {
            return Err(ReferenceError::Metadata {
                source_name: name,
                what: format!(
                    "`llama.rope.dimension_count` is {dims}, but the reference rotates whole heads of {}",
                    config.head_dim
                ),
            });
        }
        if let Ok(kind) = gguf.get_str("llama.rope.scaling.type")
            && kind != "none"
        {
            return Err(ReferenceError::Metadata {
                source_name: name,
                what: format!("RoPE scaling `{kind}` is not supported"),
            });
        }
        let mut src = GgufSource { gguf, name, format };
        Self::build(config, &mut src)
    }

    /// The model a model.toml describes: its GGUF weights (pass the opened
    /// file, from `ModelSpec::open_gguf`) or its synthetic weights.
    pub fn from_spec(spec: &ModelSpec, gguf: Option<&Gguf>) -> Result<Model, ReferenceError> {
        let model = spec.path.display().to_string();
        match (&spec.weights, gguf) {
            (WeightSource::Gguf { .. }, Some(g)) => Self::from_gguf(g, &spec.arch),
            (WeightSource::Gguf { .. }, None) => Err(ReferenceError::GgufNotOpened { model }),
            (WeightSource::Synthetic { seed }, _) => {
                let config = Config::from_architecture(&spec.arch)?;
                let weights = synthetic_weights(&config, *seed);
                Self::from_config_weights(config, weights)
            }
            (WeightSource::None, _) => Err(ReferenceError::NoWeights { model }),
        }
    }

    /// Builds a model from f32 tensors named as in llama.cpp's GGUF files
    /// (see [`WeightMap`]); every matrix becomes a [`DenseLinear`].
    pub fn from_weights(arch: &Architecture, weights: WeightMap) -> Result<Model, ReferenceError> {
        let config = Config::from_architecture(arch)?;
        Self::from_config_weights(config, weights)
    }

    /// As [`Model::from_weights`], from an already validated [`Config`].
    pub fn from_config_weights(
        config: Config,
        weights: WeightMap,
    ) -> Result<Model, ReferenceError> {
        let mut src = MapSource { map: weights };
        Self::build(config, &mut src)
    }

    fn build(config: Config, src: &mut dyn Weights) -> Result<Model, ReferenceError> {
        let embedding: Arc<[f32]> = src
            .matrix_f32("token_embd.weight", config.hidden, config.vocab)?
            .into();
        let mut blocks = Vec::with_capacity(config.blocks);
        for b in 0..config.blocks {
            let mut lin = |kind: LinearKind| {
                let (cols, rows) = linear_dims(&config, kind);
                let id = LinearId {
                    block: Some(b),
                    kind,
                };
                src.linear(&id.gguf_name(), cols, rows)
            };
            let wq = lin(LinearKind::Q)?;
            let wk = lin(LinearKind::K)?;
            let wv = lin(LinearKind::V)?;
            let wo = lin(LinearKind::AttnOutput)?;
            let gate = lin(LinearKind::Gate)?;
            let up = lin(LinearKind::Up)?;
            let down = lin(LinearKind::Down)?;
            blocks.push(Block {
                attn_norm: src.vector(&format!("blk.{b}.attn_norm.weight"), config.hidden)?,
                wq,
                wk,
                wv,
                wo,
                ffn_norm: src.vector(&format!("blk.{b}.ffn_norm.weight"), config.hidden)?,
                gate,
                up,
                down,
            });
        }
        let output_norm = src.vector("output_norm.weight", config.hidden)?;
        let lm_head: Box<dyn Linear> = if config.tied_embeddings {
            if src.has("output.weight") {
                return Err(ReferenceError::Metadata {
                    source_name: src.name().to_owned(),
                    what: "the architecture says tied embeddings, but `output.weight` is present"
                        .into(),
                });
            }
            src.tied_head(&embedding, config.vocab, config.hidden)
        } else {
            src.linear("output.weight", config.hidden, config.vocab)?
        };
        Ok(Model {
            config,
            embedding,
            blocks,
            output_norm,
            lm_head,
            pool: build_pool(default_threads())?,
        })
    }

    /// Runs forward passes on `threads` worker threads from now on.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), ReferenceError> {
        self.pool = build_pool(threads)?;
        Ok(())
    }

    /// Worker threads used by forward passes.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The transformer blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The token embedding table, `vocab` rows of `hidden`.
    pub fn embedding(&self) -> &[f32] {
        &self.embedding
    }

    /// The final RMSNorm weight.
    pub fn output_norm(&self) -> &[f32] {
        &self.output_norm
    }

    /// Every linear layer's ID, in forward order (blocks, then the LM head).
    pub fn linear_ids(&self) -> Vec<LinearId> {
        let mut ids: Vec<LinearId> = (0..self.config.blocks)
            .flat_map(|b| {
                LinearKind::BLOCK.into_iter().map(move |kind| LinearId {
                    block: Some(b),
                    kind,
                })
            })
            .collect();
        ids.push(LinearId {
            block: None,
            kind: LinearKind::LmHead,
        });
        ids
    }

    /// The layer `id`, if it exists.
    pub fn linear(&self, id: LinearId) -> Option<&dyn Linear> {
        match id.block {
            None if id.kind == LinearKind::LmHead => Some(&*self.lm_head),
            None => None,
            Some(b) => self.blocks.get(b)?.linear(id.kind),
        }
    }

    /// Replaces layer `id` (e.g. by a quantized one of the same shape) and
    /// returns the old one.
    pub fn replace_linear(
        &mut self,
        id: LinearId,
        layer: Box<dyn Linear>,
    ) -> Result<Box<dyn Linear>, ReferenceError> {
        let (cols, rows) = linear_dims(&self.config, id.kind);
        if layer.in_features() != cols || layer.out_features() != rows {
            return Err(ReferenceError::InvalidParameter {
                name: "layer",
                what: format!(
                    "{id}: replacement is {}x{} (out x in), the model needs {rows}x{cols}",
                    layer.out_features(),
                    layer.in_features()
                ),
            });
        }
        let slot = match id.block {
            None if id.kind == LinearKind::LmHead => &mut self.lm_head,
            Some(b) if b < self.blocks.len() && id.kind != LinearKind::LmHead => {
                self.blocks[b].slot(id.kind).expect("block layer")
            }
            _ => {
                return Err(ReferenceError::InvalidParameter {
                    name: "id",
                    what: format!("{id} is not a layer of this model"),
                });
            }
        };
        Ok(std::mem::replace(slot, layer))
    }

    /// A fresh KV cache holding up to the model's whole context.
    pub fn new_session(&self) -> Session {
        Session::new(&self.config, self.config.context)
    }

    /// A fresh KV cache holding up to `capacity` tokens (at most the context).
    pub fn new_session_with_capacity(&self, capacity: usize) -> Result<Session, ReferenceError> {
        if capacity == 0 || capacity > self.config.context {
            return Err(ReferenceError::InvalidParameter {
                name: "capacity",
                what: format!(
                    "{capacity} is not in 1..={} (the model's context)",
                    self.config.context
                ),
            });
        }
        Ok(Session::new(&self.config, capacity))
    }

    /// Runs `tokens` at positions `session.len()..`, appends their keys and
    /// values to the session and returns the requested logits (rows of
    /// `vocab` values, in token order).
    pub fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<Vec<f32>, ReferenceError> {
        self.forward_impl(session, tokens, logits, None, true)
    }

    /// Runs `tokens` at positions `start_pos..`: the session first forgets
    /// everything from `start_pos` on (so a sequence can be rewound and
    /// continued differently). `start_pos` past the session's end is an error.
    pub fn forward_at(
        &self,
        session: &mut Session,
        tokens: &[u32],
        start_pos: usize,
        logits: Logits,
    ) -> Result<Vec<f32>, ReferenceError> {
        if start_pos > session.len() {
            return Err(ReferenceError::InvalidParameter {
                name: "start_pos",
                what: format!(
                    "{start_pos} is past the {} tokens the session holds",
                    session.len()
                ),
            });
        }
        session.truncate(start_pos);
        self.forward(session, tokens, logits)
    }

    /// As [`Model::forward`], showing every linear layer's input to `observer`.
    pub fn forward_observed(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: Logits,
        observer: &mut dyn Observer,
    ) -> Result<Vec<f32>, ReferenceError> {
        self.forward_impl(session, tokens, logits, Some(observer), true)
    }

    /// Runs `tokens` only for what `observer` sees: every linear layer's
    /// input for every token, the LM head's included, without computing the
    /// logits themselves (calibration, which never reads them, saves the
    /// largest matmul of the pass). The statistics are exactly those of
    /// [`Model::forward_observed`] with [`Logits::All`].
    pub fn observe(
        &self,
        session: &mut Session,
        tokens: &[u32],
        observer: &mut dyn Observer,
    ) -> Result<(), ReferenceError> {
        self.forward_impl(session, tokens, Logits::All, Some(observer), false)
            .map(drop)
    }

    fn forward_impl(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: Logits,
        mut observer: Option<&mut dyn Observer>,
        head: bool,
    ) -> Result<Vec<f32>, ReferenceError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(ReferenceError::EmptyInput);
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(ReferenceError::TokenOutOfRange {
                token: t,
                vocab: c.vocab,
            });
        }
        if !session.fits(c) {
            return Err(ReferenceError::InvalidParameter {
                name: "session",
                what: "the session was created for a model of another shape".into(),
            });
        }
        let needed = session.len() + tokens.len();
        if needed > session.capacity() {
            return Err(ReferenceError::ContextOverflow {
                needed,
                context: session.capacity(),
            });
        }
        let first_logit = match logits {
            Logits::Last => Some(tokens.len() - 1),
            Logits::All => Some(0),
            Logits::From(i) if i < tokens.len() => Some(i),
            Logits::From(i) => {
                return Err(ReferenceError::InvalidParameter {
                    name: "logits",
                    what: format!("From({i}) is past the batch of {} tokens", tokens.len()),
                });
            }
            Logits::None => None,
        };
        let out = self
            .pool
            .install(|| self.run(session, tokens, first_logit, &mut observer, head));
        session.advance(tokens.len());
        Ok(out)
    }

    fn run(
        &self,
        session: &mut Session,
        tokens: &[u32],
        first_logit: Option<usize>,
        observer: &mut Option<&mut dyn Observer>,
        head: bool,
    ) -> Vec<f32> {
        let c = &self.config;
        let n = tokens.len();
        let (d, hd) = (c.hidden, c.head_dim);
        let start = session.len();

        let mut x = vec![0.0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            let t = t as usize;
            row.copy_from_slice(&self.embedding[t * d..(t + 1) * d]);
        }
        let angles: Vec<RopeAngles> = (0..n)
            .map(|i| RopeAngles::new(start + i, hd, c.rope_base))
            .collect();

        let mut scratch = BlockScratch::new(c, n);
        for (bi, b) in self.blocks.iter().enumerate() {
            self.block_pass(
                bi,
                b,
                session,
                start,
                &angles,
                &mut x,
                &mut scratch,
                observer,
            );
        }
        let observe = |observer: &mut Option<&mut dyn Observer>, id: LinearId, x: &[f32]| {
            if let Some(obs) = observer.as_deref_mut() {
                obs.linear_input(id, x, n);
            }
        };

        let Some(first) = first_logit else {
            return Vec::new();
        };
        let rows = n - first;
        let mut normed = vec![0.0f32; rows * d];
        for (hr, xr) in normed
            .chunks_exact_mut(d)
            .zip(x[first * d..].chunks_exact(d))
        {
            rms_norm(xr, &self.output_norm, c.norm_eps, hr);
        }
        observe(
            observer,
            LinearId {
                block: None,
                kind: LinearKind::LmHead,
            },
            &normed,
        );
        if !head {
            return Vec::new();
        }
        let mut out = vec![0.0f32; rows * c.vocab];
        self.lm_head.forward(&normed, &mut out);
        out
    }

    /// Runs block `bi` (`b`: this model's block, or one of the same shape
    /// standing in for it) over the `n` rows of `x` (the residual stream,
    /// updated in place) at positions `start..start + n`, appending their
    /// keys and values to the session's layer `bi` and showing every linear
    /// input to `observer`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the block, its cache and positions, the stream, scratch and observer"
    )]
    fn block_pass(
        &self,
        bi: usize,
        b: &Block,
        session: &mut Session,
        start: usize,
        angles: &[RopeAngles],
        x: &mut [f32],
        s: &mut BlockScratch,
        observer: &mut Option<&mut dyn Observer>,
    ) {
        let c = &self.config;
        let (d, qd, kvd) = (c.hidden, c.q_dim(), c.kv_dim());
        let n = x.len() / d;
        let observe = |observer: &mut Option<&mut dyn Observer>, id: LinearId, x: &[f32]| {
            if let Some(obs) = observer.as_deref_mut() {
                obs.linear_input(id, x, n);
            }
        };
        let BlockScratch {
            h,
            q,
            k,
            v,
            att,
            o,
            g,
            u,
        } = s;
        let id = |kind| LinearId {
            block: Some(bi),
            kind,
        };
        for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            rms_norm(xr, &b.attn_norm, c.norm_eps, hr);
        }
        observe(observer, id(LinearKind::Q), h);
        observe(observer, id(LinearKind::K), h);
        observe(observer, id(LinearKind::V), h);
        if n == 1 {
            forward_fused(
                &[&*b.wq, &*b.wk, &*b.wv],
                h,
                &mut [&mut *q, &mut *k, &mut *v],
            );
        } else {
            b.wq.forward(h, q);
            b.wk.forward(h, k);
            b.wv.forward(h, v);
        }
        for (i, a) in angles.iter().enumerate() {
            a.apply(&mut q[i * qd..(i + 1) * qd]);
            a.apply(&mut k[i * kvd..(i + 1) * kvd]);
        }
        session.append(bi, k, v);
        let (kc, vc) = session.layer(bi);
        self.attention(q, kc, vc, start, n, att);
        observe(observer, id(LinearKind::AttnOutput), att);
        b.wo.forward(att, o);
        for (xv, ov) in x.iter_mut().zip(o.iter()) {
            *xv += ov;
        }

        for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            rms_norm(xr, &b.ffn_norm, c.norm_eps, hr);
        }
        observe(observer, id(LinearKind::Gate), h);
        observe(observer, id(LinearKind::Up), h);
        if n == 1 {
            forward_swiglu(&*b.gate, &*b.up, h, g, u);
        } else {
            b.gate.forward(h, g);
            b.up.forward(h, u);
            for (gv, uv) in g.iter_mut().zip(u.iter()) {
                *gv = silu(*gv) * uv;
            }
        }
        observe(observer, id(LinearKind::Down), g);
        b.down.forward(g, o);
        for (xv, ov) in x.iter_mut().zip(o.iter()) {
            *xv += ov;
        }
        if let Some(obs) = observer.as_deref_mut() {
            obs.block_output(bi, x, n);
        }
    }

    /// Runs one block alone over a window of tokens: the `x.len() / hidden`
    /// rows of `x` (the residual stream entering block `index`, updated in
    /// place to the stream leaving it) at positions `0..` from an empty KV
    /// cache, with the same arithmetic as that block inside
    /// [`Model::forward`]. `block` stands in for this model's block `index`
    /// when given (same shape, e.g. dequantized weights); `observer` sees
    /// every linear input, as in [`Model::observe`]. Block-by-block
    /// (sequential) calibration runs a model this way.
    pub fn run_block(
        &self,
        index: usize,
        block: Option<&Block>,
        x: &mut [f32],
        observer: Option<&mut dyn Observer>,
    ) -> Result<(), ReferenceError> {
        let c = &self.config;
        let d = c.hidden;
        let n = x.len() / d;
        if n == 0 || !x.len().is_multiple_of(d) {
            return Err(ReferenceError::InvalidParameter {
                name: "x",
                what: format!(
                    "{} values are not a positive number of {d}-wide rows",
                    x.len()
                ),
            });
        }
        if n > c.context {
            return Err(ReferenceError::ContextOverflow {
                needed: n,
                context: c.context,
            });
        }
        let b = match (block, self.blocks.get(index)) {
            (_, None) => {
                return Err(ReferenceError::InvalidParameter {
                    name: "index",
                    what: format!("block {index} is not in 0..{}", self.blocks.len()),
                });
            }
            (Some(b), Some(_)) => {
                for kind in LinearKind::BLOCK {
                    let (cols, rows) = linear_dims(c, kind);
                    let l = b.linear(kind).expect("block layer");
                    if l.in_features() != cols || l.out_features() != rows {
                        return Err(ReferenceError::InvalidParameter {
                            name: "block",
                            what: format!(
                                "{kind:?} is {}x{}, the model needs {rows}x{cols}",
                                l.out_features(),
                                l.in_features()
                            ),
                        });
                    }
                }
                if b.attn_norm.len() != d || b.ffn_norm.len() != d {
                    return Err(ReferenceError::InvalidParameter {
                        name: "block",
                        what: format!("its norms are not {d} wide"),
                    });
                }
                b
            }
            (None, Some(b)) => b,
        };
        let mut session = Session::new(c, n);
        let angles: Vec<RopeAngles> = (0..n)
            .map(|i| RopeAngles::new(i, c.head_dim, c.rope_base))
            .collect();
        let mut scratch = BlockScratch::new(c, n);
        let mut observer = observer;
        self.pool.install(|| {
            self.block_pass(
                index,
                b,
                &mut session,
                0,
                &angles,
                x,
                &mut scratch,
                &mut observer,
            )
        });
        Ok(())
    }

    /// Causal grouped-query attention of `n` queries at positions
    /// `start..start + n` over cached keys/values `0..start + n`.
    fn attention(
        &self,
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
        start: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (hd, heads, qd, kvd) = (c.head_dim, c.heads, c.q_dim(), c.kv_dim());
        let group = c.heads / c.kv_heads;
        let scale = 1.0f32 / (hd as f32).sqrt();
        debug_assert_eq!(out.len(), n * qd);
        let head = |(i, o): (usize, &mut [f32])| {
            let t = i / heads;
            let head = i % heads;
            let kvh = head / group;
            let pos = start + t;
            let qh = &q[t * qd + head * hd..t * qd + (head + 1) * hd];
            let mut s: Vec<f32> = (0..=pos)
                .map(|j| dot(&kc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd], qh) * scale)
                .collect();
            softmax_in_place(&mut s);
            o.fill(0.0);
            for (j, &p) in s.iter().enumerate() {
                let vj = &vc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                for (ov, &vv) in o.iter_mut().zip(vj) {
                    *ov += p * vv;
                }
            }
        };
        // Heads are independent (same bits either way); a short decode step
        // is cheaper on one thread than handed out.
        if n * heads * (start + n) * hd <= ATTENTION_SERIAL_WORK {
            out.chunks_mut(hd).enumerate().for_each(head);
        } else {
            out.par_chunks_mut(hd).enumerate().for_each(head);
        }
    }
}

/// The working buffers of one block over `n` tokens.
struct BlockScratch {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
}

impl BlockScratch {
    fn new(c: &Config, n: usize) -> BlockScratch {
        let (d, qd, kvd) = (c.hidden, c.q_dim(), c.kv_dim());
        BlockScratch {
            h: vec![0.0; n * d],
            q: vec![0.0; n * qd],
            k: vec![0.0; n * kvd],
            v: vec![0.0; n * kvd],
            att: vec![0.0; n * qd],
            o: vec![0.0; n * d],
            g: vec![0.0; n * c.ffn],
            u: vec![0.0; n * c.ffn],
        }
    }
}
