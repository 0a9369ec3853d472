//! The queues' next issue cycles, in the order the engine and the static
//! walk take them: ascending cycle, and on one cycle ascending queue number.
//!
//! That is exactly the order of a `BinaryHeap<Reverse<(cycle, queue)>>`,
//! which both used before; this is a calendar instead (a bit set of queues
//! per cycle, in a ring of [`RING`] cycles from the earliest pending one),
//! because almost every queue's next issue is one cycle after its last and
//! the heap's pop was a tenth of a static walk. An entry outside the ring's
//! window (a long `nop` or `repeat`, a cycle before the window, or the same
//! `(cycle, queue)` twice) goes to a heap beside it, and [`IssueQueue::pop`]
//! takes the smaller of the two minima, so the order is the heap's for any
//! sequence of pushes (`tests` compares the two on random ones).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Cycles in the ring (a power of two).
const RING: usize = 1024;
/// Queue bits per cycle (64 each): room for every dense queue number.
const WORDS: usize = (q35_isa::QUEUE_COUNT as usize).div_ceil(64);

/// A min-queue of `(cycle, queue)` pairs (see the module doc).
#[derive(Debug, Clone)]
pub struct IssueQueue {
    /// Per cycle `c` (at `c % RING`) with `base <= c < base + RING`, the
    /// queues issuing on `c`.
    ring: Vec<[u64; WORDS]>,
    /// No entry of the ring lies before this cycle.
    base: u64,
    /// Entries in the ring.
    in_ring: usize,
    /// Entries outside the ring's window when pushed.
    far: BinaryHeap<Reverse<(u64, u16)>>,
}

impl Default for IssueQueue {
    fn default() -> Self {
        IssueQueue {
            ring: vec![[0; WORDS]; RING],
            base: 0,
            in_ring: 0,
            far: BinaryHeap::new(),
        }
    }
}

impl IssueQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds queue `queue` issuing on `cycle`.
    #[inline]
    pub fn push(&mut self, cycle: u64, queue: u16) {
        let q = usize::from(queue);
        if self.in_ring == 0 && cycle >= self.base {
            // An empty ring can start its window anywhere.
            self.base = cycle;
        }
        if cycle >= self.base && cycle - self.base < RING as u64 && q < WORDS * 64 {
            let slot = &mut self.ring[cycle as usize % RING][q / 64];
            let bit = 1u64 << (q % 64);
            if *slot & bit == 0 {
                *slot |= bit;
                self.in_ring += 1;
                return;
            }
        }
        self.far.push(Reverse((cycle, queue)));
    }

    /// The ring's first pending entry (moving `base` up to its cycle).
    #[inline]
    fn ring_min(&mut self) -> Option<(u64, u16)> {
        if self.in_ring == 0 {
            return None;
        }
        loop {
            let slot = &self.ring[self.base as usize % RING];
            for (w, &bits) in slot.iter().enumerate() {
                if bits != 0 {
                    return Some((self.base, (w * 64) as u16 + bits.trailing_zeros() as u16));
                }
            }
            self.base += 1;
        }
    }

    /// The earliest entry, without removing it.
    #[inline]
    pub fn peek(&mut self) -> Option<(u64, u16)> {
        let far = self.far.peek().map(|r| r.0);
        match (self.ring_min(), far) {
            (Some(r), Some(f)) => Some(r.min(f)),
            (r, f) => r.or(f),
        }
    }

    /// Removes and returns the earliest entry.
    #[inline]
    pub fn pop(&mut self) -> Option<(u64, u16)> {
        let far = self.far.peek().map(|r| r.0);
        match (self.ring_min(), far) {
            (Some(r), f) if f.is_none_or(|f| r < f) => {
                let q = usize::from(r.1);
                self.ring[r.0 as usize % RING][q / 64] &= !(1u64 << (q % 64));
                self.in_ring -= 1;
                Some(r)
            }
            (_, Some(_)) => self.far.pop().map(|r| r.0),
            (_, None) => None,
        }
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.in_ring == 0 && self.far.is_empty()
    }
}

/// Asks the CPU to bring the cache line at `p` in (a hint: no effect on
/// results, and `p` need not point at anything). The engine and the static
/// walk interleave ~120 queues' instruction lists, more streams than the
/// hardware prefetchers follow, so each queue's next instructions are
/// fetched a few lines ahead when it issues.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch never faults and reads nothing the program sees.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast())
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency for one test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn pops_in_the_order_of_a_binary_heap() {
        for seed in 0..200u64 {
            let mut rng = Lcg(seed);
            let mut cal = IssueQueue::new();
            let mut heap: BinaryHeap<Reverse<(u64, u16)>> = BinaryHeap::new();
            let mut now = 0u64;
            for _ in 0..2000 {
                let r = rng.next();
                if !r.is_multiple_of(3) {
                    // Mostly near now, sometimes far, sometimes before the
                    // window, sometimes the same pair twice.
                    let cycle = match r % 17 {
                        0 => now + 5000 + rng.next() % 9000,
                        1 => now.saturating_sub(rng.next() % 40),
                        2 => now + (rng.next() % 3) * 1024,
                        _ => now + rng.next() % 8,
                    };
                    let queue = (rng.next() % u64::from(q35_isa::QUEUE_COUNT)) as u16;
                    cal.push(cycle, queue);
                    heap.push(Reverse((cycle, queue)));
                } else {
                    assert_eq!(cal.peek(), heap.peek().map(|r| r.0), "seed {seed}");
                    let got = cal.pop();
                    assert_eq!(got, heap.pop().map(|r| r.0), "seed {seed}");
                    if let Some((c, _)) = got {
                        now = c;
                    }
                }
                assert_eq!(cal.is_empty(), heap.is_empty());
            }
            while let Some(r) = heap.pop() {
                assert_eq!(cal.pop(), Some(r.0), "seed {seed}");
            }
            assert_eq!(cal.pop(), None);
        }
    }
}
