//! Which scheme each matrix of a model gets: [`SchemePolicy`] (the blocks'
//! scheme and a [`HeadPolicy`] for the LM head).

use q35_reference::{LinearId, LinearKind};

use crate::QuantScheme;

/// What the LM head gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadPolicy {
    /// The blocks' scheme ([`SchemePolicy::blocks`]).
    #[default]
    SameAsBlocks,
    /// A scheme of its own.
    Scheme(QuantScheme),
    /// Not quantized: the head stays f32.
    KeepF32,
}

impl HeadPolicy {
    /// The head's scheme when the blocks get `blocks` (`None`: kept f32).
    pub fn scheme(self, blocks: QuantScheme) -> Option<QuantScheme> {
        match self {
            HeadPolicy::SameAsBlocks => Some(blocks),
            HeadPolicy::Scheme(s) => Some(s),
            HeadPolicy::KeepF32 => None,
        }
    }
}

/// Which scheme each layer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemePolicy {
    /// The scheme of the blocks' matrices.
    pub blocks: QuantScheme,
    /// What the LM head gets.
    pub head: HeadPolicy,
}

impl SchemePolicy {
    /// Every matrix, LM head included, with `scheme`.
    pub fn uniform(scheme: QuantScheme) -> SchemePolicy {
        SchemePolicy {
            blocks: scheme,
            head: HeadPolicy::SameAsBlocks,
        }
    }

    /// The LM head's scheme (`None`: kept f32).
    pub fn head_scheme(&self) -> Option<QuantScheme> {
        self.head.scheme(self.blocks)
    }

    /// The scheme of layer `id` (`None`: not quantized).
    pub fn scheme_of(&self, id: LinearId) -> Option<QuantScheme> {
        if id.kind == LinearKind::LmHead {
            self.head_scheme()
        } else {
            Some(self.blocks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: LinearId = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    const DOWN: LinearId = LinearId {
        block: Some(1),
        kind: LinearKind::Down,
    };

    fn policy(head: HeadPolicy) -> SchemePolicy {
        SchemePolicy {
            blocks: QuantScheme::Q35,
            head,
        }
    }

    #[test]
    fn head_policy_decides_only_the_lm_head() {
        let cases = [
            (HeadPolicy::SameAsBlocks, Some(QuantScheme::Q35)),
            (
                HeadPolicy::Scheme(QuantScheme::Int8),
                Some(QuantScheme::Int8),
            ),
            (HeadPolicy::KeepF32, None),
        ];
        for (head, want) in cases {
            let p = policy(head);
            assert_eq!(p.scheme_of(HEAD), want, "{head:?}");
            assert_eq!(p.head_scheme(), want, "{head:?}");
            assert_eq!(p.scheme_of(DOWN), Some(QuantScheme::Q35), "{head:?}");
        }
        assert_eq!(
            SchemePolicy::uniform(QuantScheme::Int4).scheme_of(HEAD),
            Some(QuantScheme::Int4)
        );
    }
}
