//! `--q35-check-overflow`: proves each matmul's int32 accumulator cannot overflow.
//!
//! A `q35.matmul` or `q35.lm_head` with weight `@w` of K columns sums K products
//! of an int8 activation code (|a| <= 127, `q35_contract::semantics::ACT_MAX`)
//! and an integer weight (|w| <= code_max of the scheme). The pass proves
//! `127 x code_max x K <= 2^31 - 1` with [`q35_contract::check_no_overflow`], or
//! reports the op, K and the bound.
//!
//! code_max is the largest |integer weight| the scheme's storage format can
//! hold: 2^(b-1) for uniform b-bit (int8 128, int4 8, int3 4) and 128 for the
//! Q35 schemes (4-bit codes times a multiplier up to 16, 3-bit codes times up
//! to 32; see docs/q35-format.md).
//!
//! Before:
//! ```mlir
//! "q35.weight"() {sym_name = "w", source = "w.weight", type = tensor<8x200000x!q35.qweight<"int8", 32 : i32>>} : () -> ()
//! %y = "q35.matmul"(%x) {weight = @w, act_type = i8, acc_type = i32} : (tensor<?x200000xf32>) -> tensor<?x8xf32>
//! ```
//! After: `error: 'q35.matmul' op int32 accumulator can overflow: 200000 x 127 x 128 = ... > 2147483647`.

use melior::ir::OperationRef;
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};

use super::{Diagnostic, PassId, PassInfo, diagnostic, op_name, weights};
use crate::ir::symbol_attr;

static ID: PassId = PassId::new();

/// The pass.
pub(crate) static PASS: PassInfo = PassInfo::new(
    "q35-check-overflow",
    "prove every matmul's int32 accumulator bound 127 x code_max x K < 2^31",
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

fn run(module: &OperationRef<'_, '_>, out: &mut Vec<Diagnostic>) {
    let table = weights(module, out);
    let act_max = u64::from(q35_contract::semantics::ACT_MAX.unsigned_abs());
    module.walk(WalkOrder::PreOrder, |op| {
        let name = op_name(&op);
        if name != "q35.matmul" && name != "q35.lm_head" {
            return WalkResult::Advance;
        }
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
        let (Some(q), Some(Some(k))) = (&w.qweight, w.tensor.dims.get(1)) else {
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
        if let Err(e) =
            q35_contract::check_no_overflow(&format!("@{symbol}"), *k, act_max, code_max)
        {
            out.push(diagnostic(&op, e.to_string()));
        }
        WalkResult::Advance
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_has_a_bound() {
        for s in super::super::verify::SCHEMES {
            assert!(code_max(s).is_some(), "{s}");
        }
        assert_eq!(code_max("fp4"), None);
    }
}
