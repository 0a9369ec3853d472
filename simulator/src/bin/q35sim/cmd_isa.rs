//! `q35sim isa [--markdown]`: the instruction table, generated from
//! `q35_isa::INSTRUCTIONS` (the same table docs/isa.md holds).

use crate::Failure;

/// Arguments of `q35sim isa`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the Markdown table of docs/isa.md.
    #[arg(long)]
    markdown: bool,
}

/// Prints the table.
pub fn run(args: Args) -> Result<(), Failure> {
    if args.markdown {
        print!("{}", q35_isa::markdown_table());
        return Ok(());
    }
    println!(
        "{:<9} {:<7} {:<6} {:<36} {:<28} {:<7} occupancy",
        "mnemonic", "unit", "opcode", "syntax", "latency", "issue"
    );
    for i in &q35_isa::INSTRUCTIONS {
        println!(
            "{:<9} {:<7} {:<6} {:<36} {:<28} {:<7} {}",
            i.mnemonic,
            i.unit.name(),
            format!("{:#04x}", i.opcode as u8),
            i.synopsis(),
            i.latency.parameter(),
            i.issue.to_string(),
            i.occupancy
        );
    }
    Ok(())
}
