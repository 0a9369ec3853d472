//! An interpreter for the q35 IR, held to the golden model bit for bit.
//!
//! It runs `func.func @decode` of a q35 module (as `q35c compile` emits it)
//! op by op, in block order, on the hardware contract's semantics: every
//! operator calls [`q35_contract::semantics`] (int8 activations per token,
//! integer matmuls with int32 group accumulators, the f32 vector operators
//! in their fixed order, the RoPE table), never arithmetic of its own. Each
//! op follows its own attributes as the IR gives them (`eps`, `heads`,
//! `head_dim`, `base`, `causal`, `scale`, `layer`, the weight symbol), so
//! the IR, and not a hand-written copy of the LLaMA block, is what runs.
//!
//! - Ops are identified by the dialect's own [`OpKind`]
//!   (`q35_frontend::ops`, the one op table); decoding and execution
//!   match on it exhaustively, so an op added to the table walks the
//!   compiler through every place that must give it semantics.
//! - [`weights`]: [`WeightBinder`], weights bound by the GGUF name each
//!   `q35.weight` declares ([`WeightBinder::from_golden`] binds a golden
//!   model's own matrices).
//! - `program`: [`Interpreter::new`] decodes the module once: values become
//!   slots (a map from MLIR value to slot), attributes are read and checked,
//!   weight declarations are resolved against the binder and their types
//!   checked against what is bound.
//! - `exec`: the semantics of each op, with run-time shape checks that
//!   name the op's location (the graph node name), never panics.
//! - [`lockstep`]: runs the interpreter and [`q35_contract::GoldenModel`]
//!   side by side, token by token, and reports the first difference (KV
//!   cache of a block, or logits) with the op, the token and the position.
//!
//! `?` (the token dimension) is bound per call to the number of tokens
//! passed; the KV cache operand and result are f32 and threaded through as
//! the function says (pass the returned cache to the next call).

mod exec;
pub mod lockstep;
mod program;
pub mod weights;

pub use lockstep::Lockstep;
pub use program::{Interpreter, OpInfo};
pub use q35_frontend::ops::OpKind;
pub use weights::{Binding, WeightBinder};

/// What can go wrong decoding or running a q35 module.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum InterpError {
    /// The module cannot be interpreted as a whole (no `@decode`, a
    /// signature the interpreter cannot bind).
    #[error("{0}")]
    Module(String),
    /// An op cannot be decoded or failed at run time; `location` is the
    /// op's location (the graph node name for compiled modules).
    #[error("{location}: '{op}' op {message}")]
    Op {
        /// The op's location.
        location: String,
        /// The op name.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// A `q35.weight` declaration has no binding, or one of another shape.
    #[error("weight @{symbol} (source `{source_name}`): {message}")]
    Weight {
        /// The weight's symbol.
        symbol: String,
        /// Its GGUF name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The arguments of a call do not fit the function.
    #[error("call of @decode: {0}")]
    Call(String),
    /// The golden model refused a step (in [`Lockstep`]).
    #[error("the golden model failed at token #{index}: {message}")]
    Golden {
        /// Index of the token in the run.
        index: usize,
        /// The golden model's error.
        message: String,
    },
    /// The interpreter and the golden model disagree (in [`Lockstep`]).
    #[error(
        "mismatch at token #{index} (id {token}, position {position}) in op `{location}` ({op}): {detail}"
    )]
    Mismatch {
        /// Index of the token in the run.
        index: usize,
        /// The token id.
        token: u32,
        /// Its position.
        position: usize,
        /// The location of the op whose result differs.
        location: String,
        /// The op name.
        op: String,
        /// Which value differs, and the two values.
        detail: String,
    },
}

/// An f32 tensor: dimensions and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dims: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `dims` holding `data` (row-major); `None` if the lengths
    /// disagree.
    pub fn new(dims: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        (dims.iter().product::<usize>() == data.len()).then_some(Tensor { dims, data })
    }

    /// A tensor of `dims` filled with `+0.0`.
    pub fn zeros(dims: Vec<usize>) -> Tensor {
        let n = dims.iter().product();
        Tensor {
            dims,
            data: vec![0.0; n],
        }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major, by value.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

impl std::fmt::Display for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        f.write_str("f32>")
    }
}

/// A run-time value of the q35 function.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An f32 tensor (activations, the KV cache, logits).
    F32(Tensor),
    /// An i32 tensor (token ids): dimensions and values.
    I32 {
        /// The dimensions.
        dims: Vec<usize>,
        /// The values, row-major.
        data: Vec<i32>,
    },
    /// An i8 tensor (int8 activation codes of `q35.quantize`): dimensions
    /// and values.
    I8 {
        /// The dimensions.
        dims: Vec<usize>,
        /// The values, row-major.
        data: Vec<i8>,
    },
    /// An `index` scalar (the position).
    Index(usize),
}

impl Value {
    /// The value's type as MLIR spells it (`tensor<1x64xf32>`, `index`).
    pub fn type_string(&self) -> String {
        match self {
            Value::F32(t) => t.to_string(),
            Value::I32 { dims, .. } => {
                let d: String = dims.iter().map(|d| format!("{d}x")).collect();
                format!("tensor<{d}i32>")
            }
            Value::I8 { dims, .. } => {
                let d: String = dims.iter().map(|d| format!("{d}x")).collect();
                format!("tensor<{d}i8>")
            }
            Value::Index(_) => "index".into(),
        }
    }
}

/// The results of one `@decode` call.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOutput {
    /// `tokens x vocab` logits.
    pub logits: Tensor,
    /// The updated KV cache, to pass to the next call.
    pub cache: Tensor,
}
