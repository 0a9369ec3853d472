//! Diagnostics for target descriptions: the file, and where known the line,
//! column and dotted key, plus what was expected.

use std::path::PathBuf;

use crate::diag::Loc;

/// Everything that can be wrong with a target description.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        /// The target file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema (unknown key,
    /// missing field, wrong type). `message` comes from the TOML parser and
    /// already names the key.
    #[error("{}:{line}:{col}: {}{message}", path.display(), key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Syntax {
        /// The target file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The dotted key, when the error is on a `key = value` line.
        key: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A value parses but is impossible: a zero count, sizes that disagree.
    #[error("{}{}: `{key}`: {message}", path.display(), Loc(*at))]
    Invalid {
        /// The target file (or what held the description).
        path: PathBuf,
        /// Line and column of the value, when the text is known.
        at: Option<(usize, usize)>,
        /// The dotted key (`mem.bytes`).
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// No built-in target has this name.
    #[error("unknown target `{name}`; built-in targets: {}", crate::builtin_names().join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
    },
}
