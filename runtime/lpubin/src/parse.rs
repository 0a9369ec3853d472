//! The validating parser: header, section table, layout and checksums, then
//! each section's contents.
//!
//! Order matters: the header's length is cross-checked against its own
//! counts, then its CRC; every section's placement, padding and CRC are
//! checked before any section's contents are interpreted, so a corrupted
//! byte is reported as a checksum or padding error, not as a confusing
//! structural one. Every read goes through [`Cursor`], which refuses to run
//! past the end of its section, and every declared count is checked against
//! the bytes that remain before anything is allocated.

use std::ops::Range;
use std::path::PathBuf;

use crate::error::LpuBinError;
use crate::layout::{
    DEBUG_ENTRY_LEN, EMBEDDING_HEADER_LEN, EXTENT_LEN, ElemType, EmbeddingEncoding,
    HEADER_FIXED_LEN, MAGIC, MAX_RANK, MemRange, PAGE, SectionKind, Symbol, SymbolKind, VERSION,
    align_up, header_len,
};

/// One section table entry, as validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    /// The section's kind.
    pub kind: SectionKind,
    /// Its alignment in the file.
    pub alignment: u64,
    /// File offset of its first byte.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
}

impl SectionEntry {
    pub(crate) fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.length) as usize
    }
}

/// A queue's place in the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueInfo {
    pub id: u16,
    pub start: usize,
    pub count: u32,
}

/// A MEM extent's place in the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExtentInfo {
    pub range: MemRange,
    pub start: usize,
    pub len: usize,
}

#[derive(Debug)]
pub(crate) struct MemInfo {
    pub word_bytes: u32,
    pub extents: Vec<ExtentInfo>,
}

#[derive(Clone, Debug)]
pub(crate) struct DebugInfo {
    /// File range of the entry array.
    pub entries: Range<usize>,
    /// File range of the string pool.
    pub pool: Range<usize>,
}

/// The `embedding` section's header, and where its data lies in the file.
#[derive(Clone, Debug)]
pub(crate) struct EmbeddingInfo {
    pub encoding: EmbeddingEncoding,
    pub rows: u64,
    pub cols: u64,
    pub data: Range<usize>,
}

/// A further program of the `programs` section.
#[derive(Debug)]
pub(crate) struct ProgramInfo {
    pub name: String,
    pub queues: Vec<QueueInfo>,
    pub symbols: Vec<Symbol>,
    pub tables: Vec<(String, Range<usize>)>,
    pub debug: Option<DebugInfo>,
}

#[derive(Debug)]
pub(crate) struct Parsed {
    pub flags: u16,
    pub target_name: String,
    pub target_hash: [u8; 32],
    pub producer: String,
    pub sections: Vec<SectionEntry>,
    pub queues: Vec<QueueInfo>,
    pub mem: Option<MemInfo>,
    pub symbols: Vec<Symbol>,
    pub metadata: Option<(Range<usize>, serde_json::Map<String, serde_json::Value>)>,
    pub tokenizer: Option<Range<usize>>,
    pub debug: Option<DebugInfo>,
    pub tables: Vec<(String, Range<usize>)>,
    pub embedding: Option<EmbeddingInfo>,
    pub programs: Vec<ProgramInfo>,
}

/// A bounds-checked reader over `bytes[pos..end]` of the whole file, so
/// error offsets are file offsets.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    section: &'static str,
    within: &'static str,
    path: &'a Option<PathBuf>,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.end - self.pos) as u64
    }

    fn malformed(&self, offset: usize, field: impl Into<String>, what: String) -> LpuBinError {
        LpuBinError::Malformed {
            path: self.path.clone(),
            section: self.section,
            field: field.into(),
            offset: offset as u64,
            what,
        }
    }

    fn truncated(&self, field: &str, need: u64) -> LpuBinError {
        LpuBinError::Truncated {
            path: self.path.clone(),
            section: self.section,
            field: field.to_owned(),
            offset: self.pos as u64,
            end: (self.pos as u64).saturating_add(need),
            limit: self.end as u64,
            within: self.within,
        }
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8], LpuBinError> {
        if n > self.remaining() {
            return Err(self.truncated(field, n));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], LpuBinError> {
        let s = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, LpuBinError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, LpuBinError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &str) -> Result<u32, LpuBinError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, LpuBinError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A reserved field of `n` bytes, which must be zero.
    fn reserved(&mut self, n: u64, field: &str) -> Result<(), LpuBinError> {
        let at = self.pos;
        let raw = self.take(n, field)?;
        if raw.iter().any(|&b| b != 0) {
            return Err(self.malformed(
                at,
                field,
                format!(
                    "reserved bytes must be zero, found {}",
                    crate::error::hex(raw)
                ),
            ));
        }
        Ok(())
    }

    /// `n` bytes of UTF-8.
    fn str(&mut self, n: u64, field: &str) -> Result<&'a str, LpuBinError> {
        let at = self.pos;
        let raw = self.take(n, field)?;
        std::str::from_utf8(raw).map_err(|e| {
            self.malformed(
                at + e.valid_up_to(),
                field,
                format!("not valid UTF-8 (at byte {} of {n})", e.valid_up_to()),
            )
        })
    }

    /// A u16 length and that many bytes of UTF-8.
    fn str16(&mut self, field: &str) -> Result<&'a str, LpuBinError> {
        let n = self.u16(&format!("{field} length"))?;
        self.str(u64::from(n), field)
    }

    /// Checks that `count` records of at least `min_size` bytes can fit in
    /// what remains, before anything is allocated for them.
    fn check_count(&self, count: u64, min_size: u64, field: &str) -> Result<(), LpuBinError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(self.truncated(
                &format!("{field} ({count} records of at least {min_size} bytes)"),
                count.saturating_mul(min_size),
            )),
        }
    }

    /// Requires the cursor to be at the end of its section.
    fn finish(&self, field: &str) -> Result<(), LpuBinError> {
        if self.pos != self.end {
            return Err(self.malformed(
                self.pos,
                field,
                format!(
                    "{} unexpected bytes after the last {field}; the section must end there",
                    self.end - self.pos
                ),
            ));
        }
        Ok(())
    }
}

fn bad_magic_hint(found: &[u8]) -> &'static str {
    if found.len() >= 4 && &found[1..4] == b"LPU" {
        " (it starts like one: its high-bit, CR LF or ^Z bytes were altered, as by a text-mode transfer)"
    } else {
        ""
    }
}

/// Validates the whole image and locates every section's contents.
pub(crate) fn parse(bytes: &[u8], path: &Option<PathBuf>) -> Result<Parsed, LpuBinError> {
    let len = bytes.len() as u64;
    let mut c = Cursor {
        bytes,
        pos: 0,
        end: bytes.len(),
        section: "header",
        within: "file",
        path,
    };

    // Magic and version sit at offsets 0 and 8 in every version.
    let n = bytes.len().min(8);
    if bytes[..n] != MAGIC[..n] {
        return Err(LpuBinError::BadMagic {
            path: path.clone(),
            found: bytes[..n].to_vec(),
            hint: bad_magic_hint(&bytes[..n]),
        });
    }
    c.take(8, "magic")?;
    let version = c.u16("version")?;
    if version != VERSION {
        return Err(LpuBinError::Version {
            path: path.clone(),
            found: version,
            supported: VERSION,
        });
    }
    let flags = c.u16("flags")?;
    let declared_len = c.u32("header_len")?;
    let section_count = c.u32("section_count")?;
    let name_len = c.u16("target_name length")?;
    let producer_len = c.u16("producer length")?;
    let target_hash: [u8; 32] = c.array("target_hash")?;

    // The header's length follows from its counts; a corrupted count or
    // length is caught here even before the CRC is read.
    let hlen = header_len(
        u64::from(name_len),
        u64::from(producer_len),
        u64::from(section_count),
    );
    if u64::from(declared_len) != hlen {
        return Err(c.malformed(
            12,
            "header_len",
            format!(
                "declares {declared_len} bytes, but its section count {section_count} and string lengths {name_len} and {producer_len} make it {hlen}"
            ),
        ));
    }
    if hlen > len {
        return Err(LpuBinError::Truncated {
            path: path.clone(),
            section: "header",
            field: "header (strings and section table)".into(),
            offset: HEADER_FIXED_LEN,
            end: hlen,
            limit: len,
            within: "file",
        });
    }
    let hcrc_at = (hlen - 4) as usize;
    let stored = u32::from_le_bytes(bytes[hcrc_at..hcrc_at + 4].try_into().unwrap_or_default());
    let actual = crc32fast::hash(&bytes[..hcrc_at]);
    if stored != actual {
        return Err(LpuBinError::Checksum {
            path: path.clone(),
            section: "header",
            offset: 0,
            length: hcrc_at as u64,
            expected: stored,
            actual,
        });
    }
    if flags != 0 {
        return Err(c.malformed(
            10,
            "flags",
            format!("{flags:#06x}: format version 1 defines no flags, all bits must be zero"),
        ));
    }
    c.end = hcrc_at;
    let target_name = c.str(u64::from(name_len), "target_name")?.to_owned();
    if target_name.is_empty() {
        return Err(c.malformed(56, "target_name", "must not be empty".into()));
    }
    let producer = c.str(u64::from(producer_len), "producer")?.to_owned();
    let table_start = align_up(c.pos as u64, 8);
    check_zero(bytes, c.pos as u64..table_start, "header strings", path)?;
    c.pos = table_start as usize;

    c.section = "section table";
    let mut sections: Vec<SectionEntry> = Vec::with_capacity(section_count as usize);
    for index in 0..section_count as usize {
        let at = c.pos;
        let kind_id = c.u16("kind")?;
        c.reserved(2, "reserved (after kind)")?;
        let alignment = u64::from(c.u32("alignment")?);
        let offset = c.u64("offset")?;
        let length = c.u64("length")?;
        let crc32 = c.u32("crc32")?;
        c.reserved(4, "reserved (after crc32)")?;
        let kind = SectionKind::from_id(kind_id).ok_or_else(|| LpuBinError::UnknownSection {
            path: path.clone(),
            index,
            offset: at as u64,
            kind: kind_id,
        })?;
        if let Some(prev) = sections.last() {
            if sections.iter().any(|s| s.kind == kind) {
                return Err(LpuBinError::DuplicateSection {
                    path: path.clone(),
                    index,
                    offset: at as u64,
                    kind,
                });
            }
            if prev.kind > kind {
                return Err(c.malformed(
                    at,
                    "kind",
                    format!(
                        "sections are listed in increasing kind order, but `{kind}` follows `{}`",
                        prev.kind
                    ),
                ));
            }
        }
        if alignment != kind.alignment() {
            return Err(c.malformed(
                at + 4,
                "alignment",
                format!(
                    "section `{kind}` has alignment {alignment}; format version 1 requires {}",
                    kind.alignment()
                ),
            ));
        }
        sections.push(SectionEntry {
            kind,
            alignment,
            offset,
            length,
            crc32,
        });
    }

    // Placement, padding and checksums of every section.
    let mut prev_end = hlen;
    let mut previous = "header";
    for (index, s) in sections.iter().enumerate() {
        let section = s.kind.name();
        match s.offset.checked_add(s.length) {
            Some(end) if end <= len => {}
            _ => {
                return Err(LpuBinError::OutOfBounds {
                    path: path.clone(),
                    section,
                    index,
                    offset: s.offset,
                    length: s.length,
                    file_len: len,
                });
            }
        }
        if s.offset < prev_end {
            return Err(LpuBinError::Overlap {
                path: path.clone(),
                section,
                offset: s.offset,
                previous,
                previous_end: prev_end,
            });
        }
        let expected = align_up(prev_end, s.alignment);
        if s.offset != expected {
            return Err(LpuBinError::Misplaced {
                path: path.clone(),
                section,
                offset: s.offset,
                expected,
            });
        }
        check_zero(bytes, prev_end..s.offset, previous, path)?;
        let actual = crc32fast::hash(&bytes[s.range()]);
        if actual != s.crc32 {
            return Err(LpuBinError::Checksum {
                path: path.clone(),
                section,
                offset: s.offset,
                length: s.length,
                expected: s.crc32,
                actual,
            });
        }
        prev_end = s.offset + s.length;
        previous = section;
    }
    if prev_end != len {
        return Err(LpuBinError::TrailingBytes {
            path: path.clone(),
            end: prev_end,
            file_len: len,
        });
    }

    let mut parsed = Parsed {
        flags,
        target_name,
        target_hash,
        producer,
        sections: sections.clone(),
        queues: Vec::new(),
        mem: None,
        symbols: Vec::new(),
        metadata: None,
        tokenizer: None,
        debug: None,
        tables: Vec::new(),
        embedding: None,
        programs: Vec::new(),
    };
    if !sections.iter().any(|s| s.kind == SectionKind::Queues) {
        return Err(LpuBinError::MissingSection {
            path: path.clone(),
            kind: SectionKind::Queues,
        });
    }
    // Sections are in kind order, so queues are parsed before the debug map
    // that refers to them.
    for s in &sections {
        let c = Cursor {
            bytes,
            pos: s.offset as usize,
            end: (s.offset + s.length) as usize,
            section: s.kind.name(),
            within: "section",
            path,
        };
        match s.kind {
            SectionKind::Queues => parsed.queues = parse_queues(c)?,
            SectionKind::Mem => parsed.mem = Some(parse_mem(c, s.offset)?),
            SectionKind::Symbols => parsed.symbols = parse_symbols(c)?,
            SectionKind::Metadata => parsed.metadata = Some(parse_metadata(c)?),
            SectionKind::Tokenizer => parsed.tokenizer = Some(s.range()),
            SectionKind::Debug => parsed.debug = Some(parse_debug(c, &parsed.queues)?),
            SectionKind::Tables => parsed.tables = parse_tables(c)?,
            SectionKind::Embedding => parsed.embedding = Some(parse_embedding(c)?),
            SectionKind::Programs => parsed.programs = parse_programs(c)?,
        }
    }
    Ok(parsed)
}

/// Requires `bytes[range]` (padding) to be zero.
fn check_zero(
    bytes: &[u8],
    range: Range<u64>,
    after: &'static str,
    path: &Option<PathBuf>,
) -> Result<(), LpuBinError> {
    let pad = &bytes[range.start as usize..range.end as usize];
    match pad.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(LpuBinError::Padding {
            path: path.clone(),
            offset: range.start + i as u64,
            value: pad[i],
            after,
        }),
    }
}

fn parse_queues(mut c: Cursor<'_>) -> Result<Vec<QueueInfo>, LpuBinError> {
    let n = c.u32("queue_count")?;
    c.reserved(4, "reserved")?;
    c.check_count(u64::from(n), 8, "queue directory")?;
    let mut queues: Vec<QueueInfo> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = c.pos;
        let id = c.u16("queue id")?;
        c.reserved(2, "reserved (queue directory)")?;
        let count = c.u32("instruction count")?;
        if let Some(prev) = queues.last()
            && id <= prev.id
        {
            return Err(c.malformed(
                at,
                format!("queue id (directory entry {i})"),
                format!(
                    "queue ids must be strictly increasing, but queue {id} follows queue {}",
                    prev.id
                ),
            ));
        }
        queues.push(QueueInfo {
            id,
            start: 0,
            count,
        });
    }
    let total: u64 = queues.iter().map(|q| u64::from(q.count) * 8).sum();
    if total > c.remaining() {
        return Err(c.truncated("instruction words", total));
    }
    for q in &mut queues {
        q.start = c.pos;
        c.pos += q.count as usize * 8;
    }
    c.finish("queue's instructions")?;
    Ok(queues)
}

/// One 12-byte MEM extent record.
fn extent(c: &mut Cursor<'_>, field: &str) -> Result<MemRange, LpuBinError> {
    let at = c.pos;
    let slice = c.u16(&format!("{field} slice"))?;
    c.reserved(2, &format!("{field} reserved"))?;
    let first_word = c.u32(&format!("{field} first_word"))?;
    let words = c.u32(&format!("{field} word_count"))?;
    let r = MemRange {
        slice,
        first_word,
        words,
    };
    if words == 0 {
        return Err(c.malformed(at, field, "an extent must hold at least one word".into()));
    }
    if r.end_word() > 1 << 32 {
        return Err(c.malformed(at, field, format!("{r} ends past word address 2^32")));
    }
    Ok(r)
}

fn parse_mem(mut c: Cursor<'_>, section_offset: u64) -> Result<MemInfo, LpuBinError> {
    let word_bytes = c.u32("word_bytes")?;
    if word_bytes == 0 {
        return Err(c.malformed(c.pos - 4, "word_bytes", "must not be zero".into()));
    }
    let n = c.u32("extent_count")?;
    let data_at = c.pos;
    let data_offset = c.u64("data_offset")?;
    c.check_count(u64::from(n), EXTENT_LEN, "extent table")?;
    let expected = align_up(16 + EXTENT_LEN * u64::from(n), PAGE);
    if data_offset != expected {
        return Err(c.malformed(
            data_at,
            "data_offset",
            format!(
                "is {data_offset}; with {n} extents the data block starts at the next page, {expected}"
            ),
        ));
    }
    let mut extents: Vec<ExtentInfo> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = c.pos;
        let field = format!("extent {i}");
        let r = extent(&mut c, &field)?;
        if let Some(prev) = extents.last().map(|e| e.range) {
            if (r.slice, r.first_word) <= (prev.slice, prev.first_word) {
                return Err(c.malformed(
                    at,
                    field,
                    format!("extents are sorted by (slice, first word), but {r} follows {prev}"),
                ));
            }
            if r.slice == prev.slice && u64::from(r.first_word) < prev.end_word() {
                return Err(c.malformed(at, field, format!("{r} overlaps {prev}")));
            }
        }
        extents.push(ExtentInfo {
            range: r,
            start: 0,
            len: 0,
        });
    }
    let data_start = section_offset + data_offset;
    if data_start > c.end as u64 {
        return Err(c.truncated("data block", data_start - c.pos as u64));
    }
    check_zero(
        c.bytes,
        c.pos as u64..data_start,
        "mem extent table",
        c.path,
    )?;
    c.pos = data_start as usize;
    let mut total: u64 = 0;
    for e in &extents {
        total = total.saturating_add(u64::from(e.range.words) * u64::from(word_bytes));
    }
    if total > c.remaining() {
        return Err(c.truncated("extent data", total));
    }
    for e in &mut extents {
        e.start = c.pos;
        e.len = e.range.words as usize * word_bytes as usize;
        c.pos += e.len;
    }
    c.finish("extent's data")?;
    Ok(MemInfo {
        word_bytes,
        extents,
    })
}

fn parse_symbols(mut c: Cursor<'_>) -> Result<Vec<Symbol>, LpuBinError> {
    let n = c.u32("symbol_count")?;
    c.reserved(4, "reserved")?;
    // A symbol record needs at least 2 + 4 + 4 + 2 bytes.
    c.check_count(u64::from(n), 12, "symbol records")?;
    let mut symbols: Vec<Symbol> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = c.pos;
        let name = c.str16(&format!("symbol {i} name"))?.to_owned();
        if name.is_empty() {
            return Err(c.malformed(at, format!("symbol {i} name"), "must not be empty".into()));
        }
        if let Some(prev) = symbols.last()
            && name <= prev.name
        {
            return Err(c.malformed(
                at,
                format!("symbol `{name}` name"),
                format!(
                    "symbols are sorted by name with no repeats, but `{name}` follows `{}`",
                    prev.name
                ),
            ));
        }
        let field = |f: &str| format!("symbol `{name}` {f}");
        let kind_at = c.pos;
        let kind_code = c.u8(&field("kind"))?;
        let kind = SymbolKind::from_code(kind_code).ok_or_else(|| {
            c.malformed(
                kind_at,
                field("kind"),
                format!("unknown symbol kind {kind_code}"),
            )
        })?;
        let elem_code = c.u8(&field("element type"))?;
        let elem = ElemType::from_code(elem_code).ok_or_else(|| {
            c.malformed(
                kind_at + 1,
                field("element type"),
                format!("unknown element type {elem_code}"),
            )
        })?;
        let rank = c.u8(&field("rank"))?;
        if rank > MAX_RANK {
            return Err(c.malformed(
                kind_at + 2,
                field("rank"),
                format!("rank {rank} exceeds the maximum of {MAX_RANK}"),
            ));
        }
        c.reserved(1, &field("reserved"))?;
        let mut shape = Vec::with_capacity(usize::from(rank));
        for _ in 0..rank {
            shape.push(c.u64(&field("dims"))?);
        }
        let m = c.u32(&field("extent count"))?;
        c.check_count(u64::from(m), EXTENT_LEN, &field("placement"))?;
        let mut placement = Vec::with_capacity(m as usize);
        for j in 0..m {
            placement.push(extent(&mut c, &field(&format!("placement {j}")))?);
        }
        let layout = c.str16(&field("layout"))?.to_owned();
        symbols.push(Symbol {
            name,
            kind,
            elem,
            shape,
            placement,
            layout,
        });
    }
    c.finish("symbol")?;
    Ok(symbols)
}

fn parse_embedding(mut c: Cursor<'_>) -> Result<EmbeddingInfo, LpuBinError> {
    let at = c.pos;
    let code = c.u32("encoding")?;
    let encoding = EmbeddingEncoding::from_code(code).ok_or_else(|| {
        c.malformed(
            at,
            "encoding",
            format!("unknown embedding encoding {code} (1 = f32, 2 = q35)"),
        )
    })?;
    c.reserved(4, "reserved")?;
    let rows = c.u64("rows")?;
    let cols = c.u64("cols")?;
    debug_assert_eq!((c.pos - at) as u64, EMBEDDING_HEADER_LEN);
    if rows == 0 || cols == 0 {
        return Err(c.malformed(
            at + 8,
            "rows",
            format!("a {rows} x {cols} table holds nothing; both must be positive"),
        ));
    }
    let start = c.pos;
    match encoding {
        EmbeddingEncoding::F32 => {
            let need = rows.checked_mul(cols).and_then(|n| n.checked_mul(4));
            match need {
                Some(n) if n == c.remaining() => {}
                Some(n) if n > c.remaining() => return Err(c.truncated("f32 rows", n)),
                _ => {
                    return Err(c.malformed(
                        start,
                        "f32 rows",
                        format!(
                            "{} bytes of data, but {rows} x {cols} f32 are {} bytes",
                            c.remaining(),
                            need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
                        ),
                    ));
                }
            }
        }
        // The Q35W container validates itself (q35-contract reads it); this
        // format only requires it to be there.
        EmbeddingEncoding::Q35 => {
            if c.remaining() == 0 {
                return Err(c.truncated("Q35W matrix", 1));
            }
        }
    }
    Ok(EmbeddingInfo {
        encoding,
        rows,
        cols,
        data: start..c.end,
    })
}

type Metadata = (Range<usize>, serde_json::Map<String, serde_json::Value>);

fn parse_metadata(mut c: Cursor<'_>) -> Result<Metadata, LpuBinError> {
    let at = c.pos;
    let text = c.str(c.remaining(), "JSON")?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| c.malformed(at, "JSON", format!("not valid JSON: {e}")))?;
    match value {
        serde_json::Value::Object(map) => Ok((at..c.pos, map)),
        other => {
            let kind = match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            };
            Err(c.malformed(
                at,
                "JSON",
                format!("the metadata must be a JSON object, found {kind}"),
            ))
        }
    }
}

fn parse_debug(mut c: Cursor<'_>, queues: &[QueueInfo]) -> Result<DebugInfo, LpuBinError> {
    let n = c.u32("entry_count")?;
    let pool_len = c.u32("pool_len")?;
    c.check_count(u64::from(n), DEBUG_ENTRY_LEN, "debug entries")?;
    let entries_start = c.pos;
    let pool_start = entries_start + n as usize * DEBUG_ENTRY_LEN as usize;
    let pool_end = pool_start as u64 + u64::from(pool_len);
    if pool_end > c.end as u64 {
        return Err(LpuBinError::Truncated {
            path: c.path.clone(),
            section: c.section,
            field: "string pool".into(),
            offset: pool_start as u64,
            end: pool_end,
            limit: c.end as u64,
            within: c.within,
        });
    }
    let pool = pool_start..pool_end as usize;
    // The pool checked as UTF-8 once: when it is, an entry's string is
    // exactly when both its ends are character boundaries (entries share
    // strings, and a big program has millions of entries).
    let pool_str = std::str::from_utf8(&c.bytes[pool.clone()]).ok();
    let mut prev: Option<(u16, u32)> = None;
    for i in 0..n {
        let at = c.pos;
        // `check_count` proved every entry's bytes are there, so the reads
        // cannot fail; the field's name is made only for an error.
        let field = || format!("debug entry {i}");
        let queue = c.u16("debug entry")?;
        if c.bytes[c.pos..c.pos + 2] == [0, 0] {
            c.pos += 2;
        } else {
            c.reserved(2, &field())?;
        }
        let index = c.u32("debug entry")?;
        let off = c.u32("debug entry")?;
        let slen = c.u32("debug entry")?;
        if let Some(p) = prev
            && (queue, index) <= p
        {
            return Err(c.malformed(
                at,
                field(),
                format!(
                    "the debug map is sorted by (queue, instruction) with no repeats, but (queue {queue}, instruction {index}) follows (queue {}, instruction {})",
                    p.0, p.1
                ),
            ));
        }
        prev = Some((queue, index));
        match queues.binary_search_by_key(&queue, |q| q.id) {
            Ok(q) if index < queues[q].count => {}
            Ok(q) => {
                return Err(c.malformed(
                    at,
                    field(),
                    format!(
                        "points at instruction {index} of queue {queue}, which has {} instructions",
                        queues[q].count
                    ),
                ));
            }
            Err(_) => {
                return Err(c.malformed(
                    at,
                    field(),
                    format!("points at queue {queue}, which the queues section does not have"),
                ));
            }
        }
        let s_end = u64::from(off) + u64::from(slen);
        if s_end > u64::from(pool_len) {
            return Err(c.malformed(
                at,
                field(),
                format!(
                    "its string (pool bytes {off}..{s_end}) ends past the pool's {pool_len} bytes"
                ),
            ));
        }
        let s = &c.bytes[pool.start + off as usize..pool.start + s_end as usize];
        let boundaries = pool_str.is_some_and(|p| {
            p.is_char_boundary(off as usize) && p.is_char_boundary(s_end as usize)
        });
        if !boundaries && let Err(e) = std::str::from_utf8(s) {
            return Err(c.malformed(
                pool.start + off as usize + e.valid_up_to(),
                field(),
                "its location string is not valid UTF-8".into(),
            ));
        }
    }
    c.pos = pool.end;
    c.finish("debug string pool")?;
    Ok(DebugInfo {
        entries: entries_start..pool.start,
        pool,
    })
}

fn parse_tables(mut c: Cursor<'_>) -> Result<Vec<(String, Range<usize>)>, LpuBinError> {
    let n = c.u32("table_count")?;
    c.reserved(4, "reserved")?;
    // A table record needs at least 2 + 8 bytes.
    c.check_count(u64::from(n), 10, "table records")?;
    let mut tables: Vec<(String, Range<usize>)> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = c.pos;
        let name = c.str16(&format!("table {i} name"))?.to_owned();
        if name.is_empty() {
            return Err(c.malformed(at, format!("table {i} name"), "must not be empty".into()));
        }
        if let Some((prev, _)) = tables.last()
            && name <= *prev
        {
            return Err(c.malformed(
                at,
                format!("table `{name}` name"),
                format!("tables are sorted by name with no repeats, but `{name}` follows `{prev}`"),
            ));
        }
        let dlen = c.u64(&format!("table `{name}` length"))?;
        let start = c.pos;
        c.take(dlen, &format!("table `{name}` data"))?;
        tables.push((name, start..c.pos));
    }
    c.finish("table")?;
    Ok(tables)
}

/// The `programs` section: a count, then per program its name and four
/// blobs (queues, symbols, tables, debug), each in its section's format and
/// padded to 8 bytes.
fn parse_programs(mut c: Cursor<'_>) -> Result<Vec<ProgramInfo>, LpuBinError> {
    let n = c.u32("program_count")?;
    c.reserved(4, "reserved")?;
    // A record needs at least a name length, one byte, padding and 4 lengths.
    c.check_count(u64::from(n), 40, "program records")?;
    let mut programs: Vec<ProgramInfo> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = c.pos;
        let name = c.str16(&format!("program {i} name"))?.to_owned();
        if name.is_empty() {
            return Err(c.malformed(at, format!("program {i} name"), "must not be empty".into()));
        }
        if programs.iter().any(|p| p.name == name) {
            return Err(c.malformed(
                at,
                format!("program `{name}` name"),
                "names must be unique".into(),
            ));
        }
        let padding = (align_up(c.pos as u64, 8) - c.pos as u64) as usize;
        c.reserved(padding as u64, &format!("program `{name}` name padding"))?;
        let mut lens = [0u64; 4];
        for (k, what) in ["queues", "symbols", "tables", "debug"].iter().enumerate() {
            lens[k] = c.u64(&format!("program `{name}` {what} length"))?;
        }
        if lens[0] == 0 {
            return Err(c.malformed(
                c.pos - 32,
                format!("program `{name}` queues length"),
                "a program must have its queues".into(),
            ));
        }
        let blob = |c: &mut Cursor<'_>,
                    k: usize,
                    what: &str|
         -> Result<Option<(usize, usize)>, LpuBinError> {
            if lens[k] == 0 {
                return Ok(None);
            }
            let start = c.pos;
            c.take(lens[k], &format!("program `{name}` {what}"))?;
            let end = c.pos;
            let pad = align_up(lens[k], 8) - lens[k];
            c.reserved(pad, &format!("program `{name}` {what} padding"))?;
            Ok(Some((start, end)))
        };
        let q = blob(&mut c, 0, "queues")?;
        let sy = blob(&mut c, 1, "symbols")?;
        let t = blob(&mut c, 2, "tables")?;
        let d = blob(&mut c, 3, "debug")?;
        let sub = |r: (usize, usize)| Cursor {
            bytes: c.bytes,
            pos: r.0,
            end: r.1,
            section: c.section,
            within: "program",
            path: c.path,
        };
        let queues = match q {
            Some(r) => parse_queues(sub(r))?,
            None => Vec::new(),
        };
        let symbols = match sy {
            Some(r) => parse_symbols(sub(r))?,
            None => Vec::new(),
        };
        let tables = match t {
            Some(r) => parse_tables(sub(r))?,
            None => Vec::new(),
        };
        let debug = match d {
            Some(r) => Some(parse_debug(sub(r), &queues)?),
            None => None,
        };
        programs.push(ProgramInfo {
            name,
            queues,
            symbols,
            tables,
            debug,
        });
    }
    c.finish("program")?;
    Ok(programs)
}
