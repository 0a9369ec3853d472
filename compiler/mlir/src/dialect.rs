//! The q35 and lpu dialects, embedded from `dialects/q35.irdl.mlir` and
//! `dialects/lpu.irdl.mlir`, and context setup.

use std::cell::RefCell;
use std::rc::Rc;

use melior::Context;
use melior::StringRef;
use melior::dialect::DialectRegistry;
use melior::ir::block::BlockLike;
use melior::ir::operation::OperationLike;
use melior::ir::{Location, Module, Operation};
use melior::utility::{load_irdl_dialects, register_all_dialects};
use std::path::Path;

use crate::error::MlirError;

/// The IRDL source of the q35 dialect.
pub const IRDL_SOURCE: &str = include_str!("../../../dialects/q35.irdl.mlir");

/// The IRDL source of the lpu dialect (docs/lpu-dialect.md).
pub const LPU_IRDL_SOURCE: &str = include_str!("../../../dialects/lpu.irdl.mlir");

/// A single-threaded MLIR context with the upstream dialects registered and
/// the q35 and lpu dialects loaded.
pub fn create_context() -> Result<Context, MlirError> {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new_with_registry(&registry, false);
    // Parsing loads dialects on demand; building ops does not: load what the
    // lowering builds.
    context.get_or_load_dialect("func");
    for source in [IRDL_SOURCE, LPU_IRDL_SOURCE] {
        let loaded = {
            let messages = capture_diagnostics(&context);
            let Some(irdl) = Module::parse(&context, source) else {
                return Err(MlirError::Dialect(messages.borrow().join("\n")));
            };
            load_irdl_dialects(&irdl)
        };
        if !loaded {
            return Err(MlirError::Dialect("irdl::loadDialects failed".into()));
        }
    }
    Ok(context)
}

/// Parses MLIR text (`name` labels it in diagnostics) into a module. A
/// single top-level op other than a module is wrapped in one; several
/// top-level ops are an error (use [`parse_file`], which accepts them).
pub fn parse_module<'c>(
    context: &'c Context,
    source: &str,
    name: &str,
) -> Result<Module<'c>, MlirError> {
    let messages = capture_diagnostics(context);
    // melior's `Module::parse` names the buffer `<unknown>`: parse through the
    // C API so diagnostics and locations carry the name.
    // SAFETY: mlirOperationCreateParse returns a null operation on failure,
    // which `from_option_raw` maps to None; the caller owns the result.
    let op = unsafe {
        Operation::from_option_raw(mlir_sys::mlirOperationCreateParse(
            context.to_raw(),
            StringRef::new(source).to_raw(),
            StringRef::new(name).to_raw(),
        ))
    };
    let Some(op) = op else {
        return Err(parse_error(&messages, name));
    };
    if op.name().as_string_ref().as_str() == Ok("builtin.module") {
        return Module::from_operation(op).ok_or_else(|| parse_error(&messages, name));
    }
    let module = Module::new(Location::new(context, name, 0, 0));
    module.body().append_operation(op);
    Ok(module)
}

/// Parses an MLIR file into a module, as `mlir-opt` does: several top-level
/// ops are wrapped in an implicit module.
pub fn parse_file<'c>(context: &'c Context, path: &Path) -> Result<Module<'c>, MlirError> {
    let messages = capture_diagnostics(context);
    let name = path.display().to_string();
    // SAFETY: mlirModuleCreateParseFromFile returns a null module on failure,
    // which `from_option_raw` maps to None; the caller owns the result.
    let module = unsafe {
        Module::from_option_raw(mlir_sys::mlirModuleCreateParseFromFile(
            context.to_raw(),
            StringRef::new(&name).to_raw(),
        ))
    };
    module.ok_or_else(|| parse_error(&messages, &name))
}

fn parse_error(messages: &DiagnosticCapture<'_>, name: &str) -> MlirError {
    let mut diagnostics = messages.borrow().clone();
    if diagnostics.is_empty() {
        diagnostics.push(format!("{name}: error: not a valid MLIR module"));
    }
    MlirError::Parse { diagnostics }
}

/// Collects the context's diagnostics (as `location: severity: message`)
/// until the returned guard is dropped.
pub fn capture_diagnostics(context: &Context) -> DiagnosticCapture<'_> {
    let messages = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&messages);
    let id = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(crate::ir::format_diagnostic(&d));
        true
    });
    DiagnosticCapture {
        context,
        id,
        messages,
    }
}

/// Guard returned by [`capture_diagnostics`]; derefs to the collected lines.
pub struct DiagnosticCapture<'c> {
    context: &'c Context,
    id: melior::diagnostic::DiagnosticHandlerId,
    messages: Rc<RefCell<Vec<String>>>,
}

impl std::fmt::Debug for DiagnosticCapture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiagnosticCapture")
            .field("messages", &self.messages)
            .finish()
    }
}

impl std::ops::Deref for DiagnosticCapture<'_> {
    type Target = RefCell<Vec<String>>;
    fn deref(&self) -> &Self::Target {
        &self.messages
    }
}

impl Drop for DiagnosticCapture<'_> {
    fn drop(&mut self) {
        self.context.detach_diagnostic_handler(self.id);
    }
}
