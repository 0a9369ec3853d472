//! [`Builder`]: collects a program's sections and writes the .lpubin bytes.
//!
//! The builder checks everything the reader checks (unique ids and names,
//! disjoint extents, debug entries pointing at real instructions, lengths
//! that fit their fields), sorts what the format keeps sorted, and lays the
//! file out canonically, so its output always opens and the same inputs
//! always give the same bytes. Large payloads (the MEM image) are not copied
//! when writing to a file: sections are streamed piece by piece.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LpuBinError;
use crate::layout::{
    EXTENT_LEN, EmbeddingEncoding, HEADER_FIXED_LEN, MAGIC, MAX_RANK, MemRange, PAGE, SectionKind,
    Symbol, VERSION, align_up, header_len,
};

/// Collects the contents of an .lpubin, then writes it.
#[derive(Clone, Debug)]
pub struct Builder {
    target_name: String,
    target_hash: [u8; 32],
    producer: String,
    queues: Vec<(u16, Vec<u64>)>,
    mem_word_bytes: Option<u32>,
    mem: Vec<(u16, u32, Vec<u8>)>,
    symbols: Vec<Symbol>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    tokenizer: Option<Vec<u8>>,
    debug: Vec<(u16, u32, String)>,
    tables: Vec<(String, Vec<u8>)>,
    embedding: Option<(EmbeddingEncoding, u64, u64, Vec<u8>)>,
    programs: Vec<(String, Builder)>,
}

/// Bytes of a section, owned or borrowed from the builder.
enum Piece<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Piece<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Owned(v) => v,
            Piece::Borrowed(b) => b,
        }
    }
}

struct Payload<'a> {
    kind: SectionKind,
    pieces: Vec<Piece<'a>>,
}

impl Payload<'_> {
    fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.bytes().len() as u64).sum()
    }

    fn crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for p in &self.pieces {
            h.update(p.bytes());
        }
        h.finalize()
    }
}

/// The file laid out: header bytes, then each section at its offset.
struct Laid<'a> {
    header: Vec<u8>,
    sections: Vec<(u64, Payload<'a>)>,
    len: u64,
}

fn build_err(section: &'static str, what: String) -> LpuBinError {
    LpuBinError::Build { section, what }
}

fn u16_len(section: &'static str, what: &str, s: &str) -> Result<u16, LpuBinError> {
    u16::try_from(s.len()).map_err(|_| {
        build_err(
            section,
            format!("{what} is {} bytes; at most 65535 fit", s.len()),
        )
    })
}

fn u32_count(section: &'static str, what: &str, n: usize) -> Result<u32, LpuBinError> {
    u32::try_from(n).map_err(|_| build_err(section, format!("{n} {what}; at most 2^32-1 fit")))
}

fn put_extent(out: &mut Vec<u8>, r: &MemRange) {
    out.extend_from_slice(&r.slice.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&r.first_word.to_le_bytes());
    out.extend_from_slice(&r.words.to_le_bytes());
}

fn check_range(section: &'static str, what: &str, r: &MemRange) -> Result<(), LpuBinError> {
    if r.words == 0 {
        return Err(build_err(section, format!("{what} holds no words")));
    }
    if r.end_word() > 1 << 32 {
        return Err(build_err(
            section,
            format!("{what} ({r}) ends past word 2^32"),
        ));
    }
    Ok(())
}

fn embedding_payload(
    (encoding, rows, cols, data): &(EmbeddingEncoding, u64, u64, Vec<u8>),
) -> Result<Payload<'_>, LpuBinError> {
    const S: &str = "embedding";
    if *rows == 0 || *cols == 0 {
        return Err(build_err(
            S,
            format!("a {rows} x {cols} table holds nothing"),
        ));
    }
    match encoding {
        EmbeddingEncoding::F32 => {
            let need = rows.checked_mul(*cols).and_then(|n| n.checked_mul(4));
            if need != Some(data.len() as u64) {
                return Err(build_err(
                    S,
                    format!(
                        "{} bytes of f32 data for a {rows} x {cols} table",
                        data.len()
                    ),
                ));
            }
        }
        EmbeddingEncoding::Q35 => {
            if data.is_empty() {
                return Err(build_err(S, "the Q35 matrix is empty".into()));
            }
        }
    }
    let mut head = Vec::with_capacity(24);
    head.extend_from_slice(&encoding.code().to_le_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&rows.to_le_bytes());
    head.extend_from_slice(&cols.to_le_bytes());
    Ok(Payload {
        kind: SectionKind::Embedding,
        pieces: vec![Piece::Owned(head), Piece::Borrowed(data)],
    })
}

impl Builder {
    /// An empty program for the target `target_name` whose description
    /// hashes to `target_hash`, written by `producer` (tool and version,
    /// e.g. `q35c 0.1.0`).
    pub fn new(
        target_name: impl Into<String>,
        target_hash: [u8; 32],
        producer: impl Into<String>,
    ) -> Builder {
        Builder {
            target_name: target_name.into(),
            target_hash,
            producer: producer.into(),
            queues: Vec::new(),
            mem_word_bytes: None,
            mem: Vec::new(),
            symbols: Vec::new(),
            metadata: None,
            tokenizer: None,
            debug: Vec::new(),
            tables: Vec::new(),
            embedding: None,
            programs: Vec::new(),
        }
    }

    /// Adds the instruction stream of queue `id` (one 64-bit word per
    /// instruction). Each queue id may be added once.
    pub fn queue(&mut self, id: u16, words: impl Into<Vec<u64>>) -> &mut Builder {
        self.queues.push((id, words.into()));
        self
    }

    /// Sets the MEM word size in bytes (320 on lpu-v1); needed before any
    /// extent is written. A binary with a word size and no extents still
    /// gets a (empty) `mem` section.
    pub fn mem_word_bytes(&mut self, word_bytes: u32) -> &mut Builder {
        self.mem_word_bytes = Some(word_bytes);
        self
    }

    /// Adds an extent of the MEM image: `bytes` (a whole number of words)
    /// go to slice `slice` from word address `first_word`.
    pub fn mem_extent(
        &mut self,
        slice: u16,
        first_word: u32,
        bytes: impl Into<Vec<u8>>,
    ) -> &mut Builder {
        self.mem.push((slice, first_word, bytes.into()));
        self
    }

    /// Adds a symbol. Names must be unique.
    pub fn symbol(&mut self, symbol: Symbol) -> &mut Builder {
        self.symbols.push(symbol);
        self
    }

    /// Sets the metadata object (the compiler chooses the keys).
    pub fn metadata(&mut self, json: serde_json::Map<String, serde_json::Value>) -> &mut Builder {
        self.metadata = Some(json);
        self
    }

    /// Sets the tokenizer bytes (a tokenizer-only GGUF, stored as is).
    pub fn tokenizer(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Builder {
        self.tokenizer = Some(bytes.into());
        self
    }

    /// Records that instruction `index` of queue `queue` comes from
    /// `location` (source op and layer). At most one entry per instruction.
    pub fn debug(&mut self, queue: u16, index: u32, location: impl Into<String>) -> &mut Builder {
        self.debug.push((queue, index, location.into()));
        self
    }

    /// Adds a named table (e.g. an SXM permutation map). Names must be unique.
    pub fn table(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> &mut Builder {
        self.tables.push((name.into(), bytes.into()));
        self
    }

    /// Sets the token embedding: a `rows x cols` table stored as
    /// `encoding` says (`data`: little-endian f32 rows, or a serialised
    /// Q35 matrix).
    pub fn embedding(
        &mut self,
        encoding: EmbeddingEncoding,
        rows: u64,
        cols: u64,
        data: impl Into<Vec<u8>>,
    ) -> &mut Builder {
        self.embedding = Some((encoding, rows, cols, data.into()));
        self
    }

    /// Adds a further program called `name` (section 3.9 of
    /// docs/lpubin.md): `program`'s queues, symbols, tables and debug map
    /// (its other contents must be empty: the MEM image, metadata and the
    /// host's sections are the file's). Names must be unique and not empty.
    pub fn program(&mut self, name: impl Into<String>, program: Builder) -> &mut Builder {
        self.programs.push((name.into(), program));
        self
    }

    /// The encoded file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, LpuBinError> {
        let laid = self.lay_out()?;
        let mut out = Vec::with_capacity(laid.len as usize);
        out.extend_from_slice(&laid.header);
        for (offset, p) in &laid.sections {
            out.resize(*offset as usize, 0);
            for piece in &p.pieces {
                out.extend_from_slice(piece.bytes());
            }
        }
        Ok(out)
    }

    /// Writes the file to `path` atomically: to a temporary file beside it,
    /// synced, then renamed over `path`. On error no partial file is left.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<(), LpuBinError> {
        let path = path.as_ref();
        let laid = self.lay_out()?;
        write_atomically(path, |w| {
            w.write_all(&laid.header)?;
            let mut at = laid.header.len() as u64;
            for (offset, p) in &laid.sections {
                w.write_all(&vec![0u8; (offset - at) as usize])?;
                for piece in &p.pieces {
                    w.write_all(piece.bytes())?;
                }
                at = offset + p.len();
            }
            Ok(())
        })
        .map_err(|error| LpuBinError::Io {
            path: path.to_path_buf(),
            error,
        })
    }

    fn lay_out(&self) -> Result<Laid<'_>, LpuBinError> {
        let name_len = u16_len("header", "the target name", &self.target_name)?;
        if name_len == 0 {
            return Err(build_err("header", "the target name is empty".into()));
        }
        let producer_len = u16_len("header", "the producer", &self.producer)?;

        let mut payloads = vec![self.queues_payload()?];
        if let Some(p) = self.mem_payload()? {
            payloads.push(p);
        }
        if !self.symbols.is_empty() {
            payloads.push(self.symbols_payload()?);
        }
        if let Some(m) = &self.metadata {
            let json = serde_json::to_vec(m)
                .map_err(|e| build_err("metadata", format!("cannot serialise: {e}")))?;
            payloads.push(Payload {
                kind: SectionKind::Metadata,
                pieces: vec![Piece::Owned(json)],
            });
        }
        if let Some(t) = &self.tokenizer {
            payloads.push(Payload {
                kind: SectionKind::Tokenizer,
                pieces: vec![Piece::Borrowed(t)],
            });
        }
        if !self.debug.is_empty() {
            payloads.push(self.debug_payload()?);
        }
        if !self.tables.is_empty() {
            payloads.push(self.tables_payload()?);
        }
        if let Some(e) = &self.embedding {
            payloads.push(embedding_payload(e)?);
        }
        if !self.programs.is_empty() {
            payloads.push(self.programs_payload()?);
        }

        let hlen = header_len(
            u64::from(name_len),
            u64::from(producer_len),
            payloads.len() as u64,
        );
        let mut header = Vec::with_capacity(hlen as usize);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(&(hlen as u32).to_le_bytes());
        header.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
        header.extend_from_slice(&name_len.to_le_bytes());
        header.extend_from_slice(&producer_len.to_le_bytes());
        header.extend_from_slice(&self.target_hash);
        debug_assert_eq!(header.len() as u64, HEADER_FIXED_LEN);
        header.extend_from_slice(self.target_name.as_bytes());
        header.extend_from_slice(self.producer.as_bytes());
        header.resize(align_up(header.len() as u64, 8) as usize, 0);

        let mut at = hlen;
        let mut sections = Vec::with_capacity(payloads.len());
        for p in payloads {
            let align = p.kind.alignment();
            let offset = align_up(at, align);
            let len = p.len();
            header.extend_from_slice(&p.kind.id().to_le_bytes());
            header.extend_from_slice(&[0, 0]);
            header.extend_from_slice(&(align as u32).to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            header.extend_from_slice(&len.to_le_bytes());
            header.extend_from_slice(&p.crc().to_le_bytes());
            header.extend_from_slice(&[0, 0, 0, 0]);
            at = offset + len;
            sections.push((offset, p));
        }
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(header.len() as u64, hlen);
        Ok(Laid {
            header,
            sections,
            len: at,
        })
    }

    fn queues_payload(&self) -> Result<Payload<'_>, LpuBinError> {
        const S: &str = "queues";
        let mut queues: Vec<&(u16, Vec<u64>)> = self.queues.iter().collect();
        queues.sort_by_key(|q| q.0);
        if let Some(w) = queues.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(build_err(S, format!("queue {} is added twice", w[0].0)));
        }
        let n = u32_count(S, "queues", queues.len())?;
        let total: usize = queues.iter().map(|q| q.1.len()).sum();
        let mut out = Vec::with_capacity(8 + 8 * queues.len() + 8 * total);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for (id, words) in &queues {
            let count = u32_count(S, &format!("instructions in queue {id}"), words.len())?;
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&count.to_le_bytes());
        }
        for (_, words) in &queues {
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        Ok(Payload {
            kind: SectionKind::Queues,
            pieces: vec![Piece::Owned(out)],
        })
    }

    fn mem_payload(&self) -> Result<Option<Payload<'_>>, LpuBinError> {
        const S: &str = "mem";
        let word_bytes = match (self.mem_word_bytes, self.mem.is_empty()) {
            (None, true) => return Ok(None),
            (None, false) => {
                return Err(build_err(
                    S,
                    "extents were added but no word size was set (mem_word_bytes)".into(),
                ));
            }
            (Some(0), _) => return Err(build_err(S, "the word size is zero".into())),
            (Some(w), _) => w,
        };
        let mut extents = Vec::with_capacity(self.mem.len());
        for (slice, first_word, bytes) in &self.mem {
            let what = format!("the extent at slice {slice} word {first_word}");
            if bytes.len() % word_bytes as usize != 0 {
                return Err(build_err(
                    S,
                    format!(
                        "{what} has {} bytes, not a whole number of {word_bytes}-byte words",
                        bytes.len()
                    ),
                ));
            }
            let words = u32::try_from(bytes.len() / word_bytes as usize)
                .map_err(|_| build_err(S, format!("{what} has more than 2^32-1 words")))?;
            let r = MemRange {
                slice: *slice,
                first_word: *first_word,
                words,
            };
            check_range(S, &what, &r)?;
            extents.push((r, bytes.as_slice()));
        }
        extents.sort_by_key(|e| (e.0.slice, e.0.first_word));
        if let Some(w) = extents.windows(2).find(|w| {
            w[0].0.slice == w[1].0.slice && u64::from(w[1].0.first_word) < w[0].0.end_word()
        }) {
            return Err(build_err(
                S,
                format!("extents {} and {} overlap", w[0].0, w[1].0),
            ));
        }
        let n = u32_count(S, "extents", extents.len())?;
        let data_offset = align_up(16 + EXTENT_LEN * u64::from(n), PAGE);
        let mut head = Vec::with_capacity(data_offset as usize);
        head.extend_from_slice(&word_bytes.to_le_bytes());
        head.extend_from_slice(&n.to_le_bytes());
        head.extend_from_slice(&data_offset.to_le_bytes());
        for (r, _) in &extents {
            put_extent(&mut head, r);
        }
        head.resize(data_offset as usize, 0);
        let mut pieces = vec![Piece::Owned(head)];
        pieces.extend(extents.iter().map(|(_, b)| Piece::Borrowed(b)));
        Ok(Some(Payload {
            kind: SectionKind::Mem,
            pieces,
        }))
    }

    fn symbols_payload(&self) -> Result<Payload<'_>, LpuBinError> {
        const S: &str = "symbols";
        let mut symbols: Vec<&Symbol> = self.symbols.iter().collect();
        symbols.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = symbols.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(build_err(
                S,
                format!("symbol `{}` is added twice", w[0].name),
            ));
        }
        let mut out = Vec::new();
        out.extend_from_slice(&u32_count(S, "symbols", symbols.len())?.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for s in symbols {
            let name_len = u16_len(S, "a symbol name", &s.name)?;
            if name_len == 0 {
                return Err(build_err(S, "a symbol has an empty name".into()));
            }
            let rank = u8::try_from(s.shape.len())
                .ok()
                .filter(|&r| r <= MAX_RANK)
                .ok_or_else(|| {
                    build_err(
                        S,
                        format!(
                            "symbol `{}` has {} dimensions; at most {MAX_RANK}",
                            s.name,
                            s.shape.len()
                        ),
                    )
                })?;
            let layout_len = u16_len(S, &format!("the layout note of `{}`", s.name), &s.layout)?;
            let m = u32_count(
                S,
                &format!("placement extents of `{}`", s.name),
                s.placement.len(),
            )?;
            out.extend_from_slice(&name_len.to_le_bytes());
            out.extend_from_slice(s.name.as_bytes());
            out.extend_from_slice(&[s.kind.code(), s.elem.code(), rank, 0]);
            for d in &s.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&m.to_le_bytes());
            for (j, r) in s.placement.iter().enumerate() {
                check_range(S, &format!("placement {j} of `{}`", s.name), r)?;
                put_extent(&mut out, r);
            }
            out.extend_from_slice(&layout_len.to_le_bytes());
            out.extend_from_slice(s.layout.as_bytes());
        }
        Ok(Payload {
            kind: SectionKind::Symbols,
            pieces: vec![Piece::Owned(out)],
        })
    }

    fn debug_payload(&self) -> Result<Payload<'_>, LpuBinError> {
        const S: &str = "debug";
        let mut entries: Vec<&(u16, u32, String)> = self.debug.iter().collect();
        entries.sort_by_key(|e| (e.0, e.1));
        if let Some(w) = entries
            .windows(2)
            .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
        {
            return Err(build_err(
                S,
                format!("instruction {} of queue {} has two entries", w[0].1, w[0].0),
            ));
        }
        // Identical strings are stored once, in first-use order.
        let mut pool = Vec::new();
        let mut offsets: BTreeMap<&str, u32> = BTreeMap::new();
        let n = u32_count(S, "debug entries", entries.len())?;
        let mut table = Vec::with_capacity(8 + 16 * entries.len());
        for (queue, index, loc) in &entries {
            match self.queues.iter().find(|q| q.0 == *queue) {
                Some(q) if (*index as usize) < q.1.len() => {}
                Some(q) => {
                    return Err(build_err(
                        S,
                        format!(
                            "an entry points at instruction {index} of queue {queue}, which has {} instructions",
                            q.1.len()
                        ),
                    ));
                }
                None => {
                    return Err(build_err(
                        S,
                        format!("an entry points at queue {queue}, which was not added"),
                    ));
                }
            }
            let off = match offsets.get(loc.as_str()) {
                Some(&o) => o,
                None => {
                    let o = u32_count(S, "bytes of location strings", pool.len())?;
                    pool.extend_from_slice(loc.as_bytes());
                    offsets.insert(loc, o);
                    o
                }
            };
            let len = u32_count(S, "bytes in one location string", loc.len())?;
            table.extend_from_slice(&queue.to_le_bytes());
            table.extend_from_slice(&[0, 0]);
            table.extend_from_slice(&index.to_le_bytes());
            table.extend_from_slice(&off.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
        }
        let mut out = Vec::with_capacity(8 + table.len() + pool.len());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(
            &u32_count(S, "bytes of location strings", pool.len())?.to_le_bytes(),
        );
        out.extend_from_slice(&table);
        out.extend_from_slice(&pool);
        Ok(Payload {
            kind: SectionKind::Debug,
            pieces: vec![Piece::Owned(out)],
        })
    }

    fn tables_payload(&self) -> Result<Payload<'_>, LpuBinError> {
        const S: &str = "tables";
        let mut tables: Vec<&(String, Vec<u8>)> = self.tables.iter().collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = tables.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(build_err(S, format!("table `{}` is added twice", w[0].0)));
        }
        let mut head = Vec::new();
        head.extend_from_slice(&u32_count(S, "tables", tables.len())?.to_le_bytes());
        head.extend_from_slice(&[0; 4]);
        let mut pieces = Vec::new();
        for (name, bytes) in tables {
            let name_len = u16_len(S, "a table name", name)?;
            if name_len == 0 {
                return Err(build_err(S, "a table has an empty name".into()));
            }
            head.extend_from_slice(&name_len.to_le_bytes());
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            pieces.push(Piece::Owned(std::mem::take(&mut head)));
            pieces.push(Piece::Borrowed(bytes));
        }
        if !head.is_empty() {
            pieces.push(Piece::Owned(head));
        }
        Ok(Payload {
            kind: SectionKind::Tables,
            pieces,
        })
    }

    fn programs_payload(&self) -> Result<Payload<'_>, LpuBinError> {
        const S: &str = "programs";
        let mut pieces = Vec::new();
        let mut head = Vec::new();
        head.extend_from_slice(&u32_count(S, "programs", self.programs.len())?.to_le_bytes());
        head.extend_from_slice(&[0; 4]);
        let pad =
            |v: &mut Vec<u8>, len: u64| v.resize(v.len() + (align_up(len, 8) - len) as usize, 0);
        for (i, (name, p)) in self.programs.iter().enumerate() {
            let name_len = u16_len(S, "a program name", name)?;
            if name_len == 0 {
                return Err(build_err(S, format!("program {i} has an empty name")));
            }
            if self.programs[..i].iter().any(|(n, _)| n == name) {
                return Err(build_err(S, format!("program `{name}` is added twice")));
            }
            if p.mem_word_bytes.is_some()
                || !p.mem.is_empty()
                || p.metadata.is_some()
                || p.tokenizer.is_some()
                || p.embedding.is_some()
                || !p.programs.is_empty()
            {
                return Err(build_err(
                    S,
                    format!(
                        "program `{name}` has a MEM image, metadata, tokenizer, embedding or programs of its own; those belong to the file"
                    ),
                ));
            }
            let blobs: [Option<Payload<'_>>; 4] = [
                Some(p.queues_payload()?),
                (!p.symbols.is_empty())
                    .then(|| p.symbols_payload())
                    .transpose()?,
                (!p.tables.is_empty())
                    .then(|| p.tables_payload())
                    .transpose()?,
                (!p.debug.is_empty())
                    .then(|| p.debug_payload())
                    .transpose()?,
            ];
            head.extend_from_slice(&name_len.to_le_bytes());
            head.extend_from_slice(name.as_bytes());
            pad(&mut head, 2 + u64::from(name_len));
            for b in &blobs {
                head.extend_from_slice(&b.as_ref().map_or(0, Payload::len).to_le_bytes());
            }
            for b in blobs.into_iter().flatten() {
                let len = b.len();
                pieces.push(Piece::Owned(std::mem::take(&mut head)));
                pieces.extend(b.pieces);
                pad(&mut head, len);
            }
        }
        if !head.is_empty() {
            pieces.push(Piece::Owned(head));
        }
        Ok(Payload {
            kind: SectionKind::Programs,
            pieces,
        })
    }
}

/// Writes `path` atomically: `fill` writes the bytes into a temporary file
/// beside it, which is synced and renamed over `path`. On error no partial
/// file is left (the temporary is removed, best effort).
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the output path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary may not exist if creating it failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
