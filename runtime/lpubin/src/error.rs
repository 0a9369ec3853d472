//! The format's error type: every variant names the file (or `<memory>`), the
//! section and field, and the byte offset that was wrong.

use std::fmt;
use std::path::PathBuf;

use crate::layout::{MAGIC, SectionKind};

/// Shows an optional path, or `<memory>` for in-memory images.
pub(crate) struct Shown<'a>(pub &'a Option<PathBuf>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("<memory>"),
        }
    }
}

/// Lower-case hex of a byte string.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything that can go wrong reading or writing an .lpubin file.
#[derive(Debug, thiserror::Error)]
pub enum LpuBinError {
    /// The file could not be opened, mapped, written or renamed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The first 8 bytes are not the .lpubin signature.
    #[error(
        "{}: bad magic at byte 0: found {}, expected {} (\"\\x89LPU\\r\\n\\x1a\\n\"): not an .lpubin file{hint}",
        Shown(path), hex(found), hex(&MAGIC)
    )]
    BadMagic {
        /// The file.
        path: Option<PathBuf>,
        /// The bytes found (up to 8).
        found: Vec<u8>,
        /// Why it may look almost right (text-mode transfer), or empty.
        hint: &'static str,
    },
    /// A format version this reader does not read.
    #[error(
        "{}: .lpubin format version {found} (header byte 8), but this reader reads only version {supported}",
        Shown(path)
    )]
    Version {
        /// The file.
        path: Option<PathBuf>,
        /// The version in the file.
        found: u16,
        /// The version this crate reads.
        supported: u16,
    },
    /// A structure runs past the end of the file, or of its section.
    #[error(
        "{}: truncated .lpubin: {section} field `{field}` needs bytes {offset}..{end}, but the {within} ends at byte {limit}",
        Shown(path)
    )]
    Truncated {
        /// The file.
        path: Option<PathBuf>,
        /// `header` or the section's name.
        section: &'static str,
        /// The field being read.
        field: String,
        /// Where the field starts (file offset).
        offset: u64,
        /// Where it would end.
        end: u64,
        /// Where the file or section ends.
        limit: u64,
        /// `file` or `section`.
        within: &'static str,
    },
    /// A stored CRC-32 does not match the bytes.
    #[error(
        "{}: checksum mismatch in {section} (bytes {offset}..{}): stored CRC-32 {expected:#010x}, computed {actual:#010x}; the file is corrupted",
        Shown(path), offset + length
    )]
    Checksum {
        /// The file.
        path: Option<PathBuf>,
        /// `header` or the section's name.
        section: &'static str,
        /// First byte covered.
        offset: u64,
        /// Bytes covered.
        length: u64,
        /// The CRC stored in the file.
        expected: u32,
        /// The CRC of the bytes.
        actual: u32,
    },
    /// A section table entry reaches past the end of the file.
    #[error(
        "{}: section `{section}` (table entry {index}) spans bytes {offset}..{} ({length} bytes), past the end of the file at byte {file_len}: the file is truncated or its table is corrupt",
        Shown(path), offset.saturating_add(*length)
    )]
    OutOfBounds {
        /// The file.
        path: Option<PathBuf>,
        /// The section.
        section: &'static str,
        /// Its index in the section table.
        index: usize,
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A section starts before the previous one (or the header) ends.
    #[error(
        "{}: section `{section}` starts at byte {offset}, inside the {previous}, which ends at byte {previous_end}",
        Shown(path)
    )]
    Overlap {
        /// The file.
        path: Option<PathBuf>,
        /// The section.
        section: &'static str,
        /// Its declared offset.
        offset: u64,
        /// `header` or the previous section's name.
        previous: &'static str,
        /// Where that ends.
        previous_end: u64,
    },
    /// A section is not where the layout rules put it.
    #[error(
        "{}: section `{section}` starts at byte {offset}, but sections follow each other at the next multiple of their alignment, so it must start at byte {expected}",
        Shown(path)
    )]
    Misplaced {
        /// The file.
        path: Option<PathBuf>,
        /// The section.
        section: &'static str,
        /// Its declared offset.
        offset: u64,
        /// Where it must start.
        expected: u64,
    },
    /// A padding byte is not zero.
    #[error(
        "{}: non-zero byte {value:#04x} at byte {offset} in the padding after the {after}; padding must be zero",
        Shown(path)
    )]
    Padding {
        /// The file.
        path: Option<PathBuf>,
        /// The byte's offset.
        offset: u64,
        /// Its value.
        value: u8,
        /// What the padding follows (`header`, `mem extent table`, ...).
        after: &'static str,
    },
    /// Bytes after the last section.
    #[error(
        "{}: {} bytes after the end of the last section (byte {end}); the file must end there",
        Shown(path), file_len - end
    )]
    TrailingBytes {
        /// The file.
        path: Option<PathBuf>,
        /// Where the last section ends.
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A section kind format version 1 does not define.
    #[error(
        "{}: section table entry {index} (byte {offset}) has kind {kind}, which .lpubin format version 1 does not define (it has queues=1, mem=2, symbols=3, metadata=4, tokenizer=5, debug=6, tables=7)",
        Shown(path)
    )]
    UnknownSection {
        /// The file.
        path: Option<PathBuf>,
        /// Index in the section table.
        index: usize,
        /// The entry's offset in the file.
        offset: u64,
        /// The unknown kind code.
        kind: u16,
    },
    /// A section kind appears twice.
    #[error(
        "{}: section table entry {index} (byte {offset}) repeats section `{kind}`; each kind appears at most once",
        Shown(path)
    )]
    DuplicateSection {
        /// The file.
        path: Option<PathBuf>,
        /// Index in the section table.
        index: usize,
        /// The entry's offset in the file.
        offset: u64,
        /// The repeated kind.
        kind: SectionKind,
    },
    /// A required section is absent.
    #[error(
        "{}: the file has no `{kind}` section, which every .lpubin must have",
        Shown(path)
    )]
    MissingSection {
        /// The file.
        path: Option<PathBuf>,
        /// The missing kind.
        kind: SectionKind,
    },
    /// A field holds a value the format does not allow.
    #[error(
        "{}: malformed {section} at byte {offset}, field `{field}`: {what}",
        Shown(path)
    )]
    Malformed {
        /// The file.
        path: Option<PathBuf>,
        /// `header`, `section table` or the section's name.
        section: &'static str,
        /// The field.
        field: String,
        /// Its offset in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The binary was built for another target.
    #[error(
        "{}: built for target `{target_name}` with hash {found}, but the expected target's hash is {expected}; recompile for this target",
        Shown(path)
    )]
    WrongTarget {
        /// The file.
        path: Option<PathBuf>,
        /// The target name recorded in the file.
        target_name: String,
        /// The hash recorded in the file (hex).
        found: String,
        /// The hash asked for (hex).
        expected: String,
    },
    /// The builder was given contents the format cannot hold.
    #[error("cannot build .lpubin: {section}: {what}")]
    Build {
        /// `header` or the section's name.
        section: &'static str,
        /// What is wrong.
        what: String,
    },
}
