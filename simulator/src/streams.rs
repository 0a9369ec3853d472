//! Values in flight on the stream registers (docs/isa.md 1, "Flow").
//!
//! A value written on stream `s`, direction `d`, at position `p` on cycle
//! `t` is at position `p + k` (east) or `p - k` (west) during cycles
//! `[t + k*hop, t + (k+1)*hop)` until it leaves the chip. Every value on one
//! stream register therefore moves on a fixed line in (position, cycle)
//! space, and the whole line is named by one number, its **virtual time**:
//!
//! - east: `v = t - p*hop`, the cycle the value would have been at position
//!   0; it is at position `x` during `[v + x*hop, v + (x+1)*hop)`;
//! - west: `v = t + p*hop`, the cycle it reaches position 0; it is at
//!   position `x` during `[v - x*hop, v - x*hop + hop)`.
//!
//! Two values of one register meet somewhere on the chip iff their virtual
//! times differ by less than `hop` (they move in lockstep, and both run to
//! the same edge), so a register holds at most one value per `hop`-wide
//! window of virtual times. Each register keeps a ring of slots indexed by
//! `v mod RING`, and:
//!
//! - **lookup** of the value at (position, cycle) is `hop` slot probes
//!   (one on lpu-v1): O(1), no scan of what is in flight;
//! - the **collision check** when a value is written probes the `2*hop - 1`
//!   virtual times around its own (a value already there, from upstream or
//!   written on the same cycle, meets it);
//! - **garbage collection**: a calendar of exit cycles (one bucket per cycle
//!   of the ring's span, O(1) to add, each value visited once) frees the
//!   value's bytes (a slab slot) once it has left the chip, and records
//!   whether it was ever read (a never-read value ends the program only when
//!   it has left the chip; docs/isa.md 2).
//!
//! `RING` exceeds the span of live virtual times (chip width times hop
//! plus the longest latency ahead), so a slot whose stored virtual time is
//! not the one asked for holds a dead value: it reads as empty and may be
//! overwritten.

use q35_isa::{Dir, STREAMS_PER_DIRECTION, Stream};

/// Bytes of one stream register (one vector).
pub const LANES: usize = q35_isa::VECTOR_BYTES as usize;

/// One vector's bytes.
pub type Vector = [u8; LANES];

/// Who wrote a value: queue index and instruction index (for hazard
/// messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    /// Dense queue number.
    pub queue: u16,
    /// Instruction index in that queue.
    pub index: u32,
}

/// One ring slot: a value's line and where its bytes are.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Virtual time, or `i64::MIN` for never used.
    v: i64,
    /// Slab index of the bytes.
    data: u32,
    /// The position it was written at.
    origin: u32,
    /// Who wrote it.
    writer: Writer,
}

const EMPTY: Slot = Slot {
    v: i64::MIN,
    data: 0,
    origin: 0,
    writer: Writer { queue: 0, index: 0 },
};

/// A value already on the register that a new write meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collision {
    /// The position where the two values first share the register.
    pub position: u32,
    /// The cycle they first share it.
    pub cycle: u64,
    /// Who wrote the value that was there.
    pub other: Writer,
}

/// The stream registers of the chip and every value in flight on them.
#[derive(Debug)]
pub struct Streams {
    hop: i64,
    /// Positions on the chip (`0 .. width`).
    width: i64,
    ring_mask: i64,
    /// `2 * STREAMS_PER_DIRECTION` rings of `ring_mask + 1` slots.
    rings: Vec<Slot>,
    /// Value bytes; freed slots are reused.
    slab: Vec<Vector>,
    /// Per slab slot: whether any instruction read it.
    was_read: Vec<bool>,
    free: Vec<u32>,
    /// (exit cycle, ring index, virtual time) of every live value, in the
    /// bucket of its exit cycle mod the ring length (every exit lies less
    /// than a ring length after the cycle its value was written on).
    exits: Vec<Vec<(u64, u32, i64)>>,
    /// Every exit at or before this cycle has been collected.
    collected: u64,
    /// Values in flight.
    live: usize,
    /// The last cycle a never-read value was on the chip, over every value
    /// collected so far.
    unread_until: u64,
}

/// Index of register (stream, direction) among the rings.
fn reg(s: Stream) -> usize {
    let d = match s.dir {
        Dir::East => 0,
        Dir::West => 1,
    };
    d * usize::from(STREAMS_PER_DIRECTION) + usize::from(s.id)
}

impl Streams {
    /// Empty registers for a chip of `width` positions, values moving one
    /// position per `hop` cycles, no result further ahead than
    /// `max_latency` cycles.
    pub fn new(width: u32, hop: u64, max_latency: u64) -> Streams {
        let span = (u64::from(width) + 2) * hop + max_latency + 2 * hop + 1;
        let ring = span.next_power_of_two().max(64) as usize;
        Streams {
            hop: hop as i64,
            width: i64::from(width),
            ring_mask: ring as i64 - 1,
            rings: vec![EMPTY; 2 * usize::from(STREAMS_PER_DIRECTION) * ring],
            slab: Vec::new(),
            was_read: Vec::new(),
            free: Vec::new(),
            exits: vec![Vec::new(); ring],
            collected: 0,
            live: 0,
            unread_until: 0,
        }
    }

    fn ring_len(&self) -> usize {
        (self.ring_mask + 1) as usize
    }

    fn slot_index(&self, register: usize, v: i64) -> usize {
        register * self.ring_len() + (v & self.ring_mask) as usize
    }

    /// Virtual time of a value at `position` on `cycle` (the line through it).
    fn virtual_time(&self, dir: Dir, position: u32, cycle: u64) -> i64 {
        let p = i64::from(position) * self.hop;
        match dir {
            Dir::East => cycle as i64 - p,
            Dir::West => cycle as i64 + p,
        }
    }

    /// The slot (if live) of the value on `s` at `position` on `cycle`.
    fn find(&self, s: Stream, position: u32, cycle: u64) -> Option<&Slot> {
        let register = reg(s);
        let base = self.virtual_time(s.dir, position, cycle);
        // Present iff v is in (base - hop, base], both directions: east, at
        // x during [v + x*hop, v + x*hop + hop) with base = cycle - x*hop;
        // west, during [v - x*hop, v - x*hop + hop) with base = cycle + x*hop.
        for k in 0..self.hop {
            let v = base - k;
            let slot = &self.rings[self.slot_index(register, v)];
            if slot.v == v && self.covers(slot, s.dir, position) {
                return Some(slot);
            }
        }
        None
    }

    /// Whether a value's path (from its origin to the edge) includes `position`.
    fn covers(&self, slot: &Slot, dir: Dir, position: u32) -> bool {
        match dir {
            Dir::East => position >= slot.origin,
            Dir::West => position <= slot.origin,
        }
    }

    /// The bytes on `s` at `position` on `cycle`, marking the value read.
    pub fn read(&mut self, s: Stream, position: u32, cycle: u64) -> Option<&Vector> {
        let data = self.find(s, position, cycle)?.data as usize;
        self.was_read[data] = true;
        Some(&self.slab[data])
    }

    /// The slab slot of the value on `s` at `position` on `cycle`, marking
    /// it read ([`Streams::slab`] has its bytes).
    pub fn read_slot(&mut self, s: Stream, position: u32, cycle: u64) -> Option<u32> {
        let data = self.find(s, position, cycle)?.data;
        self.was_read[data as usize] = true;
        Some(data)
    }

    /// The bytes in slab slot `data`.
    pub fn slab(&self, data: u32) -> &Vector {
        &self.slab[data as usize]
    }

    /// Slab slots allocated so far (the most values ever in flight at once).
    pub fn slab_len(&self) -> usize {
        self.slab.len()
    }

    /// Whether a value is on `s` at `position` on `cycle` (no side effect).
    pub fn is_present(&self, s: Stream, position: u32, cycle: u64) -> bool {
        self.find(s, position, cycle).is_some()
    }

    /// The cycle the next value passes `position` on `s` at or after
    /// `cycle`, looking at most one ring ahead (for hazard messages).
    pub fn next_arrival(&self, s: Stream, position: u32, cycle: u64) -> Option<u64> {
        (1..self.ring_len() as u64)
            .map(|d| cycle + d)
            .find(|&c| self.is_present(s, position, c))
    }

    /// A free slab slot for a new value's bytes (to be filled, then passed
    /// to [`Streams::write`]).
    pub fn alloc(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            self.was_read[i as usize] = false;
            return i;
        }
        self.slab.push([0; LANES]);
        self.was_read.push(false);
        (self.slab.len() - 1) as u32
    }

    /// The bytes of slab slot `data` (filled before [`Streams::write`]).
    pub fn bytes_mut(&mut self, data: u32) -> &mut Vector {
        &mut self.slab[data as usize]
    }

    /// Puts the value in slab slot `data` on `s` at `position` on `cycle`.
    /// Returns the value it meets, if any (the new value is then dropped
    /// and its slot freed: the run stops at the hazard).
    pub fn write(
        &mut self,
        s: Stream,
        position: u32,
        cycle: u64,
        data: u32,
        writer: Writer,
    ) -> Result<(), Collision> {
        let register = reg(s);
        let v = self.virtual_time(s.dir, position, cycle);
        for d in -(self.hop - 1)..self.hop {
            let slot = self.rings[self.slot_index(register, v + d)];
            if slot.v != v + d {
                continue;
            }
            // The two lines share the register from the downstream one of
            // the two origins on.
            let meet = match s.dir {
                Dir::East => slot.origin.max(position),
                Dir::West => slot.origin.min(position),
            };
            let p = i64::from(meet) * self.hop;
            let (a, b) = match s.dir {
                Dir::East => (slot.v + p, v + p),
                Dir::West => (slot.v - p, v - p),
            };
            self.free.push(data);
            return Err(Collision {
                position: meet,
                cycle: a.max(b) as u64,
                other: slot.writer,
            });
        }
        let exit = match s.dir {
            // Past the last position: at `width` on cycle v + width*hop.
            Dir::East => v + self.width * self.hop,
            // Past position 0: v + hop.
            Dir::West => v + self.hop,
        };
        let i = self.slot_index(register, v);
        self.rings[i] = Slot {
            v,
            data,
            origin: position,
            writer,
        };
        let exit = exit.max(0) as u64;
        let bucket = (exit & self.ring_mask as u64) as usize;
        self.exits[bucket].push((exit, register as u32, v));
        self.live += 1;
        Ok(())
    }

    /// Frees every value that has left the chip by `cycle`.
    pub fn collect(&mut self, cycle: u64) {
        if cycle <= self.collected {
            return;
        }
        let ring = self.ring_len() as u64;
        // One pass over at most one ring length of buckets; an entry whose
        // exit is still ahead stays (possible only after a long jump).
        let first = self.collected + 1;
        let last = cycle.min(self.collected + ring);
        for c in first..=last {
            let bucket = (c & self.ring_mask as u64) as usize;
            let mut entries = std::mem::take(&mut self.exits[bucket]);
            entries.retain(|&(exit, register, v)| {
                if exit > cycle {
                    return true;
                }
                self.free_value(register, v, exit);
                false
            });
            self.exits[bucket] = entries;
        }
        self.collected = cycle;
    }

    fn free_value(&mut self, register: u32, v: i64, exit: u64) {
        self.live -= 1;
        let i = self.slot_index(register as usize, v);
        let slot = self.rings[i];
        if slot.v == v {
            self.rings[i] = EMPTY;
            if !self.was_read[slot.data as usize] {
                // On the chip until the cycle before it left.
                self.unread_until = self.unread_until.max(exit.saturating_sub(1));
            }
            self.free.push(slot.data);
        }
    }

    /// Frees everything and returns the last cycle a never-read value was
    /// on the chip (0 if there was none).
    pub fn drain(&mut self) -> u64 {
        let mut buckets = std::mem::take(&mut self.exits);
        for bucket in &mut buckets {
            for (exit, register, v) in bucket.drain(..) {
                self.free_value(register, v, exit);
            }
        }
        self.exits = buckets;
        self.unread_until
    }

    /// Values in flight (written and not yet collected).
    pub fn in_flight(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Writer = Writer { queue: 0, index: 0 };

    fn put(st: &mut Streams, s: Stream, p: u32, t: u64, byte: u8) -> Result<(), Collision> {
        let d = st.alloc();
        st.bytes_mut(d).fill(byte);
        st.write(s, p, t, d, W)
    }

    #[test]
    fn east_value_moves_one_position_per_hop() {
        let mut st = Streams::new(93, 1, 640);
        let s = Stream::east(3);
        put(&mut st, s, 47, 10, 7).unwrap();
        assert!(st.is_present(s, 47, 10));
        assert!(!st.is_present(s, 47, 11));
        assert!(!st.is_present(s, 46, 9), "upstream of its origin");
        assert_eq!(st.read(s, 50, 13).map(|v| v[0]), Some(7));
        assert!(st.is_present(s, 92, 55));
        assert_eq!(st.next_arrival(s, 60, 0), Some(23));
        st.collect(55);
        assert!(st.is_present(s, 92, 55), "still on the chip at 92");
        st.collect(56);
        assert_eq!(st.in_flight(), 0);
        assert_eq!(st.drain(), 0, "it was read");
    }

    #[test]
    fn west_value_and_hop_two() {
        let mut st = Streams::new(93, 2, 16);
        let s = Stream::west(0);
        put(&mut st, s, 47, 100, 1).unwrap();
        // At 46 during [102, 104), at 45 during [104, 106).
        assert!(st.is_present(s, 47, 101));
        assert!(st.is_present(s, 46, 102) && st.is_present(s, 46, 103));
        assert!(!st.is_present(s, 46, 104));
        assert!(st.is_present(s, 45, 104));
        // Leaves past 0 at 100 + 47*2 + 2; never read: on the chip until 195.
        assert_eq!(st.drain(), 195);
    }

    #[test]
    fn collisions_from_upstream_and_same_cycle() {
        let mut st = Streams::new(93, 1, 640);
        let s = Stream::east(5);
        put(&mut st, s, 10, 0, 1).unwrap();
        // The first value is at 20 on cycle 10.
        let c = put(&mut st, s, 20, 10, 2).unwrap_err();
        assert_eq!((c.position, c.cycle), (20, 10));
        // Written downstream earlier in program order but later in time:
        // the meeting point is the downstream origin.
        let mut st = Streams::new(93, 1, 640);
        put(&mut st, s, 30, 30, 1).unwrap();
        let c = put(&mut st, s, 10, 10, 2).unwrap_err();
        assert_eq!((c.position, c.cycle), (30, 30));
        // Same line, other stream or other direction: no collision.
        put(&mut st, Stream::east(6), 10, 10, 3).unwrap();
        put(&mut st, Stream::west(5), 10, 10, 3).unwrap();
        // One cycle apart: no collision at hop 1.
        put(&mut st, s, 10, 11, 4).unwrap();
    }

    #[test]
    fn ring_reuse_after_collection() {
        let mut st = Streams::new(93, 1, 8);
        let s = Stream::east(0);
        for t in 0..5000u64 {
            st.collect(t);
            put(&mut st, s, 2, t, t as u8).unwrap();
            assert_eq!(st.read(s, 2, t).map(|v| v[0]), Some(t as u8));
        }
        assert!(st.slab.len() < 200, "slots are reused: {}", st.slab.len());
    }
}
