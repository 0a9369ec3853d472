//! `q35c`: the q35 compiler driver. One module per subcommand (`cmd_*.rs`);
//! errors get file/field context here, at the edge, with `anyhow`.

mod auto;
mod backend;
mod cmd_compile;
mod cmd_eval;
mod cmd_interp;
mod cmd_opt;
mod cmd_quant_report;
mod cmd_run;
mod load;
mod timings;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Subcommand};

/// The q35 compiler: quantized LLaMA-family models for an LPU-style machine.
#[derive(Debug, clap::Parser)]
#[command(name = "q35c", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile a model description (model.toml) to the q35 dialect.
    Compile(cmd_compile::CompileArgs),
    /// Run q35 passes on an MLIR file.
    Opt(cmd_opt::OptArgs),
    /// Generate text with the f32 reference model.
    Run(cmd_run::RunArgs),
    /// Run the compiled q35 IR in the interpreter (--check: against the
    /// golden model, bit for bit).
    Interp(cmd_interp::InterpArgs),
    /// Perplexity (and, with --quant, KL divergence and top-1 agreement of a
    /// quantized model) as llama-perplexity computes it.
    Eval(cmd_eval::EvalArgs),
    /// Compare weight quantization schemes: bits per weight, weight and
    /// layer-output error, and (with --eval) perplexity/KLD vs f32.
    QuantReport(cmd_quant_report::QuantReportArgs),
}

fn main() -> ExitCode {
    q35_host::pipe::default_sigpipe();
    // `opt` gets one flag per registered pass, built at run time.
    let matches = Cli::command()
        .mut_subcommand("opt", cmd_opt::with_pass_flags)
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        Command::Compile(args) => cmd_compile::run(args),
        Command::Opt(args) => match matches.subcommand_matches("opt") {
            Some(m) => cmd_opt::run(args, m),
            None => Err(anyhow::anyhow!("internal: no matches for `opt`")),
        },
        Command::Run(args) => cmd_run::run(args),
        Command::Interp(args) => cmd_interp::run(args),
        Command::Eval(args) => cmd_eval::run(args),
        Command::QuantReport(args) => cmd_quant_report::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `outer: inner`, skipping a cause whose text
/// the message already contains (library errors often repeat their source).
fn render(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
