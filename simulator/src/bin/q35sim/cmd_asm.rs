//! `q35sim asm FILE.lpuasm -o FILE.lpubin [--target FILE]`: assemble
//! (`q35_isa::assemble`, errors at file:line:col) and write the binary for
//! the target atomically (a temporary file renamed over the output).

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::Failure;

/// Arguments of `q35sim asm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The assembly text.
    file: PathBuf,
    /// The binary to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Target description (default: the built-in lpu-v1).
    #[arg(long)]
    target: Option<PathBuf>,
}

/// Assembles and writes.
pub fn run(args: Args) -> Result<(), Failure> {
    Ok(assemble(args)?)
}

fn assemble(args: Args) -> anyhow::Result<()> {
    let config = crate::target(args.target.as_ref())?;
    let name = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).with_context(|| name.clone())?;
    let program = q35_isa::assemble(&name, &text)?;
    if program.target != config.target_name {
        bail!(
            "{name}: `.target {}`, but the target is `{}`",
            program.target,
            config.target_name
        );
    }
    let builder = program
        .to_lpubin(
            &config.target,
            concat!("q35sim ", env!("CARGO_PKG_VERSION")),
        )
        .with_context(|| name.clone())?;
    builder.write_to(&args.output)?;
    Ok(())
}
