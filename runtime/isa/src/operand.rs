//! Operands: the typed values an instruction's fields hold ([`Stream`],
//! [`ElemWidth`], [`Acc`], [`F32Imm`], [`TableId`], plain integers), their
//! kinds as the instruction table declares them ([`OperandKind`]), and the
//! untyped [`Operand`] through which encoding, printing and parsing work on
//! every instruction alike.

use std::fmt;

/// Stream registers per direction (the 5-bit stream id; docs/isa.md 1).
pub const STREAMS_PER_DIRECTION: u8 = 32;
/// Bytes (lanes) in a vector (docs/isa.md 1).
pub const VECTOR_BYTES: u32 = 320;

/// The direction a stream flows in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Eastward (`.e`): towards higher positions.
    East,
    /// Westward (`.w`): towards position 0.
    West,
}

impl Dir {
    /// The assembly suffix: `e` or `w`.
    pub const fn suffix(self) -> char {
        match self {
            Dir::East => 'e',
            Dir::West => 'w',
        }
    }
}

/// One stream register, `s<id>.<e|w>`; as an operand it names the first
/// stream of a group whose size the instruction table gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stream {
    /// Stream id, `0 .. STREAMS_PER_DIRECTION`.
    pub id: u8,
    /// Direction of flow.
    pub dir: Dir,
}

impl Stream {
    /// The eastward stream `s<id>.e`.
    pub const fn east(id: u8) -> Stream {
        Stream { id, dir: Dir::East }
    }
    /// The westward stream `s<id>.w`.
    pub const fn west(id: u8) -> Stream {
        Stream { id, dir: Dir::West }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.id, self.dir.suffix())
    }
}

/// A stream group: `count` consecutive streams from `first` (same direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamGroup {
    /// The lowest-numbered stream of the group.
    pub first: Stream,
    /// How many streams, `1 ..= 32`.
    pub count: u8,
}

impl StreamGroup {
    /// The streams of the group, lowest first.
    pub fn streams(self) -> impl Iterator<Item = Stream> {
        let dir = self.first.dir;
        (self.first.id..self.first.id.saturating_add(self.count)).map(move |id| Stream { id, dir })
    }
}

/// Element width in bytes of SXM operations (`ew`: 1, 2 or 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElemWidth {
    /// 1-byte elements (one stream).
    B1,
    /// 2-byte elements (a 2-stream group).
    B2,
    /// 4-byte elements (a 4-stream group).
    B4,
}

impl ElemWidth {
    /// Every element width, narrowest first.
    pub const ALL: [ElemWidth; 3] = [ElemWidth::B1, ElemWidth::B2, ElemWidth::B4];

    /// Bytes per element (= streams per group).
    pub const fn bytes(self) -> u32 {
        match self {
            ElemWidth::B1 => 1,
            ElemWidth::B2 => 2,
            ElemWidth::B4 => 4,
        }
    }

    /// The width with `bytes` bytes, if it is 1, 2 or 4.
    pub const fn from_bytes(bytes: u64) -> Option<ElemWidth> {
        match bytes {
            1 => Some(ElemWidth::B1),
            2 => Some(ElemWidth::B2),
            4 => Some(ElemWidth::B4),
            _ => None,
        }
    }
}

/// The MXM accumulate flag of `mm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Acc {
    /// `new`: start a sum.
    New,
    /// `add`: add to the plane's previous result (a K fold).
    Add,
}

impl Acc {
    /// The assembly keyword.
    pub const fn keyword(self) -> &'static str {
        match self {
            Acc::New => "new",
            Acc::Add => "add",
        }
    }
}

/// An f32 immediate, held as its bit pattern so that equality, hashing and
/// round trips are exact (NaN payloads and -0 included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct F32Imm(pub u32);

impl F32Imm {
    /// The immediate holding `value`.
    pub fn new(value: f32) -> F32Imm {
        F32Imm(value.to_bits())
    }
    /// The value.
    pub fn value(self) -> f32 {
        f32::from_bits(self.0)
    }
}

impl fmt::Display for F32Imm {
    /// Shortest decimal that parses back to the same bits; NaNs, whose
    /// payload decimal cannot carry, as the bit pattern `0x7fc00000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value();
        if v.is_nan() {
            write!(f, "{:#010x}", self.0)
        } else {
            write!(f, "{v:?}")
        }
    }
}

/// Index of a table of the program (`.table`), e.g. a `permute` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub u16);

/// Which way an instruction uses a stream operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The instruction reads the group on its issue cycle.
    Read,
    /// The instruction writes the group after its latency.
    Write,
}

/// How many streams a stream operand spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupSize {
    /// A fixed number of streams (f32 = 4, u16 map = 2, ...).
    Fixed(u8),
    /// `bytes` of the [`ElemWidth`] operand of that name.
    ElemWidthOf(&'static str),
    /// The value of the unsigned operand of that name (`lw`'s `k`).
    CountOf(&'static str),
}

/// The kind of an instruction field: what it holds, how many bits it takes,
/// which values are valid. Declared per operand in the instruction table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperandKind {
    /// A stream group `s<id>.<e|w>` (6 bits: id in bits 0..5, direction in
    /// bit 5, 1 = west). The group must not run past stream 31.
    Stream {
        /// Read or written.
        access: Access,
        /// Streams in the group.
        group: GroupSize,
    },
    /// A MEM word address (16 bits); `repeat` advances it by its stride.
    Addr,
    /// An unsigned integer of `bits` bits in `min ..= max`.
    UInt {
        /// Field width.
        bits: u8,
        /// Smallest valid value.
        min: u32,
        /// Largest valid value.
        max: u32,
    },
    /// A signed two's-complement integer of `bits` bits.
    Int {
        /// Field width.
        bits: u8,
    },
    /// An f32 immediate (32 bits).
    F32,
    /// An element width 1, 2 or 4 (2 bits: 0, 1, 2; 3 is invalid).
    ElemWidth,
    /// A table index (16 bits), written as the table's name.
    Table,
    /// The accumulate flag `new` | `add` (1 bit).
    Acc,
}

impl OperandKind {
    /// Bits the field takes in the encoding.
    pub const fn bits(&self) -> u32 {
        match self {
            OperandKind::Stream { .. } => 6,
            OperandKind::Addr => 16,
            OperandKind::UInt { bits, .. } | OperandKind::Int { bits } => *bits as u32,
            OperandKind::F32 => 32,
            OperandKind::ElemWidth => 2,
            OperandKind::Table => 16,
            OperandKind::Acc => 1,
        }
    }

    /// A short description of the valid values, for errors and the docs.
    pub fn describe(&self) -> String {
        match self {
            OperandKind::Stream { group, .. } => match group {
                GroupSize::Fixed(1) => "stream s<0..31>.<e|w>".to_string(),
                GroupSize::Fixed(n) => format!("stream group of {n} s<id>.<e|w>"),
                GroupSize::ElemWidthOf(ew) => format!("stream group of `{ew}` streams"),
                GroupSize::CountOf(k) => format!("stream group of `{k}` streams"),
            },
            OperandKind::Addr => "word address 0..=65535".to_string(),
            OperandKind::UInt { min, max, .. } => format!("integer {min}..={max}"),
            OperandKind::Int { bits } => {
                let half = 1i64 << (bits - 1);
                format!("integer {}..={}", -half, half - 1)
            }
            OperandKind::F32 => "f32 immediate".to_string(),
            OperandKind::ElemWidth => "element width 1, 2 or 4".to_string(),
            OperandKind::Table => "table name".to_string(),
            OperandKind::Acc => "`new` or `add`".to_string(),
        }
    }
}

/// One operand of the instruction table: its name and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OperandSpec {
    /// Name, as in the syntax template and the typed [`crate::Instruction`] field.
    pub name: &'static str,
    /// Kind (bits, valid values).
    pub kind: OperandKind,
}

/// An operand value, untyped: what the generic encoder, decoder, printer and
/// parser work on. The typed fields of [`crate::Instruction`] convert to and
/// from it ([`FieldValue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A stream (the first of its group).
    Stream(Stream),
    /// An unsigned integer (addresses, counts, indices).
    UInt(u32),
    /// A signed integer.
    Int(i32),
    /// An f32 immediate.
    F32(F32Imm),
    /// An element width.
    ElemWidth(ElemWidth),
    /// A table index.
    Table(TableId),
    /// An accumulate flag.
    Acc(Acc),
}

/// A Rust type an instruction field may have; converts to and from [`Operand`].
pub trait FieldValue: Copy {
    /// The untyped operand.
    fn into_operand(self) -> Operand;
    /// The typed value, if `op` holds this type.
    fn from_operand(op: Operand) -> Option<Self>;
}

macro_rules! field_value {
    ($ty:ty, $variant:ident) => {
        impl FieldValue for $ty {
            fn into_operand(self) -> Operand {
                Operand::$variant(self)
            }
            fn from_operand(op: Operand) -> Option<Self> {
                if let Operand::$variant(v) = op {
                    Some(v)
                } else {
                    None
                }
            }
        }
    };
}

field_value!(Stream, Stream);
field_value!(u32, UInt);
field_value!(i32, Int);
field_value!(F32Imm, F32);
field_value!(ElemWidth, ElemWidth);
field_value!(TableId, Table);
field_value!(Acc, Acc);

/// A list of at most `N` items kept inline (operands, stream groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InlineList<T: Copy + Default, const N: usize> {
    len: u8,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> InlineList<T, N> {
    /// An empty list.
    pub fn new() -> Self {
        InlineList {
            len: 0,
            items: [T::default(); N],
        }
    }
    /// Appends `item`; returns false (and drops it) when the list is full.
    pub fn push(&mut self, item: T) -> bool {
        match self.items.get_mut(self.len as usize) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                true
            }
            None => false,
        }
    }
}

impl<T: Copy + Default, const N: usize> InlineList<T, N> {
    /// Replaces item `i`; returns false when there is no item `i`.
    pub fn set(&mut self, i: usize, item: T) -> bool {
        match self.items[..self.len as usize].get_mut(i) {
            Some(slot) => {
                *slot = item;
                true
            }
            None => false,
        }
    }
}

impl<T: Copy + Default, const N: usize> Default for InlineList<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> std::ops::Deref for InlineList<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items[..self.len as usize]
    }
}

impl Default for Operand {
    fn default() -> Self {
        Operand::UInt(0)
    }
}

impl Default for StreamGroup {
    fn default() -> Self {
        StreamGroup {
            first: Stream::east(0),
            count: 0,
        }
    }
}

/// Most operands any instruction has (`shift`: 5).
pub const MAX_OPERANDS: usize = 5;
/// Most stream groups an instruction reads (`select`: 3).
pub const MAX_GROUPS: usize = 4;

/// The operands of one instruction, in table order.
pub type Operands = InlineList<Operand, MAX_OPERANDS>;
/// The stream groups one instruction reads or writes.
pub type StreamGroups = InlineList<StreamGroup, MAX_GROUPS>;
