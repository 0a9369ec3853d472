//! The bounds-checked parser: header, metadata, tensor table, data extents.
//!
//! Every read goes through [`Cursor`], which refuses to run past the end of
//! the image; every declared count is checked against the bytes that remain
//! before anything is allocated, so a corrupted length cannot make the reader
//! allocate gigabytes or loop for long.

use std::collections::HashSet;

use crate::types::{Array, GgmlType, TensorInfo, Value, ValueType};
use crate::{DEFAULT_ALIGNMENT, GgufError, MAGIC};

/// Largest number of dimensions ggml supports.
const MAX_DIMS: u32 = 4;
/// Nesting limit for arrays of arrays (real files use none).
const MAX_ARRAY_DEPTH: u32 = 4;

pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    pub alignment: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn malformed(&self, offset: usize, what: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: None,
            offset: offset as u64,
            what: what.into(),
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: None,
                what: what.to_owned(),
                offset: self.pos as u64,
                // A corrupted length can be near 2^64: saturate, not overflow.
                end: (self.pos as u64).saturating_add(n),
                len: self.len(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| self.malformed(at, format!("{what} is not valid UTF-8")))
    }

    /// Checks that `count` elements of at least `min_size` bytes can fit.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(GgufError::Truncated {
                path: None,
                what: format!("{what} ({count} elements)"),
                offset: self.pos as u64,
                end: (self.pos as u64).saturating_add(count.saturating_mul(min_size)),
                len: self.len(),
            }),
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("value of `{key}`");
        let Some(vt) = ValueType::from_id(ty) else {
            return Err(self.malformed(self.pos - 4, format!("`{key}`: unknown value type {ty}")));
        };
        Ok(match vt {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what())?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what())?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what())?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(&what())?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.malformed(at, format!("`{key}`: bool byte {b}"))),
                }
            }
            ValueType::String => Value::String(self.string(&what())?),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what())?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Array, GgufError> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(at, format!("`{key}`: arrays nested too deeply")));
        }
        let ty = self.u32(&format!("array type of `{key}`"))?;
        let n = self.u64(&format!("array length of `{key}`"))?;
        let what = format!("array `{key}`");
        macro_rules! prim {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>() as u64;
                self.check_count(n, size, &what)?;
                let raw = self.take(n * size, &what)?;
                Array::$variant(
                    raw.chunks_exact(size as usize)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        let Some(et) = ValueType::from_id(ty) else {
            return Err(self.malformed(at, format!("`{key}`: unknown array type {ty}")));
        };
        Ok(match et {
            ValueType::U8 => prim!(U8, u8),
            ValueType::I8 => prim!(I8, i8),
            ValueType::U16 => prim!(U16, u16),
            ValueType::I16 => prim!(I16, i16),
            ValueType::U32 => prim!(U32, u32),
            ValueType::I32 => prim!(I32, i32),
            ValueType::F32 => prim!(F32, f32),
            ValueType::U64 => prim!(U64, u64),
            ValueType::I64 => prim!(I64, i64),
            ValueType::F64 => prim!(F64, f64),
            ValueType::Bool => {
                self.check_count(n, 1, &what)?;
                let raw = self.take(n, &what)?;
                let mut out = Vec::with_capacity(raw.len());
                for (i, &b) in raw.iter().enumerate() {
                    match b {
                        0 => out.push(false),
                        1 => out.push(true),
                        _ => {
                            return Err(self.malformed(
                                self.pos - raw.len() + i,
                                format!("`{key}`[{i}]: bool byte {b}"),
                            ));
                        }
                    }
                }
                Array::Bool(out)
            }
            ValueType::String => {
                // Each string needs at least its 8-byte length.
                self.check_count(n, 8, &what)?;
                let mut out = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    out.push(self.string(&what)?);
                }
                Array::String(out)
            }
            ValueType::Array => {
                // Each nested array needs at least its 12-byte header.
                self.check_count(n, 12, &what)?;
                let mut out = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    out.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(out)
            }
        })
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.u32("magic")?;
    if magic != MAGIC {
        return Err(c.malformed(0, format!("bad magic {magic:#010x}, not a GGUF file")));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(c.malformed(
            4,
            format!("unsupported GGUF version {version} (2 or 3 read)"),
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;

    // A key/value pair needs at least 8 (key length) + 4 (type) + 1 bytes.
    c.check_count(n_kv, 13, "metadata")?;
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut seen = HashSet::new();
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.string("metadata key")?;
        if !seen.insert(key.clone()) {
            return Err(c.malformed(at, format!("duplicate metadata key `{key}`")));
        }
        let ty = c.u32(&format!("type of `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(c.malformed(
                    c.pos,
                    format!("`general.alignment` must be a power of two, found {v:?}"),
                ));
            }
        },
    };

    // A tensor descriptor needs at least 8 + 4 + 4 + 8 bytes.
    c.check_count(n_tensors, 24, "tensor table")?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let at = c.pos;
        let name = c.string("tensor name")?;
        if !names.insert(name.clone()) {
            return Err(c.malformed(at, format!("duplicate tensor `{name}`")));
        }
        let n_dims = c.u32(&format!("dimension count of `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.malformed(at, format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("dimensions of `{name}`"))?);
        }
        let ty_id = c.u32(&format!("type of `{name}`"))?;
        let ggml_type = GgmlType::from_id(ty_id)
            .ok_or_else(|| c.malformed(at, format!("tensor `{name}` has unknown type {ty_id}")))?;
        let offset = c.u64(&format!("offset of `{name}`"))?;
        if offset % alignment != 0 {
            return Err(c.malformed(
                at,
                format!("tensor `{name}` offset {offset} is not aligned to {alignment}"),
            ));
        }
        // Zero-sized dimensions are allowed (an empty tensor), but not to
        // hide the others: rows, row lengths and their bytes are computed
        // from the nonzero ones, so their product must fit in its bytes too.
        let (block, block_bytes) = ggml_type.block_layout().expect("known type");
        let extent = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)))
            .and_then(|e| (e / block).checked_mul(block_bytes));
        if extent.is_none() {
            return Err(c.malformed(at, format!("tensor `{name}` dimensions overflow")));
        }
        let n_elements = dims.iter().product::<u64>();
        if dims[0] % block != 0 {
            return Err(c.malformed(
                at,
                format!(
                    "tensor `{name}`: first dimension {} is not a multiple of {ggml_type}'s block of {block}",
                    dims[0]
                ),
            ));
        }
        let n_bytes = (n_elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| c.malformed(at, format!("tensor `{name}` size overflows")))?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
        });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => {
                let _ = s;
            }
            _ => {
                return Err(GgufError::Truncated {
                    path: None,
                    what: format!("data of tensor `{}` ({})", t.name, t.ggml_type),
                    offset: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    len: file_len,
                });
            }
        }
    }
    // Overlapping tensors mean a corrupted table.
    let mut extents: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.n_bytes, t.name.as_str()))
        .collect();
    extents.sort_unstable();
    for w in extents.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(c.malformed(
                c.pos,
                format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2),
            ));
        }
    }

    Ok(Parsed {
        version,
        metadata,
        tensors,
        data_offset,
        alignment,
    })
}
