//! The q35 passes, one per file, run through MLIR's pass manager.
//!
//! Each pass is a function from the module to diagnostics, wrapped as an
//! MLIR external pass: a pass that reports a diagnostic fails the pipeline and
//! its diagnostics come back as [`MlirError::Pass`]. The verifier runs after
//! every pass. Passes are named with the dialect prefix (`q35-verify`);
//! [`PASSES`] lists them in documentation order.
//!
//! Adding a pass: write `passes/<name>.rs` with a `pub(crate) static PASS:
//! PassInfo`, add it to [`PASSES`], add `tests/lit/passes/<name>.mlir`.

mod check_overflow;
mod verify;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use melior::Context;
use melior::ContextRef;
use melior::ir::operation::OperationPrintingFlags;
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use melior::ir::r#type::TypeId;
use melior::ir::{Module, OperationRef};
use melior::pass::{
    ExternalPass, Pass, PassIrPrintingOptions, PassManager, RunExternalPass, create_external,
};

use crate::dialect::capture_diagnostics;
use crate::error::MlirError;
use crate::ir::{QWeight, TensorInfo, format_location, string_attr, tensor_type_attr};

/// An error found by a pass, at an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The op's location (`file:line:col`, or the graph node name).
    pub location: String,
    /// The op name (`q35.matmul`).
    pub op: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: error: '{}' op {}",
            self.location, self.op, self.message
        )
    }
}

/// The body of a pass: inspects (or rewrites) the module, reports problems.
pub type RunFn = for<'c, 'a> fn(&OperationRef<'c, 'a>, &mut Vec<Diagnostic>);

/// A registered pass.
#[derive(Debug)]
pub struct PassInfo {
    /// The command-line name (`q35-verify`).
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// The pass body.
    pub run: RunFn,
    /// A unique address for MLIR's pass TypeID.
    id: &'static PassId,
}

/// Storage whose address identifies a pass to MLIR.
#[repr(align(8))]
#[derive(Debug)]
pub struct PassId(
    #[expect(
        dead_code,
        reason = "a non-zero size gives every static its own address"
    )]
    u8,
);

impl PassInfo {
    /// Describes a pass; `id` must be a `static` unique to the pass.
    pub const fn new(
        name: &'static str,
        description: &'static str,
        run: RunFn,
        id: &'static PassId,
    ) -> Self {
        PassInfo {
            name,
            description,
            run,
            id,
        }
    }
}

impl PassId {
    /// A fresh id (store it in a `static`).
    pub const fn new() -> Self {
        PassId(0)
    }
}

impl Default for PassId {
    fn default() -> Self {
        Self::new()
    }
}

/// Every q35 pass.
pub static PASSES: [&PassInfo; 2] = [&verify::PASS, &check_overflow::PASS];

/// The passes `q35c compile` runs after lowering.
pub const COMPILE_PIPELINE: [&str; 2] = ["q35-verify", "q35-check-overflow"];

/// The pass names.
pub fn names() -> Vec<&'static str> {
    PASSES.iter().map(|p| p.name).collect()
}

/// Looks a pass up by name.
pub fn find(name: &str) -> Option<&'static PassInfo> {
    PASSES.iter().copied().find(|p| p.name == name)
}

#[derive(Clone)]
struct Adapter {
    name: &'static str,
    run: RunFn,
    sink: Rc<RefCell<Vec<(&'static str, Diagnostic)>>>,
}

impl<'c> RunExternalPass<'c> for Adapter {
    fn initialize(&mut self, _context: ContextRef<'c>) {}

    fn run(&mut self, operation: OperationRef<'c, '_>, pass: ExternalPass<'_>) {
        let mut found = Vec::new();
        (self.run)(&operation, &mut found);
        if !found.is_empty() {
            self.sink
                .borrow_mut()
                .extend(found.into_iter().map(|d| (self.name, d)));
            pass.signal_failure();
        }
    }
}

type Sink = Rc<RefCell<Vec<(&'static str, Diagnostic)>>>;

fn to_pass(info: &'static PassInfo, sink: &Sink) -> Pass {
    create_external(
        Adapter {
            name: info.name,
            run: info.run,
            sink: Rc::clone(sink),
        },
        TypeId::create(info.id),
        info.name,
        info.name,
        info.description,
        "builtin.module",
        &[],
    )
}

/// How to run a pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Print the module to stderr after every pass (`--print-ir-after-all`).
    pub print_ir_after_all: bool,
}

/// Runs the named passes in order on `module`, verifying after each.
pub fn run(context: &Context, module: &mut Module<'_>, names: &[&str]) -> Result<(), MlirError> {
    run_with(context, module, names, RunOptions::default())
}

/// [`run`] with options.
pub fn run_with(
    context: &Context,
    module: &mut Module<'_>,
    names: &[&str],
    options: RunOptions,
) -> Result<(), MlirError> {
    let infos = names
        .iter()
        .map(|n| find(n).ok_or_else(|| MlirError::UnknownPass((*n).to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let sink: Sink = Rc::new(RefCell::new(Vec::new()));
    let manager = PassManager::new(context);
    manager.enable_verifier(true);
    if options.print_ir_after_all {
        manager.enable_ir_printing(&PassIrPrintingOptions {
            before_all: false,
            after_all: true,
            module_scope: true,
            on_change: false,
            on_failure: false,
            flags: OperationPrintingFlags::new(),
            tree_printing_path: std::path::PathBuf::new(),
        });
    }
    for info in infos {
        manager.add_pass(to_pass(info, &sink));
    }
    let messages = capture_diagnostics(context);
    let result = manager.run(module);
    let found = sink.borrow().clone();
    if let Some((pass, _)) = found.first() {
        return Err(MlirError::Pass {
            pass,
            diagnostics: found.into_iter().map(|(_, d)| d).collect(),
        });
    }
    if result.is_err() {
        return Err(MlirError::Verify {
            diagnostics: messages.borrow().clone(),
        });
    }
    Ok(())
}

/// A `q35.weight` declaration as the passes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightDecl {
    /// The declared tensor type.
    pub tensor: TensorInfo,
    /// The quantization parameters, if the element type is `!q35.qweight`.
    pub qweight: Option<QWeight>,
    /// The GGUF tensor name.
    pub source: String,
}

/// The name of an op as a string.
pub fn op_name<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>) -> String {
    crate::ir::string_of(op.name().as_string_ref()).unwrap_or_else(|| "<invalid>".into())
}

/// A diagnostic at `op`.
pub fn diagnostic<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, message: String) -> Diagnostic {
    Diagnostic {
        location: format_location(op.location()),
        op: op_name(op),
        message,
    }
}

/// Collects the module's `q35.weight` declarations by symbol; malformed
/// declarations are reported.
pub fn weights(
    module: &OperationRef<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<String, WeightDecl> {
    let mut table = BTreeMap::new();
    module.walk(WalkOrder::PreOrder, |op| {
        if op_name(&op) != "q35.weight" {
            return WalkResult::Advance;
        }
        let (Some(name), Some(tensor), Some(source)) = (
            string_attr(&op, "sym_name"),
            tensor_type_attr(&op, "type"),
            string_attr(&op, "source"),
        ) else {
            out.push(diagnostic(
                &op,
                "needs sym_name, source and a tensor `type`".into(),
            ));
            return WalkResult::Skip;
        };
        let qweight = QWeight::parse(&tensor.element);
        table.insert(
            name,
            WeightDecl {
                tensor,
                qweight,
                source,
            },
        );
        WalkResult::Skip
    });
    table
}
