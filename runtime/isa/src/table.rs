//! THE instruction table: the one place each instruction of lpu-v1 is
//! defined (docs/isa.md sections 2-3).
//!
//! The `instructions!` invocation below gives, per instruction, its opcode,
//! mnemonic, unit, assembly syntax, latency class, issue cycles, occupancy,
//! one-line doc and operands (name, Rust type, kind). From it the macro
//! generates [`Opcode`], [`Instruction`] (typed fields), the
//! [`INSTRUCTIONS`] metadata and the conversions between typed fields and
//! untyped [`Operand`]s, through which everything else (encoding, decoding,
//! printing, parsing, stream reads/writes, the docs) is derived generically.
//! Adding an instruction here is the whole job, apart from the simulator's
//! semantics, which matches exhaustively on [`Instruction`].
//!
//! Rules the table test (`tests/roundtrip.rs`) enforces: opcodes and
//! mnemonics unique, opcode 0 unused (a zero word is no instruction), the
//! syntax names every operand once and in declaration (= encoding) order,
//! operands fit in 64 bits, names referred to by other kinds exist.

use crate::info::{CycleExpr, InstrInfo, LatencyClass, Unit};
use crate::operand::{
    Acc, Access, ElemWidth, F32Imm, FieldValue, GroupSize, MAX_OPERANDS, Operand, OperandKind,
    OperandSpec, Operands, Stream, TableId, VECTOR_BYTES,
};

/// A stream operand read, `n` streams wide.
const fn read(n: u8) -> OperandKind {
    OperandKind::Stream {
        access: Access::Read,
        group: GroupSize::Fixed(n),
    }
}
/// A stream operand written, `n` streams wide.
const fn write(n: u8) -> OperandKind {
    OperandKind::Stream {
        access: Access::Write,
        group: GroupSize::Fixed(n),
    }
}
/// An SXM stream operand, as wide as the element width `ew`.
const fn read_ew() -> OperandKind {
    OperandKind::Stream {
        access: Access::Read,
        group: GroupSize::ElemWidthOf("ew"),
    }
}
/// An SXM result operand, as wide as the element width `ew`.
const fn write_ew() -> OperandKind {
    OperandKind::Stream {
        access: Access::Write,
        group: GroupSize::ElemWidthOf("ew"),
    }
}
/// An unsigned field of `bits` bits in `min ..= max`.
const fn uint(bits: u8, min: u32, max: u32) -> OperandKind {
    OperandKind::UInt { bits, min, max }
}
/// Lanes of a vector: the elements of an SXM operand, whatever its element
/// width (element `l` is lane `l` of the `ew`-stream group, docs/isa.md 1).
const LANES: u32 = VECTOR_BYTES;

use CycleExpr::{CeilDiv, Const, Field, Product};
use OperandKind::{Addr, F32};

macro_rules! instructions {
    ($(
        $(#[doc = $doc:literal])+
        $variant:ident = $opcode:literal $mnemonic:literal $unit:ident {
            syntax: $syntax:literal,
            latency: $latency:ident,
            issue: $issue:expr,
            occupancy: $occ:expr,
            operands: { $($field:ident : $fty:ty = $kind:expr),* $(,)? } $(,)?
        }
    )*) => {
        /// The opcode of an instruction: bits 0..8 of its word.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $( $(#[doc = $doc])+ $variant = $opcode, )*
        }

        /// Number of instructions in the table.
        pub const COUNT: usize = [$(Opcode::$variant),*].len();

        /// Every instruction's entry, in table order.
        static INFOS: [InstrInfo; COUNT] = [$(
            InstrInfo {
                opcode: Opcode::$variant,
                mnemonic: $mnemonic,
                unit: Unit::$unit,
                syntax: $syntax,
                operands: &[$(OperandSpec { name: stringify!($field), kind: $kind }),*],
                latency: LatencyClass::$latency,
                issue: $issue,
                occupancy: $occ,
                doc: concat!($($doc),+).trim_ascii(),
            },
        )*];

        /// Per opcode byte, its entry's index in [`INFOS`] (`u8::MAX`
        /// for a byte that is no opcode: never an [`Opcode`]).
        const _: () = assert!(COUNT < u8::MAX as usize, "INFO_INDEX holds a u8 per opcode");
        const INFO_INDEX: [u8; 256] = {
            let mut t = [u8::MAX; 256];
            let all = [$(Opcode::$variant),*];
            let mut i = 0;
            while i < all.len() {
                t[all[i] as usize] = i as u8;
                i += 1;
            }
            t
        };

        impl Opcode {
            /// Every opcode, in table order.
            pub const ALL: [Opcode; COUNT] = [$(Opcode::$variant),*];

            /// The opcode with byte value `byte`, if any.
            pub const fn from_u8(byte: u8) -> Option<Opcode> {
                match byte {
                    $( $opcode => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            /// The table's entry for this opcode (an index into one
            /// static table, so it inlines wherever it is asked).
            #[inline]
            pub const fn info(self) -> &'static InstrInfo {
                &INFOS[INFO_INDEX[self as usize] as usize]
            }

            /// The opcode whose mnemonic is `mnemonic`.
            pub fn from_mnemonic(mnemonic: &str) -> Option<Opcode> {
                match mnemonic {
                    $( $mnemonic => Some(Opcode::$variant), )*
                    _ => None,
                }
            }
        }

        /// The table: every instruction's metadata, in table order.
        pub const INSTRUCTIONS: [InstrInfo; COUNT] = [$( *Opcode::$variant.info() ),*];

        /// One instruction with typed operands (field names as in the table
        /// and the syntax).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Instruction {
            $( $(#[doc = $doc])+ $variant { $( #[doc = stringify!($field)] $field: $fty ),* }, )*
        }

        impl Instruction {
            /// Its opcode.
            #[inline]
            pub const fn opcode(&self) -> Opcode {
                match self {
                    $( Instruction::$variant { .. } => Opcode::$variant, )*
                }
            }

            /// Its operands, untyped, in table order.
            #[inline]
            pub fn operands(&self) -> Operands {
                let mut ops = Operands::new();
                match *self {
                    $( Instruction::$variant { $($field),* } => {
                        $( let pushed = ops.push(FieldValue::into_operand($field));
                           debug_assert!(pushed, "MAX_OPERANDS is checked against the table"); )*
                    } )*
                }
                ops
            }

            /// The instruction `opcode` with operands `ops` (in table order),
            /// or `None` when their number or types do not match the table.
            /// Field ranges are not checked here: see [`Instruction::check`].
            pub fn from_operands(opcode: Opcode, ops: &[Operand]) -> Option<Instruction> {
                match opcode {
                    $( Opcode::$variant => {
                        let mut it = ops.iter().copied();
                        let ins = Instruction::$variant {
                            $( $field: <$fty as FieldValue>::from_operand(it.next()?)?, )*
                        };
                        match it.next() {
                            Some(_) => None,
                            None => Some(ins),
                        }
                    } )*
                }
            }
        }
    };
}

instructions! {
    // ---- Control (ICU): valid in every queue --------------------------------
    /// Issue nothing for `n` cycles.
    Nop = 0x01 "nop" Control {
        syntax: "{n}", latency: None, issue: Field("n"), occupancy: Const(0),
        operands: { n: u32 = uint(24, 1, (1 << 24) - 1) },
    }
    /// Execute the previous (non-control) instruction `n` more times, `d` cycles apart, address fields advanced by `k * stride` words.
    Repeat = 0x02 "repeat" Control {
        syntax: "{n}, {d}, {stride}", latency: None, issue: Product("n", "d"), occupancy: Const(0),
        operands: { n: u32 = uint(16, 1, 0xffff), d: u32 = uint(16, 1, 0xffff), stride: i32 = OperandKind::Int { bits: 16 } },
    }
    /// Park the queue until a `notify`.
    Sync = 0x03 "sync" Control {
        syntax: "", latency: None, issue: Const(1), occupancy: Const(0),
        operands: {},
    }
    /// Release every parked queue; they issue `icu.notify_latency_cycles` later.
    Notify = 0x04 "notify" Control {
        syntax: "", latency: IcuNotify, issue: Const(1), occupancy: Const(0),
        operands: {},
    }
    /// The queue's last instruction.
    Halt = 0x05 "halt" Control {
        syntax: "", latency: None, issue: Const(1), occupancy: Const(0),
        operands: {},
    }

    // ---- MEM ------------------------------------------------------------------
    /// Word `addr` of the slice onto stream `dst`.
    Read = 0x10 "read" Mem {
        syntax: "{addr}, {dst}", latency: MemRead, issue: Const(1), occupancy: Const(1),
        operands: { addr: u32 = Addr, dst: Stream = write(1) },
    }
    /// The vector on stream `src` into word `addr`.
    Write = 0x11 "write" Mem {
        syntax: "{addr}, {src}", latency: MemWrite, issue: Const(1), occupancy: Const(1),
        operands: { addr: u32 = Addr, src: Stream = read(1) },
    }
    /// Lane `l` of `dst` = byte `l` of word `base + idx[l]` (`idx`: u16 vector on 2 streams).
    Gather = 0x12 "gather" Mem {
        syntax: "{idx} -> {dst}, {base}", latency: MemRead, issue: Const(1), occupancy: Const(1),
        operands: { idx: Stream = read(2), dst: Stream = write(1), base: u32 = Addr },
    }
    /// Byte `l` of `val` into lane `l` of word `base + idx[l]` (`idx`: u16 vector on 2 streams).
    Scatter = 0x13 "scatter" Mem {
        syntax: "{idx}, {val}, {base}", latency: MemWrite, issue: Const(1), occupancy: Const(1),
        operands: { idx: Stream = read(2), val: Stream = read(1), base: u32 = Addr },
    }

    // ---- VXM: f32 operands are 4-stream groups ------------------------------------
    /// f32 `dst = a + b`.
    Fadd = 0x20 "fadd" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = a - b`.
    Fsub = 0x21 "fsub" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = a * b`.
    Fmul = 0x22 "fmul" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = a / b`.
    Fdiv = 0x23 "fdiv" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmSpecial, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = max(a, b)` (IEEE maxNum: a NaN operand yields the other).
    Fmax = 0x24 "fmax" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = min(a, b)` (IEEE minNum: a NaN operand yields the other).
    Fmin = 0x25 "fmin" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = sqrt(a)`.
    Fsqrt = 0x26 "fsqrt" Vxm {
        syntax: "{a} -> {dst}", latency: VxmSpecial, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = exp(a)` (the contract's `exp`, docs/q35-format.md 8).
    Fexp = 0x27 "fexp" Vxm {
        syntax: "{a} -> {dst}", latency: VxmSpecial, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = -a`.
    Fneg = 0x28 "fneg" Vxm {
        syntax: "{a} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 `dst = |a|`.
    Fabs = 0x29 "fabs" Vxm {
        syntax: "{a} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), dst: Stream = write(4) },
    }
    /// Every f32 lane of `dst` = the immediate `imm`.
    Fconst = 0x2a "fconst" Vxm {
        syntax: "{imm} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { imm: F32Imm = F32, dst: Stream = write(4) },
    }
    /// i32 to f32, round to nearest even.
    I32tof32 = 0x2b "i32tof32" Vxm {
        syntax: "{a} -> {dst}", latency: VxmConvert, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), dst: Stream = write(4) },
    }
    /// f32 to i8: round half away from zero, clamp to -127..=127 (NaN gives 0).
    F32toi8 = 0x2c "f32toi8" Vxm {
        syntax: "{a} -> {dst}", latency: VxmConvert, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), dst: Stream = write(1) },
    }
    /// f16 (2 streams) to f32, exact.
    F16tof32 = 0x2d "f16tof32" Vxm {
        syntax: "{a} -> {dst}", latency: VxmConvert, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(2), dst: Stream = write(4) },
    }
    /// i8 (1 stream) to i32, sign-extended.
    I8toi32 = 0x2e "i8toi32" Vxm {
        syntax: "{a} -> {dst}", latency: VxmConvert, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(1), dst: Stream = write(4) },
    }
    /// i32 `dst = a + b`, wrapping.
    Iadd32 = 0x2f "iadd32" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// u8 mask `dst = (a < b) as u8` on f32 (false when either is NaN).
    Fcmplt = 0x30 "fcmplt" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(1) },
    }
    /// u8 mask `dst = (a < b) as u8` on i32.
    Icmplt = 0x31 "icmplt" Vxm {
        syntax: "{a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { a: Stream = read(4), b: Stream = read(4), dst: Stream = write(1) },
    }
    /// 32-bit `dst = if m != 0 { a } else { b }` (`m`: u8 mask on 1 stream).
    Select = 0x32 "select" Vxm {
        syntax: "{m}, {a}, {b} -> {dst}", latency: VxmAlu, issue: Const(1), occupancy: Const(1),
        operands: { m: Stream = read(1), a: Stream = read(4), b: Stream = read(4), dst: Stream = write(4) },
    }
    /// 3.5-bit weight decode: 7 streams of pair codes to 16 int8 streams (`m4 * c4`, `m3 * c3`).
    Unpack35 = 0x33 "unpack35" Vxm {
        syntax: "{src} -> {dst}, {m4}, {m3}", latency: VxmConvert, issue: Const(1), occupancy: Const(1),
        operands: { src: Stream = read(7), dst: Stream = write(16), m4: u32 = uint(5, 1, 16), m3: u32 = uint(6, 1, 32) },
    }

    // ---- SXM ------------------------------------------------------------------
    /// Element `l` of `dst` = element `l + n` of `src` if `l + n < w`, else 0 (an element is one lane of the `ew`-stream group: 320 of them whatever `ew`).
    Shift = 0x40 "shift" Sxm {
        syntax: "{src} -> {dst}, {n}, {w}, {ew}", latency: SxmShift, issue: Const(1), occupancy: Const(1),
        operands: {
            src: Stream = read_ew(), dst: Stream = write_ew(),
            n: u32 = uint(9, 0, LANES), w: u32 = uint(9, 1, LANES),
            ew: ElemWidth = OperandKind::ElemWidth,
        },
    }
    /// Every element of `dst` = element `l` of `src` (lane `l` of the `ew`-stream group).
    Bcast = 0x41 "bcast" Sxm {
        syntax: "{src} -> {dst}, {l}, {ew}", latency: SxmPermute, issue: Const(1), occupancy: Const(1),
        operands: {
            src: Stream = read_ew(), dst: Stream = write_ew(),
            l: u32 = uint(9, 0, LANES - 1), ew: ElemWidth = OperandKind::ElemWidth,
        },
    }
    /// Element `l` of `dst` = element `map[l]` of `src` (`map`: a table of 320 lane indices, whatever `ew`).
    Permute = 0x42 "permute" Sxm {
        syntax: "{src} -> {dst}, {map}, {ew}", latency: SxmPermute, issue: Const(1), occupancy: Const(1),
        operands: {
            src: Stream = read_ew(), dst: Stream = write_ew(),
            map: TableId = OperandKind::Table, ew: ElemWidth = OperandKind::ElemWidth,
        },
    }
    /// 16 x 16 byte transpose within each superlane, streams `src .. src+15` to `dst .. dst+15`.
    Transpose = 0x43 "transpose" Sxm {
        syntax: "{src} -> {dst}", latency: SxmTranspose, issue: Const(1), occupancy: Const(1),
        operands: { src: Stream = read(16), dst: Stream = write(16) },
    }

    // ---- MXM ------------------------------------------------------------------
    /// Load `n` int8 weight rows into the shadow buffer, `k` streams (`src .. src+k-1`) a cycle.
    Lw = 0x50 "lw" Mxm {
        syntax: "{src}, {k}, {n}", latency: None, issue: Const(1), occupancy: CeilDiv("n", "k"),
        operands: {
            src: Stream = OperandKind::Stream { access: Access::Read, group: GroupSize::CountOf("k") },
            k: u32 = uint(6, 1, 32), n: u32 = uint(9, 1, 320),
        },
    }
    /// The shadow weight buffer becomes the active one.
    Iw = 0x51 "iw" Mxm {
        syntax: "", latency: MxmSwap, issue: Const(1), occupancy: Const(1),
        operands: {},
    }
    /// One int8 vector through the plane; int32 column sums onto the 4-stream group `dst`.
    Mm = 0x52 "mm" Mxm {
        syntax: "{src} -> {dst}, {acc}", latency: MxmPass, issue: Const(1), occupancy: Const(1),
        operands: { src: Stream = read(1), dst: Stream = write(4), acc: Acc = OperandKind::Acc },
    }

    // ---- C2C: one queue per chip-to-chip link -----------------------------------
    /// The vector on stream `src` onto the queue's link; it arrives at the neighbour `c2c.link_latency_cycles` later and holds the link for `Target::c2c_vector_cycles`.
    Send = 0x60 "send" C2c {
        syntax: "{src}", latency: C2cLink, issue: Const(1), occupancy: Const(1),
        operands: { src: Stream = read(1) },
    }
    /// The oldest vector arrived on the queue's link onto stream `dst`; none arrived by the issue cycle is a hazard.
    Recv = 0x61 "recv" C2c {
        syntax: "{dst}", latency: C2cReceive, issue: Const(1), occupancy: Const(1),
        operands: { dst: Stream = write(1) },
    }
    /// The oldest vector arrived on link `link` onto the queue's link, untouched (a route's intermediate hop).
    Fwd = 0x62 "fwd" C2c {
        syntax: "{link}", latency: C2cLink, issue: Const(1), occupancy: Const(1),
        operands: { link: u32 = uint(4, 0, 15) },
    }
}

/// Compile-time check: no instruction has more operands than [`Operands`] holds.
const _: () = {
    let mut i = 0;
    while i < COUNT {
        assert!(INSTRUCTIONS[i].operands.len() <= MAX_OPERANDS);
        i += 1;
    }
};
