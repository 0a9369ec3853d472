//! `--check`: the golden integer model run beside the device, compared
//! after every step bit for bit -- the logits, and every block's KV cache
//! for positions `0..=pos` -- stopping at the first difference.
//!
//! The KV cache symbols (docs/lpubin.md 3.4, "Symbols the host binds"):
//! `kcache_<b>` is f32 `[kv_dim, (W+1)*320]` with `W = ceil(ctx/320)`,
//! element `(h*head_dim + d, t)` the key `d` of kv head `h` at position `t`
//! (the last 320 columns of each row are junk); `vcache_<b>` is f32
//! `[ctx, Wv*320]` with `Wv = ceil(kv_dim/320)`, element `(t, c)` value `c`
//! at position `t`. A batched program (metadata `batch` = B) has such a
//! pair per user, `kcache_<b>.u<u>` and `vcache_<b>.u<u>`; the checker keeps
//! a golden session per user and compares user `u`'s.

use std::fmt;

use q35_contract::{GoldenModel, GoldenSession};

use crate::device::{Device, f32_values};
use crate::layout::LANES;
use crate::meta::HostMeta;
use crate::session::HostError;

/// What differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The logits.
    Logits,
    /// Block `b`'s cached keys.
    Keys(usize),
    /// Block `b`'s cached values.
    Values(usize),
}

/// The first difference between the device and the golden model.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Logits or which block's keys or values.
    pub part: Part,
    /// Step (0-based run of the program: prompt tokens, then generated).
    pub step: usize,
    /// The token that step ran.
    pub token: u32,
    /// The position that step ran at.
    pub pos: usize,
    /// For the KV cache: the cached position that differs.
    pub position: Option<usize>,
    /// The element: the logit index, or the KV channel `h*head_dim + d`.
    pub element: usize,
    /// `head_dim`, to name kv head and dimension.
    pub head_dim: usize,
    /// The golden model's value.
    pub golden: f32,
    /// The device's value.
    pub device: f32,
    /// The user of a batch (`None`: a program of one user).
    pub user: Option<usize>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = self.user {
            write!(f, "user {u}, ")?;
        }
        write!(
            f,
            "step {} (token {} at position {}): ",
            self.step, self.token, self.pos
        )?;
        let hd = self.head_dim.max(1);
        match (self.part, self.position) {
            (Part::Logits, _) => write!(f, "logit {} differs", self.element)?,
            (Part::Keys(b), Some(t)) | (Part::Values(b), Some(t)) => {
                let (what, sym) = match self.part {
                    Part::Keys(_) => ("key", format!("kcache_{b} element ({}, {t})", self.element)),
                    _ => (
                        "value",
                        format!("vcache_{b} element ({t}, {})", self.element),
                    ),
                };
                write!(
                    f,
                    "block {b} {what} at cached position {t}, kv head {} dim {} (channel {}, {sym}) differs",
                    self.element / hd,
                    self.element % hd,
                    self.element
                )?;
            }
            (Part::Keys(b), None) | (Part::Values(b), None) => {
                write!(f, "block {b} cache element {} differs", self.element)?;
            }
        }
        write!(
            f,
            ": golden {:e} ({:#010x}), device {:e} ({:#010x})",
            self.golden,
            self.golden.to_bits(),
            self.device,
            self.device.to_bits()
        )
    }
}

/// The golden model and its session, stepping beside a device.
#[derive(Debug)]
pub struct Checker {
    golden: GoldenModel,
    /// A session per user of the batch (one for a program of one user).
    sessions: Vec<GoldenSession>,
    ctx: usize,
    kv_dim: usize,
    head_dim: usize,
    blocks: usize,
}

/// `ceil(n / 320)`.
fn words(n: usize) -> usize {
    n.div_ceil(LANES)
}

impl Checker {
    /// A checker for a program whose metadata is `meta`. The golden model
    /// must have the program's shape and hold `ctx` positions; when the
    /// metadata records a weights hash, the golden model must have it.
    pub fn new(golden: GoldenModel, meta: &HostMeta) -> Result<Checker, HostError> {
        let a = golden.arch().clone();
        let kv_dim = (a.kv_heads * a.head_dim) as usize;
        for (key, m, g) in [
            ("vocab", meta.vocab as usize, a.vocab as usize),
            ("hidden", meta.hidden as usize, a.hidden as usize),
            ("blocks", meta.blocks as usize, a.blocks as usize),
            ("kv_dim", meta.kv_dim as usize, kv_dim),
        ] {
            if m != g {
                return Err(HostError::Golden(format!(
                    "the program's `{key}` is {m}, the golden model's {g}"
                )));
            }
        }
        if golden.max_positions() < meta.ctx as usize {
            return Err(HostError::Golden(format!(
                "the golden model holds {} positions, the program's context is {}",
                golden.max_positions(),
                meta.ctx
            )));
        }
        if let Some(want) = &meta.weights_hash {
            let got = crate::golden::weights_hash(&golden);
            if &got != want {
                return Err(HostError::Golden(format!(
                    "the golden model's weights hash is {got}, the program was compiled from {want} (another model.toml, calibration or quantization)"
                )));
            }
        }
        let sessions = (0..meta.batch.max(1))
            .map(|_| golden.new_session())
            .collect();
        Ok(Checker {
            sessions,
            ctx: meta.ctx as usize,
            kv_dim,
            head_dim: a.head_dim as usize,
            blocks: a.blocks as usize,
            golden,
        })
    }

    /// The golden model.
    pub fn golden(&self) -> &GoldenModel {
        &self.golden
    }

    /// Runs `token` on the golden model (step `step`, at the golden
    /// session's position) and compares its logits with `logits` and its
    /// KV cache with the device's `kcache_<b>`/`vcache_<b>`.
    pub fn check<D: Device>(
        &mut self,
        device: &mut D,
        step: usize,
        token: u32,
        logits: &[f32],
    ) -> Result<(), HostError> {
        self.check_token(device, step, token, logits, true)
    }

    /// [`Checker::check`] for one token of a prefill chunk: the logits
    /// always, the KV cache (positions up to this token's) only when
    /// `kv_cache` (the chunk's last token: the device wrote the whole
    /// chunk's keys and values in one run).
    pub fn check_token<D: Device>(
        &mut self,
        device: &mut D,
        step: usize,
        token: u32,
        logits: &[f32],
        kv_cache: bool,
    ) -> Result<(), HostError> {
        self.check_user(device, 0, step, token, logits, kv_cache)
    }

    /// [`Checker::check_token`] for user `user` of a batched program
    /// (its own golden session; its part of each KV cache symbol).
    pub fn check_user<D: Device>(
        &mut self,
        device: &mut D,
        user: usize,
        step: usize,
        token: u32,
        logits: &[f32],
        kv_cache: bool,
    ) -> Result<(), HostError> {
        let users = self.sessions.len();
        let named = (users > 1).then_some(user);
        let session = self
            .sessions
            .get_mut(user)
            .ok_or_else(|| HostError::Golden(format!("no user {user} in a batch of {users}")))?;
        let pos = session.position();
        let want = self
            .golden
            .step(session, token)
            .map_err(|e| HostError::Golden(e.to_string()))?;
        let session = &self.sessions[user];
        let mismatch = |part, position, element, golden: f32, device: f32| Mismatch {
            part,
            step,
            token,
            pos,
            position,
            element,
            head_dim: self.head_dim,
            golden,
            device,
            user: named,
        };
        if let Some(i) =
            (0..want.len()).find(|&i| logits.get(i).map(|v| v.to_bits()) != Some(want[i].to_bits()))
        {
            return Err(HostError::Check(Box::new(mismatch(
                Part::Logits,
                None,
                i,
                want[i],
                logits.get(i).copied().unwrap_or(f32::NAN),
            ))));
        }
        if !kv_cache {
            return Ok(());
        }
        let kcols = (words(self.ctx) + 1) * LANES;
        let vcols = words(self.kv_dim) * LANES;
        for b in 0..self.blocks {
            let keys = session.keys(b).unwrap_or(&[]);
            let values = session.values(b).unwrap_or(&[]);
            let klen = self.kv_dim * kcols;
            let kc = &read_f32(device, &cache_symbol("kcache", b, users, user), klen)?;
            for t in 0..=pos {
                for c in 0..self.kv_dim {
                    let (g, d) = (keys[t * self.kv_dim + c], kc[c * kcols + t]);
                    if g.to_bits() != d.to_bits() {
                        return Err(HostError::Check(Box::new(mismatch(
                            Part::Keys(b),
                            Some(t),
                            c,
                            g,
                            d,
                        ))));
                    }
                }
            }
            let vlen = self.ctx * vcols;
            let vc = &read_f32(device, &cache_symbol("vcache", b, users, user), vlen)?;
            for t in 0..=pos {
                for c in 0..self.kv_dim {
                    let (g, d) = (values[t * self.kv_dim + c], vc[t * vcols + c]);
                    if g.to_bits() != d.to_bits() {
                        return Err(HostError::Check(Box::new(mismatch(
                            Part::Values(b),
                            Some(t),
                            c,
                            g,
                            d,
                        ))));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Symbol `name` as `len` f32 values.
/// The symbol of block `b`'s `kind` cache (`kcache`, `vcache`) for `user`
/// of a program of `users`: `kcache_<b>`, or `kcache_<b>.u<user>` in a batch.
fn cache_symbol(kind: &str, b: usize, users: usize, user: usize) -> String {
    if users > 1 {
        format!("{kind}_{b}.u{user}")
    } else {
        format!("{kind}_{b}")
    }
}

fn read_f32<D: Device>(device: &mut D, name: &str, len: usize) -> Result<Vec<f32>, HostError> {
    let bytes = device.read_symbol(name)?;
    if bytes.len() != 4 * len {
        return Err(HostError::Symbol {
            name: name.to_string(),
            what: format!(
                "holds {} bytes; the KV cache layout needs {len} f32 ({} bytes)",
                bytes.len(),
                4 * len
            ),
        });
    }
    Ok(f32_values(&bytes))
}
