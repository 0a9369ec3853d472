//! The ISA against a target description (`q35_target::Target`): the one
//! place that resolves a [`LatencyClass`] to the `targets/*.toml` parameter
//! it names ([`cycles`]), places queues on the floor plan
//! ([`QueueId::position`]), checks that a target has the shape the encoding
//! fixes ([`check_target`]) and that a program fits a target's sizes
//! ([`Program::validate_target`]).

use q35_target::{Slice, Target};

use crate::info::LatencyClass;
use crate::operand::{Operand, OperandKind, STREAMS_PER_DIRECTION, VECTOR_BYTES};
use crate::program::{Program, ProgramError};
use crate::queue::{
    C2C_LINKS, Hemisphere, MEM_SLICES_PER_HEMISPHERE, MXM_PLANES, QueueId, QueueKind, VXM_QUEUES,
};
use crate::table::Instruction;

/// Cycles from issue until the result of an instruction of class `class` is
/// on its output stream at the slice's position (for `write`/`scatter`:
/// until reads see it; for `iw`: until the new weights are active; for
/// `notify`: until parked queues issue). 0 for [`LatencyClass::None`].
pub fn cycles(class: LatencyClass, target: &Target) -> u32 {
    match class {
        LatencyClass::None => 0,
        LatencyClass::MemRead => target.mem.read_latency_cycles,
        LatencyClass::MemWrite => target.mem.write_latency_cycles,
        LatencyClass::VxmAlu => target.vxm.alu_latency,
        LatencyClass::VxmConvert => target.vxm.convert_latency,
        LatencyClass::VxmSpecial => target.vxm.special_latency,
        LatencyClass::SxmShift => target.sxm.shift_latency,
        LatencyClass::SxmPermute => target.sxm.permute_latency,
        LatencyClass::SxmTranspose => target.sxm.transpose_latency,
        LatencyClass::MxmPass => u32::try_from(target.mxm_latency()).unwrap_or(u32::MAX),
        LatencyClass::MxmSwap => target.mxm.swap_cycles,
        LatencyClass::IcuNotify => target.icu.notify_latency_cycles,
        LatencyClass::C2cLink => target.c2c.link_latency_cycles,
        LatencyClass::C2cReceive => target.c2c.receive_latency_cycles,
    }
}

impl Instruction {
    /// Its latency on `target` ([`cycles`] of its class).
    pub fn latency(&self, target: &Target) -> u32 {
        cycles(self.latency_class(), target)
    }
}

fn target_hemisphere(h: Hemisphere) -> q35_target::Hemisphere {
    match h {
        Hemisphere::West => q35_target::Hemisphere::West,
        Hemisphere::East => q35_target::Hemisphere::East,
    }
}

impl QueueId {
    /// The slice of `target`'s floor plan this queue drives (`None` for a
    /// link queue: the links are no slice, their ports stand at
    /// [`Target::c2c_position`]).
    pub fn slice(self, target: &Target) -> Option<Slice> {
        Some(match self.kind() {
            QueueKind::Mem { hemisphere, index } => {
                Slice::Mem(target_hemisphere(hemisphere), u32::from(index))
            }
            QueueKind::Vxm(_) => Slice::Vxm,
            QueueKind::Mxm(plane) => Slice::Mxm(target.mxm_plane_hemisphere(u32::from(plane))?),
            QueueKind::Sxm(h) => Slice::Sxm(target_hemisphere(h), 0),
            QueueKind::C2c(_) => return None,
        })
    }

    /// Its east-west position on `target` (docs/isa.md 1), if the target
    /// has its slice (a link queue: [`Target::c2c_position`]).
    pub fn position(self, target: &Target) -> Option<u32> {
        match self.kind() {
            QueueKind::C2c(_) => Some(target.c2c_position()),
            _ => target.position(self.slice(target)?),
        }
    }
}

/// A target whose shape the lpu-v1 encoding cannot express.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("target `{target}`: {parameter} = {value}, but the lpu-v1 ISA needs {expected}")]
pub struct TargetMismatch {
    /// The target's name.
    pub target: String,
    /// The parameter (dotted, as in the target file).
    pub parameter: &'static str,
    /// Its value.
    pub value: u64,
    /// What the ISA needs.
    pub expected: String,
}

/// Checks the parameters the encoding and the queue numbering fix: 32
/// streams a direction (5-bit ids), 320-byte vectors and MEM words, 44 MEM
/// slices a hemisphere, 16 VXM queues, 4 MXM planes, 2 SXMs, 16 links, at most 65536
/// words a slice (16-bit addresses), 64-bit instructions, `lw` rows and
/// rates within their fields.
pub fn check_target(target: &Target) -> Result<(), TargetMismatch> {
    let exact = |parameter: &'static str, value: u64, want: u64| {
        if value == want {
            Ok(())
        } else {
            Err(TargetMismatch {
                target: target.name.clone(),
                parameter,
                value,
                expected: want.to_string(),
            })
        }
    };
    let at_most = |parameter: &'static str, value: u64, max: u64| {
        if value <= max {
            Ok(())
        } else {
            Err(TargetMismatch {
                target: target.name.clone(),
                parameter,
                value,
                expected: format!("at most {max}"),
            })
        }
    };
    exact(
        "streams.per_direction",
        target.streams.per_direction.into(),
        STREAMS_PER_DIRECTION.into(),
    )?;
    exact(
        "vector.lanes",
        target.vector.lanes.into(),
        VECTOR_BYTES.into(),
    )?;
    exact(
        "mem.word_bytes",
        target.mem.word_bytes.into(),
        VECTOR_BYTES.into(),
    )?;
    exact(
        "mem.slices",
        target.mem.slices.into(),
        2 * u64::from(MEM_SLICES_PER_HEMISPHERE),
    )?;
    exact(
        "vxm.alus_per_lane",
        target.vxm.alus_per_lane.into(),
        VXM_QUEUES.into(),
    )?;
    exact("mxm.planes", target.mxm.planes.into(), MXM_PLANES.into())?;
    exact("sxm.units", target.sxm.units.into(), 2)?;
    exact(
        "mxm.queues_per_plane",
        target.mxm.queues_per_plane.into(),
        1,
    )?;
    exact("sxm.queues_per_unit", target.sxm.queues_per_unit.into(), 1)?;
    exact(
        "c2c.links_per_chip",
        target.c2c.links_per_chip.into(),
        C2C_LINKS.into(),
    )?;
    exact(
        "icu.instruction_bytes",
        target.icu.instruction_bytes.into(),
        8,
    )?;
    at_most(
        "mem.words_per_slice",
        target.mem.words_per_slice.into(),
        1 << 16,
    )?;
    at_most("mxm.rows", target.mxm.rows.into(), VECTOR_BYTES.into())?;
    at_most(
        "mxm.install_rows_per_cycle",
        target.mxm.install_rows_per_cycle.into(),
        32,
    )?;
    Ok(())
}

impl Program {
    /// Checks what depends on the target's sizes, after
    /// [`Program::validate`]: the target has the ISA's shape, the program is
    /// for it by name, every MEM address an instruction, `.mem` entry or
    /// symbol names is below `mem.words_per_slice`, `lw` loads at most
    /// `mxm.rows` rows at most `mxm.install_rows_per_cycle` a cycle.
    /// (Addresses `repeat` and `gather`/`scatter` maps reach at run time are
    /// the simulator's to check.)
    pub fn validate_target(&self, target: &Target) -> Result<(), ProgramError> {
        self.validate()?;
        let data = |what: String, message: String| ProgramError::Data { what, message };
        check_target(target).map_err(|e| data(".target".into(), e.to_string()))?;
        if self.target != target.name {
            return Err(data(
                ".target".into(),
                format!("program is for `{}`, not `{}`", self.target, target.name),
            ));
        }
        let words = u64::from(target.mem.words_per_slice);
        for (&queue, list) in &self.queues {
            for (index, ins) in list.iter().enumerate() {
                let err = |message: String| ProgramError::Instruction {
                    queue,
                    index,
                    instruction: ins.to_string(),
                    message,
                };
                let ops = ins.operands();
                for (spec, op) in ins.info().operands.iter().zip(ops.iter()) {
                    if let (OperandKind::Addr, Operand::UInt(a)) = (spec.kind, *op)
                        && u64::from(a) >= words
                    {
                        return Err(err(format!(
                            "`{}` address {a} is past the slice's {words} words",
                            spec.name
                        )));
                    }
                }
                if let Instruction::Lw { k, n, .. } = ins {
                    if *n > target.mxm.rows {
                        return Err(err(format!("{n} rows; the plane has {}", target.mxm.rows)));
                    }
                    if *k > target.mxm.install_rows_per_cycle {
                        return Err(err(format!(
                            "{k} rows a cycle; mxm.install_rows_per_cycle is {}",
                            target.mxm.install_rows_per_cycle
                        )));
                    }
                }
            }
        }
        for init in &self.mem {
            let end = u64::from(init.at.addr)
                + init
                    .at
                    .words_per_slice(init.dtype, u64::from(init.data.len()));
            if end > words {
                return Err(data(
                    format!(".mem {}", init.at),
                    format!("words up to {end} are past the slice's {words} words"),
                ));
            }
        }
        for sym in &self.symbols {
            let end = u64::from(sym.at.addr) + sym.at.words_per_slice(sym.dtype, sym.elements());
            if end > words {
                return Err(data(
                    format!(".symbol {}", sym.name),
                    format!("words up to {end} are past the slice's {words} words"),
                ));
            }
        }
        Ok(())
    }
}
