//! model.toml: the description of a LLaMA-family model that q35 compiles.
//!
//! [`load`] reads a model.toml (schema in docs/model-toml.md) in two steps:
//! [`parse`] checks the text table by table into a [`ModelToml`] without
//! opening anything, then [`ModelToml::resolve`] reads the architecture from
//! the GGUF file's metadata when weights come from one (checking every value
//! the TOML also gives against it) and loads a target file. The machine
//! (`[target]`) is a [`q35_target::Target`]. Errors name the file, the line
//! and column where known, the key, and what was expected; nothing here
//! panics on bad input.

mod arch;
mod error;
mod parse;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use arch::{Architecture, LLAMA_FAMILY, LinearSpec, from_gguf as architecture_from_gguf};
pub use error::ModelError;
pub use parse::{ModelToml, parse};
pub use q35_target::{Target, TargetError};

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

/// Weight quantization schemes (docs/q35-format.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantScheme {
    /// Q35, 3.5 bits a weight, with activation-aware scales and 4-bit slots.
    Q35,
    /// Q35 with round-to-nearest scales and magnitude-chosen slots.
    Q35Rtn,
    /// 3.5 bits a weight with a fixed alternation of 4-bit and 3-bit slots.
    Q35Alternating,
    /// Uniform symmetric int8.
    Int8,
    /// Uniform symmetric int4.
    Int4,
    /// Uniform symmetric int3.
    Int3,
}

impl QuantScheme {
    /// Every scheme, in the order reports list them.
    pub const ALL: [QuantScheme; 6] = [
        QuantScheme::Int8,
        QuantScheme::Int4,
        QuantScheme::Q35,
        QuantScheme::Q35Rtn,
        QuantScheme::Q35Alternating,
        QuantScheme::Int3,
    ];

    /// The spelling used in model.toml and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantScheme::Q35 => "q35",
            QuantScheme::Q35Rtn => "q35-rtn",
            QuantScheme::Q35Alternating => "q35-alternating",
            QuantScheme::Int8 => "int8",
            QuantScheme::Int4 => "int4",
            QuantScheme::Int3 => "int3",
        }
    }
}

impl std::str::FromStr for QuantScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QuantScheme::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = QuantScheme::ALL.iter().map(|q| q.as_str()).collect();
                format!("unknown scheme `{s}`, expected one of {}", all.join(", "))
            })
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// Default group size along the reduction dimension.
pub const DEFAULT_GROUP_SIZE: u32 = 128;
/// Group sizes are multiples of this: 16 channels are 8 Q35 pairs, 7 whole
/// bytes (q35-quant's `CHANNEL_QUANTUM`, which a test holds equal).
pub const GROUP_QUANTUM: u32 = 16;

/// Loads a model.toml: reads it, [`parse`]s it and
/// [resolves](ModelToml::resolve) what it names (the GGUF file, a target
/// file).
pub fn load(path: impl AsRef<Path>) -> Result<ModelSpec, ModelError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)?.resolve()
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
