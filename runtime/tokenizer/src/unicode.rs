//! The three Unicode code point classes the GPT-2 pre-tokenizer looks at.
//!
//! llama.cpp classifies code points with its own tables (`unicode-data.cpp`,
//! generated from the Unicode Character Database): *letter* is general
//! category `L`, *number* is `N`, and *whitespace* is the `White_Space`
//! property. Its tables are Unicode 15.1 (they have CJK Extension I, new in
//! 15.1, and not the Unicode 16.0 additions such as U+1C89 or the Garay
//! digits U+10D40..U+10D49, which it classes as unassigned, i.e. "other").
//! The `L` and `N` ranges here come from `regex-syntax`'s UCD tables (the
//! data behind Rust's `regex`), restricted to code points assigned by Unicode
//! 15.1 (`\p{Age=V15_1}`) so that newer code points are "other" here too;
//! whitespace is `char::is_whitespace`, which is `White_Space` (the same 25
//! code points in every version since 4.1). `tests/llama_cpp.rs` checks
//! every code point against llama.cpp.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// Classification of one code point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CharClass {
    Letter,
    Number,
    Whitespace,
    /// Anything else (punctuation, symbols, marks, controls, unassigned...).
    Other,
}

/// Sorted, non-overlapping inclusive ranges of one general category.
struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    /// Ranges of `\p{<cat>}` as `regex-syntax` knows them, limited to code
    /// points assigned by Unicode 15.1 (llama.cpp's table version).
    fn of(category: &str) -> Ranges {
        let pattern = format!(r"[\p{{{category}}}&&\p{{Age=V15_1}}]");
        let mut out = Vec::new();
        // The pattern is a fixed, valid Unicode class: parsing cannot fail for
        // `L` or `N`, but an empty table (and a loud test failure) beats a panic.
        if let Ok(hir) = regex_syntax::parse(&pattern)
            && let HirKind::Class(Class::Unicode(cls)) = hir.kind()
        {
            out.extend(
                cls.ranges()
                    .iter()
                    .map(|r| (u32::from(r.start()), u32::from(r.end()))),
            );
        }
        Ranges(out)
    }

    fn contains(&self, cp: u32) -> bool {
        self.0
            .binary_search_by(|&(lo, hi)| {
                if hi < cp {
                    std::cmp::Ordering::Less
                } else if lo > cp {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

struct Tables {
    letter: Ranges,
    number: Ranges,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| Tables {
        letter: Ranges::of("L"),
        number: Ranges::of("N"),
    })
}

/// Classifies a code point. A code point is in at most one class: `L`, `N`
/// and `White_Space` are disjoint.
pub(crate) fn classify(c: char) -> CharClass {
    if c.is_ascii() {
        return if c.is_ascii_alphabetic() {
            CharClass::Letter
        } else if c.is_ascii_digit() {
            CharClass::Number
        } else if c.is_ascii_whitespace() || c == '\u{0B}' {
            // ASCII White_Space is \t \n \x0B \x0C \r and space.
            CharClass::Whitespace
        } else {
            CharClass::Other
        };
    }
    if c.is_whitespace() {
        return CharClass::Whitespace;
    }
    let t = tables();
    let cp = u32::from(c);
    if t.letter.contains(cp) {
        CharClass::Letter
    } else if t.number.contains(cp) {
        CharClass::Number
    } else {
        CharClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_loaded() {
        assert!(tables().letter.0.len() > 500);
        assert!(tables().number.0.len() > 100);
    }

    #[test]
    fn classes() {
        for c in ['a', 'Z', 'ï', 'é', '日', 'ß', 'Ω', 'ʰ'] {
            assert_eq!(classify(c), CharClass::Letter, "{c:?}");
        }
        for c in ['0', '9', '²', '½', 'Ⅻ', '٣', '①'] {
            assert_eq!(classify(c), CharClass::Number, "{c:?}");
        }
        for c in [
            ' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}', '\u{85}', '\u{A0}', '\u{1680}', '\u{2003}',
            '\u{2028}', '\u{202F}', '\u{3000}',
        ] {
            assert_eq!(classify(c), CharClass::Whitespace, "{c:?}");
        }
        // Marks, punctuation, symbols, emoji, format and private-use characters.
        for c in [
            '\u{301}', ',', '!', '€', '🤖', '\u{200B}', '\u{E000}', '\0', '\u{7F}',
        ] {
            assert_eq!(classify(c), CharClass::Other, "{c:?}");
        }
    }

    #[test]
    fn unicode_16_additions_are_other() {
        // Assigned in Unicode 16.0, unassigned in llama.cpp's 15.1 tables.
        for c in [
            '\u{1C89}',
            '\u{10D40}',
            '\u{116D0}',
            '\u{1E5F1}',
            '\u{1CCF0}',
        ] {
            assert_eq!(classify(c), CharClass::Other, "{c:?}");
        }
        // New in 15.1 (CJK Extension I): a letter.
        assert_eq!(classify('\u{2EBF0}'), CharClass::Letter);
    }

    #[test]
    fn ascii_fast_path_agrees_with_tables() {
        for b in 0u8..128 {
            let c = char::from(b);
            let slow = if c.is_whitespace() {
                CharClass::Whitespace
            } else if tables().letter.contains(u32::from(b)) {
                CharClass::Letter
            } else if tables().number.contains(u32::from(b)) {
                CharClass::Number
            } else {
                CharClass::Other
            };
            assert_eq!(classify(c), slow, "{c:?}");
        }
    }
}
