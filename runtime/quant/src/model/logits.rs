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
        if ctx < 4 {
            return Err(ModelQuantError::Input(format!(
                "window of {ctx} tokens is too short (at least 4)"
            )));
        }
        let available = tokens.len() / ctx;
        let windows = windows.unwrap_or(available);
        if windows == 0 || windows > available {
            return Err(ModelQuantError::Input(format!(
                "the evaluation text has {} tokens: {available} whole windows of {ctx}, {windows} requested",
                tokens.len()
            )));
        }
        let vocab = model.config().vocab;
        let mut r = ReferenceLogits {
            tokens: tokens[..windows * ctx].to_vec(),
            ctx,
            vocab,
            logits: Vec::with_capacity(windows),
            nll: 0.0,
            positions: 0,
        };
        if let Some(bos) = bos {
            for window in r.tokens.chunks_exact_mut(ctx) {
                window[0] = bos;
            }
        }
        for w in 0..windows {
            let l = r.window_logits(model, w)?;
            for (j, row) in l.chunks_exact(vocab).enumerate() {
                r.nll -= log_prob(row, r.target(w, j));
                r.positions += 1;
            }
            r.logits.push(l);
        }
        Ok(r)
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
        if candidate.config().vocab != self.vocab {
            return Err(ModelQuantError::Input(format!(
                "candidate vocabulary {} differs from the reference's {}",
                candidate.config().vocab,
                self.vocab
            )));
        }
        self.compare_with(|w| self.window_logits(candidate, w))
    }

    /// Scores the golden quantized model on the same windows.
    pub fn compare_golden(&self, golden: &GoldenModel) -> Result<EvalReport, ModelQuantError> {
        if golden.config().vocab != self.vocab {
            return Err(ModelQuantError::Input(format!(
                "golden model vocabulary {} differs from the reference's {}",
                golden.config().vocab,
                self.vocab
            )));
        }
        self.compare_with(|w| {
            let mut s = golden.new_session();
            let toks = &self.tokens[w * self.ctx..(w + 1) * self.ctx - 1];
            golden.run_from(&mut s, toks, self.first())
        })
    }

    /// Scores candidate logits (`window -> (ctx - 1 - ctx/2) x vocab`).
    fn compare_with(
        &self,
        mut candidate: impl FnMut(usize) -> Result<Vec<f32>, ModelQuantError>,
    ) -> Result<EvalReport, ModelQuantError> {
        let (mut nll, mut kl_sum, mut kl_max, mut agree, mut n) =
            (0f64, 0f64, 0f64, 0usize, 0usize);
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
                nll -= log_prob(c, self.target(w, j));
                let kl = kl_divergence(r, c)?;
                kl_sum += kl;
                kl_max = kl_max.max(kl);
                agree += usize::from(argmax(r) == argmax(c));
                n += 1;
            }
        }
        Ok(EvalReport {
            windows: self.logits.len(),
            ctx: self.ctx,
            positions: n,
            reference_ppl: self.ppl(),
            ppl: (nll / n as f64).exp(),
            nll_sum: nll,
            mean_kld: kl_sum / n as f64,
            max_kld: kl_max,
            top1_agreement: agree as f64 / n as f64,
        })
    }
}
