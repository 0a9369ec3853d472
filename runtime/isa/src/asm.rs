//! Assembly syntax of one instruction: printing ([`std::fmt::Display`]) and
//! parsing ([`Instruction::parse`]), both driven by the table's syntax
//! templates (`{name}` placeholders between literal `,` and `->`).
//!
//! Operand spellings: streams `s<id>.<e|w>`; integers in decimal (`0x` hex
//! also accepted); f32 immediates as the shortest decimal that reads back to
//! the same bits (`1.5`, `-0.0`, `inf`) or as a bit pattern `0x7fc00001`;
//! element widths `1`, `2`, `4`; accumulate flags `new`, `add`; tables by
//! name in a program, or `#<index>` anywhere.

use std::fmt;
use std::str::FromStr;

use crate::info::InstrInfo;
use crate::instr::check_operand;
use crate::operand::{
    Acc, Dir, ElemWidth, F32Imm, Operand, OperandKind, Operands, STREAMS_PER_DIRECTION, Stream,
    TableId,
};
use crate::table::{Instruction, Opcode};

/// A syntax error in one instruction's text, at a column of that text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{col}: {message}")]
pub struct ParseError {
    /// 1-based column (in characters) of the offending token.
    pub col: usize,
    /// What is wrong, naming the token.
    pub message: String,
}

/// A token of instruction text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Comma,
    Arrow,
    Word(&'a str),
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Comma => f.write_str(","),
            Tok::Arrow => f.write_str("->"),
            Tok::Word(w) => f.write_str(w),
        }
    }
}

/// Splits text into `,`, `->` and words, with 1-based character columns.
fn lex(text: &str) -> Vec<(usize, Tok<'_>)> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    let col_of = |byte: usize| text[..byte].chars().count() + 1;
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == ',' {
            out.push((col_of(i), Tok::Comma));
            chars.next();
        } else if text[i..].starts_with("->") {
            out.push((col_of(i), Tok::Arrow));
            chars.next();
            chars.next();
        } else {
            let start = i;
            let mut end = text.len();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_whitespace() || d == ',' || text[j..].starts_with("->") {
                    end = j;
                    break;
                }
                chars.next();
            }
            out.push((col_of(start), Tok::Word(&text[start..end])));
        }
    }
    out
}

/// An unsigned integer, decimal or `0x` hex.
fn parse_u64(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// A signed integer, decimal.
fn parse_i64(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A stream `s<id>.<e|w>` (any id; range checked by the caller).
pub(crate) fn parse_stream(text: &str) -> Option<(u64, Dir)> {
    let rest = text.strip_prefix('s')?;
    let (id, dir) = rest.split_once('.')?;
    let dir = match dir {
        "e" => Dir::East,
        "w" => Dir::West,
        _ => return None,
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, dir))
}

/// An f32 literal: a decimal Rust `f32` accepts, or a `0x` bit pattern.
pub(crate) fn parse_f32(text: &str) -> Option<F32Imm> {
    if let Some(hex) = text.strip_prefix("0x") {
        return u32::from_str_radix(hex, 16).ok().map(F32Imm);
    }
    text.parse::<f32>().ok().map(F32Imm::new)
}

/// One operand of kind `kind` from its token.
fn parse_operand(
    kind: OperandKind,
    name: &str,
    word: &str,
    tables: &dyn Fn(&str) -> Option<TableId>,
) -> Result<Operand, String> {
    let expected = || {
        format!(
            "operand `{name}`: expected {}, found `{word}`",
            kind.describe()
        )
    };
    let too_big = || {
        format!(
            "operand `{name}`: `{word}` is out of range ({})",
            kind.describe()
        )
    };
    match kind {
        OperandKind::Stream { .. } => {
            let (id, dir) = parse_stream(word).ok_or_else(expected)?;
            if id >= u64::from(STREAMS_PER_DIRECTION) {
                return Err(format!(
                    "operand `{name}`: stream `{word}` is out of range (s0..s31)"
                ));
            }
            Ok(Operand::Stream(Stream { id: id as u8, dir }))
        }
        OperandKind::Addr | OperandKind::UInt { .. } => {
            let v = parse_u64(word).ok_or_else(expected)?;
            Ok(Operand::UInt(u32::try_from(v).map_err(|_| too_big())?))
        }
        OperandKind::Int { .. } => {
            let v = parse_i64(word).ok_or_else(expected)?;
            Ok(Operand::Int(i32::try_from(v).map_err(|_| too_big())?))
        }
        OperandKind::F32 => parse_f32(word).map(Operand::F32).ok_or_else(expected),
        OperandKind::ElemWidth => parse_u64(word)
            .and_then(ElemWidth::from_bytes)
            .map(Operand::ElemWidth)
            .ok_or_else(expected),
        OperandKind::Table => {
            if let Some(index) = word.strip_prefix('#') {
                let v = parse_u64(index).ok_or_else(expected)?;
                return Ok(Operand::Table(TableId(
                    u16::try_from(v).map_err(|_| too_big())?,
                )));
            }
            tables(word)
                .map(Operand::Table)
                .ok_or_else(|| format!("operand `{name}`: unknown table `{word}`"))
        }
        OperandKind::Acc => match word {
            "new" => Ok(Operand::Acc(Acc::New)),
            "add" => Ok(Operand::Acc(Acc::Add)),
            _ => Err(expected()),
        },
    }
}

/// A template token: a literal separator or an operand placeholder.
enum Slot<'a> {
    Lit(Tok<'a>),
    Operand(&'a str),
}

fn template(info: &InstrInfo) -> Vec<Slot<'static>> {
    lex(info.syntax)
        .into_iter()
        .map(|(_, t)| match t {
            Tok::Word(w) => Slot::Operand(w.trim_start_matches('{').trim_end_matches('}')),
            Tok::Comma | Tok::Arrow => Slot::Lit(t),
        })
        .collect()
}

impl Instruction {
    /// Parses one instruction, e.g. `fadd s0.e, s4.w -> s8.e`. `tables`
    /// resolves table names (`#<index>` always works). Fields are range
    /// checked; errors give the column of the offending token.
    pub fn parse(
        text: &str,
        tables: &dyn Fn(&str) -> Option<TableId>,
    ) -> Result<Instruction, ParseError> {
        let toks = lex(text);
        let end_col = text.chars().count() + 1;
        let Some(&(col, first)) = toks.first() else {
            return Err(ParseError {
                col: 1,
                message: "expected an instruction".into(),
            });
        };
        let Tok::Word(mnemonic) = first else {
            return Err(ParseError {
                col,
                message: format!("expected a mnemonic, found `{first}`"),
            });
        };
        let info = Opcode::from_mnemonic(mnemonic)
            .ok_or_else(|| ParseError {
                col,
                message: format!("unknown mnemonic `{mnemonic}`"),
            })?
            .info();
        let mut rest = toks[1..].iter().copied();
        let mut ops = Operands::new();
        let mut cols = Vec::new();
        for slot in template(info) {
            let next = rest.next();
            match (slot, next) {
                (Slot::Lit(lit), Some((_, t))) if t == lit => {}
                (Slot::Lit(lit), Some((col, t))) => {
                    return Err(ParseError {
                        col,
                        message: format!("`{mnemonic}`: expected `{lit}`, found `{t}`"),
                    });
                }
                (Slot::Lit(lit), None) => {
                    return Err(ParseError {
                        col: end_col,
                        message: format!(
                            "`{mnemonic}`: expected `{lit}` (syntax: {})",
                            info.synopsis()
                        ),
                    });
                }
                (Slot::Operand(name), Some((col, Tok::Word(word)))) => {
                    let i = info.operand_index(name).unwrap_or(ops.len());
                    let kind = info.operands[i].kind;
                    let op = parse_operand(kind, name, word, tables).map_err(|m| ParseError {
                        col,
                        message: format!("`{mnemonic}` {m}"),
                    })?;
                    let pushed = ops.push(op);
                    debug_assert!(pushed, "MAX_OPERANDS is checked against the table");
                    cols.push(col);
                }
                (Slot::Operand(name), Some((col, t))) => {
                    return Err(ParseError {
                        col,
                        message: format!("`{mnemonic}`: expected operand `{name}`, found `{t}`"),
                    });
                }
                (Slot::Operand(name), None) => {
                    return Err(ParseError {
                        col: end_col,
                        message: format!(
                            "`{mnemonic}`: missing operand `{name}` (syntax: {})",
                            info.synopsis()
                        ),
                    });
                }
            }
        }
        if let Some((col, t)) = rest.next() {
            return Err(ParseError {
                col,
                message: format!("`{mnemonic}`: unexpected `{t}` after the last operand"),
            });
        }
        for (i, &op) in ops.iter().enumerate() {
            check_operand(info, &ops, i, op).map_err(|e| ParseError {
                col: cols[i],
                message: e.to_string(),
            })?;
        }
        Instruction::from_operands(info.opcode, &ops).ok_or_else(|| ParseError {
            col,
            message: format!("`{mnemonic}`: operands do not match the table"),
        })
    }

    /// Writes the instruction with tables named by `table_name` (`#<index>`
    /// when it returns `None`).
    pub fn write_asm(
        &self,
        f: &mut dyn fmt::Write,
        table_name: &dyn Fn(TableId) -> Option<String>,
    ) -> fmt::Result {
        let info = self.info();
        let ops = self.operands();
        f.write_str(info.mnemonic)?;
        for slot in template(info) {
            match slot {
                Slot::Lit(Tok::Comma) => f.write_str(",")?,
                Slot::Lit(t) => write!(f, " {t}")?,
                Slot::Operand(name) => {
                    f.write_str(" ")?;
                    let op = info.operand_index(name).and_then(|i| ops.get(i).copied());
                    match op {
                        Some(Operand::Stream(s)) => write!(f, "{s}")?,
                        Some(Operand::UInt(v)) => write!(f, "{v}")?,
                        Some(Operand::Int(v)) => write!(f, "{v}")?,
                        Some(Operand::F32(v)) => write!(f, "{v}")?,
                        Some(Operand::ElemWidth(ew)) => write!(f, "{}", ew.bytes())?,
                        Some(Operand::Table(t)) => match table_name(t) {
                            Some(name) => f.write_str(&name)?,
                            None => write!(f, "#{}", t.0)?,
                        },
                        Some(Operand::Acc(a)) => f.write_str(a.keyword())?,
                        None => f.write_str("?")?,
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_asm(f, &|_| None)
    }
}

impl FromStr for Instruction {
    type Err = ParseError;
    /// Parses one instruction; tables only as `#<index>`.
    fn from_str(s: &str) -> Result<Instruction, ParseError> {
        Instruction::parse(s, &|_| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses() {
        for text in [
            "fadd s0.e, s4.w -> s8.e",
            "nop 7",
            "repeat 3, 2, -1",
            "halt",
            "read 12, s3.w",
            "gather s0.e -> s2.e, 100",
            "fconst -1.5 -> s0.e",
            "fconst 0x7fc00001 -> s0.e",
            "shift s0.e -> s4.e, 1, 160, 2",
            "shift s0.e -> s4.w, 160, 320, 4",
            "permute s0.e -> s1.e, #3, 1",
            "mm s0.w -> s4.e, add",
            "lw s0.w, 16, 320",
            "unpack35 s0.e -> s16.e, 4, 7",
        ] {
            let ins: Instruction = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(ins.to_string(), text);
        }
    }

    #[test]
    fn errors_name_the_token() {
        let err = |t: &str| t.parse::<Instruction>().expect_err(t);
        assert_eq!(err("fadd s0.e, s4.w s8.e").col, 17);
        assert!(
            err("fadd s0.e, s4.w s8.e")
                .message
                .contains("expected `->`")
        );
        assert_eq!(err("  frob s0.e").message, "unknown mnemonic `frob`");
        assert_eq!(err("  frob s0.e").col, 3);
        let e = err("read 1, s32.e");
        assert_eq!(e.col, 9);
        assert!(e.message.contains("s32.e"), "{}", e.message);
        assert!(err("read 70000, s1.e").message.contains("70000"));
        assert!(
            err("read s1.e, 3")
                .message
                .contains("expected word address")
        );
        assert!(err("halt now").message.contains("unexpected `now`"));
        assert!(
            err("fadd s0.e, s4.w ->")
                .message
                .contains("missing operand `dst`")
        );
        let e = err("transpose s20.e -> s0.e");
        assert!(e.message.contains("runs past stream 31"), "{}", e.message);
        assert_eq!(e.col, 11);
        assert!(
            err("bcast s0.e -> s4.e, 320, 4")
                .message
                .contains("0..=319")
        );
        assert!(
            err("permute s0.e -> s1.e, rev, 1")
                .message
                .contains("unknown table `rev`")
        );
        assert!(
            err("mm s0.w -> s4.e, sub")
                .message
                .contains("`new` or `add`")
        );
    }
}
