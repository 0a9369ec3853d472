//! Validated, memory-mapped reader (and a small writer) for GGUF v3 model files.
//!
//! GGUF is llama.cpp's container: a header, typed metadata key/value pairs, a
//! table of tensor descriptors and an aligned data section. [`Gguf::open`]
//! maps the file and validates *everything* up front -- every length, every
//! type tag, every tensor's extent against the file size -- so that later
//! accessors cannot read out of bounds and a truncated or corrupted file is an
//! error, never a panic or a silently wrong tensor.
//!
//! Tensors of type F32, F16, Q8_0, Q4_0 and Q4_1 dequantize to f32 exactly as
//! llama.cpp's `dequantize_row_*` reference kernels do (see [`dequant`]). Other
//! tensor types are recognised (so the file's layout still validates) but
//! [`Gguf::tensor_f32`] refuses them with an error naming tensor and type.

pub mod dequant;
mod error;
mod parse;
mod types;
pub mod write;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use error::GgufError;
pub use types::{Array, GgmlType, TensorInfo, Value, ValueType};

/// The GGUF magic, "GGUF" read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An opened, fully validated GGUF file.
pub struct Gguf {
    backing: Backing,
    path: Option<PathBuf>,
    version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Maps and validates the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        // SAFETY: the mapping is read-only and private to this process. A
        // concurrent truncation of the file by another process could still
        // fault; that is the accepted contract of memory-mapped model files
        // (llama.cpp maps them the same way).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::build(Backing::Mapped(map), Some(path.to_path_buf()))
    }

    /// Validates an in-memory GGUF image (tests, synthetic models).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Self::build(Backing::Owned(bytes), None)
    }

    fn build(backing: Backing, path: Option<PathBuf>) -> Result<Gguf, GgufError> {
        let parsed = parse::parse(backing.bytes()).map_err(|e| e.with_path(path.as_deref()))?;
        let meta_index = parsed
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            backing,
            path,
            version: parsed.version,
            metadata: parsed.metadata,
            meta_index,
            tensors: parsed.tensors,
            tensor_index,
            data_offset: parsed.data_offset,
            alignment: parsed.alignment,
        })
    }

    /// The path this file was opened from, if it came from disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data, from `general.alignment` or the default 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every metadata pair, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: found.type_name(),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "string", other)),
        }
    }

    /// An integer value of any width or signedness that fits in a u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "non-negative integer", v))
    }

    /// A floating-point value (f32, f64, or an integer).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "number", v))
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(self.wrong_type(key, "bool", other)),
        }
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            other => Err(self.wrong_type(key, "array", other)),
        }
    }

    /// Every tensor descriptor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The descriptor of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// The raw (possibly quantized) bytes of a tensor. Extents were validated
    /// on open, so this cannot fail for a descriptor of this file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.backing.bytes()[start..start + t.n_bytes as usize]
    }

    /// The tensor `name` dequantized to f32, row-major with `dims[0]` the
    /// contiguous dimension (a weight of dims `[n_in, n_out]` is `n_out` rows
    /// of `n_in` values).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name)?;
        let mut out = vec![0.0f32; t.n_elements as usize];
        self.dequantize_into(t, &mut out)?;
        Ok(out)
    }

    /// Dequantizes rows `rows` (rows of `dims[0]` values) of a tensor into `out`.
    pub fn tensor_rows_f32(
        &self,
        t: &TensorInfo,
        rows: std::ops::Range<u64>,
        out: &mut [f32],
    ) -> Result<(), GgufError> {
        let cols = t.dims.first().copied().unwrap_or(1);
        if rows.end > t.rows() || rows.start > rows.end {
            return Err(GgufError::RowRange {
                name: t.name.clone(),
                start: rows.start,
                end: rows.end,
                rows: t.rows(),
            });
        }
        let n = ((rows.end - rows.start) * cols) as usize;
        if out.len() != n {
            return Err(GgufError::OutputLength {
                name: t.name.clone(),
                expected: n,
                got: out.len(),
            });
        }
        let (bs, ts) = t.ggml_type.block_layout().expect("validated on open");
        let row_bytes = (cols / bs * ts) as usize;
        let all = self.tensor_bytes(t);
        let bytes = &all[rows.start as usize * row_bytes..rows.end as usize * row_bytes];
        dequant::dequantize(t.ggml_type, bytes, out).map_err(|kind| GgufError::Unsupported {
            path: self.path.clone(),
            name: t.name.clone(),
            ggml_type: kind,
        })
    }

    fn dequantize_into(&self, t: &TensorInfo, out: &mut [f32]) -> Result<(), GgufError> {
        dequant::dequantize(t.ggml_type, self.tensor_bytes(t), out).map_err(|kind| {
            GgufError::Unsupported {
                path: self.path.clone(),
                name: t.name.clone(),
                ggml_type: kind,
            }
        })
    }
}
