//! `--q35-verify`: the checks IRDL cannot express.
//!
//! IRDL checks operand counts, that operands are tensors and required
//! attributes exist. This pass checks what depends on element types, extents
//! and symbols: every weight symbol names a `q35.weight` of the right kind and
//! shape (matmul K equals the weight's columns), activations are
//! `tensor<?xNxf32>` with matching token dimensions, the KV cache is
//! `tensor<L x 2 x S x kv_heads x head_dim x f32>` and agrees with the
//! attention attributes, and each attention reads the cache its layer's
//! `q35.kv_write` returned.
//!
//! Before (passes IRDL, fails here):
//! ```mlir
//! "q35.weight"() {sym_name = "w", source = "w.weight", type = tensor<8x32x!q35.qweight<"q35", 32 : i32>>} : () -> ()
//! %y = "q35.matmul"(%x) {weight = @w, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x8xf32>
//! ```
//! After: `error: 'q35.matmul' op input has 64 features but weight @w has 32 columns`.

use std::collections::BTreeMap;

use melior::ir::OperationRef;
use melior::ir::operation::OperationResult;
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};

use q35_contract::QuantScheme;

use super::{Diagnostic, PassId, PassInfo, WeightDecl, diagnostic, op_name, weights};
use crate::ir::{
    TensorInfo, bool_attr, float_attr, int_attr, operand_tensor, result_tensor, symbol_attr,
};

static ID: PassId = PassId::new();

/// The pass.
pub(crate) static PASS: PassInfo = PassInfo::new(
    "q35-verify",
    "check q35 op types, shapes and weight symbols beyond what IRDL checks",
    run,
    &ID,
);

/// Schemes a `!q35.qweight` may name: the contract's spellings
/// (`QuantScheme::ALL`, listed in serialised-tag order).
pub const SCHEMES: [&str; 6] = QuantScheme::NAMES;

fn run(module: &OperationRef<'_, '_>, out: &mut Vec<Diagnostic>) {
    let table = weights(module, out);
    for (name, w) in &table {
        if let Some(problem) = check_decl(w) {
            // Report at the declaration.
            module.walk(WalkOrder::PreOrder, |op| {
                if op_name(&op) == "q35.weight"
                    && crate::ir::string_attr(&op, "sym_name").as_deref() == Some(name.as_str())
                {
                    out.push(diagnostic(&op, problem.clone()));
                    return WalkResult::Interrupt;
                }
                WalkResult::Advance
            });
        }
    }
    module.walk(WalkOrder::PreOrder, |op| {
        let name = op_name(&op);
        if name.starts_with("q35.")
            && name != "q35.weight"
            && let Err(message) = check_op(&op, &name, &table)
        {
            out.push(diagnostic(&op, message));
        }
        WalkResult::Advance
    });
}

fn check_decl(w: &WeightDecl) -> Option<String> {
    match &w.qweight {
        Some(q) => {
            if q.scheme.parse::<QuantScheme>().is_err() {
                return Some(format!(
                    "unknown quantization scheme \"{}\" (known: {})",
                    q.scheme,
                    SCHEMES.join(", ")
                ));
            }
            match w.tensor.dims.as_slice() {
                // A ragged last group is zero-padded (docs/q35-format.md).
                [Some(rows), Some(cols)] if *rows > 0 && *cols > 0 => {
                    (q.group_size == 0).then(|| "group size must be positive".to_string())
                }
                _ => Some(format!(
                    "a quantized weight must be a static non-empty matrix, not {}",
                    w.tensor
                )),
            }
        }
        None => match (w.tensor.dims.as_slice(), w.tensor.element.as_str()) {
            ([Some(n)], "f32") if *n > 0 => None,
            _ => Some(format!(
                "an unquantized weight must be a static f32 vector, not {}",
                w.tensor
            )),
        },
    }
}

type Check = Result<(), String>;

/// An activation `tensor<?xNxf32>` (any first dimension); returns it and N.
fn activation(t: Option<TensorInfo>, what: &str) -> Result<(TensorInfo, u64), String> {
    match t {
        Some(t) if t.element == "f32" && t.dims.len() == 2 && t.dims[1].is_some() => {
            let n = t.dims[1].unwrap_or_default();
            Ok((t, n))
        }
        Some(t) => Err(format!("{what} must be tensor<?xNxf32>, not {t}")),
        None => Err(format!("{what} must be a ranked tensor")),
    }
}

fn same_tokens(a: &TensorInfo, b: &TensorInfo, what: &str) -> Check {
    if a.dims.first() != b.dims.first() {
        return Err(format!("{what}: token dimensions differ ({a} vs {b})"));
    }
    Ok(())
}

fn symbol<'t>(
    op: &OperationRef<'_, '_>,
    attr: &str,
    table: &'t BTreeMap<String, WeightDecl>,
) -> Result<(String, &'t WeightDecl), String> {
    let name =
        symbol_attr(op, attr).ok_or_else(|| format!("`{attr}` must be a symbol reference"))?;
    let w = table
        .get(&name)
        .ok_or_else(|| format!("{attr} @{name} is not a declared q35.weight"))?;
    Ok((name, w))
}

fn matrix(
    op: &OperationRef<'_, '_>,
    attr: &str,
    table: &BTreeMap<String, WeightDecl>,
) -> Result<(String, u64, u64), String> {
    let (name, w) = symbol(op, attr, table)?;
    match (&w.qweight, w.tensor.dims.as_slice()) {
        (Some(_), [Some(rows), Some(cols)]) => Ok((name, *rows, *cols)),
        _ => Err(format!(
            "{attr} @{name} must be a quantized matrix, not {}",
            w.tensor
        )),
    }
}

fn positive(op: &OperationRef<'_, '_>, attr: &str) -> Result<u64, String> {
    match int_attr(op, attr) {
        Some(v) if v > 0 => Ok(v.unsigned_abs()),
        Some(v) => Err(format!("`{attr}` must be positive, is {v}")),
        None => Err(format!("`{attr}` must be an integer")),
    }
}

/// A KV cache `tensor<L x 2 x S x H x D x f32>`; returns [L, 2, S, H, D].
fn kv_cache(t: Option<TensorInfo>) -> Result<[u64; 5], String> {
    let bad = |t: &dyn std::fmt::Display| {
        format!(
            "cache must be tensor<blocks x 2 x max_seq_len x kv_heads x head_dim x f32>, not {t}"
        )
    };
    let t = t.ok_or_else(|| bad(&"a non-tensor"))?;
    match (t.element.as_str(), t.dims.as_slice()) {
        ("f32", [Some(l), Some(2), Some(s), Some(h), Some(d)]) => Ok([*l, 2, *s, *h, *d]),
        _ => Err(bad(&t)),
    }
}

fn check_op(op: &OperationRef<'_, '_>, name: &str, table: &BTreeMap<String, WeightDecl>) -> Check {
    match name {
        "q35.embed" => {
            let tokens = operand_tensor(op, 0).ok_or("tokens must be a ranked tensor")?;
            if tokens.element != "i32" || tokens.dims.len() != 1 {
                return Err(format!("tokens must be tensor<?xi32>, not {tokens}"));
            }
            let (table_name, _vocab, hidden) = matrix(op, "table", table)?;
            let (out, n) = activation(result_tensor(op, 0), "result")?;
            if n != hidden {
                return Err(format!(
                    "result has {n} features but table @{table_name} rows have {hidden}"
                ));
            }
            same_tokens(&tokens, &out, "tokens and result")
        }
        "q35.rmsnorm" => {
            let (_, n) = activation(operand_tensor(op, 0), "input")?;
            let (w_name, w) = symbol(op, "weight", table)?;
            if w.qweight.is_some() || w.tensor.dims != [Some(n)] {
                return Err(format!(
                    "weight @{w_name} must be tensor<{n}xf32>, not {}",
                    w.tensor
                ));
            }
            match float_attr(op, "eps") {
                Some(e) if e > 0.0 && e.is_finite() => {}
                _ => return Err("`eps` must be a positive float".into()),
            }
            Ok(())
        }
        "q35.matmul" | "q35.lm_head" => {
            let (x, k) = activation(operand_tensor(op, 0), "input")?;
            let (w_name, rows, cols) = matrix(op, "weight", table)?;
            if k != cols {
                return Err(format!(
                    "input has {k} features but weight @{w_name} has {cols} columns"
                ));
            }
            let (y, n) = activation(result_tensor(op, 0), "result")?;
            if n != rows {
                return Err(format!(
                    "result has {n} features but weight @{w_name} has {rows} rows"
                ));
            }
            if name == "q35.lm_head" && bool_attr(op, "tied").is_none() {
                return Err("`tied` must be a boolean".into());
            }
            same_tokens(&x, &y, "input and result")
        }
        "q35.rope" => {
            let (_, n) = activation(operand_tensor(op, 0), "input")?;
            let heads = positive(op, "heads")?;
            let head_dim = positive(op, "head_dim")?;
            if heads.saturating_mul(head_dim) != n {
                return Err(format!(
                    "{heads} heads x {head_dim} dims do not make the {n} input features"
                ));
            }
            if !head_dim.is_multiple_of(2) {
                return Err(format!("head_dim {head_dim} must be even"));
            }
            match float_attr(op, "base") {
                Some(b) if b > 0.0 && b.is_finite() => Ok(()),
                _ => Err("`base` must be a positive float".into()),
            }
        }
        "q35.kv_write" => {
            let [blocks, _, _, h, d] = kv_cache(operand_tensor(op, 0))?;
            let (_, n) = activation(operand_tensor(op, 1), "k")?;
            if n != h * d {
                return Err(format!(
                    "k and v have {n} features, the cache holds {h} heads x {d}"
                ));
            }
            let layer = int_attr(op, "layer").ok_or("`layer` must be an integer")?;
            if layer < 0 || layer.unsigned_abs() >= blocks {
                return Err(format!(
                    "layer {layer} is outside the cache's {blocks} blocks"
                ));
            }
            Ok(())
        }
        "q35.attention" => {
            let (_, n) = activation(operand_tensor(op, 0), "q")?;
            let [blocks, _, _, h, d] = kv_cache(operand_tensor(op, 1))?;
            let heads = positive(op, "heads")?;
            let kv_heads = positive(op, "kv_heads")?;
            let head_dim = positive(op, "head_dim")?;
            if !heads.is_multiple_of(kv_heads) {
                return Err(format!(
                    "{kv_heads} kv heads do not divide {heads} query heads"
                ));
            }
            if heads * head_dim != n {
                return Err(format!(
                    "{heads} heads x {head_dim} dims do not make the {n} query features"
                ));
            }
            if (h, d) != (kv_heads, head_dim) {
                return Err(format!(
                    "the cache holds {h} heads x {d}, the op wants {kv_heads} x {head_dim}"
                ));
            }
            let layer = int_attr(op, "layer").ok_or("`layer` must be an integer")?;
            if layer < 0 || layer.unsigned_abs() >= blocks {
                return Err(format!(
                    "layer {layer} is outside the cache's {blocks} blocks"
                ));
            }
            if bool_attr(op, "causal").is_none() {
                return Err("`causal` must be a boolean".into());
            }
            // The step's own keys must be in the cache it reads.
            let writer = op
                .operand(1)
                .ok()
                .and_then(|v| OperationResult::try_from(v).ok())
                .map(|r| r.owner());
            match writer {
                Some(w)
                    if op_name(&w) == "q35.kv_write" && int_attr(&w, "layer") == Some(layer) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "the cache must come from the q35.kv_write of layer {layer} (this step's keys and values)"
                )),
            }
        }
        "q35.add" | "q35.swiglu" => activation(operand_tensor(op, 0), "operand").map(|_| ()),
        other => Err(format!(
            "is not checked by q35-verify (unknown op `{other}`)"
        )),
    }
}
