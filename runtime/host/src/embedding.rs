//! The token embedding as the host looks it up (the `.lpubin` section
//! `embedding`, docs/lpubin.md 3.8): f32 rows, or a Q35 matrix (the tied,
//! quantized LM head) whose row `t` the host dequantizes, equal bit for bit
//! to `GoldenModel::embedding_row(t)`.

use q35_contract::QuantizedMatrix;
use q35_lpubin::{EmbeddingEncoding, LpuBinary};

/// The section is missing or does not hold a table.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// No `embedding` section.
    #[error("the binary has no embedding section (the host cannot turn tokens into inputs)")]
    Missing,
    /// The Q35 matrix does not parse.
    #[error("embedding: the Q35 matrix is corrupt: {0}")]
    Corrupt(String),
    /// The table's shape disagrees with the section header or the metadata.
    #[error("embedding: {0}")]
    Shape(String),
    /// A token outside the table.
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token {
        /// The token.
        token: u32,
        /// Rows of the table.
        vocab: usize,
    },
}

/// The embedding table.
#[derive(Debug, Clone)]
pub enum EmbeddingTable {
    /// `rows x cols` f32, row-major.
    F32 {
        /// Columns (the hidden size).
        cols: usize,
        /// The values.
        data: Vec<f32>,
    },
    /// A quantized matrix, dequantized a row at a time.
    Q35(QuantizedMatrix),
}

impl EmbeddingTable {
    /// The table of a binary's `embedding` section.
    pub fn from_binary(bin: &LpuBinary) -> Result<EmbeddingTable, EmbeddingError> {
        let e = bin.embedding().ok_or(EmbeddingError::Missing)?;
        let (rows, cols) = (e.rows as usize, e.cols as usize);
        match e.encoding {
            EmbeddingEncoding::F32 => Ok(EmbeddingTable::F32 {
                cols,
                data: crate::device::f32_values(e.data),
            }),
            EmbeddingEncoding::Q35 => {
                let m = QuantizedMatrix::from_bytes(e.data)
                    .map_err(|err| EmbeddingError::Corrupt(err.to_string()))?;
                if (m.rows(), m.cols()) != (rows, cols) {
                    return Err(EmbeddingError::Shape(format!(
                        "the Q35 matrix is {}x{}, the section header says {rows}x{cols}",
                        m.rows(),
                        m.cols()
                    )));
                }
                Ok(EmbeddingTable::Q35(m))
            }
        }
    }

    /// The section contents for a table (`Builder::embedding` arguments):
    /// encoding, rows, cols, data.
    pub fn section(&self) -> (EmbeddingEncoding, u64, u64, Vec<u8>) {
        match self {
            EmbeddingTable::F32 { cols, data } => (
                EmbeddingEncoding::F32,
                (data.len() / (*cols).max(1)) as u64,
                *cols as u64,
                crate::device::f32_bytes(data),
            ),
            EmbeddingTable::Q35(m) => (
                EmbeddingEncoding::Q35,
                m.rows() as u64,
                m.cols() as u64,
                m.to_bytes(),
            ),
        }
    }

    /// Rows (the vocabulary).
    pub fn rows(&self) -> usize {
        match self {
            EmbeddingTable::F32 { cols, data } => data.len() / (*cols).max(1),
            EmbeddingTable::Q35(m) => m.rows(),
        }
    }

    /// Columns (the hidden size).
    pub fn cols(&self) -> usize {
        match self {
            EmbeddingTable::F32 { cols, .. } => *cols,
            EmbeddingTable::Q35(m) => m.cols(),
        }
    }

    /// The embedding of `token`.
    pub fn row(&self, token: u32) -> Result<Vec<f32>, EmbeddingError> {
        let t = token as usize;
        let out = match self {
            EmbeddingTable::F32 { cols, data } => {
                data.get(t * cols..(t + 1) * cols).map(<[f32]>::to_vec)
            }
            EmbeddingTable::Q35(m) => m.dequantize_row(t),
        };
        out.ok_or(EmbeddingError::Token {
            token,
            vocab: self.rows(),
        })
    }
}
