//! The metadata of one instruction as the table declares it
//! ([`InstrInfo`]): unit, syntax, operands and their bit fields, latency
//! class, issue cycles and occupancy.

use std::fmt;

use crate::operand::{Operand, OperandSpec};
use crate::table::Opcode;

/// Bits 0..8 of every instruction word hold the opcode.
pub const OPCODE_BITS: u32 = 8;

/// The functional unit an instruction runs on, and so the queues that may
/// hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// Control (ICU): valid in every queue.
    Control,
    /// A MEM slice.
    Mem,
    /// The VXM (one queue per ALU).
    Vxm,
    /// An SXM (one queue per hemisphere).
    Sxm,
    /// An MXM plane.
    Mxm,
    /// A chip-to-chip link (one queue per link).
    C2c,
}

impl Unit {
    /// Lower-case name, as in queue names and the docs.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Control => "control",
            Unit::Mem => "mem",
            Unit::Vxm => "vxm",
            Unit::Sxm => "sxm",
            Unit::Mxm => "mxm",
            Unit::C2c => "c2c",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which target parameter gives an instruction's latency: the cycles from
/// issue until its result is on its output stream (or, for `write`, visible
/// to reads). Resolved against a target by [`crate::latency`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LatencyClass {
    /// The instruction produces no result (control, `lw`).
    None,
    /// `mem.read_latency_cycles`.
    MemRead,
    /// `mem.write_latency_cycles`.
    MemWrite,
    /// `vxm.alu_latency`: arithmetic, comparisons, select.
    VxmAlu,
    /// `vxm.convert_latency`: type conversions and `unpack35`.
    VxmConvert,
    /// `vxm.special_latency`: division, square root, exponential.
    VxmSpecial,
    /// `sxm.shift_latency`.
    SxmShift,
    /// `sxm.permute_latency` (`permute`, `bcast`).
    SxmPermute,
    /// `sxm.transpose_latency`.
    SxmTranspose,
    /// `(rows / pe_block + cols / pe_block - 1) * pe_hop_cycles + 1`: a
    /// vector through the plane (`Target::mxm_latency`).
    MxmPass,
    /// `mxm.swap_cycles`: the shadow weight buffer becomes active.
    MxmSwap,
    /// `icu.notify_latency_cycles`: parked queues resume.
    IcuNotify,
    /// `c2c.link_latency_cycles`: a vector sent on a link arrives at the
    /// neighbour.
    C2cLink,
    /// `c2c.receive_latency_cycles`: a received vector is on its stream.
    C2cReceive,
}

impl LatencyClass {
    /// The target parameter(s) it names, as in the docs.
    pub const fn parameter(self) -> &'static str {
        match self {
            LatencyClass::None => "-",
            LatencyClass::MemRead => "mem.read_latency_cycles",
            LatencyClass::MemWrite => "mem.write_latency_cycles",
            LatencyClass::VxmAlu => "vxm.alu_latency",
            LatencyClass::VxmConvert => "vxm.convert_latency",
            LatencyClass::VxmSpecial => "vxm.special_latency",
            LatencyClass::SxmShift => "sxm.shift_latency",
            LatencyClass::SxmPermute => "sxm.permute_latency",
            LatencyClass::SxmTranspose => "sxm.transpose_latency",
            LatencyClass::MxmPass => "Target::mxm_latency (40 on lpu-v1)",
            LatencyClass::MxmSwap => "mxm.swap_cycles",
            LatencyClass::IcuNotify => "icu.notify_latency_cycles",
            LatencyClass::C2cLink => "c2c.link_latency_cycles",
            LatencyClass::C2cReceive => "c2c.receive_latency_cycles",
        }
    }
}

/// A cycle count that depends on an instruction's operands: its issue
/// cycles (when the queue's next instruction issues) or its occupancy (how
/// long its unit is busy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CycleExpr {
    /// A constant.
    Const(u32),
    /// The value of the named unsigned operand.
    Field(&'static str),
    /// The product of two named operands.
    Product(&'static str, &'static str),
    /// `ceil(a / b)` of two named operands.
    CeilDiv(&'static str, &'static str),
}

impl CycleExpr {
    /// The value for `info`'s instruction with these operands. Operands the
    /// table names but that are missing count as 0 (the table test rules
    /// that out).
    pub fn eval(self, info: &InstrInfo, ops: &[Operand]) -> u64 {
        let get = |name: &str| -> u64 {
            match info.operand_index(name).and_then(|i| ops.get(i)) {
                Some(Operand::UInt(v)) => u64::from(*v),
                _ => 0,
            }
        };
        match self {
            CycleExpr::Const(c) => u64::from(c),
            CycleExpr::Field(a) => get(a),
            CycleExpr::Product(a, b) => get(a) * get(b),
            CycleExpr::CeilDiv(a, b) => {
                let d = get(b);
                if d == 0 { 0 } else { get(a).div_ceil(d) }
            }
        }
    }
}

impl fmt::Display for CycleExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CycleExpr::Const(c) => write!(f, "{c}"),
            CycleExpr::Field(a) => write!(f, "{a}"),
            CycleExpr::Product(a, b) => write!(f, "{a} * {b}"),
            CycleExpr::CeilDiv(a, b) => write!(f, "ceil({a} / {b})"),
        }
    }
}

/// Everything the table says about one instruction.
#[derive(Clone, Copy, Debug)]
pub struct InstrInfo {
    /// Its opcode (bits 0..8 of the word).
    pub opcode: Opcode,
    /// Assembly mnemonic.
    pub mnemonic: &'static str,
    /// The unit it runs on.
    pub unit: Unit,
    /// Operand syntax after the mnemonic: `{name}` placeholders between
    /// literal `,` and `->`.
    pub syntax: &'static str,
    /// Operands in encoding order: the first at bit 8, each next one above.
    pub operands: &'static [OperandSpec],
    /// Latency class.
    pub latency: LatencyClass,
    /// Cycles until the queue issues its next instruction.
    pub issue: CycleExpr,
    /// Cycles the unit is busy (0 for control instructions).
    pub occupancy: CycleExpr,
    /// One-line description.
    pub doc: &'static str,
}

impl InstrInfo {
    /// Position of the operand called `name`.
    pub fn operand_index(&self, name: &str) -> Option<usize> {
        self.operands.iter().position(|o| o.name == name)
    }

    /// Bit range `lo .. hi` of operand `i` in the word.
    pub fn bit_range(&self, i: usize) -> std::ops::Range<u32> {
        let lo = OPCODE_BITS
            + self.operands[..i]
                .iter()
                .map(|o| o.kind.bits())
                .sum::<u32>();
        let hi = lo + self.operands.get(i).map_or(0, |o| o.kind.bits());
        lo..hi
    }

    /// Bits used by the opcode and operands; the bits above are reserved (zero).
    pub fn used_bits(&self) -> u32 {
        OPCODE_BITS + self.operands.iter().map(|o| o.kind.bits()).sum::<u32>()
    }

    /// `mnemonic` followed by the syntax, e.g. `fadd {a}, {b} -> {d}` rendered
    /// as `fadd a, b -> d`.
    pub fn synopsis(&self) -> String {
        let ops = self.syntax.replace(['{', '}'], "");
        if ops.is_empty() {
            self.mnemonic.to_string()
        } else {
            format!("{} {ops}", self.mnemonic)
        }
    }
}
