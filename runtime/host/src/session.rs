//! The token loop: per token, write the program's inputs, run it once on
//! the device, read the logits; prefill, sampling, stop tokens, and the
//! `--check` comparison after every step.
//!
//! Per step at position `pos` the host writes (docs/lpubin.md 3.4,
//! "Symbols the host binds"):
//!
//! - `x_in` f32 `[hidden]`: the token's embedding row
//!   ([`crate::embedding`]);
//! - `pos_idx` u16 `[320]`: every lane `pos`;
//! - `kv_idx` u16 `[320]`: lane `pos % 320` is `pos / 320`, every other lane
//!   the metadata's `kv_junk_offset`;
//! - `attn_mask` f32 `[ctx]`: `0.0` for `t <= pos`, `-inf` after;
//!
//! runs the program and reads `logits` f32 `[vocab]`.
//!
//! **Prefill.** A binary with a prefill program (metadata `prefill`,
//! docs/lpubin.md 3.9) takes the prompt `N` tokens a run: the same symbols
//! with a row per token ([`crate::meta::PrefillMeta`]), row `k` filled as
//! for one token at position `pos + k`. A last part of `m` tokens,
//! `2 <= m < N`, runs as a chunk too when `pos + N` fits the context: rows
//! `m..N` carry token 0 at the following positions, whose keys and values
//! land in cache slots that no real token has attended to yet and that the
//! steps at those positions overwrite before any attention reads them
//! (each token's mask admits positions up to its own). A single remaining
//! token, or a chunk that would not fit, runs on the decode program. Without
//! a prefill program the prompt runs one token a run.
//!
//! **Context buckets.** A binary with context buckets (metadata `buckets`,
//! [`crate::meta::BucketMeta`]) runs a decode step at position `pos` on the
//! first bucket program attending to more than `pos` positions (the same
//! symbols, placement and MEM; attention reads fewer positions, so the step
//! takes fewer cycles and gives the same bits), else on the first program.
//!
//! Token selection uses
//! `q35_reference`'s [`Sampler`] with the same parameters and seeds as
//! `q35c run`, and the loop stops as `q35c run`'s does (a stop token, which
//! is kept, `max_tokens`, a full context, or the callback).

use std::sync::Arc;

use q35_lpubin::{ElemType, LpuBinary};
use q35_reference::{GenerateOptions, Sampler, StopReason};
use q35_tokenizer::Tokenizer;

use crate::check::{Checker, Mismatch};
use crate::device::{Device, DeviceError, StepStats, f32_bytes, f32_values, u16_bytes};
use crate::embedding::{EmbeddingError, EmbeddingTable};
use crate::layout::LANES;
use crate::meta::{BucketMeta, HostMeta, MetaError, PrefillMeta};

/// Everything the token loop can fail on.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The metadata is missing or wrong.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The embedding section is missing or wrong.
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
    /// The tokenizer section does not load, or the chat template fails.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A symbol the host binds is missing or has the wrong type or shape.
    #[error("symbol `{name}` {what}")]
    Symbol {
        /// The symbol.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The device refused a request or a run failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The prompt needs more positions than the program was compiled for.
    #[error(
        "the prompt is {tokens} tokens, longer than the compiled context of {ctx} tokens (recompile with a larger --context)"
    )]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// The compiled context.
        ctx: usize,
    },
    /// No prompt tokens.
    #[error("the prompt is empty (no tokens)")]
    EmptyPrompt,
    /// A step past the compiled context.
    #[error("position {pos} is past the compiled context of {ctx} tokens")]
    ContextFull {
        /// The position the step would take.
        pos: usize,
        /// The compiled context.
        ctx: usize,
    },
    /// Invalid sampling parameters.
    #[error(transparent)]
    Sampling(#[from] q35_reference::ReferenceError),
    /// The golden model cannot be used for `--check`.
    #[error("check: {0}")]
    Golden(String),
    /// `--check` found a difference.
    #[error("check failed: {0}")]
    Check(Box<Mismatch>),
}

/// One run of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRecord {
    /// The token fed (a prefill chunk's first).
    pub token: u32,
    /// Its position.
    pub pos: usize,
    /// Whether it was a prompt token (prefill) or a generated one.
    pub prefill: bool,
    /// Tokens the run took: 1 on the decode program; a prefill chunk's
    /// real tokens (its padding rows not counted).
    pub tokens: usize,
    /// Whether the run was the prefill program's.
    pub chunk: bool,
    /// The context bucket a decode run took (its positions; `None`: the
    /// whole-context program, or a prefill chunk).
    pub bucket: Option<u32>,
    /// What the run cost.
    pub stats: StepStats,
}

/// The result of [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct HostGeneration {
    /// Generated tokens (a final stop token included).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop: StopReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Every run, in order.
    pub steps: Vec<StepRecord>,
}

/// A compiled model bound to a device.
#[derive(Debug)]
pub struct Session<D: Device> {
    device: D,
    meta: HostMeta,
    embedding: EmbeddingTable,
    tokenizer: Option<Arc<Tokenizer>>,
    checker: Option<Checker>,
    pos: usize,
    steps: usize,
    mask: Vec<f32>,
    prefill: Option<PrefillMeta>,
    /// Whether decode steps use the context buckets.
    buckets: bool,
}

/// Elements of `n` rounded up to whole 320-lane words.
pub(crate) fn padded(n: u32) -> u64 {
    u64::from(n).div_ceil(LANES as u64) * LANES as u64
}

/// The prompt tokens of `text` with `tokenizer` ([`Session::prompt_tokens`]).
pub(crate) fn prompt_tokens_with(
    tokenizer: Option<&Tokenizer>,
    text: &str,
    chat: bool,
    system: Option<&str>,
) -> Result<(String, Vec<u32>), HostError> {
    let tok = tokenizer.ok_or_else(|| {
        HostError::Tokenizer(
            "the binary has no tokenizer section: give the prompt as token ids".into(),
        )
    })?;
    if chat {
        tok.chat_prompt(system, text)
            .map_err(|e| HostError::Tokenizer(format!("cannot apply the chat template: {e}")))
    } else {
        Ok((text.to_string(), tok.encode_with_bos(text)))
    }
}

/// The binary's host metadata and embedding table, checked against each
/// other.
pub(crate) fn load_meta(binary: &LpuBinary) -> Result<(HostMeta, EmbeddingTable), HostError> {
    let meta = HostMeta::from_binary(binary)?;
    let embedding = EmbeddingTable::from_binary(binary)?;
    if (embedding.rows(), embedding.cols()) != (meta.vocab as usize, meta.hidden as usize) {
        return Err(EmbeddingError::Shape(format!(
            "the table is {}x{}, the metadata says vocab {} x hidden {}",
            embedding.rows(),
            embedding.cols(),
            meta.vocab,
            meta.hidden
        ))
        .into());
    }
    Ok((meta, embedding))
}

/// The binary's tokenizer (with the metadata's chat template), if it has
/// one; the embedding and tokenizer sections' pages are released (the
/// host holds copies).
pub(crate) fn load_tokenizer(
    binary: &LpuBinary,
    meta: &HostMeta,
) -> Result<Option<Tokenizer>, HostError> {
    let mut tokenizer = match binary.tokenizer() {
        Some(bytes) => {
            let gguf = q35_gguf::Gguf::from_bytes(bytes.to_vec())
                .map_err(|e| HostError::Tokenizer(e.to_string()))?;
            Some(Tokenizer::from_gguf(&gguf).map_err(|e| HostError::Tokenizer(e.to_string()))?)
        }
        None => None,
    };
    // Both are copies now: their mapped pages need not stay resident.
    binary.release_section(q35_lpubin::SectionKind::Embedding);
    binary.release_section(q35_lpubin::SectionKind::Tokenizer);
    if let (Some(t), Some(template)) = (tokenizer.as_mut(), &meta.chat_template) {
        t.set_chat_template(Some(template.clone()));
    }
    Ok(tokenizer)
}

/// The prefill program's symbols: name, element type, shape.
pub(crate) fn chunk_symbols(meta: &HostMeta, n: u32) -> [(&'static str, ElemType, [u64; 2]); 5] {
    let n = u64::from(n);
    [
        ("x_in", ElemType::F32, [n, padded(meta.hidden)]),
        ("pos_idx", ElemType::U16, [n, LANES as u64]),
        ("kv_idx", ElemType::U16, [n, LANES as u64]),
        ("attn_mask", ElemType::F32, [n, padded(meta.ctx)]),
        ("logits", ElemType::F32, [n, padded(meta.vocab)]),
    ]
}

/// Checks that the step symbols of `n` rows ([`chunk_symbols`]) are where
/// `find` looks, each of its type and shape: a missing one is `shown(name)`
/// `missing`, a wrong one says what `needs` it.
pub(crate) fn check_rows<'a>(
    meta: &HostMeta,
    n: u32,
    find: impl Fn(&str) -> Option<&'a q35_lpubin::Symbol>,
    shown: impl Fn(&str) -> String,
    missing: &str,
    needs: &str,
) -> Result<(), HostError> {
    for (name, elem, shape) in chunk_symbols(meta, n) {
        let s = find(name).ok_or_else(|| HostError::Symbol {
            name: shown(name),
            what: missing.into(),
        })?;
        if s.elem != elem || s.shape != shape {
            return Err(HostError::Symbol {
                name: shown(name),
                what: format!("is {} {:?}; {needs} {elem} {shape:?}", s.elem, s.shape),
            });
        }
    }
    Ok(())
}

/// The further program `name` of `binary`, which the metadata's `key`
/// names: an error if the binary lacks it.
fn named_program<'a>(
    binary: &'a LpuBinary,
    name: &str,
    key: &str,
) -> Result<q35_lpubin::ProgramView<'a>, HostError> {
    binary.program(name).ok_or_else(|| HostError::Symbol {
        name: name.to_string(),
        what: format!("is named by the metadata's `{key}` but the binary has no such program"),
    })
}

/// Checks that every context bucket the metadata names is a program of
/// `binary` with exactly the first program's symbols (a bucket shares its
/// placement).
pub(crate) fn check_buckets(meta: &HostMeta, binary: &LpuBinary) -> Result<(), HostError> {
    for b in &meta.buckets {
        let prog = named_program(binary, &b.program, "buckets")?;
        if prog.symbols() != binary.symbols() {
            return Err(HostError::Symbol {
                name: b.program.clone(),
                what: "is a context bucket whose symbols differ from the first program's (a bucket shares its placement)".into(),
            });
        }
    }
    Ok(())
}

/// The symbols written or read every step: name, element type, elements.
fn bound_symbols(meta: &HostMeta) -> [(&'static str, ElemType, u64); 5] {
    [
        ("x_in", ElemType::F32, u64::from(meta.hidden)),
        ("pos_idx", ElemType::U16, LANES as u64),
        ("kv_idx", ElemType::U16, LANES as u64),
        ("attn_mask", ElemType::F32, u64::from(meta.ctx)),
        ("logits", ElemType::F32, u64::from(meta.vocab)),
    ]
}

impl<D: Device> Session<D> {
    /// Binds `binary` (already loaded on `device`): reads its metadata,
    /// embedding and tokenizer, and checks that every symbol the loop binds
    /// exists with its type and size.
    pub fn new(device: D, binary: &LpuBinary) -> Result<Session<D>, HostError> {
        Self::new_on(device, binary, &[binary])
    }

    /// [`Session::new`] for a model split over a system of chips
    /// (docs/backend.md 8): the host's sections (metadata, embedding,
    /// tokenizer) are `binary`'s (chip 0's), each symbol the loop binds is
    /// checked in the first of `chips` (every chip's image, in order) whose
    /// program has it.
    pub fn new_on(
        device: D,
        binary: &LpuBinary,
        chips: &[&LpuBinary],
    ) -> Result<Session<D>, HostError> {
        let (meta, embedding) = load_meta(binary)?;
        if meta.batch > 1 {
            return Err(HostError::Symbol {
                name: "x_in".into(),
                what: format!(
                    "has a row for each of {} users: the binary serves a batch (run it as a batch, crate::batch::BatchSession)",
                    meta.batch
                ),
            });
        }
        for (name, elem, elements) in bound_symbols(&meta) {
            let s = chips.iter().find_map(|c| c.symbol(name)).ok_or_else(|| HostError::Symbol {
                name: name.into(),
                what: "is missing: the program does not take a token (a bare program runs without --prompt)".into(),
            })?;
            let n: Option<u64> = s.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            if s.elem != elem || n != Some(elements) {
                return Err(HostError::Symbol {
                    name: name.into(),
                    what: format!(
                        "is {} {:?}; the host needs {elem} with {elements} elements",
                        s.elem, s.shape
                    ),
                });
            }
        }
        if let Some(p) = &meta.prefill {
            let prog = named_program(binary, &p.program, "prefill")?;
            check_rows(
                &meta,
                p.tokens,
                |name| prog.symbol(name),
                |name| format!("{}:{name}", p.program),
                "is missing from the prefill program",
                "the host needs",
            )?;
        }
        check_buckets(&meta, binary)?;
        let tokenizer = load_tokenizer(binary, &meta)?;
        let prefill = meta.prefill.clone();
        Ok(Session {
            device,
            mask: vec![f32::NEG_INFINITY; meta.ctx as usize],
            meta,
            embedding,
            tokenizer: tokenizer.map(Arc::new),
            checker: None,
            pos: 0,
            steps: 0,
            prefill,
            buckets: true,
        })
    }

    /// Whether decode steps use the binary's context buckets (default:
    /// yes); off, every step runs the whole-context program (same bits,
    /// more cycles).
    pub fn set_buckets(&mut self, on: bool) {
        self.buckets = on;
    }

    /// The context bucket a decode step at `pos` runs on (`None`: the
    /// whole-context program).
    pub fn bucket_at(&self, pos: usize) -> Option<&BucketMeta> {
        if self.buckets {
            self.meta.bucket_for(pos)
        } else {
            None
        }
    }

    /// Runs `checker` beside the device from now on (`--check`); call
    /// before the first step.
    pub fn set_checker(&mut self, checker: Checker) {
        self.checker = Some(checker);
    }

    /// The metadata.
    pub fn meta(&self) -> &HostMeta {
        &self.meta
    }

    /// The tokenizer, if the binary carries one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// The tokenizer, shared (a caller decoding tokens while
    /// [`Session::generate`] holds the session keeps no second copy).
    pub fn shared_tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutable.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device, ending the session (its tables freed).
    pub fn into_device(self) -> D {
        self.device
    }

    /// The position the next step takes.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The compiled context.
    pub fn ctx(&self) -> usize {
        self.meta.ctx as usize
    }

    /// The prompt tokens of `text`: a chat prompt (`chat`, with an
    /// optional system message) or plain text (BOS first when the model
    /// adds it), exactly as `q35c run` builds them. Needs a tokenizer.
    pub fn prompt_tokens(
        &self,
        text: &str,
        chat: bool,
        system: Option<&str>,
    ) -> Result<(String, Vec<u32>), HostError> {
        prompt_tokens_with(self.tokenizer.as_deref(), text, chat, system)
    }

    /// Runs one token at the next position and returns its logits and the
    /// run's cost (checked against the golden model when a checker is set).
    pub fn step(&mut self, token: u32) -> Result<(Vec<f32>, StepStats), HostError> {
        let (pos, ctx) = (self.pos, self.ctx());
        if pos >= ctx {
            return Err(HostError::ContextFull { pos, ctx });
        }
        let x = self.embedding.row(token)?;
        let pos16 = |v: usize| {
            u16::try_from(v).map_err(|_| HostError::Symbol {
                name: "pos_idx".into(),
                what: format!("cannot hold position {pos} in u16"),
            })
        };
        let pos_idx = vec![pos16(pos)?; LANES];
        let mut kv_idx = vec![self.meta.kv_junk_offset; LANES];
        kv_idx[pos % LANES] = pos16(pos / LANES)?;
        self.mask[pos] = 0.0;
        self.device.write_symbol("x_in", &f32_bytes(&x))?;
        self.device.write_symbol("pos_idx", &u16_bytes(&pos_idx))?;
        self.device.write_symbol("kv_idx", &u16_bytes(&kv_idx))?;
        self.device
            .write_symbol("attn_mask", &f32_bytes(&self.mask))?;
        let program = self.bucket_at(pos).map(|b| b.program.clone());
        let stats = self.device.run_program(program.as_deref())?;
        let logits = f32_values(&self.device.read_symbol("logits")?);
        if logits.len() != self.meta.vocab as usize {
            return Err(HostError::Symbol {
                name: "logits".into(),
                what: format!(
                    "read back {} values, the vocabulary is {}",
                    logits.len(),
                    self.meta.vocab
                ),
            });
        }
        if let Some(c) = self.checker.as_mut() {
            c.check(&mut self.device, self.steps, token, &logits)?;
        }
        self.pos += 1;
        self.steps += 1;
        Ok((logits, stats))
    }

    /// Tokens a prefill run takes (`None`: the binary has no prefill
    /// program, or [`Session::set_prefill`] turned it off).
    pub fn prefill_tokens(&self) -> Option<usize> {
        self.prefill.as_ref().map(|p| p.tokens as usize)
    }

    /// Whether the prompt uses the prefill program (default: when the
    /// binary has one); off, every prompt token runs on the decode program.
    pub fn set_prefill(&mut self, on: bool) {
        self.prefill = if on { self.meta.prefill.clone() } else { None };
    }

    /// Runs `tokens` (at most the prefill program's `N`, at least 2) at the
    /// next positions in one run of the prefill program, padding the rows
    /// past them as the module docs say, and returns the last real token's
    /// logits (each token checked against the golden model when a checker
    /// is set: every token's logits, the KV cache after the last).
    pub fn prefill_chunk(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, StepStats), HostError> {
        let Some(p) = self.prefill.clone() else {
            return Err(DeviceError::NoProgram {
                name: "prefill".into(),
            }
            .into());
        };
        let (n, m, pos, ctx) = (p.tokens as usize, tokens.len(), self.pos, self.ctx());
        if m < 2 || m > n {
            return Err(HostError::Symbol {
                name: p.program.clone(),
                what: format!("takes 2 to {n} tokens a run, not {m}"),
            });
        }
        if pos + n > ctx {
            return Err(HostError::ContextFull {
                pos: pos + n - 1,
                ctx,
            });
        }
        let pos16 = |v: usize| {
            u16::try_from(v).map_err(|_| HostError::Symbol {
                name: "pos_idx".into(),
                what: format!("cannot hold position {v} in u16"),
            })
        };
        let (xw, cw, vw) = (
            padded(self.meta.hidden) as usize,
            padded(self.meta.ctx) as usize,
            padded(self.meta.vocab) as usize,
        );
        let mut x = vec![0f32; n * xw];
        let mut pos_idx = vec![0u16; n * LANES];
        let mut kv_idx = vec![self.meta.kv_junk_offset; n * LANES];
        let mut mask = vec![f32::NEG_INFINITY; n * cw];
        for k in 0..n {
            let t = tokens.get(k).copied().unwrap_or(0);
            let row = self.embedding.row(t)?;
            x[k * xw..k * xw + row.len()].copy_from_slice(&row);
            let at = pos + k;
            pos_idx[k * LANES..(k + 1) * LANES].fill(pos16(at)?);
            kv_idx[k * LANES + at % LANES] = pos16(at / LANES)?;
            mask[k * cw..k * cw + at + 1].fill(0.0);
        }
        let d = &mut self.device;
        d.select_program(Some(&p.program))?;
        let run = (|| -> Result<(StepStats, Vec<f32>), HostError> {
            d.write_symbol("x_in", &f32_bytes(&x))?;
            d.write_symbol("pos_idx", &u16_bytes(&pos_idx))?;
            d.write_symbol("kv_idx", &u16_bytes(&kv_idx))?;
            d.write_symbol("attn_mask", &f32_bytes(&mask))?;
            let stats = d.run()?;
            Ok((stats, f32_values(&d.read_symbol("logits")?)))
        })();
        d.select_program(None)?;
        let (stats, all) = run?;
        if all.len() != n * vw {
            return Err(HostError::Symbol {
                name: format!("{}:logits", p.program),
                what: format!("read back {} values, expected {}", all.len(), n * vw),
            });
        }
        let vocab = self.meta.vocab as usize;
        for (k, &t) in tokens.iter().enumerate() {
            let row = &all[k * vw..k * vw + vocab];
            if let Some(c) = self.checker.as_mut() {
                c.check_token(&mut self.device, self.steps + k, t, row, k + 1 == m)?;
            }
            self.mask[pos + k] = 0.0;
        }
        self.pos += m;
        self.steps += m;
        let last = all[(m - 1) * vw..(m - 1) * vw + vocab].to_vec();
        Ok((last, stats))
    }

    /// Generates after `prompt` as `q35c run` does (same sampler, seeds and
    /// stop rules): prefill one run per prompt token, then pick, stream
    /// (`on_token` returns `false` to stop) and feed one token at a time. A
    /// prompt longer than the compiled context is an error before anything
    /// runs.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<HostGeneration, HostError> {
        if prompt.is_empty() {
            return Err(HostError::EmptyPrompt);
        }
        let ctx = self.ctx();
        if self.pos + prompt.len() > ctx {
            return Err(HostError::PromptTooLong {
                tokens: self.pos + prompt.len(),
                ctx,
            });
        }
        if let Some(&t) = prompt.iter().find(|&&t| t >= self.meta.vocab) {
            return Err(EmbeddingError::Token {
                token: t,
                vocab: self.meta.vocab as usize,
            }
            .into());
        }
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let mut steps = Vec::new();
        let mut logits = Vec::new();
        let mut rest = prompt;
        while !rest.is_empty() {
            let pos = self.pos;
            let chunk = match self.prefill_tokens() {
                Some(n) if rest.len() >= 2 && pos + n <= ctx => rest.len().min(n),
                _ => 1,
            };
            let (l, stats) = if chunk > 1 {
                self.prefill_chunk(&rest[..chunk])?
            } else {
                self.step(rest[0])?
            };
            logits = l;
            steps.push(StepRecord {
                token: rest[0],
                pos,
                prefill: true,
                tokens: chunk,
                chunk: chunk > 1,
                bucket: if chunk > 1 {
                    None
                } else {
                    self.bucket_at(pos).map(|b| b.positions)
                },
                stats,
            });
            rest = &rest[chunk..];
        }
        let mut tokens = Vec::new();
        if options.max_tokens == 0 {
            return Ok(HostGeneration {
                tokens,
                stop: StopReason::MaxTokens,
                prompt_tokens: prompt.len(),
                steps,
            });
        }
        let stop = loop {
            let tok = sampler.sample(&logits);
            tokens.push(tok);
            if !on_token(tok) {
                break StopReason::Callback;
            }
            if options.stop_tokens.contains(&tok) {
                break StopReason::StopToken(tok);
            }
            if tokens.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            if self.pos >= ctx {
                break StopReason::ContextFull;
            }
            let pos = self.pos;
            let (l, stats) = self.step(tok)?;
            logits = l;
            steps.push(StepRecord {
                token: tok,
                pos,
                prefill: false,
                tokens: 1,
                chunk: false,
                bucket: self.bucket_at(pos).map(|b| b.positions),
                stats,
            });
        };
        Ok(HostGeneration {
            tokens,
            stop,
            prompt_tokens: prompt.len(),
            steps,
        })
    }
}
