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
        }
    }

    /// The longest latency of any instruction (how far ahead results go).
    pub fn max_latency(&self) -> u64 {
        q35_isa::INSTRUCTIONS
            .iter()
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

    /// Positions of the 110 queues for the floor plan of docs/isa.md 1:
    /// `MXM W, SXM W, MEM W43..W0, VXM, MEM E0..E43, SXM E, MXM E`.
    pub fn isa_positions() -> Vec<u32> {
        let n = u32::from(MEM_SLICES_PER_HEMISPHERE);
        let vxm = 2 + n;
        QueueId::all()
            .map(|q| match q.kind() {
                QueueKind::Mem {
                    hemisphere: Hemisphere::West,
                    index,
                } => vxm - 1 - u32::from(index),
                QueueKind::Mem {
                    hemisphere: Hemisphere::East,
                    index,
                } => vxm + 1 + u32::from(index),
                QueueKind::Vxm(_) => vxm,
                QueueKind::Mxm(p) if p < MXM_PLANES / 2 => 0,
                QueueKind::Mxm(_) => 2 * vxm,
                QueueKind::Sxm(Hemisphere::West) => 1,
                QueueKind::Sxm(Hemisphere::East) => 2 * vxm - 1,
            })
            .collect()
    }
}

/// Queue counts the ISA fixes, for messages.
pub(crate) const ISA_COUNTS: (u16, u16, u16) =
    (2 * MEM_SLICES_PER_HEMISPHERE, VXM_QUEUES, MXM_PLANES);

/// The machine for the target description at `path`, or the built-in
/// `lpu-v1` when `path` is `None`.
pub fn load_target(path: Option<&std::path::Path>) -> Result<MachineConfig, ConfigError> {
    if let Some(p) = path {
        return Err(ConfigError {
            target: p.display().to_string(),
            message: "target files are read once q35-target is merged".into(),
        });
    }
    // INTERIM (until q35-target lands): lpu-v1's figures from
    // targets/lpu-v1.toml, hash all zero.
    let config = MachineConfig {
        target_name: "lpu-v1".into(),
        target_hash: [0; 32],
        superlanes: 20,
        superlane_skew: 1,
        hop: 1,
        width: 93,
        positions: MachineConfig::isa_positions(),
        mem: MemConfig {
            words_per_slice: 8192,
            banks: 2,
            read_ports: 1,
            write_ports: 1,
            read_latency: 1,
            write_latency: 1,
        },
        vxm_alu_latency: 4,
        vxm_convert_latency: 4,
        vxm_special_latency: 16,
        sxm_shift_latency: 2,
        sxm_permute_latency: 20,
        sxm_transpose_latency: 16,
        notify_latency: 4,
        plane: PlaneConfig::LPU_V1,
    };
    config.validate()?;
    Ok(config)
}
