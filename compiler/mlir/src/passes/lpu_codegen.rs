//! `--lpu-place` and `--lpu-schedule`: the code generator (`q35-codegen`,
//! docs/backend.md) run over an lpu module, its decisions recorded as
//! attributes.
//!
//! - `lpu-place` records every `lpu.buffer`'s MEM slices and first word
//!   (`slices`, `addr`): `q35_codegen::plan::placement`.
//! - `lpu-schedule` schedules the whole decode step
//!   (`q35_codegen::plan::compile`) and records on every op of `@decode` the
//!   first and last cycle its instructions occupy (`lpu.cycles`), and on
//!   `@decode` the program's cycle count (`lpu.total_cycles`), which the
//!   simulator measures exactly. It checks that the buffers' recorded
//!   placement is the one the schedule used (run `lpu-place` first).
//!
//! Neither depends on weight values (placement and timing depend on
//! shapes only), so both run on the module alone with placeholder weights
//! ([`crate::lpu::plan::ShapeOnly`]); the emission binds the real ones and
//! gets the same program up to MEM contents.

use melior::ir::RegionLike;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef, OperationRefMut};
use q35_codegen::plan;
use q35_frontend::lpu_ops::OpKind;

use super::{PassContext, PassId, PassInfo, op_name};
use crate::ir::{int_attr, string_attr};
use crate::lpu::plan::{MemNeed, ShapeOnly, mem_need, op_to_plan};

static PLACE_ID: PassId = PassId::new();
static SCHEDULE_ID: PassId = PassId::new();

/// `lpu-place`.
pub(crate) static PLACE: PassInfo = PassInfo::new(
    "lpu-place",
    "place every lpu.buffer in MEM slices (records `slices` and `addr`)",
    &[],
    run_place,
    &PLACE_ID,
);

/// `lpu-schedule`.
pub(crate) static SCHEDULE: PassInfo = PassInfo::new(
    "lpu-schedule",
    "schedule the decode step cycle by cycle (records `lpu.cycles` per op and `lpu.total_cycles`)",
    &[],
    run_schedule,
    &SCHEDULE_ID,
);

/// The plan of the pass's module and its target, or a reported error.
fn plan_of(cx: &mut PassContext<'_, '_>) -> Option<(plan::Plan, q35_target::Target)> {
    let module = cx.module;
    let target = match cx.target() {
        Ok(t) => t.clone(),
        Err(e) => {
            let message = e.to_string();
            cx.error(&module, message);
            return None;
        }
    };
    // Before any placeholder weight exists: a model far over the chip's
    // MEM would otherwise allocate all of its placeholders first.
    match mem_need(&module) {
        Ok(need) if need.total() > target.mem_bytes() => {
            cx.error(&module, too_large(&need, &target));
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            cx.error(&module, e.to_string());
            return None;
        }
    }
    match op_to_plan(&module, &ShapeOnly) {
        Ok(p) => Some((p, target)),
        Err(e) => {
            cx.error(&module, e.to_string());
            None
        }
    }
}

/// The error for a module whose shapes alone need more than the chip's MEM.
fn too_large(need: &MemNeed, target: &q35_target::Target) -> String {
    let chip = target.mem_bytes();
    format!(
        "the model does not fit on one chip: it needs at least {} bytes of MEM ({} bytes of \
         weights in {} matrices, {} bytes of KV cache, {} bytes of other buffers); one {} chip \
         has {chip} bytes, so by MEM alone it needs at least {} chips",
        need.total(),
        need.weight_bytes,
        need.weights,
        need.kv_bytes,
        need.other_bytes,
        target.name,
        need.total().div_ceil(chip),
    )
}

/// Every op of the module body, then of `@decode`'s body.
fn walk<'c, 'a>(
    m: &OperationRef<'c, 'a>,
) -> (Vec<OperationRef<'c, 'a>>, Option<OperationRef<'c, 'a>>) {
    let mut top = Vec::new();
    let mut func = None;
    if let Some(body) = m.region(0).ok().and_then(|r| r.first_block()) {
        let mut op = body.first_operation();
        while let Some(o) = op {
            if op_name(&o) == "func.func"
                && string_attr(&o, "sym_name").as_deref() == Some("decode")
            {
                func = Some(o);
            }
            top.push(o);
            op = o.next_in_block();
        }
    }
    (top, func)
}

fn run_place(cx: &mut PassContext<'_, '_>) {
    let Some((plan, target)) = plan_of(cx) else {
        return;
    };
    let placement = match plan::placement(&plan, &target) {
        Ok(p) => p,
        Err(e) => {
            let module = cx.module;
            cx.error(&module, e.to_string());
            return;
        }
    };
    let context = cx.context();
    let (top, _) = walk(&cx.module);
    for o in top {
        if OpKind::from_name(&op_name(&o)) != Some(OpKind::Buffer) {
            continue;
        }
        let Some(name) = string_attr(&o, "sym_name") else {
            continue;
        };
        if let Some(buf) = placement.get(&name) {
            let slices: Vec<String> = buf.slices.iter().map(ToString::to_string).collect();
            let slices: Vec<&str> = slices.iter().map(String::as_str).collect();
            // SAFETY: the pass owns the module; the op stays alive and no
            // other reference mutates it meanwhile.
            let mut op = unsafe { OperationRefMut::from_raw(o.to_raw()) };
            crate::lpu::set_placement(context, &mut op, &slices, u64::from(buf.addr));
        }
    }
}

fn run_schedule(cx: &mut PassContext<'_, '_>) {
    let Some((plan, target)) = plan_of(cx) else {
        return;
    };
    let module = cx.module;
    let context = cx.context();
    if let Err((at, message)) = annotate(context, &module, &plan, &target) {
        match at {
            Some(o) => cx.error(&o, message),
            None => cx.error(&module, message),
        }
    }
}

/// What `lpu-schedule` does, with the weights of `source` (the emission
/// binds the real ones and so compiles once): schedules the module's plan
/// and records the cycles. Returns the plan and the compiled program.
pub fn schedule(
    context: &melior::Context,
    module: &melior::ir::Module<'_>,
    source: &dyn crate::lpu::plan::PlanSource,
    target: &q35_target::Target,
) -> Result<(plan::Plan, plan::Compiled), String> {
    let m = module.as_operation();
    let plan = op_to_plan(&m, source).map_err(|e| e.to_string())?;
    let compiled = annotate(context, &m, &plan, target).map_err(|(_, message)| message)?;
    Ok((plan, compiled))
}

type Located<'c, 'a> = (Option<OperationRef<'c, 'a>>, String);

/// Compiles `plan`, checks the module's recorded placement against it and
/// records each op's cycles and the total.
fn annotate<'c, 'a>(
    context: &melior::Context,
    module: &OperationRef<'c, 'a>,
    plan: &plan::Plan,
    target: &q35_target::Target,
) -> Result<plan::Compiled, Located<'c, 'a>> {
    let compiled = plan::compile(plan, target).map_err(|e| (None, e.to_string()))?;
    let (top, func) = walk(module);
    // The recorded placement must be the schedule's.
    for o in &top {
        if OpKind::from_name(&op_name(o)) != Some(OpKind::Buffer) {
            continue;
        }
        let Some(name) = string_attr(o, "sym_name") else {
            continue;
        };
        let Some(buf) = compiled.placement.get(&name) else {
            continue;
        };
        match int_attr(o, "addr") {
            None => {
                return Err((
                    Some(*o),
                    format!("@{name} has no placement: run lpu-place before lpu-schedule"),
                ));
            }
            Some(a) if a != i64::from(buf.addr) => {
                return Err((
                    Some(*o),
                    format!(
                        "@{name} is placed at word {a}, the schedule put it at {}",
                        buf.addr
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let Some(func) = func else {
        return Err((None, "the module has no `func.func @decode`".into()));
    };
    let mut spans = compiled.op_cycles.iter();
    if let Some(block) = func.region(0).ok().and_then(|r| r.first_block()) {
        let mut op = block.first_operation();
        while let Some(o) = op {
            if op_name(&o) != "func.return"
                && let Some(&(_, first, last)) = spans.next()
            {
                // SAFETY: as in `run_place`.
                let mut m = unsafe { OperationRefMut::from_raw(o.to_raw()) };
                crate::lpu::set_cycles(context, &mut m, first.max(0) as u64, last.max(0) as u64);
            }
            op = o.next_in_block();
        }
    }
    // SAFETY: as in `run_place`.
    let mut f = unsafe { OperationRefMut::from_raw(func.to_raw()) };
    crate::lpu::set_total_cycles(context, &mut f, compiled.built.cycles);
    Ok(compiled)
}
