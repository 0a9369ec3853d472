//! Element types and shapes of graph values, printed in MLIR's notation.

use std::fmt;

/// Element type of a graph value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: activations.
    F32,
    /// 16-bit float: the KV cache.
    F16,
    /// 32-bit signed integer: token ids.
    I32,
    /// A scalar position (MLIR `index`).
    Index,
}

impl DType {
    /// The MLIR spelling (`f32`, `f16`, `i32`, `index`).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::Index => "index",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dimension of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The number of tokens of this step (`?`); all dynamic dims of a graph
    /// denote the same length.
    Dynamic,
    /// A fixed extent.
    Static(u64),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Dynamic => f.write_str("?"),
            Dim::Static(n) => write!(f, "{n}"),
        }
    }
}

/// A shape; the empty shape is a scalar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A scalar (rank 0).
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// `[?, n]`: `n` features for each token of the step.
    pub fn tokens_by(n: u64) -> Self {
        Shape(vec![Dim::Dynamic, Dim::Static(n)])
    }

    /// A fully static shape.
    pub fn fixed(dims: &[u64]) -> Self {
        Shape(dims.iter().map(|&d| Dim::Static(d)).collect())
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The last dimension, if any.
    pub fn last(&self) -> Option<Dim> {
        self.0.last().copied()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Formats a shape and element type as an MLIR type (`tensor<?x64xf32>`, or
/// the bare element type for a scalar).
pub(crate) fn type_string(shape: &Shape, dtype: DType) -> String {
    if shape.rank() == 0 {
        return dtype.to_string();
    }
    let mut s = String::from("tensor<");
    for d in shape.dims() {
        s.push_str(&d.to_string());
        s.push('x');
    }
    s.push_str(dtype.as_str());
    s.push('>');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlir_spelling() {
        assert_eq!(
            type_string(&Shape::tokens_by(64), DType::F32),
            "tensor<?x64xf32>"
        );
        assert_eq!(type_string(&Shape::scalar(), DType::Index), "index");
        assert_eq!(Shape::fixed(&[2, 3]).to_string(), "[2, 3]");
    }
}
