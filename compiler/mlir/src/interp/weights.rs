//! Weights for the interpreter, bound by GGUF tensor name.
//!
//! The IR never holds a weight value: each `q35.weight` declaration names
//! its GGUF tensor (`source = "blk.0.attn_q.weight"`). A [`WeightBinder`]
//! maps those names to data in the contract's forms: an unpacked quantized
//! matrix ([`IntMatrix`]), an f32 vector (norm weights) or an f32 table (an
//! unquantized embedding or LM head). [`WeightBinder::from_golden`] binds
//! the very matrices a [`GoldenModel`] runs, so comparing the interpreter
//! with that golden model compares the IR's semantics, not two
//! quantizations.

use std::collections::BTreeMap;

use q35_contract::{GoldenHead, GoldenModel, IntMatrix};

/// One bound weight, borrowed from its owner.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'w> {
    /// A quantized matrix, `rows x cols` as applied (`y = W x`).
    Matrix(&'w IntMatrix),
    /// An f32 vector (RMSNorm weights).
    Vector(&'w [f32]),
    /// An f32 matrix, row-major (an embedding or LM head kept f32).
    Table {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// `rows x cols` values.
        data: &'w [f32],
    },
}

impl Binding<'_> {
    /// What the binding holds, for diagnostics (`a 64x64 quantized matrix
    /// (group 32)`).
    pub fn describe(&self) -> String {
        match self {
            Binding::Matrix(m) => format!(
                "a {}x{} quantized matrix (group {})",
                m.rows(),
                m.cols(),
                m.group_size()
            ),
            Binding::Vector(v) => format!("an f32 vector of {}", v.len()),
            Binding::Table { rows, cols, .. } => format!("a {rows}x{cols} f32 table"),
        }
    }
}

/// Weights by GGUF tensor name (the `source` of `q35.weight`).
#[derive(Debug, Clone, Default)]
pub struct WeightBinder<'w> {
    by_source: BTreeMap<String, Binding<'w>>,
}

impl<'w> WeightBinder<'w> {
    /// An empty binder.
    pub fn new() -> Self {
        WeightBinder::default()
    }

    /// Binds `source`; returns the binding it replaces, if any.
    pub fn bind(&mut self, source: impl Into<String>, binding: Binding<'w>) -> Option<Binding<'w>> {
        self.by_source.insert(source.into(), binding)
    }

    /// The binding of `source`.
    pub fn get(&self, source: &str) -> Option<Binding<'w>> {
        self.by_source.get(source).copied()
    }

    /// The bound names, sorted.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.by_source.keys().map(String::as_str)
    }

    /// Binds every tensor of `golden` under its GGUF name: per block the
    /// norms and the seven matrices (`Architecture::block_linears` names, in
    /// the golden block's order), `output_norm.weight`, and the LM head
    /// under `Architecture::lm_head`'s name (`token_embd.weight` when tied,
    /// so the embedding lookup reads the head, as the contract says; an
    /// untied model's `token_embd.weight` is the golden model's f32
    /// embedding table), and a rotated model's head mix as the f32 table
    /// `output_mix` (`q35_frontend::OUTPUT_MIX`).
    pub fn from_golden(golden: &'w GoldenModel) -> Self {
        let arch = golden.arch();
        let mut b = WeightBinder::new();
        for (i, blk) in golden.blocks().iter().enumerate() {
            b.bind(
                format!("blk.{i}.attn_norm.weight"),
                Binding::Vector(&blk.attn_norm),
            );
            b.bind(
                format!("blk.{i}.ffn_norm.weight"),
                Binding::Vector(&blk.ffn_norm),
            );
            let matrices = [
                &blk.q, &blk.k, &blk.v, &blk.o, &blk.gate, &blk.up, &blk.down,
            ];
            let specs = arch.block_linears(u32::try_from(i).unwrap_or(u32::MAX));
            for (spec, m) in specs.into_iter().zip(matrices) {
                b.bind(spec.name, Binding::Matrix(m));
            }
        }
        b.bind("output_norm.weight", Binding::Vector(golden.output_norm()));
        let (hidden, vocab) = (arch.hidden as usize, arch.vocab as usize);
        let head = match golden.head() {
            GoldenHead::Quantized(m) => Binding::Matrix(m),
            GoldenHead::F32(w) => Binding::Table {
                rows: vocab,
                cols: hidden,
                data: w,
            },
        };
        b.bind(arch.lm_head().name, head);
        if let Some(mix) = golden.head_mix() {
            b.bind(
                q35_frontend::OUTPUT_MIX,
                Binding::Table {
                    rows: hidden,
                    cols: hidden,
                    data: mix,
                },
            );
        }
        if !arch.tied_embeddings {
            b.bind(
                "token_embd.weight",
                Binding::Table {
                    rows: vocab,
                    cols: hidden,
                    data: golden.embedding(),
                },
            );
        }
        b
    }
}
