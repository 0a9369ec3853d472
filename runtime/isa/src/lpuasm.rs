//! The `.lpuasm` text form of a [`Program`] (docs/isa.md, "Assembly"): the
//! assembler ([`assemble`]) and the disassembler ([`Program::to_lpuasm`]),
//! whose output assembles back to the identical program.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use q35_lpubin::SymbolKind;

use crate::operand::TableId;
use crate::program::{
    DType, MemData, MemInit, Placement, Program, Symbol, Table, check_mem, check_placement,
    check_symbol, is_ident,
};
use crate::queue::QueueId;
use crate::table::Instruction;

/// An assembly error, located at the token it names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct AsmError {
    /// The file name given to [`assemble`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Word(String),
    Comma,
    Open,
    Close,
}

#[derive(Clone, Debug)]
struct Tok {
    line: usize,
    col: usize,
    kind: Kind,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Word(w) => f.write_str(w),
            Kind::Comma => f.write_str(","),
            Kind::Open => f.write_str("["),
            Kind::Close => f.write_str("]"),
        }
    }
}

/// The text of a line before its `;` comment.
fn code(line: &str) -> &str {
    line.split_once(';').map_or(line, |(c, _)| c)
}

/// Tokens of one line of a directive.
fn lex_line(line_no: usize, text: &str, out: &mut Vec<Tok>) {
    let mut word: Option<(usize, String)> = None;
    let flush = |word: &mut Option<(usize, String)>, out: &mut Vec<Tok>| {
        if let Some((col, w)) = word.take() {
            out.push(Tok {
                line: line_no,
                col,
                kind: Kind::Word(w),
            });
        }
    };
    for (i, c) in code(text).chars().enumerate() {
        let col = i + 1;
        let punct = match c {
            ',' => Some(Kind::Comma),
            '[' => Some(Kind::Open),
            ']' => Some(Kind::Close),
            _ => None,
        };
        if c.is_whitespace() || punct.is_some() {
            flush(&mut word, out);
            if let Some(kind) = punct {
                out.push(Tok {
                    line: line_no,
                    col,
                    kind,
                });
            }
        } else {
            word.get_or_insert_with(|| (col, String::new())).1.push(c);
        }
    }
    flush(&mut word, out);
}

struct Asm<'a> {
    file: &'a str,
    program: Program,
    target_seen: bool,
    queue: Option<QueueId>,
    table_names: BTreeMap<String, TableId>,
    symbol_names: BTreeMap<String, ()>,
}

/// A cursor over one directive's tokens.
struct Cursor<'t> {
    toks: &'t [Tok],
    pos: usize,
    /// Where "end of directive" is reported.
    end: (usize, usize),
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<&Tok> {
        let t = self.toks.get(self.pos);
        self.pos += 1;
        t
    }
}

impl Asm<'_> {
    fn err(&self, line: usize, col: usize, message: impl Into<String>) -> AsmError {
        AsmError {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
        }
    }

    fn err_at(&self, t: &Tok, message: impl Into<String>) -> AsmError {
        self.err(t.line, t.col, message)
    }

    /// The next word, or an error saying `what` was expected.
    fn word<'c>(&self, c: &'c mut Cursor<'_>, what: &str) -> Result<(&'c Tok, &'c str), AsmError> {
        let end = c.end;
        match c.next() {
            Some(t) => match &t.kind {
                Kind::Word(w) => Ok((t, w.as_str())),
                other => Err(self.err_at(t, format!("expected {what}, found `{other}`"))),
            },
            None => Err(self.err(
                end.0,
                end.1,
                format!("expected {what} at the end of the line"),
            )),
        }
    }

    fn punct(&self, c: &mut Cursor<'_>, kind: Kind) -> Result<(), AsmError> {
        let end = c.end;
        match c.next() {
            Some(t) if t.kind == kind => Ok(()),
            Some(t) => Err(self.err_at(t, format!("expected `{kind}`, found `{}`", t.kind))),
            None => Err(self.err(
                end.0,
                end.1,
                format!("expected `{kind}` at the end of the line"),
            )),
        }
    }

    fn done(&self, c: &Cursor<'_>) -> Result<(), AsmError> {
        match c.peek() {
            Some(t) => Err(self.err_at(
                t,
                format!("unexpected `{}` at the end of the directive", t.kind),
            )),
            None => Ok(()),
        }
    }

    /// `[ w, w, ... ]`: the words with their tokens.
    fn list<'c>(&self, c: &'c mut Cursor<'_>) -> Result<Vec<&'c Tok>, AsmError> {
        self.punct(c, Kind::Open)?;
        let mut out = Vec::new();
        let end = c.end;
        loop {
            let Some(pos) = c.toks.get(c.pos).map(|_| c.pos) else {
                return Err(self.err(end.0, end.1, "unclosed `[`"));
            };
            let t = &c.toks[pos];
            c.pos += 1;
            match &t.kind {
                Kind::Close if out.is_empty() => return Ok(out),
                Kind::Word(_) => out.push(t),
                other => return Err(self.err_at(t, format!("expected a value, found `{other}`"))),
            }
            match c.next().map(|t| (t.kind.clone(), t.line, t.col)) {
                Some((Kind::Comma, ..)) => {}
                Some((Kind::Close, ..)) => return Ok(out),
                Some((other, line, col)) => {
                    return Err(self.err(
                        line,
                        col,
                        format!("expected `,` or `]`, found `{other}`"),
                    ));
                }
                None => return Err(self.err(end.0, end.1, "unclosed `[`")),
            }
        }
    }

    fn queue_name(&self, t: &Tok, w: &str) -> Result<QueueId, AsmError> {
        w.parse::<QueueId>()
            .map_err(|e| self.err_at(t, e.to_string()))
    }

    /// `<slice>[+<slice>...] @<addr>`, with the token of the slices.
    fn placement(&self, c: &mut Cursor<'_>) -> Result<(Tok, Placement), AsmError> {
        let (t, w) = self.word(c, "a MEM slice")?;
        let (t, w) = (t.clone(), w.to_string());
        let mut slices = Vec::new();
        let mut offset = 0;
        for part in w.split('+') {
            let q = part
                .parse::<QueueId>()
                .map_err(|e| self.err(t.line, t.col + offset, e.to_string()))?;
            slices.push(q);
            offset += part.chars().count() + 1;
        }
        let addr = self.address(c)?;
        Ok((t, Placement { slices, addr }))
    }

    fn address(&self, c: &mut Cursor<'_>) -> Result<u32, AsmError> {
        let (t, w) = self.word(c, "an address `@<word>`")?;
        w.strip_prefix('@')
            .and_then(|a| a.parse::<u32>().ok())
            .filter(|&a| a <= crate::program::MAX_WORD_ADDRESS)
            .ok_or_else(|| {
                self.err_at(
                    t,
                    format!("expected an address `@0`..`@65535`, found `{w}`"),
                )
            })
    }

    fn dtype(&self, c: &mut Cursor<'_>) -> Result<DType, AsmError> {
        let (t, w) = self.word(c, "a type (i8 u8 i16 u16 i32 f16 f32)")?;
        DType::from_name(w).ok_or_else(|| {
            self.err_at(
                t,
                format!("unknown type `{w}` (expected i8 u8 i16 u16 i32 f16 f32)"),
            )
        })
    }

    fn value(&self, t: &Tok, dtype: DType) -> Result<u32, AsmError> {
        let Kind::Word(w) = &t.kind else {
            return Err(self.err_at(t, format!("expected a {dtype} value, found `{}`", t.kind)));
        };
        dtype
            .parse_value(w)
            .ok_or_else(|| self.err_at(t, format!("`{w}` is not a {dtype} value")))
    }

    fn directive(&mut self, toks: &[Tok]) -> Result<(), AsmError> {
        let last = toks.last().map_or((1, 1), |t| {
            (t.line, t.col + t.kind.to_string().chars().count())
        });
        let mut c = Cursor {
            toks,
            pos: 0,
            end: last,
        };
        let (head, name) = self.word(&mut c, "a directive")?;
        let (head, name) = (head.clone(), name.to_string());
        if name != ".target" && !self.target_seen {
            return Err(self.err_at(&head, format!("expected `.target` before `{name}`")));
        }
        match name.as_str() {
            ".target" => {
                if self.target_seen {
                    return Err(self.err_at(&head, "`.target` given twice"));
                }
                let (t, w) = self.word(&mut c, "a target name")?;
                if !is_ident(w) {
                    return Err(self.err_at(t, format!("`{w}` is not a target name")));
                }
                self.program.target = w.to_string();
                self.target_seen = true;
            }
            ".queue" => {
                let (t, w) = self.word(&mut c, "a queue name")?;
                let q = self.queue_name(t, w)?;
                if self.program.queues.insert(q, Vec::new()).is_some() {
                    return Err(
                        self.err_at(t, format!("queue `{q}` has a `.queue` section already"))
                    );
                }
                self.queue = Some(q);
            }
            ".table" => {
                let (t, w) = self.word(&mut c, "a table name")?;
                let (t, tname) = (t.clone(), w.to_string());
                if !is_ident(&tname) {
                    return Err(self.err_at(&t, format!("`{tname}` is not a name")));
                }
                if self.table_names.contains_key(&tname) {
                    return Err(self.err_at(&t, format!("table `{tname}` is defined twice")));
                }
                let (tt, ty) = self.word(&mut c, "the table type `u16`")?;
                if ty != "u16" {
                    return Err(self.err_at(tt, format!("tables hold u16, found `{ty}`")));
                }
                let items = self.list(&mut c)?;
                let values = items
                    .iter()
                    .map(|t| self.value(t, DType::U16).map(|v| v as u16))
                    .collect::<Result<Vec<_>, _>>()?;
                self.done(&c)?;
                let id = u16::try_from(self.program.tables.len())
                    .map_err(|_| self.err_at(&t, "more than 65536 tables"))?;
                self.table_names.insert(tname.clone(), TableId(id));
                self.program.tables.push(Table {
                    name: tname,
                    values,
                });
                return Ok(());
            }
            ".mem" => {
                let (t, at) = self.placement(&mut c)?;
                let dtype = self.dtype(&mut c)?;
                let data = match c.peek().map(|t| &t.kind) {
                    Some(Kind::Word(w)) if w == "fill" => {
                        c.next();
                        let (vt, _) = self.word(&mut c, "the fill value")?;
                        let value = self.value(vt, dtype)?;
                        self.punct(&mut c, Kind::Comma)?;
                        let (nt, n) = self.word(&mut c, "the element count")?;
                        let count = n.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                            self.err_at(nt, format!("expected an element count >= 1, found `{n}`"))
                        })?;
                        MemData::Fill { value, count }
                    }
                    _ => {
                        let items = self.list(&mut c)?;
                        MemData::Values(
                            items
                                .iter()
                                .map(|t| self.value(t, dtype))
                                .collect::<Result<_, _>>()?,
                        )
                    }
                };
                let init = MemInit { at, dtype, data };
                check_mem(&init).map_err(|m| self.err_at(&t, format!(".mem {}: {m}", init.at)))?;
                self.program.mem.push(init);
            }
            ".symbol" => {
                let (t, w) = self.word(&mut c, "a symbol name")?;
                let (t, sname) = (t.clone(), w.to_string());
                if !is_ident(&sname) {
                    return Err(self.err_at(&t, format!("`{sname}` is not a name")));
                }
                if self.symbol_names.insert(sname.clone(), ()).is_some() {
                    return Err(self.err_at(&t, format!("symbol `{sname}` is defined twice")));
                }
                // An optional kind (docs/isa.md 6); a symbol without one is
                // an output.
                let kind = match c.peek().map(|t| &t.kind) {
                    Some(Kind::Word(w)) => {
                        match SymbolKind::ALL.into_iter().find(|k| k.name() == w.as_str()) {
                            Some(k) => {
                                c.next();
                                k
                            }
                            None => SymbolKind::Output,
                        }
                    }
                    _ => SymbolKind::Output,
                };
                let dtype = self.dtype(&mut c)?;
                let dims = self
                    .list(&mut c)?
                    .iter()
                    .map(|t| match &t.kind {
                        Kind::Word(w) => {
                            w.parse::<u32>().ok().filter(|&d| d > 0).ok_or_else(|| {
                                self.err_at(t, format!("expected a dimension >= 1, found `{w}`"))
                            })
                        }
                        other => {
                            Err(self.err_at(t, format!("expected a dimension, found `{other}`")))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let (at, w) = self.word(&mut c, "`at`")?;
                if w != "at" {
                    return Err(self.err_at(at, format!("expected `at`, found `{w}`")));
                }
                let (qt, at) = self.placement(&mut c)?;
                let sym = Symbol {
                    name: sname,
                    kind,
                    dtype,
                    dims,
                    at,
                };
                check_symbol(&sym)
                    .map_err(|m| self.err_at(&qt, format!(".symbol {}: {m}", sym.name)))?;
                self.program.symbols.push(sym);
            }
            _ => return Err(self.err_at(&head, format!("unknown directive `{name}`"))),
        }
        self.done(&c)
    }

    fn instruction(&mut self, line_no: usize, text: &str) -> Result<(), AsmError> {
        let col = text.chars().take_while(|c| c.is_whitespace()).count() + 1;
        let Some(queue) = self.queue else {
            return Err(self.err(line_no, col, "instruction outside a `.queue` section"));
        };
        let names = &self.table_names;
        let ins = Instruction::parse(text, &|n| names.get(n).copied())
            .map_err(|e| self.err(line_no, e.col, e.message))?;
        let list = self.program.queues.entry(queue).or_default();
        check_placement(queue, list.last(), &ins, &self.program.tables)
            .map_err(|m| self.err(line_no, col, format!("`{ins}` in {queue}: {m}")))?;
        self.program.queues.entry(queue).or_default().push(ins);
        Ok(())
    }
}

/// Assembles `.lpuasm` text (`file` names it in errors). The result passes
/// [`Program::validate`].
pub fn assemble(file: &str, text: &str) -> Result<Program, AsmError> {
    let mut asm = Asm {
        file,
        program: Program::default(),
        target_seen: false,
        queue: None,
        table_names: BTreeMap::new(),
        symbol_names: BTreeMap::new(),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let body = code(lines[i]);
        i += 1;
        if body.trim().is_empty() {
            continue;
        }
        if body.trim_start().starts_with('.') {
            // A directive; a `[` list may continue over the next lines.
            let mut toks = Vec::new();
            lex_line(line_no, lines[i - 1], &mut toks);
            let depth = |toks: &[Tok]| {
                toks.iter().fold(0i64, |d, t| match t.kind {
                    Kind::Open => d + 1,
                    Kind::Close => d - 1,
                    Kind::Word(_) | Kind::Comma => d,
                })
            };
            while depth(&toks) > 0 && i < lines.len() {
                lex_line(i + 1, lines[i], &mut toks);
                i += 1;
            }
            asm.directive(&toks)?;
        } else {
            asm.instruction(line_no, body)?;
        }
    }
    if !asm.target_seen {
        return Err(asm.err(1, 1, "missing `.target` (e.g. `.target lpu-v1`)"));
    }
    // Everything validate() checks was checked above with a location; this
    // catches what spans entries (overlapping `.mem`).
    asm.program
        .validate()
        .map_err(|e| asm.err(lines.len().max(1), 1, e.to_string()))?;
    Ok(asm.program)
}

/// Values per line in the disassembler's lists.
const PER_LINE: usize = 16;

fn write_list(out: &mut String, items: &[String]) {
    if items.len() <= PER_LINE {
        let _ = write!(out, "[{}]", items.join(", "));
        return;
    }
    out.push_str("[\n");
    let chunks: Vec<&[String]> = items.chunks(PER_LINE).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let sep = if i + 1 < chunks.len() { "," } else { "" };
        let _ = writeln!(out, "    {}{sep}", chunk.join(", "));
    }
    out.push(']');
}

impl Program {
    /// The program as `.lpuasm` text; [`assemble`] reads it back to an
    /// identical program.
    pub fn to_lpuasm(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, ".target {}", self.target);
        for t in &self.tables {
            let _ = write!(out, ".table {} u16 ", t.name);
            write_list(
                &mut out,
                &t.values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            );
            out.push('\n');
        }
        for m in &self.mem {
            let _ = write!(out, ".mem {} {} ", m.at, m.dtype);
            match &m.data {
                MemData::Values(v) => {
                    let items: Vec<String> = v.iter().map(|&b| m.dtype.format_value(b)).collect();
                    write_list(&mut out, &items);
                }
                MemData::Fill { value, count } => {
                    let _ = write!(out, "fill {}, {count}", m.dtype.format_value(*value));
                }
            }
            out.push('\n');
        }
        for s in &self.symbols {
            let dims: Vec<String> = s.dims.iter().map(|d| d.to_string()).collect();
            // `output` is the default and is not written, so listings of
            // programs without kinds stay as they were.
            let kind = match s.kind {
                SymbolKind::Output => String::new(),
                k => format!("{k} "),
            };
            let _ = writeln!(
                out,
                ".symbol {} {kind}{} [{}] at {}",
                s.name,
                s.dtype,
                dims.join(", "),
                s.at
            );
        }
        let table_name = |t: TableId| self.tables.get(usize::from(t.0)).map(|t| t.name.clone());
        for (q, list) in &self.queues {
            let _ = writeln!(out, "\n.queue {q}");
            for ins in list {
                out.push_str("    ");
                let _ = ins.write_asm(&mut out, &table_name);
                out.push('\n');
            }
        }
        out
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_lpuasm())
    }
}
