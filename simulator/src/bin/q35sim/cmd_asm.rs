//! `q35sim asm FILE.lpuasm -o FILE.lpubin [--target FILE]`: assemble
//! (`q35_isa::assemble`, errors at file:line:col) and write the binary for
//! the target atomically (a temporary file renamed over the output).
//! Several files (`[CHIP=]FILE`, one program per chip) or `--chips N` write
//! a system file instead ([`crate::cmd_system::assemble`]): chip `i` runs
//! the `i`-th file, chips no file names run nothing, and the links are the
//! target's for that many chips (docs/target.md "Systems").

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::Failure;

/// Arguments of `q35sim asm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The assembly text; for a system, one file per chip, in chip order
    /// or as `CHIP=FILE`.
    #[arg(required = true, num_args = 1..)]
    files: Vec<String>,
    /// Write a system file of this many chips (default: one per file when
    /// there are several).
    #[arg(long, value_name = "N")]
    chips: Option<u32>,
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
    let one = match args.files.as_slice() {
        [f] if args.chips.is_none() && !f.contains('=') => PathBuf::from(f),
        _ => return crate::cmd_system::assemble(&args.files, args.chips, &args.output, &config),
    };
    let builder = lpubin_of(&one, &config, PRODUCER)?;
    builder.write_to(&args.output)?;
    Ok(())
}

/// What q35sim writes in a binary's producer field.
pub const PRODUCER: &str = concat!("q35sim ", env!("CARGO_PKG_VERSION"));

/// The `.lpuasm` file `path` assembled into a binary for `config`'s
/// target; a file for another target is an error naming it.
pub fn lpubin_of(
    path: &std::path::Path,
    config: &q35_sim::MachineConfig,
    producer: &str,
) -> anyhow::Result<q35_lpubin::Builder> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| name.clone())?;
    let program = q35_isa::assemble(&name, &text)?;
    if program.target != config.target_name {
        bail!(
            "{name}: `.target {}`, but the target is `{}`",
            program.target,
            config.target_name
        );
    }
    program
        .to_lpubin(&config.target, producer)
        .with_context(|| name.clone())
}
