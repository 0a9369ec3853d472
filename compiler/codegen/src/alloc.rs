//! MEM placement: every buffer (a vector of `n` elements of `b` bytes, laid
//! out lane-wise with byte plane `j` in slice `j`: the q35-isa
//! "one slice per byte plane" layout, so one cycle's reads of its slices
//! arrive as one stream group) gets `b` slices of one hemisphere and one
//! word address. Slices are filled evenly: a buffer takes the slices of the
//! requested hemisphere whose highest fill is lowest (ties: the fewest
//! skipped words, then lower queue index), at the highest fill among them.
//! Deterministic.

use std::collections::BTreeSet;

use q35_isa::{Hemisphere, QueueId, QueueKind};

/// A placed buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Name (a program symbol when the host binds it).
    pub name: String,
    /// Slices, byte plane `j` in `slices[j]`.
    pub slices: Vec<QueueId>,
    /// First word.
    pub addr: u32,
    /// Words in each slice.
    pub words: u32,
}

impl Buffer {
    /// The slice position of `slices[0]`'s hemisphere.
    pub fn hemisphere(&self) -> Option<Hemisphere> {
        self.slices.first().and_then(|q| q.hemisphere())
    }
}

/// The chip is full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocError {
    /// The buffer.
    pub name: String,
    /// Words per slice asked for.
    pub words: u32,
    /// Slices asked for.
    pub slices: usize,
    /// Hemisphere.
    pub hemisphere: &'static str,
    /// Slices of the hemisphere with `words` words free.
    pub room: usize,
    /// Slices in the hemisphere.
    pub hemisphere_slices: usize,
    /// The most words free in one slice of the hemisphere.
    pub most_free: u32,
    /// Words free at the chosen slices' common address (when `room` is
    /// enough but the chosen slices' fills differ).
    pub free: u32,
    /// Bytes free (above every slice's fill) in the other hemisphere: a
    /// full hemisphere beside a roomy one is imbalance, not a full chip.
    pub other_free_bytes: u64,
    /// Bytes allocated so far plus this buffer.
    pub need_bytes: u64,
    /// Bytes of MEM on the chip.
    pub chip_bytes: u64,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AllocError {
            name,
            words,
            slices,
            hemisphere,
            ..
        } = self;
        write!(
            f,
            "`{name}` needs {words} words in each of {slices} MEM slices of the {hemisphere} hemisphere; "
        )?;
        if self.room < *slices {
            write!(
                f,
                "only {} of its {} slices have {words} words free (the most free in one is {})",
                self.room, self.hemisphere_slices, self.most_free
            )?;
        } else {
            write!(
                f,
                "the {slices} chosen slices have {} words free at their common address",
                self.free
            )?;
        }
        let other = if *hemisphere == "west" {
            "east"
        } else {
            "west"
        };
        write!(
            f,
            " ({} bytes needed in all, the chip holds {}; the {other} hemisphere has {} bytes free)",
            self.need_bytes, self.chip_bytes, self.other_free_bytes
        )
    }
}

impl std::error::Error for AllocError {}

/// The allocator.
#[derive(Clone, Debug)]
pub struct Alloc {
    fill: Vec<u32>,
    words_per_slice: u32,
    word_bytes: u64,
    used_bytes: u64,
}

fn mem_slices(h: Hemisphere) -> impl Iterator<Item = QueueId> {
    QueueId::all()
        .filter(move |q| matches!(q.kind(), QueueKind::Mem { hemisphere, .. } if hemisphere == h))
}

impl Alloc {
    /// An empty chip of `words_per_slice`-word slices of `word_bytes` bytes.
    pub fn new(words_per_slice: u32, word_bytes: u64) -> Alloc {
        Alloc {
            fill: vec![0; usize::from(q35_isa::QUEUE_COUNT)],
            words_per_slice,
            word_bytes,
            used_bytes: 0,
        }
    }

    /// Bytes placed so far.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// The hemisphere with more free words (west on a tie).
    pub fn roomier(&self) -> Hemisphere {
        let free = |h| -> u64 {
            mem_slices(h)
                .map(|q| u64::from(self.words_per_slice - self.fill(q)))
                .sum()
        };
        if free(Hemisphere::East) > free(Hemisphere::West) {
            Hemisphere::East
        } else {
            Hemisphere::West
        }
    }

    /// Words used in `slice`.
    pub fn fill(&self, slice: QueueId) -> u32 {
        self.fill[usize::from(slice.index())]
    }

    /// Places `name`: `slices` slices of hemisphere `h`, `words` words each.
    pub fn place(
        &mut self,
        name: &str,
        h: Hemisphere,
        slices: usize,
        words: u32,
    ) -> Result<Buffer, AllocError> {
        self.place_avoiding(name, h, slices, words, &BTreeSet::new())
    }

    /// Whether hemisphere `h` has `slices` slices with `words` words free
    /// outside `avoid` (so [`Alloc::place_avoiding`] would not fall back
    /// onto avoided slices).
    pub fn room_outside(
        &self,
        h: Hemisphere,
        slices: usize,
        words: u32,
        avoid: &BTreeSet<QueueId>,
    ) -> bool {
        mem_slices(h)
            .filter(|q| !avoid.contains(q))
            .filter(|q| {
                u64::from(self.fill(*q)) + u64::from(words) <= u64::from(self.words_per_slice)
            })
            .count()
            >= slices
    }

    /// [`Alloc::place`] preferring slices outside `avoid` (the slices of
    /// the buffers an op reads and writes together with this one: two
    /// buffers one bundle reads on the same cycle cannot share a slice's
    /// single read port). Avoided slices are used only when the hemisphere
    /// has too few others.
    pub fn place_avoiding(
        &mut self,
        name: &str,
        h: Hemisphere,
        slices: usize,
        words: u32,
        avoid: &BTreeSet<QueueId>,
    ) -> Result<Buffer, AllocError> {
        // Slices with room; among those not avoided (all of them if too few
        // are), the `slices` whose highest fill is lowest (the chip fills
        // evenly, so a kernel's scratch that needs many distinct slices still
        // finds them late in the program), and among those the ones whose
        // fills are closest together, so the words below the common address
        // that some of them skip are fewest.
        let cap = self.words_per_slice;
        let room: Vec<QueueId> = mem_slices(h)
            .filter(|q| u64::from(self.fill(*q)) + u64::from(words) <= u64::from(cap))
            .collect();
        let room_count = room.len();
        let free: Vec<QueueId> = room
            .iter()
            .copied()
            .filter(|q| !avoid.contains(q))
            .collect();
        let mut cands = if free.len() >= slices { free } else { room };
        cands.sort_by_key(|q| (self.fill(*q), q.index()));
        let chosen: Vec<QueueId> = if cands.len() < slices || slices == 0 {
            cands
        } else {
            let best = (0..=cands.len() - slices)
                .min_by_key(|&i| {
                    let w = &cands[i..i + slices];
                    let max = self.fill(w[slices - 1]);
                    let waste: u64 = w.iter().map(|q| u64::from(max - self.fill(*q))).sum();
                    (max, waste)
                })
                .unwrap_or(0);
            let mut w = cands[best..best + slices].to_vec();
            w.sort_by_key(|q| q.index());
            w
        };
        let addr = chosen.iter().map(|q| self.fill(*q)).max().unwrap_or(0);
        let chip_bytes = 88 * u64::from(self.words_per_slice) * self.word_bytes;
        let need = slices as u64 * u64::from(words) * self.word_bytes;
        if chosen.len() < slices
            || u64::from(addr) + u64::from(words) > u64::from(self.words_per_slice)
        {
            return Err(AllocError {
                name: name.to_string(),
                words,
                slices,
                hemisphere: match h {
                    Hemisphere::West => "west",
                    Hemisphere::East => "east",
                },
                room: room_count,
                hemisphere_slices: mem_slices(h).count(),
                most_free: mem_slices(h).map(|q| cap - self.fill(q)).max().unwrap_or(0),
                free: self.words_per_slice.saturating_sub(addr),
                other_free_bytes: mem_slices(match h {
                    Hemisphere::West => Hemisphere::East,
                    Hemisphere::East => Hemisphere::West,
                })
                .map(|q| u64::from(cap - self.fill(q)) * self.word_bytes)
                .sum(),
                need_bytes: self.used_bytes + need,
                chip_bytes,
            });
        }
        for q in &chosen {
            self.fill[usize::from(q.index())] = addr + words;
        }
        self.used_bytes += need;
        // Byte planes in ascending queue order (deterministic, and the
        // hemisphere's slices nearest the VXM last in the west).
        Ok(Buffer {
            name: name.to_string(),
            slices: chosen,
            addr,
            words,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_hemisphere_says_how_many_slices_have_room() {
        let mut a = Alloc::new(100, 320);
        // 42 of the west's 44 slices full: two have room, four are asked.
        for i in 0..21 {
            a.place(&format!("b{i}"), Hemisphere::West, 2, 100).unwrap();
        }
        let e = a.place("x", Hemisphere::West, 4, 10).unwrap_err();
        assert_eq!((e.room, e.hemisphere_slices, e.most_free), (2, 44, 100));
        // The east is empty: 44 slices of 100 words of 320 bytes.
        assert_eq!(e.other_free_bytes, 44 * 100 * 320);
        let m = e.to_string();
        assert!(
            m.ends_with("the east hemisphere has 1408000 bytes free)"),
            "{m}"
        );
        assert!(
            m.contains("`x` needs 10 words in each of 4 MEM slices of the west hemisphere; only 2 of its 44 slices have 10 words free (the most free in one is 100)"),
            "{m}"
        );
        // The east is untouched.
        assert!(a.place("y", Hemisphere::East, 4, 100).is_ok());
    }

    #[test]
    fn too_large_for_any_slice() {
        let mut a = Alloc::new(100, 320);
        let e = a.place("big", Hemisphere::East, 1, 101).unwrap_err();
        assert_eq!(e.room, 0);
        assert!(
            e.to_string().contains(
                "only 0 of its 44 slices have 101 words free (the most free in one is 100)"
            ),
            "{e}"
        );
    }
}
