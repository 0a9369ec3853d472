//! The q35 MLIR dialect (IRDL) through melior: lowering from the graph and passes.
//!
//! - [`mod@dialect`]: the dialect source (`dialects/q35.irdl.mlir`, embedded) and
//!   [`dialect::create_context`], which loads it into a fresh MLIR context.
//! - [`mod@lower`]: [`q35_frontend::Graph`] to a verified `builtin.module` holding
//!   one `q35.weight` declaration per weight and `func.func @decode`.
//! - [`mod@interp`]: an interpreter of `func.func @decode` on the hardware
//!   contract's semantics, held to the golden model bit for bit.
//! - [`mod@passes`]: the passes (`--q35-verify`, `--q35-check-overflow`,
//!   `--q35-quantize-activations`, `--lpu-lower`), one per file, registered
//!   in one table with typed options, run through MLIR's pass manager.
//! - [`mod@lpu`]: the lpu dialect (op builders from its table, placement
//!   and schedule annotations) and its interpreter, held to the golden
//!   model bit for bit.
//!
//! The ops themselves are defined once in `q35_frontend::ops` (names,
//! operands, attributes, shape rules); the lowering, the IRDL file and
//! `q35-verify` are driven from that table.
//!
//! An MLIR [`melior::Context`] is neither `Send` nor `Sync`: keep each
//! compilation on one thread.

pub mod dialect;
mod error;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod lpu;
pub mod passes;

pub use dialect::{IRDL_SOURCE, create_context, parse_file, parse_module};
pub use error::MlirError;
pub use lower::{
    backend_pipeline, compile, compile_lpu, compile_placed, compile_with, emit_lpu_with, emit_q35,
    emit_q35_with, lower, lpu_pipeline,
};

/// What [`opt`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A file, parsed like `mlir-opt` does (implicit top-level module).
    File(&'a std::path::Path),
    /// Text and the name diagnostics give it (`<stdin>`).
    Text {
        /// The MLIR source.
        source: &'a str,
        /// Its name in diagnostics.
        name: &'a str,
    },
}

/// Parses the input with the q35 dialect loaded, runs the named passes and
/// prints the result.
pub fn opt(
    input: Input<'_>,
    pipeline: &[passes::PassSpec],
    options: passes::RunOptions,
) -> Result<String, MlirError> {
    let context = create_context()?;
    let mut module = match input {
        Input::File(path) => parse_file(&context, path)?,
        Input::Text { source, name } => parse_module(&context, source, name)?,
    };
    passes::run_with(&context, &mut module, pipeline, options)?;
    Ok(module.as_operation().to_string())
}
