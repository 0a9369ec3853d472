//! The q35 passes, one per file, run through MLIR's pass manager.
//!
//! A pass is a [`PassInfo`]: name, description, typed options
//! ([`PassOption`]) and a body that gets a [`PassContext`]: the MLIR context,
//! the module (to read, or to rewrite with melior's builders, an
//! [`IrRewriter`] or MLIR's rewrite drivers), its option values, the
//! module's target (`q35.target`) and a diagnostics list. Each runs as an
//! MLIR external pass: a pass that reports a diagnostic fails the pipeline
//! and its diagnostics come back as [`MlirError::Pass`]. The verifier runs
//! after every pass. Passes are named with the prefix of the dialect they
//! work on (`q35-verify`, `lpu-lower`); pipelines are parsed by [`parse_pipeline`]
//! (`builtin.module(q35-verify,q35-quantize-activations{share=false})`).
//!
//! Adding a pass: write `passes/<name>.rs` with a `pub(crate) static PASS:
//! PassInfo`, add it to [`PASSES`] (the one registry: `q35c opt` takes its
//! flags and help from it), add `tests/lit/passes/<name>.mlir`.

mod check_overflow;
pub mod lpu_codegen;
pub mod lpu_lower;
mod quantize_activations;
mod verify;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use melior::Context;
use melior::ContextRef;
use melior::IrRewriter;
use melior::ir::operation::OperationPrintingFlags;
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use melior::ir::r#type::TypeId;
use melior::ir::{Module, OperationRef};
use melior::pass::{
    ExternalPass, Pass, PassIrPrintingOptions, PassManager, RunExternalPass, create_external,
};
use q35_frontend::ops::ValueType;
use q35_target::Target;

use crate::dialect::capture_diagnostics;
use crate::error::MlirError;
use crate::ir::{
    QWeight, TargetAttrError, TensorInfo, format_location, string_attr, target_from_module,
    tensor_type_attr,
};

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

/// The body of a pass: reads or rewrites the module through its
/// [`PassContext`], reports problems with [`PassContext::error`].
pub type RunFn = for<'c, 'a> fn(&mut PassContext<'c, 'a>);

/// The type of a pass option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// `true` or `false`.
    Bool,
    /// A non-negative integer.
    UInt,
}

/// A pass option: `--q35-pass=name=value` or `q35-pass{name=value}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassOption {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: OptionKind,
    /// The value when not given (parsed like a given one).
    pub default: &'static str,
    /// One-line description.
    pub help: &'static str,
}

/// A typed option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionValue {
    /// A boolean option.
    Bool(bool),
    /// An integer option.
    UInt(u64),
}

impl OptionValue {
    fn parse(kind: OptionKind, text: &str) -> Result<Self, String> {
        match kind {
            OptionKind::Bool => match text {
                "true" | "1" => Ok(OptionValue::Bool(true)),
                "false" | "0" => Ok(OptionValue::Bool(false)),
                _ => Err(format!("must be true or false, not `{text}`")),
            },
            OptionKind::UInt => text
                .parse()
                .map(OptionValue::UInt)
                .map_err(|_| format!("must be a non-negative integer, not `{text}`")),
        }
    }
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::UInt(n) => write!(f, "{n}"),
        }
    }
}

/// The values of every option of a pass (defaults filled in), in the
/// pass's declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassOptions(Vec<(&'static str, OptionValue)>);

impl PassOptions {
    /// The value of option `name`, if the pass declares it.
    pub fn get(&self, name: &str) -> Option<OptionValue> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// A boolean option (false if the pass declares no such option; a
    /// registry test checks every pass's declarations parse).
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.get(name), Some(OptionValue::Bool(true)))
    }

    /// An integer option (0 if undeclared).
    pub fn uint(&self, name: &str) -> u64 {
        match self.get(name) {
            Some(OptionValue::UInt(n)) => n,
            Some(OptionValue::Bool(_)) | None => 0,
        }
    }
}

impl fmt::Display for PassOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
        f.write_str(&items.join(" "))
    }
}

/// A registered pass.
#[derive(Debug)]
pub struct PassInfo {
    /// The command-line name (`q35-verify`).
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Its options.
    pub options: &'static [PassOption],
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
        options: &'static [PassOption],
        run: RunFn,
        id: &'static PassId,
    ) -> Self {
        PassInfo {
            name,
            description,
            options,
            run,
            id,
        }
    }

    /// The options with their defaults.
    pub fn default_options(&self) -> Result<PassOptions, MlirError> {
        self.options("")
    }

    /// Parses `name=value` items separated by commas or spaces (the
    /// `--pass=...` and `pass{...}` forms); unnamed options get their
    /// defaults.
    pub fn options(&self, text: &str) -> Result<PassOptions, MlirError> {
        let error = |message: String| MlirError::PassOption {
            pass: self.name,
            message,
        };
        let mut given: Vec<(&str, &str)> = Vec::new();
        for item in text
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| error(format!("`{item}` is not NAME=VALUE")))?;
            if !self.options.iter().any(|o| o.name == name) {
                let known: Vec<&str> = self.options.iter().map(|o| o.name).collect();
                return Err(error(format!(
                    "no option `{name}` (options: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            if given.iter().any(|(n, _)| *n == name) {
                return Err(error(format!("option `{name}` given twice")));
            }
            given.push((name, value));
        }
        let values = self
            .options
            .iter()
            .map(|o| {
                let text = given
                    .iter()
                    .find(|(n, _)| *n == o.name)
                    .map_or(o.default, |(_, v)| *v);
                OptionValue::parse(o.kind, text)
                    .map(|v| (o.name, v))
                    .map_err(|m| error(format!("option `{}` {m}", o.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PassOptions(values))
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

/// Every q35 pass: the one place a pass is registered. `q35c opt` builds
/// its pass flags, `--help` and `--list-passes` from it.
pub static PASSES: [&PassInfo; 6] = [
    &verify::PASS,
    &check_overflow::PASS,
    &quantize_activations::PASS,
    &lpu_lower::PASS,
    &lpu_codegen::PLACE,
    &lpu_codegen::SCHEDULE,
];

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

/// One pass of a pipeline with its options.
#[derive(Debug, Clone)]
pub struct PassSpec {
    /// The pass.
    pub pass: &'static PassInfo,
    /// Its option values.
    pub options: PassOptions,
}

impl PassSpec {
    /// The pass `name` with options parsed from `options` (`a=1,b=2`).
    pub fn new(name: &str, options: &str) -> Result<Self, MlirError> {
        let pass = find(name).ok_or_else(|| MlirError::UnknownPass(name.to_string()))?;
        Ok(PassSpec {
            pass,
            options: pass.options(options)?,
        })
    }
}

/// Parses a pipeline: MLIR's `builtin.module(a,b{opt=v})`, or the bare list
/// `a,b{opt=v}`. Options inside braces are separated by spaces or commas.
pub fn parse_pipeline(text: &str) -> Result<Vec<PassSpec>, MlirError> {
    let bad = |message: String| MlirError::Pipeline {
        pipeline: text.to_string(),
        message,
    };
    let mut body = text.trim();
    if let Some(open) = body.find('(')
        && !body[..open].contains('{')
    {
        let anchor = body[..open].trim();
        if anchor != "builtin.module" {
            return Err(bad(format!(
                "q35 passes run on builtin.module, not `{anchor}`"
            )));
        }
        body = body[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| bad("missing `)`".into()))?;
    }
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| bad("unbalanced `}`".into()))?
            }
            ',' if depth == 0 => {
                items.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced `{`".into()));
    }
    items.push(&body[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('{') {
            Some((name, rest)) => {
                let options = rest
                    .strip_suffix('}')
                    .ok_or_else(|| bad(format!("`{item}`: options must end with `}}`")))?;
                PassSpec::new(name.trim(), options)
            }
            None => PassSpec::new(item, ""),
        })
        .collect()
}

/// The named passes with default options.
pub fn pipeline(names: &[&str]) -> Result<Vec<PassSpec>, MlirError> {
    names.iter().map(|n| PassSpec::new(n, "")).collect()
}

/// What a pass body gets: the MLIR context, the module (to read or to
/// rewrite with [`PassContext::rewriter`] or MLIR's rewrite drivers), the
/// pass's typed options, the module's target, and a diagnostics list.
pub struct PassContext<'c, 'a> {
    context: ContextRef<'c>,
    /// The module the pass runs on.
    pub module: OperationRef<'c, 'a>,
    /// The pass's options.
    pub options: PassOptions,
    target: std::cell::OnceCell<Result<Target, TargetAttrError>>,
    diagnostics: Vec<Diagnostic>,
}

impl fmt::Debug for PassContext<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassContext")
            .field("options", &self.options)
            .field("diagnostics", &self.diagnostics)
            .finish_non_exhaustive()
    }
}

impl<'c, 'a> PassContext<'c, 'a> {
    /// The MLIR context.
    pub fn context(&self) -> &Context {
        // SAFETY: `ContextRef` has `Context`'s layout (one `MlirContext`);
        // the reference borrows `self`, which holds the `ContextRef`.
        unsafe { self.context.to_ref() }
    }

    /// The target the module was compiled for (its `q35.target` attribute,
    /// read once).
    pub fn target(&self) -> Result<&Target, &TargetAttrError> {
        self.target
            .get_or_init(|| target_from_module(&self.module))
            .as_ref()
    }

    /// Reports an error at `op`; the pass fails after its body returns.
    pub fn error<'b>(&mut self, op: &impl OperationLike<'c, 'b>, message: String)
    where
        'c: 'b,
    {
        self.diagnostics.push(diagnostic(op, message));
    }

    /// Reports an already-made diagnostic.
    pub fn report(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    /// Whether an error was reported.
    pub fn failed(&self) -> bool {
        !self.diagnostics.is_empty()
    }

    /// An IR rewriter (insertion points, create, replace, erase).
    pub fn rewriter(&self) -> IrRewriter<'_> {
        IrRewriter::new(self.context())
    }

    /// The declared types of the module's `q35.weight`s by symbol, for
    /// [`crate::ir::RuleView`]; malformed declarations are reported.
    pub fn weight_types(&mut self) -> BTreeMap<String, ValueType> {
        let mut found = Vec::new();
        let table = weights(&self.module, &mut found)
            .into_iter()
            .map(|(k, w)| (k, w.tensor.to_value_type()))
            .collect();
        self.diagnostics.extend(found);
        table
    }
}

#[derive(Clone)]
struct Adapter {
    spec: PassSpec,
    sink: Sink,
}

impl<'c> RunExternalPass<'c> for Adapter {
    fn initialize(&mut self, _context: ContextRef<'c>) {}

    fn run(&mut self, operation: OperationRef<'c, '_>, pass: ExternalPass<'_>) {
        let mut cx = PassContext {
            context: operation.context(),
            module: operation,
            options: self.spec.options.clone(),
            target: std::cell::OnceCell::new(),
            diagnostics: Vec::new(),
        };
        (self.spec.pass.run)(&mut cx);
        if !cx.diagnostics.is_empty() {
            let name = self.spec.pass.name;
            self.sink
                .borrow_mut()
                .extend(cx.diagnostics.into_iter().map(|d| (name, d)));
            pass.signal_failure();
        }
    }
}

type Sink = Rc<RefCell<Vec<(&'static str, Diagnostic)>>>;

fn to_pass(spec: &PassSpec, sink: &Sink) -> Pass {
    let info = spec.pass;
    create_external(
        Adapter {
            spec: spec.clone(),
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

/// Runs the named passes (default options) in order on `module`, verifying
/// after each.
pub fn run(context: &Context, module: &mut Module<'_>, names: &[&str]) -> Result<(), MlirError> {
    run_with(context, module, &pipeline(names)?, RunOptions::default())
}

/// Runs `pipeline` on `module` through MLIR's pass manager, verifying after
/// each pass.
pub fn run_with(
    context: &Context,
    module: &mut Module<'_>,
    pipeline: &[PassSpec],
    options: RunOptions,
) -> Result<(), MlirError> {
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
    for spec in pipeline {
        manager.add_pass(to_pass(spec, &sink));
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
