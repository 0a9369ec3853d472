//! The machine parameters the simulator runs with, taken from a target
//! description (`targets/*.toml`) and checked against what the instruction
//! set fixes (queue counts, the 320-byte vector).
//!
//! Nothing else in the simulator holds a machine figure: positions,
//! latencies, MEM geometry and the MXM plane all come from here.

use q35_isa::queue::{MEM_SLICES_PER_HEMISPHERE, MXM_PLANES, VXM_QUEUES};
use q35_isa::{Hemisphere, LatencyClass, QUEUE_COUNT, QueueId, QueueKind, VECTOR_BYTES};

use crate::mxm::PlaneConfig;

/// MEM geometry and timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemConfig {
    /// Words per slice (`mem.words_per_slice`).
    pub words_per_slice: u32,
    /// Banks per slice (`mem.banks_per_slice`); bank = address mod banks.
    pub banks: u32,
    /// Reads per slice per cycle.
    pub read_ports: u32,
    /// Writes per slice per cycle.
    pub write_ports: u32,
    /// `read` issue to the vector on its stream.
    pub read_latency: u64,
    /// `write` issue to the word visible to reads.
    pub write_latency: u64,
}

/// Everything the simulator needs to know about the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    /// The description every figure below comes from.
    pub target: q35_target::Target,
    /// Target name (`lpu-v1`).
    pub target_name: String,
    /// SHA-256 of the target description (what a binary records).
    pub target_hash: [u8; 32],
    /// Superlanes (the skew added to a program's last cycle).
    pub superlanes: u64,
    /// Cycles an instruction takes to move one superlane south.
    pub superlane_skew: u64,
    /// Cycles a stream value takes to move one position.
    pub hop: u64,
    /// Positions on the east-west axis (`0 .. width`).
    pub width: u32,
    /// Position of each queue's slice, by dense queue number.
    pub positions: Vec<u32>,
    /// MEM.
    pub mem: MemConfig,
    /// `vxm.alu_latency`.
    pub vxm_alu_latency: u64,
    /// `vxm.convert_latency`.
    pub vxm_convert_latency: u64,
    /// `vxm.special_latency`.
    pub vxm_special_latency: u64,
    /// `sxm.shift_latency`.
    pub sxm_shift_latency: u64,
    /// `sxm.permute_latency`.
    pub sxm_permute_latency: u64,
    /// `sxm.transpose_latency`.
    pub sxm_transpose_latency: u64,
    /// `icu.notify_latency_cycles`.
    pub notify_latency: u64,
    /// One MXM plane.
    pub plane: PlaneConfig,
    /// `c2c.link_latency_cycles`: a `send` to its arrival at the neighbour.
    pub link_latency: u64,
    /// `Target::c2c_vector_cycles`: a link's outbound direction is busy
    /// this long per vector.
    pub link_vector_cycles: u64,
    /// `c2c.receive_latency_cycles`.
    pub receive_latency: u64,
    /// `c2c.receive_buffer_vectors`.
    pub receive_buffer: u32,
}

/// A target the simulator cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target `{target}`: {message}")]
pub struct ConfigError {
    /// Target name.
    pub target: String,
    /// What does not fit.
    pub message: String,
}

impl MachineConfig {
    /// The position of `queue`'s slice.
    pub fn position(&self, queue: QueueId) -> u32 {
        self.positions[usize::from(queue.index())]
    }

    /// The VXM's position.
    pub fn vxm_position(&self) -> u32 {
        self.positions[usize::from(2 * MEM_SLICES_PER_HEMISPHERE)]
    }

    /// The cycles from issue to result of an instruction of latency class
    /// `class` (0 for instructions without a result).
    pub fn latency(&self, class: LatencyClass) -> u64 {
        match class {
            LatencyClass::None => 0,
            LatencyClass::MemRead => self.mem.read_latency,
            LatencyClass::MemWrite => self.mem.write_latency,
            LatencyClass::VxmAlu => self.vxm_alu_latency,
            LatencyClass::VxmConvert => self.vxm_convert_latency,
            LatencyClass::VxmSpecial => self.vxm_special_latency,
            LatencyClass::SxmShift => self.sxm_shift_latency,
            LatencyClass::SxmPermute => self.sxm_permute_latency,
            LatencyClass::SxmTranspose => self.sxm_transpose_latency,
            // The MXM plane model's emit time, `(R + C - 1) * hop + 1`
            // (simulator/src/mxm): the plane is the authority on its timing.
            LatencyClass::MxmPass => self.plane.latency(),
            LatencyClass::MxmSwap => self.plane.swap_cycles,
            LatencyClass::IcuNotify => self.notify_latency,
            LatencyClass::C2cLink => self.link_latency,
            LatencyClass::C2cReceive => self.receive_latency,
        }
    }

    /// The longest latency of any instruction (how far ahead results go).
    pub fn max_latency(&self) -> u64 {
        // A link's latency puts nothing on a stream of this chip.
        q35_isa::INSTRUCTIONS
            .iter()
            .filter(|i| i.latency != LatencyClass::C2cLink)
            .map(|i| self.latency(i.latency))
            .max()
            .unwrap_or(0)
    }

    /// Checks what the simulator relies on: the ISA's queue counts and
    /// vector width, latencies of at least one cycle for every result.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            target: self.target_name.clone(),
            message,
        };
        if self.positions.len() != usize::from(QUEUE_COUNT) {
            return Err(err(format!(
                "{} queue positions, the instruction set has {QUEUE_COUNT} queues",
                self.positions.len()
            )));
        }
        if let Some(p) = self.positions.iter().find(|&&p| p >= self.width) {
            return Err(err(format!("position {p} outside 0..{}", self.width)));
        }
        if self.plane.rows != VECTOR_BYTES as usize || self.plane.cols != VECTOR_BYTES as usize {
            return Err(err(format!(
                "MXM plane {}x{}: the simulator needs {VECTOR_BYTES}x{VECTOR_BYTES} (one vector in, one out)",
                self.plane.rows, self.plane.cols
            )));
        }
        self.plane.validate().map_err(|e| err(e.to_string()))?;
        if self.hop == 0 || self.superlanes == 0 {
            return Err(err("hop_cycles and superlanes must be at least 1".into()));
        }
        if self.mem.banks == 0 || self.mem.banks > 64 {
            return Err(err(format!(
                "{} MEM banks: the simulator handles 1 ..= 64",
                self.mem.banks
            )));
        }
        if self.mem.read_ports == 0 || self.mem.write_ports == 0 {
            return Err(err("MEM needs at least one read and one write port".into()));
        }
        for info in &q35_isa::INSTRUCTIONS {
            if info.latency != LatencyClass::None && self.latency(info.latency) == 0 {
                return Err(err(format!(
                    "`{}` has latency 0 ({}): results must appear at least one cycle after issue",
                    info.mnemonic,
                    info.latency.parameter()
                )));
            }
        }
        Ok(())
    }
}

/// Queue counts the ISA fixes, for messages.
pub(crate) const ISA_COUNTS: (u16, u16, u16) =
    (2 * MEM_SLICES_PER_HEMISPHERE, VXM_QUEUES, MXM_PLANES);

/// The machine for the target description at `path`, or the built-in
/// `lpu-v1` when `path` is `None`.
pub fn load_target(path: Option<&std::path::Path>) -> Result<MachineConfig, TargetLoadError> {
    let target = match path {
        Some(p) => q35_target::Target::load(p)?,
        None => q35_target::Target::builtin("lpu-v1")?,
    };
    Ok(MachineConfig::from_target(&target)?)
}

/// A target file that does not load, or that the simulator cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TargetLoadError {
    /// The description does not parse or validate.
    #[error(transparent)]
    Target(#[from] q35_target::TargetError),
    /// It describes a machine the instruction set does not fit.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl MachineConfig {
    /// The machine `target` describes. Its queue counts must be the ones
    /// the instruction set numbers (88 MEM slices, 16 VXM ALUs, 4 MXM
    /// planes, 2 SXMs) and its vector 320 bytes.
    pub fn from_target(target: &q35_target::Target) -> Result<MachineConfig, ConfigError> {
        use q35_target::{Hemisphere as H, Slice};
        let err = |message: String| ConfigError {
            target: target.name.clone(),
            message,
        };
        let (mem, vxm, planes) = ISA_COUNTS;
        let want = [
            ("mem.slices", target.mem.slices, u32::from(mem)),
            (
                "vxm.alus_per_lane",
                target.vxm.alus_per_lane,
                u32::from(vxm),
            ),
            ("mxm.planes", target.mxm.planes, u32::from(planes)),
            ("sxm.units", target.sxm.units, 2),
            ("vector.lanes", target.vector.lanes, VECTOR_BYTES),
            ("mem.word_bytes", target.mem.word_bytes, VECTOR_BYTES),
            (
                "c2c.links_per_chip",
                target.c2c.links_per_chip,
                u32::from(q35_isa::C2C_LINKS),
            ),
        ];
        for (key, got, isa) in want {
            if got != isa {
                return Err(err(format!(
                    "`{key}` = {got}, but the instruction set has {isa}"
                )));
            }
        }
        let hemi = |h: Hemisphere| match h {
            Hemisphere::West => H::West,
            Hemisphere::East => H::East,
        };
        let mut positions = Vec::with_capacity(usize::from(QUEUE_COUNT));
        for q in QueueId::all() {
            let slice = match q.kind() {
                QueueKind::Mem { hemisphere, index } => {
                    Some(Slice::Mem(hemi(hemisphere), u32::from(index)))
                }
                QueueKind::Vxm(_) => None,
                QueueKind::Mxm(p) => target.mxm_plane_hemisphere(u32::from(p)).map(Slice::Mxm),
                QueueKind::Sxm(h) => Some(Slice::Sxm(hemi(h), 0)),
                QueueKind::C2c(_) => None,
            };
            let position = match (slice, q.kind()) {
                (None, QueueKind::C2c(_)) => target.c2c_position(),
                (None, _) => target.vxm_position(),
                (Some(s), _) => target
                    .position(s)
                    .ok_or_else(|| err(format!("the floor plan has no {s} for queue {q}")))?,
            };
            positions.push(position);
        }
        let u = u64::from;
        let config = MachineConfig {
            target: target.clone(),
            target_name: target.name.clone(),
            target_hash: target.hash().0,
            superlanes: u(target.vector.superlanes),
            superlane_skew: u(target.vector.superlane_skew_cycles),
            hop: u(target.streams.hop_cycles),
            width: target.floorplan_width(),
            positions,
            mem: MemConfig {
                words_per_slice: target.mem.words_per_slice,
                banks: target.mem.banks_per_slice,
                read_ports: target.mem.read_ports,
                write_ports: target.mem.write_ports,
                read_latency: u(target.mem.read_latency_cycles),
                write_latency: u(target.mem.write_latency_cycles),
            },
            vxm_alu_latency: u(target.vxm.alu_latency),
            vxm_convert_latency: u(target.vxm.convert_latency),
            vxm_special_latency: u(target.vxm.special_latency),
            sxm_shift_latency: u(target.sxm.shift_latency),
            sxm_permute_latency: u(target.sxm.permute_latency),
            sxm_transpose_latency: u(target.sxm.transpose_latency),
            notify_latency: u(target.icu.notify_latency_cycles),
            plane: PlaneConfig {
                rows: target.mxm.rows as usize,
                cols: target.mxm.cols as usize,
                install_rows_per_cycle: target.mxm.install_rows_per_cycle as usize,
                swap_cycles: u(target.mxm.swap_cycles),
                pe_block: target.mxm.pe_block as usize,
                pe_hop_cycles: u(target.mxm.pe_hop_cycles),
                acc_bits: target.mxm.acc_bits,
            },
            link_latency: u(target.c2c.link_latency_cycles),
            link_vector_cycles: target.c2c_vector_cycles(),
            receive_latency: u(target.c2c.receive_latency_cycles),
            receive_buffer: target.c2c.receive_buffer_vectors,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpu_v1_positions_are_the_docs_floor_plan() {
        // docs/isa.md 1: MXM W 0, SXM W 1, MEM W43..W0 2..45, VXM 46,
        // MEM E0..E43 47..90, SXM E 91, MXM E 92.
        let config = load_target(None).expect("lpu-v1 loads");
        let q = |s: &str| s.parse::<QueueId>().expect("queue name");
        for (name, pos) in [
            ("mxm.0", 0),
            ("mxm.1", 0),
            ("sxm.w", 1),
            ("mem.w43", 2),
            ("mem.w0", 45),
            ("vxm.0", 46),
            ("vxm.15", 46),
            ("mem.e0", 47),
            ("mem.e43", 90),
            ("sxm.e", 91),
            ("mxm.2", 92),
            ("mxm.3", 92),
            ("c2c.0", 46),
            ("c2c.15", 46),
        ] {
            assert_eq!(config.position(q(name)), pos, "{name}");
        }
        assert_eq!(config.width, 93);
        assert_eq!(config.vxm_position(), 46);
        // 20 x 20 processing elements of 16 x 16 MACs (docs/mxm-timing.md).
        assert_eq!(config.latency(LatencyClass::MxmPass), 40);
        assert_eq!(
            config.latency(LatencyClass::MxmPass),
            q35_target::Target::builtin("lpu-v1").unwrap().mxm_latency()
        );
        assert_eq!(
            config.target_hash,
            q35_target::Target::builtin("lpu-v1").unwrap().hash().0
        );
    }

    #[test]
    fn targets_the_isa_cannot_number_are_refused() {
        let mut t = q35_target::Target::builtin("lpu-v1").unwrap();
        t.vxm.alus_per_lane = 8;
        let e = MachineConfig::from_target(&t).unwrap_err();
        assert!(e.message.contains("vxm.alus_per_lane"), "{e}");
    }
}
