//! The architectural state of the chip between events: MEM slices (words
//! as byte arrays), the MXM planes (the fast plane model of
//! [`crate::mxm`]), the tables SXM `permute` reads, and each MEM slice's
//! port and bank use per cycle. Values in flight are in [`crate::streams`].
//!
//! State holds no timing rules and no instruction semantics: `exec` reads
//! and writes it, `engine` decides when.

use std::collections::VecDeque;

use crate::mxm::{FastPlane, MxmError, PlaneConfig};
use crate::streams::{LANES, Vector};

/// One MEM slice: `words` words of 320 bytes.
#[derive(Debug, Clone)]
pub struct MemSlice {
    /// `words * 320` bytes, word after word. Allocated zeroed, so pages the
    /// program never touches cost no memory.
    bytes: Vec<u8>,
    words: u32,
}

impl MemSlice {
    /// A zeroed slice of `words` words.
    pub fn new(words: u32) -> MemSlice {
        MemSlice {
            bytes: vec![0; words as usize * LANES],
            words,
        }
    }

    /// The slice's bytes, word after word.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Words in the slice.
    pub fn words(&self) -> u32 {
        self.words
    }

    /// Word `addr` (in range: the caller checked).
    pub fn word(&self, addr: u32) -> &Vector {
        let at = addr as usize * LANES;
        self.bytes[at..at + LANES]
            .try_into()
            .expect("a word is LANES bytes")
    }

    /// Word `addr`, mutable.
    pub fn word_mut(&mut self, addr: u32) -> &mut Vector {
        let at = addr as usize * LANES;
        (&mut self.bytes[at..at + LANES])
            .try_into()
            .expect("a word is LANES bytes")
    }

    /// Words `first ..` as one byte slice (`bytes.len()` a multiple of 320,
    /// in range: the caller checked).
    pub fn fill(&mut self, first: u32, bytes: &[u8]) {
        let at = first as usize * LANES;
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// Port and bank use of one MEM slice on one cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortUse {
    /// The cycle.
    pub cycle: u64,
    /// Reads on it.
    pub reads: u32,
    /// Writes on it.
    pub writes: u32,
    /// Banks touched (bit `b` = bank `b`).
    pub banks: u64,
}

/// Port use of one slice on the cycles still to come (accesses are
/// booked at most `write_latency` cycles ahead, so the list is short).
#[derive(Debug, Clone, Default)]
pub struct Ports {
    booked: VecDeque<PortUse>,
}

/// Why an access cannot have the port it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortConflict {
    /// More reads than read ports.
    Reads(u32),
    /// More writes than write ports.
    Writes(u32),
    /// A bank already accessed on that cycle.
    Bank(u32),
}

impl Ports {
    /// Books an access on `cycle` (no earlier than any cycle already
    /// dropped by [`Ports::forget_before`]).
    pub fn book(
        &mut self,
        cycle: u64,
        read: bool,
        banks: u64,
        read_ports: u32,
        write_ports: u32,
    ) -> Result<(), PortConflict> {
        let i = match self.booked.iter().position(|u| u.cycle == cycle) {
            Some(i) => i,
            None => {
                let at = self.booked.partition_point(|u| u.cycle < cycle);
                self.booked.insert(
                    at,
                    PortUse {
                        cycle,
                        ..PortUse::default()
                    },
                );
                at
            }
        };
        let u = &mut self.booked[i];
        if read && u.reads + 1 > read_ports {
            return Err(PortConflict::Reads(u.reads + 1));
        }
        if !read && u.writes + 1 > write_ports {
            return Err(PortConflict::Writes(u.writes + 1));
        }
        if u.banks & banks != 0 {
            return Err(PortConflict::Bank((u.banks & banks).trailing_zeros()));
        }
        u.banks |= banks;
        if read {
            u.reads += 1;
        } else {
            u.writes += 1;
        }
        Ok(())
    }

    /// Drops bookings of cycles before `cycle`.
    pub fn forget_before(&mut self, cycle: u64) {
        while self.booked.front().is_some_and(|u| u.cycle < cycle) {
            self.booked.pop_front();
        }
    }
}

/// One MXM plane: the fast model plus the size of the `lw` reading its
/// rows from streams (into the model's shadow buffer).
#[derive(Debug, Clone)]
pub struct Plane {
    /// The plane model (weights, accumulators, its own timing hazards).
    pub model: FastPlane,
    /// Rows the running `lw` loads.
    pub load_rows: usize,
}

impl Plane {
    /// A plane with zero weights.
    pub fn new(config: PlaneConfig) -> Result<Plane, MxmError> {
        Ok(Plane {
            model: FastPlane::new(config)?,
            load_rows: 0,
        })
    }
}

/// The chip's state.
#[derive(Debug, Clone)]
pub struct State {
    /// MEM slices by dense queue number of their queue (`mem.w43` = 0 ..).
    pub mem: Vec<MemSlice>,
    /// Port bookings per MEM slice.
    pub ports: Vec<Ports>,
    /// MXM planes `0 .. 4`.
    pub planes: Vec<Plane>,
    /// Tables by id: `u16` values (SXM `permute` maps), each with its lane
    /// map.
    pub tables: Vec<crate::exec::PermuteTable>,
    /// The chip's ends of its chip-to-chip links ([`crate::link`]).
    pub links: crate::link::Links,
}
