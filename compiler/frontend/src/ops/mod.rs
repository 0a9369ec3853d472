//! The q35 ops, defined once: name, operands, results, attributes and shape
//! rule of every op of the `q35` dialect (in the style of MLIR's ODS and
//! Cranelift's meta crate).
//!
//! [`OPS`] is the one table. Everything else is derived from it:
//! - the IRDL dialect `dialects/q35.irdl.mlir` is generated from it
//!   ([`irdl::render`]; a test fails when the checked-in file differs, and
//!   `Q35_BLESS=1` rewrites it);
//! - the MLIR lowering (`q35_mlir::lower`) takes op and attribute names
//!   from it and the attribute values from [`crate::Op::attributes`], in
//!   table order;
//! - the shape and type rules ([`rules::check`]) are written once over
//!   [`ValueType`] and an [`OpView`], which both the frontend's graph nodes
//!   ([`crate::Graph::verify`]) and parsed MLIR ops (the `q35-verify` pass)
//!   implement.
//!
//! [`OpKind`] is the op's identity for dispatch (`from_name`/`name`); match
//! on it exhaustively. This module knows nothing of MLIR's API.
//!
//! Adding an op: one entry in [`OPS`] (and a variant in [`OpKind`], in the
//! same position), its rule in [`rules`], then `Q35_BLESS=1 cargo test -p
//! q35-frontend --test irdl` regenerates the IRDL; document its semantics in
//! docs/q35-dialect.md.

pub mod irdl;
pub mod rules;
mod types;

pub use rules::{AttrValue, OpView, RuleError, check};
pub use types::{Elem, ValueType};

/// The dialect's name, the prefix of every op (`q35.matmul`).
pub const DIALECT: &str = "q35";

/// Names of the module attributes `q35_mlir::lower` writes.
pub mod module_attr {
    /// The model name (string).
    pub const MODEL: &str = "q35.model";
    /// Where the weights come from (`gguf:FILE`, `synthetic:SEED`, `none`).
    pub const WEIGHTS: &str = "q35.weights";
    /// The architecture (dictionary).
    pub const ARCH: &str = "q35.arch";
    /// The quantization settings (dictionary).
    pub const QUANT: &str = "q35.quant";
    /// Runtime limits (dictionary).
    pub const LIMITS: &str = "q35.limits";
    /// The whole target description (dictionary; docs/target.md).
    pub const TARGET: &str = "q35.target";
}

/// Identity of a q35 op, for dispatch. In [`OPS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `q35.weight`: a module-level weight declaration.
    Weight,
    /// `q35.embed`: token embedding lookup.
    Embed,
    /// `q35.rmsnorm`.
    RmsNorm,
    /// `q35.matmul`: f32 input quantized per token, int32 accumulation.
    MatMul,
    /// `q35.rope`.
    Rope,
    /// `q35.kv_write`.
    KvWrite,
    /// `q35.attention`.
    Attention,
    /// `q35.add`.
    Add,
    /// `q35.swiglu`.
    SwiGlu,
    /// `q35.lm_head`.
    LmHead,
    /// `q35.quantize`: f32 activations to int8 codes and a per-token scale.
    Quantize,
    /// `q35.qmatmul`: a matmul of already-quantized activations.
    QMatMul,
    /// `q35.mix`: an f32 matrix-vector product along lanes (the rotated
    /// stream's mix before the LM head).
    Mix,
}

impl OpKind {
    /// Every op, in table order.
    pub const ALL: [OpKind; 13] = [
        OpKind::Weight,
        OpKind::Embed,
        OpKind::RmsNorm,
        OpKind::MatMul,
        OpKind::Rope,
        OpKind::KvWrite,
        OpKind::Attention,
        OpKind::Add,
        OpKind::SwiGlu,
        OpKind::LmHead,
        OpKind::Quantize,
        OpKind::QMatMul,
        OpKind::Mix,
    ];

    /// The op's definition.
    pub fn def(self) -> &'static OpDef {
        &OPS[self as usize]
    }

    /// The full op name (`q35.matmul`).
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The name without the dialect prefix (`matmul`).
    pub fn mnemonic(self) -> &'static str {
        let name = self.name();
        name.split_once('.').map_or(name, |(_, m)| m)
    }

    /// The op named `name` (`q35.matmul`), if it is one.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// What a value (operand or result) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A builtin tensor (element type and shape are the rule's business).
    Tensor,
    /// An `index` scalar (a position).
    Index,
}

/// An operand or result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueDef {
    /// Its name (IRDL requires one).
    pub name: &'static str,
    /// Its kind.
    pub kind: ValueKind,
    /// The earlier value (operand or result) whose type this one must equal;
    /// IRDL checks it by reusing one constraint variable.
    pub same_as: Option<&'static str>,
}

/// The kind of an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// A flat symbol reference to a `q35.weight` (`@blk.0.attn_q`).
    Symbol,
    /// An f32 float.
    F32,
    /// A 64-bit integer.
    Int,
    /// A boolean (`i1` integer).
    Bool,
    /// A string.
    Str,
    /// A type.
    Type,
    /// Exactly this type (`i8`): a constant the op states, not a parameter.
    IsType(&'static str),
    /// Exactly this string: a constant the op states.
    IsStr(&'static str),
}

impl AttrKind {
    /// Whether the table fixes the value (so no one supplies it).
    pub fn is_constant(self) -> bool {
        matches!(self, AttrKind::IsType(_) | AttrKind::IsStr(_))
    }
}

/// A required attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrDef {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: AttrKind,
}

/// One op of the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDef {
    /// Its identity.
    pub kind: OpKind,
    /// Full name (`q35.matmul`).
    pub name: &'static str,
    /// What it computes (the IRDL comment above it).
    pub doc: &'static str,
    /// Operands, in order.
    pub operands: &'static [ValueDef],
    /// Results, in order.
    pub results: &'static [ValueDef],
    /// Required attributes.
    pub attributes: &'static [AttrDef],
}

impl OpDef {
    /// The attribute named `name`, if declared.
    pub fn attribute(&self, name: &str) -> Option<&'static AttrDef> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The attributes someone must supply (not fixed by the table), in order.
    pub fn parameters(&self) -> impl Iterator<Item = &'static AttrDef> + use<> {
        self.attributes.iter().filter(|a| !a.kind.is_constant())
    }
}

const fn tensor(name: &'static str) -> ValueDef {
    ValueDef {
        name,
        kind: ValueKind::Tensor,
        same_as: None,
    }
}

const fn same(name: &'static str, as_: &'static str) -> ValueDef {
    ValueDef {
        name,
        kind: ValueKind::Tensor,
        same_as: Some(as_),
    }
}

const fn index(name: &'static str) -> ValueDef {
    ValueDef {
        name,
        kind: ValueKind::Index,
        same_as: None,
    }
}

const fn attr(name: &'static str, kind: AttrKind) -> AttrDef {
    AttrDef { name, kind }
}

use AttrKind::{Bool, F32, Int, IsStr, IsType, Str, Symbol, Type};

/// The dialect: every op, in [`OpKind`] order.
pub static OPS: [OpDef; 13] = [
    OpDef {
        kind: OpKind::Weight,
        name: "q35.weight",
        doc: "A model weight, declared once at module level. `sym_name` is the symbol\n\
              the ops refer to, `type` its tensor type, `source` the GGUF tensor name.",
        operands: &[],
        results: &[],
        attributes: &[
            attr("sym_name", Str),
            attr("type", Type),
            attr("source", Str),
        ],
    },
    OpDef {
        kind: OpKind::Embed,
        name: "q35.embed",
        doc: "Token embedding lookup: tokens tensor<?xi32> -> tensor<?xhidden x f32>,\n\
              rows of the weight `table` (dequantized).",
        operands: &[tensor("tokens")],
        results: &[tensor("out")],
        attributes: &[attr("table", Symbol)],
    },
    OpDef {
        kind: OpKind::RmsNorm,
        name: "q35.rmsnorm",
        doc: "RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.",
        operands: &[tensor("x")],
        results: &[same("y", "x")],
        attributes: &[attr("weight", Symbol), attr("eps", F32)],
    },
    OpDef {
        kind: OpKind::MatMul,
        name: "q35.matmul",
        doc: "y = x W^T with W = @weight [out, in]: int8 activations (quantized per\n\
              token), int32 accumulation, f32 result.",
        operands: &[tensor("x")],
        results: &[tensor("y")],
        attributes: &[
            attr("weight", Symbol),
            attr("act_type", IsType("i8")),
            attr("acc_type", IsType("i32")),
        ],
    },
    OpDef {
        kind: OpKind::Rope,
        name: "q35.rope",
        doc: "Rotary position embedding on each of `heads` heads of `head_dim`, token t\n\
              at position pos + t, frequencies base^(-2i/head_dim). `pairing =\n\
              \"adjacent\"` rotates (x[2i], x[2i+1]) as llama.cpp's LLAMA_ROPE_TYPE_NORM\n\
              does on GGUF's permuted Q/K rows.",
        operands: &[tensor("x"), index("pos")],
        results: &[same("y", "x")],
        attributes: &[
            attr("heads", Int),
            attr("head_dim", Int),
            attr("base", F32),
            attr("pairing", IsStr("adjacent")),
        ],
    },
    OpDef {
        kind: OpKind::KvWrite,
        name: "q35.kv_write",
        doc: "Writes k and v (tensor<?x kv_heads*head_dim x f32>) of block `layer` into\n\
              the cache at positions pos .. pos+?-1; returns the updated cache.",
        operands: &[tensor("cache"), tensor("k"), same("v", "k"), index("pos")],
        results: &[same("updated", "cache")],
        attributes: &[attr("layer", Int)],
    },
    OpDef {
        kind: OpKind::Attention,
        name: "q35.attention",
        doc: "Grouped-query attention of block `layer`: `heads` query heads share\n\
              `kv_heads` key/value heads read from the cache; with `causal`, token t sees\n\
              positions 0 .. pos+t. Scores are scaled by `scale` (1/sqrt(head_dim)).",
        operands: &[tensor("q"), tensor("cache"), index("pos")],
        results: &[same("out", "q")],
        attributes: &[
            attr("layer", Int),
            attr("heads", Int),
            attr("kv_heads", Int),
            attr("head_dim", Int),
            attr("causal", Bool),
            attr("scale", F32),
        ],
    },
    OpDef {
        kind: OpKind::Add,
        name: "q35.add",
        doc: "Element-wise sum (the residual connections).",
        operands: &[tensor("lhs"), same("rhs", "lhs")],
        results: &[same("sum", "lhs")],
        attributes: &[],
    },
    OpDef {
        kind: OpKind::SwiGlu,
        name: "q35.swiglu",
        doc: "SwiGLU gate: silu(gate) * up, element-wise.",
        operands: &[tensor("gate"), same("up", "gate")],
        results: &[same("out", "gate")],
        attributes: &[],
    },
    OpDef {
        kind: OpKind::LmHead,
        name: "q35.lm_head",
        doc: "Logits: x W^T with W = @weight [vocab, hidden], quantized like\n\
              `q35.matmul`; `tied` says W is the token embedding table.",
        operands: &[tensor("x")],
        results: &[tensor("logits")],
        attributes: &[
            attr("weight", Symbol),
            attr("act_type", IsType("i8")),
            attr("acc_type", IsType("i32")),
            attr("tied", Bool),
        ],
    },
    OpDef {
        kind: OpKind::Quantize,
        name: "q35.quantize",
        doc: "Per-token int8 quantization of activations (docs/q35-format.md 8.1):\n\
              x tensor<?xKxf32> -> codes tensor<?xKxi8> in -127..127 and one f32 scale\n\
              per token (amax / 127; 0 for an all-zero token).",
        operands: &[tensor("x")],
        results: &[tensor("codes"), tensor("scale")],
        attributes: &[],
    },
    OpDef {
        kind: OpKind::QMatMul,
        name: "q35.qmatmul",
        doc: "y = dequant(codes W^T) with W = @weight [out, in]: int8 codes from\n\
              `q35.quantize`, int32 accumulation per group, f32 result scaled by the\n\
              weight's group scales and the token's `scale` (docs/q35-format.md 8.2).",
        operands: &[tensor("codes"), tensor("scale")],
        results: &[tensor("y")],
        attributes: &[attr("weight", Symbol), attr("acc_type", IsType("i32"))],
    },
    OpDef {
        kind: OpKind::Mix,
        name: "q35.mix",
        doc: "f32 mix of each token's features by the square f32 matrix @matrix [N, N]:
              y_r = sum_i M[r, i] * x_i, each product rounded, summed along lanes in
              ascending i from +0.0 (docs/q35-format.md 8.4, `mix_along_lanes`). The
              rotated residual stream's final-norm output is mixed by
              M = R diag(gamma_out) R^T before the LM head (14.5). M is zero outside
              its diagonal blocks of `block` consecutive features.",
        operands: &[tensor("x")],
        results: &[same("y", "x")],
        attributes: &[attr("matrix", Symbol), attr("block", Int)],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_the_table_and_names_round_trip() {
        for (i, k) in OpKind::ALL.into_iter().enumerate() {
            assert_eq!(OPS[i].kind, k);
            assert_eq!(k as usize, i);
            assert_eq!(OpKind::from_name(k.name()), Some(k));
            assert_eq!(format!("{DIALECT}.{}", k.mnemonic()), k.name());
        }
        assert_eq!(OpKind::from_name("q35.conv"), None);
    }

    #[test]
    fn names_in_an_op_are_unique_and_ties_point_backwards() {
        for def in &OPS {
            let values: Vec<&ValueDef> = def.operands.iter().chain(def.results).collect();
            let mut names: Vec<&str> = values.iter().map(|v| v.name).collect();
            names.extend(def.attributes.iter().map(|a| a.name));
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), names.len(), "{}", def.name);
            for (i, v) in values.iter().enumerate() {
                if let Some(target) = v.same_as {
                    assert!(
                        values[..i].iter().any(|w| w.name == target),
                        "{}: {} ties to a later or unknown value",
                        def.name,
                        v.name
                    );
                }
            }
        }
    }
}
