//! `q35c opt FILE.mlir [--q35-verify] [--q35-check-overflow] [--pass-pipeline=a,b]`:
//! runs q35 passes on a module, like `mlir-opt` for the q35 dialect.
//!
//! The input is parsed (and verified) with the q35 dialect loaded; the passes
//! run through MLIR's pass manager with verification after each; the result is
//! printed (`-o -`, the default, is stdout). Pass flags run in registry order;
//! `--pass-pipeline` gives an explicit order. `--list-passes` prints the passes.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::cmd_compile::write_output;

/// Arguments of `q35c opt`.
#[derive(Debug, clap::Args)]
pub struct OptArgs {
    /// Input MLIR file; `-` reads stdin.
    #[arg(required_unless_present = "list_passes")]
    pub input: Option<PathBuf>,
    /// Run `q35-verify`: types, shapes and weight symbols beyond IRDL.
    #[arg(long = "q35-verify")]
    pub verify: bool,
    /// Run `q35-check-overflow`: prove each matmul's int32 accumulator bound.
    #[arg(long = "q35-check-overflow")]
    pub check_overflow: bool,
    /// Passes to run, in this order, comma-separated.
    #[arg(long = "pass-pipeline", value_delimiter = ',', conflicts_with_all = ["verify", "check_overflow"])]
    pub pipeline: Vec<String>,
    /// Print the module to stderr after every pass.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// List the q35 passes and exit.
    #[arg(long)]
    pub list_passes: bool,
    /// Output file; `-` writes to stdout.
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
}

/// Runs `q35c opt`.
pub fn run(args: &OptArgs) -> anyhow::Result<()> {
    if args.list_passes {
        for p in q35_mlir::passes::PASSES {
            println!("--{:<22} {}", p.name, p.description);
        }
        return Ok(());
    }
    let Some(input) = &args.input else {
        bail!("no input file")
    };
    let mut pipeline: Vec<&str> = args.pipeline.iter().map(String::as_str).collect();
    if args.verify {
        pipeline.push("q35-verify");
    }
    if args.check_overflow {
        pipeline.push("q35-check-overflow");
    }
    let options = q35_mlir::passes::RunOptions {
        print_ir_after_all: args.print_ir_after_all,
    };
    let text = if input.as_os_str() == "-" {
        let mut source = String::new();
        std::io::stdin()
            .read_to_string(&mut source)
            .context("cannot read stdin")?;
        q35_mlir::opt(
            q35_mlir::Input::Text {
                source: &source,
                name: "<stdin>",
            },
            &pipeline,
            options,
        )?
    } else {
        // Read first for a plain I/O error; MLIR then parses the file itself.
        std::fs::metadata(input).with_context(|| format!("cannot read {}", input.display()))?;
        q35_mlir::opt(q35_mlir::Input::File(input), &pipeline, options)?
    };
    write_output(&args.output, text.as_bytes())
}
