//! The metadata keys the host reads (docs/lpubin.md 3.4, "Keys the host
//! runtime reads"): the model's shape and compiled context, its special
//! tokens and chat template, the compile-time cycle prediction, and how to
//! rebuild the golden model for `--check`.
//!
//! The compiler writes a [`HostMeta`] with [`HostMeta::to_json`]; other keys
//! may sit beside these and are ignored here.

use serde::{Deserialize, Serialize};

/// How the golden model the binary was compiled from is rebuilt (the
/// quantization pipeline of `q35c`: calibration on a text for the
/// activation-aware scheme).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenRecipeMeta {
    /// The model description the binary was compiled from.
    pub model_toml: String,
    /// Calibration text (UTF-8), if the scheme calibrates.
    #[serde(default)]
    pub calib: Option<String>,
    /// Calibration window in tokens.
    pub calib_ctx: usize,
    /// Calibration windows sampled.
    pub calib_samples: usize,
}

/// The host's view of a compiled model (the `metadata` section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMeta {
    /// Model name.
    pub model: String,
    /// Vocabulary size (`logits` is f32 `[vocab]`).
    pub vocab: u32,
    /// Hidden size (`x_in` is f32 `[hidden]`).
    pub hidden: u32,
    /// Decoder blocks (`kcache_<b>`, `vcache_<b>` for `b < blocks`).
    pub blocks: u32,
    /// `kv_heads * head_dim`.
    pub kv_dim: u32,
    /// Compiled context: positions the program holds (`attn_mask` is f32
    /// `[ctx]`).
    pub ctx: u32,
    /// Beginning-of-sequence token, if the model has one.
    #[serde(default)]
    pub bos: Option<u32>,
    /// End-of-sequence token, if the model has one.
    #[serde(default)]
    pub eos: Option<u32>,
    /// Whether a plain (non-chat) prompt starts with `bos`.
    #[serde(default)]
    pub add_bos: bool,
    /// Tokens that end generation (default: `eos`).
    #[serde(default)]
    pub stop_tokens: Option<Vec<u32>>,
    /// The chat template (Jinja), if the model has one.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// The `kv_idx` value of every lane but the one that writes this
    /// position's K column (a word the program reserves as junk).
    pub kv_junk_offset: u16,
    /// Cycles one run of the program takes, as the compiler scheduled it.
    #[serde(default)]
    pub predicted_cycles_per_step: Option<u64>,
    /// How to rebuild the golden model (for `--check`).
    #[serde(default)]
    pub golden: Option<GoldenRecipeMeta>,
    /// [`crate::golden::weights_hash`] of the golden model compiled in.
    #[serde(default)]
    pub weights_hash: Option<String>,
    /// The prefill program, if the binary has one (docs/lpubin.md 3.9).
    #[serde(default)]
    pub prefill: Option<PrefillMeta>,
    /// A model split over a system of chips (docs/backend.md 8): which chip
    /// holds what. Absent for one chip (its metadata is unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemMeta>,
    /// The programs were compiled from a model with no weights
    /// (`[weights] source = "none"`): placeholder weights of the right
    /// shapes, no weight images in MEM; for timing only (cycles, MEM,
    /// links), never for text (docs/backend.md 8).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timing_only: bool,
    /// Users one run serves (a batched decode program, docs/lpubin.md
    /// 3.4): every step symbol has a row per user (`x_in` f32 `[batch,
    /// words(hidden)*320]`, `pos_idx` and `kv_idx` u16 `[batch, 320]`,
    /// `attn_mask` f32 `[batch, words(ctx)*320]`, `logits` f32 `[batch,
    /// words(vocab)*320]`), each filled as for one token of that user at
    /// its position, and every KV cache a symbol per user (`kcache_<b>.u<u>`,
    /// `vcache_<b>.u<u>`, each one user's cache).
    /// Absent: 1.
    #[serde(default = "one_user", skip_serializing_if = "is_one_user")]
    pub batch: u32,
    /// Context buckets (docs/lpubin.md 3.4): further decode programs that
    /// attend to the first `positions` positions only, by ascending
    /// `positions` (each below `ctx`); a decode step at position `pos`
    /// runs on the first whose `positions` exceeds `pos`, else on the
    /// binary's first program; a batched run on the first above its
    /// furthest user's position. Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketMeta>,
}

/// A context bucket: the decode step compiled to attend to the first
/// `positions` positions of the KV caches, right (and bit-exact with the
/// whole-context program) for every step at a position below `positions`.
/// It shares the first program's MEM image, symbols and placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMeta {
    /// The program's name in the `programs` section.
    pub program: String,
    /// Positions its attention reads: it serves steps at `pos < positions`.
    pub positions: u32,
    /// Cycles one run takes, as the compiler scheduled it.
    #[serde(default)]
    pub predicted_cycles: Option<u64>,
}

fn one_user() -> u32 {
    1
}

fn is_one_user(b: &u32) -> bool {
    *b == 1
}

/// The chips of a pipeline-split model, in stage order (docs/lpubin.md 8):
/// the host's sections (this metadata, tokenizer, embedding) are chip 0's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemMeta {
    /// Per chip, what it holds.
    pub chips: Vec<ChipMeta>,
}

/// What one chip of a split model holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChipMeta {
    /// The chip.
    pub chip: u32,
    /// Its blocks, `[first, end)`.
    pub blocks: [u32; 2],
    /// Whether it holds the final norm and the LM head.
    pub head: bool,
    /// The blocks of `blocks` it holds only part of (a split finer than a
    /// block: the chips before or after it hold the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part: Vec<u32>,
    /// The host's symbols in its program (inputs, outputs, KV caches).
    pub symbols: Vec<String>,
    /// Cycles its program takes, as the compiler scheduled it.
    pub predicted_cycles: u64,
    /// MEM bytes its program uses.
    pub mem_bytes: u64,
}

/// A prefill program: `tokens` consecutive prompt tokens in one run.
///
/// Its symbols are the step's with a row per token (docs/lpubin.md 3.4):
/// `x_in` f32 `[tokens, words(hidden)*320]`, `pos_idx` and `kv_idx` u16
/// `[tokens, 320]`, `attn_mask` f32 `[tokens, words(ctx)*320]` and `logits`
/// f32 `[tokens, words(vocab)*320]`, row `k` token `k`'s, each filled as
/// for one token at its position (padding lanes: 0 in `x_in`, `-inf` in
/// `attn_mask`); the KV caches are the first program's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillMeta {
    /// The program's name in the `programs` section.
    pub program: String,
    /// Tokens per run (at least 2).
    pub tokens: u32,
    /// Cycles one run takes, as the compiler scheduled it.
    #[serde(default)]
    pub predicted_cycles: Option<u64>,
}

/// The largest compiled context a binary may declare: positions are u16
/// on the device (`pos_idx`, `kv_idx`), as the compiler's `MAX_CONTEXT`.
pub const MAX_CTX: u64 = 1 << 16;

/// Metadata that is missing or does not hold the host's keys.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No `metadata` section.
    #[error(
        "the binary has no metadata section: it is a bare program, not a compiled model (run it without --prompt)"
    )]
    Missing,
    /// The keys are there but wrong (the message names the key).
    #[error("metadata: {0}")]
    Invalid(String),
}

impl HostMeta {
    /// Reads the host's keys from a binary's metadata.
    pub fn from_binary(bin: &q35_lpubin::LpuBinary) -> Result<HostMeta, MetaError> {
        let map = bin.metadata().ok_or(MetaError::Missing)?;
        Self::from_json(map)
    }

    /// Reads the host's keys from a metadata object.
    pub fn from_json(
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<HostMeta, MetaError> {
        let meta: HostMeta = serde_json::from_value(serde_json::Value::Object(map.clone()))
            .map_err(|e| MetaError::Invalid(e.to_string()))?;
        for (key, v) in [
            ("vocab", meta.vocab),
            ("hidden", meta.hidden),
            ("blocks", meta.blocks),
            ("kv_dim", meta.kv_dim),
            ("ctx", meta.ctx),
            ("batch", meta.batch),
        ] {
            if v == 0 {
                return Err(MetaError::Invalid(format!("`{key}` must be positive")));
            }
        }
        // Positions reach the device as u16 lanes (`pos_idx`, `kv_idx`), so
        // no program holds more (the compiler's limit too); the host sizes
        // its attention mask by `ctx` before anything else bounds it.
        if u64::from(meta.ctx) > MAX_CTX {
            return Err(MetaError::Invalid(format!(
                "`ctx` = {} is past the {MAX_CTX} positions a u16 position index reaches",
                meta.ctx
            )));
        }
        if meta.batch > 1 && meta.prefill.is_some() {
            return Err(MetaError::Invalid(format!(
                "`prefill` with `batch` = {}: a batched binary has no prefill program",
                meta.batch
            )));
        }
        let mut below = 0;
        for b in &meta.buckets {
            if b.positions <= below || b.positions >= meta.ctx {
                return Err(MetaError::Invalid(format!(
                    "`buckets`: `{}` attends to {} positions; buckets must ascend strictly and stay below the context of {}",
                    b.program, b.positions, meta.ctx
                )));
            }
            below = b.positions;
        }
        if let Some(p) = &meta.prefill
            && (p.tokens < 2 || p.tokens > meta.ctx)
        {
            return Err(MetaError::Invalid(format!(
                "`prefill.tokens` = {} must be in 2..={} (the context)",
                p.tokens, meta.ctx
            )));
        }
        for (key, t) in [("bos", meta.bos), ("eos", meta.eos)] {
            if let Some(t) = t
                && t >= meta.vocab
            {
                return Err(MetaError::Invalid(format!(
                    "`{key}` = {t} is outside the vocabulary of {}",
                    meta.vocab
                )));
            }
        }
        Ok(meta)
    }

    /// The metadata object to store (these keys only; add others beside).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            // A struct of plain fields always serialises to an object.
            _ => serde_json::Map::new(),
        }
    }

    /// The context bucket a decode step at position `pos` runs on (`None`:
    /// the binary's first, whole-context program).
    pub fn bucket_for(&self, pos: usize) -> Option<&BucketMeta> {
        self.buckets.iter().find(|b| pos < b.positions as usize)
    }

    /// The context bucket attending to `positions` positions, if the binary
    /// has one (what a run record's bucket names).
    pub fn bucket(&self, positions: u32) -> Option<&BucketMeta> {
        self.buckets.iter().find(|b| b.positions == positions)
    }

    /// The tokens that end generation: `stop_tokens`, else `eos`.
    pub fn stop_tokens(&self) -> Vec<u32> {
        match &self.stop_tokens {
            Some(s) => s.clone(),
            None => self.eos.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_json(
        buckets: serde_json::Value,
        batch: u32,
    ) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::json!({
            "model": "m", "vocab": 10, "hidden": 8, "blocks": 1, "kv_dim": 8,
            "ctx": 64, "kv_junk_offset": 1, "batch": batch, "buckets": buckets,
        }) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        }
    }

    fn bucket(program: &str, positions: u32) -> serde_json::Value {
        serde_json::json!({"program": program, "positions": positions, "predicted_cycles": 5})
    }

    #[test]
    fn a_step_runs_on_the_smallest_bucket_above_its_position() {
        let m = HostMeta::from_json(&meta_json(
            serde_json::json!([bucket("decode.16", 16), bucket("decode.32", 32)]),
            1,
        ))
        .unwrap();
        let at = |pos| m.bucket_for(pos).map(|b| b.program.as_str());
        assert_eq!(at(0), Some("decode.16"));
        assert_eq!(at(15), Some("decode.16"));
        assert_eq!(at(16), Some("decode.32"));
        assert_eq!(at(31), Some("decode.32"));
        assert_eq!(at(32), None);
        assert_eq!(at(63), None);
        // Absent: none, and the key is not written.
        let none = HostMeta::from_json(&meta_json(serde_json::json!([]), 1)).unwrap();
        assert!(none.buckets.is_empty() && none.bucket_for(0).is_none());
        assert!(!none.to_json().contains_key("buckets"));
        assert_eq!(HostMeta::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn bad_buckets_are_refused_naming_the_key() {
        for (buckets, batch, want) in [
            (
                serde_json::json!([bucket("a", 32), bucket("b", 16)]),
                1,
                "ascend strictly",
            ),
            (
                serde_json::json!([bucket("a", 16), bucket("b", 16)]),
                1,
                "ascend strictly",
            ),
            (
                serde_json::json!([bucket("a", 64)]),
                1,
                "below the context of 64",
            ),
            (serde_json::json!([bucket("a", 0)]), 2, "ascend strictly"),
        ] {
            let e = HostMeta::from_json(&meta_json(buckets, batch)).unwrap_err();
            let s = e.to_string();
            assert!(s.contains("`buckets`") && s.contains(want), "{s}");
        }
    }
}
