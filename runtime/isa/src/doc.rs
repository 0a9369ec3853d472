//! The "Instruction table" section of docs/isa.md, rendered from the table
//! ([`markdown_table`]); `tests/docs.rs` holds the document to it.

use std::fmt::Write as _;

use crate::info::OPCODE_BITS;
use crate::operand::{Access, GroupSize, OperandKind};
use crate::table::INSTRUCTIONS;

/// What a field holds, in a few words.
fn kind_text(kind: OperandKind) -> String {
    match kind {
        OperandKind::Stream { access, group } => {
            let verb = match access {
                Access::Read => "read",
                Access::Write => "write",
            };
            match group {
                GroupSize::Fixed(1) => format!("{verb} 1 stream"),
                GroupSize::Fixed(n) => format!("{verb} {n} streams"),
                GroupSize::ElemWidthOf(ew) => format!("{verb} `{ew}` streams"),
                GroupSize::CountOf(k) => format!("{verb} `{k}` streams"),
            }
        }
        OperandKind::Addr => "word address".to_string(),
        OperandKind::UInt { min, max, .. } => format!("{min}..={max}"),
        OperandKind::Int { .. } => "signed".to_string(),
        OperandKind::F32 => "f32".to_string(),
        OperandKind::ElemWidth => "1, 2, 4 bytes".to_string(),
        OperandKind::Table => "table".to_string(),
        OperandKind::Acc => "`new`, `add`".to_string(),
    }
}

/// The instruction table as markdown: one row per instruction with its
/// unit, syntax, opcode, operand fields (bit ranges, inclusive, and what they
/// hold), latency, issue cycles, occupancy and description; then the legend.
pub fn markdown_table() -> String {
    let mut out = String::new();
    out.push_str(
        "(Generated from `q35_isa::INSTRUCTIONS` by `q35_isa::markdown_table()`; \
         `Q35_BLESS=1 cargo test -p q35-isa` rewrites it.)\n\n",
    );
    out.push_str(
        "| mnemonic | unit | syntax | opcode | operand fields (bits) | latency | issue | occupancy | description |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for info in &INSTRUCTIONS {
        let fields: Vec<String> = info
            .operands
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let r = info.bit_range(i);
                format!(
                    "`{}` {}-{}: {}",
                    spec.name,
                    r.start,
                    r.end - 1,
                    kind_text(spec.kind)
                )
            })
            .collect();
        let fields = if fields.is_empty() {
            "-".to_string()
        } else {
            fields.join("; ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | `{:#04x}` | {} | {} | {} | {} | {} |",
            info.mnemonic,
            info.unit,
            info.synopsis(),
            info.opcode as u8,
            fields,
            match info.latency {
                crate::LatencyClass::None => "-".to_string(),
                other => format!("`{}`", other.parameter()),
            },
            info.issue,
            info.occupancy,
            info.doc,
        );
    }
    let _ = write!(
        out,
        "\nBits 0-{} hold the opcode; bits above the last field are reserved (zero). \
         A stream field is the first stream of a group of the width shown. \
         Latency: cycles from issue until the result is on its output stream (for \
         `write`/`scatter`: until reads see it), the named target parameter. Issue: \
         cycles until the queue issues its next instruction. Occupancy: cycles the unit \
         is busy (a new instruction on a busy unit is a structural hazard).\n",
        OPCODE_BITS - 1
    );
    out
}
