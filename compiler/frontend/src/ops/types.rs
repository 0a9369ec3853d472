//! [`ValueType`]: the types the shape rules reason about, as plain data, in
//! MLIR's spelling. Graph nodes (shape and [`DType`]) and parsed MLIR types
//! both convert into it, so one rule serves both.

use std::fmt;

use crate::types::{DType, Dim, Shape};

/// An element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    /// `f32`.
    F32,
    /// `f16`.
    F16,
    /// `i32`.
    I32,
    /// `i8`.
    I8,
    /// `!q35.qweight<"scheme", group_size : i32>`.
    QWeight {
        /// The scheme's spelling (`q35`, `int4`, ...).
        scheme: String,
        /// Weights per group.
        group_size: u64,
    },
    /// Anything else, as MLIR prints it.
    Other(String),
}

impl Elem {
    /// Reads MLIR's printed form of an element type.
    pub fn parse(s: &str) -> Elem {
        match s {
            "f32" => Elem::F32,
            "f16" => Elem::F16,
            "i32" => Elem::I32,
            "i8" => Elem::I8,
            _ => parse_qweight(s).unwrap_or_else(|| Elem::Other(s.to_string())),
        }
    }
}

/// `!q35.qweight<"q35", 32 : i32>` -> its parameters.
fn parse_qweight(s: &str) -> Option<Elem> {
    let inner = s.strip_prefix("!q35.qweight<")?.strip_suffix('>')?;
    let (scheme, rest) = inner.split_once(',')?;
    let scheme = scheme.trim().strip_prefix('"')?.strip_suffix('"')?;
    let group = rest.trim().split(':').next()?.trim().parse().ok()?;
    Some(Elem::QWeight {
        scheme: scheme.to_string(),
        group_size: group,
    })
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elem::F32 => f.write_str("f32"),
            Elem::F16 => f.write_str("f16"),
            Elem::I32 => f.write_str("i32"),
            Elem::I8 => f.write_str("i8"),
            Elem::QWeight { scheme, group_size } => {
                write!(f, "!q35.qweight<{scheme:?}, {group_size} : i32>")
            }
            Elem::Other(s) => f.write_str(s),
        }
    }
}

/// The type of a value or weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType {
    /// The `index` scalar.
    Index,
    /// A ranked tensor.
    Tensor {
        /// Dimensions (`Dynamic` is `?`).
        dims: Vec<Dim>,
        /// Element type.
        elem: Elem,
    },
    /// Anything else, as MLIR prints it.
    Other(String),
}

impl ValueType {
    /// A tensor type.
    pub fn tensor(dims: Vec<Dim>, elem: Elem) -> Self {
        ValueType::Tensor { dims, elem }
    }

    /// A graph value's type: rank 0 is a scalar (`index`), else a tensor.
    pub fn of_graph(shape: &Shape, dtype: DType) -> Self {
        let elem = match dtype {
            DType::F32 => Elem::F32,
            DType::F16 => Elem::F16,
            DType::I32 => Elem::I32,
            DType::Index => {
                return if shape.rank() == 0 {
                    ValueType::Index
                } else {
                    ValueType::Other(crate::types::type_string(shape, dtype))
                };
            }
        };
        if shape.rank() == 0 {
            return ValueType::Other(dtype.to_string());
        }
        ValueType::Tensor {
            dims: shape.dims().to_vec(),
            elem,
        }
    }

    /// The dimensions and element type, if a tensor.
    pub fn as_tensor(&self) -> Option<(&[Dim], &Elem)> {
        match self {
            ValueType::Tensor { dims, elem } => Some((dims, elem)),
            ValueType::Index | ValueType::Other(_) => None,
        }
    }

    /// All dimensions as numbers if the tensor is fully static.
    pub fn static_dims(&self) -> Option<Vec<u64>> {
        self.as_tensor()?
            .0
            .iter()
            .map(|d| match d {
                Dim::Static(n) => Some(*n),
                Dim::Dynamic => None,
            })
            .collect()
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Index => f.write_str("index"),
            ValueType::Tensor { dims, elem } => {
                f.write_str("tensor<")?;
                for d in dims {
                    write!(f, "{d}x")?;
                }
                write!(f, "{elem}>")
            }
            ValueType::Other(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling_round_trips() {
        for s in ["f32", "i8", "!q35.qweight<\"q35-rtn\", 32 : i32>", "bf16"] {
            assert_eq!(Elem::parse(s).to_string(), s);
        }
        assert_eq!(
            Elem::parse("!q35.qweight<\"int4\", 64 : i32>"),
            Elem::QWeight {
                scheme: "int4".into(),
                group_size: 64
            }
        );
        let t = ValueType::of_graph(&Shape::tokens_by(64), DType::F32);
        assert_eq!(t.to_string(), "tensor<?x64xf32>");
        assert_eq!(
            ValueType::of_graph(&Shape::scalar(), DType::Index),
            ValueType::Index
        );
    }
}
