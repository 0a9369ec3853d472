//! `--q35-verify`: the checks IRDL cannot express.
//!
//! IRDL checks operand counts, that operands are tensors and required
//! attributes exist. This pass checks what depends on element types, extents
//! and symbols: every weight symbol names a `q35.weight` of the right kind and
//! shape (matmul K equals the weight's columns), activations are
//! `tensor<?xNxf32>` with matching token dimensions, the KV cache is
//! `tensor<L x 2 x S x kv_heads x head_dim x f32>` and agrees with the
//! attention attributes, and each attention reads the cache its layer's
//! `q35.kv_write` returned, and each `q35.qmatmul` reads the codes and scale
//! of one `q35.quantize`.
//!
//! The per-op checks are the op table's shape rules
//! (`q35_frontend::ops::rules`), the same code the frontend checks its graph
//! with; only the dataflow checks (where an operand comes from) are here.
//!
//! Before (passes IRDL, fails here):
//! ```mlir
//! "q35.weight"() {sym_name = "w", source = "w.weight", type = tensor<8x32x!q35.qweight<"q35", 32 : i32>>} : () -> ()
//! %y = "q35.matmul"(%x) {weight = @w, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x8xf32>
//! ```
//! After: `error: 'q35.matmul' op input has 64 features but weight @w has 32 columns`.

use std::collections::BTreeMap;

use melior::ir::OperationRef;
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use q35_frontend::ops::{OpKind, ValueType, rules};

use super::{PassContext, PassId, PassInfo, diagnostic, op_name, weights};
use crate::ir::{RuleView, int_attr};

static ID: PassId = PassId::new();

/// The pass.
pub(crate) static PASS: PassInfo = PassInfo::new(
    "q35-verify",
    "check q35 op types, shapes and weight symbols beyond what IRDL checks",
    &[],
    run,
    &ID,
);

fn run(cx: &mut PassContext<'_, '_>) {
    // Declarations are checked as ops (`q35.weight`'s rule), so the table's
    // own complaints would repeat them.
    let table: BTreeMap<String, ValueType> = weights(&cx.module, &mut Vec::new())
        .into_iter()
        .map(|(k, w)| (k, w.tensor.to_value_type()))
        .collect();
    let mut found = Vec::new();
    cx.module.walk(WalkOrder::PreOrder, |op| {
        let name = op_name(&op);
        if !name.starts_with("q35.") {
            return WalkResult::Advance;
        }
        let Some(kind) = OpKind::from_name(&name) else {
            found.push(diagnostic(
                &op,
                format!("is not checked by q35-verify (unknown op `{name}`)"),
            ));
            return WalkResult::Advance;
        };
        let view = RuleView {
            op: &op,
            weights: &table,
        };
        if let Err(e) = rules::check(kind, &view)
            .map_err(|e| e.message())
            .and_then(|()| dataflow(kind, &op))
        {
            found.push(diagnostic(&op, e));
        }
        WalkResult::Advance
    });
    for d in found {
        cx.report(d);
    }
}

/// What a rule over one op's types cannot see: where a value comes from.
fn dataflow(kind: OpKind, op: &OperationRef<'_, '_>) -> Result<(), String> {
    match kind {
        OpKind::Attention => {
            // The step's own keys must be in the cache it reads.
            let layer = int_attr(op, "layer");
            let writer = op
                .operand(1)
                .ok()
                .and_then(crate::ir::op_result)
                .map(|r| r.owner());
            match writer {
                Some(w)
                    if OpKind::from_name(&op_name(&w)) == Some(OpKind::KvWrite)
                        && int_attr(&w, "layer") == layer =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "the cache must come from the q35.kv_write of layer {} (this step's keys and values)",
                    layer.unwrap_or_default()
                )),
            }
        }
        OpKind::QMatMul => {
            // Codes and scale are one quantization of one input.
            let producer = |i| {
                op.operand(i)
                    .ok()
                    .and_then(crate::ir::op_result)
                    .map(|r| (r.owner().to_raw().ptr, r.result_number()))
            };
            match (producer(0), producer(1)) {
                (Some((a, 0)), Some((b, 1))) if a == b => Ok(()),
                _ => Err("codes and scale must be results 0 and 1 of one q35.quantize".into()),
            }
        }
        OpKind::Weight
        | OpKind::Embed
        | OpKind::RmsNorm
        | OpKind::MatMul
        | OpKind::Rope
        | OpKind::KvWrite
        | OpKind::Add
        | OpKind::SwiGlu
        | OpKind::LmHead
        | OpKind::Quantize
        | OpKind::Mix => Ok(()),
    }
}
