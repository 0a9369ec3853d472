//! A [`Program`] to and from the `.lpubin` container (docs/lpubin.md), which
//! knows instructions only as 64-bit words.
//!
//! - Queues: queue id = [`QueueId::index`], one encoded word per instruction.
//! - MEM: word size 320; MEM slice number = the `mem.*` queue's dense index
//!   (`mem.w43` = 0 .. `mem.e43` = 87, west to east); the `.mem` contents
//!   become byte extents, contiguous words of one slice merged.
//! - Tables: named byte tables of little-endian u16. The container sorts
//!   tables by name, so [`Program::to_lpubin`] writes the program's tables
//!   in name order and renumbers every table operand to match.
//! - Symbols: their kind, placement as [`Placement`] lays it out (one
//!   extent, or one per byte plane), layout note [`LAYOUT_ONE_SLICE`] or
//!   [`LAYOUT_PLANES`].
//!
//! [`Program::from_lpubin`] reads the same back. The typed `.mem` directives
//! come back as `u8` contents of one extent each, so `lpubin -> Program ->
//! lpubin` gives the identical bytes, and `Program -> lpubin -> Program`
//! gives the same instructions, tables (in name order), symbols and MEM image.

use std::collections::BTreeMap;

use q35_lpubin::{Builder, ElemType, LpuBinary, MemRange};
use q35_target::Target;

use crate::operand::{Operand, Operands, TableId, VECTOR_BYTES};
use crate::program::{DType, MemData, MemInit, Placement, Program, ProgramError, Symbol, Table};
use crate::queue::QueueId;
use crate::table::Instruction;
use crate::{DecodeError, FieldError, Unit};

/// Layout note of a symbol on one slice.
pub const LAYOUT_ONE_SLICE: &str = "q35-isa lane-wise, byte planes in consecutive words";
/// Layout note of a symbol with one slice per byte plane.
pub const LAYOUT_PLANES: &str = "q35-isa lane-wise, one slice per byte plane";

/// Why a program cannot become a binary, or a binary a program.
#[derive(Debug, thiserror::Error)]
pub enum LpubinError {
    /// The program breaks a rule of docs/isa.md.
    #[error("invalid program: {0}")]
    Program(#[from] ProgramError),
    /// An instruction does not encode.
    #[error("queue {queue}, instruction {index}: {source}")]
    Encode {
        /// The queue.
        queue: QueueId,
        /// Index in the queue.
        index: usize,
        /// The field at fault.
        source: FieldError,
    },
    /// A word of the binary is not an instruction.
    #[error("queue {queue}, instruction {index}: {source}")]
    Decode {
        /// The queue.
        queue: QueueId,
        /// Index in the queue.
        index: usize,
        /// Why.
        source: DecodeError,
    },
    /// A queue id or MEM slice number names no queue or slice of lpu-v1.
    #[error("{what} {id} is not a {expected} of lpu-v1")]
    BadId {
        /// `queue` or `MEM slice`.
        what: &'static str,
        /// The number.
        id: u16,
        /// What it should have been.
        expected: &'static str,
    },
    /// The binary's MEM word size is not 320 bytes.
    #[error("MEM word size {0} bytes; lpu-v1 words are 320 bytes")]
    WordBytes(u32),
    /// A symbol or table of the binary that a program cannot express.
    #[error("{what} `{name}`: {message}")]
    Unsupported {
        /// `symbol` or `table`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Why.
        message: String,
    },
    /// The container refused the bytes.
    #[error(transparent)]
    Container(#[from] q35_lpubin::LpuBinError),
}

/// The container's element type of `dtype`.
pub fn elem_type(dtype: DType) -> ElemType {
    match dtype {
        DType::I8 => ElemType::I8,
        DType::U8 => ElemType::U8,
        DType::I16 => ElemType::I16,
        DType::U16 => ElemType::U16,
        DType::I32 => ElemType::I32,
        DType::F16 => ElemType::F16,
        DType::F32 => ElemType::F32,
    }
}

/// The ISA's element type of the container's `elem`.
pub fn dtype_of(elem: ElemType) -> DType {
    match elem {
        ElemType::I8 => DType::I8,
        ElemType::U8 => DType::U8,
        ElemType::I16 => DType::I16,
        ElemType::U16 => DType::U16,
        ElemType::I32 => DType::I32,
        ElemType::F16 => DType::F16,
        ElemType::F32 => DType::F32,
    }
}

/// `ins` with every table operand renumbered by `map` (old index -> new).
fn renumber_tables(ins: &Instruction, map: &[u16]) -> Instruction {
    let mut ops = Operands::new();
    for &op in ins.operands().iter() {
        let op = match op {
            Operand::Table(TableId(t)) => {
                Operand::Table(TableId(map.get(usize::from(t)).copied().unwrap_or(t)))
            }
            other => other,
        };
        ops.push(op);
    }
    Instruction::from_operands(ins.opcode(), &ops).unwrap_or(*ins)
}

fn queue_of(id: u16) -> Result<QueueId, LpubinError> {
    QueueId::from_index(id).ok_or(LpubinError::BadId {
        what: "queue",
        id,
        expected: "queue",
    })
}

fn slice_of(id: u16) -> Result<QueueId, LpubinError> {
    QueueId::from_index(id)
        .filter(|q| q.unit() == Unit::Mem)
        .ok_or(LpubinError::BadId {
            what: "MEM slice",
            id,
            expected: "MEM slice",
        })
}

impl Program {
    /// The binary of this program for `target` (its name and description
    /// hash recorded), written by `producer` (e.g. `q35c 0.1.0`). The
    /// program is validated against the target first
    /// ([`Program::validate_target`]). Add metadata, a tokenizer or debug
    /// entries to the returned builder before writing it.
    pub fn to_lpubin(&self, target: &Target, producer: &str) -> Result<Builder, LpubinError> {
        let mut b = self.to_lpubin_program(target, producer)?;
        b.mem_word_bytes(VECTOR_BYTES);
        for (slice, first, bytes) in self.mem_extents() {
            b.mem_extent(slice, first, bytes);
        }
        Ok(b)
    }

    /// [`Program::to_lpubin`] without the MEM image: the queues, tables and
    /// symbols, as a further program of a binary takes them
    /// (`q35_lpubin::Builder::program`; its initial MEM contents go into
    /// the file's image, [`Program::mem_extents`]).
    pub fn to_lpubin_program(
        &self,
        target: &Target,
        producer: &str,
    ) -> Result<Builder, LpubinError> {
        self.validate_target(target)?;
        let mut b = Builder::new(self.target.clone(), target.hash().0, producer);
        // Tables in name order; `map[old] = new`.
        let mut order: Vec<usize> = (0..self.tables.len()).collect();
        order.sort_by(|&a, &b| self.tables[a].name.cmp(&self.tables[b].name));
        let mut map = vec![0u16; self.tables.len()];
        for (new, &old) in order.iter().enumerate() {
            // validate() bounds the table count by 65536.
            map[old] = new as u16;
        }
        for &old in &order {
            let t = &self.tables[old];
            let bytes: Vec<u8> = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            b.table(t.name.clone(), bytes);
        }
        for (&queue, list) in &self.queues {
            let words = list
                .iter()
                .enumerate()
                .map(|(index, ins)| {
                    renumber_tables(ins, &map)
                        .encode()
                        .map_err(|source| LpubinError::Encode {
                            queue,
                            index,
                            source,
                        })
                })
                .collect::<Result<Vec<u64>, _>>()?;
            b.queue(queue.index(), words);
        }
        for s in &self.symbols {
            let words = s.at.words_per_slice(s.dtype, s.elements());
            let words = u32::try_from(words).unwrap_or(u32::MAX);
            b.symbol(q35_lpubin::Symbol {
                name: s.name.clone(),
                kind: s.kind,
                elem: elem_type(s.dtype),
                shape: s.dims.iter().map(|&d| u64::from(d)).collect(),
                placement: s
                    .at
                    .slices
                    .iter()
                    .map(|q| MemRange {
                        slice: q.index(),
                        first_word: s.at.addr,
                        words,
                    })
                    .collect(),
                layout: if s.at.slices.len() == 1 {
                    LAYOUT_ONE_SLICE
                } else {
                    LAYOUT_PLANES
                }
                .to_string(),
            });
        }
        Ok(b)
    }

    /// The program's initial MEM contents as extents of whole words
    /// (slice, first word, bytes), sorted, adjacent words merged; a word
    /// two inits write holds the later one's.
    pub fn mem_extents(&self) -> Vec<(u16, u32, Vec<u8>)> {
        let mut words: BTreeMap<(QueueId, u32), [u8; VECTOR_BYTES as usize]> = BTreeMap::new();
        for init in &self.mem {
            for (q, addr, word) in init.words() {
                words.insert((q, addr), word);
            }
        }
        let mut out = Vec::new();
        let mut extent: Option<(QueueId, u32, Vec<u8>)> = None;
        for ((q, addr), word) in words {
            match &mut extent {
                Some((eq, first, bytes))
                    if *eq == q
                        && u64::from(*first) + (bytes.len() / VECTOR_BYTES as usize) as u64
                            == u64::from(addr) =>
                {
                    bytes.extend_from_slice(&word);
                }
                _ => {
                    if let Some((eq, first, bytes)) = extent.take() {
                        out.push((eq.index(), first, bytes));
                    }
                    extent = Some((q, addr, word.to_vec()));
                }
            }
        }
        if let Some((eq, first, bytes)) = extent {
            out.push((eq.index(), first, bytes));
        }
        out
    }

    /// The program a binary for `target` holds (see the module docs for
    /// what comes back how). A binary built for another target (its hash
    /// differs) is refused; the result is validated against the target.
    pub fn from_lpubin(bin: &LpuBinary, target: &Target) -> Result<Program, LpubinError> {
        bin.check_target(&target.hash().0)?;
        let mut p = Program::new(bin.target_name());
        for (name, bytes) in bin.tables() {
            if bytes.len() % 2 != 0 {
                return Err(LpubinError::Unsupported {
                    what: "table",
                    name: name.to_string(),
                    message: format!("{} bytes is not a whole number of u16", bytes.len()),
                });
            }
            let values = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            p.tables.push(Table {
                name: name.to_string(),
                values,
            });
        }
        for queue in bin.queues() {
            let q = queue_of(queue.id())?;
            let list = queue
                .words()
                .iter()
                .enumerate()
                .map(|(index, w)| {
                    Instruction::decode(w).map_err(|source| LpubinError::Decode {
                        queue: q,
                        index,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            p.queues.insert(q, list);
        }
        if let Some(mem) = bin.mem() {
            if mem.word_bytes() != VECTOR_BYTES {
                return Err(LpubinError::WordBytes(mem.word_bytes()));
            }
            for e in mem.extents() {
                p.mem.push(MemInit {
                    at: Placement {
                        slices: vec![slice_of(e.range.slice)?],
                        addr: e.range.first_word,
                    },
                    dtype: DType::U8,
                    data: MemData::Values(e.bytes.iter().map(|&b| u32::from(b)).collect()),
                });
            }
        }
        for s in bin.symbols() {
            let unsupported = |message: String| LpubinError::Unsupported {
                what: "symbol",
                name: s.name.clone(),
                message,
            };
            let dtype = dtype_of(s.elem);
            let dims = s
                .shape
                .iter()
                .map(|&d| {
                    u32::try_from(d).map_err(|_| unsupported(format!("dimension {d} is too large")))
                })
                .collect::<Result<Vec<u32>, _>>()?;
            let slices = s
                .placement
                .iter()
                .map(|r| slice_of(r.slice))
                .collect::<Result<Vec<_>, _>>()?;
            let addr = s.placement.first().map_or(0, |r| r.first_word);
            let sym = Symbol {
                name: s.name.clone(),
                kind: s.kind,
                dtype,
                dims,
                at: Placement { slices, addr },
            };
            let words = sym.at.words_per_slice(dtype, sym.elements());
            let expressible = !s.placement.is_empty()
                && s.placement
                    .iter()
                    .all(|r| r.first_word == addr && u64::from(r.words) == words);
            if !expressible {
                return Err(unsupported(
                    "placement is not one extent or one extent per byte plane at one address"
                        .to_string(),
                ));
            }
            p.symbols.push(sym);
        }
        p.validate_target(target)?;
        Ok(p)
    }
}
