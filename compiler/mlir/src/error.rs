//! Typed errors of dialect loading, lowering and passes.

use thiserror::Error;

use crate::passes::Diagnostic;

/// What can go wrong between a graph and a verified q35 module.
#[derive(Debug, Error)]
pub enum MlirError {
    /// The graph could not be built.
    #[error(transparent)]
    Frontend(#[from] q35_frontend::FrontendError),
    /// The embedded IRDL dialect did not parse or load (a build defect).
    #[error("the q35/lpu dialects (dialects/*.irdl.mlir) failed to load: {0}")]
    Dialect(String),
    /// The input MLIR did not parse.
    #[error("cannot parse the MLIR input:\n{}", .diagnostics.join("\n"))]
    Parse {
        /// MLIR's diagnostics.
        diagnostics: Vec<String>,
    },
    /// A constructed op was rejected by MLIR.
    #[error("cannot build `{op}`: {message}")]
    Build {
        /// The op name.
        op: String,
        /// MLIR's message.
        message: String,
    },
    /// A module attribute could not be built from its description.
    #[error("cannot build module attribute `{name}`: {message}")]
    Attribute {
        /// The attribute (`q35.target`).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The graph could not be lowered.
    #[error("cannot lower node `{node}`: {problem}")]
    Lower {
        /// The graph node.
        node: String,
        /// What is wrong.
        problem: String,
    },
    /// The module failed MLIR verification.
    #[error("the module failed verification:\n{}", .diagnostics.join("\n"))]
    Verify {
        /// MLIR's diagnostics.
        diagnostics: Vec<String>,
    },
    /// A pass name that is not registered.
    #[error("unknown pass `{0}` (known: {known})", known = crate::passes::names().join(", "))]
    UnknownPass(String),
    /// A pass option that does not parse.
    #[error("pass `{pass}`: {message}")]
    PassOption {
        /// The pass.
        pass: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A pipeline string that does not parse.
    #[error("bad pass pipeline `{pipeline}`: {message}")]
    Pipeline {
        /// The pipeline text.
        pipeline: String,
        /// What is wrong.
        message: String,
    },
    /// A pass reported errors.
    #[error("{pass} failed:\n{}", render(.diagnostics))]
    Pass {
        /// The failing pass.
        pass: &'static str,
        /// The pass's diagnostics, in IR order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
