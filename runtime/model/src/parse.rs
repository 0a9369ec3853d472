//! Reading model.toml in two steps. [`parse`] turns the text into a
//! [`ModelToml`], one function per table, touching nothing but the text
//! (built-in targets are embedded text too). [`ModelToml::resolve`] then does
//! what needs files: it opens the GGUF and reads the architecture from it,
//! cross-checking every value the TOML also gives, loads a target file, and
//! settles the limits that depend on the architecture.

use std::ops::Range;
use std::path::{Path, PathBuf};

use q35_target::{Target, TargetError, diag};
use serde::Deserialize;
use toml::Spanned;

use crate::Chips;
use crate::arch::{self, Architecture, LLAMA_FAMILY};
use crate::{
    DEFAULT_GROUP_SIZE, GROUP_QUANTUM, MATRIX_KINDS, ModelError, ModelSpec, QuantConfig,
    QuantScheme, Rotation, RuntimeLimits, SequentialCalibration, WeightSource,
};

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
    group_size_of: Option<std::collections::BTreeMap<Spanned<String>, Spanned<u32>>>,
    rotation: Option<Spanned<String>>,
    sequential: Option<Spanned<String>>,
    asymmetric: Option<Spanned<f64>>,
    calibration: Option<Spanned<String>>,
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
    chips: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    max_seq_len: Option<Spanned<u32>>,
    batch: Option<Spanned<u32>>,
}

// ---- the description ------------------------------------------------------

/// A value from model.toml and the line and column it was written at.
#[derive(Debug, Clone, Copy)]
struct At<T> {
    value: T,
    at: (usize, usize),
}

/// model.toml parsed and checked table by table, before any file it names
/// is opened. [`ModelToml::resolve`] turns it into a [`ModelSpec`].
#[derive(Debug, Clone)]
pub struct ModelToml {
    /// The model.toml this came from.
    pub path: PathBuf,
    /// `[model] name`.
    pub name: String,
    /// `[weights]`: where the weights come from (paths resolved against the
    /// model.toml's directory).
    pub weights: WeightSource,
    /// `[quantization]`.
    pub quant: QuantConfig,
    /// `[quantization] calibration`: the calibration text (resolved
    /// against the model.toml's directory).
    pub calibration: Option<PathBuf>,
    /// Where `[quantization] rotation` was written (for the tied-head check
    /// once the architecture is known).
    rotation_at: Option<(usize, usize)>,
    architecture: ArchSection,
    target: TargetSection,
    /// `[target] chips`: chips of the system (1 unless given).
    chips: Chips,
    runtime: RuntimeSection,
}

/// `[architecture]`: complete and checked when the weights do not come from
/// a GGUF file; otherwise the values to check against the file's metadata.
#[derive(Debug, Clone)]
enum ArchSection {
    Given(Architecture),
    CheckAgainstGguf { gguf: PathBuf, keys: ArchKeys },
}

/// Reads one field of an [`Architecture`].
type Field<T> = fn(&Architecture) -> T;

/// The `[architecture]` values a model.toml gives, located, with the field
/// of the GGUF's architecture each must equal.
#[derive(Debug, Clone)]
struct ArchKeys {
    ints: Vec<(&'static str, Field<u32>, At<u32>)>,
    floats: Vec<(&'static str, Field<f32>, At<f64>)>,
    tied_embeddings: Option<At<bool>>,
}

/// `[target]`: a built-in target (already parsed) or a file to load.
#[derive(Debug, Clone)]
enum TargetSection {
    Builtin(Box<Target>),
    File(PathBuf),
}

/// `[runtime]`: `batch` is checked; `max_seq_len` depends on the context
/// length, known once the architecture is.
#[derive(Debug, Clone, Copy)]
struct RuntimeSection {
    max_seq_len: Option<At<u32>>,
    batch: u32,
}

/// What every table's parser needs to report a located problem.
struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Cx<'_> {
    fn at(&self, span: Range<usize>) -> (usize, usize) {
        diag::line_col(self.text, span.start)
    }

    fn located<T: Copy>(&self, v: &Spanned<T>) -> At<T> {
        At {
            value: *v.get_ref(),
            at: self.at(v.span()),
        }
    }

    fn invalid(&self, span: Option<Range<usize>>, key: &str, message: String) -> ModelError {
        ModelError::Invalid {
            path: self.path.to_path_buf(),
            at: span.map(|s| self.at(s)),
            key: key.to_owned(),
            message,
        }
    }

    fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ModelError {
    let d = diag::toml_error(text, e);
    ModelError::Syntax {
        path: path.to_path_buf(),
        line: d.line,
        col: d.col,
        key: d.key,
        message: d.message,
    }
}

/// Parses model.toml text into a description, checking each table; `path`
/// names it in diagnostics and anchors relative paths. Opens no file.
pub fn parse(text: &str, path: &Path) -> Result<ModelToml, ModelError> {
    let raw: RawModel = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    let cx = Cx { path, text };
    let name = model_table(&cx, &raw.model)?;
    let weights = weights_table(&cx, &raw.weights)?;
    let architecture = architecture_table(&cx, raw.architecture.unwrap_or_default(), &weights)?;
    let quant = quantization_table(&cx, raw.quantization.as_ref())?;
    let rotation_at = raw
        .quantization
        .as_ref()
        .and_then(|q| q.rotation.as_ref())
        .map(|r| cx.at(r.span()));
    let calibration = raw
        .quantization
        .as_ref()
        .and_then(|q| q.calibration.as_ref())
        .map(|c| cx.base().join(c.get_ref()));
    let target = target_table(&cx, raw.target.as_ref())?;
    let chips = match raw.target.as_ref().and_then(|t| t.chips.as_ref()) {
        None => Chips::Count(1),
        Some(c) => {
            let bad = |found: String| {
                cx.invalid(
                    Some(c.span()),
                    "target.chips",
                    format!(
                        "expected a number of chips (at least 1) or \"auto\" (the fewest that fit), found {found}"
                    ),
                )
            };
            match c.get_ref() {
                toml::Value::String(s) if s == "auto" => Chips::Auto,
                toml::Value::Integer(n) => match u32::try_from(*n) {
                    Ok(n) if n >= 1 => Chips::Count(n),
                    _ => return Err(bad(n.to_string())),
                },
                toml::Value::String(s) => return Err(bad(format!("\"{s}\""))),
                other => return Err(bad(format!("a {}", other.type_str()))),
            }
        }
    };
    let runtime = runtime_table(&cx, raw.runtime.as_ref())?;
    Ok(ModelToml {
        chips,
        path: path.to_path_buf(),
        name,
        weights,
        quant,
        calibration,
        rotation_at,
        architecture,
        target,
        runtime,
    })
}

/// `[model]`: a non-empty name and a supported family.
fn model_table(cx: &Cx<'_>, raw: &RawMeta) -> Result<String, ModelError> {
    let name = raw.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err(cx.invalid(
            Some(raw.name.span()),
            "model.name",
            "must not be empty".into(),
        ));
    }
    if let Some(fam) = &raw.family
        && !LLAMA_FAMILY.contains(&fam.get_ref().as_str())
    {
        return Err(cx.invalid(
            Some(fam.span()),
            "model.family",
            format!(
                "`{}` is not supported; expected one of: {}",
                fam.get_ref(),
                LLAMA_FAMILY.join(", ")
            ),
        ));
    }
    Ok(name)
}

/// `[weights]`: the source and the keys only it allows.
fn weights_table(cx: &Cx<'_>, w: &RawWeights) -> Result<WeightSource, ModelError> {
    let source = *w.source.get_ref();
    if source != SourceKind::Gguf
        && let Some(p) = &w.path
    {
        return Err(cx.invalid(
            Some(p.span()),
            "weights.path",
            "only allowed with source = \"gguf\"".into(),
        ));
    }
    if source != SourceKind::Synthetic
        && let Some(s) = &w.seed
    {
        return Err(cx.invalid(
            Some(s.span()),
            "weights.seed",
            "only allowed with source = \"synthetic\"".into(),
        ));
    }
    Ok(match source {
        SourceKind::Gguf => {
            let p = w.path.as_ref().ok_or_else(|| {
                cx.invalid(
                    Some(w.source.span()),
                    "weights.path",
                    "is required with source = \"gguf\" (a GGUF file, relative to this model.toml)"
                        .into(),
                )
            })?;
            WeightSource::Gguf {
                path: cx.base().join(p.get_ref()),
            }
        }
        SourceKind::Synthetic => WeightSource::Synthetic {
            seed: w.seed.as_ref().map_or(0, |s| *s.get_ref()),
        },
        SourceKind::None => WeightSource::None,
    })
}

/// `[architecture]`: the whole architecture when weights do not come from a
/// GGUF file, else the given values, kept to check against the file.
fn architecture_table(
    cx: &Cx<'_>,
    ra: RawArch,
    weights: &WeightSource,
) -> Result<ArchSection, ModelError> {
    if let WeightSource::Gguf { path } = weights {
        let ints: [(&str, Field<u32>, _); 8] = [
            ("blocks", |a| a.blocks, &ra.blocks),
            ("hidden", |a| a.hidden, &ra.hidden),
            ("heads", |a| a.heads, &ra.heads),
            ("kv_heads", |a| a.kv_heads, &ra.kv_heads),
            ("head_dim", |a| a.head_dim, &ra.head_dim),
            ("ffn", |a| a.ffn, &ra.ffn),
            ("vocab", |a| a.vocab, &ra.vocab),
            ("context", |a| a.context, &ra.context),
        ];
        let floats: [(&str, Field<f32>, _); 2] = [
            ("rope_base", |a| a.rope_base, &ra.rope_base),
            ("norm_eps", |a| a.norm_eps, &ra.norm_eps),
        ];
        return Ok(ArchSection::CheckAgainstGguf {
            gguf: path.clone(),
            keys: ArchKeys {
                ints: ints
                    .into_iter()
                    .filter_map(|(k, f, v)| Some((k, f, cx.located(v.as_ref()?))))
                    .collect(),
                floats: floats
                    .into_iter()
                    .filter_map(|(k, f, v)| Some((k, f, cx.located(v.as_ref()?))))
                    .collect(),
                tied_embeddings: ra.tied_embeddings.as_ref().map(|t| cx.located(t)),
            },
        });
    }
    arch_from_toml(cx, &ra).map(ArchSection::Given)
}

/// Builds the architecture from the TOML alone (synthetic or no weights):
/// every field but `head_dim` and `tied_embeddings` is required.
fn arch_from_toml(cx: &Cx<'_>, ra: &RawArch) -> Result<Architecture, ModelError> {
    let invalid = |span: Option<Range<usize>>, key: &str, message: String| {
        cx.invalid(span, &format!("architecture.{key}"), message)
    };
    let need_u = |v: &Option<Spanned<u32>>, key: &str| -> Result<(u32, Range<usize>), ModelError> {
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
    let a = Architecture {
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
    };
    arch::check_limits(&a).map_err(|(key, message)| {
        let span = match key {
            "blocks" => &ra.blocks,
            "hidden" => &ra.hidden,
            "ffn" => &ra.ffn,
            "vocab" => &ra.vocab,
            "head_dim" => &ra.head_dim,
            "kv_heads" => &ra.kv_heads,
            _ => &ra.heads,
        };
        invalid(span.as_ref().map(|v| v.span()), key, message)
    })?;
    Ok(a)
}

/// `[quantization]`: the scheme and group sizes Q35 can pack (one for
/// every matrix, and some kinds' own in `group_size_of`).
fn quantization_table(cx: &Cx<'_>, q: Option<&RawQuant>) -> Result<QuantConfig, ModelError> {
    let scheme = q
        .and_then(|q| q.scheme.as_ref())
        .map_or(QuantScheme::Q35, |s| *s.get_ref());
    let group_size = q.and_then(|q| q.group_size.as_ref());
    let group = group_size.map_or(DEFAULT_GROUP_SIZE, |g| *g.get_ref());
    check_group_size(
        cx,
        group,
        group_size.map(Spanned::span),
        "quantization.group_size",
    )?;
    let mut config = QuantConfig::uniform(scheme, group);
    if let Some(r) = q.and_then(|q| q.rotation.as_ref()) {
        config.rotation = by_name(
            cx,
            r,
            "quantization.rotation",
            "rotation",
            &Rotation::ALL,
            Rotation::as_str,
        )?;
    }
    if let Some(m) = q.and_then(|q| q.sequential.as_ref()) {
        config.sequential = by_name(
            cx,
            m,
            "quantization.sequential",
            "sequential calibration",
            &SequentialCalibration::ALL,
            SequentialCalibration::as_str,
        )?;
        if config.sequential != SequentialCalibration::None
            && q.and_then(|q| q.calibration.as_ref()).is_none()
        {
            return Err(cx.invalid(
                Some(m.span()),
                "quantization.sequential",
                format!(
                    "`{}` calibrates block by block on a text: it needs `calibration`",
                    m.get_ref()
                ),
            ));
        }
    }
    if let Some(a) = q.and_then(|q| q.asymmetric.as_ref()) {
        let v = *a.get_ref();
        if !(v > 0.0 && v <= 1.0) {
            return Err(cx.invalid(
                Some(a.span()),
                "quantization.asymmetric",
                format!("{v} is not a strength in (0, 1]"),
            ));
        }
        if config.sequential == SequentialCalibration::None {
            return Err(cx.invalid(
                Some(a.span()),
                "quantization.asymmetric",
                "the asymmetric target needs `sequential = \"int8\"` or `\"dequant\"` (without it every matrix sees the f32 model's inputs, and there is no asymmetry to correct)".to_owned(),
            ));
        }
        config.asymmetric = Some(v as f32);
    }
    let overrides = q.and_then(|q| q.group_size_of.as_ref());
    for (kind, size) in overrides.into_iter().flatten() {
        let key = format!("quantization.group_size_of.{}", kind.get_ref());
        let Some(i) = MATRIX_KINDS.iter().position(|k| k == kind.get_ref()) else {
            return Err(cx.invalid(
                Some(kind.span()),
                &key,
                format!(
                    "unknown kind of matrix `{}`; the kinds are {}",
                    kind.get_ref(),
                    MATRIX_KINDS.join(", ")
                ),
            ));
        };
        check_group_size(cx, *size.get_ref(), Some(size.span()), &key)?;
        config.group_size_of[i] = Some(*size.get_ref());
    }
    let largest = config.max_group_size();
    let sizes = std::iter::once((
        group,
        group_size.map(Spanned::span),
        "group_size".to_owned(),
    ))
    .chain(overrides.into_iter().flatten().map(|(k, s)| {
        (
            *s.get_ref(),
            Some(s.span()),
            format!("group_size_of.{}", k.get_ref()),
        )
    }));
    for (g, span, key) in sizes {
        if !largest.is_multiple_of(g) {
            return Err(cx.invalid(
                span,
                &format!("quantization.{key}"),
                format!(
                    "{g} does not divide the largest group size, {largest}: the quantizer records activation covariances at the largest size and compensates errors across whole groups of every other"
                ),
            ));
        }
    }
    Ok(config)
}

/// A group size Q35 can pack: a multiple of [`GROUP_QUANTUM`] up to 4096.
/// The member of `all` spelled `value` (by `name`), else an error at `key`
/// naming `what` and every spelling.
fn by_name<T: Copy>(
    cx: &Cx<'_>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, ModelError> {
    all.iter()
        .copied()
        .find(|&k| name(k) == value.get_ref())
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&k| name(k)).collect();
            cx.invalid(
                Some(value.span()),
                key,
                format!(
                    "unknown {what} `{}`; expected one of: {}",
                    value.get_ref(),
                    names.join(", ")
                ),
            )
        })
}

fn check_group_size(
    cx: &Cx<'_>,
    group: u32,
    span: Option<Range<usize>>,
    key: &str,
) -> Result<(), ModelError> {
    if !(GROUP_QUANTUM..=4096).contains(&group) || !group.is_multiple_of(GROUP_QUANTUM) {
        return Err(cx.invalid(
            span,
            key,
            format!(
                "{group} must be a multiple of {GROUP_QUANTUM} between {GROUP_QUANTUM} and 4096 (Q35 packs 8 pairs in 7 bytes, docs/q35-format.md)"
            ),
        ));
    }
    Ok(())
}

/// `[target]`: exactly one of a built-in name (looked up now) or a file
/// (loaded by [`ModelToml::resolve`]); `lpu-v1` by default.
fn target_table(cx: &Cx<'_>, t: Option<&RawTarget>) -> Result<TargetSection, ModelError> {
    match t {
        None => Ok(TargetSection::Builtin(Box::new(Target::builtin("lpu-v1")?))),
        Some(RawTarget {
            name: Some(n),
            path: None,
            ..
        }) => match Target::builtin(n.get_ref()) {
            Ok(t) => Ok(TargetSection::Builtin(Box::new(t))),
            Err(TargetError::Unknown { name }) => Err(cx.invalid(
                Some(n.span()),
                "target.name",
                format!(
                    "unknown target `{name}`; built-in targets: {} (or give `target.path`)",
                    q35_target::builtin_names().join(", ")
                ),
            )),
            Err(e) => Err(e.into()),
        },
        Some(RawTarget {
            name: None,
            path: Some(p),
            ..
        }) => Ok(TargetSection::File(cx.base().join(p.get_ref()))),
        // `chips` alone: the default target.
        Some(RawTarget {
            name: None,
            path: None,
            chips: Some(_),
        }) => Ok(TargetSection::Builtin(Box::new(Target::builtin("lpu-v1")?))),
        Some(_) => Err(cx.invalid(
            None,
            "target",
            "give exactly one of `name` (a built-in target) or `path` (a target file)".into(),
        )),
    }
}

/// `[runtime]`: the batch range; `max_seq_len` is kept for
/// [`ModelToml::resolve`], which knows the context length.
fn runtime_table(cx: &Cx<'_>, rr: Option<&RawRuntime>) -> Result<RuntimeSection, ModelError> {
    let max_seq = rr.and_then(|r| r.max_seq_len.as_ref());
    let batch_v = rr.and_then(|r| r.batch.as_ref());
    let batch = batch_v.map_or(1, |b| *b.get_ref());
    if !(1..=1024).contains(&batch) {
        return Err(cx.invalid(
            batch_v.map(|b| b.span()),
            "runtime.batch",
            format!("{batch} must be between 1 and 1024"),
        ));
    }
    Ok(RuntimeSection {
        max_seq_len: max_seq.map(|m| cx.located(m)),
        batch,
    })
}

impl ModelToml {
    /// The files [`ModelToml::resolve`] will open: the GGUF weight file
    /// whose metadata it reads, and a target file. A caller can check them
    /// (a fuzzer resolves only descriptions naming its own files).
    pub fn files(&self) -> Vec<&Path> {
        let mut files = Vec::new();
        if let ArchSection::CheckAgainstGguf { gguf, .. } = &self.architecture {
            files.push(gguf.as_path());
        }
        if let TargetSection::File(p) = &self.target {
            files.push(p.as_path());
        }
        files
    }

    /// Opens what the description names: reads the architecture from the
    /// GGUF file (checking every `[architecture]` value given against it),
    /// loads a target file, and settles `[runtime]` limits.
    pub fn resolve(self) -> Result<ModelSpec, ModelError> {
        let arch = match self.architecture {
            ArchSection::Given(a) => a,
            ArchSection::CheckAgainstGguf {
                gguf: gguf_path,
                keys,
            } => {
                let gguf = q35_gguf::Gguf::open(&gguf_path).map_err(|error| ModelError::Gguf {
                    path: self.path.clone(),
                    error,
                })?;
                let a = arch::from_gguf(&gguf, &gguf_path)?;
                cross_check(
                    &keys,
                    &a,
                    &self.path,
                    &gguf_path,
                    gguf.get_str("general.architecture").unwrap_or("llama"),
                )?;
                a
            }
        };
        let target = match self.target {
            TargetSection::Builtin(t) => *t,
            TargetSection::File(p) => Target::load(&p)?,
        };
        let rt = self.runtime;
        let max_seq_len = rt.max_seq_len.map_or(arch.context.min(4096), |m| m.value);
        if max_seq_len == 0 || max_seq_len > arch.context {
            return Err(ModelError::Invalid {
                path: self.path.clone(),
                at: rt.max_seq_len.map(|m| m.at),
                key: "runtime.max_seq_len".into(),
                message: format!(
                    "{max_seq_len} must be between 1 and the model's context length {}",
                    arch.context
                ),
            });
        }
        if self.quant.rotation != crate::Rotation::None && !arch.tied_embeddings {
            return Err(ModelError::Invalid {
                path: self.path.clone(),
                at: self.rotation_at,
                key: "quantization.rotation".into(),
                message: format!(
                    "`{}` needs a tied LM head (the final norm's mix and the rotated table serve the embedding and the head); this model's head is its own",
                    self.quant.rotation
                ),
            });
        }
        Ok(ModelSpec {
            path: self.path,
            name: self.name,
            arch,
            weights: self.weights,
            quant: self.quant,
            calibration: self.calibration,
            target,
            chips: self.chips,
            limits: RuntimeLimits {
                max_seq_len,
                batch: rt.batch,
            },
        })
    }
}

/// Every architecture value the TOML gives must equal the GGUF file's.
fn cross_check(
    keys: &ArchKeys,
    a: &Architecture,
    path: &Path,
    gguf: &Path,
    gguf_arch: &str,
) -> Result<(), ModelError> {
    let mismatch = |key: &str, at: (usize, usize), toml_value: String, gguf_value: String| {
        let gguf_key = if key == "tied_embeddings" {
            "output.weight (tensor present = untied)".to_owned()
        } else {
            arch::gguf_key(gguf_arch, key)
        };
        ModelError::Mismatch {
            path: path.to_path_buf(),
            at: Some(at),
            key: format!("architecture.{key}"),
            toml_value,
            gguf: gguf.to_path_buf(),
            gguf_key,
            gguf_value,
        }
    };
    for &(key, field, given) in &keys.ints {
        let actual = field(a);
        if given.value != actual {
            return Err(mismatch(
                key,
                given.at,
                given.value.to_string(),
                actual.to_string(),
            ));
        }
    }
    for &(key, field, given) in &keys.floats {
        let actual = field(a);
        if (given.value as f32) != actual {
            return Err(mismatch(
                key,
                given.at,
                given.value.to_string(),
                actual.to_string(),
            ));
        }
    }
    if let Some(t) = keys.tied_embeddings
        && t.value != a.tied_embeddings
    {
        return Err(mismatch(
            "tied_embeddings",
            t.at,
            t.value.to_string(),
            a.tied_embeddings.to_string(),
        ));
    }
    Ok(())
}
