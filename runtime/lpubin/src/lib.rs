//! The `.lpubin` binary format: what the q35 compiler writes and the LPU
//! simulator (`q35sim`) and host runtime read. It is the only contract
//! between them; docs/lpubin.md specifies the layout byte for byte.
//!
//! A file is a header (signature, version, target name and SHA-256 hash,
//! producer, section table, CRC-32) followed by typed sections: `queues`
//! (one stream of 64-bit instruction words per instruction queue), `mem`
//! (the MEM image: extents of 320-byte words holding packed weights, tables
//! and constants), `symbols`, `metadata` (JSON), `tokenizer` (an opaque
//! tokenizer-only GGUF), `debug` (instruction -> source location),
//! `tables` (named byte tables) and `embedding` (the token embedding the
//! host looks rows up in).
//!
//! [`LpuBinary::open`] maps the file and validates *everything* up front:
//! every checksum, every byte of padding, every section's placement, every
//! count against the bytes that hold it, every string's UTF-8, every sort
//! order. Accessors then cannot go out of bounds, and a truncated or
//! corrupted file -- any single changed byte -- is an error, never a panic.
//! The MEM image and instruction words are handed out as views borrowed
//! from the map, without copying. [`Builder`] writes the same format.
//!
//! This crate knows nothing of the instruction set or the target
//! description: instructions are opaque little-endian `u64` words, queue ids
//! and MEM slices are the target's numbering, and the target hash is 32
//! bytes to compare.

mod error;
mod layout;
mod parse;
mod system;
mod view;
mod write;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use error::LpuBinError;
pub use layout::{
    DEBUG_ENTRY_LEN, EMBEDDING_HEADER_LEN, EXTENT_LEN, ElemType, EmbeddingEncoding,
    HEADER_FIXED_LEN, MAGIC, MAX_RANK, MemRange, PAGE, SECTION_ALIGN, SECTION_ENTRY_LEN,
    SectionKind, Symbol, SymbolKind, VERSION,
};
pub use parse::SectionEntry;
pub use system::{
    CHIP_ENTRY_LEN, LpuSystem, MAX_CHIPS, SYSTEM_HEADER_LEN, SYSTEM_MAGIC, SYSTEM_VERSION,
    SystemBuilder, SystemFileError, TARGET_NAME_LEN, is_system,
};
pub use view::{DebugEntry, DebugMap, Embedding, Mem, MemExtent, Queue, WordIter, Words};
pub use write::Builder;

use parse::Parsed;

enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
    /// A byte range of a map shared with other binaries (a chip's image in
    /// a system file, `system.rs`); the range is clamped to the map.
    Shared(std::sync::Arc<memmap2::Mmap>, std::ops::Range<usize>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
            Backing::Shared(m, r) => &m[r.start.min(m.len())..r.end.min(m.len())],
        }
    }
}

/// An opened, fully validated .lpubin file.
pub struct LpuBinary {
    backing: Backing,
    path: Option<PathBuf>,
    parsed: Parsed,
}

impl std::fmt::Debug for LpuBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LpuBinary")
            .field("path", &self.path)
            .field("target_name", &self.parsed.target_name)
            .field("producer", &self.parsed.producer)
            .field("len", &self.len())
            .field("sections", &self.parsed.sections)
            .finish()
    }
}

impl LpuBinary {
    /// Maps the file at `path` and validates all of it; the pages validation
    /// read are then released ([`LpuBinary::release_all`]).
    pub fn open(path: impl AsRef<Path>) -> Result<LpuBinary, LpuBinError> {
        let path = path.as_ref();
        let io = |error| LpuBinError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let backing = if file.metadata().map_err(io)?.len() == 0 {
            // Mapping an empty file fails on some systems; it is simply too short.
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the mapping is read-only and private to this process.
            // Another process truncating the file while it is mapped could
            // still fault; that is the accepted contract of memory-mapped
            // program and model files (q35-gguf and llama.cpp do the same).
            Backing::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::build(backing, Some(path.to_path_buf()))
    }

    /// Validates an in-memory image (tests, tools that already hold the bytes).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<LpuBinary, LpuBinError> {
        Self::build(Backing::Owned(bytes.into()), None)
    }

    fn build(backing: Backing, path: Option<PathBuf>) -> Result<LpuBinary, LpuBinError> {
        let parsed = parse::parse(backing.bytes(), &path)?;
        let binary = LpuBinary {
            backing,
            path,
            parsed,
        };
        // Validation read every page; readers fault back in what they use.
        binary.release_all();
        Ok(binary)
    }

    fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// Lets the OS take back the resident pages wholly inside `bytes`, a
    /// slice this binary handed out (any other slice is ignored): a reader
    /// that has copied what it needs (the simulator's MEM image, decoded
    /// queues, the host's embedding) keeps the process's resident memory to
    /// its own copy. Nothing else changes: a later read of those bytes
    /// maps the same file pages in again. A no-op for a binary from memory
    /// and where the OS has no such advice.
    pub fn release(&self, bytes: &[u8]) {
        let Backing::Mapped(map) = &self.backing else {
            return;
        };
        let base = map.as_ptr() as usize;
        let Some(start) = (bytes.as_ptr() as usize).checked_sub(base) else {
            return;
        };
        let end = start + bytes.len();
        // Whole pages inside `bytes` (a larger OS page rounds outward,
        // which costs a refault of bytes still in use, nothing more).
        let first = start.div_ceil(PAGE as usize) * PAGE as usize;
        let last = end / PAGE as usize * PAGE as usize;
        if end > map.len() || last <= first {
            return;
        }
        // SAFETY: `MADV_DONTNEED` discards the pages of a *private writable*
        // mapping's changes; this map is read-only and file-backed, so the
        // pages are dropped from this process only and refault from the
        // file with the same bytes. No reference into the map is
        // invalidated (the addresses stay mapped). An error (an OS without
        // the advice) leaves the pages resident, which is only memory.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
        };
    }

    /// [`LpuBinary::release`] on the whole section of kind `kind`, if present.
    pub fn release_section(&self, kind: SectionKind) {
        if let Some(bytes) = self.section_bytes(kind) {
            self.release(bytes);
        }
    }

    /// [`LpuBinary::release`] on the whole file ([`LpuBinary::open`] does
    /// this after validating every byte, which brought every page in).
    pub fn release_all(&self) {
        self.release(self.bytes());
    }

    /// The path this binary was opened from, if it came from disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Always false: a valid file holds at least its header.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The format version (always [`VERSION`] for a file that opened).
    pub fn version(&self) -> u16 {
        VERSION
    }

    /// The header flags (zero in format version 1).
    pub fn flags(&self) -> u16 {
        self.parsed.flags
    }

    /// The name of the target the binary was compiled for (e.g. `lpu-v1`).
    pub fn target_name(&self) -> &str {
        &self.parsed.target_name
    }

    /// The SHA-256 hash of the target description it was compiled for.
    pub fn target_hash(&self) -> &[u8; 32] {
        &self.parsed.target_hash
    }

    /// The tool that wrote the file and its version (e.g. `q35c 0.1.0`).
    pub fn producer(&self) -> &str {
        &self.parsed.producer
    }

    /// Refuses a binary built for another target: `expected` is the hash of
    /// the target the caller is about to run it on.
    pub fn check_target(&self, expected: &[u8; 32]) -> Result<(), LpuBinError> {
        if &self.parsed.target_hash == expected {
            return Ok(());
        }
        Err(LpuBinError::WrongTarget {
            path: self.path.clone(),
            target_name: self.parsed.target_name.clone(),
            found: error::hex(&self.parsed.target_hash),
            expected: error::hex(expected),
        })
    }

    /// The section table, in file order (which is kind order).
    pub fn sections(&self) -> &[SectionEntry] {
        &self.parsed.sections
    }

    /// The raw bytes of the section of kind `kind`, if present.
    pub fn section_bytes(&self, kind: SectionKind) -> Option<&[u8]> {
        self.parsed
            .sections
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| &self.bytes()[s.range()])
    }

    /// Every instruction queue, by increasing queue id.
    pub fn queues(&self) -> impl ExactSizeIterator<Item = Queue<'_>> + '_ {
        self.parsed
            .queues
            .iter()
            .map(|q| Queue::new(self.bytes(), q))
    }

    /// The instruction stream of queue `id`, if the binary has one.
    pub fn queue(&self, id: u16) -> Option<Queue<'_>> {
        let q = &self.parsed.queues;
        q.binary_search_by_key(&id, |q| q.id)
            .ok()
            .map(|i| Queue::new(self.bytes(), &q[i]))
    }

    /// The MEM image, if the binary has a `mem` section.
    pub fn mem(&self) -> Option<Mem<'_>> {
        self.parsed.mem.as_ref().map(|m| Mem::new(self.bytes(), m))
    }

    /// Every symbol, sorted by name.
    pub fn symbols(&self) -> &[Symbol] {
        &self.parsed.symbols
    }

    /// The symbol called `name`.
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        let s = &self.parsed.symbols;
        s.binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &s[i])
    }

    /// The metadata object, if the binary has a `metadata` section.
    pub fn metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.parsed.metadata.as_ref().map(|(_, m)| m)
    }

    /// The metadata exactly as stored (UTF-8 JSON text).
    pub fn metadata_json(&self) -> Option<&str> {
        self.parsed.metadata.as_ref().map(|(r, _)| {
            std::str::from_utf8(&self.bytes()[r.clone()]).expect("validated as UTF-8 on open")
        })
    }

    /// The tokenizer bytes (a tokenizer-only GGUF), if present.
    pub fn tokenizer(&self) -> Option<&[u8]> {
        self.parsed
            .tokenizer
            .as_ref()
            .map(|r| &self.bytes()[r.clone()])
    }

    /// The debug map, if the binary has a `debug` section.
    pub fn debug(&self) -> Option<DebugMap<'_>> {
        self.parsed
            .debug
            .as_ref()
            .map(|d| DebugMap::new(self.bytes(), d))
    }

    /// Every named table, sorted by name.
    pub fn tables(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.parsed
            .tables
            .iter()
            .map(|(n, r)| (n.as_str(), &self.bytes()[r.clone()]))
    }

    /// The token embedding table, if the binary has an `embedding` section.
    pub fn embedding(&self) -> Option<Embedding<'_>> {
        self.parsed.embedding.as_ref().map(|e| Embedding {
            encoding: e.encoding,
            rows: e.rows,
            cols: e.cols,
            data: &self.bytes()[e.data.clone()],
        })
    }

    /// The further programs of the `programs` section, in file order
    /// (the main sections are the binary's first program).
    pub fn programs(&self) -> impl ExactSizeIterator<Item = ProgramView<'_>> + '_ {
        self.parsed.programs.iter().map(|info| ProgramView {
            file: self.bytes(),
            info,
        })
    }

    /// The further program called `name`.
    pub fn program(&self, name: &str) -> Option<ProgramView<'_>> {
        self.programs().find(|p| p.name() == name)
    }

    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&[u8]> {
        let t = &self.parsed.tables;
        t.binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.bytes()[t[i].1.clone()])
    }
}

/// A further program of the binary (docs/lpubin.md 3.9): its own queues,
/// symbols, tables and debug map over the file's MEM image.
#[derive(Clone, Copy)]
pub struct ProgramView<'a> {
    file: &'a [u8],
    info: &'a parse::ProgramInfo,
}

impl std::fmt::Debug for ProgramView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramView")
            .field("name", &self.info.name)
            .field("queues", &self.info.queues.len())
            .field("symbols", &self.info.symbols.len())
            .finish()
    }
}

impl<'a> ProgramView<'a> {
    /// Its name.
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    /// Every instruction queue, by increasing queue id.
    pub fn queues(&self) -> impl ExactSizeIterator<Item = Queue<'a>> + 'a {
        let file = self.file;
        self.info.queues.iter().map(move |q| Queue::new(file, q))
    }

    /// Every symbol, sorted by name.
    pub fn symbols(&self) -> &'a [Symbol] {
        &self.info.symbols
    }

    /// The symbol called `name`.
    pub fn symbol(&self, name: &str) -> Option<&'a Symbol> {
        let s = &self.info.symbols;
        s.binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &s[i])
    }

    /// Every named table, sorted by name.
    pub fn tables(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + 'a {
        let file = self.file;
        self.info
            .tables
            .iter()
            .map(move |(n, r)| (n.as_str(), &file[r.clone()]))
    }

    /// The debug map, if the program has one.
    pub fn debug(&self) -> Option<DebugMap<'a>> {
        self.info
            .debug
            .as_ref()
            .map(|d| DebugMap::new(self.file, d))
    }
}
