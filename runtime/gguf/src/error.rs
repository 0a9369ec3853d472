//! The reader's error type: every variant says which file and what was wrong.

use std::path::{Path, PathBuf};

/// Shows an optional path, or `<memory>` for in-memory images.
pub(crate) struct Shown<'a>(pub &'a Option<PathBuf>);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("<memory>"),
        }
    }
}

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file's structure is invalid at byte `offset`.
    #[error("{}: malformed GGUF at byte {offset}: {what}", Shown(path))]
    Malformed {
        path: Option<PathBuf>,
        offset: u64,
        what: String,
    },
    /// The file ends before a structure it declares.
    #[error(
        "{}: truncated GGUF: {what} needs bytes {offset}..{end} but the file has {len} bytes",
        Shown(path)
    )]
    Truncated {
        path: Option<PathBuf>,
        what: String,
        offset: u64,
        end: u64,
        len: u64,
    },
    /// A required metadata key is absent.
    #[error("{}: metadata key `{key}` is missing", Shown(path))]
    MissingKey { path: Option<PathBuf>, key: String },
    /// A metadata key holds a value of the wrong type.
    #[error(
        "{}: metadata key `{key}` should be a {expected}, found {found}",
        Shown(path)
    )]
    WrongType {
        path: Option<PathBuf>,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// No tensor of that name.
    #[error("{}: tensor `{name}` is missing", Shown(path))]
    MissingTensor { path: Option<PathBuf>, name: String },
    /// The tensor's type has no dequantizer here.
    #[error(
        "{}: tensor `{name}` has type {ggml_type}, which q35 cannot dequantize (supported: F32, F16, Q8_0, Q4_0, Q4_1)",
        Shown(path)
    )]
    Unsupported {
        path: Option<PathBuf>,
        name: String,
        ggml_type: String,
    },
    /// A row range outside the tensor.
    #[error("tensor `{name}`: rows {start}..{end} outside its {rows} rows")]
    RowRange {
        name: String,
        start: u64,
        end: u64,
        rows: u64,
    },
    /// An output buffer of the wrong length.
    #[error("tensor `{name}`: output buffer holds {got} values, {expected} needed")]
    OutputLength {
        name: String,
        expected: usize,
        got: usize,
    },
}

impl GgufError {
    /// Attaches the file's path to errors raised while parsing bytes.
    pub(crate) fn with_path(self, p: Option<&Path>) -> GgufError {
        let p = p.map(Path::to_path_buf);
        match self {
            GgufError::Malformed { offset, what, .. } => GgufError::Malformed {
                path: p,
                offset,
                what,
            },
            GgufError::Truncated {
                what,
                offset,
                end,
                len,
                ..
            } => GgufError::Truncated {
                path: p,
                what,
                offset,
                end,
                len,
            },
            other => other,
        }
    }
}
