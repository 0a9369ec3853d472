//! Decoding a q35 module into an [`Interpreter`]: the function's values
//! become slots (block arguments first, then one per op result, in block
//! order; the map from MLIR value to slot is keyed by the value's handle),
//! each op's attributes are read and checked once, and each `q35.weight`
//! declaration is resolved against the [`WeightBinder`] with its declared
//! type checked against what is bound.

use std::collections::BTreeMap;
use std::sync::Mutex;

use melior::ir::attribute::TypeAttribute;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::r#type::{FunctionType, TypeLike};
use melior::ir::{Module, RegionLike, Type, ValueLike};
use q35_contract::{QuantScheme, RopeTable};
use q35_frontend::ops::{AttrKind, OpKind};

use super::weights::{Binding, WeightBinder};
use super::{DecodeOutput, InterpError, Tensor, Value};
use crate::ir::{
    QWeight, TensorInfo, bool_attr, float_attr, format_location, int_attr, string_attr,
    symbol_attr, tensor_type_attr,
};
use crate::passes::op_name;

/// The function the interpreter runs.
pub const ENTRY: &str = "decode";

/// The function terminator.
const RETURN_OP: &str = "func.return";

/// An element type the interpreter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    I32,
    I8,
}

/// A declared value type: `index`, or a ranked tensor (`None` dims are `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueType {
    Index,
    Tensor {
        dims: Vec<Option<usize>>,
        elem: Elem,
    },
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueType::Index => f.write_str("index"),
            ValueType::Tensor { dims, elem } => {
                f.write_str("tensor<")?;
                for d in dims {
                    match d {
                        Some(n) => write!(f, "{n}x")?,
                        None => f.write_str("?x")?,
                    }
                }
                f.write_str(match elem {
                    Elem::F32 => "f32>",
                    Elem::I32 => "i32>",
                    Elem::I8 => "i8>",
                })
            }
        }
    }
}

impl ValueType {
    fn of(ty: Type<'_>) -> Result<ValueType, String> {
        if ty.is_index() {
            return Ok(ValueType::Index);
        }
        let t = TensorInfo::of(ty).ok_or_else(|| format!("type {ty} is not a ranked tensor"))?;
        let elem = match t.element.as_str() {
            "f32" => Elem::F32,
            "i32" => Elem::I32,
            "i8" => Elem::I8,
            other => return Err(format!("element type {other} of {t} is not interpreted")),
        };
        let dims = t
            .dims
            .iter()
            .map(|d| d.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .collect();
        Ok(ValueType::Tensor { dims, elem })
    }

    /// Checks `value` against the type, binding `?` to the call's token
    /// count (`tokens`, set by the first dynamic dimension met).
    pub(crate) fn conform(&self, value: &Value, tokens: &mut Option<usize>) -> Result<(), String> {
        let (dims, elem) = match (self, value) {
            (ValueType::Index, Value::Index(_)) => return Ok(()),
            (ValueType::Tensor { dims, elem }, Value::F32(t)) => {
                (dims, (*elem, Elem::F32, t.dims()))
            }
            (ValueType::Tensor { dims, elem }, Value::I32 { dims: d, .. }) => {
                (dims, (*elem, Elem::I32, d.as_slice()))
            }
            (ValueType::Tensor { dims, elem }, Value::I8 { dims: d, .. }) => {
                (dims, (*elem, Elem::I8, d.as_slice()))
            }
            _ => {
                return Err(format!("is {} but the type is {self}", value.type_string()));
            }
        };
        let (want, got, actual) = elem;
        let mismatch = || format!("is {} but the type is {self}", value.type_string());
        if want != got || dims.len() != actual.len() {
            return Err(mismatch());
        }
        for (d, &a) in dims.iter().zip(actual) {
            match d {
                Some(n) if *n != a => return Err(mismatch()),
                Some(_) => {}
                None => match tokens {
                    Some(t) if *t != a => {
                        return Err(format!(
                            "is {} but the type is {self} with ? = {t} in this call",
                            value.type_string()
                        ));
                    }
                    Some(_) => {}
                    None => *tokens = Some(a),
                },
            }
        }
        Ok(())
    }
}

/// A resolved `q35.weight` declaration.
#[derive(Debug, Clone)]
pub(crate) struct WeightSlot<'w> {
    pub symbol: String,
    pub binding: Binding<'w>,
}

/// An op's attributes, read once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attrs {
    Embed {
        table: usize,
    },
    RmsNorm {
        weight: usize,
        eps: f32,
    },
    MatMul {
        weight: usize,
    },
    Rope {
        heads: usize,
        head_dim: usize,
        base: f32,
    },
    KvWrite {
        layer: usize,
    },
    Attention {
        layer: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        causal: bool,
        scale: f32,
    },
    Add,
    SwiGlu,
    LmHead {
        weight: usize,
    },
    Quantize,
    QMatMul {
        weight: usize,
    },
    Mix {
        matrix: usize,
    },
}

/// One decoded op.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub kind: OpKind,
    pub attrs: Attrs,
    pub location: String,
    /// Operand slots.
    pub operands: Vec<usize>,
    /// Whether operand `i`'s value is dead after this op (it may be moved).
    pub last_use: Vec<bool>,
    /// Result slots, in result order.
    pub results: Vec<usize>,
    /// Declared result types, in result order.
    pub result_types: Vec<ValueType>,
}

/// What a caller may know about one op of the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpInfo {
    /// The op.
    pub kind: OpKind,
    /// Its location (the graph node name for compiled modules).
    pub location: String,
    /// Its `layer` attribute (`q35.kv_write`, `q35.attention`).
    pub layer: Option<usize>,
}

/// The q35 function `@decode`, decoded and bound to weights, ready to run.
#[derive(Debug)]
pub struct Interpreter<'w> {
    pub(crate) args: Vec<ValueType>,
    pub(crate) results: Vec<(usize, ValueType)>,
    pub(crate) steps: Vec<Step>,
    pub(crate) weights: Vec<WeightSlot<'w>>,
    pub(crate) slots: usize,
    /// RoPE tables by (head_dim, base bits), grown as positions are needed.
    pub(crate) ropes: Mutex<BTreeMap<(usize, u32), RopeTable>>,
}

fn op_error(op: &OperationRef<'_, '_>, message: impl Into<String>) -> InterpError {
    InterpError::Op {
        location: format_location(op.location()),
        op: op_name(op),
        message: message.into(),
    }
}

/// The handle of an MLIR value, as a map key.
fn value_key<'c>(v: &impl ValueLike<'c>) -> usize {
    v.to_raw().ptr as usize
}

/// A `q35.weight` declaration.
struct Decl {
    source: String,
    tensor: TensorInfo,
}

/// Checks that what is bound is what the declaration's type says.
fn check_binding(decl: &Decl, binding: &Binding<'_>) -> Result<(), String> {
    let t = &decl.tensor;
    let dims: Option<Vec<usize>> = t
        .dims
        .iter()
        .map(|d| d.and_then(|n| usize::try_from(n).ok()))
        .collect();
    let Some(dims) = dims else {
        return Err(format!("the declared type {t} is not static"));
    };
    let wrong = || {
        Err(format!(
            "the IR declares {t} but the binding holds {}",
            binding.describe()
        ))
    };
    if let Some(q) = QWeight::parse(&t.element) {
        if q.scheme.parse::<QuantScheme>().is_err() {
            return Err(format!("unknown quantization scheme \"{}\"", q.scheme));
        }
        match (binding, dims.as_slice()) {
            (Binding::Matrix(m), [r, c])
                if (m.rows(), m.cols()) == (*r, *c)
                    && u64::try_from(m.group_size()).ok() == Some(q.group_size) =>
            {
                Ok(())
            }
            _ => wrong(),
        }
    } else if t.element == "f32" {
        match (binding, dims.as_slice()) {
            (Binding::Vector(v), [n]) if v.len() == *n => Ok(()),
            (Binding::Table { rows, cols, data }, [r, c])
                if (*rows, *cols) == (*r, *c) && data.len() == r * c =>
            {
                Ok(())
            }
            _ => wrong(),
        }
    } else {
        Err(format!("element type {} is not interpreted", t.element))
    }
}

/// A positive integer attribute.
fn positive(op: &OperationRef<'_, '_>, name: &str) -> Result<usize, InterpError> {
    match int_attr(op, name) {
        Some(v) if v > 0 => {
            usize::try_from(v).map_err(|_| op_error(op, format!("`{name}` = {v} is too large")))
        }
        Some(v) => Err(op_error(op, format!("`{name}` = {v} must be positive"))),
        None => Err(op_error(op, format!("needs an integer attribute `{name}`"))),
    }
}

/// A non-negative integer attribute (`layer`).
fn index_attr(op: &OperationRef<'_, '_>, name: &str) -> Result<usize, InterpError> {
    match int_attr(op, name) {
        Some(v) => usize::try_from(v)
            .map_err(|_| op_error(op, format!("`{name}` = {v} must be non-negative"))),
        None => Err(op_error(op, format!("needs an integer attribute `{name}`"))),
    }
}

/// A finite f32 attribute (stored as f32 in the IR; read exactly).
fn f32_attr(op: &OperationRef<'_, '_>, name: &str) -> Result<f32, InterpError> {
    let v = float_attr(op, name)
        .ok_or_else(|| op_error(op, format!("needs a float attribute `{name}`")))?;
    let x = v as f32;
    if !x.is_finite() || f64::from(x) != v {
        return Err(op_error(
            op,
            format!("`{name}` = {v} is not a finite f32 value"),
        ));
    }
    Ok(x)
}

/// The type named by a type attribute (`act_type = i8`), as MLIR prints it.
fn type_attr(op: &OperationRef<'_, '_>, name: &str) -> Option<String> {
    let a = op.attribute(name).ok()?;
    Some(TypeAttribute::try_from(a).ok()?.value().to_string())
}

/// Checks the attributes the op table fixes (`act_type = i8`, `acc_type =
/// i32`, `pairing = "adjacent"`): the only values the contract defines.
fn check_constants(op: &OperationRef<'_, '_>, kind: OpKind) -> Result<(), InterpError> {
    for a in kind.def().attributes {
        let (got, want) = match a.kind {
            AttrKind::IsType(want) => (type_attr(op, a.name), want),
            AttrKind::IsStr(want) => (string_attr(op, a.name), want),
            AttrKind::Symbol
            | AttrKind::F32
            | AttrKind::Int
            | AttrKind::Bool
            | AttrKind::Str
            | AttrKind::Type => continue,
        };
        match got {
            Some(v) if v == want => {}
            Some(v) => {
                return Err(op_error(
                    op,
                    format!(
                        "`{}` = {v} is not interpreted (the contract defines {want})",
                        a.name
                    ),
                ));
            }
            None => return Err(op_error(op, format!("needs the attribute `{}`", a.name))),
        }
    }
    Ok(())
}

impl<'w> Interpreter<'w> {
    /// Decodes `func.func @decode` of `module` and binds its weights: every
    /// `q35.weight` declaration must have a binding (by its `source`) of
    /// the declared shape (a quantized matrix for `!q35.qweight` of the
    /// declared group size, an f32 vector or table for `f32`).
    pub fn new(
        module: &Module<'_>,
        binder: &WeightBinder<'w>,
    ) -> Result<Interpreter<'w>, InterpError> {
        let body = module.body();
        let mut decls: BTreeMap<String, Decl> = BTreeMap::new();
        let mut func = None;
        let mut next = body.first_operation();
        while let Some(op) = next {
            next = op.next_in_block();
            let name = op_name(&op);
            if name == OpKind::Weight.name() {
                let (Some(symbol), Some(tensor), Some(source)) = (
                    string_attr(&op, "sym_name"),
                    tensor_type_attr(&op, "type"),
                    string_attr(&op, "source"),
                ) else {
                    return Err(op_error(&op, "needs sym_name, source and a tensor `type`"));
                };
                if decls
                    .insert(symbol.clone(), Decl { source, tensor })
                    .is_some()
                {
                    return Err(op_error(&op, format!("redeclares @{symbol}")));
                }
            } else if name == "func.func" && string_attr(&op, "sym_name").as_deref() == Some(ENTRY)
            {
                func = Some(op);
            }
        }
        let func = func.ok_or_else(|| {
            InterpError::Module(format!("the module has no `func.func @{ENTRY}`"))
        })?;

        // Weights: every declaration resolved, in symbol order.
        let mut weights = Vec::with_capacity(decls.len());
        let mut weight_index = BTreeMap::new();
        for (symbol, decl) in &decls {
            let err = |message: String| InterpError::Weight {
                symbol: symbol.clone(),
                source_name: decl.source.clone(),
                message,
            };
            let binding = binder
                .get(&decl.source)
                .ok_or_else(|| err("nothing is bound to this source".into()))?;
            check_binding(decl, &binding).map_err(err)?;
            weight_index.insert(symbol.clone(), weights.len());
            weights.push(WeightSlot {
                symbol: symbol.clone(),
                binding,
            });
        }

        let fn_type = func
            .attribute("function_type")
            .ok()
            .and_then(|a| TypeAttribute::try_from(a).ok())
            .and_then(|t| FunctionType::try_from(t.value()).ok())
            .ok_or_else(|| op_error(&func, "has no function type"))?;
        let region = func.region(0).map_err(|e| op_error(&func, e.to_string()))?;
        let block = region
            .first_block()
            .ok_or_else(|| op_error(&func, "has no body"))?;

        let mut slot_of: BTreeMap<usize, usize> = BTreeMap::new();
        let mut args = Vec::with_capacity(block.argument_count());
        for i in 0..fn_type.input_count() {
            let arg = block
                .argument(i)
                .map_err(|e| op_error(&func, e.to_string()))?;
            let ty = ValueType::of(arg.r#type())
                .map_err(|e| op_error(&func, format!("argument #{i}: {e}")))?;
            slot_of.insert(value_key(&arg), args.len());
            args.push(ty);
        }
        let mut slots = args.len();
        let mut steps: Vec<Step> = Vec::new();
        let mut results = None;
        let mut next = block.first_operation();
        while let Some(op) = next {
            next = op.next_in_block();
            let name = op_name(&op);
            let operands = (0..op.operand_count())
                .map(|i| {
                    let v = op.operand(i).map_err(|e| op_error(&op, e.to_string()))?;
                    slot_of.get(&value_key(&v)).copied().ok_or_else(|| {
                        op_error(&op, format!("operand #{i} is not defined before the op"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if name == RETURN_OP {
                let types = (0..op.operand_count())
                    .map(|i| {
                        op.operand(i)
                            .map_err(|e| op_error(&op, e.to_string()))
                            .and_then(|v| ValueType::of(v.r#type()).map_err(|e| op_error(&op, e)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                results = Some(operands.into_iter().zip(types).collect::<Vec<_>>());
                break;
            }
            let kind = OpKind::from_name(&name)
                .ok_or_else(|| op_error(&op, "is not a q35 op the interpreter can run"))?;
            let def = kind.def();
            if operands.len() != def.operands.len() || op.result_count() != def.results.len() {
                return Err(op_error(
                    &op,
                    format!(
                        "has {} operands and {} results; {} takes {} and returns {}",
                        operands.len(),
                        op.result_count(),
                        def.name,
                        def.operands.len(),
                        def.results.len()
                    ),
                ));
            }
            check_constants(&op, kind)?;
            let weight = |attr: &str| -> Result<usize, InterpError> {
                let symbol = symbol_attr(&op, attr)
                    .ok_or_else(|| op_error(&op, format!("needs a symbol attribute `{attr}`")))?;
                weight_index.get(&symbol).copied().ok_or_else(|| {
                    op_error(&op, format!("`{attr}` = @{symbol} names no `q35.weight`"))
                })
            };
            let binding = |i: usize| weights[i].binding;
            let matrix_weight = || -> Result<usize, InterpError> {
                let w = weight("weight")?;
                if !matches!(binding(w), Binding::Matrix(_)) {
                    return Err(op_error(&op, "`weight` must be a quantized matrix"));
                }
                Ok(w)
            };
            let attrs = match kind {
                OpKind::Weight => {
                    return Err(op_error(
                        &op,
                        "is a module-level declaration, not an op of the function",
                    ));
                }
                OpKind::Embed => {
                    let table = weight("table")?;
                    if let Binding::Vector(_) = binding(table) {
                        return Err(op_error(&op, "`table` must be a matrix, not a vector"));
                    }
                    Attrs::Embed { table }
                }
                OpKind::RmsNorm => {
                    let w = weight("weight")?;
                    if !matches!(binding(w), Binding::Vector(_)) {
                        return Err(op_error(&op, "`weight` must be an f32 vector"));
                    }
                    Attrs::RmsNorm {
                        weight: w,
                        eps: f32_attr(&op, "eps")?,
                    }
                }
                OpKind::MatMul => Attrs::MatMul {
                    weight: matrix_weight()?,
                },
                OpKind::LmHead => {
                    let w = matrix_weight()?;
                    bool_attr(&op, "tied")
                        .ok_or_else(|| op_error(&op, "needs a boolean attribute `tied`"))?;
                    Attrs::LmHead { weight: w }
                }
                OpKind::QMatMul => Attrs::QMatMul {
                    weight: matrix_weight()?,
                },
                OpKind::Quantize => Attrs::Quantize,
                OpKind::Rope => {
                    let head_dim = positive(&op, "head_dim")?;
                    if head_dim % 2 != 0 {
                        return Err(op_error(
                            &op,
                            format!("`head_dim` = {head_dim} must be even"),
                        ));
                    }
                    let base = f32_attr(&op, "base")?;
                    if base <= 0.0 {
                        return Err(op_error(&op, format!("`base` = {base} must be positive")));
                    }
                    Attrs::Rope {
                        heads: positive(&op, "heads")?,
                        head_dim,
                        base,
                    }
                }
                OpKind::KvWrite => Attrs::KvWrite {
                    layer: index_attr(&op, "layer")?,
                },
                OpKind::Attention => {
                    let heads = positive(&op, "heads")?;
                    let kv_heads = positive(&op, "kv_heads")?;
                    if heads % kv_heads != 0 {
                        return Err(op_error(
                            &op,
                            format!(
                                "`heads` = {heads} is not a multiple of `kv_heads` = {kv_heads}"
                            ),
                        ));
                    }
                    Attrs::Attention {
                        layer: index_attr(&op, "layer")?,
                        heads,
                        kv_heads,
                        head_dim: positive(&op, "head_dim")?,
                        causal: bool_attr(&op, "causal")
                            .ok_or_else(|| op_error(&op, "needs a boolean attribute `causal`"))?,
                        scale: f32_attr(&op, "scale")?,
                    }
                }
                OpKind::Add => Attrs::Add,
                OpKind::SwiGlu => Attrs::SwiGlu,
                OpKind::Mix => {
                    let m = weight("matrix")?;
                    let Binding::Table { rows, cols, data } = binding(m) else {
                        return Err(op_error(&op, "`matrix` must be a square f32 matrix"));
                    };
                    let block = positive(&op, "block")?;
                    if rows != cols || !rows.is_multiple_of(block) {
                        return Err(op_error(
                            &op,
                            format!(
                                "`matrix` is {rows}x{cols}: not square in blocks of `block` = {block}"
                            ),
                        ));
                    }
                    // The attribute states that M is zero outside its
                    // diagonal blocks (the machine skips those terms).
                    if let Some(k) = (0..rows * cols)
                        .find(|&k| (k / cols) / block != (k % cols) / block && data[k] != 0.0)
                    {
                        return Err(op_error(
                            &op,
                            format!(
                                "`matrix` has {} at ({}, {}), outside its diagonal blocks of {block}",
                                data[k],
                                k / cols,
                                k % cols
                            ),
                        ));
                    }
                    Attrs::Mix { matrix: m }
                }
            };
            let mut results = Vec::with_capacity(op.result_count());
            let mut result_types = Vec::with_capacity(op.result_count());
            for i in 0..op.result_count() {
                let result = op.result(i).map_err(|e| op_error(&op, e.to_string()))?;
                result_types.push(
                    ValueType::of(result.r#type())
                        .map_err(|e| op_error(&op, format!("result #{i}: {e}")))?,
                );
                slot_of.insert(value_key(&result), slots);
                results.push(slots);
                slots += 1;
            }
            steps.push(Step {
                kind,
                attrs,
                location: format_location(op.location()),
                last_use: vec![false; operands.len()],
                operands,
                results,
                result_types,
            });
        }
        let results = results.ok_or_else(|| op_error(&func, format!("has no `{RETURN_OP}`")))?;

        // Last uses: a value returned by the function is never dead.
        let mut last: Vec<Option<(usize, usize)>> = vec![None; slots];
        for (si, step) in steps.iter().enumerate() {
            for (oi, &s) in step.operands.iter().enumerate() {
                last[s] = Some((si, oi));
            }
        }
        for &(s, _) in &results {
            last[s] = None;
        }
        for (si, oi) in last.into_iter().flatten() {
            steps[si].last_use[oi] = true;
        }

        Ok(Interpreter {
            args,
            results,
            steps,
            weights,
            slots,
            ropes: Mutex::new(BTreeMap::new()),
        })
    }

    /// The ops of the function, in order.
    pub fn ops(&self) -> impl Iterator<Item = OpInfo> + '_ {
        self.steps.iter().map(|s| self.info(s))
    }

    /// The op whose result the function returns as its result #`i` (the
    /// logits are result #0 of a decode step); `None` for a function
    /// argument returned as is.
    pub fn returned_by(&self, i: usize) -> Option<OpInfo> {
        let (slot, _) = self.results.get(i)?;
        let step = self.steps.iter().find(|s| s.results.contains(slot))?;
        Some(self.info(step))
    }

    fn info(&self, s: &Step) -> OpInfo {
        OpInfo {
            kind: s.kind,
            location: s.location.clone(),
            layer: match s.attrs {
                Attrs::KvWrite { layer } | Attrs::Attention { layer, .. } => Some(layer),
                Attrs::Embed { .. }
                | Attrs::RmsNorm { .. }
                | Attrs::MatMul { .. }
                | Attrs::Rope { .. }
                | Attrs::Add
                | Attrs::SwiGlu
                | Attrs::LmHead { .. }
                | Attrs::Quantize
                | Attrs::QMatMul { .. }
                | Attrs::Mix { .. } => None,
            },
        }
    }

    /// The symbols of the bound weights, sorted.
    pub fn weight_symbols(&self) -> impl Iterator<Item = &str> {
        self.weights.iter().map(|w| w.symbol.as_str())
    }

    /// Whether the function has the shape of a decode step: `(tensor<?xi32>,
    /// index, KV cache f32) -> (logits f32, KV cache f32)`; returns the KV
    /// cache's static dimensions.
    fn decode_signature(&self) -> Result<Vec<usize>, InterpError> {
        let bad = || {
            let args: Vec<String> = self.args.iter().map(ToString::to_string).collect();
            let res: Vec<String> = self.results.iter().map(|(_, t)| t.to_string()).collect();
            InterpError::Module(format!(
                "@{ENTRY} is ({}) -> ({}), not (tensor<?xi32>, index, KV cache) -> (logits, KV cache)",
                args.join(", "),
                res.join(", ")
            ))
        };
        let [
            ValueType::Tensor {
                dims: tok,
                elem: Elem::I32,
            },
            ValueType::Index,
            ValueType::Tensor {
                dims: cache,
                elem: Elem::F32,
            },
        ] = self.args.as_slice()
        else {
            return Err(bad());
        };
        let [
            (
                _,
                ValueType::Tensor {
                    elem: Elem::F32, ..
                },
            ),
            (_, out_cache),
        ] = self.results.as_slice()
        else {
            return Err(bad());
        };
        if tok.as_slice() != [None] || out_cache != &self.args[2] {
            return Err(bad());
        }
        cache
            .iter()
            .copied()
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(bad)
    }

    /// An empty (all `+0.0`) KV cache of the function's cache type.
    pub fn new_cache(&self) -> Result<Tensor, InterpError> {
        Ok(Tensor::zeros(self.decode_signature()?))
    }

    /// One `@decode` call: `tokens` at positions `pos ..`, reading and
    /// updating `cache`; returns the logits and the updated cache.
    pub fn decode(
        &self,
        tokens: &[u32],
        pos: usize,
        cache: Tensor,
    ) -> Result<DecodeOutput, InterpError> {
        self.decode_signature()?;
        let data = tokens
            .iter()
            .map(|&t| {
                i32::try_from(t)
                    .map_err(|_| InterpError::Call(format!("token {t} does not fit i32")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let args = vec![
            Value::I32 {
                dims: vec![data.len()],
                data,
            },
            Value::Index(pos),
            Value::F32(cache),
        ];
        let mut out = self.call(args)?.into_iter();
        match (out.next(), out.next()) {
            (Some(Value::F32(logits)), Some(Value::F32(cache))) => {
                Ok(DecodeOutput { logits, cache })
            }
            _ => Err(InterpError::Module(format!(
                "@{ENTRY} did not return (logits, KV cache)"
            ))),
        }
    }
}
