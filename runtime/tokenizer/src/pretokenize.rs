//! The `smollm` pre-tokenizer: how llama.cpp cuts text into BPE "words".
//!
//! llama.cpp (`llama-vocab.cpp`, `LLAMA_VOCAB_PRE_TYPE_SMOLLM`) applies two
//! regexes *in sequence*, each to the pieces the previous one produced:
//!
//! 1. `\p{N}`: every number code point becomes a piece of its own, and the
//!    text between them is kept as pieces too (`"ab12 c"` -> `"ab"`, `"1"`,
//!    `"2"`, `" c"`).
//! 2. `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`,
//!    GPT-2's pattern. llama.cpp recognises this exact string and runs a
//!    hand-written matcher (`unicode_regex_split_custom_gpt2` in
//!    `unicode.cpp`) instead of a regex engine; [`split_gpt2`] is a
//!    transcription of that matcher, including its treatment of a piece's end
//!    as "end of text" for the `(?!\S)` look-ahead and its trailing `\s+`
//!    fallback.
//!
//! Pieces are returned as byte ranges into the input.

use std::ops::Range;

use crate::unicode::{CharClass, classify};

/// The input as code points with their byte offsets and classes.
struct Cpts {
    offsets: Vec<usize>,
    chars: Vec<char>,
    classes: Vec<CharClass>,
    len_bytes: usize,
}

impl Cpts {
    fn new(text: &str) -> Cpts {
        let n = text.len();
        let mut offsets = Vec::with_capacity(n);
        let mut chars = Vec::with_capacity(n);
        let mut classes = Vec::with_capacity(n);
        for (i, c) in text.char_indices() {
            offsets.push(i);
            chars.push(c);
            classes.push(classify(c));
        }
        Cpts {
            offsets,
            chars,
            classes,
            len_bytes: n,
        }
    }

    fn byte(&self, cpt_index: usize) -> usize {
        self.offsets
            .get(cpt_index)
            .copied()
            .unwrap_or(self.len_bytes)
    }
}

/// Splits `text` into the words llama.cpp's `smollm` pre-tokenizer produces,
/// appending their byte ranges to `out`.
pub(crate) fn split_smollm(text: &str, out: &mut Vec<Range<usize>>) {
    let cpts = Cpts::new(text);
    let n = cpts.chars.len();
    // Stage 1: isolate each number code point.
    let mut start = 0;
    for i in 0..n {
        if cpts.classes[i] == CharClass::Number {
            if start < i {
                split_gpt2(&cpts, start, i, out);
            }
            split_gpt2(&cpts, i, i + 1, out);
            start = i + 1;
        }
    }
    if start < n {
        split_gpt2(&cpts, start, n, out);
    }
}

/// Stage 2: GPT-2's pattern over code points `lo..hi` (one stage-1 piece).
/// Positions outside the piece read as "out of range", exactly as llama.cpp's
/// `_get_cpt` / `_get_flags` do.
fn split_gpt2(cpts: &Cpts, lo: usize, hi: usize, out: &mut Vec<Range<usize>>) {
    let class = |p: usize| -> Option<CharClass> { (p < hi).then(|| cpts.classes[p]) };
    let chr = |p: usize| -> Option<char> { (p < hi).then(|| cpts.chars[p]) };
    let mut emit = |a: usize, b: usize| {
        if a < b {
            out.push(cpts.byte(a)..cpts.byte(b));
        }
    };

    let mut pos = lo;
    while pos < hi {
        let c = cpts.chars[pos];

        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' && pos + 1 < hi {
            let next = cpts.chars[pos + 1];
            if matches!(next, 's' | 't' | 'm' | 'd') {
                emit(pos, pos + 2);
                pos += 2;
                continue;
            }
            if pos + 2 < hi {
                let next2 = cpts.chars[pos + 2];
                if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    emit(pos, pos + 3);
                    pos += 3;
                    continue;
                }
            }
        }

        let lead_space = c == ' ';
        let class2 = if lead_space {
            class(pos + 1)
        } else {
            class(pos)
        };
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        if let Some(k @ (CharClass::Letter | CharClass::Number | CharClass::Other)) = class2 {
            let start = pos;
            if lead_space {
                pos += 1;
            }
            while class(pos) == Some(k) {
                pos += 1;
            }
            emit(start, pos);
            continue;
        }

        let mut num_ws = 0;
        while class(pos + num_ws) == Some(CharClass::Whitespace) {
            num_ws += 1;
        }
        // `\s+(?!\S)`: a whitespace run followed by more text gives up its
        // last code point to the next word.
        if num_ws > 1 && chr(pos + num_ws).is_some() {
            emit(pos, pos + num_ws - 1);
            pos += num_ws - 1;
            continue;
        }
        // `\s+`
        if num_ws > 0 {
            emit(pos, pos + num_ws);
            pos += num_ws;
            continue;
        }
        // No alternative matched: a piece of one code point.
        emit(pos, pos + 1);
        pos += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        let mut r = Vec::new();
        split_smollm(text, &mut r);
        r.into_iter().map(|x| &text[x]).collect()
    }

    #[test]
    fn gpt2_basics() {
        assert_eq!(
            words("Once upon a time, there"),
            ["Once", " upon", " a", " time", ",", " there"]
        );
        assert_eq!(
            words("I'm it's we'll"),
            ["I", "'m", " it", "'s", " we", "'ll"]
        );
        assert_eq!(words("don'T"), ["don", "'", "T"]);
    }

    #[test]
    fn digits_are_isolated_and_split_spaces_off() {
        assert_eq!(words("12345"), ["1", "2", "3", "4", "5"]);
        // Stage 1 cuts " 3" into " " and "3": the space cannot join the digit.
        assert_eq!(words("a 3.14"), ["a", " ", "3", ".", "1", "4"]);
        assert_eq!(words("x²"), ["x", "²"]);
    }

    #[test]
    fn whitespace_runs() {
        assert_eq!(words("a  b"), ["a", " ", " b"]);
        assert_eq!(words("a   "), ["a", "   "]);
        assert_eq!(words("\n\nHello"), ["\n", "\n", "Hello"]);
        assert_eq!(words("a\tb"), ["a", "\t", "b"]);
        assert_eq!(words(" "), [" "]);
        assert_eq!(words("  !"), [" ", " !"]);
        assert_eq!(words(""), Vec::<&str>::new());
    }

    #[test]
    fn unicode_words() {
        assert_eq!(
            words("naïve café 日本語 🤖"),
            ["naïve", " café", " 日本語", " 🤖"]
        );
        // A combining mark is not a letter: it ends the letter run.
        assert_eq!(words("e\u{301}x"), ["e", "\u{301}", "x"]);
    }

    #[test]
    fn ranges_cover_the_input() {
        for text in ["Hello, world!  \n\t 12 ab'cd", "日本 語\u{3000}x", "''''s"] {
            let mut r = Vec::new();
            split_smollm(text, &mut r);
            let mut at = 0;
            for x in &r {
                assert_eq!(x.start, at);
                assert!(x.end > x.start);
                at = x.end;
            }
            assert_eq!(at, text.len());
        }
    }
}
