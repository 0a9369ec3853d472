//! The system container (docs/lpubin.md section 6): one file holding a
//! whole system of chips, one ordinary `.lpubin` image per chip (its
//! program and its weights), page-aligned so that each maps without
//! copying, behind a header naming the target and the chip count (the
//! target and the chip count fix the links: `q35_target::SystemTopology`).
//!
//! [`LpuSystem::open`] maps the file once and validates all of it up front:
//! the header's fields and CRC-32, every chip's offset, length and CRC-32
//! (images start on the first page boundary after the chip table and each
//! next one on the first after the previous, padding is zero, the file
//! ends with the last image), and every chip image as [`LpuBinary`] does,
//! for the system's target. Errors name the file, the chip, the field and
//! its byte offset. [`SystemBuilder`] writes the canonical bytes.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layout::PAGE;
use crate::{Backing, LpuBinError, LpuBinary};

/// The first 8 bytes of a system file.
pub const SYSTEM_MAGIC: [u8; 8] = *b"\x89LPUSYS\n";
/// The system container version this crate reads and writes.
pub const SYSTEM_VERSION: u16 = 1;
/// Bytes of the fixed header, before the chip table.
pub const SYSTEM_HEADER_LEN: usize = 128;
/// Bytes of one chip table entry.
pub const CHIP_ENTRY_LEN: usize = 32;
/// Bytes the target name field holds (UTF-8, NUL-padded).
pub const TARGET_NAME_LEN: usize = 64;
/// The most chips a system file holds.
pub const MAX_CHIPS: u32 = 1 << 16;

/// Byte offset of the header CRC-32 (over bytes 0..120 and the chip table).
const CRC_AT: usize = 120;

/// What is wrong with a system file.
#[derive(Debug, thiserror::Error)]
pub enum SystemFileError {
    /// The file could not be read, mapped or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A header field or chip table entry is wrong.
    #[error("{path}: {field} (byte {offset}): {message}")]
    Field {
        /// The file (`<memory>` for bytes).
        path: String,
        /// The field (`chips`, `chip 3 offset`, ...).
        field: String,
        /// Its byte offset.
        offset: u64,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A chip's image is not a valid `.lpubin` for the system's target.
    #[error("{path}: chip {chip}: {source}")]
    Chip {
        /// The file.
        path: String,
        /// The chip.
        chip: u32,
        /// Why.
        source: Box<LpuBinError>,
    },
    /// Building: no chip, too many, or a target name that does not fit.
    #[error("system container: {0}")]
    Build(String),
}

/// Whether `bytes` start like a system file (for tools that accept both
/// kinds of file).
pub fn is_system(bytes: &[u8]) -> bool {
    bytes.starts_with(&SYSTEM_MAGIC)
}

/// An opened, fully validated system file.
#[derive(Debug)]
pub struct LpuSystem {
    path: Option<PathBuf>,
    target_name: String,
    target_hash: [u8; 32],
    chips: Vec<LpuBinary>,
    ranges: Vec<Range<u64>>,
}

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The first page boundary at or after `at` (saturating: a hostile length
/// lands past any file).
fn page_up(at: u64) -> u64 {
    at.div_ceil(PAGE).saturating_mul(PAGE)
}

/// Where each chip's image goes: the canonical layout for images of
/// these lengths (saturating, so hostile lengths give ranges past the end
/// of any file, which the reader refuses).
fn layout(lengths: &[u64]) -> Vec<Range<u64>> {
    let mut at = page_up((SYSTEM_HEADER_LEN + lengths.len() * CHIP_ENTRY_LEN) as u64);
    lengths
        .iter()
        .map(|&len| {
            let end = at.saturating_add(len);
            let r = at..end;
            at = page_up(end);
            r
        })
        .collect()
}

impl LpuSystem {
    /// Maps the file at `path` and validates all of it.
    pub fn open(path: impl AsRef<Path>) -> Result<LpuSystem, SystemFileError> {
        let path = path.as_ref();
        let io = |error| SystemFileError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Self::build(Backing::Owned(Vec::new()), Some(path.to_path_buf()));
        }
        // SAFETY: read-only and private to this process (as `LpuBinary::open`).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::build(
            Backing::Shared(Arc::new(map), 0..usize::MAX),
            Some(path.to_path_buf()),
        )
    }

    /// Validates an in-memory system file.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<LpuSystem, SystemFileError> {
        Self::build(Backing::Owned(bytes.into()), None)
    }

    fn build(backing: Backing, path: Option<PathBuf>) -> Result<LpuSystem, SystemFileError> {
        let shown = path
            .as_ref()
            .map_or_else(|| "<memory>".to_string(), |p| p.display().to_string());
        let b = backing.bytes();
        let field = |field: &str, offset: u64, message: String| SystemFileError::Field {
            path: shown.clone(),
            field: field.to_string(),
            offset,
            message,
        };
        if b.len() < SYSTEM_HEADER_LEN {
            return Err(field(
                "header",
                b.len() as u64,
                format!(
                    "the file ends after {} bytes, the header is {SYSTEM_HEADER_LEN}",
                    b.len()
                ),
            ));
        }
        if b[..8] != SYSTEM_MAGIC {
            return Err(field(
                "magic",
                0,
                "not a system file (expected \"\\x89LPUSYS\\n\")".into(),
            ));
        }
        let version = rd_u16(b, 8);
        if version != SYSTEM_VERSION {
            return Err(field(
                "version",
                8,
                format!("{version}, but this reader reads only version {SYSTEM_VERSION}"),
            ));
        }
        let flags = rd_u16(b, 10);
        if flags != 0 {
            return Err(field("flags", 10, format!("{flags:#06x}, expected 0")));
        }
        let chips = rd_u32(b, 12);
        if chips == 0 || chips > MAX_CHIPS {
            return Err(field(
                "chips",
                12,
                format!("{chips}, expected 1..={MAX_CHIPS}"),
            ));
        }
        let mut target_hash = [0u8; 32];
        target_hash.copy_from_slice(&b[16..48]);
        let name_field = &b[48..48 + TARGET_NAME_LEN];
        let name_len = name_field
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(TARGET_NAME_LEN);
        if name_len == 0 {
            return Err(field("target name", 48, "empty".into()));
        }
        if let Some(i) = name_field[name_len..].iter().position(|&c| c != 0) {
            return Err(field(
                "target name",
                (48 + name_len + i) as u64,
                "a non-zero byte in the name's padding".into(),
            ));
        }
        let target_name = std::str::from_utf8(&name_field[..name_len])
            .map_err(|e| field("target name", 48, format!("not UTF-8: {e}")))?
            .to_string();
        for at in [112usize, 124] {
            let width = if at == 112 { 8 } else { 4 };
            if b[at..at + width].iter().any(|&c| c != 0) {
                return Err(field("reserved", at as u64, "must be zero".into()));
            }
        }
        let table_end = SYSTEM_HEADER_LEN + chips as usize * CHIP_ENTRY_LEN;
        if b.len() < table_end {
            return Err(field(
                "chip table",
                b.len() as u64,
                format!(
                    "the file ends after {} bytes, the table of {chips} chips ends at {table_end}",
                    b.len()
                ),
            ));
        }
        let stored = rd_u32(b, CRC_AT);
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..CRC_AT]);
        h.update(&b[SYSTEM_HEADER_LEN..table_end]);
        let actual = h.finalize();
        if stored != actual {
            return Err(field(
                "header CRC-32",
                CRC_AT as u64,
                format!("stored {stored:#010x}, computed {actual:#010x}"),
            ));
        }
        // The chip table, checked against the canonical layout.
        let mut lengths = Vec::with_capacity(chips as usize);
        let mut crcs = Vec::with_capacity(chips as usize);
        for i in 0..chips as usize {
            let e = SYSTEM_HEADER_LEN + i * CHIP_ENTRY_LEN;
            let name = |f: &str| format!("chip {i} {f}");
            let len = rd_u64(b, e + 8);
            if len == 0 {
                return Err(field(&name("length"), (e + 8) as u64, "0".into()));
            }
            if b[e + 20..e + 32].iter().any(|&c| c != 0) {
                return Err(field(
                    &name("reserved"),
                    (e + 20) as u64,
                    "must be zero".into(),
                ));
            }
            lengths.push(len);
            crcs.push(rd_u32(b, e + 16));
        }
        let canonical = layout(&lengths);
        let mut images = Vec::with_capacity(chips as usize);
        let mut at = table_end as u64;
        for (i, r) in canonical.iter().enumerate() {
            let e = SYSTEM_HEADER_LEN + i * CHIP_ENTRY_LEN;
            let offset = rd_u64(b, e);
            if offset != r.start {
                return Err(field(
                    &format!("chip {i} offset"),
                    e as u64,
                    format!(
                        "{offset}, expected {} (the first page boundary after the previous image)",
                        r.start
                    ),
                ));
            }
            if r.end > b.len() as u64 {
                return Err(field(
                    &format!("chip {i} length"),
                    (e + 8) as u64,
                    format!(
                        "the image ends at byte {}, past the end of the file ({} bytes)",
                        r.end,
                        b.len()
                    ),
                ));
            }
            if let Some(p) = b[at as usize..r.start as usize]
                .iter()
                .position(|&c| c != 0)
            {
                return Err(field(
                    "padding",
                    at + p as u64,
                    format!("a non-zero byte before chip {i}'s image"),
                ));
            }
            let range = r.start as usize..r.end as usize;
            let actual = crc32fast::hash(&b[range.clone()]);
            if actual != crcs[i] {
                return Err(field(
                    &format!("chip {i} CRC-32"),
                    (e + 16) as u64,
                    format!("stored {:#010x}, computed {actual:#010x}", crcs[i]),
                ));
            }
            images.push(range);
            at = r.end;
        }
        if at != b.len() as u64 {
            return Err(field(
                "end of file",
                at,
                format!("{} bytes after the last chip's image", b.len() as u64 - at),
            ));
        }
        let ranges: Vec<Range<u64>> = images
            .iter()
            .map(|r| r.start as u64..r.end as u64)
            .collect();
        let mut out = Vec::with_capacity(images.len());
        for (i, range) in images.into_iter().enumerate() {
            let chip = i as u32;
            let chip_path = Some(PathBuf::from(format!("{shown}#chip{i}")));
            let image = match &backing {
                Backing::Shared(map, _) => Backing::Shared(Arc::clone(map), range),
                Backing::Owned(v) => Backing::Owned(v[range].to_vec()),
                Backing::Mapped(m) => Backing::Owned(m[range].to_vec()),
            };
            let bin =
                LpuBinary::build(image, chip_path).map_err(|source| SystemFileError::Chip {
                    path: shown.clone(),
                    chip,
                    source: Box::new(source),
                })?;
            if bin.target_name() != target_name || bin.target_hash() != &target_hash {
                return Err(SystemFileError::Chip {
                    path: shown.clone(),
                    chip,
                    source: Box::new(LpuBinError::WrongTarget {
                        path: bin.path().map(Path::to_path_buf),
                        target_name: bin.target_name().to_string(),
                        found: crate::error::hex(bin.target_hash()),
                        expected: crate::error::hex(&target_hash),
                    }),
                });
            }
            out.push(bin);
        }
        Ok(LpuSystem {
            path,
            target_name,
            target_hash,
            chips: out,
            ranges,
        })
    }

    /// The path it was opened from, if from disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The target every chip is compiled for.
    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// The SHA-256 hash of that target's description.
    pub fn target_hash(&self) -> &[u8; 32] {
        &self.target_hash
    }

    /// The chips' binaries, chip 0 first.
    pub fn chips(&self) -> &[LpuBinary] {
        &self.chips
    }

    /// Where each chip's image lies in the file (byte ranges, chip 0 first).
    pub fn chip_ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }
}

/// Writes a system file: the chips' `.lpubin` images in chip order.
#[derive(Debug, Clone)]
pub struct SystemBuilder {
    target_name: String,
    target_hash: [u8; 32],
    chips: Vec<Vec<u8>>,
}

impl SystemBuilder {
    /// A system of chips compiled for `target_name` (hash `target_hash`).
    pub fn new(target_name: &str, target_hash: [u8; 32]) -> SystemBuilder {
        SystemBuilder {
            target_name: target_name.to_string(),
            target_hash,
            chips: Vec::new(),
        }
    }

    /// Adds the next chip's `.lpubin` image.
    pub fn chip(&mut self, image: Vec<u8>) -> &mut SystemBuilder {
        self.chips.push(image);
        self
    }

    fn header(&self) -> Result<(Vec<u8>, Vec<Range<u64>>), SystemFileError> {
        let n = self.chips.len();
        if n == 0 || n > MAX_CHIPS as usize {
            return Err(SystemFileError::Build(format!(
                "{n} chips, expected 1..={MAX_CHIPS}"
            )));
        }
        let name = self.target_name.as_bytes();
        if name.is_empty() || name.len() > TARGET_NAME_LEN || name.contains(&0) {
            return Err(SystemFileError::Build(format!(
                "target name `{}`: 1..={TARGET_NAME_LEN} bytes without NUL",
                self.target_name
            )));
        }
        if let Some(i) = self.chips.iter().position(Vec::is_empty) {
            return Err(SystemFileError::Build(format!("chip {i}: an empty image")));
        }
        let lengths: Vec<u64> = self.chips.iter().map(|c| c.len() as u64).collect();
        let ranges = layout(&lengths);
        let mut h = vec![0u8; SYSTEM_HEADER_LEN + n * CHIP_ENTRY_LEN];
        h[..8].copy_from_slice(&SYSTEM_MAGIC);
        h[8..10].copy_from_slice(&SYSTEM_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(n as u32).to_le_bytes());
        h[16..48].copy_from_slice(&self.target_hash);
        h[48..48 + name.len()].copy_from_slice(name);
        for (i, (r, image)) in ranges.iter().zip(&self.chips).enumerate() {
            let e = SYSTEM_HEADER_LEN + i * CHIP_ENTRY_LEN;
            h[e..e + 8].copy_from_slice(&r.start.to_le_bytes());
            h[e + 8..e + 16].copy_from_slice(&(image.len() as u64).to_le_bytes());
            h[e + 16..e + 20].copy_from_slice(&crc32fast::hash(image).to_le_bytes());
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..CRC_AT]);
        c.update(&h[SYSTEM_HEADER_LEN..]);
        let crc = c.finalize();
        h[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        Ok((h, ranges))
    }

    /// The canonical bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SystemFileError> {
        let (mut out, ranges) = self.header()?;
        for (r, image) in ranges.iter().zip(&self.chips) {
            out.resize(r.start as usize, 0);
            out.extend_from_slice(image);
        }
        Ok(out)
    }

    /// Writes the file to `path` atomically (a temporary beside it, synced,
    /// renamed); on error no partial file is left.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<(), SystemFileError> {
        let path = path.as_ref();
        let (header, ranges) = self.header()?;
        crate::write::write_atomically(path, |w| {
            w.write_all(&header)?;
            let mut at = header.len() as u64;
            for (r, image) in ranges.iter().zip(&self.chips) {
                w.write_all(&vec![0u8; (r.start - at) as usize])?;
                w.write_all(image)?;
                at = r.end;
            }
            Ok(())
        })
        .map_err(|error| SystemFileError::Io {
            path: path.to_path_buf(),
            error,
        })
    }
}
