//! The q35 ops the interpreter executes, named in one place.
//!
//! [`OpKind`] is the op's identity: decoding ([`super::program`]) and
//! execution ([`super::exec`]) match on it exhaustively, so an op added here
//! walks the compiler through every place that must know it. (The op table
//! of the `optable` work will replace this enum with the dialect's own.)

/// A q35 op inside `func.func @decode` (module-level `q35.weight`
/// declarations are read separately: [`WEIGHT_OP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `q35.embed`: token ids to rows of the embedding table.
    Embed,
    /// `q35.rmsnorm`: RMSNorm over the last dimension.
    RmsNorm,
    /// `q35.matmul`: int8 activations times a quantized weight.
    MatMul,
    /// `q35.rope`: rotary position embedding.
    Rope,
    /// `q35.kv_write`: writes K and V of one block into the cache.
    KvWrite,
    /// `q35.attention`: grouped-query attention over the cache.
    Attention,
    /// `q35.add`: element-wise sum (residual).
    Add,
    /// `q35.swiglu`: `silu(gate) * up`.
    SwiGlu,
    /// `q35.lm_head`: logits, quantized like `q35.matmul`.
    LmHead,
}

/// The module-level weight declaration op.
pub const WEIGHT_OP: &str = "q35.weight";

/// The function terminator.
pub const RETURN_OP: &str = "func.return";

impl OpKind {
    /// Every op, in the dialect's documentation order.
    pub const ALL: [OpKind; 9] = [
        OpKind::Embed,
        OpKind::RmsNorm,
        OpKind::MatMul,
        OpKind::Rope,
        OpKind::KvWrite,
        OpKind::Attention,
        OpKind::Add,
        OpKind::SwiGlu,
        OpKind::LmHead,
    ];

    /// The op's MLIR name (`q35.matmul`).
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Embed => "q35.embed",
            OpKind::RmsNorm => "q35.rmsnorm",
            OpKind::MatMul => "q35.matmul",
            OpKind::Rope => "q35.rope",
            OpKind::KvWrite => "q35.kv_write",
            OpKind::Attention => "q35.attention",
            OpKind::Add => "q35.add",
            OpKind::SwiGlu => "q35.swiglu",
            OpKind::LmHead => "q35.lm_head",
        }
    }

    /// The op named `name`, if the interpreter knows it.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Operands the op takes.
    pub const fn operands(self) -> usize {
        match self {
            OpKind::Embed | OpKind::RmsNorm | OpKind::MatMul | OpKind::LmHead => 1,
            OpKind::Rope | OpKind::Add | OpKind::SwiGlu => 2,
            OpKind::Attention => 3,
            OpKind::KvWrite => 4,
        }
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_dialect() {
        for k in OpKind::ALL {
            assert_eq!(OpKind::from_name(k.name()), Some(k));
            let short = k.name().trim_start_matches("q35.");
            assert!(
                crate::IRDL_SOURCE.contains(&format!("irdl.operation @{short} ")),
                "{k} is not in dialects/q35.irdl.mlir"
            );
        }
        assert_eq!(OpKind::from_name("q35.weight"), None);
        assert_eq!(OpKind::from_name("q35.nope"), None);
    }
}
