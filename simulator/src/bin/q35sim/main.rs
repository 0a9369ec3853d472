//! `q35sim`: run, assemble and disassemble programs for q35's LPU-style
//! machine. One module per subcommand. Exit codes: 0 success, 1 the program
//! hit a hazard (or `--max-cycles`), 2 bad input (a missing, truncated or
//! corrupted file, a wrong target, an assembly error, bad arguments).

mod cmd_asm;
mod cmd_batch;
mod cmd_disasm;
mod cmd_generate;
mod cmd_isa;
mod cmd_profile;
mod cmd_run;
mod cmd_system;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "q35sim",
    version,
    about = "Cycle-accurate simulator of q35's LPU-style machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an .lpubin to the end: cycles, per-unit busy cycles, dumps; or
    /// generate text with a compiled model (--prompt / --tokens); or run a
    /// system file (many chips): per-chip cycles, utilisation, link use.
    Run(Box<cmd_run::Args>),
    /// Profile an .lpubin from its static schedule (no values): cycles,
    /// unit busy fractions, ops and layers, --trace, --report.
    Profile(cmd_profile::Args),
    /// Assemble .lpuasm text into an .lpubin (several files, one per chip,
    /// or --chips N: a system file).
    Asm(cmd_asm::Args),
    /// Print an .lpubin as .lpuasm text (reassembles to the same bytes).
    Disasm(cmd_disasm::Args),
    /// Print the instruction table.
    Isa(cmd_isa::Args),
}

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The program broke a rule of the machine (exit 1); already printed.
    Program,
    /// Bad input (exit 2).
    Input(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Input(e)
    }
}

/// The target for `--target`, or the built-in lpu-v1.
pub fn target(path: Option<&PathBuf>) -> anyhow::Result<q35_sim::MachineConfig> {
    Ok(q35_sim::config::load_target(path.map(PathBuf::as_path))?)
}

fn main() -> ExitCode {
    q35_host::pipe::default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(*a),
        Command::Profile(a) => cmd_profile::run(a),
        Command::Asm(a) => cmd_asm::run(a),
        Command::Disasm(a) => cmd_disasm::run(a),
        Command::Isa(a) => cmd_isa::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Program) => ExitCode::from(1),
        Err(Failure::Input(e)) => {
            eprintln!("q35sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
