//! The token loop of a batched program (metadata `batch` = B > 1,
//! docs/lpubin.md 3.4): one run takes one token of each of B sequences.
//!
//! Per run the host fills row `u` of every step symbol for user `u` exactly
//! as [`crate::session`] fills the one row of a single user's step (its
//! token's embedding in `x_in`, its position in `pos_idx`, its K column in
//! `kv_idx`, its mask in `attn_mask`) and reads user `u`'s logits from row
//! `u` of `logits`. Each user has its own KV caches (`kcache_<b>.u<u>` and
//! `vcache_<b>.u<u>`), so users stand at different positions:
//! a user runs its prompt a token a run, then samples and feeds its own
//! tokens, all users in lockstep.
//!
//! A user that has stopped (a stop token, `max_tokens`, a full context, or
//! the callback) still has a row in every later run: it runs token 0 with
//! every `kv_idx` lane on the junk word and the mask open at position 0
//! only, so it writes no key; its value lands on its own cache's position
//! 0, which nothing reads again (a stopped user never runs again). Its
//! logits are not read.
//!
//! With a checker ([`BatchSession::set_checker`]) every running user's
//! logits and its part of every KV cache are compared with its own golden
//! session after every run, bit for bit.

use std::sync::Arc;

use q35_lpubin::LpuBinary;
use q35_reference::{GenerateOptions, Sampler, StopReason};
use q35_tokenizer::Tokenizer;

use crate::check::Checker;
use crate::device::{Device, StepStats, f32_bytes, f32_values, u16_bytes};
use crate::embedding::{EmbeddingError, EmbeddingTable};
use crate::layout::LANES;
use crate::meta::HostMeta;
use crate::session::{
    HostError, HostGeneration, StepRecord, check_rows, load_meta, load_tokenizer, padded,
    prompt_tokens_with,
};

/// Each user's logits from one run: `None` for a user whose row idled.
pub type UserLogits = Vec<Option<Vec<f32>>>;

/// One run of a batched program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRun {
    /// Per user: the token it ran and at which position, whether it was a
    /// prompt token (`None`: the user had stopped).
    pub rows: Vec<Option<(u32, usize, bool)>>,
    /// The context bucket the run took (its positions; `None`: the
    /// whole-context program).
    pub bucket: Option<u32>,
    /// What the run cost.
    pub stats: StepStats,
}

/// The result of [`BatchSession::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchGeneration {
    /// Per user, as [`crate::Session::generate`] reports one sequence (its
    /// steps are the runs it took part in, each with the run's cost).
    pub users: Vec<HostGeneration>,
    /// Every run, in order.
    pub runs: Vec<BatchRun>,
}

/// A batched compiled model bound to a device.
#[derive(Debug)]
pub struct BatchSession<D: Device> {
    device: D,
    meta: HostMeta,
    embedding: EmbeddingTable,
    tokenizer: Option<Arc<Tokenizer>>,
    checker: Option<Checker>,
    /// Per user: the position its next token takes.
    pos: Vec<usize>,
    runs: usize,
    /// Whether runs use the context buckets.
    buckets: bool,
    /// The bucket the last run took.
    last_bucket: Option<u32>,
}

impl<D: Device> BatchSession<D> {
    /// Binds `binary` (already loaded on `device`), whose metadata says it
    /// serves a batch: checks that every step symbol has a row per user.
    pub fn new(device: D, binary: &LpuBinary) -> Result<BatchSession<D>, HostError> {
        Self::new_on(device, binary, &[binary])
    }

    /// [`BatchSession::new`] for a batched model split over a system of
    /// chips: the host's sections are `binary`'s (chip 0's), each symbol is
    /// checked in the first of `chips` whose program has it.
    pub fn new_on(
        device: D,
        binary: &LpuBinary,
        chips: &[&LpuBinary],
    ) -> Result<BatchSession<D>, HostError> {
        let (meta, embedding) = load_meta(binary)?;
        let users = meta.batch.max(1);
        check_rows(
            &meta,
            users,
            |name| chips.iter().find_map(|c| c.symbol(name)),
            str::to_string,
            "is missing: the program does not take a token",
            &format!("a batch of {users} users needs"),
        )?;
        crate::session::check_buckets(&meta, binary)?;
        let tokenizer = load_tokenizer(binary, &meta)?;
        Ok(BatchSession {
            device,
            pos: vec![0; users as usize],
            embedding,
            tokenizer: tokenizer.map(Arc::new),
            checker: None,
            runs: 0,
            buckets: true,
            last_bucket: None,
            meta,
        })
    }

    /// Whether runs use the binary's context buckets (default: yes); off,
    /// every run takes the whole-context program (same bits, more cycles).
    pub fn set_buckets(&mut self, on: bool) {
        self.buckets = on;
    }

    /// Runs `checker` (built for this binary's metadata: a golden session
    /// per user) beside the device from now on; call before the first run.
    pub fn set_checker(&mut self, checker: Checker) {
        self.checker = Some(checker);
    }

    /// The metadata.
    pub fn meta(&self) -> &HostMeta {
        &self.meta
    }

    /// Users a run serves.
    pub fn users(&self) -> usize {
        self.pos.len()
    }

    /// The tokenizer, shared.
    pub fn shared_tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, ending the session.
    pub fn into_device(self) -> D {
        self.device
    }

    /// The compiled context.
    pub fn ctx(&self) -> usize {
        self.meta.ctx as usize
    }

    /// The prompt tokens of `text`, as [`crate::Session::prompt_tokens`].
    pub fn prompt_tokens(
        &self,
        text: &str,
        chat: bool,
        system: Option<&str>,
    ) -> Result<(String, Vec<u32>), HostError> {
        prompt_tokens_with(self.tokenizer.as_deref(), text, chat, system)
    }

    /// One run: user `u` runs `feeds[u]` at its next position (`None`: the
    /// user's row idles, see the module docs). Returns each running user's
    /// logits and the run's cost.
    pub fn run(&mut self, feeds: &[Option<u32>]) -> Result<(UserLogits, StepStats), HostError> {
        let n = self.users();
        if feeds.len() != n {
            return Err(HostError::Symbol {
                name: "x_in".into(),
                what: format!("takes a row for each of {n} users, given {}", feeds.len()),
            });
        }
        let ctx = self.ctx();
        let (xw, cw, vw) = (
            padded(self.meta.hidden) as usize,
            padded(self.meta.ctx) as usize,
            padded(self.meta.vocab) as usize,
        );
        let pos16 = |v: usize| {
            u16::try_from(v).map_err(|_| HostError::Symbol {
                name: "pos_idx".into(),
                what: format!("cannot hold position {v} in u16"),
            })
        };
        let mut x = vec![0f32; n * xw];
        let mut pos_idx = vec![0u16; n * LANES];
        let mut kv_idx = vec![self.meta.kv_junk_offset; n * LANES];
        let mut mask = vec![f32::NEG_INFINITY; n * cw];
        for (u, feed) in feeds.iter().enumerate() {
            let (t, at) = match feed {
                Some(t) => {
                    let at = self.pos[u];
                    if at >= ctx {
                        return Err(HostError::ContextFull { pos: at, ctx });
                    }
                    kv_idx[u * LANES + at % LANES] = pos16(at / LANES)?;
                    (*t, at)
                }
                None => (0, 0),
            };
            let row = self.embedding.row(t)?;
            x[u * xw..u * xw + row.len()].copy_from_slice(&row);
            pos_idx[u * LANES..(u + 1) * LANES].fill(pos16(at)?);
            mask[u * cw..u * cw + at + 1].fill(0.0);
        }
        // One program serves every row: the bucket of the furthest user (an
        // idle row sits at position 0).
        let furthest = feeds
            .iter()
            .zip(&self.pos)
            .filter(|(f, _)| f.is_some())
            .map(|(_, &p)| p)
            .max()
            .unwrap_or(0);
        let bucket = if self.buckets {
            self.meta.bucket_for(furthest).cloned()
        } else {
            None
        };
        let d = &mut self.device;
        d.write_symbol("x_in", &f32_bytes(&x))?;
        d.write_symbol("pos_idx", &u16_bytes(&pos_idx))?;
        d.write_symbol("kv_idx", &u16_bytes(&kv_idx))?;
        d.write_symbol("attn_mask", &f32_bytes(&mask))?;
        let stats = d.run_program(bucket.as_ref().map(|b| b.program.as_str()))?;
        self.last_bucket = bucket.map(|b| b.positions);
        let all = f32_values(&d.read_symbol("logits")?);
        if all.len() != n * vw {
            return Err(HostError::Symbol {
                name: "logits".into(),
                what: format!("read back {} values, expected {}", all.len(), n * vw),
            });
        }
        let vocab = self.meta.vocab as usize;
        let mut out = Vec::with_capacity(n);
        for (u, feed) in feeds.iter().enumerate() {
            let Some(t) = feed else {
                out.push(None);
                continue;
            };
            let logits = all[u * vw..u * vw + vocab].to_vec();
            if let Some(c) = self.checker.as_mut() {
                c.check_user(&mut self.device, u, self.runs, *t, &logits, true)?;
            }
            self.pos[u] += 1;
            out.push(Some(logits));
        }
        self.runs += 1;
        Ok((out, stats))
    }

    /// Generates after each user's prompt (`prompts[u]`, with
    /// `options[u]`: its own sampler, seed and stop rules, as
    /// [`crate::Session::generate`] for one sequence), all users in
    /// lockstep (module docs). `on_token(u, token)` sees each generated
    /// token; `false` stops that user. Every prompt is checked before
    /// anything runs.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        options: &[GenerateOptions],
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<BatchGeneration, HostError> {
        let n = self.users();
        if prompts.len() != n || options.len() != n {
            return Err(HostError::Symbol {
                name: "x_in".into(),
                what: format!(
                    "serves {n} users: give a prompt and options for each ({} prompts, {} options)",
                    prompts.len(),
                    options.len()
                ),
            });
        }
        let ctx = self.ctx();
        for (u, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(HostError::EmptyPrompt);
            }
            if self.pos[u] + p.len() > ctx {
                return Err(HostError::PromptTooLong {
                    tokens: self.pos[u] + p.len(),
                    ctx,
                });
            }
            if let Some(&t) = p.iter().find(|&&t| t >= self.meta.vocab) {
                return Err(EmbeddingError::Token {
                    token: t,
                    vocab: self.meta.vocab as usize,
                }
                .into());
            }
        }
        struct User {
            sampler: Sampler,
            /// Prompt tokens run so far.
            fed: usize,
            /// The next token to run, once the prompt is done.
            next: Option<u32>,
            tokens: Vec<u32>,
            steps: Vec<StepRecord>,
            stop: Option<StopReason>,
        }
        let mut users = Vec::with_capacity(n);
        for o in options {
            users.push(User {
                sampler: Sampler::new(o.sampling.clone())?,
                fed: 0,
                next: None,
                tokens: Vec::new(),
                steps: Vec::new(),
                stop: None,
            });
        }
        let mut runs = Vec::new();
        while users.iter().any(|u| u.stop.is_none()) {
            let feeds: Vec<Option<(u32, bool)>> = users
                .iter()
                .zip(prompts)
                .map(|(s, p)| match (s.stop, p.get(s.fed)) {
                    (Some(_), _) => None,
                    (None, Some(&t)) => Some((t, true)),
                    (None, None) => s.next.map(|t| (t, false)),
                })
                .collect();
            let positions = self.pos.clone();
            let (logits, stats) =
                self.run(&feeds.iter().map(|f| f.map(|f| f.0)).collect::<Vec<_>>())?;
            runs.push(BatchRun {
                rows: feeds
                    .iter()
                    .zip(&positions)
                    .map(|(f, &p)| f.map(|(t, prompt)| (t, p, prompt)))
                    .collect(),
                bucket: self.last_bucket,
                stats,
            });
            for (u, ((s, feed), l)) in users.iter_mut().zip(&feeds).zip(logits).enumerate() {
                let (Some((token, prompt)), Some(l)) = (feed, l) else {
                    continue;
                };
                s.steps.push(StepRecord {
                    token: *token,
                    pos: positions[u],
                    prefill: *prompt,
                    tokens: 1,
                    chunk: false,
                    bucket: self.last_bucket,
                    stats,
                });
                if *prompt {
                    s.fed += 1;
                    if s.fed < prompts[u].len() {
                        continue;
                    }
                    if options[u].max_tokens == 0 {
                        s.stop = Some(StopReason::MaxTokens);
                        continue;
                    }
                }
                let tok = s.sampler.sample(&l);
                s.tokens.push(tok);
                s.stop = if !on_token(u, tok) {
                    Some(StopReason::Callback)
                } else if options[u].stop_tokens.contains(&tok) {
                    Some(StopReason::StopToken(tok))
                } else if s.tokens.len() >= options[u].max_tokens {
                    Some(StopReason::MaxTokens)
                } else if self.pos[u] >= ctx {
                    Some(StopReason::ContextFull)
                } else {
                    None
                };
                s.next = Some(tok);
            }
        }
        Ok(BatchGeneration {
            users: users
                .into_iter()
                .zip(prompts)
                .map(|(s, p)| HostGeneration {
                    tokens: s.tokens,
                    stop: s.stop.unwrap_or(StopReason::MaxTokens),
                    prompt_tokens: p.len(),
                    steps: s.steps,
                })
                .collect(),
            runs,
        })
    }
}
