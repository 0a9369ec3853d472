//! The IRDL text of the lpu dialect (`dialects/lpu.irdl.mlir`), generated
//! from [`super::OPS`]. The checked-in file must equal [`render`]'s output
//! (`compiler/frontend/tests/irdl.rs`; `Q35_BLESS=1` rewrites it).

use std::fmt::Write;

use super::{AttrKind, OPS, OpDef};

/// The file's header: what the dialect is and what IRDL checks.
const HEADER: &str = "\
// The `lpu` dialect: one decode step (one token) at the hardware level of
// lpu-v1 (docs/lpu-dialect.md), as `--lpu-lower` produces it.
//
// GENERATED from the op table `q35_frontend::lpu_ops::OPS`
// (compiler/frontend/src/lpu_ops/mod.rs): do not edit. Regenerate with
// `Q35_BLESS=1 cargo test -p q35-frontend --test irdl`. `q35c` embeds this
// file and loads it through melior; stock tools load it with
// `mlir-opt --irdl-file=dialects/q35.irdl.mlir --irdl-file=dialects/lpu.irdl.mlir`
// (an lpu module keeps its `q35.*` module attributes, not q35 ops).
//
// Conventions:
// - Ops have no operands or results: every value is a module-level
//   `lpu.buffer` in MEM (host inputs, the output, KV caches, constants,
//   scratch), and matrices are `lpu.weight`s, named by flat symbol
//   references (`x = @blk.0.attn_norm.out`).
// - One op per model op; tiles are attributes (`col_tiles`, `groups`, the
//   ragged `last_tile_rows` / `last_group_cols`), never ops.
// - Later passes add attributes IRDL does not require: `slices` and `addr`
//   on buffers and weights (placement), `lpu.cycles = [first, last]` on ops
//   and `lpu.total_cycles` on `@decode` (schedule).
// - What IRDL checks here: required attributes and their kinds, and the
//   spelling of a buffer's `kind`. That symbols name buffers of the right
//   type and that shapes agree is the lowering's and the interpreter's job.
irdl.dialect @lpu {
";

/// The IRDL constraint of an attribute kind: `(definitions, variable)`.
fn attr_constraint(name: &str, kind: AttrKind) -> (String, String) {
    let base = |b: &str| (String::new(), format!("irdl.base \"{b}\""));
    match kind {
        AttrKind::Buffer(_) | AttrKind::Weight => base("#builtin.symbol_ref"),
        AttrKind::Int => base("#builtin.integer"),
        AttrKind::F32 => base("#builtin.float"),
        AttrKind::Str => base("#builtin.string"),
        AttrKind::Type => base("#builtin.type"),
        AttrKind::Strings | AttrKind::Ints => base("#builtin.array"),
        AttrKind::OneOf(values) => {
            let mut defs = String::new();
            let mut vars = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let var = format!("%{name}_{i}");
                let _ = writeln!(defs, "    {var} = irdl.is \"{v}\"");
                vars.push(var);
            }
            (defs, format!("irdl.any_of({})", vars.join(", ")))
        }
    }
}

fn render_op(out: &mut String, def: &OpDef) {
    out.push('\n');
    for line in def.doc.lines() {
        let _ = writeln!(out, "  // {}", line.trim());
    }
    for a in def.attributes {
        let _ = writeln!(out, "  //   {}: {}", a.name, a.doc);
    }
    let mnemonic = def.name.split_once('.').map_or(def.name, |(_, m)| m);
    let _ = writeln!(out, "  irdl.operation @{mnemonic} {{");
    for a in def.attributes {
        let (defs, constraint) = attr_constraint(a.name, a.kind);
        out.push_str(&defs);
        let _ = writeln!(out, "    %{} = {constraint}", a.name);
    }
    let entries: Vec<String> = def
        .attributes
        .iter()
        .map(|a| format!("\"{0}\" = %{0}", a.name))
        .collect();
    let _ = writeln!(out, "    irdl.attributes {{ {} }}", entries.join(", "));
    out.push_str("  }\n");
}

/// The whole IRDL file.
pub fn render() -> String {
    let mut out = String::from(HEADER);
    for def in &OPS {
        render_op(&mut out, def);
    }
    out.push_str("}\n");
    out
}
