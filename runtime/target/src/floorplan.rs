//! Figures derived from a target's parameters: throughput, sizes, the
//! position of every functional slice along the east-west axis, the
//! instruction queues, MXM timing terms and link bandwidth. None of these is
//! a parameter, so they cannot disagree with the parameters.
//!
//! Positions: the chip is one row of functional slices (every superlane has
//! the same row). Position 0 is the westernmost slice and positions count
//! eastward by one per functional slice. The west hemisphere lists
//! [`crate::Floorplan::outward`] reversed, then comes the VXM, then the east
//! hemisphere lists it in order; so for lpu-v1 (outward = mem, sxm, mxm):
//!
//! ```text
//! position  0      1      2 .. 45          46    47 .. 90         91     92
//! slice     MXM W  SXM W0 MEM W43 .. W0    VXM   MEM E0 .. E43    SXM E0 MXM E
//!           planes 0,1                                                   planes 2,3
//! ```
//!
//! MEM slices and SXM units are numbered within their hemisphere from the
//! VXM outward (W0 and E0 touch the VXM). Each MXM position holds half the
//! planes: west the lower numbers. A vector moves one position per
//! `streams.hop_cycles`.

use std::fmt;
use std::ops::Range;

use crate::{Target, Unit};

/// West or east of the VXM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hemisphere {
    /// Positions below the VXM's.
    West,
    /// Positions above the VXM's.
    East,
}

impl Hemisphere {
    fn letter(self) -> char {
        match self {
            Hemisphere::West => 'W',
            Hemisphere::East => 'E',
        }
    }
}

/// One functional slice: what occupies one east-west position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slice {
    /// A hemisphere's matrix unit (planes [`Target::mxm_planes_of`]).
    Mxm(Hemisphere),
    /// A switch unit, numbered from the VXM outward within its hemisphere.
    Sxm(Hemisphere, u32),
    /// A memory slice, numbered from the VXM outward within its hemisphere.
    Mem(Hemisphere, u32),
    /// The vector unit, between the hemispheres.
    Vxm,
}

impl Slice {
    /// The kind of unit.
    pub fn unit(self) -> Unit {
        match self {
            Slice::Mxm(_) => Unit::Mxm,
            Slice::Sxm(..) => Unit::Sxm,
            Slice::Mem(..) => Unit::Mem,
            Slice::Vxm => Unit::Vxm,
        }
    }
}

impl fmt::Display for Slice {
    /// `MXM W`, `SXM W0`, `MEM W43`, `VXM`, `MEM E0`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slice::Mxm(h) => write!(f, "MXM {}", h.letter()),
            Slice::Sxm(h, i) => write!(f, "SXM {}{i}", h.letter()),
            Slice::Mem(h, i) => write!(f, "MEM {}{i}", h.letter()),
            Slice::Vxm => f.write_str("VXM"),
        }
    }
}

/// The instruction queues of the chip, by unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstructionQueues {
    /// One per MEM slice.
    pub mem: u32,
    /// One per VXM ALU of a lane (every lane runs the same instruction).
    pub vxm: u32,
    /// `mxm.queues_per_plane` per plane.
    pub mxm: u32,
    /// `sxm.queues_per_unit` per unit.
    pub sxm: u32,
    /// One per chip-to-chip link.
    pub c2c: u32,
}

impl InstructionQueues {
    /// All queues.
    pub fn total(&self) -> u32 {
        self.mem + self.vxm + self.mxm + self.sxm + self.c2c
    }
}

impl Target {
    /// Length of one cycle in nanoseconds.
    pub fn cycle_ns(&self) -> f64 {
        1000.0 / self.clock_mhz
    }

    /// int8 multiply-accumulates per cycle, all planes.
    pub fn macs_per_cycle(&self) -> u64 {
        u64::from(self.mxm.rows) * u64::from(self.mxm.cols) * u64::from(self.mxm.planes)
    }

    /// Peak int8 multiply-accumulates per second.
    pub fn peak_macs_per_second(&self) -> f64 {
        self.macs_per_cycle() as f64 * self.clock_mhz * 1e6
    }

    /// Peak int8 operations per second (a MAC is two operations).
    pub fn peak_int8_ops_per_second(&self) -> f64 {
        2.0 * self.peak_macs_per_second()
    }

    /// VXM ALUs on the chip (`vector.lanes x vxm.alus_per_lane`).
    pub fn vxm_alus(&self) -> u32 {
        self.vector.lanes * self.vxm.alus_per_lane
    }

    /// Bytes of one MEM slice.
    pub fn mem_slice_bytes(&self) -> u64 {
        u64::from(self.mem.words_per_slice) * u64::from(self.mem.word_bytes)
    }

    /// Total MEM bytes, from the slice geometry (validated equal to `mem.bytes`).
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem.slices) * self.mem_slice_bytes()
    }

    /// MEM slices in one hemisphere.
    pub fn mem_slices_per_hemisphere(&self) -> u32 {
        self.mem.slices / 2
    }

    /// MXM planes of a hemisphere: west the lower half of the numbers.
    pub fn mxm_planes_of(&self, hemisphere: Hemisphere) -> Range<u32> {
        let half = self.mxm.planes / 2;
        match hemisphere {
            Hemisphere::West => 0..half,
            Hemisphere::East => half..self.mxm.planes,
        }
    }

    /// The hemisphere holding MXM plane `plane`, if the plane exists.
    pub fn mxm_plane_hemisphere(&self, plane: u32) -> Option<Hemisphere> {
        [Hemisphere::West, Hemisphere::East]
            .into_iter()
            .find(|&h| self.mxm_planes_of(h).contains(&plane))
    }

    /// Cycles to install a full plane of weights from streams:
    /// `ceil(rows / install_rows_per_cycle)`.
    pub fn mxm_plane_install_cycles(&self) -> u32 {
        self.mxm.rows.div_ceil(self.mxm.install_rows_per_cycle)
    }

    /// Cycles to skew a [1xK] activation vector across the array's block
    /// rows: `(rows / pe_block - 1) x pe_hop_cycles` (SCALE-Sim's fill term,
    /// counted in processing elements).
    pub fn mxm_fill_cycles(&self) -> u64 {
        u64::from(self.mxm.rows / self.mxm.pe_block - 1) * u64::from(self.mxm.pe_hop_cycles)
    }

    /// Cycles to drain the last block column's results out of the array:
    /// `(cols / pe_block - 1) x pe_hop_cycles` (SCALE-Sim's drain term).
    pub fn mxm_drain_cycles(&self) -> u64 {
        u64::from(self.mxm.cols / self.mxm.pe_block - 1) * u64::from(self.mxm.pe_hop_cycles)
    }

    /// Cycles from an `mm` issue to its int32 result vector leaving the
    /// plane: `(rows / pe_block + cols / pe_block - 1) x pe_hop_cycles + 1`
    /// (docs/mxm-timing.md; 40 on lpu-v1).
    pub fn mxm_latency(&self) -> u64 {
        self.mxm_fill_cycles() + self.mxm_drain_cycles() + u64::from(self.mxm.pe_hop_cycles) + 1
    }

    /// The largest |sum| the MXM accumulator holds: `2^(acc_bits - 1) - 1`.
    pub fn acc_max(&self) -> u64 {
        (1u64 << (self.mxm.acc_bits - 1)) - 1
    }

    /// Every functional slice, west to east: index = east-west position.
    pub fn floorplan(&self) -> Vec<Slice> {
        let mut east = Vec::new();
        for unit in &self.floorplan.outward {
            match unit {
                Unit::Mem => east.extend(
                    (0..self.mem_slices_per_hemisphere()).map(|i| Slice::Mem(Hemisphere::East, i)),
                ),
                Unit::Sxm => {
                    east.extend((0..self.sxm.units / 2).map(|i| Slice::Sxm(Hemisphere::East, i)))
                }
                Unit::Mxm => east.push(Slice::Mxm(Hemisphere::East)),
                // Validation keeps the VXM out of `outward`: it is the centre.
                Unit::Vxm => {}
            }
        }
        let west = east.iter().rev().map(|s| match *s {
            Slice::Mxm(_) => Slice::Mxm(Hemisphere::West),
            Slice::Sxm(_, i) => Slice::Sxm(Hemisphere::West, i),
            Slice::Mem(_, i) => Slice::Mem(Hemisphere::West, i),
            Slice::Vxm => Slice::Vxm,
        });
        let mut all: Vec<Slice> = west.collect();
        all.push(Slice::Vxm);
        all.extend(east);
        all
    }

    /// The east-west position of `slice`, if the target has it.
    pub fn position(&self, slice: Slice) -> Option<u32> {
        let i = self.floorplan().iter().position(|&s| s == slice)?;
        u32::try_from(i).ok()
    }

    /// The position of the VXM (the centre).
    pub fn vxm_position(&self) -> u32 {
        (self.floorplan_width() - 1) / 2
    }

    /// Number of east-west positions.
    pub fn floorplan_width(&self) -> u32 {
        2 * (self.mem_slices_per_hemisphere() + self.sxm.units / 2 + 1) + 1
    }

    /// Cycles for a vector to travel between two positions on a stream.
    pub fn hop_cycles(&self, from: u32, to: u32) -> u64 {
        u64::from(from.abs_diff(to)) * u64::from(self.streams.hop_cycles)
    }

    /// The chip's instruction queues by unit.
    pub fn instruction_queues(&self) -> InstructionQueues {
        InstructionQueues {
            mem: self.mem.slices,
            vxm: self.vxm.alus_per_lane,
            mxm: self.mxm.planes * self.mxm.queues_per_plane,
            sxm: self.sxm.units * self.sxm.queues_per_unit,
            c2c: self.c2c.links_per_chip,
        }
    }

    /// Bytes per second one chip-to-chip link carries in one direction.
    pub fn c2c_link_bytes_per_second(&self) -> f64 {
        f64::from(self.c2c.lanes_per_link) * self.c2c.gbps_per_lane * 1e9 / 8.0
    }

    /// Bytes one link carries per cycle in one direction
    /// (`c2c_link_bytes_per_second / clock`; 16.7 on lpu-v1).
    pub fn c2c_link_bytes_per_cycle(&self) -> f64 {
        self.c2c_link_bytes_per_second() / (self.clock_mhz * 1e6)
    }

    /// Cycles a link takes to carry one vector (`vector.lanes` bytes) in
    /// one direction: `ceil(lanes / c2c_link_bytes_per_cycle)`, 20 on lpu-v1
    /// (19.2 rounded up). A second `send` on the link sooner is an overrun.
    pub fn c2c_vector_cycles(&self) -> u64 {
        let exact = f64::from(self.vector.lanes) / self.c2c_link_bytes_per_cycle();
        // An exact quotient computed a hair above an integer stays that integer.
        let nearest = exact.round();
        let cycles = if (exact - nearest).abs() <= 1e-9 * nearest {
            nearest
        } else {
            exact.ceil()
        };
        if cycles.is_finite() && cycles >= 1.0 {
            cycles as u64
        } else {
            1
        }
    }

    /// The east-west position where the chip-to-chip ports read and write
    /// streams: the VXM's (the centre; ASSUMED, docs/isa.md 3).
    pub fn c2c_position(&self) -> u32 {
        self.vxm_position()
    }

    /// Chips in a rack.
    pub fn chips_per_rack(&self) -> u32 {
        self.c2c.chips_per_node * self.c2c.nodes_per_rack
    }
}
