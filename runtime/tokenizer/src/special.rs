//! Splitting text around special tokens, as llama.cpp's
//! `tokenizer_st_partition`.
//!
//! Before any pre-tokenization, llama.cpp cuts the text at every occurrence
//! of a "special" token's text: tokens of type control, user-defined or
//! unknown, tried longest text first, each over all the text fragments left
//! by the previous ones. Control and unknown tokens take part only when the
//! caller asks to parse special tokens; user-defined tokens always do. The
//! remaining text fragments are pre-tokenized and merged independently.

use std::ops::Range;

/// A piece of the input: raw text (a byte range) or an already-known token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// A token that can be cut out of text.
#[derive(Debug, Clone)]
pub(crate) struct SpecialToken {
    pub(crate) id: u32,
    pub(crate) text: String,
    /// User-defined tokens are split out even without `parse_special`.
    pub(crate) always: bool,
}

/// Orders special tokens as llama.cpp's `cache_special_tokens`: longest text
/// first. (llama.cpp's `std::sort` is unstable; ties are broken by id here so
/// the order is deterministic. Ties can only matter when two equally long
/// special texts overlap in the input.)
pub(crate) fn sort_special(tokens: &mut [SpecialToken]) {
    tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
}

/// Partitions `text` into fragments.
pub(crate) fn partition(
    text: &str,
    specials: &[SpecialToken],
    parse_special: bool,
) -> Vec<Fragment> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(0..text.len()));
    for sp in specials {
        if !(parse_special || sp.always) || sp.text.is_empty() {
            continue;
        }
        // Cheap pre-check: most texts contain no special token at all.
        if !text.contains(sp.text.as_str()) {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            let Fragment::Text(r) = f else {
                next.push(f);
                continue;
            };
            let mut at = r.start;
            for (pos, m) in text[r.clone()].match_indices(sp.text.as_str()) {
                let s = r.start + pos;
                if s > at {
                    next.push(Fragment::Text(at..s));
                }
                next.push(Fragment::Token(sp.id));
                at = s + m.len();
            }
            if at < r.end {
                next.push(Fragment::Text(at..r.end));
            }
        }
        frags = next;
    }
    frags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> Vec<SpecialToken> {
        let mut v = vec![
            SpecialToken {
                id: 1,
                text: "<|im_start|>".into(),
                always: false,
            },
            SpecialToken {
                id: 7,
                text: "<s>".into(),
                always: true,
            },
            SpecialToken {
                id: 9,
                text: "<|im_start|>x".into(),
                always: false,
            },
        ];
        sort_special(&mut v);
        v
    }

    #[test]
    fn splits_and_respects_parse_special() {
        let sp = specials();
        let t = "a<|im_start|>b<s><|im_start|>";
        assert_eq!(
            partition(t, &sp, true),
            [
                Fragment::Text(0..1),
                Fragment::Token(1),
                Fragment::Text(13..14),
                Fragment::Token(7),
                Fragment::Token(1),
            ]
        );
        // Without parse_special only the user-defined token is cut out.
        assert_eq!(
            partition(t, &sp, false),
            [
                Fragment::Text(0..14),
                Fragment::Token(7),
                Fragment::Text(17..29)
            ]
        );
        assert_eq!(partition("", &sp, true), []);
    }

    #[test]
    fn longest_text_wins() {
        let sp = specials();
        assert_eq!(
            partition("<|im_start|>x<|im_start|>", &sp, true),
            [Fragment::Token(9), Fragment::Token(1)]
        );
    }
}
