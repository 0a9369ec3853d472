//! Text generation: prefill the prompt, then pick and feed one token at a
//! time, streaming each to a callback, until a stop token, the token limit,
//! a full context or the callback says stop.

use std::time::{Duration, Instant};

use crate::ReferenceError;
use crate::model::{Logits, Model};
use crate::sampling::{Sampler, SamplingParams};
use crate::session::Session;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Greedy or sampled selection.
    pub sampling: SamplingParams,
    /// Tokens that end generation (typically the EOS token); a stop token is
    /// included in the output.
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (e.g. EOS) was generated.
    StopToken(u32),
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
    /// The streaming callback asked to stop.
    Callback,
}

impl StopReason {
    /// A short name for reports (`eos`, `max_tokens`, `context_full`, `callback`).
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::StopToken(_) => "stop_token",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
            StopReason::Callback => "callback",
        }
    }
}

/// The result of [`Model::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated token IDs (a final stop token included).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop: StopReason,
    /// Prompt tokens run in the prefill.
    pub prompt_tokens: usize,
    /// Wall time of the prefill (prompt forward pass and first pick).
    pub prefill_time: Duration,
    /// Wall time of the decode steps after the first token.
    pub decode_time: Duration,
}

impl Model {
    /// Generates after `prompt`, continuing `session` (whose earlier tokens,
    /// if any, are the prompt's context). `on_token` sees each token as it is
    /// picked and returns `false` to stop.
    pub fn generate(
        &self,
        session: &mut Session,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation, ReferenceError> {
        if prompt.is_empty() {
            return Err(ReferenceError::EmptyInput);
        }
        let needed = session.len() + prompt.len();
        if needed > session.capacity() {
            return Err(ReferenceError::ContextOverflow {
                needed,
                context: session.capacity(),
            });
        }
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let t0 = Instant::now();
        let mut tokens = Vec::new();
        if options.max_tokens == 0 {
            self.forward(session, prompt, Logits::None)?;
            return Ok(Generation {
                tokens,
                stop: StopReason::MaxTokens,
                prompt_tokens: prompt.len(),
                prefill_time: t0.elapsed(),
                decode_time: Duration::ZERO,
            });
        }
        let mut logits = self.forward(session, prompt, Logits::Last)?;
        let mut prefill_time = None;
        let stop = loop {
            let tok = sampler.sample(&logits);
            tokens.push(tok);
            if prefill_time.is_none() {
                prefill_time = Some(t0.elapsed());
            }
            if !on_token(tok) {
                break StopReason::Callback;
            }
            if options.stop_tokens.contains(&tok) {
                break StopReason::StopToken(tok);
            }
            if tokens.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            if session.len() >= session.capacity() {
                break StopReason::ContextFull;
            }
            logits = self.forward(session, &[tok], Logits::Last)?;
        };
        let prefill_time = prefill_time.unwrap_or_default();
        Ok(Generation {
            tokens,
            stop,
            prompt_tokens: prompt.len(),
            prefill_time,
            decode_time: t0.elapsed().saturating_sub(prefill_time),
        })
    }
}
