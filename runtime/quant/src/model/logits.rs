//! End-to-end accuracy against the f32 reference: the reference's logits on
//! llama-perplexity windows ([`ReferenceLogits`]), and the perplexity, KL
//! divergence and top-1 agreement of a candidate on the same positions
//! ([`EvalReport`]).

use q35_reference::kernels::argmax;
use q35_reference::{Logits, Model, kl_divergence, log_prob};

use super::ModelQuantError;
use crate::golden::GoldenModel;

/// End-to-end accuracy of a candidate against the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Windows scored.
    pub windows: usize,
    /// Window length.
    pub ctx: usize,
    /// Positions scored.
    pub positions: usize,
    /// Reference perplexity.
    pub reference_ppl: f64,
    /// Candidate perplexity.
    pub ppl: f64,
    /// Candidate negative log-likelihood summed over the positions, nats.
    pub nll_sum: f64,
    /// Mean KL(reference || candidate), nats.
    pub mean_kld: f64,
    /// Largest per-position KL.
    pub max_kld: f64,
    /// Fraction of positions with the same most likely token.
    pub top1_agreement: f64,
}

/// The reference model's logits on the scored positions of a text, computed
/// once and compared against any number of candidates. Protocol as
/// llama-perplexity (and `q35_reference::Model::perplexity`): windows of
/// `ctx` tokens from an empty cache, positions `ctx/2 .. ctx-2` scored.
#[derive(Debug, Clone)]
pub struct ReferenceLogits {
    tokens: Vec<u32>,
    ctx: usize,
    vocab: usize,
    /// Per window: `(ctx - 1 - ctx/2) x vocab` logits.
    logits: Vec<Vec<f32>>,
    nll: f64,
    positions: usize,
}

impl ReferenceLogits {
    /// Runs the reference over `windows` windows of `ctx` tokens (`None`:
    /// every whole window).
    pub fn compute(
        model: &Model,
        tokens: &[u32],
        ctx: usize,
        windows: Option<usize>,
    ) -> Result<ReferenceLogits, ModelQuantError> {
        ReferenceLogits::compute_with_bos(model, tokens, ctx, windows, None)
    }

    /// As [`ReferenceLogits::compute`], with each window's first token
    /// replaced by `bos` when given (llama-perplexity's handling of models
    /// that add BOS; `q35_reference::PerplexityOptions::bos`). The scored
    /// targets are unchanged.
    pub fn compute_with_bos(
        model: &Model,
        tokens: &[u32],
        ctx: usize,
        windows: Option<usize>,
        bos: Option<u32>,
    ) -> Result<ReferenceLogits, ModelQuantError> {
        let windows = whole_windows(tokens.len(), ctx, windows)?;
        let mut r = ReferenceLogits {
            tokens: window_tokens(tokens, ctx, windows, bos),
            ctx,
            vocab: model.config().vocab,
            logits: Vec::with_capacity(windows),
            nll: 0.0,
            positions: 0,
        };
        for w in 0..windows {
            r.score_reference_window(model, w)?;
        }
        Ok(r)
    }

    /// Runs the reference on window `w`, adds its scored positions' negative
    /// log-likelihood and keeps its logits.
    fn score_reference_window(&mut self, model: &Model, w: usize) -> Result<(), ModelQuantError> {
        let l = self.window_logits(model, w)?;
        for (j, row) in l.chunks_exact(self.vocab).enumerate() {
            self.nll -= log_prob(row, self.target(w, j));
            self.positions += 1;
        }
        self.logits.push(l);
        Ok(())
    }

    fn first(&self) -> usize {
        self.ctx / 2
    }

    fn target(&self, w: usize, j: usize) -> u32 {
        self.tokens[w * self.ctx + self.first() + j + 1]
    }

    fn window_logits(&self, model: &Model, w: usize) -> Result<Vec<f32>, ModelQuantError> {
        let mut session = model.new_session_with_capacity(self.ctx)?;
        let toks = &self.tokens[w * self.ctx..(w + 1) * self.ctx];
        let mut l = model.forward(&mut session, toks, Logits::From(self.first()))?;
        // The last position predicts past the window: not scored.
        l.truncate((self.ctx - 1 - self.first()) * self.vocab);
        Ok(l)
    }

    /// Reference perplexity.
    pub fn ppl(&self) -> f64 {
        (self.nll / self.positions as f64).exp()
    }

    /// Window length.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Scores `candidate` (the reference's forward pass with quantized
    /// layers installed) on the same windows.
    pub fn compare(&self, candidate: &Model) -> Result<EvalReport, ModelQuantError> {
        self.check_vocab("candidate", candidate.config().vocab)?;
        self.compare_with(|w| self.window_logits(candidate, w))
    }

    /// Scores the golden quantized model on the same windows.
    pub fn compare_golden(&self, golden: &GoldenModel) -> Result<EvalReport, ModelQuantError> {
        self.check_vocab("golden model", golden.vocab())?;
        self.compare_with(|w| {
            let mut s = golden.new_session();
            let toks = &self.tokens[w * self.ctx..(w + 1) * self.ctx - 1];
            Ok(golden.run_from(&mut s, toks, self.first())?)
        })
    }

    /// An error unless `what`'s vocabulary `vocab` is the reference's.
    fn check_vocab(&self, what: &str, vocab: usize) -> Result<(), ModelQuantError> {
        if vocab == self.vocab {
            return Ok(());
        }
        Err(ModelQuantError::Input(format!(
            "{what} vocabulary {vocab} differs from the reference's {}",
            self.vocab
        )))
    }

    /// Scores candidate logits (`window -> (ctx - 1 - ctx/2) x vocab`).
    fn compare_with(
        &self,
        mut candidate: impl FnMut(usize) -> Result<Vec<f32>, ModelQuantError>,
    ) -> Result<EvalReport, ModelQuantError> {
        let mut tally = Tally::default();
        for (w, rl) in self.logits.iter().enumerate() {
            let cl = candidate(w)?;
            if cl.len() != rl.len() {
                return Err(ModelQuantError::Input(format!(
                    "candidate gave {} logits for window {w}, expected {}",
                    cl.len(),
                    rl.len()
                )));
            }
            for (j, (r, c)) in rl
                .chunks_exact(self.vocab)
                .zip(cl.chunks_exact(self.vocab))
                .enumerate()
            {
                tally.add(r, c, self.target(w, j))?;
            }
        }
        Ok(tally.report(self))
    }
}

/// The number of windows to score: `windows`, or every whole window of
/// `ctx` among `n_tokens` tokens; an error when that is none or more than
/// there are, or when `ctx` is too short to score anything.
fn whole_windows(
    n_tokens: usize,
    ctx: usize,
    windows: Option<usize>,
) -> Result<usize, ModelQuantError> {
    if ctx < 4 {
        return Err(ModelQuantError::Input(format!(
            "window of {ctx} tokens is too short (at least 4)"
        )));
    }
    let available = n_tokens / ctx;
    let windows = windows.unwrap_or(available);
    if windows == 0 || windows > available {
        return Err(ModelQuantError::Input(format!(
            "the evaluation text has {n_tokens} tokens: {available} whole windows of {ctx}, {windows} requested"
        )));
    }
    Ok(windows)
}

/// The first `windows` windows of `ctx` tokens, each one's first token
/// replaced by `bos` when given.
fn window_tokens(tokens: &[u32], ctx: usize, windows: usize, bos: Option<u32>) -> Vec<u32> {
    let mut out = tokens[..windows * ctx].to_vec();
    if let Some(bos) = bos {
        for window in out.chunks_exact_mut(ctx) {
            window[0] = bos;
        }
    }
    out
}

/// Running sums of a candidate's scores, position by position.
#[derive(Debug, Default)]
struct Tally {
    /// Candidate negative log-likelihood of the targets, nats.
    nll: f64,
    /// Sum of KL(reference || candidate).
    kl_sum: f64,
    /// Largest KL.
    kl_max: f64,
    /// Positions where both put the same token first.
    agree: usize,
    /// Positions scored.
    n: usize,
}

impl Tally {
    /// Adds one position: reference logits `r`, candidate logits `c`, the
    /// true next token `target`.
    fn add(&mut self, r: &[f32], c: &[f32], target: u32) -> Result<(), ModelQuantError> {
        self.nll -= log_prob(c, target);
        let kl = kl_divergence(r, c)?;
        self.kl_sum += kl;
        self.kl_max = self.kl_max.max(kl);
        self.agree += usize::from(argmax(r) == argmax(c));
        self.n += 1;
        Ok(())
    }

    /// The report over every position added, against `reference`.
    fn report(&self, reference: &ReferenceLogits) -> EvalReport {
        let n = self.n as f64;
        EvalReport {
            windows: reference.logits.len(),
            ctx: reference.ctx,
            positions: self.n,
            reference_ppl: reference.ppl(),
            ppl: (self.nll / n).exp(),
            nll_sum: self.nll,
            mean_kld: self.kl_sum / n,
            max_kld: self.kl_max,
            top1_agreement: self.agree as f64 / n,
        }
    }
}
