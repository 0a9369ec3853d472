//! Accuracy measures: perplexity as llama.cpp's `llama-perplexity` computes
//! it, and the KL divergence / top-1 agreement of a candidate model (e.g. a
//! quantized one) against the reference on the same positions.
//!
//! The protocol (llama.cpp `tools/perplexity`, `perplexity()`): the text is
//! tokenized once; it holds `floor(n_tokens / ctx)` non-overlapping windows
//! of `ctx` tokens (optionally capped); each window runs from an empty KV
//! cache (its first token replaced by BOS when the model adds BOS); the
//! logits at window positions `first = ctx / 2` to `ctx - 2` score the token
//! that follows each, so `ctx - 1 - ctx / 2` tokens a window; perplexity is
//! `exp(total NLL / scored tokens)`.

use crate::ReferenceError;
use crate::kernels::{argmax, log_sum_exp};
use crate::model::{Logits, Model};

/// Windows to score.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityOptions {
    /// Window length in tokens.
    pub ctx: usize,
    /// Score only the first this-many windows (`None`: all whole windows).
    pub windows: Option<usize>,
    /// Replace each window's first token by this one (BOS), as llama.cpp does
    /// for models that add BOS. SmolLM2 does not.
    pub bos: Option<u32>,
}

/// One window's score.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowScore {
    /// Index of the window's first token in the text.
    pub start: usize,
    /// Sum of `-ln p(token)` over the scored tokens.
    pub nll_sum: f64,
    /// Tokens scored.
    pub count: usize,
}

/// A perplexity measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// Window length.
    pub ctx: usize,
    /// First scored logit position in a window (`ctx / 2`).
    pub first: usize,
    /// Tokens in the whole text.
    pub text_tokens: usize,
    /// Windows scored.
    pub windows: usize,
    /// Tokens scored (`windows * (ctx - 1 - first)`).
    pub scored_tokens: usize,
    /// Total negative log-likelihood (nats).
    pub nll_sum: f64,
    /// `exp(nll_sum / scored_tokens)`.
    pub ppl: f64,
    /// Per window.
    pub per_window: Vec<WindowScore>,
}

/// How a candidate model's next-token distributions differ from the
/// reference's on the scored positions.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonReport {
    /// The reference model's perplexity.
    pub reference: PerplexityReport,
    /// The candidate model's perplexity (same windows).
    pub candidate: PerplexityReport,
    /// Mean over positions of KL(reference || candidate), nats.
    pub mean_kld: f64,
    /// Largest per-position KL divergence.
    pub max_kld: f64,
    /// Fraction of positions where both models' most likely token agree.
    pub top1_agreement: f64,
    /// Positions compared.
    pub positions: usize,
}

/// Checks options against the text and model; returns the window count.
fn plan(model: &Model, n_tokens: usize, opts: &PerplexityOptions) -> Result<usize, ReferenceError> {
    if opts.ctx < 4 {
        return Err(ReferenceError::InvalidParameter {
            name: "ctx",
            what: format!("{} is too short (at least 4 tokens)", opts.ctx),
        });
    }
    if opts.ctx > model.config().context {
        return Err(ReferenceError::ContextOverflow {
            needed: opts.ctx,
            context: model.config().context,
        });
    }
    let available = n_tokens / opts.ctx;
    let windows = match opts.windows {
        Some(0) => {
            return Err(ReferenceError::InvalidParameter {
                name: "windows",
                what: "must be at least 1".into(),
            });
        }
        Some(w) => w,
        None => available.max(1),
    };
    if windows > available {
        return Err(ReferenceError::NotEnoughTokens {
            needed: windows * opts.ctx,
            have: n_tokens,
            what: format!("{windows} windows of {} tokens", opts.ctx),
        });
    }
    Ok(windows)
}

/// `ln p(target)` under one row of logits (f64).
pub fn log_prob(logits: &[f32], target: u32) -> f64 {
    f64::from(logits[target as usize]) - log_sum_exp(logits)
}

/// KL(P || Q) in nats between the softmax distributions of two logit rows.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> Result<f64, ReferenceError> {
    if p_logits.len() != q_logits.len() || p_logits.is_empty() {
        return Err(ReferenceError::LogitsMismatch(format!(
            "rows of {} and {} logits",
            p_logits.len(),
            q_logits.len()
        )));
    }
    let lp = log_sum_exp(p_logits);
    let lq = log_sum_exp(q_logits);
    let mut kl = 0.0f64;
    for (&a, &b) in p_logits.iter().zip(q_logits) {
        let log_p = f64::from(a) - lp;
        let log_q = f64::from(b) - lq;
        kl += log_p.exp() * (log_p - log_q);
    }
    Ok(kl.max(0.0))
}

/// Runs window `w` and returns its logits rows for positions `first..ctx`.
fn window_logits(
    model: &Model,
    tokens: &[u32],
    w: usize,
    opts: &PerplexityOptions,
) -> Result<Vec<f32>, ReferenceError> {
    let start = w * opts.ctx;
    let mut chunk = tokens[start..start + opts.ctx].to_vec();
    if let Some(bos) = opts.bos {
        chunk[0] = bos;
    }
    let mut session = model.new_session_with_capacity(opts.ctx)?;
    model.forward(&mut session, &chunk, Logits::From(opts.ctx / 2))
}

fn score_window(
    logits: &[f32],
    vocab: usize,
    tokens: &[u32],
    start: usize,
    ctx: usize,
) -> WindowScore {
    let first = ctx / 2;
    let mut nll = 0.0f64;
    let mut count = 0;
    for j in first..ctx - 1 {
        let row = &logits[(j - first) * vocab..(j - first + 1) * vocab];
        nll -= log_prob(row, tokens[start + j + 1]);
        count += 1;
    }
    WindowScore {
        start,
        nll_sum: nll,
        count,
    }
}

fn report(ctx: usize, text_tokens: usize, per_window: Vec<WindowScore>) -> PerplexityReport {
    let nll_sum: f64 = per_window.iter().map(|w| w.nll_sum).sum();
    let scored: usize = per_window.iter().map(|w| w.count).sum();
    PerplexityReport {
        ctx,
        first: ctx / 2,
        text_tokens,
        windows: per_window.len(),
        scored_tokens: scored,
        nll_sum,
        ppl: (nll_sum / scored as f64).exp(),
        per_window,
    }
}

impl Model {
    /// Perplexity of `tokens` (a whole tokenized text) with llama-perplexity's
    /// windows; see the module docs.
    pub fn perplexity(
        &self,
        tokens: &[u32],
        opts: &PerplexityOptions,
    ) -> Result<PerplexityReport, ReferenceError> {
        let windows = plan(self, tokens.len(), opts)?;
        let vocab = self.config().vocab;
        let mut per_window = Vec::with_capacity(windows);
        for w in 0..windows {
            let logits = window_logits(self, tokens, w, opts)?;
            per_window.push(score_window(&logits, vocab, tokens, w * opts.ctx, opts.ctx));
        }
        Ok(report(opts.ctx, tokens.len(), per_window))
    }

    /// Perplexity of both models and the KL divergence / top-1 agreement of
    /// `candidate` against `self` (the reference) on the scored positions
    /// (the same windows and positions as [`Model::perplexity`]).
    pub fn compare(
        &self,
        candidate: &Model,
        tokens: &[u32],
        opts: &PerplexityOptions,
    ) -> Result<ComparisonReport, ReferenceError> {
        let vocab = self.config().vocab;
        if candidate.config().vocab != vocab {
            return Err(ReferenceError::LogitsMismatch(format!(
                "vocabularies of {vocab} and {} tokens",
                candidate.config().vocab
            )));
        }
        let windows = plan(self, tokens.len(), opts)?;
        plan(candidate, tokens.len(), opts)?;
        let (mut rw, mut cw) = (Vec::new(), Vec::new());
        let (mut kl_sum, mut kl_max, mut agree, mut positions) = (0.0f64, 0.0f64, 0usize, 0usize);
        for w in 0..windows {
            let start = w * opts.ctx;
            let rl = window_logits(self, tokens, w, opts)?;
            let cl = window_logits(candidate, tokens, w, opts)?;
            rw.push(score_window(&rl, vocab, tokens, start, opts.ctx));
            cw.push(score_window(&cl, vocab, tokens, start, opts.ctx));
            for j in 0..opts.ctx - 1 - opts.ctx / 2 {
                let r = &rl[j * vocab..(j + 1) * vocab];
                let c = &cl[j * vocab..(j + 1) * vocab];
                let kl = kl_divergence(r, c)?;
                kl_sum += kl;
                kl_max = kl_max.max(kl);
                agree += usize::from(argmax(r) == argmax(c));
                positions += 1;
            }
        }
        Ok(ComparisonReport {
            reference: report(opts.ctx, tokens.len(), rw),
            candidate: report(opts.ctx, tokens.len(), cw),
            mean_kld: kl_sum / positions as f64,
            max_kld: kl_max,
            top1_agreement: agree as f64 / positions as f64,
            positions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_rows_is_zero_and_positive_otherwise() {
        let a = [1.0f32, 2.0, 3.0];
        assert!(kl_divergence(&a, &a).expect("same size") < 1e-15);
        let b = [3.0f32, 2.0, 1.0];
        let kl = kl_divergence(&a, &b).expect("same size");
        // Hand computation with p = softmax(a), q = softmax(b) = reverse(p).
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        let p: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp() / z).collect();
        let want: f64 = (0..3).map(|i| p[i] * (p[i] / p[2 - i]).ln()).sum();
        assert!((kl - want).abs() < 1e-12, "{kl} vs {want}");
        assert!(kl_divergence(&a, &b[..2]).is_err());
    }

    #[test]
    fn log_prob_is_log_softmax() {
        let l = [0.0f32, (2.0f32).ln()];
        assert!((log_prob(&l, 1) - (2.0f64 / 3.0).ln()).abs() < 1e-7);
    }
}
