//! The figures of a target that a static schedule depends on, resolved once
//! from a [`q35_target::Target`] (docs/isa.md, docs/mxm-timing.md): every
//! queue's position, every instruction's latency, MEM ports and banks, and
//! the MXM plane's load and reuse rules.

use q35_isa::{Dir, Instruction, QUEUE_COUNT, QueueId, QueueKind};
use q35_target::Target;

/// Cycle numbers of a schedule (signed: bundle-local times go below zero).
pub type Cycle = i64;

/// The machine model the scheduler uses.
#[derive(Clone, Debug)]
pub struct Mach {
    /// The target it was built from.
    pub target: Target,
    positions: Vec<u32>,
    /// Cycles a value takes to move one position.
    pub hop: Cycle,
    /// The VXM's position.
    pub vxm: u32,
    /// The last position (the east edge).
    pub edge: u32,
    /// MEM banks per slice.
    pub banks: u32,
    /// MEM read latency.
    pub read_latency: Cycle,
    /// MEM write latency (a write issued at `t` is visible to reads from
    /// `t + write_latency`; its port is used at `t + write_latency - 1`).
    pub write_latency: Cycle,
    /// Words per MEM slice.
    pub words_per_slice: u32,
    /// `(superlanes - 1) * skew`: added to the last event for the total.
    pub skew: Cycle,
    /// MXM rows, columns, PE block, hop, install rate, swap cycles.
    pub mxm_rows: u32,
    /// MXM columns.
    pub mxm_cols: u32,
    mxm_block: u32,
    mxm_hop: Cycle,
    mxm_rate: u32,
    /// Cycles an `iw` takes before vectors see the new weights.
    pub swap: Cycle,
}

impl Mach {
    /// Resolves `target`.
    pub fn new(target: &Target) -> Mach {
        let positions = QueueId::all()
            .map(|q| q.position(target).unwrap_or(0))
            .collect::<Vec<_>>();
        debug_assert_eq!(positions.len(), usize::from(QUEUE_COUNT));
        let edge = positions.iter().copied().max().unwrap_or(0);
        Mach {
            positions,
            hop: Cycle::from(target.streams.hop_cycles),
            vxm: target.vxm_position(),
            edge,
            banks: target.mem.banks_per_slice,
            read_latency: Cycle::from(target.mem.read_latency_cycles),
            write_latency: Cycle::from(target.mem.write_latency_cycles),
            words_per_slice: target.mem.words_per_slice,
            skew: Cycle::from(target.vector.superlanes.saturating_sub(1))
                * Cycle::from(target.vector.superlane_skew_cycles),
            mxm_rows: target.mxm.rows,
            mxm_cols: target.mxm.cols,
            mxm_block: target.mxm.pe_block,
            mxm_hop: Cycle::from(target.mxm.pe_hop_cycles),
            mxm_rate: target.mxm.install_rows_per_cycle,
            swap: Cycle::from(target.mxm.swap_cycles),
            target: target.clone(),
        }
    }

    /// The position of `queue`'s slice.
    pub fn position(&self, queue: QueueId) -> u32 {
        self.positions[usize::from(queue.index())]
    }

    /// Cycles from issue to result of `ins` on this target.
    pub fn latency(&self, ins: &Instruction) -> Cycle {
        Cycle::from(ins.latency(&self.target))
    }

    /// Cycles a value takes from position `from` to `to`.
    pub fn hops(&self, from: u32, to: u32) -> Cycle {
        Cycle::from(from.abs_diff(to)) * self.hop
    }

    /// The direction a value flows from `from` to reach `to` (`None` when
    /// they are the same position).
    pub fn dir(from: u32, to: u32) -> Option<Dir> {
        match from.cmp(&to) {
            std::cmp::Ordering::Less => Some(Dir::East),
            std::cmp::Ordering::Greater => Some(Dir::West),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// The queue of MXM plane `plane`.
    pub fn plane_queue(plane: u16) -> QueueId {
        QueueId::new(QueueKind::Mxm(plane)).expect("lpu-v1 has 4 planes")
    }

    /// The direction an MXM plane reads its inputs from (westward for the
    /// west planes at position 0), and the one its results flow in.
    pub fn plane_dirs(&self, plane: u16) -> (Dir, Dir) {
        if self.position(Self::plane_queue(plane)) < self.vxm {
            (Dir::West, Dir::East)
        } else {
            (Dir::East, Dir::West)
        }
    }

    /// Busy time of PE row `i`: the last vector through the array reads it
    /// until `t + (i + C/b - 1) * h` (docs/mxm-timing.md 2).
    fn block_row_busy(&self, i: u32) -> Cycle {
        Cycle::from(i + self.mxm_cols / self.mxm_block - 1) * self.mxm_hop
    }

    /// First write of PE row `i` by a load of `rows` rows, after its issue.
    fn first_write(&self, rows: u32, i: u32) -> Cycle {
        if (i + 1) * self.mxm_block <= rows {
            Cycle::from(i * self.mxm_block / self.mxm_rate)
        } else {
            0
        }
    }

    /// The reuse delay `d(n)`: a load of `rows` rows into the buffer last
    /// read by a vector issued at `t` is safe from `t + d(n)` on.
    pub fn reuse_delay(&self, rows: u32) -> Cycle {
        (0..self.mxm_rows / self.mxm_block)
            .map(|i| (self.block_row_busy(i) + 1 - self.first_write(rows, i)).max(0))
            .max()
            .unwrap_or(1)
    }
}
