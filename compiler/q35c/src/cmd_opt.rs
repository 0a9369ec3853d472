//! `q35c opt FILE.mlir [--q35-verify] [--q35-pass=opt=v,...] [--pass-pipeline=...]`:
//! runs q35 passes on a module, like `mlir-opt` for the q35 dialect.
//!
//! The input is parsed (and verified) with the q35 dialect loaded; the passes
//! run through MLIR's pass manager with verification after each; the result is
//! printed (`-o -`, the default, is stdout). One flag per registered pass
//! ([`q35_mlir::passes::PASSES`], added to the command at run time by
//! [`with_pass_flags`], help text included), run in command-line order;
//! `--q35-pass=a=1,b=2` sets its options. `--pass-pipeline` takes MLIR's
//! syntax (`builtin.module(q35-verify,q35-quantize-activations{share=false})`)
//! or a bare comma list. `--list-passes` prints the passes and their options.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, ArgMatches};
use q35_mlir::passes::{self, OptionKind, PassInfo, PassSpec};

use crate::cmd_compile::write_output;

/// Arguments of `q35c opt` (the pass flags are added by [`with_pass_flags`]).
#[derive(Debug, clap::Args)]
pub struct OptArgs {
    /// Input MLIR file; `-` reads stdin.
    #[arg(required_unless_present = "list_passes")]
    pub input: Option<PathBuf>,
    /// The passes to run with their options, in MLIR's syntax
    /// (`builtin.module(a,b{opt=v})`) or as `a,b{opt=v}`.
    #[arg(long = "pass-pipeline", value_name = "PIPELINE")]
    pub pipeline: Option<String>,
    /// Print the module to stderr after every pass.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// List the q35 passes and their options, and exit.
    #[arg(long)]
    pub list_passes: bool,
    /// Output file; `-` writes to stdout.
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
}

fn kind_name(kind: OptionKind) -> &'static str {
    match kind {
        OptionKind::Bool => "true|false",
        OptionKind::UInt => "N",
    }
}

/// The help of a pass: its description, then each option.
fn pass_help(p: &PassInfo) -> String {
    let mut help = p.description.to_string();
    for o in p.options {
        help.push_str(&format!(
            "\n  {}={} (default {}): {}",
            o.name,
            kind_name(o.kind),
            o.default,
            o.help
        ));
    }
    help
}

/// Adds one `--<pass>[=opt=v,...]` flag per registered pass to `opt`.
pub fn with_pass_flags(mut cmd: clap::Command) -> clap::Command {
    for p in passes::PASSES {
        cmd = cmd.arg(
            Arg::new(p.name)
                .long(p.name)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("")
                .value_name("OPTIONS")
                .hide_default_value(true)
                .action(ArgAction::Append)
                .help(pass_help(p))
                .conflicts_with("pipeline"),
        );
    }
    cmd
}

/// The pass flags given, in command-line order, with their options.
fn flag_pipeline(matches: &ArgMatches) -> anyhow::Result<Vec<PassSpec>> {
    let mut given: Vec<(usize, PassSpec)> = Vec::new();
    for p in passes::PASSES {
        let (Some(values), Some(indices)) = (
            matches.get_many::<String>(p.name),
            matches.indices_of(p.name),
        ) else {
            continue;
        };
        for (value, index) in values.zip(indices) {
            given.push((index, PassSpec::new(p.name, value)?));
        }
    }
    given.sort_by_key(|(i, _)| *i);
    Ok(given.into_iter().map(|(_, s)| s).collect())
}

/// Runs `q35c opt`; `matches` are the subcommand's (for the pass flags).
pub fn run(args: &OptArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    if args.list_passes {
        for p in passes::PASSES {
            println!("--{:<26} {}", p.name, p.description);
            for o in p.options {
                println!(
                    "    {}={:<20} {} (default {})",
                    o.name,
                    kind_name(o.kind),
                    o.help,
                    o.default
                );
            }
        }
        return Ok(());
    }
    let Some(input) = &args.input else {
        bail!("no input file")
    };
    let pipeline = match &args.pipeline {
        Some(text) => passes::parse_pipeline(text)?,
        None => flag_pipeline(matches)?,
    };
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
