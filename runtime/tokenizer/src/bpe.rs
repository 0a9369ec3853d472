//! Rank-ordered byte-pair merging, as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! A word (one pre-tokenizer piece) starts as one symbol per byte, each the
//! GPT-2 code point standing for that byte. Repeatedly, the adjacent pair
//! with the lowest merge rank is joined -- ties go to the leftmost pair, the
//! order of llama.cpp's `llm_bigram_bpe::comparator` -- until no adjacent
//! pair has a rank. Each resulting symbol becomes the vocabulary token with
//! its text; a symbol with no token (impossible when every merge result is in
//! the vocabulary) falls back, like llama.cpp, to the tokens of its
//! single-byte characters, dropping those that have none.
//!
//! Symbol strings are interned: every string that can ever be a symbol (the
//! 256 byte code points and every merge's left side, right side and result)
//! gets a dense id, so the merge loop compares and hashes integers, not
//! strings. Merge ranks are keyed by the *pair of strings*, like llama.cpp's
//! `bpe_ranks`, so a merge whose result is not a vocabulary token still
//! merges.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::bytes::ByteMap;

/// A fast, deterministic hasher for small integer keys (a multiply-rotate
/// mix; keys are dense ids, not attacker-controlled strings).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// One merge: its rank (position in `tokenizer.ggml.merges`) and the
/// interned id of the joined string.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    result: u32,
}

/// The merge table with interned symbol strings.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    /// Interned symbol id of each byte's code point.
    byte_sym: [u32; 256],
    /// (left id, right id) -> merge.
    merges: IdMap<(u32, u32), Merge>,
    /// Vocabulary token of each symbol string, if it is one.
    sym_token: Vec<Option<u32>>,
    /// The symbol strings, for the byte fallback.
    sym_text: Vec<String>,
}

/// One symbol of the word being merged (a doubly linked list over a Vec).
#[derive(Debug, Clone, Copy)]
struct Sym {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// Interns strings to dense ids.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    texts: Vec<String>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.texts.len() as u32;
        self.ids.insert(s.to_owned(), id);
        self.texts.push(s.to_owned());
        id
    }
}

impl Bpe {
    /// Builds the merge table from `tokenizer.ggml.merges` entries (each
    /// `"left right"`, split at the first space after the first byte, as
    /// llama.cpp does; the first occurrence of a pair keeps its rank) and a
    /// lookup from text to vocabulary token.
    pub(crate) fn new<'a>(
        merges: impl IntoIterator<Item = &'a str>,
        byte_map: &ByteMap,
        token_of: impl Fn(&str) -> Option<u32>,
    ) -> Bpe {
        let mut interner = Interner::default();
        let mut byte_sym = [0u32; 256];
        let mut buf = [0u8; 4];
        for b in 0..=255u8 {
            byte_sym[usize::from(b)] = interner.intern(byte_map.char_of(b).encode_utf8(&mut buf));
        }
        let mut table: IdMap<(u32, u32), Merge> = IdMap::default();
        let mut joined = String::new();
        for (rank, m) in merges.into_iter().enumerate() {
            // llama.cpp: `word.find(' ', 1)`; an entry without such a space
            // maps the pair ("", "") which no symbol pair can ever be.
            // (A byte search: the first code point may be multi-byte.)
            let Some(split) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&m[..split], &m[split + 1..]);
            if left.is_empty() || right.is_empty() {
                // An empty side can never be a symbol: the merge never applies.
                continue;
            }
            let l = interner.intern(left);
            let r = interner.intern(right);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let result = interner.intern(&joined);
            table.entry((l, r)).or_insert(Merge {
                rank: rank as u32,
                result,
            });
        }
        let sym_token = interner.texts.iter().map(|t| token_of(t)).collect();
        Bpe {
            byte_sym,
            merges: table,
            sym_token,
            sym_text: interner.texts,
        }
    }

    /// Appends the tokens of one pre-tokenized word (raw bytes) to `out`.
    pub(crate) fn encode_word(
        &self,
        word: &[u8],
        token_of: impl Fn(&str) -> Option<u32>,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        let syms = &mut scratch.syms;
        let heap = &mut scratch.heap;
        syms.clear();
        heap.clear();
        let n = word.len();
        for (i, &b) in word.iter().enumerate() {
            syms.push(Sym {
                id: self.byte_sym[usize::from(b)],
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
                alive: true,
            });
        }
        for i in 1..n {
            self.push_pair(syms, heap, i - 1, i);
        }
        while let Some(Reverse((_, left, left_id, right_id))) = heap.pop() {
            let l = syms[left];
            let Some(right) = l.next else { continue };
            let r = syms[right];
            // Stale entries: a side was merged away or has grown since.
            if !l.alive || !r.alive || l.id != left_id || r.id != right_id {
                continue;
            }
            let Some(m) = self.merges.get(&(left_id, right_id)) else {
                continue;
            };
            syms[left].id = m.result;
            syms[left].next = r.next;
            syms[right].alive = false;
            if let Some(nn) = r.next {
                syms[nn].prev = Some(left);
            }
            if let Some(p) = syms[left].prev {
                self.push_pair(syms, heap, p, left);
            }
            if let Some(nn) = syms[left].next {
                self.push_pair(syms, heap, left, nn);
            }
        }
        let mut at = Some(0).filter(|_| n > 0);
        while let Some(i) = at {
            let id = syms[i].id as usize;
            match self.sym_token.get(id).copied().flatten() {
                Some(t) => out.push(t),
                None => {
                    // llama.cpp's fallback: each byte of the symbol's text
                    // as a one-byte token string, skipping misses.
                    let text = self.sym_text.get(id).map_or("", String::as_str);
                    for b in text.bytes() {
                        if let Some(t) = std::str::from_utf8(&[b]).ok().and_then(&token_of) {
                            out.push(t);
                        }
                    }
                }
            }
            at = syms[i].next;
        }
    }

    fn push_pair(&self, syms: &[Sym], heap: &mut Heap, left: usize, right: usize) {
        let (l, r) = (syms[left].id, syms[right].id);
        if let Some(m) = self.merges.get(&(l, r)) {
            heap.push(Reverse((m.rank, left, l, r)));
        }
    }
}

/// (rank, left index, left id, right id), smallest first.
type Heap = BinaryHeap<Reverse<(u32, usize, u32, u32)>>;

/// Reusable buffers for [`Bpe::encode_word`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    heap: Heap,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect()
    }

    fn run(bpe: &Bpe, v: &HashMap<String, u32>, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_word(
            word.as_bytes(),
            |s| v.get(s).copied(),
            &mut Scratch::default(),
            &mut out,
        );
        out
    }

    #[test]
    fn lowest_rank_first_then_leftmost() {
        let v = vocab(&["a", "b", "c", "ab", "bc", "abc", "aa", "aaa"]);
        let bm = ByteMap::new();
        // "b c" outranks "a b": "abc" -> a + bc, and "a bc" is not a merge.
        let bpe = Bpe::new(["b c", "a b"], &bm, |s| v.get(s).copied());
        assert_eq!(run(&bpe, &v, "abc"), [v["a"], v["bc"]]);
        // Equal ranks: leftmost pair first, "aaa" -> "aa" + "a".
        let bpe = Bpe::new(["a a"], &bm, |s| v.get(s).copied());
        assert_eq!(run(&bpe, &v, "aaa"), [v["aa"], v["a"]]);
        // Chained merges reach the full word.
        let bpe = Bpe::new(["a b", "ab c"], &bm, |s| v.get(s).copied());
        assert_eq!(run(&bpe, &v, "abc"), [v["abc"]]);
    }

    #[test]
    fn spaces_are_byte_mapped_and_fallback_drops_unknowns() {
        let v = vocab(&["Ġ", "x", "Ġx"]);
        let bm = ByteMap::new();
        let bpe = Bpe::new(["Ġ x"], &bm, |s| v.get(s).copied());
        assert_eq!(run(&bpe, &v, " x"), [v["Ġx"]]);
        // 'y' is not in the vocabulary: dropped, as llama.cpp does.
        assert_eq!(run(&bpe, &v, "y"), Vec::<u32>::new());
        // A merge whose result is not a token falls back to single bytes.
        let v2 = vocab(&["a", "b"]);
        let bpe = Bpe::new(["a b"], &bm, |s| v2.get(s).copied());
        assert_eq!(run(&bpe, &v2, "ab"), [v2["a"], v2["b"]]);
        assert_eq!(run(&bpe, &v2, ""), Vec::<u32>::new());
    }

    #[test]
    fn malformed_merges_are_ignored() {
        let v = vocab(&["a", "b", "ab"]);
        let bm = ByteMap::new();
        let bpe = Bpe::new(["ab", " a b", "a  b", "a b"], &bm, |s| v.get(s).copied());
        // " a b" splits as (" a", "b") per find(' ', 1); "a  b" as ("a", " b").
        assert_eq!(run(&bpe, &v, "ab"), [v["ab"]]);
    }
}
