//! Building the golden model from a model.toml without MLIR: the path
//! `q35c interp` (and the compiler) and `q35sim run --check` share, so the
//! model a binary is checked against is built exactly as the one it was
//! compiled from.
//!
//! The steps are `q35c eval --quant`'s: load the description and its
//! weights into the f32 reference model, quantize every matrix (the LM head
//! included) with the description's scheme and group size -- calibrated on
//! a text for the activation-aware scheme ([`QuantPipeline`]) -- and build
//! [`GoldenModel`] from the reference and its quantized layers.
//! [`weights_hash`] fingerprints the result, so a binary can record which
//! golden model it was compiled from and `--check` can refuse another.

use std::path::{Path, PathBuf};

use q35_contract::{GoldenHead, GoldenModel, IntMatrix, QuantScheme, QuantizedMatrix};
use q35_model::{MATRIX_KINDS, QuantConfig, Rotation, SequentialCalibration};
use q35_quant::golden::from_reference;
use q35_quant::model::{
    Methods, QuantPipeline, SchemePolicy, Sequential, StreamRotation, model_weights,
    quantize_model_with, rotate_stream_model,
};
use q35_quant::quantize::QuantOptions;
use q35_reference::{LinearId, LinearKind, Model};
use q35_tokenizer::Tokenizer;
use sha2::{Digest, Sha256};

use crate::quant_cache::{CacheUse, Key, KeyBuilder, Lookup, QuantCache};

/// How to build a golden model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenRecipe {
    /// The model description.
    pub model_toml: PathBuf,
    /// Calibration text (UTF-8) for the activation-aware scheme.
    pub calib: Option<PathBuf>,
    /// Calibration window in tokens.
    pub calib_ctx: usize,
    /// Calibration windows sampled (`q35c`'s default is 64).
    pub calib_samples: usize,
    /// Positions the golden model holds (at most the model's context).
    pub positions: usize,
    /// Worker threads (results do not depend on it).
    pub threads: usize,
}

/// Calibration windows `q35c` samples (`eval --quant`, `interp`).
pub const CALIB_SAMPLES: usize = 64;

/// What [`build`] returns besides the golden model.
#[derive(Debug)]
pub struct BuiltGolden {
    /// The golden model.
    pub golden: GoldenModel,
    /// The model's name (model.toml `[model] name`).
    pub name: String,
    /// Its tokenizer, when the weights come from a GGUF.
    pub tokenizer: Option<Tokenizer>,
    /// The tokenizer-only GGUF a binary carries (see
    /// [`Tokenizer::tokenizer_gguf`]), when there is a tokenizer.
    pub tokenizer_gguf: Option<Vec<u8>>,
    /// The quantized LM head, when the head is quantized (with tied
    /// embeddings it is also the embedding table).
    pub head: Option<QuantizedMatrix>,
    /// Every quantized matrix by its GGUF tensor name (`blk.0.attn_q.weight`
    /// ..., the LM head as `output.weight`): what the compiler packs.
    pub layers: std::collections::BTreeMap<String, QuantizedMatrix>,
    /// The scheme and group size used.
    pub scheme: QuantScheme,
    /// Channels per quantization group (of every matrix without a size of
    /// its own in `quant`).
    pub group_size: usize,
    /// The quantization settings, per-kind group sizes included.
    pub quant: QuantConfig,
    /// Whether the quantized matrices came from the cache
    /// ([`crate::quant_cache`]) or were computed (and cached).
    pub cache: CacheUse,
}

impl BuiltGolden {
    /// The `embedding` section for a binary compiled from this model: the
    /// quantized LM head when it is tied and quantized (the golden model's
    /// embedding is that head dequantized, so the binary stores one copy),
    /// else the golden model's f32 rows.
    pub fn embedding_table(&self) -> crate::EmbeddingTable {
        match &self.head {
            Some(h) if self.golden.arch().tied_embeddings => crate::EmbeddingTable::Q35(h.clone()),
            _ => crate::EmbeddingTable::F32 {
                cols: self.golden.arch().hidden as usize,
                data: self.golden.embedding().to_vec(),
            },
        }
    }
}

/// Why the golden model cannot be built; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GoldenBuildError {
    /// The model description or its weights do not load.
    #[error("cannot load model description {path}: {error}")]
    Model {
        /// The model.toml.
        path: PathBuf,
        /// Why.
        error: q35_model::ModelError,
    },
    /// The reference model cannot be built or configured.
    #[error("cannot build the reference model of {path}: {error}")]
    Reference {
        /// The model.toml.
        path: PathBuf,
        /// Why.
        error: q35_reference::ReferenceError,
    },
    /// The GGUF's tokenizer does not load.
    #[error("cannot read the tokenizer of {path}: {error}")]
    Tokenizer {
        /// The model.toml.
        path: PathBuf,
        /// Why.
        error: q35_tokenizer::TokenizerError,
    },
    /// The calibration text cannot be read or holds nothing.
    #[error("calibration text {path}: {what}")]
    Calib {
        /// The text file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The scheme calibrates and no text was given.
    #[error(
        "{path} quantizes with {scheme}, which is activation-aware: give a calibration text with --calib"
    )]
    NeedsCalib {
        /// The model.toml.
        path: PathBuf,
        /// The scheme.
        scheme: QuantScheme,
    },
    /// Quantization or building the golden model failed.
    #[error("cannot quantize {path}: {error}")]
    Quant {
        /// The model.toml.
        path: PathBuf,
        /// Why.
        error: q35_quant::model::ModelQuantError,
    },
}

/// The quantizer's [`Methods`] for a model.toml's `[quantization]`: its
/// per-kind group sizes (`group_size_of`) as group overrides, its
/// `rotation` as the residual-stream rotation
/// ([`Methods::rotate_stream`]), every other method off. `q35c eval --quant`, `quant-report` (by default), `interp`,
/// `compile` and `q35sim run --check` all quantize with it.
pub fn methods(quant: &QuantConfig) -> Methods {
    let mut methods = Methods {
        rotate_stream: match quant.rotation {
            Rotation::None => None,
            Rotation::BlockHadamard => Some(StreamRotation::BlockHadamard),
        },
        sequential: match quant.sequential {
            SequentialCalibration::None => None,
            SequentialCalibration::Int8 => Some(Sequential::Int8),
            SequentialCalibration::Dequant => Some(Sequential::Dequant),
        },
        asymmetric: quant.asymmetric,
        ..Methods::default()
    };
    for (kind, size) in MATRIX_KINDS.iter().zip(quant.group_size_of) {
        if let (Some(size), Some(kind)) = (size, linear_kind(kind)) {
            methods.set_group(kind, size as usize);
        }
    }
    methods
}

/// The quantizer's matrix kind that llama.cpp's tensor stem `stem`
/// (a [`MATRIX_KINDS`] entry) names.
pub fn linear_kind(stem: &str) -> Option<LinearKind> {
    LinearKind::BLOCK
        .into_iter()
        .chain([LinearKind::LmHead])
        .find(|k| k.gguf_stem() == stem)
}

/// Tokens of a calibration text: with a tokenizer, as llama.cpp's
/// perplexity tokenizes it (BOS first when the model adds BOS); without
/// one (synthetic weights), the text's bytes folded into the vocabulary.
pub fn text_tokens(tokenizer: Option<&Tokenizer>, vocab: usize, text: &str) -> Vec<u32> {
    match tokenizer {
        Some(t) => t.encode_with_bos(text),
        None => text
            .bytes()
            .map(|b| u32::from(b) % vocab.max(1) as u32)
            .collect(),
    }
}

fn read_text(path: &Path) -> Result<String, GoldenBuildError> {
    let err = |what: String| GoldenBuildError::Calib {
        path: path.to_path_buf(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        err(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Builds the golden model `recipe` describes.
pub fn build(recipe: &GoldenRecipe) -> Result<BuiltGolden, GoldenBuildError> {
    build_with_progress(recipe, &q35_quant::progress::silent)
}

/// [`build`], reporting its stages (`loading`, `calibrating`,
/// `quantizing`, `building the golden model`) and each quantized matrix
/// to `progress`, with the quantized-model cache the environment names
/// ([`QuantCache::from_env`]).
pub fn build_with_progress(
    recipe: &GoldenRecipe,
    progress: &dyn Fn(q35_quant::Progress<'_>),
) -> Result<BuiltGolden, GoldenBuildError> {
    build_with(recipe, QuantCache::from_env().as_ref(), progress)
}

/// [`build_with_progress`] with `cache` (`None`: quantize, cache nothing).
/// A hit skips the calibration and the quantization; the golden model is
/// built from the cached matrices exactly as from computed ones
/// ([`golden_of_layers`]).
pub fn build_with(
    recipe: &GoldenRecipe,
    cache: Option<&QuantCache>,
    progress: &dyn Fn(q35_quant::Progress<'_>),
) -> Result<BuiltGolden, GoldenBuildError> {
    use q35_quant::Progress::Stage;
    let path = &recipe.model_toml;
    progress(Stage("loading"));
    let model_err = |error| GoldenBuildError::Model {
        path: path.clone(),
        error,
    };
    let reference_err = |error| GoldenBuildError::Reference {
        path: path.clone(),
        error,
    };
    let spec = q35_model::load(path).map_err(model_err)?;
    let gguf = spec.open_gguf().map_err(model_err)?;
    let mut model = Model::from_spec(&spec, gguf.as_ref()).map_err(reference_err)?;
    model
        .set_threads(recipe.threads.max(1))
        .map_err(reference_err)?;
    let tokenizer = match &gguf {
        Some(g) => Some(
            Tokenizer::from_gguf(g).map_err(|error| GoldenBuildError::Tokenizer {
                path: path.clone(),
                error,
            })?,
        ),
        None => None,
    };
    let tokenizer_gguf = gguf.as_ref().map(Tokenizer::tokenizer_gguf);
    let scheme = spec.quant.scheme;
    let group_size = spec.quant.group_size as usize;
    let methods = methods(&spec.quant);
    let options = QuantOptions {
        threads: recipe.threads.max(1),
    };
    let policy = SchemePolicy::uniform(scheme);
    let quant_err = |error| GoldenBuildError::Quant {
        path: path.clone(),
        error,
    };
    // The cache serves the methods a model.toml can ask for (the others
    // rewrite the model from its calibration, which the key does not hold).
    let key = match cache {
        Some(_) if cacheable(&methods) => Some(cache_key(recipe, &spec, &methods).map_err(
            |what| GoldenBuildError::Calib {
                path: recipe.calib.clone().unwrap_or_else(|| path.clone()),
                what,
            },
        )?),
        _ => None,
    };
    let mut cache_use = CacheUse::Off;
    let mut cached = None;
    if let (Some(c), Some(k)) = (cache, &key) {
        if c.path_of(k).exists() {
            progress(Stage("reading the quantized model from the cache"));
        }
        let ids = model.linear_ids();
        let id_of = |name: &str| ids.iter().copied().find(|id| id.gguf_name() == name);
        match c.load(k, &id_of) {
            Lookup::Hit(layers) => {
                progress(Stage("building the golden model"));
                let golden = golden_of_layers(
                    &model,
                    &methods,
                    recipe.calib.is_some(),
                    &layers,
                    recipe.positions,
                )
                .map_err(quant_err)?;
                cache_use = CacheUse::Hit(c.path_of(k));
                cached = Some((layers, golden));
            }
            Lookup::Miss => {}
            Lookup::Bad(why) => cache_use = CacheUse::Replaced(why),
        }
    }
    let (layers, golden) = match (cached, &recipe.calib) {
        (Some(hit), _) => hit,
        (None, Some(calib)) => {
            let text = read_text(calib)?;
            let tokens = text_tokens(tokenizer.as_ref(), model.config().vocab, &text);
            if tokens.is_empty() {
                return Err(GoldenBuildError::Calib {
                    path: calib.clone(),
                    what: "holds no text".into(),
                });
            }
            progress(Stage("calibrating"));
            QuantPipeline::calibrate_with(
                &model,
                &tokens,
                recipe.calib_ctx,
                recipe.calib_samples,
                group_size,
                options,
                methods,
                progress,
            )
            .and_then(|p| {
                progress(Stage("quantizing"));
                let layers = p.quantize_with_progress(policy, progress)?;
                progress(Stage("building the golden model"));
                let golden = p.golden(&layers, recipe.positions)?;
                Ok((layers, golden))
            })
            .map_err(quant_err)?
        }
        (None, None) if scheme.needs_importance() => {
            return Err(GoldenBuildError::NeedsCalib {
                path: path.clone(),
                scheme,
            });
        }
        (None, None) => {
            // Without calibration the pipeline's rewrite is done here: the
            // stream rotation rewrites the model, and its golden model
            // mixes the head's input.
            let rotated = match methods.rotate_stream {
                Some(kind) => Some(rotate_stream_model(&model, kind).map_err(quant_err)?),
                None => None,
            };
            let m = rotated.as_ref().map_or(&model, |r| &r.model);
            progress(Stage("quantizing"));
            let layers = model_weights(m)
                .and_then(|w| {
                    quantize_model_with(
                        m, &w, policy, group_size, None, options, &methods, progress,
                    )
                })
                .map_err(quant_err)?;
            progress(Stage("building the golden model"));
            let mix = rotated.as_ref().map(|r| &r.head_mix);
            let golden = golden_on(m, mix, None, &layers, recipe.positions).map_err(quant_err)?;
            (layers, golden)
        }
    };
    if let (Some(c), Some(k)) = (cache, &key)
        && !matches!(cache_use, CacheUse::Hit(_))
    {
        progress(Stage("caching the quantized model"));
        cache_use = match (c.store(k, &layers), cache_use) {
            (Ok(_), CacheUse::Replaced(why)) => CacheUse::Replaced(why),
            (Ok(p), _) => CacheUse::Stored(p),
            (Err(why), _) => CacheUse::NotStored(why),
        };
    }
    Ok(built(
        spec,
        tokenizer,
        tokenizer_gguf,
        layers,
        golden,
        cache_use,
    ))
}

/// The [`BuiltGolden`] of quantized `layers` and their `golden` model.
fn built(
    spec: q35_model::ModelSpec,
    tokenizer: Option<Tokenizer>,
    tokenizer_gguf: Option<Vec<u8>>,
    layers: Vec<q35_quant::model::QuantizedLayer>,
    golden: GoldenModel,
    cache: CacheUse,
) -> BuiltGolden {
    let head_id = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    let head = layers
        .iter()
        .find(|l| l.id == head_id)
        .map(|l| l.matrix.clone());
    let layers = layers
        .into_iter()
        .map(|l| (l.id.gguf_name(), l.matrix))
        .collect();
    BuiltGolden {
        golden,
        name: spec.name,
        tokenizer,
        tokenizer_gguf,
        head,
        layers,
        scheme: spec.quant.scheme,
        group_size: spec.quant.group_size as usize,
        quant: spec.quant,
        cache,
    }
}

/// Whether the quantized-model cache serves `methods`: those [`methods`]
/// makes from a model.toml, none of which rewrites the model from its
/// calibration.
fn cacheable(m: &Methods) -> bool {
    m.smooth.is_none() && !m.rotate_vo && m.rotate_head.is_none() && !m.rotate_down
}

/// The cache key of the matrices `recipe` quantizes (see
/// [`crate::quant_cache`]): the weights' bytes (or seed), the architecture,
/// the quantization settings and methods, the calibration text, window
/// and sample count. An unreadable file is an error naming it.
fn cache_key(
    recipe: &GoldenRecipe,
    spec: &q35_model::ModelSpec,
    methods: &Methods,
) -> Result<Key, String> {
    let mut k = KeyBuilder::new();
    k.part("architecture", format!("{:?}", spec.arch).as_bytes());
    match &spec.weights {
        q35_model::WeightSource::Gguf { path } => {
            k.file("gguf", path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        other => {
            k.part("weights", format!("{other:?}").as_bytes());
        }
    }
    k.part("quantization", format!("{:?}", spec.quant).as_bytes());
    k.part("methods", format!("{methods:?}").as_bytes());
    match &recipe.calib {
        Some(c) => {
            k.file("calibration", c)
                .map_err(|e| format!("{}: {e}", c.display()))?;
        }
        None => {
            k.part("calibration", b"none");
        }
    }
    k.part(
        "calibration window and samples",
        format!("{} {}", recipe.calib_ctx, recipe.calib_samples).as_bytes(),
    );
    Ok(k.finish())
}

/// The golden model of quantized `layers`, as the quantizing path builds
/// it for [`cacheable`] methods: over the stream-rotated model (and its
/// head mix) when the methods rotate the stream, with the methods'
/// activation scales when the layers were calibrated
/// ([`QuantPipeline::golden`]'s steps for those methods).
pub fn golden_of_layers(
    model: &Model,
    methods: &Methods,
    calibrated: bool,
    layers: &[q35_quant::model::QuantizedLayer],
    positions: usize,
) -> Result<GoldenModel, q35_quant::model::ModelQuantError> {
    let rotated = match methods.rotate_stream {
        Some(kind) => Some(rotate_stream_model(model, kind)?),
        None => None,
    };
    let m = rotated.as_ref().map_or(model, |r| &r.model);
    let scales = calibrated.then_some(methods.act_scales);
    golden_on(
        m,
        rotated.as_ref().map(|r| &r.head_mix),
        scales,
        layers,
        positions,
    )
}

/// The golden model of quantized `layers` over `m` (the model they were
/// quantized from, rewritten when the methods rewrite it), with the
/// activation scales `scales` (`None`: the golden model's default) and
/// the head's input mixed by `head_mix` when the stream is rotated.
fn golden_on(
    m: &Model,
    head_mix: Option<&std::sync::Arc<[f32]>>,
    scales: Option<q35_contract::ActivationScales>,
    layers: &[q35_quant::model::QuantizedLayer],
    positions: usize,
) -> Result<GoldenModel, q35_quant::model::ModelQuantError> {
    let golden = from_reference(m, layers, positions)?;
    let golden = match scales {
        Some(s) => golden.with_activation_scales(s)?,
        None => golden,
    };
    match head_mix {
        Some(mix) => Ok(golden.with_head_mix(mix.clone())?),
        None => Ok(golden),
    }
}

fn hash_f32(h: &mut Sha256, what: &str, v: &[f32]) {
    h.update(what.as_bytes());
    h.update((v.len() as u64).to_le_bytes());
    for x in v {
        h.update(x.to_bits().to_le_bytes());
    }
}

fn hash_matrix(h: &mut Sha256, what: &str, m: &IntMatrix) {
    h.update(what.as_bytes());
    for v in [m.rows(), m.cols(), m.group_size()] {
        h.update((v as u64).to_le_bytes());
    }
    for r in 0..m.rows() {
        h.update(m.row(r).iter().map(|&q| q as u8).collect::<Vec<u8>>());
        for s in m.row_scales(r) {
            h.update(s.to_bits().to_le_bytes());
        }
    }
}

/// A SHA-256 fingerprint (`sha256:<hex>`) of everything the golden model
/// computes with: the architecture, the embedding, every norm and matrix
/// (integer weights and scales), the head's mix (a rotated model's) and
/// the LM head. Not the number of
/// positions, which only sizes the RoPE table and cache.
pub fn weights_hash(g: &GoldenModel) -> String {
    let mut h = Sha256::new();
    let a = g.arch();
    h.update(a.family.as_bytes());
    for v in [
        a.blocks, a.hidden, a.heads, a.kv_heads, a.head_dim, a.ffn, a.vocab, a.context,
    ] {
        h.update(v.to_le_bytes());
    }
    for v in [a.rope_base, a.norm_eps] {
        h.update(v.to_bits().to_le_bytes());
    }
    h.update([u8::from(a.tied_embeddings)]);
    hash_f32(&mut h, "embedding", g.embedding());
    for (i, b) in g.blocks().iter().enumerate() {
        hash_f32(&mut h, &format!("blk.{i}.attn_norm"), &b.attn_norm);
        hash_f32(&mut h, &format!("blk.{i}.ffn_norm"), &b.ffn_norm);
        for (name, m) in [
            ("q", &b.q),
            ("k", &b.k),
            ("v", &b.v),
            ("o", &b.o),
            ("gate", &b.gate),
            ("up", &b.up),
            ("down", &b.down),
        ] {
            hash_matrix(&mut h, &format!("blk.{i}.{name}"), m);
        }
    }
    hash_f32(&mut h, "output_norm", g.output_norm());
    // Only a rotated model has a head mix, so the fingerprints of the
    // others are what they were.
    if let Some(mix) = g.head_mix() {
        hash_f32(&mut h, "head_mix", mix);
    }
    match g.head() {
        GoldenHead::Quantized(m) => hash_matrix(&mut h, "head.q", m),
        GoldenHead::F32(w) => hash_f32(&mut h, "head.f32", w),
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind model.toml names is a matrix kind of the quantizer, in
    /// the same order, so `group_size_of` reaches the matrices it names.
    #[test]
    fn every_matrix_kind_is_a_quantizer_kind() {
        for (i, stem) in MATRIX_KINDS.iter().enumerate() {
            let kind = linear_kind(stem).unwrap_or_else(|| panic!("{stem}"));
            assert_eq!(kind as usize, i, "{stem}");
        }
        assert_eq!(linear_kind("token_embd"), None);
        let mut quant = QuantConfig::uniform(QuantScheme::Q35, 64);
        quant.group_size_of[1] = Some(128);
        quant.group_size_of[7] = Some(32);
        let m = methods(&quant);
        assert_eq!(m.group_of(LinearKind::K), Some(128));
        assert_eq!(m.group_of(LinearKind::LmHead), Some(32));
        assert_eq!(m.group_of(LinearKind::V), None);
        assert_eq!(
            Methods {
                group_overrides: [None; 8],
                ..m
            },
            Methods::default()
        );
        // `rotation` turns on the stream rotation, and nothing else.
        quant.rotation = Rotation::BlockHadamard;
        let r = methods(&quant);
        assert_eq!(r.rotate_stream, Some(StreamRotation::BlockHadamard));
        assert_eq!(
            Methods {
                rotate_stream: None,
                ..r
            },
            m
        );
    }
}
