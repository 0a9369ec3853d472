//! Diagnostics for model.toml and target files: always the file, and where
//! known the line, column and key, plus what was expected.

use std::path::PathBuf;

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
}

struct Loc(Option<(usize, usize)>);

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((l, c)) => write!(f, ":{l}:{c}"),
            None => Ok(()),
        }
    }
}

/// 1-based (line, column) of byte `offset` in `src`.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// The dotted key (`architecture.hidden`) of a `key = value` line holding
/// byte `offset`, from the nearest `[table]` header above it.
pub(crate) fn key_at(src: &str, offset: usize) -> Option<String> {
    let offset = offset.min(src.len());
    let start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = src[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = src[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}
