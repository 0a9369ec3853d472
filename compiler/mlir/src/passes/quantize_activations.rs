//! `--q35-quantize-activations[=share=true|false]`: makes the int8
//! activation quantization of every matmul explicit.
//!
//! `q35.matmul` and `q35.lm_head` quantize their f32 input per token
//! (docs/q35-format.md 8.1) before the int8 x int4/3 products. This pass
//! rewrites each into a `q35.quantize` (f32 -> int8 codes and one f32 scale
//! per token) feeding a `q35.qmatmul` (codes, scale, `@weight`), so the
//! backend sees the quantization as an op it schedules on the vector units.
//!
//! Option `share` (default `true`): one `q35.quantize` per quantized value,
//! placed right after the op that defines it, shared by every matmul that
//! reads it (Q/K/V read one normalised input, so do gate/up); with
//! `share=false` each matmul gets its own, right before it.
//!
//! Each matmul must pass its shape rule first (the op table's, as in
//! `q35-verify`); a malformed one is reported and nothing is rewritten. The
//! rewrite is a pattern per op applied by MLIR's walk driver
//! (`mlirWalkAndApplyPatterns`), which visits each op once.
//!
//! Before:
//! ```mlir
//! %n = "q35.rmsnorm"(%x) {eps = 1.0e-05 : f32, weight = @norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
//! %q = "q35.matmul"(%n) {acc_type = i32, act_type = i8, weight = @wq} : (tensor<?x64xf32>) -> tensor<?x64xf32>
//! %k = "q35.matmul"(%n) {acc_type = i32, act_type = i8, weight = @wk} : (tensor<?x64xf32>) -> tensor<?x32xf32>
//! ```
//! After (`share=true`):
//! ```mlir
//! %n = "q35.rmsnorm"(%x) {eps = 1.0e-05 : f32, weight = @norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
//! %codes, %scale = "q35.quantize"(%n) : (tensor<?x64xf32>) -> (tensor<?x64xi8>, tensor<?xf32>)
//! %q = "q35.qmatmul"(%codes, %scale) {acc_type = i32, weight = @wq} : (tensor<?x64xi8>, tensor<?xf32>) -> tensor<?x64xf32>
//! %k = "q35.qmatmul"(%codes, %scale) {acc_type = i32, weight = @wk} : (tensor<?x64xi8>, tensor<?xf32>) -> tensor<?x32xf32>
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use melior::ir::attribute::TypeAttribute;
use melior::ir::operation::{OperationBuilder, OperationLike, WalkOrder, WalkResult};
use melior::ir::r#type::{IntegerType, RankedTensorType};
use melior::ir::{Attribute, Identifier, OperationRef, Type, Value, ValueLike};
use melior::{
    Context, PatternRewriter, RewritePatternSet, create_op_rewrite_pattern, walk_and_apply_patterns,
};
use q35_frontend::ops::{AttrKind, OpKind, rules};

use super::{
    Diagnostic, OptionKind, PassContext, PassId, PassInfo, PassOption, diagnostic, op_name,
};
use crate::ir::{RuleView, TensorInfo};

static ID: PassId = PassId::new();

/// The pass.
pub(crate) static PASS: PassInfo = PassInfo::new(
    "q35-quantize-activations",
    "make matmuls' per-token int8 input quantization explicit: q35.quantize feeding q35.qmatmul",
    &[PassOption {
        name: "share",
        kind: OptionKind::Bool,
        default: "true",
        help: "one q35.quantize per input value, shared by its matmuls (false: one per matmul)",
    }],
    run,
    &ID,
);

/// The ops this pass rewrites.
fn quantizes_input(kind: OpKind) -> bool {
    match kind {
        OpKind::MatMul | OpKind::LmHead => true,
        OpKind::Weight
        | OpKind::Embed
        | OpKind::RmsNorm
        | OpKind::Rope
        | OpKind::KvWrite
        | OpKind::Attention
        | OpKind::Add
        | OpKind::SwiGlu
        | OpKind::Quantize
        | OpKind::QMatMul
        | OpKind::Mix => false,
    }
}

fn run(cx: &mut PassContext<'_, '_>) {
    let share = cx.options.bool("share");
    let weights = cx.weight_types();
    let mut bad = Vec::new();
    cx.module.walk(WalkOrder::PreOrder, |op| {
        if let Some(kind) = OpKind::from_name(&op_name(&op)).filter(|k| quantizes_input(*k))
            && let Err(e) = rules::check(
                kind,
                &RuleView {
                    op: &op,
                    weights: &weights,
                },
            )
        {
            bad.push(diagnostic(&op, format!("cannot quantize the input: {e}")));
        }
        WalkResult::Advance
    });
    if !bad.is_empty() || cx.failed() {
        for d in bad {
            cx.report(d);
        }
        return;
    }

    let state = Rc::new(RefCell::new(State {
        share,
        shared: BTreeMap::new(),
        errors: Vec::new(),
    }));
    let patterns = RewritePatternSet::new(cx.context());
    for kind in OpKind::ALL.into_iter().filter(|k| quantizes_input(*k)) {
        let state = Rc::clone(&state);
        patterns.add(create_op_rewrite_pattern(
            kind.name(),
            1,
            cx.context(),
            move |_pattern, op, rewriter| {
                // SAFETY: the driver hands the matched op and its rewriter,
                // both valid for this call.
                let (op, rewriter) = unsafe {
                    (
                        OperationRef::from_raw(op),
                        PatternRewriter::from_raw(rewriter),
                    )
                };
                let context_ref = op.context();
                // SAFETY: `ContextRef` has `Context`'s layout; `context_ref`
                // outlives every use of `context` (this call).
                let context = unsafe { context_ref.to_ref() };
                let mut state = state.borrow_mut();
                match rewrite(context, op, rewriter, &mut state) {
                    Ok(()) => true,
                    Err(message) => {
                        state.errors.push(diagnostic(&op, message));
                        false
                    }
                }
            },
            &[OpKind::Quantize.name(), OpKind::QMatMul.name()],
        ));
    }
    walk_and_apply_patterns(cx.module, patterns.freeze());
    let errors = std::mem::take(&mut state.borrow_mut().errors);
    for d in errors {
        cx.report(d);
    }
}

/// What the patterns share across matches.
struct State {
    share: bool,
    /// Shared `q35.quantize` results by the raw handle of the quantized value.
    shared: BTreeMap<usize, (mlir_sys::MlirValue, mlir_sys::MlirValue)>,
    errors: Vec<Diagnostic>,
}

/// `tensor<dims x element>`.
fn tensor<'c>(dims: &[Option<u64>], element: Type<'c>) -> Type<'c> {
    let dims: Vec<u64> = dims.iter().map(|d| d.unwrap_or(i64::MIN as u64)).collect();
    RankedTensorType::new(&dims, element, None).into()
}

/// Rewrites one matmul: finds or makes the `q35.quantize` of its input,
/// builds the `q35.qmatmul` in its place and replaces it.
fn rewrite<'c>(
    context: &'c Context,
    op: OperationRef<'c, '_>,
    rewriter: PatternRewriter,
    state: &mut State,
) -> Result<(), String> {
    let base = rewriter.as_rewriter_base();
    let x = op.operand(0).map_err(|e| e.to_string())?;
    let key = x.to_raw().ptr as usize;
    let (codes, scale): (Value<'c, '_>, Value<'c, '_>) = match state.shared.get(&key) {
        // SAFETY: the values are results of a q35.quantize this pass
        // created in the same walk; nothing erases it.
        Some((c, s)) if state.share => unsafe { (Value::from_raw(*c), Value::from_raw(*s)) },
        _ => {
            let t = TensorInfo::of(x.r#type()).ok_or("the input is not a ranked tensor")?;
            let [tokens, _] = t.dims[..] else {
                return Err(format!("the input {t} is not tensor<?xKxf32>"));
            };
            let codes_type = tensor(&t.dims, IntegerType::new(context, 8).into());
            let scale_type = tensor(&[tokens], Type::float32(context));
            let location = match crate::ir::op_result(x) {
                Some(r) if state.share => {
                    base.set_insertion_point_after(r.owner());
                    r.owner().location()
                }
                _ => {
                    base.set_insertion_point_before(op);
                    op.location()
                }
            };
            if state.share
                && let Some(arg) = crate::ir::block_argument(x)
            {
                base.set_insertion_point_to_start(arg.owner());
            }
            let quantize = OperationBuilder::new(OpKind::Quantize.name(), location)
                .add_operands(&[x])
                .add_results(&[codes_type, scale_type])
                .build()
                .map_err(|e| e.to_string())?;
            let q = base.insert(quantize);
            let (c, s) = (
                q.result(0).map_err(|e| e.to_string())?,
                q.result(1).map_err(|e| e.to_string())?,
            );
            state.shared.insert(key, (c.to_raw(), s.to_raw()));
            // SAFETY: `q` was just inserted into the function body, which
            // outlives this rewrite.
            unsafe { (Value::from_raw(c.to_raw()), Value::from_raw(s.to_raw())) }
        }
    };
    let y = op.result(0).map_err(|e| e.to_string())?.r#type();
    // The qmatmul's attributes, from the table: constants as the table
    // states them, parameters copied from the matmul.
    let mut attrs: Vec<(Identifier<'c>, Attribute<'c>)> = Vec::new();
    for a in OpKind::QMatMul.def().attributes {
        let value: Attribute<'c> = match a.kind {
            AttrKind::IsType(spelling) => TypeAttribute::new(
                Type::parse(context, spelling).ok_or(format!("cannot make type {spelling}"))?,
            )
            .into(),
            AttrKind::IsStr(s) => melior::ir::attribute::StringAttribute::new(context, s).into(),
            AttrKind::Symbol
            | AttrKind::F32
            | AttrKind::Int
            | AttrKind::Bool
            | AttrKind::Str
            | AttrKind::Type => op
                .attribute(a.name)
                .map_err(|_| format!("has no `{}` to give q35.qmatmul", a.name))?,
        };
        attrs.push((Identifier::new(context, a.name), value));
    }
    base.set_insertion_point_before(op);
    let qmatmul = OperationBuilder::new(OpKind::QMatMul.name(), op.location())
        .add_operands(&[codes, scale])
        .add_results(&[y])
        .add_attributes(&attrs)
        .build()
        .map_err(|e| e.to_string())?;
    let new = base.insert(qmatmul);
    base.replace_op_with_operation(op, new);
    Ok(())
}
