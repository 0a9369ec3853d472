//! Reading q35 IR: tensor types, `!q35.qweight` parameters, attributes,
//! locations and diagnostics in a stable textual form.

use melior::diagnostic::{Diagnostic, DiagnosticSeverity};
use melior::ir::attribute::{
    FlatSymbolRefAttribute, FloatAttribute, IntegerAttribute, StringAttribute, TypeAttribute,
};
use melior::ir::operation::OperationLike;
use melior::ir::r#type::RankedTensorType;
use melior::ir::r#type::{DimSize, ShapedTypeLike};
use melior::ir::{Location, Type, ValueLike};

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
    Some(
        FlatSymbolRefAttribute::try_from(a)
            .ok()?
            .value()
            .to_string(),
    )
}

/// A string attribute.
pub fn string_attr<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> Option<String> {
    let a = op.attribute(name).ok()?;
    Some(StringAttribute::try_from(a).ok()?.value().to_string())
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

/// `file:line:col` for file locations, the name for named locations,
/// MLIR's form otherwise.
pub fn format_location(location: Location<'_>) -> String {
    if location.is_file_line_col_range() {
        let file = location.file_line_col_range_filename();
        let file = file
            .as_string_ref()
            .as_str()
            .unwrap_or("<invalid utf-8>")
            .to_string();
        format!(
            "{file}:{}:{}",
            location.file_line_col_range_start_line(),
            location.file_line_col_range_start_column()
        )
    } else if location.is_name() {
        let name = location.name_value();
        name.as_string_ref()
            .as_str()
            .unwrap_or("<invalid utf-8>")
            .to_string()
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
