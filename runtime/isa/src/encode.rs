//! The binary encoding (docs/isa.md 5): one 64-bit word per instruction,
//! bits 0..8 the opcode, the operands packed upwards from bit 8 in table
//! order with the widths their kinds give, every bit above them zero.
//! Derived entirely from the table; decoding checks every field and never
//! panics.

use crate::info::{InstrInfo, OPCODE_BITS};
use crate::instr::{FieldError, check_operand};
use crate::operand::{
    Acc, Dir, ElemWidth, F32Imm, Operand, OperandKind, Operands, Stream, TableId,
};
use crate::table::{Instruction, Opcode};

/// Why a 64-bit word is not an instruction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Bits 0..8 name no instruction.
    #[error("word {word:#018x}: unknown opcode {opcode:#04x}")]
    UnknownOpcode {
        /// The word.
        word: u64,
        /// Its low byte.
        opcode: u8,
    },
    /// Bits above the instruction's operands are set.
    #[error("word {word:#018x}: `{mnemonic}` has reserved bits set ({bits:#018x})")]
    ReservedBits {
        /// The word.
        word: u64,
        /// The instruction.
        mnemonic: &'static str,
        /// The reserved bits that are set.
        bits: u64,
    },
    /// A field holds a code that means nothing (an element width of 3).
    #[error("word {word:#018x}: `{mnemonic}` operand `{field}` has invalid code {code}")]
    InvalidCode {
        /// The word.
        word: u64,
        /// The instruction.
        mnemonic: &'static str,
        /// The operand.
        field: &'static str,
        /// The raw field value.
        code: u64,
    },
    /// A field is out of range.
    #[error("word {word:#018x}: {source}")]
    Field {
        /// The word.
        word: u64,
        /// What is wrong.
        source: FieldError,
    },
}

/// A mask of the low `bits` bits.
const fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The raw bits of one operand value (already range-checked).
fn raw(kind: OperandKind, op: Operand) -> u64 {
    let bits = mask(kind.bits());
    let v = match op {
        Operand::Stream(s) => u64::from(s.id) | (u64::from(s.dir == Dir::West) << 5),
        Operand::UInt(v) => u64::from(v),
        Operand::Int(v) => i64::from(v) as u64,
        Operand::F32(f) => u64::from(f.0),
        Operand::ElemWidth(ew) => match ew {
            ElemWidth::B1 => 0,
            ElemWidth::B2 => 1,
            ElemWidth::B4 => 2,
        },
        Operand::Table(t) => u64::from(t.0),
        Operand::Acc(a) => match a {
            Acc::New => 0,
            Acc::Add => 1,
        },
    };
    v & bits
}

/// The operand value of a field's raw bits, or `None` for a meaningless code.
fn value(kind: OperandKind, raw: u64) -> Option<Operand> {
    Some(match kind {
        OperandKind::Stream { .. } => Operand::Stream(Stream {
            id: (raw & 0x1f) as u8,
            dir: if raw & 0x20 == 0 {
                Dir::East
            } else {
                Dir::West
            },
        }),
        OperandKind::Addr | OperandKind::UInt { .. } => Operand::UInt(u32::try_from(raw).ok()?),
        OperandKind::Int { bits } => {
            let shift = 64 - u32::from(bits);
            Operand::Int(i32::try_from(((raw << shift) as i64) >> shift).ok()?)
        }
        OperandKind::F32 => Operand::F32(F32Imm(u32::try_from(raw).ok()?)),
        OperandKind::ElemWidth => Operand::ElemWidth(match raw {
            0 => ElemWidth::B1,
            1 => ElemWidth::B2,
            2 => ElemWidth::B4,
            _ => return None,
        }),
        OperandKind::Table => Operand::Table(TableId(u16::try_from(raw).ok()?)),
        OperandKind::Acc => Operand::Acc(if raw == 0 { Acc::New } else { Acc::Add }),
    })
}

impl Instruction {
    /// The 64-bit word, or the first field out of range.
    pub fn encode(&self) -> Result<u64, FieldError> {
        self.check()?;
        let info = self.info();
        let mut word = info.opcode as u8 as u64;
        for (i, &op) in self.operands().iter().enumerate() {
            word |= raw(info.operands[i].kind, op) << info.bit_range(i).start;
        }
        Ok(word)
    }

    /// The instruction a word encodes. Unknown opcodes, reserved bits set and
    /// fields out of range are errors.
    pub fn decode(word: u64) -> Result<Instruction, DecodeError> {
        let opcode = (word & mask(OPCODE_BITS)) as u8;
        let info: &InstrInfo = Opcode::from_u8(opcode)
            .ok_or(DecodeError::UnknownOpcode { word, opcode })?
            .info();
        let reserved = word & !mask(info.used_bits());
        if reserved != 0 {
            return Err(DecodeError::ReservedBits {
                word,
                mnemonic: info.mnemonic,
                bits: reserved,
            });
        }
        let mut ops = Operands::new();
        for (i, spec) in info.operands.iter().enumerate() {
            let code = (word >> info.bit_range(i).start) & mask(spec.kind.bits());
            let op = value(spec.kind, code).ok_or(DecodeError::InvalidCode {
                word,
                mnemonic: info.mnemonic,
                field: spec.name,
                code,
            })?;
            let pushed = ops.push(op);
            debug_assert!(pushed, "MAX_OPERANDS is checked against the table");
        }
        for (i, &op) in ops.iter().enumerate() {
            check_operand(info, &ops, i, op)
                .map_err(|source| DecodeError::Field { word, source })?;
        }
        // The operands were built from the table's kinds, so they match.
        Instruction::from_operands(info.opcode, &ops).ok_or(DecodeError::InvalidCode {
            word,
            mnemonic: info.mnemonic,
            field: "",
            code: word,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_words() {
        let fadd = Instruction::Fadd {
            a: Stream::east(0),
            b: Stream::west(4),
            dst: Stream::east(8),
        };
        // opcode 0x20; a = 0 at bits 8..14; b = 4 | west at 14..20; dst = 8 at 20..26.
        let word = 0x20 | ((4 | 0x20) << 14) | (8 << 20);
        assert_eq!(fadd.encode(), Ok(word));
        assert_eq!(Instruction::decode(word), Ok(fadd));
        assert_eq!(Instruction::Halt {}.encode(), Ok(0x05));
    }

    #[test]
    fn decode_errors() {
        assert!(matches!(
            Instruction::decode(0),
            Err(DecodeError::UnknownOpcode { opcode: 0, .. })
        ));
        assert!(matches!(
            Instruction::decode(0x05 | 1 << 8),
            Err(DecodeError::ReservedBits { .. })
        ));
        // nop 0: n must be at least 1.
        assert!(matches!(
            Instruction::decode(0x01),
            Err(DecodeError::Field { .. })
        ));
        // shift with element width code 3.
        let shift = 0x40 | (3u64 << (8 + 6 + 6 + 9 + 9));
        assert!(matches!(
            Instruction::decode(shift),
            Err(DecodeError::InvalidCode { .. })
        ));
        // transpose from s17.e: 16 streams run past s31.
        let transpose = 0x43 | (17 << 8);
        assert!(matches!(
            Instruction::decode(transpose),
            Err(DecodeError::Field {
                source: FieldError::GroupPastEnd { .. },
                ..
            })
        ));
    }

    #[test]
    fn encode_rejects_out_of_range() {
        assert!(Instruction::Nop { n: 0 }.encode().is_err());
        assert!(Instruction::Nop { n: 1 << 24 }.encode().is_err());
        let bcast = |l| Instruction::Bcast {
            src: Stream::east(0),
            dst: Stream::east(4),
            l,
            ew: ElemWidth::B4,
        };
        // An element is one lane of the 4-stream group: 320 f32 elements.
        assert!(bcast(319).encode().is_ok());
        assert!(
            bcast(320).encode().is_err(),
            "320 elements in a vector whatever ew: index 320 is past the end"
        );
        let repeat = Instruction::Repeat {
            n: 1,
            d: 1,
            stride: -32769,
        };
        assert!(repeat.encode().is_err());
    }
}
