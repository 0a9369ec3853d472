//! The lpu-v1 instruction set, defined once.
//!
//! docs/isa.md is the normative machine model; this crate is its executable
//! form for everything but execution (the simulator `q35-sim` has the
//! semantics and timing). One table, [`table`]'s `instructions!`
//! invocation, defines every instruction; everything else is derived from it:
//!
//! - [`Opcode`], [`Instruction`] (typed fields), [`INSTRUCTIONS`]
//!   ([`InstrInfo`]: unit, syntax, operand bit fields, [`LatencyClass`],
//!   issue cycles, occupancy, doc);
//! - [`Instruction::reads`] / [`Instruction::writes`] (stream groups, for
//!   hazard checks and scheduling), [`Instruction::check`] (field ranges);
//! - [`queue`]: [`QueueId`], the 126 queues (16 of them chip-to-chip links) and the units they drive;
//! - [`program`]: [`Program`] (per-queue lists, MEM contents, tables,
//!   symbols) and its rules ([`Program::validate`]); [`lpuasm`]: the
//!   `.lpuasm` assembler ([`assemble`]) and disassembler
//!   ([`Program::to_lpuasm`]); [`lpubin`]: conversion to and from the
//!   `.lpubin` container;
//! - [`target`]: the table against a `q35_target::Target`: [`cycles`] of a
//!   latency class, queue positions, [`check_target`],
//!   [`Program::validate_target`];
//! - [`markdown_table`]: the instruction table of docs/isa.md.

pub mod asm;
pub mod doc;
pub mod encode;
pub mod info;
pub mod instr;
pub mod lpuasm;
pub mod lpubin;
pub mod operand;
pub mod program;
pub mod queue;
pub mod table;
pub mod target;

pub use asm::ParseError;
pub use doc::markdown_table;
pub use encode::DecodeError;
pub use info::{CycleExpr, InstrInfo, LatencyClass, OPCODE_BITS, Unit};
pub use instr::FieldError;
pub use lpuasm::{AsmError, assemble};
pub use lpubin::LpubinError;
pub use operand::{
    Acc, Dir, ElemWidth, F32Imm, Operand, OperandKind, OperandSpec, Operands,
    STREAMS_PER_DIRECTION, Stream, StreamGroup, StreamGroups, TableId, VECTOR_BYTES,
};
pub use program::{DType, MemData, MemInit, Placement, Program, ProgramError, Symbol, Table};
pub use q35_lpubin::SymbolKind;
pub use queue::{C2C_LINKS, Hemisphere, QUEUE_COUNT, QueueId, QueueKind, UnknownQueue};
pub use table::{INSTRUCTIONS, Instruction, Opcode};
pub use target::{TargetMismatch, check_target, cycles};
