//! The IRDL text of the dialect (`dialects/q35.irdl.mlir`), generated from
//! [`super::OPS`]. The checked-in file must equal [`render`]'s output
//! (`compiler/frontend/tests/irdl.rs`; `Q35_BLESS=1` rewrites it).

use std::fmt::Write;

use super::{AttrKind, OPS, OpDef, ValueDef, ValueKind};

/// The file's header: what the dialect is and what IRDL checks.
const HEADER: &str = "\
// The `q35` dialect: a LLaMA-family decoder step at graph level.
//
// GENERATED from the op table `q35_frontend::ops::OPS`
// (compiler/frontend/src/ops/mod.rs): do not edit. Regenerate with
// `Q35_BLESS=1 cargo test -p q35-frontend --test irdl`. `q35c` embeds this
// file and loads it through melior; stock tools load it with
// `mlir-opt --irdl-file=dialects/q35.irdl.mlir`.
//
// What IRDL checks here: operand/result counts and that they are tensors (or
// `index`), required attributes and their kinds, and type equality where one
// constraint value is used twice (for example `q35.add` needs lhs, rhs and
// result of one type). What it cannot check (element types and dimensions of
// builtin tensors, that a symbol names a `q35.weight`, that K matches the
// weight) is checked by the `q35-verify` pass with the table's shape rules
// (`q35_frontend::ops::rules`).
//
// Conventions:
// - Activations are `tensor<?xDxf32>`: `?` tokens decoded in one step, starting
//   at position `%pos : index`.
// - Weights live in module-level `q35.weight` declarations and are referenced
//   by symbol (`@blk.0.attn_q`); their values are never inlined. A weight's
//   type is a tensor in [rows, columns] = [out, in] order; quantized weights
//   have element type `!q35.qweight<\"scheme\", group_size>`.
// - Matmuls quantize their input per token to int8 (`act_type = i8`) and
//   accumulate in int32 (`acc_type = i32`) on the systolic array; the result is
//   dequantized to f32 with the activation and weight scales.
//   `q35-quantize-activations` makes the quantization explicit
//   (`q35.quantize` feeding `q35.qmatmul`).
// - The KV cache is one tensor<blocks x 2 x max_seq x kv_heads x head_dim x f32>
//   threaded through the function: `q35.kv_write` returns the updated cache.
irdl.dialect @q35 {
  // Element type of a quantized weight tensor: the quantization scheme
  // (q35, q35-rtn, q35-alternating, int8, int4, int3) and its group size.
  irdl.type @qweight {
    %scheme = irdl.base \"#builtin.string\"
    %group = irdl.base \"#builtin.integer\"
    irdl.parameters(scheme: %scheme, group_size: %group)
  }
";

/// The IRDL constraint of an attribute kind.
fn attr_constraint(kind: AttrKind) -> String {
    match kind {
        AttrKind::Symbol => "irdl.base \"#builtin.symbol_ref\"".into(),
        AttrKind::F32 => "irdl.base \"#builtin.float\"".into(),
        AttrKind::Int | AttrKind::Bool => "irdl.base \"#builtin.integer\"".into(),
        AttrKind::Str => "irdl.base \"#builtin.string\"".into(),
        AttrKind::Type => "irdl.base \"#builtin.type\"".into(),
        AttrKind::IsType(t) => format!("irdl.is {t}"),
        AttrKind::IsStr(s) => format!("irdl.is \"{s}\""),
    }
}

/// The constraint variable of a value: its own, or the one it is tied to.
fn var(def: &OpDef, v: &ValueDef) -> &'static str {
    match v.same_as {
        Some(target) => def
            .operands
            .iter()
            .chain(def.results)
            .find(|w| w.name == target)
            .map_or(target, |w| var(def, w)),
        None => v.name,
    }
}

fn values(def: &OpDef, list: &[ValueDef]) -> String {
    list.iter()
        .map(|v| format!("{}: %{}", v.name, var(def, v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_op(out: &mut String, def: &OpDef) {
    out.push('\n');
    for line in def.doc.lines() {
        let _ = writeln!(out, "  // {}", line.trim());
    }
    let mnemonic = def.name.split_once('.').map_or(def.name, |(_, m)| m);
    let _ = writeln!(out, "  irdl.operation @{mnemonic} {{");
    for v in def.operands.iter().chain(def.results) {
        if v.same_as.is_some() {
            continue;
        }
        let constraint = match v.kind {
            ValueKind::Tensor => "irdl.base \"!builtin.tensor\"",
            ValueKind::Index => "irdl.is index",
        };
        let _ = writeln!(out, "    %{} = {constraint}", v.name);
    }
    for a in def.attributes {
        let _ = writeln!(out, "    %{} = {}", a.name, attr_constraint(a.kind));
    }
    if !def.attributes.is_empty() {
        let entries: Vec<String> = def
            .attributes
            .iter()
            .map(|a| format!("\"{0}\" = %{0}", a.name))
            .collect();
        let _ = writeln!(out, "    irdl.attributes {{ {} }}", entries.join(", "));
    }
    if !def.operands.is_empty() {
        let _ = writeln!(out, "    irdl.operands({})", values(def, def.operands));
    }
    if !def.results.is_empty() {
        let _ = writeln!(out, "    irdl.results({})", values(def, def.results));
    }
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
