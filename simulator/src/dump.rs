//! Reading a symbol's values out of MEM after a run, and formatting them by
//! element type and shape (text and JSON).
//!
//! A symbol's `layout` says how its elements sit in the words of its
//! placement; the two layouts are `q35-isa`'s (docs/isa.md 6,
//! `runtime/isa/src/lpubin.rs`). Elements are packed lane-wise: element `i`
//! is lane `i mod 320` of vector `i div 320`; a `b`-byte element keeps byte
//! `j` (little-endian) in its own word:
//!
//! - [`LAYOUT_LANES`]: the placement's ranges, concatenated, are one list of
//!   words; vector `v` takes words `v*b .. v*b + b`, word `v*b + j` holding
//!   byte `j`.
//! - [`LAYOUT_LANES_SPLIT`]: `b` ranges, one per byte: byte `j` of vector
//!   `v` is word `v` of range `j` (the layout whose words, read by `b`
//!   slices on one cycle, arrive as one stream group).

use q35_lpubin::{ElemType, Symbol};
use serde_json::{Value, json};

use crate::state::State;
use crate::streams::LANES;

/// Layout note: one list of words, bytes of an element in consecutive words.
pub const LAYOUT_LANES: &str = q35_isa::lpubin::LAYOUT_ONE_SLICE;
/// Layout note: one range per byte of an element.
pub const LAYOUT_LANES_SPLIT: &str = q35_isa::lpubin::LAYOUT_PLANES;

/// A symbol that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("symbol `{name}`: {message}")]
pub struct DumpError {
    /// The symbol.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// A symbol's values as read from MEM: little-endian bit patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct Dumped {
    /// Name.
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Shape.
    pub shape: Vec<u64>,
    /// The elements' bit patterns, in order.
    pub bits: Vec<u32>,
}

/// Reads `sym` from the MEM of `state`.
pub fn read_symbol(state: &State, sym: &Symbol) -> Result<Dumped, DumpError> {
    let err = |message: String| DumpError {
        name: sym.name.clone(),
        message,
    };
    let b = sym.elem.size();
    let count = sym
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err("shape overflows".into()))?;
    if count > 1 << 28 {
        return Err(err(format!("{count} elements: too many to dump")));
    }
    let count = count as usize;
    let vectors = count.div_ceil(LANES);
    // Words as (slice, address), in the order the layout reads them.
    let word_at = |range_words: &[(u16, u32)], k: usize| range_words.get(k).copied();
    let ranges: Vec<Vec<(u16, u32)>> = sym
        .placement
        .iter()
        .map(|r| (0..r.words).map(|w| (r.slice, r.first_word + w)).collect())
        .collect();
    let get = |slice: u16, addr: u32| -> Result<&[u8; LANES], DumpError> {
        let s = state
            .mem
            .get(usize::from(slice))
            .ok_or_else(|| err(format!("slice {slice} is not a MEM slice")))?;
        if addr >= s.words() {
            return Err(err(format!("word {addr} is outside slice {slice}")));
        }
        Ok(s.word(addr))
    };
    let mut bits = vec![0u32; count];
    match sym.layout.as_str() {
        LAYOUT_LANES => {
            let all: Vec<(u16, u32)> = ranges.concat();
            if all.len() < vectors * b {
                return Err(err(format!(
                    "{} words hold {count} {}-byte elements only with {} words",
                    all.len(),
                    b,
                    vectors * b
                )));
            }
            for v in 0..vectors {
                for j in 0..b {
                    let (slice, addr) = word_at(&all, v * b + j).expect("checked length");
                    let word = get(slice, addr)?;
                    for l in 0..LANES.min(count - v * LANES) {
                        bits[v * LANES + l] |= u32::from(word[l]) << (8 * j);
                    }
                }
            }
        }
        LAYOUT_LANES_SPLIT => {
            if ranges.len() != b || ranges.iter().any(|r| r.len() < vectors) {
                return Err(err(format!(
                    "layout `{LAYOUT_LANES_SPLIT}` needs {b} ranges of at least {vectors} words"
                )));
            }
            for (j, range) in ranges.iter().enumerate() {
                for v in 0..vectors {
                    let (slice, addr) = range[v];
                    let word = get(slice, addr)?;
                    for l in 0..LANES.min(count - v * LANES) {
                        bits[v * LANES + l] |= u32::from(word[l]) << (8 * j);
                    }
                }
            }
        }
        other => {
            return Err(err(format!(
                "layout `{other}` is not one the simulator reads (`{LAYOUT_LANES}`, `{LAYOUT_LANES_SPLIT}`)"
            )));
        }
    }
    Ok(Dumped {
        name: sym.name.clone(),
        elem: sym.elem,
        shape: sym.shape.clone(),
        bits,
    })
}

/// One element as text.
fn format_one(elem: ElemType, bits: u32) -> String {
    match elem {
        ElemType::I8 => (bits as u8 as i8).to_string(),
        ElemType::U8 => (bits as u8).to_string(),
        ElemType::I32 => (bits as i32).to_string(),
        ElemType::I16 => (bits as u16 as i16).to_string(),
        ElemType::U16 => (bits as u16).to_string(),
        ElemType::F16 => format!("{:?}", half::f16::from_bits(bits as u16).to_f32()),
        ElemType::F32 => format!("{:?}", f32::from_bits(bits)),
    }
}

/// One element as JSON (non-finite floats as strings).
fn json_one(elem: ElemType, bits: u32) -> Value {
    let float = |x: f32| {
        if x.is_finite() {
            json!(x)
        } else {
            json!(format!("{x:?}"))
        }
    };
    match elem {
        ElemType::I8 => json!(bits as u8 as i8),
        ElemType::U8 => json!(bits as u8),
        ElemType::I32 => json!(bits as i32),
        ElemType::I16 => json!(bits as u16 as i16),
        ElemType::U16 => json!(bits as u16),
        ElemType::F16 => float(half::f16::from_bits(bits as u16).to_f32()),
        ElemType::F32 => float(f32::from_bits(bits)),
    }
}

fn nest(out: &mut String, elem: ElemType, shape: &[u64], bits: &[u32]) {
    match shape.split_first() {
        None => out.push_str(&format_one(elem, bits.first().copied().unwrap_or(0))),
        Some((&n, rest)) => {
            let inner: usize = rest.iter().product::<u64>() as usize;
            out.push('[');
            for i in 0..n as usize {
                if i > 0 {
                    out.push_str(", ");
                }
                nest(out, elem, rest, &bits[i * inner..(i + 1) * inner]);
            }
            out.push(']');
        }
    }
}

impl Dumped {
    /// `name: type[shape] = values` with the values nested by the shape.
    pub fn to_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(u64::to_string).collect();
        let mut out = format!("{}: {}[{}] = ", self.name, self.elem, dims.join(", "));
        nest(&mut out, self.elem, &self.shape, &self.bits);
        out
    }

    /// `{name, dtype, shape, values}` with the values flat.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "dtype": self.elem.name(),
            "shape": self.shape,
            "values": self.bits.iter().map(|&b| json_one(self.elem, b)).collect::<Vec<_>>(),
        })
    }
}
