//! The on-disk constants and small enums of the .lpubin format.
//!
//! Everything here is part of the file format (docs/lpubin.md): the numeric
//! codes are written to disk, so changing one is a format version change.

use std::fmt;

/// The 8-byte signature at offset 0, PNG-style: a high-bit byte (catches
/// 7-bit transfers), `LPU`, CR LF (catches line-ending conversion), ^Z (stops
/// a DOS `type`), LF (catches LF -> CRLF conversion).
pub const MAGIC: [u8; 8] = *b"\x89LPU\r\n\x1a\n";
/// The only format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Size of the fixed part of the header, before the two strings.
pub const HEADER_FIXED_LEN: u64 = 56;
/// Size of one section table entry.
pub const SECTION_ENTRY_LEN: u64 = 32;
/// Alignment of the `mem` section and of its data block (one page), so the
/// MEM image maps page by page.
pub const PAGE: u64 = 4096;
/// Alignment of every section but `mem`.
pub const SECTION_ALIGN: u64 = 8;
/// Largest number of dimensions a symbol's shape may have.
pub const MAX_RANK: u8 = 8;
/// Size of one MEM extent record (`mem` section and symbol placements).
pub const EXTENT_LEN: u64 = 12;
/// Size of one debug map entry.
pub const DEBUG_ENTRY_LEN: u64 = 16;

/// The typed sections of format version 1, with their on-disk kind codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SectionKind {
    /// Instruction streams, one per instruction queue.
    Queues,
    /// The MEM image: extents of words and their bytes.
    Mem,
    /// Names a host binds (inputs, outputs, KV cache, ...).
    Symbols,
    /// Model metadata as a UTF-8 JSON object.
    Metadata,
    /// Opaque tokenizer bytes (a tokenizer-only GGUF).
    Tokenizer,
    /// (queue, instruction index) -> source location.
    Debug,
    /// Named small byte tables (SXM permutation maps, ...).
    Tables,
    /// The token embedding as the host looks it up (f32 rows or a Q35
    /// matrix the host dequantizes row by row).
    Embedding,
    /// Further programs over the same MEM image (a prefill chunk, ...):
    /// each with its own queues, symbols, tables and debug map.
    Programs,
}

impl SectionKind {
    /// Every kind, in kind-code order (the order of the section table).
    pub const ALL: [SectionKind; 9] = [
        SectionKind::Queues,
        SectionKind::Mem,
        SectionKind::Symbols,
        SectionKind::Metadata,
        SectionKind::Tokenizer,
        SectionKind::Debug,
        SectionKind::Tables,
        SectionKind::Embedding,
        SectionKind::Programs,
    ];

    /// The kind code written in the section table.
    pub fn id(self) -> u16 {
        match self {
            SectionKind::Queues => 1,
            SectionKind::Mem => 2,
            SectionKind::Symbols => 3,
            SectionKind::Metadata => 4,
            SectionKind::Tokenizer => 5,
            SectionKind::Debug => 6,
            SectionKind::Tables => 7,
            SectionKind::Embedding => 8,
            SectionKind::Programs => 9,
        }
    }

    /// The kind with code `id`, if format version 1 defines it.
    pub fn from_id(id: u16) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// The section's name, as used in docs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Queues => "queues",
            SectionKind::Mem => "mem",
            SectionKind::Symbols => "symbols",
            SectionKind::Metadata => "metadata",
            SectionKind::Tokenizer => "tokenizer",
            SectionKind::Debug => "debug",
            SectionKind::Tables => "tables",
            SectionKind::Embedding => "embedding",
            SectionKind::Programs => "programs",
        }
    }

    /// The alignment the section must have in the file.
    pub fn alignment(self) -> u64 {
        match self {
            SectionKind::Mem => PAGE,
            SectionKind::Queues
            | SectionKind::Symbols
            | SectionKind::Metadata
            | SectionKind::Tokenizer
            | SectionKind::Debug
            | SectionKind::Tables
            | SectionKind::Embedding
            | SectionKind::Programs => SECTION_ALIGN,
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a symbol is to the host that binds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SymbolKind {
    /// Written by the host before a run (token ids, embeddings, ...).
    Input,
    /// Read by the host after a run (logits, ...).
    Output,
    /// The key/value cache, kept across runs.
    KvCache,
    /// The current sequence position, written by the host.
    Position,
    /// A constant the image provides (tables, norms).
    Constant,
    /// Model weights the image provides.
    Weight,
}

impl SymbolKind {
    /// Every kind, in code order.
    pub const ALL: [SymbolKind; 6] = [
        SymbolKind::Input,
        SymbolKind::Output,
        SymbolKind::KvCache,
        SymbolKind::Position,
        SymbolKind::Constant,
        SymbolKind::Weight,
    ];

    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            SymbolKind::Input => 0,
            SymbolKind::Output => 1,
            SymbolKind::KvCache => 2,
            SymbolKind::Position => 3,
            SymbolKind::Constant => 4,
            SymbolKind::Weight => 5,
        }
    }

    /// The kind with on-disk code `code`.
    pub fn from_code(code: u8) -> Option<SymbolKind> {
        SymbolKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The kind's name (`kv_cache`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SymbolKind::Input => "input",
            SymbolKind::Output => "output",
            SymbolKind::KvCache => "kv_cache",
            SymbolKind::Position => "position",
            SymbolKind::Constant => "constant",
            SymbolKind::Weight => "weight",
        }
    }
}

impl fmt::Display for SymbolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Element type of a symbol's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElemType {
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer (also raw bytes, e.g. packed 3.5-bit weights).
    U8,
    /// Signed 32-bit integer.
    I32,
    /// IEEE 754 half precision.
    F16,
    /// IEEE 754 single precision.
    F32,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer (gather/scatter index vectors such as a
    /// position).
    U16,
}

impl ElemType {
    /// Every element type, in code order.
    pub const ALL: [ElemType; 7] = [
        ElemType::I8,
        ElemType::U8,
        ElemType::I32,
        ElemType::F16,
        ElemType::F32,
        ElemType::I16,
        ElemType::U16,
    ];

    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            ElemType::I8 => 0,
            ElemType::U8 => 1,
            ElemType::I32 => 2,
            ElemType::F16 => 3,
            ElemType::F32 => 4,
            ElemType::I16 => 5,
            ElemType::U16 => 6,
        }
    }

    /// The type with on-disk code `code`.
    pub fn from_code(code: u8) -> Option<ElemType> {
        ElemType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::I8 | ElemType::U8 => 1,
            ElemType::F16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::I32 | ElemType::F32 => 4,
        }
    }

    /// The type's name (`i8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ElemType::I8 => "i8",
            ElemType::U8 => "u8",
            ElemType::I32 => "i32",
            ElemType::F16 => "f16",
            ElemType::F32 => "f32",
            ElemType::I16 => "i16",
            ElemType::U16 => "u16",
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the `embedding` section stores the table (its first field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EmbeddingEncoding {
    /// `rows x cols` little-endian f32, row-major.
    F32,
    /// A serialised Q35 matrix (`Q35W`, docs/q35-format.md section 7) of
    /// `rows x cols`; row `t` dequantized is the embedding of token `t`.
    Q35,
}

impl EmbeddingEncoding {
    /// Every encoding, in code order.
    pub const ALL: [EmbeddingEncoding; 2] = [EmbeddingEncoding::F32, EmbeddingEncoding::Q35];

    /// The on-disk code.
    pub fn code(self) -> u32 {
        match self {
            EmbeddingEncoding::F32 => 1,
            EmbeddingEncoding::Q35 => 2,
        }
    }

    /// The encoding with on-disk code `code`.
    pub fn from_code(code: u32) -> Option<EmbeddingEncoding> {
        EmbeddingEncoding::ALL
            .into_iter()
            .find(|e| e.code() == code)
    }

    /// The encoding's name (`f32`, `q35`).
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingEncoding::F32 => "f32",
            EmbeddingEncoding::Q35 => "q35",
        }
    }
}

impl fmt::Display for EmbeddingEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Length of the `embedding` section's header (encoding, reserved, rows,
/// cols).
pub const EMBEDDING_HEADER_LEN: u64 = 24;

/// A run of MEM words: `words` words of slice `slice` from word address
/// `first_word`. Used for the MEM image's extents and symbol placements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemRange {
    /// The MEM slice (the target's numbering).
    pub slice: u16,
    /// The first word address within the slice.
    pub first_word: u32,
    /// How many words (at least one).
    pub words: u32,
}

impl MemRange {
    /// One past the last word address (may be 2^32).
    pub fn end_word(&self) -> u64 {
        u64::from(self.first_word) + u64::from(self.words)
    }
}

impl fmt::Display for MemRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slice {} words {}..{}",
            self.slice,
            self.first_word,
            self.end_word()
        )
    }
}

/// A name a host binds: what it is, its element type and shape, and where it
/// lives in MEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Unique name (non-empty UTF-8, at most 65,535 bytes).
    pub name: String,
    /// What the symbol is to the host.
    pub kind: SymbolKind,
    /// Element type of its values.
    pub elem: ElemType,
    /// Dimensions, outermost first (at most [`MAX_RANK`]; empty for a scalar).
    pub shape: Vec<u64>,
    /// The MEM words holding it, in the order its bytes are laid out.
    pub placement: Vec<MemRange>,
    /// Free-form note on how the values are laid out in those words (the
    /// backend defines it; at most 65,535 bytes).
    pub layout: String,
}

/// Rounds `x` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// The header's total length for the given string lengths and section count.
pub(crate) fn header_len(name_len: u64, producer_len: u64, sections: u64) -> u64 {
    align_up(HEADER_FIXED_LEN + name_len + producer_len, 8) + SECTION_ENTRY_LEN * sections + 4
}
