//! Locating problems in TOML text: byte offsets to `line:col`, the dotted
//! key (`mxm.rows`) of the line a parser error points at, and the reverse,
//! the line of a dotted key whose value failed a semantic check.
//!
//! Shared by q35-target and q35-model so target files and model.toml files
//! report problems the same way: `file:line:col: \`table.key\`: message`.
//! The TOML these describe is flat: `[table]` headers and `key = value`
//! lines, no dotted keys or inline tables.

use std::fmt;

/// 1-based (line, column) of byte `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

fn floor_char_boundary(src: &str, offset: usize) -> usize {
    let mut i = offset.min(src.len());
    while !src.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted key (`architecture.hidden`) of a `key = value` line holding
/// byte `offset`, from the nearest `[table]` header above it.
pub fn key_at(src: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(src, offset);
    let start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = src[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = src[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

/// 1-based (line, column) of the value of dotted key `key` (`mem.bytes`, or
/// `clock_mhz` for a top-level key): the inverse of [`key_at`]. `None` if
/// the text does not spell the key as a `key = value` line.
pub fn locate(src: &str, key: &str) -> Option<(usize, usize)> {
    let (table, leaf) = match key.rsplit_once('.') {
        Some((t, l)) => (Some(t), l),
        None => (None, key),
    };
    let mut current: Option<&str> = None;
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[[") {
            current = Some(trimmed.trim_matches(|c| c == '[' || c == ']').trim());
        } else if !trimmed.starts_with('#')
            && let Some((k, rest)) = line.split_once('=')
            && k.trim() == leaf
            && current == table
        {
            let value = k.len() + 1 + (rest.len() - rest.trim_start().len());
            return Some(line_col(src, offset + value));
        }
        offset += line.len();
    }
    None
}

/// Formats an optional location as `:line:col` (nothing when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc(pub Option<(usize, usize)>);

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((l, c)) => write!(f, ":{l}:{c}"),
            None => Ok(()),
        }
    }
}

/// A TOML parser error, located: what `Syntax` diagnostics carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlDiagnostic {
    /// 1-based line (1 when the parser gives no span).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The dotted key of the offending line, when it is a `key = value` line.
    pub key: Option<String>,
    /// The parser's message (it names unknown or missing fields itself).
    pub message: String,
}

/// Locates a TOML parser (or schema) error in `text`.
pub fn toml_error(text: &str, e: &toml::de::Error) -> TomlDiagnostic {
    let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
    TomlDiagnostic {
        line,
        col,
        key: e.span().and_then(|s| key_at(text, s.start)),
        message: e.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name = \"x\"\n[mxm]\n# rows = 1\nrows =  320 # c\n[mem]\nrows = 7\n";

    #[test]
    fn locate_is_the_inverse_of_key_at() {
        assert_eq!(locate(TEXT, "name"), Some((1, 8)));
        assert_eq!(locate(TEXT, "mxm.rows"), Some((4, 9)));
        assert_eq!(locate(TEXT, "mem.rows"), Some((6, 8)));
        assert_eq!(locate(TEXT, "mxm.cols"), None);
        let offset = TEXT.find("320").unwrap();
        assert_eq!(key_at(TEXT, offset).as_deref(), Some("mxm.rows"));
        assert_eq!(line_col(TEXT, offset), (4, 9));
    }

    #[test]
    fn loc_prints_only_known_positions() {
        assert_eq!(Loc(Some((3, 4))).to_string(), ":3:4");
        assert_eq!(Loc(None).to_string(), "");
    }
}
