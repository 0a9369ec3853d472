//! The shape and type rule of every op, written once over [`OpView`]: the
//! frontend checks graph nodes with it ([`crate::Graph::verify`]), the
//! `q35-verify` pass checks parsed MLIR ops with it.
//!
//! A rule checks the operands and attributes (weights through their
//! declared types) and computes the result types; [`check`] then compares
//! them with the op's actual results. Errors are [`RuleError`]s, rendered
//! by [`RuleError::message`] the same way for both users.

use std::fmt;

use q35_model::QuantScheme;

use super::types::{Elem, ValueType};
use super::{AttrDef, AttrKind, OpDef, OpKind, ValueKind};
use crate::types::Dim;

/// An attribute value, as the rules (and the lowering) see it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A symbol reference (`@blk.0.attn_q`), without the `@`.
    Symbol(String),
    /// A float (f32 attributes widened exactly).
    Float(f64),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// A type.
    Type(ValueType),
}

impl AttrValue {
    /// Whether the value can be an attribute of `kind`.
    pub fn fits(&self, kind: AttrKind) -> bool {
        matches!(
            (self, kind),
            (AttrValue::Symbol(_), AttrKind::Symbol)
                | (AttrValue::Float(_), AttrKind::F32)
                | (AttrValue::Int(_), AttrKind::Int)
                | (AttrValue::Bool(_), AttrKind::Bool)
                | (AttrValue::Str(_), AttrKind::Str)
                | (AttrValue::Type(_), AttrKind::Type)
        )
    }
}

/// An op as the rules read it: operand and result types, attributes, and
/// the declared types of weights.
pub trait OpView {
    /// Number of operands.
    fn operand_count(&self) -> usize;
    /// The type of operand `index` (< `operand_count`).
    fn operand(&self, index: usize) -> ValueType;
    /// Number of results.
    fn result_count(&self) -> usize;
    /// The type of result `index` (< `result_count`).
    fn result(&self, index: usize) -> ValueType;
    /// The attribute `def`, read as its kind; `None` if absent or of
    /// another kind.
    fn attribute(&self, def: &AttrDef) -> Option<AttrValue>;
    /// The declared type of the weight `symbol`; `None` if not declared.
    fn weight(&self, symbol: &str) -> Option<ValueType>;
}

/// Why an op breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// Wrong number of operands.
    OperandCount {
        /// Operands the op takes.
        expected: usize,
        /// Operands present.
        found: usize,
    },
    /// Wrong number of results.
    ResultCount {
        /// Results the op has.
        expected: usize,
        /// Results present.
        found: usize,
    },
    /// An operand of the wrong type.
    Operand {
        /// Operand index.
        index: usize,
        /// Its name in the table.
        name: &'static str,
        /// The type found.
        found: String,
        /// What the op needs.
        expected: String,
    },
    /// A result whose type is not what the op computes.
    Result {
        /// Result index.
        index: usize,
        /// The type found.
        found: String,
        /// The computed type.
        expected: String,
    },
    /// A weight that is missing or wrong for its use.
    Weight {
        /// The attribute naming it.
        attr: &'static str,
        /// The symbol (empty if the attribute is not a symbol).
        symbol: String,
        /// The whole message.
        message: String,
    },
    /// An attribute that is missing, of the wrong kind, or inconsistent.
    Attribute {
        /// The whole message.
        message: String,
    },
}

impl RuleError {
    /// The message, without op or location.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::OperandCount { expected, found } => {
                write!(f, "expected {expected} operands, found {found}")
            }
            RuleError::ResultCount { expected, found } => {
                write!(f, "expected {expected} results, found {found}")
            }
            RuleError::Operand {
                name,
                found,
                expected,
                ..
            } => write!(f, "{name} must be {expected}, not {found}"),
            RuleError::Result {
                index,
                found,
                expected,
            } => write!(f, "result {index} has type {found}, expected {expected}"),
            RuleError::Weight { message, .. } | RuleError::Attribute { message } => {
                f.write_str(message)
            }
        }
    }
}

/// The KV cache shape, spelled for errors.
const KV_CACHE: &str = "tensor<blocks x 2 x max_seq_len x kv_heads x head_dim x f32>";

/// Checks `view` against the rule of `kind`: operand and result counts,
/// operand types, attributes and weights, then each result's type.
pub fn check(kind: OpKind, view: &impl OpView) -> Result<(), RuleError> {
    let def = kind.def();
    let r = Rule { def, view };
    if view.operand_count() != def.operands.len() {
        return Err(RuleError::OperandCount {
            expected: def.operands.len(),
            found: view.operand_count(),
        });
    }
    if view.result_count() != def.results.len() {
        return Err(RuleError::ResultCount {
            expected: def.results.len(),
            found: view.result_count(),
        });
    }
    for (i, v) in def.operands.iter().enumerate() {
        if v.kind == ValueKind::Index {
            r.operand_is(i, &ValueType::Index)?;
        }
    }
    let expected = r.results()?;
    for (index, want) in expected.iter().enumerate() {
        let found = view.result(index);
        if &found != want {
            return Err(RuleError::Result {
                index,
                found: found.to_string(),
                expected: want.to_string(),
            });
        }
    }
    Ok(())
}

struct Rule<'v, V> {
    def: &'static OpDef,
    view: &'v V,
}

impl<V: OpView> Rule<'_, V> {
    /// The result types the op computes (after checking everything else).
    fn results(&self) -> Result<Vec<ValueType>, RuleError> {
        match self.def.kind {
            OpKind::Weight => {
                self.weight_decl()?;
                Ok(vec![])
            }
            OpKind::Embed => {
                let tokens = self.view.operand(0);
                let t = match tokens.as_tensor() {
                    Some(([t], Elem::I32)) => *t,
                    _ => return Err(self.operand_error(0, "tensor<?xi32>".into())),
                };
                let (_, _, hidden) = self.quantized_matrix("table")?;
                Ok(vec![activation_type(t, hidden)])
            }
            OpKind::RmsNorm => {
                let (_, n) = self.activation(0)?;
                let (symbol, w) = self.weight("weight")?;
                let want = ValueType::tensor(vec![Dim::Static(n)], Elem::F32);
                if w != want {
                    return Err(self.weight_error(
                        "weight",
                        &symbol,
                        format!("weight @{symbol} must be {want}, not {w}"),
                    ));
                }
                self.positive_float("eps")?;
                Ok(vec![self.view.operand(0)])
            }
            OpKind::MatMul | OpKind::LmHead => {
                let (t, k) = self.activation(0)?;
                let (symbol, rows, cols) = self.quantized_matrix("weight")?;
                if k != cols {
                    return Err(self.weight_error(
                        "weight",
                        &symbol,
                        format!("input has {k} features but weight @{symbol} has {cols} columns"),
                    ));
                }
                if self.def.kind == OpKind::LmHead {
                    self.bool("tied")?;
                }
                Ok(vec![activation_type(t, rows)])
            }
            OpKind::Quantize => {
                let (t, k) = self.activation(0)?;
                Ok(vec![
                    ValueType::tensor(vec![t, Dim::Static(k)], Elem::I8),
                    ValueType::tensor(vec![t], Elem::F32),
                ])
            }
            OpKind::QMatMul => {
                let codes = self.view.operand(0);
                let (t, k) = match codes.as_tensor() {
                    Some(([t, Dim::Static(k)], Elem::I8)) => (*t, *k),
                    _ => return Err(self.operand_error(0, "tensor<?xKxi8>".into())),
                };
                self.operand_is(1, &ValueType::tensor(vec![t], Elem::F32))?;
                let (symbol, rows, cols) = self.quantized_matrix("weight")?;
                if k != cols {
                    return Err(self.weight_error(
                        "weight",
                        &symbol,
                        format!("input has {k} features but weight @{symbol} has {cols} columns"),
                    ));
                }
                Ok(vec![activation_type(t, rows)])
            }
            OpKind::Rope => {
                let (_, n) = self.activation(0)?;
                let heads = self.positive("heads")?;
                let head_dim = self.positive("head_dim")?;
                if heads.saturating_mul(head_dim) != n {
                    return Err(attr_error(format!(
                        "{heads} heads x {head_dim} dims do not make the {n} input features"
                    )));
                }
                if !head_dim.is_multiple_of(2) {
                    return Err(attr_error(format!("head_dim {head_dim} must be even")));
                }
                self.positive_float("base")?;
                Ok(vec![self.view.operand(0)])
            }
            OpKind::KvWrite => {
                let [blocks, _, _, h, d] = self.kv_cache(0)?;
                let (_, n) = self.activation(1)?;
                if n != h * d {
                    return Err(attr_error(format!(
                        "k and v have {n} features, the cache holds {h} heads x {d}"
                    )));
                }
                self.operand_is(2, &self.view.operand(1))?;
                self.layer(blocks)?;
                Ok(vec![self.view.operand(0)])
            }
            OpKind::Attention => {
                let (_, n) = self.activation(0)?;
                let [blocks, _, _, h, d] = self.kv_cache(1)?;
                let heads = self.positive("heads")?;
                let kv_heads = self.positive("kv_heads")?;
                let head_dim = self.positive("head_dim")?;
                if !heads.is_multiple_of(kv_heads) {
                    return Err(attr_error(format!(
                        "{kv_heads} kv heads do not divide {heads} query heads"
                    )));
                }
                if heads.saturating_mul(head_dim) != n {
                    return Err(attr_error(format!(
                        "{heads} heads x {head_dim} dims do not make the {n} query features"
                    )));
                }
                if (h, d) != (kv_heads, head_dim) {
                    return Err(attr_error(format!(
                        "the cache holds {h} heads x {d}, the op wants {kv_heads} x {head_dim}"
                    )));
                }
                self.layer(blocks)?;
                self.bool("causal")?;
                self.positive_float("scale")?;
                Ok(vec![self.view.operand(0)])
            }
            OpKind::Mix => {
                let (_, n) = self.activation(0)?;
                let (symbol, m) = self.weight("matrix")?;
                let want = ValueType::tensor(vec![Dim::Static(n), Dim::Static(n)], Elem::F32);
                if m != want {
                    return Err(self.weight_error(
                        "matrix",
                        &symbol,
                        format!("matrix @{symbol} must be {want}, not {m}"),
                    ));
                }
                let block = self.positive("block")?;
                if !n.is_multiple_of(block) {
                    return Err(attr_error(format!(
                        "blocks of {block} features do not divide the {n} input features"
                    )));
                }
                Ok(vec![self.view.operand(0)])
            }
            OpKind::Add | OpKind::SwiGlu => {
                self.activation(0)?;
                self.operand_is(1, &self.view.operand(0))?;
                Ok(vec![self.view.operand(0)])
            }
        }
    }

    fn attr_def(&self, name: &str) -> Result<&'static AttrDef, RuleError> {
        self.def.attribute(name).ok_or_else(|| {
            attr_error(format!(
                "the rule reads `{name}`, which {} does not declare",
                self.def.name
            ))
        })
    }

    fn attr(&self, name: &str) -> Result<Option<AttrValue>, RuleError> {
        Ok(self.view.attribute(self.attr_def(name)?))
    }

    fn int(&self, name: &str) -> Result<i64, RuleError> {
        match self.attr(name)? {
            Some(AttrValue::Int(v)) => Ok(v),
            _ => Err(attr_error(format!("`{name}` must be an integer"))),
        }
    }

    fn positive(&self, name: &str) -> Result<u64, RuleError> {
        match self.int(name)? {
            v if v > 0 => Ok(v.unsigned_abs()),
            v => Err(attr_error(format!("`{name}` must be positive, is {v}"))),
        }
    }

    fn positive_float(&self, name: &str) -> Result<f64, RuleError> {
        match self.attr(name)? {
            Some(AttrValue::Float(v)) if v > 0.0 && v.is_finite() => Ok(v),
            _ => Err(attr_error(format!("`{name}` must be a positive float"))),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, RuleError> {
        match self.attr(name)? {
            Some(AttrValue::Bool(b)) => Ok(b),
            _ => Err(attr_error(format!("`{name}` must be a boolean"))),
        }
    }

    /// `layer` within the cache's blocks.
    fn layer(&self, blocks: u64) -> Result<(), RuleError> {
        let layer = self.int("layer")?;
        if layer < 0 || layer.unsigned_abs() >= blocks {
            return Err(attr_error(format!(
                "layer {layer} is outside the cache's {blocks} blocks"
            )));
        }
        Ok(())
    }

    fn operand_error(&self, index: usize, expected: String) -> RuleError {
        RuleError::Operand {
            index,
            name: self.def.operands[index].name,
            found: self.view.operand(index).to_string(),
            expected,
        }
    }

    fn operand_is(&self, index: usize, want: &ValueType) -> Result<(), RuleError> {
        if &self.view.operand(index) != want {
            return Err(self.operand_error(index, want.to_string()));
        }
        Ok(())
    }

    /// An activation `tensor<T x N x f32>` (T any, N static): (T, N).
    fn activation(&self, index: usize) -> Result<(Dim, u64), RuleError> {
        match self.view.operand(index).as_tensor() {
            Some(([t, Dim::Static(n)], Elem::F32)) => Ok((*t, *n)),
            _ => Err(self.operand_error(index, "tensor<?xNxf32>".into())),
        }
    }

    /// A KV cache `tensor<L x 2 x S x H x D x f32>`: [L, 2, S, H, D].
    fn kv_cache(&self, index: usize) -> Result<[u64; 5], RuleError> {
        let t = self.view.operand(index);
        match (t.static_dims().as_deref(), t.as_tensor().map(|(_, e)| e)) {
            (Some(&[l, 2, s, h, d]), Some(Elem::F32)) => Ok([l, 2, s, h, d]),
            _ => Err(self.operand_error(index, KV_CACHE.into())),
        }
    }

    fn weight_error(&self, attr: &'static str, symbol: &str, message: String) -> RuleError {
        RuleError::Weight {
            attr,
            symbol: symbol.to_string(),
            message,
        }
    }

    /// The weight named by attribute `attr`: its symbol and declared type.
    fn weight(&self, attr: &'static str) -> Result<(String, ValueType), RuleError> {
        let Some(AttrValue::Symbol(symbol)) = self.attr(attr)? else {
            return Err(self.weight_error(
                attr,
                "",
                format!("`{attr}` must be a symbol reference"),
            ));
        };
        match self.view.weight(&symbol) {
            Some(t) => Ok((symbol, t)),
            None => Err(self.weight_error(
                attr,
                &symbol,
                format!("{attr} @{symbol} is not a declared q35.weight"),
            )),
        }
    }

    /// A quantized static non-empty matrix: (symbol, rows, columns).
    fn quantized_matrix(&self, attr: &'static str) -> Result<(String, u64, u64), RuleError> {
        let (symbol, t) = self.weight(attr)?;
        match (t.static_dims().as_deref(), t.as_tensor()) {
            (Some(&[rows, cols]), Some((_, Elem::QWeight { group_size, .. })))
                if rows > 0 && cols > 0 && *group_size > 0 =>
            {
                Ok((symbol, rows, cols))
            }
            _ => Err(self.weight_error(
                attr,
                &symbol,
                format!("{attr} @{symbol} must be a quantized matrix, not {t}"),
            )),
        }
    }

    /// A `q35.weight` declaration: a known scheme, a positive group and a
    /// static non-empty matrix, or a static f32 vector or square matrix.
    fn weight_decl(&self) -> Result<(), RuleError> {
        for name in ["sym_name", "source"] {
            if !matches!(self.attr(name)?, Some(AttrValue::Str(_))) {
                return Err(attr_error(format!("`{name}` must be a string")));
            }
        }
        let Some(AttrValue::Type(t)) = self.attr("type")? else {
            return Err(attr_error("`type` must be a type".into()));
        };
        let dims = t.static_dims();
        match t.as_tensor() {
            Some((_, Elem::QWeight { scheme, group_size })) => {
                if scheme.parse::<QuantScheme>().is_err() {
                    return Err(attr_error(format!(
                        "unknown quantization scheme \"{scheme}\" (known: {})",
                        QuantScheme::NAMES.join(", ")
                    )));
                }
                match dims.as_deref() {
                    // A ragged last group is zero-padded (docs/q35-format.md).
                    Some(&[rows, cols]) if rows > 0 && cols > 0 => {
                        if *group_size == 0 {
                            return Err(attr_error("group size must be positive".into()));
                        }
                        Ok(())
                    }
                    _ => Err(attr_error(format!(
                        "a quantized weight must be a static non-empty matrix, not {t}"
                    ))),
                }
            }
            Some((_, Elem::F32)) if matches!(dims.as_deref(), Some(&[n]) if n > 0) => Ok(()),
            Some((_, Elem::F32)) if matches!(dims.as_deref(), Some(&[r, c]) if r > 0 && r == c) => {
                Ok(())
            }
            _ => Err(attr_error(format!(
                "an unquantized weight must be a static f32 vector or square f32 matrix, not {t}"
            ))),
        }
    }
}

fn attr_error(message: String) -> RuleError {
    RuleError::Attribute { message }
}

/// `tensor<T x N x f32>`.
fn activation_type(tokens: Dim, n: u64) -> ValueType {
    ValueType::tensor(vec![tokens, Dim::Static(n)], Elem::F32)
}
