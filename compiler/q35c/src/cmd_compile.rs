//! `q35c compile MODEL.toml --emit=q35|lpu|graph [--context N] [-o OUT]`:
//! model description to q35 MLIR, to the lpu dialect (one decode step at
//! the machine's level, docs/lpu-dialect.md), or to the frontend's graph in
//! DOT.
//!
//! Loads and validates the model description (and its GGUF, if any), builds
//! the decoder graph, lowers it into the `q35` dialect, verifies the module,
//! runs the compile pipeline (`q35-verify`, `q35-check-overflow`; for
//! `--emit=lpu` then `q35-quantize-activations` and `lpu-lower`) and writes
//! the module. `--print-ir-after-all` prints the module after every pass to
//! stderr under MLIR's `// -----// IR Dump After <pass> ... //----- //`
//! headers. `-o -` (the default) writes to stdout; a file is written
//! through a temporary in the same directory and renamed on success, so a
//! failed compile leaves nothing behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Arguments of `q35c compile`.
#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The model description (model.toml).
    pub model: PathBuf,
    /// What to emit.
    #[arg(long, value_enum, default_value_t = Emit::Q35)]
    pub emit: Emit,
    /// Print the module to stderr after every pass of the compile pipeline.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// Positions of the compiled context (--emit=lpu; default: the
    /// model.toml's [runtime] max_seq_len).
    #[arg(long, value_name = "N")]
    pub context: Option<u64>,
    /// Output file; `-` writes to stdout.
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
}

/// The stop-point of a compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The module in the q35 dialect (MLIR text).
    Q35,
    /// The module in the lpu dialect: one decode step in MEM buffers, tiled
    /// weights (MLIR text).
    Lpu,
    /// The frontend's dataflow graph in Graphviz DOT (before MLIR).
    Graph,
}

/// Runs `q35c compile`.
pub fn run(args: &CompileArgs) -> anyhow::Result<()> {
    let spec = q35_model::load(&args.model)
        .with_context(|| format!("cannot load model description {}", args.model.display()))?;
    let options = q35_mlir::passes::RunOptions {
        print_ir_after_all: args.print_ir_after_all,
    };
    if args.context.is_some() && args.emit != Emit::Lpu {
        anyhow::bail!("--context applies to --emit=lpu (the q35 module keeps max_seq_len)");
    }
    let text = match args.emit {
        Emit::Q35 => q35_mlir::emit_q35_with(&spec, options).with_context(|| {
            format!("cannot compile {} to the q35 dialect", args.model.display())
        })?,
        Emit::Lpu => q35_mlir::emit_lpu_with(&spec, args.context, options).with_context(|| {
            format!("cannot compile {} to the lpu dialect", args.model.display())
        })?,
        Emit::Graph => q35_frontend::build(&spec)
            .with_context(|| format!("cannot build the graph of {}", args.model.display()))?
            .to_dot(),
    };
    write_output(&args.output, text.as_bytes())
}

/// Writes `bytes` to `path` (`-` is stdout). A file is written to a temporary
/// in the destination directory and renamed into place, so an error leaves no
/// partial output behind.
pub(crate) fn write_output(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).context("cannot write to stdout")?;
        return out.flush().context("cannot write to stdout");
    }
    let name = path
        .file_name()
        .with_context(|| format!("output path {} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()));
    if result.is_err() {
        // Best effort: the temporary may not exist if the write never started.
        let _ = fs::remove_file(&tmp);
    }
    result
}
