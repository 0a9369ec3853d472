//! Where a symbol's elements lie in MEM: q35-isa's lane-wise layout
//! (docs/isa.md 6, `q35_isa::Placement`), read from the symbol's placement
//! extents in the `.lpubin`.
//!
//! Element `i` of a symbol (row-major over its shape) is lane `i % 320` of
//! vector `v = i / 320`; lanes past the last element are zero. A symbol of
//! `b`-byte elements is placed either
//!
//! - on **one slice** (one extent of `vectors * b` words): vector `v` takes
//!   words `first + v*b .. first + v*b + b`, word `j` holding byte `j` of
//!   every element; or
//! - on **one slice per byte plane** (`b` extents of `vectors` words each):
//!   byte `j` of vector `v` is word `first_j + v` of extent `j`'s slice.
//!
//! With 1-byte elements the two are the same. Any other placement is a
//! [`LayoutError`]. The layout note the container carries is free-form and
//! not interpreted.

use q35_lpubin::{MemRange, Symbol};

/// Lanes of a vector (= bytes of a MEM word).
pub const LANES: usize = 320;

/// A placement that is not the lane-wise layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The shape's element count overflows.
    #[error("shape {0:?} has too many elements")]
    TooLarge(Vec<u64>),
    /// A word of the placement outside the device's MEM.
    #[error("word {word} of slice {slice} is outside MEM ({slices} slices of {words} words)")]
    OutOfRange {
        /// The slice.
        slice: u16,
        /// The word address.
        word: u64,
        /// Slices the device has.
        slices: usize,
        /// Words per slice.
        words: u32,
    },
    /// Neither one extent nor one extent per byte plane.
    #[error(
        "placement of {extents} extent(s) is neither one extent of {one_slice} words nor {planes} extents of {per_plane} words each ({elem} {shape:?})"
    )]
    Placement {
        /// Extents given.
        extents: usize,
        /// Words one slice would hold.
        one_slice: u64,
        /// Byte planes of the element type.
        planes: usize,
        /// Words each plane would hold.
        per_plane: u64,
        /// Element type.
        elem: q35_lpubin::ElemType,
        /// Shape.
        shape: Vec<u64>,
    },
}

/// A symbol's lane-wise layout, checked against its placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolLayout {
    elem_bytes: usize,
    elements: u64,
    vectors: u64,
    /// One extent (consecutive byte planes) or one per byte plane.
    extents: Vec<MemRange>,
}

impl SymbolLayout {
    /// The layout of `sym`, or why its placement is not lane-wise.
    pub fn of(sym: &Symbol) -> Result<SymbolLayout, LayoutError> {
        let elements = sym
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| LayoutError::TooLarge(sym.shape.clone()))?;
        let b = sym.elem.size();
        let vectors = elements.div_ceil(LANES as u64);
        let one_slice = vectors * b as u64;
        let ok = match sym.placement.as_slice() {
            [one] => u64::from(one.words) == one_slice,
            many => many.len() == b && many.iter().all(|r| u64::from(r.words) == vectors),
        };
        if !ok || elements == 0 {
            return Err(LayoutError::Placement {
                extents: sym.placement.len(),
                one_slice,
                planes: b,
                per_plane: vectors,
                elem: sym.elem,
                shape: sym.shape.clone(),
            });
        }
        Ok(SymbolLayout {
            elem_bytes: b,
            elements,
            vectors,
            extents: sym.placement.clone(),
        })
    }

    /// Element bytes of the whole symbol.
    pub fn byte_len(&self) -> usize {
        self.elements as usize * self.elem_bytes
    }

    /// Elements (the product of the shape).
    pub fn elements(&self) -> u64 {
        self.elements
    }

    /// Vectors (MEM words per byte plane).
    pub fn vectors(&self) -> u64 {
        self.vectors
    }

    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        self.elem_bytes
    }

    /// Checks that every word lies within `slices` slices of `words` words.
    pub fn check_bounds(&self, slices: usize, words: u32) -> Result<(), LayoutError> {
        for r in &self.extents {
            if usize::from(r.slice) >= slices || r.end_word() > u64::from(words) {
                return Err(LayoutError::OutOfRange {
                    slice: r.slice,
                    word: r.end_word() - 1,
                    slices,
                    words,
                });
            }
        }
        Ok(())
    }

    /// Slice and word address of byte plane `j` of vector `v`.
    pub fn word_of(&self, v: u64, j: usize) -> (u16, u32) {
        match self.extents.as_slice() {
            [one] => (
                one.slice,
                one.first_word + (v * self.elem_bytes as u64) as u32 + j as u32,
            ),
            planes => (planes[j].slice, planes[j].first_word + v as u32),
        }
    }

    /// The MEM words holding `values` (element bytes, [`Self::byte_len`]
    /// long): `(slice, word, 320 bytes)` for every byte plane of every
    /// vector. Lanes past the last element are zero.
    pub fn to_words(&self, values: &[u8]) -> Vec<(u16, u32, [u8; LANES])> {
        let b = self.elem_bytes;
        let mut out = Vec::with_capacity(self.vectors as usize * b);
        for v in 0..self.vectors {
            for j in 0..b {
                let mut word = [0u8; LANES];
                for (lane, byte) in word.iter_mut().enumerate() {
                    let i = v as usize * LANES + lane;
                    if let Some(&x) = values.get(i * b + j)
                        && (i as u64) < self.elements
                    {
                        *byte = x;
                    }
                }
                let (slice, addr) = self.word_of(v, j);
                out.push((slice, addr, word));
            }
        }
        out
    }

    /// Element bytes gathered from MEM: `word(slice, addr)` returns the
    /// 320 bytes of a word.
    pub fn from_words<'m>(&self, mut word: impl FnMut(u16, u32) -> &'m [u8]) -> Vec<u8> {
        let b = self.elem_bytes;
        let mut out = vec![0u8; self.byte_len()];
        for v in 0..self.vectors {
            for j in 0..b {
                let (slice, addr) = self.word_of(v, j);
                let w = word(slice, addr);
                for (lane, &x) in w.iter().enumerate().take(LANES) {
                    let i = v as usize * LANES + lane;
                    if (i as u64) < self.elements {
                        out[i * b + j] = x;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use q35_lpubin::{ElemType, SymbolKind};

    fn sym(elem: ElemType, shape: &[u64], placement: &[(u16, u32, u32)]) -> Symbol {
        Symbol {
            name: "s".into(),
            kind: SymbolKind::Input,
            elem,
            shape: shape.to_vec(),
            placement: placement
                .iter()
                .map(|&(slice, first_word, words)| MemRange {
                    slice,
                    first_word,
                    words,
                })
                .collect(),
            layout: String::new(),
        }
    }

    #[test]
    fn one_slice_and_planes() {
        // 321 u16: 2 vectors; one slice = 4 words, planes = 2 x 2 words.
        let values: Vec<u8> = (0..321u16)
            .flat_map(|v| (v | 0x100).to_le_bytes())
            .collect();
        let one = SymbolLayout::of(&sym(ElemType::U16, &[321], &[(5, 10, 4)])).unwrap();
        let words = one.to_words(&values);
        let at: Vec<(u16, u32)> = words.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(at, [(5, 10), (5, 11), (5, 12), (5, 13)]);
        assert_eq!((words[0].2[7], words[1].2[7]), (7, 1));
        assert_eq!((words[2].2[0], words[3].2[0], words[2].2[1]), (64, 1, 0));
        let planes =
            SymbolLayout::of(&sym(ElemType::U16, &[321], &[(1, 0, 2), (2, 8, 2)])).unwrap();
        let pw = planes.to_words(&values);
        let at: Vec<(u16, u32)> = pw.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(at, [(1, 0), (2, 8), (1, 1), (2, 9)]);
        // Both read back to the same values.
        for l in [&one, &planes] {
            let ws = l.to_words(&values);
            let back = l.from_words(|s, a| {
                &ws.iter()
                    .find(|w| (w.0, w.1) == (s, a))
                    .expect("a written word")
                    .2[..]
            });
            assert_eq!(back, values);
        }
    }

    #[test]
    fn agrees_with_q35_isa() {
        // The same placement through q35-isa's MemInit packing.
        use q35_isa::{DType, MemData, MemInit, Placement, QueueId};
        let vals: Vec<u32> = (0..700)
            .map(|i: u32| i.wrapping_mul(2_654_435_761) ^ 0x5a5a)
            .collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let qs: Vec<QueueId> = ["mem.w0", "mem.w1", "mem.w2", "mem.w3"]
            .iter()
            .map(|q| q.parse().unwrap())
            .collect();
        for slices in [vec![qs[0]], qs.clone()] {
            let init = MemInit {
                at: Placement {
                    slices: slices.clone(),
                    addr: 7,
                },
                dtype: DType::F32,
                data: MemData::Values(vals.clone()),
            };
            let mut want: Vec<(u16, u32, Vec<u8>)> = init
                .words()
                .into_iter()
                .map(|(q, a, w)| (q.index(), a, w.to_vec()))
                .collect();
            let words = 3 * if slices.len() == 1 { 4 } else { 1 };
            let placement: Vec<(u16, u32, u32)> =
                slices.iter().map(|q| (q.index(), 7, words)).collect();
            let l = SymbolLayout::of(&sym(ElemType::F32, &[700], &placement)).unwrap();
            let mut got: Vec<(u16, u32, Vec<u8>)> = l
                .to_words(&bytes)
                .into_iter()
                .map(|(s, a, w)| (s, a, w.to_vec()))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn bad_placements_are_refused() {
        let e = SymbolLayout::of(&sym(ElemType::F32, &[576], &[(0, 0, 7)])).unwrap_err();
        assert!(e.to_string().contains("one extent of 8 words"), "{e}");
        let e = SymbolLayout::of(&sym(ElemType::F32, &[576], &[(0, 0, 2), (1, 0, 2)])).unwrap_err();
        assert!(e.to_string().contains("4 extents of 2 words"), "{e}");
        assert!(SymbolLayout::of(&sym(ElemType::F32, &[u64::MAX, 4], &[(0, 0, 1)])).is_err());
    }
}
