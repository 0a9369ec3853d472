//! Zero-copy views into a validated file: instruction words, MEM extents and
//! the debug map, all borrowed from the mapped bytes.
//!
//! Instruction words are exposed as [`Words`], a view over the raw
//! little-endian bytes that decodes each `u64` on access, rather than as a
//! `&[u64]`. The words *are* 8-byte aligned in the file (and so in the page-
//! aligned map), but reinterpreting bytes as `u64`s would need `unsafe`, an
//! in-memory image aligned by luck, and a little-endian host; decoding with
//! `u64::from_le_bytes` costs next to nothing, compiles to a plain load on
//! little-endian machines, and is correct everywhere.

use std::ops::Range;

use crate::layout::{DEBUG_ENTRY_LEN, MemRange};
use crate::parse::{DebugInfo, ExtentInfo, MemInfo, QueueInfo};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A sequence of little-endian 64-bit words, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct Words<'a> {
    bytes: &'a [u8],
}

impl<'a> Words<'a> {
    /// Number of words.
    pub fn len(&self) -> usize {
        self.bytes.len() / 8
    }

    /// True when there are no words.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Word `i`, if in range.
    pub fn get(&self, i: usize) -> Option<u64> {
        let at = i.checked_mul(8)?;
        self.bytes.get(at..at.checked_add(8)?).map(word)
    }

    /// The words in order, decoded on the fly.
    pub fn iter(&self) -> WordIter<'a> {
        WordIter {
            chunks: self.bytes.chunks_exact(8),
        }
    }

    /// The raw little-endian bytes (8 per word).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The words copied into a vector.
    pub fn to_vec(&self) -> Vec<u64> {
        self.iter().collect()
    }
}

impl<'a> IntoIterator for Words<'a> {
    type Item = u64;
    type IntoIter = WordIter<'a>;

    fn into_iter(self) -> WordIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Words`], decoding each little-endian word.
#[derive(Clone, Debug)]
pub struct WordIter<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

fn word(c: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(c);
    u64::from_le_bytes(w)
}

impl Iterator for WordIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.chunks.next().map(word)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl DoubleEndedIterator for WordIter<'_> {
    fn next_back(&mut self) -> Option<u64> {
        self.chunks.next_back().map(word)
    }
}

impl ExactSizeIterator for WordIter<'_> {}

/// One instruction queue's stream.
#[derive(Clone, Copy, Debug)]
pub struct Queue<'a> {
    id: u16,
    words: Words<'a>,
}

impl<'a> Queue<'a> {
    pub(crate) fn new(file: &'a [u8], q: &QueueInfo) -> Queue<'a> {
        Queue {
            id: q.id,
            words: Words {
                bytes: &file[q.start..q.start + q.count as usize * 8],
            },
        }
    }

    /// The queue id (the target's numbering).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// True when the queue has no instructions.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The instruction words, one per instruction.
    pub fn words(&self) -> Words<'a> {
        self.words
    }
}

/// The MEM image: extents of words with their bytes, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct Mem<'a> {
    file: &'a [u8],
    word_bytes: u32,
    extents: &'a [ExtentInfo],
}

/// One extent of the MEM image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemExtent<'a> {
    /// Where the words go.
    pub range: MemRange,
    /// Their bytes: `range.words * word_bytes` of them, word after word.
    pub bytes: &'a [u8],
}

impl<'a> Mem<'a> {
    pub(crate) fn new(file: &'a [u8], m: &'a MemInfo) -> Mem<'a> {
        Mem {
            file,
            word_bytes: m.word_bytes,
            extents: &m.extents,
        }
    }

    /// Bytes per MEM word (320 on lpu-v1).
    pub fn word_bytes(&self) -> u32 {
        self.word_bytes
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// True when the image has no extents.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Total words over all extents.
    pub fn total_words(&self) -> u64 {
        self.extents.iter().map(|e| u64::from(e.range.words)).sum()
    }

    fn extent(&self, e: &ExtentInfo) -> MemExtent<'a> {
        MemExtent {
            range: e.range,
            bytes: &self.file[e.start..e.start + e.len],
        }
    }

    /// The extents, sorted by (slice, first word).
    pub fn extents(&self) -> impl ExactSizeIterator<Item = MemExtent<'a>> + '_ {
        self.extents.iter().map(|e| self.extent(e))
    }

    /// The extent holding word `word` of slice `slice`, if any.
    pub fn extent_at(&self, slice: u16, word: u32) -> Option<MemExtent<'a>> {
        // Extents are sorted and disjoint: the candidate is the last one
        // starting at or before (slice, word).
        let i = self
            .extents
            .partition_point(|e| (e.range.slice, e.range.first_word) <= (slice, word));
        let e = self.extents.get(i.checked_sub(1)?)?;
        (e.range.slice == slice && u64::from(word) < e.range.end_word()).then(|| self.extent(e))
    }

    /// The bytes of word `word` of slice `slice`, if the image holds it.
    pub fn word(&self, slice: u16, word: u32) -> Option<&'a [u8]> {
        let e = self.extent_at(slice, word)?;
        let wb = self.word_bytes as usize;
        let at = (word - e.range.first_word) as usize * wb;
        Some(&e.bytes[at..at + wb])
    }
}

/// One debug map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugEntry<'a> {
    /// The queue id.
    pub queue: u16,
    /// The instruction's index in that queue.
    pub index: u32,
    /// Where it came from (source op and layer), as the compiler wrote it.
    pub location: &'a str,
}

/// The debug map: (queue, instruction index) -> source location, sorted,
/// searched in place without decoding it.
#[derive(Clone, Debug)]
pub struct DebugMap<'a> {
    file: &'a [u8],
    entries: Range<usize>,
    pool: Range<usize>,
}

impl<'a> DebugMap<'a> {
    pub(crate) fn new(file: &'a [u8], d: &DebugInfo) -> DebugMap<'a> {
        DebugMap {
            file,
            entries: d.entries.clone(),
            pool: d.pool.clone(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len() / DEBUG_ENTRY_LEN as usize
    }

    /// True when the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(&self, i: usize) -> (u16, u32) {
        let at = self.entries.start + i * DEBUG_ENTRY_LEN as usize;
        (u16_at(self.file, at), u32_at(self.file, at + 4))
    }

    /// Entry `i` (in sorted order), if in range.
    pub fn get(&self, i: usize) -> Option<DebugEntry<'a>> {
        (i < self.len()).then(|| self.entry(i))
    }

    /// Entry `i`, which must be in range.
    fn entry(&self, i: usize) -> DebugEntry<'a> {
        let at = self.entries.start + i * DEBUG_ENTRY_LEN as usize;
        let (queue, index) = self.key(i);
        let off = self.pool.start + u32_at(self.file, at + 8) as usize;
        let len = u32_at(self.file, at + 12) as usize;
        let location =
            std::str::from_utf8(&self.file[off..off + len]).expect("validated as UTF-8 on open");
        DebugEntry {
            queue,
            index,
            location,
        }
    }

    /// Every entry, sorted by (queue, index).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = DebugEntry<'a>> + '_ {
        (0..self.len()).map(|i| self.entry(i))
    }

    /// The location recorded for exactly this instruction.
    pub fn lookup(&self, queue: u16, index: u32) -> Option<&'a str> {
        let i = self.partition(|k| k < (queue, index));
        let e = self.get(i)?;
        ((e.queue, e.index) == (queue, index)).then_some(e.location)
    }

    /// The entry covering this instruction: the last entry of the same queue
    /// at or before `index` (an entry holds until the next one).
    pub fn locate(&self, queue: u16, index: u32) -> Option<DebugEntry<'a>> {
        let i = self.partition(|k| k <= (queue, index));
        let e = self.get(i.checked_sub(1)?)?;
        (e.queue == queue).then_some(e)
    }

    /// The number of leading entries whose key satisfies `pred` (which must
    /// hold for a prefix of the sorted entries).
    fn partition(&self, pred: impl Fn((u16, u32)) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.key(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The `embedding` section: how the table is stored, its shape, and its
/// data (borrowed from the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding<'a> {
    /// f32 rows or a Q35 matrix.
    pub encoding: crate::EmbeddingEncoding,
    /// Rows (the vocabulary).
    pub rows: u64,
    /// Columns (the hidden size).
    pub cols: u64,
    /// The data after the section's header: `rows x cols` little-endian
    /// f32, or the serialised Q35 matrix.
    pub data: &'a [u8],
}
