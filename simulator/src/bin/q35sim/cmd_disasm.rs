//! `q35sim disasm FILE.lpubin`: the binary as `.lpuasm` text
//! (`Program::from_lpubin`, then `Program::to_lpuasm`); assembling the text
//! for the same target gives the same bytes.

use std::path::PathBuf;

use anyhow::Context;
use q35_lpubin::LpuBinary;

use crate::Failure;

/// Arguments of `q35sim disasm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The binary.
    file: PathBuf,
    /// The target description it was built for (default: the built-in
    /// lpu-v1); a binary for another target is refused.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Of a system file: only this chip's program (reassembles to that
    /// chip's bytes).
    #[arg(long, value_name = "N")]
    chip: Option<usize>,
}

/// Prints the program.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = crate::target(args.target.as_ref())?;
    if crate::cmd_system::is_system_file(&args.file)? {
        return crate::cmd_system::disasm(&args.file, &config, args.chip);
    }
    if args.chip.is_some() {
        return Err(anyhow::anyhow!(
            "{}: --chip is for system files; this is a single chip's",
            args.file.display()
        )
        .into());
    }
    let binary = LpuBinary::open(&args.file).map_err(anyhow::Error::from)?;
    let program = q35_isa::Program::from_lpubin(&binary, &config.target)
        .with_context(|| args.file.display().to_string())?;
    print!("{}", program.to_lpuasm());
    Ok(())
}
