//! model.toml: the description of a LLaMA-family model that q35 compiles.
//!
//! [`load`] parses a model.toml (schema in docs/model-toml.md), validates it,
//! and, when weights come from a GGUF file, reads the architecture from the
//! file's metadata and checks every value the TOML also gives against it.
//! Errors name the file, the line and column where known, the key, and what
//! was expected; nothing here panics on bad input.

mod arch;
mod error;
mod target;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use arch::{Architecture, LLAMA_FAMILY, LinearSpec, from_gguf as architecture_from_gguf};
pub use error::ModelError;
pub use target::{BUILTIN as BUILTIN_TARGETS, Target};

/// A validated model description.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The model.toml this came from.
    pub path: PathBuf,
    /// `[model] name`.
    pub name: String,
    /// The architecture (from the GGUF file when weights come from one).
    pub arch: Architecture,
    /// Where the weights come from.
    pub weights: WeightSource,
    /// How weights and activations are quantized.
    pub quant: QuantConfig,
    /// The machine to compile for.
    pub target: Target,
    /// Limits the compiled program is built for.
    pub limits: RuntimeLimits,
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightSource {
    /// A GGUF file (path resolved against the model.toml's directory).
    Gguf { path: PathBuf },
    /// Deterministic pseudo-random weights from a seed.
    Synthetic { seed: u64 },
    /// No weights: shape and timing work only.
    None,
}

/// Weight quantization schemes (docs/q35-format.md): defined, with every
/// fact about them, in q35-contract.
pub use q35_contract::QuantScheme;

/// Quantization settings. Activations are always int8 with a per-token
/// dynamic scale and products accumulate in int32; the TOML states both so a
/// reader sees them, and other values are refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantConfig {
    /// The weight scheme.
    pub scheme: QuantScheme,
    /// Weights per scale along the reduction dimension.
    pub group_size: u32,
}

/// Limits the compiled program is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Longest sequence (prompt plus generated tokens), the KV-cache length.
    pub max_seq_len: u32,
    /// Sequences processed together.
    pub batch: u32,
}

// ---- the raw schema ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: RawMeta,
    architecture: Option<RawArch>,
    weights: RawWeights,
    quantization: Option<RawQuant>,
    target: Option<RawTarget>,
    runtime: Option<RawRuntime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: Spanned<String>,
    family: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawArch {
    blocks: Option<Spanned<u32>>,
    hidden: Option<Spanned<u32>>,
    heads: Option<Spanned<u32>>,
    kv_heads: Option<Spanned<u32>>,
    head_dim: Option<Spanned<u32>>,
    ffn: Option<Spanned<u32>>,
    vocab: Option<Spanned<u32>>,
    rope_base: Option<Spanned<f64>>,
    norm_eps: Option<Spanned<f64>>,
    tied_embeddings: Option<Spanned<bool>>,
    context: Option<Spanned<u32>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    Gguf,
    Synthetic,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    source: Spanned<SourceKind>,
    path: Option<Spanned<String>>,
    seed: Option<Spanned<u64>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ActType {
    Int8,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AccType {
    Int32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuant {
    #[serde(default, deserialize_with = "scheme_field")]
    scheme: Option<Spanned<QuantScheme>>,
    group_size: Option<Spanned<u32>>,
    #[expect(
        dead_code,
        reason = "only int8 exists; parsed so other values are refused"
    )]
    activations: Option<ActType>,
    #[expect(
        dead_code,
        reason = "only int32 exists; parsed so other values are refused"
    )]
    accumulator: Option<AccType>,
}

/// A scheme as model.toml spells it ([`QuantScheme::as_str`]); an unknown
/// name is serde's "unknown variant" error listing [`QuantScheme::NAMES`].
struct SchemeName(QuantScheme);

impl<'de> Deserialize<'de> for SchemeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SchemeName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a quantization scheme name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SchemeName, E> {
                QuantScheme::ALL
                    .into_iter()
                    .find(|s| s.as_str() == v)
                    .map(SchemeName)
                    .ok_or_else(|| E::unknown_variant(v, &QuantScheme::NAMES))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `[quantization] scheme`, keeping its span for diagnostics.
fn scheme_field<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<QuantScheme>>, D::Error> {
    let s: Option<Spanned<SchemeName>> = Option::deserialize(d)?;
    Ok(s.map(|s| {
        let span = s.span();
        Spanned::new(span, s.into_inner().0)
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    max_seq_len: Option<Spanned<u32>>,
    batch: Option<Spanned<u32>>,
}

pub(crate) fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ModelError {
    let (line, col) = e.span().map_or((1, 1), |s| error::line_col(text, s.start));
    ModelError::Syntax {
        path: path.to_path_buf(),
        line,
        col,
        key: e.span().and_then(|s| error::key_at(text, s.start)),
        message: e.message().trim().to_owned(),
    }
}

/// Default group size along the reduction dimension (q35-contract's).
pub const DEFAULT_GROUP_SIZE: u32 = q35_contract::DEFAULT_GROUP_SIZE as u32;
/// Group sizes are multiples of this: 16 channels are 8 Q35 pairs, 7 whole
/// bytes (q35-contract's `CHANNEL_QUANTUM`).
pub const GROUP_QUANTUM: u32 = q35_contract::CHANNEL_QUANTUM as u32;

/// Loads and validates a model.toml.
pub fn load(path: impl AsRef<Path>) -> Result<ModelSpec, ModelError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)
}

/// Parses and validates model.toml text; `path` names it in diagnostics and
/// anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<ModelSpec, ModelError> {
    let raw: RawModel = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    let at = |span: std::ops::Range<usize>| Some(error::line_col(text, span.start));
    let invalid =
        |span: Option<std::ops::Range<usize>>, key: &str, message: String| ModelError::Invalid {
            path: path.to_path_buf(),
            at: span.and_then(at),
            key: key.to_owned(),
            message,
        };
    let base = path.parent().unwrap_or(Path::new("."));

    // [model]
    let name = raw.model.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err(invalid(
            Some(raw.model.name.span()),
            "model.name",
            "must not be empty".into(),
        ));
    }
    if let Some(fam) = &raw.model.family
        && !LLAMA_FAMILY.contains(&fam.get_ref().as_str())
    {
        return Err(invalid(
            Some(fam.span()),
            "model.family",
            format!(
                "`{}` is not supported; expected one of: {}",
                fam.get_ref(),
                LLAMA_FAMILY.join(", ")
            ),
        ));
    }

    // [weights]
    let w = &raw.weights;
    let source = *w.source.get_ref();
    if source != SourceKind::Gguf
        && let Some(p) = &w.path
    {
        return Err(invalid(
            Some(p.span()),
            "weights.path",
            "only allowed with source = \"gguf\"".into(),
        ));
    }
    if source != SourceKind::Synthetic
        && let Some(s) = &w.seed
    {
        return Err(invalid(
            Some(s.span()),
            "weights.seed",
            "only allowed with source = \"synthetic\"".into(),
        ));
    }
    let weights = match source {
        SourceKind::Gguf => {
            let p = w.path.as_ref().ok_or_else(|| {
                invalid(
                    Some(w.source.span()),
                    "weights.path",
                    "is required with source = \"gguf\" (a GGUF file, relative to this model.toml)"
                        .into(),
                )
            })?;
            WeightSource::Gguf {
                path: base.join(p.get_ref()),
            }
        }
        SourceKind::Synthetic => WeightSource::Synthetic {
            seed: w.seed.as_ref().map_or(0, |s| *s.get_ref()),
        },
        SourceKind::None => WeightSource::None,
    };

    // [architecture]
    let ra = raw.architecture.unwrap_or_default();
    let arch = match &weights {
        WeightSource::Gguf { path: gguf_path } => {
            let gguf = q35_gguf::Gguf::open(gguf_path).map_err(|error| ModelError::Gguf {
                path: path.to_path_buf(),
                error,
            })?;
            let a = arch::from_gguf(&gguf, gguf_path)?;
            cross_check(
                &ra,
                &a,
                text,
                path,
                gguf_path,
                gguf.get_str("general.architecture").unwrap_or("llama"),
            )?;
            a
        }
        _ => arch_from_toml(&ra, text, path)?,
    };

    // [quantization]
    let (scheme, group_size) = match &raw.quantization {
        Some(q) => (
            q.scheme.as_ref().map_or(QuantScheme::Q35, |s| *s.get_ref()),
            q.group_size.as_ref(),
        ),
        None => (QuantScheme::Q35, None),
    };
    let group = group_size.map_or(DEFAULT_GROUP_SIZE, |g| *g.get_ref());
    if !(GROUP_QUANTUM..=4096).contains(&group) || !group.is_multiple_of(GROUP_QUANTUM) {
        return Err(invalid(
            group_size.map(|g| g.span()),
            "quantization.group_size",
            format!(
                "{group} must be a multiple of {GROUP_QUANTUM} between {GROUP_QUANTUM} and 4096 (Q35 packs 8 pairs in 7 bytes, docs/q35-format.md)"
            ),
        ));
    }

    // [target]
    let target = match &raw.target {
        None => Target::builtin("lpu-v1").expect("lpu-v1 is built in"),
        Some(RawTarget {
            name: Some(n),
            path: None,
        }) => Target::builtin(n.get_ref()).ok_or_else(|| {
            let known: Vec<_> = BUILTIN_TARGETS.iter().map(|(n, _)| *n).collect();
            invalid(
                Some(n.span()),
                "target.name",
                format!(
                    "unknown target `{}`; built-in targets: {} (or give `target.path`)",
                    n.get_ref(),
                    known.join(", ")
                ),
            )
        })?,
        Some(RawTarget {
            name: None,
            path: Some(p),
        }) => Target::load(&base.join(p.get_ref()))?,
        Some(_) => {
            return Err(invalid(
                None,
                "target",
                "give exactly one of `name` (a built-in target) or `path` (a target file)".into(),
            ));
        }
    };

    // [runtime]
    let rr = raw.runtime.as_ref();
    let max_seq = rr.and_then(|r| r.max_seq_len.as_ref());
    let max_seq_len = max_seq.map_or(arch.context.min(4096), |m| *m.get_ref());
    if max_seq_len == 0 || max_seq_len > arch.context {
        return Err(invalid(
            max_seq.map(|m| m.span()),
            "runtime.max_seq_len",
            format!(
                "{max_seq_len} must be between 1 and the model's context length {}",
                arch.context
            ),
        ));
    }
    let batch_v = rr.and_then(|r| r.batch.as_ref());
    let batch = batch_v.map_or(1, |b| *b.get_ref());
    if !(1..=1024).contains(&batch) {
        return Err(invalid(
            batch_v.map(|b| b.span()),
            "runtime.batch",
            format!("{batch} must be between 1 and 1024"),
        ));
    }

    Ok(ModelSpec {
        path: path.to_path_buf(),
        name,
        arch,
        weights,
        quant: QuantConfig {
            scheme,
            group_size: group,
        },
        target,
        limits: RuntimeLimits { max_seq_len, batch },
    })
}

/// Builds the architecture from the TOML alone (synthetic or no weights):
/// every field but `head_dim` and `tied_embeddings` is required.
fn arch_from_toml(ra: &RawArch, text: &str, path: &Path) -> Result<Architecture, ModelError> {
    let at = |span: std::ops::Range<usize>| Some(error::line_col(text, span.start));
    let invalid =
        |span: Option<std::ops::Range<usize>>, key: &str, message: String| ModelError::Invalid {
            path: path.to_path_buf(),
            at: span.and_then(at),
            key: format!("architecture.{key}"),
            message,
        };
    let need_u = |v: &Option<Spanned<u32>>,
                  key: &str|
     -> Result<(u32, std::ops::Range<usize>), ModelError> {
        let v = v.as_ref().ok_or_else(|| {
            invalid(
                None,
                key,
                "is required when weights do not come from a GGUF file".into(),
            )
        })?;
        if *v.get_ref() == 0 {
            return Err(invalid(Some(v.span()), key, "must be at least 1".into()));
        }
        Ok((*v.get_ref(), v.span()))
    };
    let need_f = |v: &Option<Spanned<f64>>, key: &str| -> Result<f32, ModelError> {
        let v = v.as_ref().ok_or_else(|| {
            invalid(
                None,
                key,
                "is required when weights do not come from a GGUF file".into(),
            )
        })?;
        let x = *v.get_ref();
        if !(x.is_finite() && x > 0.0) {
            return Err(invalid(
                Some(v.span()),
                key,
                format!("{x} must be a positive number"),
            ));
        }
        Ok(x as f32)
    };
    let (blocks, _) = need_u(&ra.blocks, "blocks")?;
    let (hidden, _) = need_u(&ra.hidden, "hidden")?;
    let (heads, heads_span) = need_u(&ra.heads, "heads")?;
    let (kv_heads, kv_span) = need_u(&ra.kv_heads, "kv_heads")?;
    if hidden % heads != 0 {
        return Err(invalid(
            Some(heads_span),
            "heads",
            format!("{heads} heads do not divide hidden = {hidden}"),
        ));
    }
    if heads % kv_heads != 0 {
        return Err(invalid(
            Some(kv_span),
            "kv_heads",
            format!("{kv_heads} key/value heads do not divide heads = {heads}"),
        ));
    }
    let head_dim = match &ra.head_dim {
        Some(h) => {
            let d = *h.get_ref();
            if d == 0 || d % 2 != 0 {
                return Err(invalid(
                    Some(h.span()),
                    "head_dim",
                    format!("{d} must be a positive even number (RoPE rotates pairs)"),
                ));
            }
            d
        }
        None => {
            let d = hidden / heads;
            if d % 2 != 0 {
                return Err(invalid(
                    Some(heads_span),
                    "heads",
                    format!("hidden / heads = {d} must be even (RoPE rotates pairs)"),
                ));
            }
            d
        }
    };
    let (ffn, _) = need_u(&ra.ffn, "ffn")?;
    let (vocab, _) = need_u(&ra.vocab, "vocab")?;
    let (context, _) = need_u(&ra.context, "context")?;
    Ok(Architecture {
        family: "llama".into(),
        blocks,
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        rope_base: need_f(&ra.rope_base, "rope_base")?,
        norm_eps: need_f(&ra.norm_eps, "norm_eps")?,
        tied_embeddings: ra.tied_embeddings.as_ref().is_some_and(|t| *t.get_ref()),
        context,
    })
}

/// Every architecture value the TOML gives must equal the GGUF file's.
fn cross_check(
    ra: &RawArch,
    a: &Architecture,
    text: &str,
    path: &Path,
    gguf: &Path,
    gguf_arch: &str,
) -> Result<(), ModelError> {
    let mismatch =
        |key: &str, span: std::ops::Range<usize>, toml_value: String, gguf_value: String| {
            let gguf_key = if key == "tied_embeddings" {
                "output.weight (tensor present = untied)".to_owned()
            } else {
                arch::gguf_key(gguf_arch, key)
            };
            ModelError::Mismatch {
                path: path.to_path_buf(),
                at: Some(error::line_col(text, span.start)),
                key: format!("architecture.{key}"),
                toml_value,
                gguf: gguf.to_path_buf(),
                gguf_key,
                gguf_value,
            }
        };
    let ints = [
        ("blocks", &ra.blocks, a.blocks),
        ("hidden", &ra.hidden, a.hidden),
        ("heads", &ra.heads, a.heads),
        ("kv_heads", &ra.kv_heads, a.kv_heads),
        ("head_dim", &ra.head_dim, a.head_dim),
        ("ffn", &ra.ffn, a.ffn),
        ("vocab", &ra.vocab, a.vocab),
        ("context", &ra.context, a.context),
    ];
    for (key, given, actual) in ints {
        if let Some(g) = given
            && *g.get_ref() != actual
        {
            return Err(mismatch(
                key,
                g.span(),
                g.get_ref().to_string(),
                actual.to_string(),
            ));
        }
    }
    for (key, given, actual) in [
        ("rope_base", &ra.rope_base, a.rope_base),
        ("norm_eps", &ra.norm_eps, a.norm_eps),
    ] {
        if let Some(g) = given
            && (*g.get_ref() as f32) != actual
        {
            return Err(mismatch(
                key,
                g.span(),
                g.get_ref().to_string(),
                actual.to_string(),
            ));
        }
    }
    if let Some(t) = &ra.tied_embeddings
        && *t.get_ref() != a.tied_embeddings
    {
        return Err(mismatch(
            "tied_embeddings",
            t.span(),
            t.get_ref().to_string(),
            a.tied_embeddings.to_string(),
        ));
    }
    Ok(())
}

impl ModelSpec {
    /// Opens the GGUF weight file, if the weights come from one.
    pub fn open_gguf(&self) -> Result<Option<q35_gguf::Gguf>, ModelError> {
        match &self.weights {
            WeightSource::Gguf { path } => {
                q35_gguf::Gguf::open(path)
                    .map(Some)
                    .map_err(|error| ModelError::Gguf {
                        path: self.path.clone(),
                        error,
                    })
            }
            _ => Ok(None),
        }
    }
}
