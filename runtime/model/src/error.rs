//! Diagnostics for model.toml: always the file, and where known the line,
//! column and key, plus what was expected. Locations are computed by
//! [`q35_target::diag`], which target files share.

use std::path::PathBuf;

use q35_target::diag::Loc;

/// Everything that can be wrong with a model description.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema (unknown key,
    /// missing field, wrong type). `message` comes from the TOML parser and
    /// already names the key.
    #[error("{}:{line}:{col}: {}{message}", path.display(), key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        key: Option<String>,
        message: String,
    },
    /// A value parses but is impossible (a shape that cannot exist, a value
    /// out of range, an option q35 does not support).
    #[error("{}{}: `{key}`: {message}", path.display(), Loc(*at))]
    Invalid {
        path: PathBuf,
        at: Option<(usize, usize)>,
        key: String,
        message: String,
    },
    /// A value given in the TOML disagrees with the GGUF file's metadata.
    #[error(
        "{}{}: `{key}` = {toml_value} disagrees with {} metadata `{gguf_key}` = {gguf_value}",
        path.display(), Loc(*at), gguf.display()
    )]
    Mismatch {
        path: PathBuf,
        at: Option<(usize, usize)>,
        key: String,
        toml_value: String,
        gguf: PathBuf,
        gguf_key: String,
        gguf_value: String,
    },
    /// The GGUF weight file named by the model is unreadable or invalid.
    #[error("{}: `weights.path`: {error}", path.display())]
    Gguf {
        path: PathBuf,
        error: q35_gguf::GgufError,
    },
    /// The GGUF file holds something other than a LLaMA-family model, or its
    /// tensors do not have the shapes its architecture implies.
    #[error("{}: {message}", gguf.display())]
    Weights { gguf: PathBuf, message: String },
    /// The target description (`[target]`) is unreadable or invalid.
    #[error(transparent)]
    Target(#[from] q35_target::TargetError),
}
