//! `--q35-check-overflow`: proves no matmul accumulator can overflow.
//!
//! The contract accumulates one group at a time (docs/q35-format.md 8.2):
//! an accumulator of a `q35.matmul`, `q35.lm_head` or `q35.qmatmul` with weight
//! `@w: tensor<N x K x !q35.qweight<"scheme", G>>` sums `k = min(K, G)`
//! products of an int8 activation code (|a| <= 127,
//! `q35_contract::semantics::ACT_MAX`) and an integer weight (|w| <= code_max
//! of the scheme). The pass proves `k x 127 x code_max <= 2^(acc_bits - 1) - 1`
//! ([`q35_contract::accumulator_bound`]) against the accumulator width of the
//! module's target (`mxm.acc_bits` in `q35.target`, read back with
//! [`crate::ir::target_from_module`]), or reports the op, k and the bound. A
//! module without a target cannot be checked and is an error.
//!
//! code_max is the largest |integer weight| the scheme's storage format can
//! hold: 2^(b-1) for uniform b-bit (int8 128, int4 8, int3 4) and 128 for the
//! Q35 schemes (4-bit codes times a multiplier up to 16, 3-bit codes times up
//! to 32; see docs/q35-format.md).
//!
//! Before (in a module whose `q35.target` has `mxm = {acc_bits = 32, ...}`):
//! ```mlir
//! "q35.weight"() {sym_name = "w", source = "w.weight", type = tensor<8x200000x!q35.qweight<"int8", 200000 : i32>>} : () -> ()
//! %y = "q35.matmul"(%x) {weight = @w, act_type = i8, acc_type = i32} : (tensor<?x200000xf32>) -> tensor<?x8xf32>
//! ```
//! After: `error: 'q35.matmul' op @w: int32 accumulator can overflow: 200000 x 127 x 128 = 3251200000 > 2147483647 (k = min(K 200000, group 200000))`.
//! With group 128 the same matmul passes: k = 128.

use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use q35_frontend::ops::OpKind;

use super::{PassContext, PassId, PassInfo, diagnostic, op_name, weights};
use crate::ir::symbol_attr;

static ID: PassId = PassId::new();

/// The pass.
pub(crate) static PASS: PassInfo = PassInfo::new(
    "q35-check-overflow",
    "prove every matmul's accumulator bound 127 x code_max x min(K, group) fits the target's mxm.acc_bits",
    &[],
    run,
    &ID,
);

/// Largest |integer weight| a scheme's storage can hold, if the scheme is
/// known (`QuantScheme::code_max`, the contract's).
pub fn code_max(scheme: &str) -> Option<u64> {
    scheme
        .parse::<q35_contract::QuantScheme>()
        .ok()
        .map(q35_contract::QuantScheme::code_max)
}

fn run(cx: &mut PassContext<'_, '_>) {
    let mut out = Vec::new();
    let table = weights(&cx.module, &mut out);
    let act_max = u64::from(q35_contract::semantics::ACT_MAX.unsigned_abs());
    let target = cx.target();
    cx.module.walk(WalkOrder::PreOrder, |op| {
        let matmul = OpKind::from_name(&op_name(&op)).is_some_and(|k| match k {
            OpKind::MatMul | OpKind::LmHead | OpKind::QMatMul => true,
            OpKind::Weight
            | OpKind::Embed
            | OpKind::RmsNorm
            | OpKind::Rope
            | OpKind::KvWrite
            | OpKind::Attention
            | OpKind::Add
            | OpKind::SwiGlu
            | OpKind::Quantize
            | OpKind::Mix => false,
        });
        if !matmul {
            return WalkResult::Advance;
        }
        let target = match &target {
            Ok(t) => t,
            Err(e) => {
                // Once: every matmul would say the same.
                out.push(diagnostic(&op, format!("cannot bound the accumulator: {e}")));
                return WalkResult::Interrupt;
            }
        };
        let Some(symbol) = symbol_attr(&op, "weight") else {
            out.push(diagnostic(
                &op,
                "`weight` must be a symbol reference".into(),
            ));
            return WalkResult::Advance;
        };
        let Some(w) = table.get(&symbol) else {
            out.push(diagnostic(
                &op,
                format!("weight @{symbol} is not a declared q35.weight"),
            ));
            return WalkResult::Advance;
        };
        let (Some(q), Some(Some(cols))) = (&w.qweight, w.tensor.dims.get(1)) else {
            out.push(diagnostic(
                &op,
                format!(
                    "weight @{symbol} must be a quantized matrix, not {}",
                    w.tensor
                ),
            ));
            return WalkResult::Advance;
        };
        let Some(code_max) = code_max(&q.scheme) else {
            out.push(diagnostic(
                &op,
                format!("weight @{symbol} has unknown scheme \"{}\"", q.scheme),
            ));
            return WalkResult::Advance;
        };
        // One accumulator sums one group's products (docs/q35-format.md 8.2).
        let k = (*cols).min(q.group_size);
        let bound = q35_contract::accumulator_bound(k, act_max, code_max);
        let limit = target.acc_max();
        if bound > limit {
            out.push(diagnostic(
                &op,
                format!(
                    "@{symbol}: int{} accumulator can overflow: {k} x {act_max} x {code_max} = {bound} > {limit} (k = min(K {cols}, group {}))",
                    target.mxm.acc_bits, q.group_size
                ),
            ));
        }
        WalkResult::Advance
    });
    for d in out {
        cx.report(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_has_a_bound() {
        for s in q35_contract::QuantScheme::NAMES {
            assert!(code_max(s).is_some(), "{s}");
        }
        assert_eq!(code_max("fp4"), None);
    }
}
