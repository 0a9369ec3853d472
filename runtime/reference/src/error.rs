//! The reference model's error type: every variant names what was wrong.

/// Everything that can go wrong building or running the reference model.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Reading the GGUF file failed (the inner error names the file).
    #[error(transparent)]
    Gguf(#[from] q35_gguf::GgufError),
    /// The GGUF holds a model of an architecture this reference does not run.
    #[error(
        "{file}: `general.architecture` is `{arch}`, but the reference model only runs LLaMA-family models (`llama`)"
    )]
    UnsupportedArchitecture { file: String, arch: String },
    /// The architecture description is inconsistent.
    #[error("invalid architecture: {0}")]
    InvalidArchitecture(String),
    /// A weight the architecture needs is absent from the weight source.
    #[error("{source_name}: weight `{name}` is missing")]
    MissingWeight { source_name: String, name: String },
    /// A weight has the wrong shape for the architecture.
    #[error(
        "{source_name}: weight `{name}` has dims {found:?} (GGUF order), expected {expected:?}"
    )]
    WeightShape {
        source_name: String,
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// A metadata value disagrees with the architecture.
    #[error("{source_name}: {what}")]
    Metadata { source_name: String, what: String },
    /// A forward pass, generation or evaluation was given no tokens.
    #[error("empty input: at least one token is needed")]
    EmptyInput,
    /// A token ID outside the vocabulary.
    #[error("token ID {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, vocab: usize },
    /// The sequence would not fit in the context (KV cache capacity).
    #[error("{needed} tokens do not fit in the context of {context} tokens")]
    ContextOverflow { needed: usize, context: usize },
    /// A text too short for the requested evaluation.
    #[error("evaluation needs {needed} tokens ({what}), the text has {have}")]
    NotEnoughTokens {
        needed: usize,
        have: usize,
        what: String,
    },
    /// An invalid generation or evaluation parameter.
    #[error("invalid parameter `{name}`: {what}")]
    InvalidParameter { name: &'static str, what: String },
    /// Two logit sets that should be comparable are not.
    #[error("logits mismatch: {0}")]
    LogitsMismatch(String),
    /// The model description has no weights to run.
    #[error(
        "{model}: the model has no weights (`[weights] source = \"none\"`); the reference needs a GGUF file or synthetic weights"
    )]
    NoWeights { model: String },
    /// The model description names a GGUF file but none was given.
    #[error("{model}: the weights come from a GGUF file, but it was not opened")]
    GgufNotOpened { model: String },
    /// Building the worker thread pool failed.
    #[error("could not start {threads} worker threads: {what}")]
    ThreadPool { threads: usize, what: String },
}
