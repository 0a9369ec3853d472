//! The interpreter and the golden model side by side, token by token.
//!
//! [`Lockstep`] feeds each token to both (one token per `@decode` call,
//! the position advancing, the KV cache threaded through the IR's
//! function) and compares, bit for bit, every block's cached keys and
//! values (the IR's `q35.kv_write` results against
//! [`GoldenSession::keys`]/[`GoldenSession::values`]; positions not yet
//! written must still be `+0.0`) and then the logits (the function's
//! first result: `q35.lm_head`, or the `q35.qmatmul` that replaces it
//! after `q35-quantize-activations`). The
//! first difference is an [`InterpError::Mismatch`] naming the op whose
//! result differs, the token and the position, and both values.

use q35_contract::{GoldenModel, GoldenSession};

use super::{InterpError, Interpreter, OpInfo, OpKind, Tensor};

/// The interpreter and the golden model, run in lockstep.
#[derive(Debug)]
pub struct Lockstep<'i, 'w> {
    interp: &'i Interpreter<'w>,
    golden: &'i GoldenModel,
    session: GoldenSession,
    /// `None` only while a step runs.
    cache: Option<Tensor>,
    index: usize,
}

/// One value and its bits, for messages.
fn show(x: f32) -> String {
    format!("{x:e} (0x{:08x})", x.to_bits())
}

impl<'i, 'w> Lockstep<'i, 'w> {
    /// Starts both from an empty KV cache; the IR's cache must have one
    /// layer per golden block and the golden model's KV width.
    pub fn new(interp: &'i Interpreter<'w>, golden: &'i GoldenModel) -> Result<Self, InterpError> {
        let cache = interp.new_cache()?;
        let a = golden.arch();
        let [layers, _, _, kvh, hd] = <[usize; 5]>::try_from(cache.dims())
            .map_err(|_| InterpError::Module(format!("the IR's KV cache {cache} is not 5-D")))?;
        if (layers, kvh * hd) != (a.blocks as usize, a.kv_dim() as usize) {
            return Err(InterpError::Module(format!(
                "the IR's KV cache {cache} holds {layers} layers of {} values; the golden model has {} blocks of {}",
                kvh * hd,
                a.blocks,
                a.kv_dim()
            )));
        }
        Ok(Lockstep {
            interp,
            golden,
            session: golden.new_session(),
            cache: Some(cache),
            index: 0,
        })
    }

    /// The position the next token takes.
    pub fn position(&self) -> usize {
        self.session.position()
    }

    /// The IR's KV cache after the last step.
    pub fn cache(&self) -> Option<&Tensor> {
        self.cache.as_ref()
    }

    /// The golden model's session after the last step.
    pub fn session(&self) -> &GoldenSession {
        &self.session
    }

    /// Runs `token` through both; returns the (equal) logits, or the first
    /// difference.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, InterpError> {
        let index = self.index;
        let position = self.session.position();
        let cache = self
            .cache
            .take()
            .ok_or_else(|| InterpError::Module("a previous step failed".into()))?;
        let got = self.interp.decode(&[token], position, cache)?;
        let want = self
            .golden
            .step(&mut self.session, token)
            .map_err(|e| InterpError::Golden {
                index,
                message: e.to_string(),
            })?;
        self.index += 1;
        let mismatch = |op: Option<OpInfo>, detail: String| {
            let (location, op) = op.map_or_else(
                || ("?".to_owned(), "?".to_owned()),
                |o| (o.location, o.kind.name().to_owned()),
            );
            InterpError::Mismatch {
                index,
                token,
                position,
                location,
                op,
                detail,
            }
        };
        let kv_write = |layer: usize| {
            self.interp
                .ops()
                .find(|o| o.kind == OpKind::KvWrite && o.layer == Some(layer))
        };
        let logits_op = || self.interp.returned_by(0);
        let [layers, _, positions, kvh, hd] =
            <[usize; 5]>::try_from(got.cache.dims()).map_err(|_| {
                InterpError::Module(format!("the IR returned a KV cache {}", got.cache))
            })?;
        let kvd = kvh * hd;
        let plane = positions * kvd;
        let written = (position + 1) * kvd;
        for layer in 0..layers {
            for (which, name, golden) in [
                (0, "keys", self.session.keys(layer)),
                (1, "values", self.session.values(layer)),
            ] {
                let golden = golden.unwrap_or_default();
                let ir = &got.cache.data()[(layer * 2 + which) * plane..][..plane];
                let first = (0..plane).find(|&i| {
                    let g = if i < written {
                        golden.get(i).copied()
                    } else {
                        Some(0.0)
                    };
                    g.map(f32::to_bits) != Some(ir[i].to_bits())
                });
                if let Some(i) = first {
                    let (p, h, d) = (i / kvd, (i % kvd) / hd, i % hd);
                    let g = if i < written {
                        golden.get(i).copied()
                    } else {
                        Some(0.0)
                    };
                    return Err(mismatch(
                        kv_write(layer),
                        format!(
                            "cached {name} of layer {layer} at position {p}, kv head {h}, dim {d}: IR {} vs golden {}",
                            show(ir[i]),
                            g.map_or_else(|| "(none)".to_owned(), show)
                        ),
                    ));
                }
            }
        }
        let logits = got.logits.data();
        if logits.len() != want.len() {
            return Err(mismatch(
                logits_op(),
                format!(
                    "the IR gives {} logits, the golden model {}",
                    logits.len(),
                    want.len()
                ),
            ));
        }
        if let Some(i) = (0..want.len()).find(|&i| logits[i].to_bits() != want[i].to_bits()) {
            return Err(mismatch(
                logits_op(),
                format!(
                    "logit {i}: IR {} vs golden {}",
                    show(logits[i]),
                    show(want[i])
                ),
            ));
        }
        self.cache = Some(got.cache);
        Ok(want)
    }
}
