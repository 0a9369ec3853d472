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

pub use arch::{
    Architecture, LLAMA_FAMILY, LinearSpec, MAX_BLOCKS, MAX_WIDTH,
    from_gguf as architecture_from_gguf,
};
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
    /// The calibration text of an activation-aware scheme
    /// (`[quantization] calibration`, resolved against the model.toml's
    /// directory); opened by whoever quantizes.
    pub calibration: Option<PathBuf>,
    /// The machine to compile for.
    pub target: Target,
    /// `[target] chips`: the chips of the system the model is split over
    /// (pipeline stages, docs/backend.md 8); 1 unless given.
    pub chips: Chips,
    /// Limits the compiled program is built for.
    pub limits: RuntimeLimits,
}

/// `[target] chips` (and `q35c compile --chips`): how many chips the model
/// is split over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chips {
    /// Exactly this many (at least 1).
    Count(u32),
    /// The fewest that fit, `"auto"` (docs/backend.md 8).
    Auto,
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
    /// Weights per scale along the reduction dimension, for every matrix
    /// without a size of its own in `group_size_of`.
    pub group_size: u32,
    /// `[quantization] group_size_of`: group sizes of their own for some
    /// kinds of matrix, indexed like [`MATRIX_KINDS`] (`None`: `group_size`).
    /// Every size divides the largest of all.
    pub group_size_of: [Option<u32>; MATRIX_KINDS.len()],
    /// `[quantization] rotation`: the residual-stream rotation the model is
    /// quantized and run with (docs/q35-format.md 14.5).
    pub rotation: Rotation,
    /// `[quantization] sequential`: how the quantizer calibrates (block by
    /// block or all on the f32 model; docs/q35-format.md 14.6). A choice of
    /// weights only: the contract and the machine are the same.
    pub sequential: SequentialCalibration,
    /// `[quantization] asymmetric`: GPTAQ's asymmetric target of this
    /// strength in `(0, 1]` (needs `sequential`); `None`: plain GPTQ.
    pub asymmetric: Option<f32>,
}

/// model.toml's `[quantization] sequential`: which inputs each matrix is
/// calibrated on (docs/q35-format.md 14.1 and 14.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SequentialCalibration {
    /// Every matrix on the f32 model's inputs (the default).
    #[default]
    None,
    /// Block by block, each block's matrices on the inputs the blocks
    /// before it produce once quantized, run as the golden integer model
    /// runs them (int8 activations).
    Int8,
    /// Block by block, the quantized blocks run in f32 with their
    /// dequantized weights.
    Dequant,
}

impl SequentialCalibration {
    /// Every choice, as model.toml spells them.
    pub const ALL: [SequentialCalibration; 3] = [
        SequentialCalibration::None,
        SequentialCalibration::Int8,
        SequentialCalibration::Dequant,
    ];

    /// The model.toml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SequentialCalibration::None => "none",
            SequentialCalibration::Int8 => "int8",
            SequentialCalibration::Dequant => "dequant",
        }
    }
}

impl std::fmt::Display for SequentialCalibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// model.toml's `[quantization] rotation`: whether the residual stream is
/// rotated (docs/q35-format.md 14.1 and 14.5). A contract change: with
/// [`Rotation::BlockHadamard`] every norm weight is 1 (folded into the
/// matrices reading it), the matrices and the tied table are stored
/// rotated, and the final norm's output is mixed on line by the
/// block-diagonal `M = R diag(gamma_out) R^T` before the LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rotation {
    /// No rotation: the model as its weights give it (the default).
    #[default]
    None,
    /// `R = blockdiag(H_b / sqrt(b)) D`, `b` the largest power of two
    /// dividing `hidden` (at most 512; 64 for SmolLM2's 576). Needs a tied
    /// LM head.
    BlockHadamard,
}

impl Rotation {
    /// Every choice, as model.toml spells them.
    pub const ALL: [Rotation; 2] = [Rotation::None, Rotation::BlockHadamard];
    /// The spellings of [`Rotation::ALL`].
    pub const NAMES: [&'static str; 2] = ["none", "block-hadamard"];

    /// The model.toml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Rotation::None => "none",
            Rotation::BlockHadamard => "block-hadamard",
        }
    }
}

impl std::fmt::Display for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of weight matrix `[quantization] group_size_of` names, as
/// llama.cpp's tensor names spell them (`blk.N.<kind>.weight`; `output` is
/// the LM head, which is the token embedding when the two are tied), in a
/// block's forward order with the head last.
pub const MATRIX_KINDS: [&str; 8] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "output",
];

impl QuantConfig {
    /// One group size for every matrix.
    pub fn uniform(scheme: QuantScheme, group_size: u32) -> QuantConfig {
        QuantConfig {
            scheme,
            group_size,
            group_size_of: [None; MATRIX_KINDS.len()],
            rotation: Rotation::None,
            sequential: SequentialCalibration::None,
            asymmetric: None,
        }
    }

    /// The group size of matrices of kind `kind` (a [`MATRIX_KINDS`]
    /// entry); `group_size` for a kind without one of its own or not in
    /// the list.
    pub fn group_size_of_kind(&self, kind: &str) -> u32 {
        MATRIX_KINDS
            .iter()
            .position(|&k| k == kind)
            .and_then(|i| self.group_size_of[i])
            .unwrap_or(self.group_size)
    }

    /// The group size of the GGUF weight `tensor` (`blk.3.attn_k.weight`,
    /// `output.weight`; `token_embd.weight` is the LM head's when tied).
    pub fn group_size_of_tensor(&self, tensor: &str) -> u32 {
        let stem = tensor.strip_suffix(".weight").unwrap_or(tensor);
        let kind = match stem.strip_prefix("blk.") {
            Some(rest) => rest.split_once('.').map_or(rest, |(_, k)| k),
            None if stem == "token_embd" => "output",
            None => stem,
        };
        self.group_size_of_kind(kind)
    }

    /// The largest group size of any matrix (every other one divides it).
    pub fn max_group_size(&self) -> u32 {
        self.group_size_of
            .iter()
            .flatten()
            .fold(self.group_size, |a, &g| a.max(g))
    }

    /// The group sizes as people read them: `64`, or `64 (attn_k 128,
    /// attn_v 128)` when some kinds have their own.
    pub fn groups_text(&self) -> String {
        let own: Vec<String> = self
            .group_size_of_pairs()
            .into_iter()
            .map(|(k, g)| format!("{k} {g}"))
            .collect();
        if own.is_empty() {
            self.group_size.to_string()
        } else {
            format!("{} ({})", self.group_size, own.join(", "))
        }
    }

    /// The kinds with a group size of their own and those sizes, in
    /// [`MATRIX_KINDS`] order.
    pub fn group_size_of_pairs(&self) -> Vec<(&'static str, u32)> {
        MATRIX_KINDS
            .iter()
            .zip(self.group_size_of)
            .filter_map(|(&k, g)| g.map(|g| (k, g)))
            .collect()
    }

    /// Whether some kind has a group size of its own that differs from
    /// `group_size`.
    pub fn is_uniform(&self) -> bool {
        self.group_size_of
            .iter()
            .flatten()
            .all(|&g| g == self.group_size)
    }
}

/// Limits the compiled program is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Longest sequence (prompt plus generated tokens), the KV-cache length.
    pub max_seq_len: u32,
    /// Sequences processed together.
    pub batch: u32,
}

/// Default group size along the reduction dimension (q35-contract's).
pub const DEFAULT_GROUP_SIZE: u32 = q35_contract::DEFAULT_GROUP_SIZE as u32;
/// Group sizes are multiples of this: 16 channels are 8 Q35 pairs, 7 whole
/// bytes (q35-contract's `CHANNEL_QUANTUM`).
pub const GROUP_QUANTUM: u32 = q35_contract::CHANNEL_QUANTUM as u32;

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
