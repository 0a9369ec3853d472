//! Reading q35 IR: tensor types, `!q35.qweight` parameters, attributes, ops
//! as the shared shape rules see them ([`RuleView`]),
//! the module's target ([`target_from_module`]), locations and diagnostics in
//! a stable textual form.

use melior::diagnostic::{Diagnostic, DiagnosticSeverity};
use melior::ir::attribute::{
    ArrayAttribute, AttributeLike, BoolAttribute, DictionaryAttribute, FlatSymbolRefAttribute,
    FloatAttribute, IntegerAttribute, StringAttribute, TypeAttribute,
};
use melior::ir::operation::OperationLike;
use melior::ir::r#type::{DimSize, ShapedTypeLike};
use melior::ir::r#type::{RankedTensorType, TypeLike};
use std::collections::BTreeMap;

use melior::ir::{Attribute, Location, OperationRef, Type, ValueLike};
use q35_frontend::Dim;
use q35_frontend::ops::{AttrDef, AttrKind, AttrValue, Elem, OpView, ValueType, module_attr};
use q35_target::{Target, TargetError};

/// A ranked tensor type as plain data: `None` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dimensions, `None` for `?`.
    pub dims: Vec<Option<u64>>,
    /// The element type as MLIR prints it (`f32`, `!q35.qweight<"q35", 32 : i32>`).
    pub element: String,
}

impl TensorInfo {
    /// Reads a ranked tensor type; `None` for any other type.
    pub fn of(ty: Type<'_>) -> Option<Self> {
        let t = RankedTensorType::try_from(ty).ok()?;
        let dims = (0..t.rank())
            .map(|i| match t.dim_size(i) {
                Ok(DimSize::Static(n)) => Some(n),
                _ => None,
            })
            .collect();
        Some(TensorInfo {
            dims,
            element: t.element().to_string(),
        })
    }

    /// The last dimension if it is static.
    pub fn last(&self) -> Option<u64> {
        self.dims.last().copied().flatten()
    }
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            match d {
                Some(n) => write!(f, "{n}x")?,
                None => f.write_str("?x")?,
            }
        }
        write!(f, "{}>", self.element)
    }
}

impl TensorInfo {
    /// As the shape rules' [`ValueType`].
    pub fn to_value_type(&self) -> ValueType {
        ValueType::tensor(
            self.dims
                .iter()
                .map(|d| d.map_or(Dim::Dynamic, Dim::Static))
                .collect(),
            Elem::parse(&self.element),
        )
    }
}

/// Any MLIR type as the shape rules' [`ValueType`].
pub fn value_type(ty: Type<'_>) -> ValueType {
    if let Some(t) = TensorInfo::of(ty) {
        return t.to_value_type();
    }
    if ty.is_index() {
        return ValueType::Index;
    }
    ValueType::Other(ty.to_string())
}

/// An MLIR op as the shared shape rules read it
/// ([`q35_frontend::ops::rules::check`]); weights are looked up in `weights`
/// (symbol -> declared type).
#[derive(Debug)]
pub struct RuleView<'o, 'c, 'a> {
    /// The op.
    pub op: &'o OperationRef<'c, 'a>,
    /// Declared weight types by symbol.
    pub weights: &'o BTreeMap<String, ValueType>,
}

impl OpView for RuleView<'_, '_, '_> {
    fn operand_count(&self) -> usize {
        self.op.operand_count()
    }

    fn operand(&self, index: usize) -> ValueType {
        self.op.operand(index).map_or_else(
            |e| ValueType::Other(e.to_string()),
            |v| value_type(v.r#type()),
        )
    }

    fn result_count(&self) -> usize {
        self.op.result_count()
    }

    fn result(&self, index: usize) -> ValueType {
        self.op.result(index).map_or_else(
            |e| ValueType::Other(e.to_string()),
            |v| value_type(v.r#type()),
        )
    }

    fn attribute(&self, def: &AttrDef) -> Option<AttrValue> {
        let op = self.op;
        let name = def.name;
        match def.kind {
            AttrKind::Symbol => symbol_attr(op, name).map(AttrValue::Symbol),
            AttrKind::F32 => float_attr(op, name).map(AttrValue::Float),
            AttrKind::Int => int_attr(op, name).map(AttrValue::Int),
            AttrKind::Bool => bool_attr(op, name).map(AttrValue::Bool),
            AttrKind::Str => string_attr(op, name).map(AttrValue::Str),
            AttrKind::Type => {
                let a = op.attribute(name).ok()?;
                Some(AttrValue::Type(value_type(
                    TypeAttribute::try_from(a).ok()?.value(),
                )))
            }
            // Constants: IRDL checks them, the rules never read them.
            AttrKind::IsType(_) | AttrKind::IsStr(_) => None,
        }
    }

    fn weight(&self, symbol: &str) -> Option<ValueType> {
        self.weights.get(symbol).cloned()
    }
}

/// Parameters of a `!q35.qweight<"scheme", group_size>` element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QWeight {
    /// The scheme name (`q35`, `int8`, ...).
    pub scheme: String,
    /// Weights per group.
    pub group_size: u64,
}

impl QWeight {
    /// Parses the printed form of the type; `None` if `element` is not one.
    pub fn parse(element: &str) -> Option<Self> {
        let inner = element.strip_prefix("!q35.qweight<")?.strip_suffix('>')?;
        let (scheme, rest) = inner.split_once(',')?;
        let scheme = scheme
            .trim()
            .strip_prefix('"')?
            .strip_suffix('"')?
            .to_string();
        let group = rest.trim().split(':').next()?.trim();
        Some(QWeight {
            scheme,
            group_size: group.parse().ok()?,
        })
    }
}

/// The type of operand `index` of `op`, as tensor data.
pub fn operand_tensor<'c: 'a, 'a>(
    op: &impl OperationLike<'c, 'a>,
    index: usize,
) -> Option<TensorInfo> {
    TensorInfo::of(op.operand(index).ok()?.r#type())
}

/// The type of result `index` of `op`, as tensor data.
pub fn result_tensor<'c: 'a, 'a>(
    op: &impl OperationLike<'c, 'a>,
    index: usize,
) -> Option<TensorInfo> {
    TensorInfo::of(op.result(index).ok()?.r#type())
}

/// A flat symbol reference attribute (`weight = @blk.0.attn_q`).
pub fn symbol_attr<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> Option<String> {
    let a = op.attribute(name).ok()?;
    let a = FlatSymbolRefAttribute::try_from(a).ok()?;
    // SAFETY: `a` is a live symbol reference; see [`string_of`].
    string_of(unsafe {
        melior::StringRef::from_raw(mlir_sys::mlirFlatSymbolRefAttrGetValue(a.to_raw()))
    })
}

/// The text of an MLIR string reference, `None` if it is not UTF-8.
///
/// melior's `StringRef::as_str` (behind `StringAttribute::value` and
/// friends) builds a slice from an empty reference's null pointer, which is
/// undefined behaviour, then indexes its last byte, and `value` unwraps
/// invalid UTF-8: an empty or non-UTF-8 string in the input IR crashed the
/// passes (found by the `mlir_opt` fuzz target). Every string q35 reads
/// from IR goes through here instead.
pub fn string_of(r: melior::StringRef<'_>) -> Option<String> {
    let raw = r.to_raw();
    if raw.length == 0 {
        return Some(String::new());
    }
    // SAFETY: a non-empty MlirStringRef points at `length` bytes owned by
    // the context, which outlives `r`.
    let bytes = unsafe { std::slice::from_raw_parts(raw.data.cast::<u8>(), raw.length) };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// The value of a string attribute (see [`string_of`]).
fn string_attribute_value(a: StringAttribute<'_>) -> Option<String> {
    // SAFETY: `a` is a live string attribute; the reference it returns lives
    // as long as the context.
    string_of(unsafe { melior::StringRef::from_raw(mlir_sys::mlirStringAttrGetValue(a.to_raw())) })
}

/// A string attribute.
pub fn string_attr<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> Option<String> {
    let a = op.attribute(name).ok()?;
    string_attribute_value(StringAttribute::try_from(a).ok()?)
}

/// An integer attribute (also `true`/`false`, as 1/0... see [`bool_attr`]).
pub fn int_attr<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> Option<i64> {
    let a = op.attribute(name).ok()?;
    Some(IntegerAttribute::try_from(a).ok()?.signed_value())
}

/// A boolean attribute (`i1` integer attribute).
pub fn bool_attr<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> Option<bool> {
    let a = op.attribute(name).ok()?;
    Some(IntegerAttribute::try_from(a).ok()?.value() != 0)
}

/// A float attribute.
pub fn float_attr<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> Option<f64> {
    let a = op.attribute(name).ok()?;
    Some(FloatAttribute::try_from(a).ok()?.value())
}

/// A type attribute, as tensor data.
pub fn tensor_type_attr<'c: 'a, 'a>(
    op: &impl OperationLike<'c, 'a>,
    name: &str,
) -> Option<TensorInfo> {
    let a = op.attribute(name).ok()?;
    TensorInfo::of(TypeAttribute::try_from(a).ok()?.value())
}

/// The module attribute holding the target description.
pub const TARGET_ATTRIBUTE: &str = module_attr::TARGET;

/// Why a module's target cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TargetAttrError {
    /// The module has no `q35.target` attribute.
    #[error("the module has no `q35.target` attribute (q35c compile records the target there)")]
    Missing,
    /// The attribute is not a target description (wrong shape or keys).
    #[error("`q35.target` does not describe a target: {0}")]
    Malformed(String),
    /// The description is complete but inconsistent.
    #[error(transparent)]
    Invalid(#[from] TargetError),
}

/// The inverse of `lower::attribute_from_json`: dictionary -> object, string
/// -> string, bool (`i1`) -> bool, integer -> integer, float -> float, array
/// -> array. Other attributes are errors naming their spelling.
pub fn json_from_attribute(a: Attribute<'_>) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    if let Ok(d) = DictionaryAttribute::try_from(a) {
        let mut map = serde_json::Map::new();
        for i in 0..d.len() {
            let (k, v) = d.element(i).map_err(|e| e.to_string())?;
            let k = string_of(k.as_string_ref())
                .ok_or_else(|| "a dictionary key is not UTF-8".to_string())?;
            let v = json_from_attribute(v).map_err(|e| format!("`{k}`: {e}"))?;
            map.insert(k, v);
        }
        Ok(Value::Object(map))
    } else if let Ok(s) = StringAttribute::try_from(a) {
        Ok(Value::String(
            string_attribute_value(s).ok_or_else(|| "a string is not UTF-8".to_string())?,
        ))
    } else if let Ok(b) = BoolAttribute::try_from(a) {
        Ok(Value::Bool(b.value()))
    } else if let Ok(i) = IntegerAttribute::try_from(a) {
        Ok(Value::from(i.signed_value()))
    } else if let Ok(f) = FloatAttribute::try_from(a) {
        serde_json::Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| format!("{a} is not finite"))
    } else if let Ok(arr) = ArrayAttribute::try_from(a) {
        (0..arr.len())
            .map(|i| {
                arr.element(i)
                    .map_err(|e| e.to_string())
                    .and_then(json_from_attribute)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    } else {
        Err(format!(
            "{a} is not a dictionary, string, number, bool or array"
        ))
    }
}

/// The target a module was compiled for, read back from its `q35.target`
/// attribute and validated (its [`Target::source`] is `q35.target`).
pub fn target_from_module<'c: 'a, 'a>(
    module: &impl OperationLike<'c, 'a>,
) -> Result<Target, TargetAttrError> {
    let a = module
        .attribute(TARGET_ATTRIBUTE)
        .map_err(|_| TargetAttrError::Missing)?;
    let value = json_from_attribute(a).map_err(TargetAttrError::Malformed)?;
    let mut target: Target =
        serde_json::from_value(value).map_err(|e| TargetAttrError::Malformed(e.to_string()))?;
    target.source = TARGET_ATTRIBUTE.into();
    target.validate()?;
    Ok(target)
}

/// `file:line:col` for file locations, the name for named locations,
/// MLIR's form otherwise.
pub fn format_location(location: Location<'_>) -> String {
    if location.is_file_line_col_range() {
        let file = location.file_line_col_range_filename();
        let file = string_of(file.as_string_ref()).unwrap_or_else(|| "<invalid utf-8>".into());
        format!(
            "{file}:{}:{}",
            location.file_line_col_range_start_line(),
            location.file_line_col_range_start_column()
        )
    } else if location.is_name() {
        let name = location.name_value();
        string_of(name.as_string_ref()).unwrap_or_else(|| "<invalid utf-8>".into())
    } else if location.is_call_site() {
        format_location(location.call_site_callee())
    } else if location.is_fused() && location.fused_num_locations() > 0 {
        format_location(location.fused_location(0))
    } else {
        location.to_string()
    }
}

fn severity_str(s: DiagnosticSeverity) -> &'static str {
    match s {
        DiagnosticSeverity::Error => "error",
        DiagnosticSeverity::Warning => "warning",
        DiagnosticSeverity::Note => "note",
        DiagnosticSeverity::Remark => "remark",
    }
}

/// `location: severity: message`, then each note on its own line.
pub fn format_diagnostic(d: &Diagnostic<'_>) -> String {
    let mut out = format!(
        "{}: {}: {}",
        format_location(d.location()),
        severity_str(d.severity()),
        d
    );
    for i in 0..d.note_count() {
        if let Ok(note) = d.note(i) {
            out.push('\n');
            out.push_str(&format_diagnostic(&note));
        }
    }
    out
}

/// `v` as an operation result, when it is one. Melior's `TryFrom` prints
/// the value into its error when it is not, and printing a value builds an
/// `AsmState` over (and verifies) the whole module: asked once per op of a
/// pass, that made `q35-quantize-activations` quadratic in the module
/// (29.5 s of a 576-block model's 32.6 s lowering).
pub fn op_result<'c, 'a>(
    v: melior::ir::Value<'c, 'a>,
) -> Option<melior::ir::operation::OperationResult<'c, 'a>> {
    if v.is_operation_result() {
        melior::ir::operation::OperationResult::try_from(v).ok()
    } else {
        None
    }
}

/// `v` as a block argument, when it is one (see [`op_result`]).
pub fn block_argument<'c, 'a>(
    v: melior::ir::Value<'c, 'a>,
) -> Option<melior::ir::block::BlockArgument<'c, 'a>> {
    if v.is_block_argument() {
        melior::ir::block::BlockArgument::try_from(v).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qweight_from_printed_type() {
        assert_eq!(
            QWeight::parse("!q35.qweight<\"q35-rtn\", 32 : i32>"),
            Some(QWeight {
                scheme: "q35-rtn".into(),
                group_size: 32
            })
        );
        assert_eq!(QWeight::parse("f32"), None);
    }
}
