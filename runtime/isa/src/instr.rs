//! What every instruction answers through the table, generically: its
//! metadata, unit, issue cycles, occupancy, the stream groups it reads and
//! writes, and whether its fields are in range ([`Instruction::check`]).

use crate::info::{InstrInfo, LatencyClass, Unit};
use crate::operand::{
    Access, GroupSize, Operand, OperandKind, STREAMS_PER_DIRECTION, Stream, StreamGroup,
    StreamGroups,
};
use crate::table::Instruction;

/// A field of an instruction holds a value its kind does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A value outside the field's range.
    #[error("`{mnemonic}` operand `{field}`: {value} is out of range (expected {expected})")]
    OutOfRange {
        /// The instruction.
        mnemonic: &'static str,
        /// The operand.
        field: &'static str,
        /// The value given.
        value: i64,
        /// The valid values.
        expected: String,
    },
    /// A stream group that runs past stream 31.
    #[error(
        "`{mnemonic}` operand `{field}`: a group of {count} streams from {first} runs past stream 31"
    )]
    GroupPastEnd {
        /// The instruction.
        mnemonic: &'static str,
        /// The operand.
        field: &'static str,
        /// First stream of the group.
        first: Stream,
        /// Streams in the group.
        count: u32,
    },
}

/// Streams in the group of a stream operand of size `group`.
pub(crate) fn group_count(info: &InstrInfo, ops: &[Operand], group: GroupSize) -> u32 {
    match group {
        GroupSize::Fixed(n) => u32::from(n),
        GroupSize::ElemWidthOf(name) => match info.operand_index(name).and_then(|i| ops.get(i)) {
            Some(Operand::ElemWidth(ew)) => ew.bytes(),
            _ => 0,
        },
        GroupSize::CountOf(name) => match info.operand_index(name).and_then(|i| ops.get(i)) {
            Some(Operand::UInt(k)) => *k,
            _ => 0,
        },
    }
}

/// Checks one operand value against its kind (the kinds and values of the
/// same instruction give the cross-field bounds).
pub(crate) fn check_operand(
    info: &InstrInfo,
    ops: &[Operand],
    i: usize,
    value: Operand,
) -> Result<(), FieldError> {
    let spec = info.operands[i];
    let out_of_range = |value: i64| FieldError::OutOfRange {
        mnemonic: info.mnemonic,
        field: spec.name,
        value,
        expected: spec.kind.describe(),
    };
    let in_range = |v: u32, min: u32, max: u32| {
        if (min..=max).contains(&v) {
            Ok(())
        } else {
            Err(out_of_range(i64::from(v)))
        }
    };
    match (spec.kind, value) {
        (OperandKind::Stream { group, .. }, Operand::Stream(s)) => {
            if s.id >= STREAMS_PER_DIRECTION {
                return Err(out_of_range(i64::from(s.id)));
            }
            let count = group_count(info, ops, group);
            if u32::from(s.id) + count > u32::from(STREAMS_PER_DIRECTION) {
                return Err(FieldError::GroupPastEnd {
                    mnemonic: info.mnemonic,
                    field: spec.name,
                    first: s,
                    count,
                });
            }
            Ok(())
        }
        (OperandKind::Addr, Operand::UInt(v)) => in_range(v, 0, 0xffff),
        (OperandKind::UInt { min, max, .. }, Operand::UInt(v)) => in_range(v, min, max),
        (OperandKind::Int { bits }, Operand::Int(v)) => {
            let half = 1i64 << (bits - 1);
            if (-half..half).contains(&i64::from(v)) {
                Ok(())
            } else {
                Err(out_of_range(v.into()))
            }
        }
        (OperandKind::F32, Operand::F32(_))
        | (OperandKind::ElemWidth, Operand::ElemWidth(_))
        | (OperandKind::Table, Operand::Table(_))
        | (OperandKind::Acc, Operand::Acc(_)) => Ok(()),
        // A value of the wrong type: the typed enum makes this impossible
        // for instructions built from the table; say so rather than panic.
        (
            OperandKind::Stream { .. }
            | OperandKind::Addr
            | OperandKind::UInt { .. }
            | OperandKind::Int { .. }
            | OperandKind::F32
            | OperandKind::ElemWidth
            | OperandKind::Table
            | OperandKind::Acc,
            _,
        ) => Err(FieldError::OutOfRange {
            mnemonic: info.mnemonic,
            field: spec.name,
            value: 0,
            expected: spec.kind.describe(),
        }),
    }
}

impl Instruction {
    /// The table's entry for it.
    #[inline]
    pub const fn info(&self) -> &'static InstrInfo {
        self.opcode().info()
    }

    /// Its mnemonic.
    pub const fn mnemonic(&self) -> &'static str {
        self.info().mnemonic
    }

    /// The unit it runs on.
    #[inline]
    pub const fn unit(&self) -> Unit {
        self.info().unit
    }

    /// Its latency class.
    #[inline]
    pub const fn latency_class(&self) -> LatencyClass {
        self.info().latency
    }

    /// Cycles until its queue issues the next instruction (1; `nop n`: n;
    /// `repeat n, d`: n * d).
    pub fn issue_cycles(&self) -> u64 {
        let info = self.info();
        info.issue.eval(info, &self.operands())
    }

    /// Cycles its unit is busy from the issue cycle (0 for control).
    #[inline]
    pub fn occupancy(&self) -> u64 {
        let info = self.info();
        info.occupancy.eval(info, &self.operands())
    }

    /// Whether every field is within its range (the same check decoding and
    /// the assembler apply).
    pub fn check(&self) -> Result<(), FieldError> {
        let info = self.info();
        let ops = self.operands();
        for (i, &op) in ops.iter().enumerate() {
            check_operand(info, &ops, i, op)?;
        }
        Ok(())
    }

    #[inline]
    fn groups(&self, access: Access) -> StreamGroups {
        let info = self.info();
        let ops = self.operands();
        let mut out = StreamGroups::new();
        for (spec, op) in info.operands.iter().zip(ops.iter()) {
            if let (OperandKind::Stream { access: a, group }, Operand::Stream(first)) =
                (spec.kind, *op)
                && a == access
            {
                let count = group_count(info, &ops, group).min(u32::from(u8::MAX)) as u8;
                // MAX_GROUPS covers the table (tested); never drop silently.
                let pushed = out.push(StreamGroup { first, count });
                debug_assert!(pushed, "MAX_GROUPS is checked against the table");
            }
        }
        out
    }

    /// The stream groups it reads on its issue cycle, in operand order.
    #[inline]
    pub fn reads(&self) -> StreamGroups {
        self.groups(Access::Read)
    }

    /// The stream groups it writes (after its latency), in operand order.
    #[inline]
    pub fn writes(&self) -> StreamGroups {
        self.groups(Access::Write)
    }

    /// Whether `repeat` advances this operand (word addresses).
    pub fn is_address(&self, operand: usize) -> bool {
        matches!(
            self.info().operands.get(operand).map(|o| o.kind),
            Some(OperandKind::Addr)
        )
    }

    /// The instruction with every word-address field advanced by `words`:
    /// what the `k`-th execution under `repeat n, d, stride` runs, with
    /// `words = k * stride`. An address leaving `0 ..= 65535` is an error.
    pub fn offset_addresses(&self, words: i64) -> Result<Instruction, FieldError> {
        let info = self.info();
        let mut ops = self.operands();
        for (i, spec) in info.operands.iter().enumerate() {
            if let (OperandKind::Addr, Operand::UInt(a)) = (spec.kind, ops[i]) {
                let moved = i64::from(a) + words;
                let moved = u32::try_from(moved)
                    .ok()
                    .filter(|&m| m <= 0xffff)
                    .ok_or_else(|| FieldError::OutOfRange {
                        mnemonic: info.mnemonic,
                        field: spec.name,
                        value: moved,
                        expected: spec.kind.describe(),
                    })?;
                ops.set(i, Operand::UInt(moved));
            }
        }
        Ok(Instruction::from_operands(info.opcode, &ops).unwrap_or(*self))
    }
}
