//! A whole program: per-queue instruction lists plus what makes a
//! hand-written program runnable (initial MEM contents, tables, symbols to
//! dump), and the rules on where an instruction may stand
//! ([`Program::validate`], which the assembler applies with locations and
//! the simulator applies on load). The `.lpuasm` text form is in
//! [`crate::lpuasm`].

use std::collections::BTreeMap;
use std::fmt;

use half::f16;

use crate::info::Unit;
use crate::operand::{Dir, VECTOR_BYTES};
use crate::queue::{Hemisphere, QueueId, QueueKind};
use crate::table::Instruction;

/// Highest word address the ISA can name (16-bit address fields).
pub const MAX_WORD_ADDRESS: u32 = 0xffff;

/// Element type of MEM contents and symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer (tables, gather/scatter maps).
    U16,
    /// Signed 32-bit integer.
    I32,
    /// IEEE binary16.
    F16,
    /// IEEE binary32.
    F32,
}

impl DType {
    /// Every type, in assembly order.
    pub const ALL: [DType; 7] = [
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::F16,
        DType::F32,
    ];

    /// Bytes per element (= MEM words per vector of elements).
    pub const fn bytes(self) -> u32 {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 => 2,
            DType::I32 | DType::F32 => 4,
        }
    }

    /// The assembly name.
    pub const fn name(self) -> &'static str {
        match self {
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::I32 => "i32",
            DType::F16 => "f16",
            DType::F32 => "f32",
        }
    }

    /// The type called `name`.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Parses one element into its little-endian bit pattern: integers in
    /// decimal within the type's range (`0x` hex for the unsigned types);
    /// floats as decimals (f16 rounded from the f64 value) or as a `0x` bit
    /// pattern.
    pub fn parse_value(self, text: &str) -> Option<u32> {
        let int = |min: i64, max: i64| -> Option<u32> {
            let v: i64 = text.parse().ok()?;
            if (min..=max).contains(&v) {
                Some(v as u32 & mask(self.bytes()))
            } else {
                None
            }
        };
        let uint = |max: u64| -> Option<u32> {
            let v = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None if text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok()?,
                None => return None,
            };
            if v <= max { Some(v as u32) } else { None }
        };
        match self {
            DType::I8 => int(-128, 127),
            DType::U8 => uint(0xff),
            DType::I16 => int(-32768, 32767),
            DType::U16 => uint(0xffff),
            DType::I32 => int(i64::from(i32::MIN), i64::from(i32::MAX)),
            DType::F16 => match text.strip_prefix("0x") {
                Some(hex) => u16::from_str_radix(hex, 16).ok().map(u32::from),
                None => text
                    .parse::<f64>()
                    .ok()
                    .map(|v| u32::from(f16::from_f64(v).to_bits())),
            },
            DType::F32 => crate::asm::parse_f32(text).map(|f| f.0),
        }
    }

    /// Writes one element (a bit pattern) so that [`DType::parse_value`]
    /// reads back the same bits.
    pub fn format_value(self, bits: u32) -> String {
        match self {
            DType::I8 => (bits as u8 as i8).to_string(),
            DType::U8 => (bits as u8).to_string(),
            DType::I16 => (bits as u16 as i16).to_string(),
            DType::U16 => (bits as u16).to_string(),
            DType::I32 => (bits as i32).to_string(),
            DType::F16 => {
                let v = f16::from_bits(bits as u16);
                if v.is_nan() {
                    format!("{:#06x}", bits as u16)
                } else {
                    format!("{:?}", v.to_f32())
                }
            }
            DType::F32 => crate::operand::F32Imm(bits).to_string(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const fn mask(bytes: u32) -> u32 {
    if bytes >= 4 {
        u32::MAX
    } else {
        (1 << (8 * bytes)) - 1
    }
}

/// Elements of MEM contents: a list, or one value repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemData {
    /// The elements, as little-endian bit patterns, in order.
    Values(Vec<u32>),
    /// `count` copies of one element.
    Fill {
        /// The element's bit pattern.
        value: u32,
        /// How many elements.
        count: u32,
    },
}

impl MemData {
    /// Number of elements.
    pub fn len(&self) -> u32 {
        match self {
            MemData::Values(v) => u32::try_from(v.len()).unwrap_or(u32::MAX),
            MemData::Fill { count, .. } => *count,
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i`.
    pub fn get(&self, i: u32) -> Option<u32> {
        match self {
            MemData::Values(v) => v.get(i as usize).copied(),
            MemData::Fill { value, count } => (i < *count).then_some(*value),
        }
    }
}

/// Where a tensor lives in MEM: one slice, or one slice per byte of its
/// element type (`mem.w3+mem.w2+mem.w1+mem.w0 @0`), starting at word `addr`.
///
/// Elements are packed lane-wise: element `i` goes to lane `i mod 320` of
/// vector `v = i div 320`. With one slice, vector `v` of `b`-byte elements
/// takes words `addr + v*b .. addr + v*b + b`, word `j` holding byte `j`
/// (little-endian) of every element. With `b` slices, byte `j` goes to word
/// `addr + v` of slice `j`: the layout whose words, read on one cycle by `b`
/// slices, arrive as one stream group. Lanes past the last element are 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The MEM slices (`mem.*` queues): one, or one per element byte.
    pub slices: Vec<QueueId>,
    /// First word.
    pub addr: u32,
}

impl Placement {
    /// Words from `addr` that `elements` elements of `dtype` take in each
    /// of the slices.
    pub fn words_per_slice(&self, dtype: DType, elements: u64) -> u64 {
        let vectors = elements.div_ceil(u64::from(VECTOR_BYTES));
        if self.slices.len() == 1 {
            vectors * u64::from(dtype.bytes())
        } else {
            vectors
        }
    }

    /// Slice and word of byte `j` of vector `v`.
    pub fn word_of(&self, dtype: DType, v: u32, j: u32) -> Option<(QueueId, u32)> {
        if self.slices.len() == 1 {
            Some((self.slices[0], self.addr + v * dtype.bytes() + j))
        } else {
            Some((*self.slices.get(j as usize)?, self.addr + v))
        }
    }

    /// Checks that the slices are MEM slices, one or one per byte of
    /// `dtype`, distinct, and that `elements` elements fit below the last
    /// address.
    pub fn check(&self, dtype: DType, elements: u64) -> Result<(), String> {
        if let Some(q) = self.slices.iter().find(|q| q.unit() != Unit::Mem) {
            return Err(format!("{q} is not a MEM slice"));
        }
        let n = self.slices.len();
        if n != 1 && n != dtype.bytes() as usize {
            return Err(format!(
                "{n} slices for {dtype}: give one, or one per byte ({})",
                dtype.bytes()
            ));
        }
        for (i, q) in self.slices.iter().enumerate() {
            if self.slices[..i].contains(q) {
                return Err(format!("slice {q} is listed twice"));
            }
        }
        let end = u64::from(self.addr) + self.words_per_slice(dtype, elements);
        if end > u64::from(MAX_WORD_ADDRESS) + 1 {
            return Err(format!(
                "words {}..{end} run past the last address {MAX_WORD_ADDRESS}",
                self.addr
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, q) in self.slices.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{q}")?;
        }
        write!(f, " @{}", self.addr)
    }
}

/// Initial contents of MEM words (`.mem`), packed as [`Placement`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemInit {
    /// Where.
    pub at: Placement,
    /// Element type.
    pub dtype: DType,
    /// The elements.
    pub data: MemData,
}

impl MemInit {
    /// The words it sets: (slice, address, contents), in slice-list then
    /// address order.
    pub fn words(&self) -> Vec<(QueueId, u32, [u8; VECTOR_BYTES as usize])> {
        let b = self.dtype.bytes();
        let vectors = self.data.len().div_ceil(VECTOR_BYTES);
        let mut out = Vec::new();
        for j in 0..b {
            for v in 0..vectors {
                let mut word = [0u8; VECTOR_BYTES as usize];
                for (lane, byte) in word.iter_mut().enumerate() {
                    let bits = self.data.get(v * VECTOR_BYTES + lane as u32).unwrap_or(0);
                    *byte = (bits >> (8 * j)) as u8;
                }
                if let Some((q, addr)) = self.at.word_of(self.dtype, v, j) {
                    out.push((q, addr, word));
                }
            }
        }
        out.sort_by_key(|&(q, addr, _)| (self.at.slices.iter().position(|&s| s == q), addr));
        out
    }
}

/// A named table of u16 values (`.table`), e.g. a `permute` map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its name in assembly.
    pub name: String,
    /// The values.
    pub values: Vec<u16>,
}

/// A named tensor in MEM (`.symbol`): what a host binds (inputs, outputs,
/// the KV cache, ...) and what `q35sim run --dump` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Name.
    pub name: String,
    /// What it is to the host (`output` unless the program says).
    pub kind: q35_lpubin::SymbolKind,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub dims: Vec<u32>,
    /// Where (elements packed as [`Placement`] says).
    pub at: Placement,
}

impl Symbol {
    /// Number of elements (saturating).
    pub fn elements(&self) -> u64 {
        self.dims
            .iter()
            .fold(1u64, |a, &d| a.saturating_mul(u64::from(d)))
    }
}

/// A program for the machine: per-queue instruction lists and data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// Target name (`.target`), e.g. `lpu-v1`.
    pub target: String,
    /// Tables; a [`crate::TableId`] is an index into this list.
    pub tables: Vec<Table>,
    /// Initial MEM contents (MEM is zero elsewhere).
    pub mem: Vec<MemInit>,
    /// Symbols to dump.
    pub symbols: Vec<Symbol>,
    /// Instruction lists of the queues that have one.
    pub queues: BTreeMap<QueueId, Vec<Instruction>>,
}

/// A program breaks a rule of docs/isa.md (an instruction in the wrong
/// queue, `repeat` with nothing to repeat, overlapping data, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// An instruction breaks a placement or field rule.
    #[error("queue {queue}, instruction {index} (`{instruction}`): {message}")]
    Instruction {
        /// The queue.
        queue: QueueId,
        /// Index in the queue's list.
        index: usize,
        /// The instruction, as assembly.
        instruction: String,
        /// What is wrong.
        message: String,
    },
    /// A `.mem`, `.table` or `.symbol` entry is wrong.
    #[error("{what}: {message}")]
    Data {
        /// Which entry (`.mem mem.w0 @4`, `.table rev`, ...).
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// Checks that instruction `ins`, in `queue` after `prev` (`None`: first), may
/// stand there: field ranges, unit of the queue, `repeat` placement, MXM
/// stream directions, table references.
pub fn check_placement(
    queue: QueueId,
    prev: Option<&Instruction>,
    ins: &Instruction,
    tables: &[Table],
) -> Result<(), String> {
    ins.check().map_err(|e| e.to_string())?;
    check_decoded_placement(queue, prev, ins, tables)
}

/// [`check_placement`] of an instruction [`Instruction::decode`] returned,
/// whose field ranges that decode has already checked (the same
/// [`Instruction::check`]): every other rule.
pub fn check_decoded_placement(
    queue: QueueId,
    prev: Option<&Instruction>,
    ins: &Instruction,
    tables: &[Table],
) -> Result<(), String> {
    let unit = ins.unit();
    if !queue.accepts(unit) {
        return Err(format!(
            "`{}` is a {unit} instruction, not valid in {} queue {queue}",
            ins.mnemonic(),
            queue.unit()
        ));
    }
    if let Instruction::Repeat { .. } = ins {
        match prev {
            None => return Err("`repeat` is the first instruction of its queue".into()),
            Some(p) if p.unit() == Unit::Control => {
                return Err(format!(
                    "`repeat` must follow a unit instruction, not `{}`",
                    p.mnemonic()
                ));
            }
            Some(_) => {}
        }
    }
    // The west MXM consumes westward streams and produces eastward ones; the
    // east MXM the reverse (docs/isa.md 1).
    if let QueueKind::Mxm(_) = queue.kind() {
        let (input, output) = match queue.hemisphere() {
            Some(Hemisphere::West) => (Dir::West, Dir::East),
            _ => (Dir::East, Dir::West),
        };
        for g in ins.reads().iter() {
            if g.first.dir != input {
                return Err(format!(
                    "{queue} reads {}-flowing streams, not {}",
                    dir_name(input),
                    g.first
                ));
            }
        }
        for g in ins.writes().iter() {
            if g.first.dir != output {
                return Err(format!(
                    "{queue} writes {}-flowing streams, not {}",
                    dir_name(output),
                    g.first
                ));
            }
        }
    }
    if let Instruction::Permute { map, ew, .. } = ins {
        let table = tables
            .get(usize::from(map.0))
            .ok_or_else(|| format!("table #{} does not exist ({} tables)", map.0, tables.len()))?;
        // One entry per lane: element `l` is lane `l` of the `ew`-stream
        // group, so a map has VECTOR_BYTES entries whatever `ew`.
        let n = VECTOR_BYTES;
        if table.values.len() != n as usize {
            return Err(format!(
                "table `{}` has {} entries; a map of {}-byte elements needs {n} (one per lane)",
                table.name,
                table.values.len(),
                ew.bytes()
            ));
        }
        if let Some(bad) = table.values.iter().find(|&&v| u32::from(v) >= n) {
            return Err(format!(
                "table `{}` entry {bad} is not a lane index < {n}",
                table.name
            ));
        }
    }
    Ok(())
}

/// Whether `s` is a name (`.target`, `.table`, `.symbol`): a letter or `_`,
/// then letters, digits, `_`, `.` and `-`.
pub fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn dir_name(d: Dir) -> &'static str {
    match d {
        Dir::East => "east",
        Dir::West => "west",
    }
}

/// Checks one `.mem` entry on its own.
pub fn check_mem(init: &MemInit) -> Result<(), String> {
    if init.data.is_empty() {
        return Err("no elements".into());
    }
    init.at.check(init.dtype, u64::from(init.data.len()))
}

/// Checks one `.symbol` entry on its own.
pub fn check_symbol(sym: &Symbol) -> Result<(), String> {
    sym.at.check(sym.dtype, sym.elements())
}

impl Program {
    /// An empty program for `target`.
    pub fn new(target: &str) -> Program {
        Program {
            target: target.to_string(),
            ..Program::default()
        }
    }

    /// The index of the table called `name`.
    pub fn table_id(&self, name: &str) -> Option<crate::TableId> {
        let i = self.tables.iter().position(|t| t.name == name)?;
        u16::try_from(i).ok().map(crate::TableId)
    }

    /// Checks every rule a program must obey before it runs (what the
    /// assembler reports with locations): instruction fields and placement,
    /// tables, MEM contents (in MEM slices, in range, not overlapping),
    /// symbols. A missing `halt` is not checked: the simulator reports a
    /// queue that runs past its end as a hazard.
    pub fn validate(&self) -> Result<(), ProgramError> {
        if !is_ident(&self.target) {
            return Err(ProgramError::Data {
                what: ".target".into(),
                message: format!("`{}` is not a target name", self.target),
            });
        }
        let mut names = BTreeMap::new();
        for t in &self.tables {
            if !is_ident(&t.name) {
                return Err(ProgramError::Data {
                    what: format!(".table {}", t.name),
                    message: "not a name".into(),
                });
            }
            if names.insert(t.name.as_str(), ()).is_some() {
                return Err(ProgramError::Data {
                    what: format!(".table {}", t.name),
                    message: "defined twice".into(),
                });
            }
        }
        if self.tables.len() > usize::from(u16::MAX) + 1 {
            return Err(ProgramError::Data {
                what: ".table".into(),
                message: "more than 65536 tables".into(),
            });
        }
        for (&queue, list) in &self.queues {
            for (index, ins) in list.iter().enumerate() {
                let prev = index.checked_sub(1).and_then(|i| list.get(i));
                check_placement(queue, prev, ins, &self.tables).map_err(|message| {
                    ProgramError::Instruction {
                        queue,
                        index,
                        instruction: ins.to_string(),
                        message,
                    }
                })?;
            }
        }
        let mut ranges: Vec<(QueueId, u64, u64)> = Vec::new();
        for init in &self.mem {
            let what = format!(".mem {}", init.at);
            check_mem(init).map_err(|message| ProgramError::Data {
                what: what.clone(),
                message,
            })?;
            let words = init
                .at
                .words_per_slice(init.dtype, u64::from(init.data.len()));
            let (lo, hi) = (u64::from(init.at.addr), u64::from(init.at.addr) + words);
            for &q in &init.at.slices {
                if let Some(&(_, a, b)) =
                    ranges.iter().find(|&&(r, a, b)| r == q && lo < b && a < hi)
                {
                    return Err(ProgramError::Data {
                        what,
                        message: format!("{q} words {lo}..{hi} overlap words {a}..{b} set earlier"),
                    });
                }
            }
            ranges.extend(init.at.slices.iter().map(|&q| (q, lo, hi)));
        }
        let mut names = BTreeMap::new();
        for sym in &self.symbols {
            let what = format!(".symbol {}", sym.name);
            if !is_ident(&sym.name) {
                return Err(ProgramError::Data {
                    what,
                    message: "not a name".into(),
                });
            }
            if names.insert(sym.name.as_str(), ()).is_some() {
                return Err(ProgramError::Data {
                    what,
                    message: "defined twice".into(),
                });
            }
            check_symbol(sym).map_err(|message| ProgramError::Data { what, message })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_wise_packing() {
        let q: QueueId = "mem.w0".parse().expect("queue");
        let data = MemData::Values((0..321).map(|i| i as u32 | 0x100).collect());
        let init = MemInit {
            at: Placement {
                slices: vec![q],
                addr: 4,
            },
            dtype: DType::I16,
            data: data.clone(),
        };
        let words = init.words();
        let addrs: Vec<u32> = words.iter().map(|w| w.1).collect();
        assert_eq!(addrs, [4, 5, 6, 7], "321 elements: 2 vectors of 2 words");
        assert_eq!((words[0].2[5], words[1].2[5]), (5, 1));
        assert_eq!(
            (words[2].2[0], words[3].2[0]),
            (64, 1),
            "element 320 = 0x140"
        );
        assert_eq!(words[2].2[1], 0);
        // One slice per byte: byte j of vector v at word 4 + v of slice j.
        let q1: QueueId = "mem.w1".parse().expect("queue");
        let split = MemInit {
            at: Placement {
                slices: vec![q, q1],
                addr: 4,
            },
            dtype: DType::I16,
            data,
        };
        let words = split.words();
        let place: Vec<(QueueId, u32)> = words.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(place, [(q, 4), (q, 5), (q1, 4), (q1, 5)]);
        assert_eq!((words[0].2[5], words[2].2[5]), (5, 1));
        assert_eq!(words[1].2[0], 64);
        assert_eq!(
            split.at.check(DType::F32, 1),
            Err("2 slices for f32: give one, or one per byte (4)".into())
        );
    }

    #[test]
    fn values_round_trip_as_text() {
        for t in DType::ALL {
            for text in [
                "0", "1", "-1", "127", "-128", "255", "65535", "1.5", "-0.0", "0x7e01",
            ] {
                if let Some(bits) = t.parse_value(text) {
                    let back = t.format_value(bits);
                    assert_eq!(t.parse_value(&back), Some(bits), "{t} {text} -> {back}");
                }
            }
        }
        assert_eq!(DType::I8.parse_value("128"), None);
        assert_eq!(DType::U8.parse_value("-1"), None);
        assert_eq!(DType::I8.parse_value("-1"), Some(0xff));
    }
}
