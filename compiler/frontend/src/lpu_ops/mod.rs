//! The lpu ops, defined once: name, attributes and meaning of every op of
//! the `lpu` dialect, the hardware level of one decode step (one token)
//! that `--lpu-lower` produces from a q35 module (docs/lpu-dialect.md).
//!
//! [`OPS`] is the one table, in the style of [`crate::ops::OPS`] for q35.
//! Derived from it:
//! - the IRDL dialect `dialects/lpu.irdl.mlir` ([`irdl::render`]; a test
//!   fails when the checked-in file differs, `Q35_BLESS=1` rewrites it);
//! - the lowering (`q35_mlir::lpu`), which builds each op from the table's
//!   attribute names and kinds, in table order;
//! - the lpu interpreter (`q35_mlir::lpu::interp`), which reads each op's
//!   buffers and parameters by the table's roles ([`Role`]).
//!
//! Every lpu op has no operands and no results: the values it reads and
//! writes are module-level `lpu.buffer`s (and `lpu.weight`s) named by flat
//! symbol reference attributes, so a placement pass can give each buffer
//! MEM slices and an address and a scheduler can annotate each op with the
//! cycles it occupies. One op per model op: tiles are attributes, never ops.
//!
//! [`OpKind`] is the op's identity for dispatch; match on it exhaustively.
//! This module knows nothing of MLIR's API.

pub mod irdl;

/// The dialect's name, the prefix of every op (`lpu.matmul`).
pub const DIALECT: &str = "lpu";

/// The module attribute holding the compiled context (positions), `i64`.
pub const CONTEXT_ATTR: &str = "lpu.context";

/// The attribute a scheduler puts on each op: `[first, last]` cycles (i64).
pub const CYCLES_ATTR: &str = "lpu.cycles";

/// The attribute a scheduler puts on `@decode`: the program's cycles (i64).
pub const TOTAL_CYCLES_ATTR: &str = "lpu.total_cycles";

/// The placement attributes of `lpu.buffer` and `lpu.weight`: MEM slice
/// names (array of strings) and the first word address (i64).
pub const SLICES_ATTR: &str = "slices";
/// See [`SLICES_ATTR`].
pub const ADDR_ATTR: &str = "addr";

/// The fixed buffers of the decode program (host inputs, output, tables).
pub mod buffers {
    /// Host input: the token's embedding row, f32[hidden].
    pub const X_IN: &str = "x_in";
    /// Host input: the position on every lane, i16[lanes] (u16 bits).
    pub const POS_IDX: &str = "pos_idx";
    /// Host input: the K-cache scatter offsets, i16[lanes] (u16 bits): lane
    /// `pos % lanes` holds `pos / lanes`, every other lane the junk word.
    pub const KV_IDX: &str = "kv_idx";
    /// Host input: the attention mask, f32[ctx]: 0.0 at t <= pos, -inf after.
    pub const ATTN_MASK: &str = "attn_mask";
    /// Output: the logits, f32[vocab].
    pub const LOGITS: &str = "logits";
    /// Table: cos of every rotary pair, per position, f32[ctx, lanes].
    pub const ROPE_COS: &str = "rope_cos";
    /// Table: signed sin of every rotary pair, per position, f32[ctx, lanes].
    pub const ROPE_SIN: &str = "rope_sin";
    /// The `source` of the generated cos table (not a weight).
    pub const ROPE_COS_SOURCE: &str = "rope.cos";
    /// The `source` of the generated sin table (not a weight).
    pub const ROPE_SIN_SOURCE: &str = "rope.sin";

    /// Block `b`'s K cache (K^T: kv_dim rows of (W+1)*lanes positions).
    pub fn kcache(b: usize) -> String {
        format!("kcache_{b}")
    }

    /// Block `b`'s V cache (ctx rows of Wv*lanes values).
    pub fn vcache(b: usize) -> String {
        format!("vcache_{b}")
    }
}

/// What an `lpu.buffer` holds (its `kind` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BufferKind {
    /// Written by the host before each step.
    Input,
    /// Read by the host after each step.
    Output,
    /// A KV cache, kept across steps.
    Kv,
    /// Constant data loaded with the program (norm vectors, RoPE tables).
    Const,
    /// An intermediate value of the step.
    Scratch,
}

impl BufferKind {
    /// Every kind, in declaration order.
    pub const ALL: [BufferKind; 5] = [
        BufferKind::Input,
        BufferKind::Output,
        BufferKind::Kv,
        BufferKind::Const,
        BufferKind::Scratch,
    ];

    /// The spelling in IR (`"scratch"`).
    pub fn as_str(self) -> &'static str {
        match self {
            BufferKind::Input => "input",
            BufferKind::Output => "output",
            BufferKind::Kv => "kv",
            BufferKind::Const => "const",
            BufferKind::Scratch => "scratch",
        }
    }

    /// The kind spelled `s`, if any.
    pub fn parse(s: &str) -> Option<BufferKind> {
        BufferKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The spellings of [`BufferKind`], for the table's `kind` constraint.
pub const BUFFER_KINDS: [&str; 5] = ["input", "output", "kv", "const", "scratch"];

/// Identity of an lpu op, for dispatch. In [`OPS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `lpu.buffer`: a module-level MEM buffer.
    Buffer,
    /// `lpu.weight`: a module-level packed, tiled weight matrix.
    Weight,
    /// `lpu.rmsnorm`.
    RmsNorm,
    /// `lpu.quantize`: the f32 half of int8 activation quantization.
    Quantize,
    /// `lpu.matmul`: tiled int8 x 3.5-bit matmul, groups combined.
    MatMul,
    /// `lpu.rope`.
    Rope,
    /// `lpu.kv_write`.
    KvWrite,
    /// `lpu.attention`: masked attention over the whole context.
    Attention,
    /// `lpu.swiglu`.
    SwiGlu,
    /// `lpu.add`.
    Add,
    /// `lpu.mix`: the block-diagonal f32 mix along lanes.
    Mix,
}

impl OpKind {
    /// Every op, in table order.
    pub const ALL: [OpKind; 11] = [
        OpKind::Buffer,
        OpKind::Weight,
        OpKind::RmsNorm,
        OpKind::Quantize,
        OpKind::MatMul,
        OpKind::Rope,
        OpKind::KvWrite,
        OpKind::Attention,
        OpKind::SwiGlu,
        OpKind::Add,
        OpKind::Mix,
    ];

    /// The op's definition.
    pub fn def(self) -> &'static OpDef {
        &OPS[self as usize]
    }

    /// The full op name (`lpu.matmul`).
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The op named `name` (`lpu.matmul`), if it is one.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the op is a module-level declaration (`lpu.buffer`,
    /// `lpu.weight`) rather than a step of `@decode`.
    pub fn is_declaration(self) -> bool {
        match self {
            OpKind::Buffer | OpKind::Weight => true,
            OpKind::RmsNorm
            | OpKind::Quantize
            | OpKind::MatMul
            | OpKind::Rope
            | OpKind::KvWrite
            | OpKind::Attention
            | OpKind::SwiGlu
            | OpKind::Add
            | OpKind::Mix => false,
        }
    }
}

/// How an op uses a buffer it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads it.
    Read,
    /// Overwrites it.
    Write,
    /// Reads and writes part of it (the KV caches).
    Update,
}

/// The kind of an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// A flat symbol reference to an `lpu.buffer`, used as the role says.
    Buffer(Role),
    /// A flat symbol reference to an `lpu.weight`.
    Weight,
    /// A 64-bit integer.
    Int,
    /// An f32 float.
    F32,
    /// A string.
    Str,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A type.
    Type,
    /// An array of strings.
    Strings,
    /// An array of 64-bit integers.
    Ints,
}

/// An attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrDef {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: AttrKind,
    /// What it means (docs/lpu-dialect.md says the same, at length).
    pub doc: &'static str,
}

/// One op of the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDef {
    /// Its identity.
    pub kind: OpKind,
    /// Full name (`lpu.matmul`).
    pub name: &'static str,
    /// What it computes (the IRDL comment above it).
    pub doc: &'static str,
    /// Required attributes, in the order the lowering writes them.
    pub attributes: &'static [AttrDef],
    /// Attributes that later passes may add (placement, schedule); IRDL
    /// does not require them.
    pub optional: &'static [AttrDef],
    /// Fixed buffers the op reads without naming them ([`buffers`]).
    pub implicit_reads: &'static [&'static str],
}

impl OpDef {
    /// The required attribute named `name`, if declared.
    pub fn attribute(&self, name: &str) -> Option<&'static AttrDef> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

const fn attr(name: &'static str, kind: AttrKind, doc: &'static str) -> AttrDef {
    AttrDef { name, kind, doc }
}

use AttrKind::{Buffer, F32, Int, Ints, OneOf, Str, Strings, Type, Weight};
use Role::{Read, Update, Write};

const PLACEMENT: &[AttrDef] = &[
    attr(
        SLICES_ATTR,
        Strings,
        "after --lpu-place: the MEM slices holding it (array of slice names)",
    ),
    attr(ADDR_ATTR, Int, "after --lpu-place: its first word address"),
];

const SCHEDULE: &[AttrDef] = &[attr(
    CYCLES_ATTR,
    Ints,
    "after --lpu-schedule: [first, last] cycle its instructions occupy",
)];

/// The dialect: every op, in [`OpKind`] order.
pub static OPS: [OpDef; 11] = [
    OpDef {
        kind: OpKind::Buffer,
        name: "lpu.buffer",
        doc: "A buffer in MEM, declared at module level: `kind` says who writes it\n\
              (input/output: the host, kv: kept across steps, const: loaded with the\n\
              program, scratch: an intermediate), `type` its tensor type. Const buffers\n\
              name their data in `source` (a GGUF tensor, or rope.cos / rope.sin).",
        attributes: &[
            attr("sym_name", Str, "the symbol ops name it by"),
            attr("kind", OneOf(&BUFFER_KINDS), "who writes it"),
            attr("type", Type, "its tensor type (one token)"),
        ],
        optional: &[
            attr(
                "source",
                Str,
                "const buffers: the GGUF tensor (norm vectors) or rope.cos/rope.sin",
            ),
            PLACEMENT[0],
            PLACEMENT[1],
        ],
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::Weight,
        name: "lpu.weight",
        doc: "A quantized weight matrix W (rows N = outputs x cols K = inputs), stored\n\
              3.5-bit packed and cut into plane tiles: col_tiles = ceil(N / tile_rows)\n\
              output tiles times groups = ceil(K / group) quantization groups; ragged\n\
              edges are last_tile_rows and last_group_cols.",
        attributes: &[
            attr("sym_name", Str, "the symbol ops name it by"),
            attr("source", Str, "the GGUF tensor it is packed from"),
            attr("rows", Int, "N, output features"),
            attr("cols", Int, "K, input features"),
            attr("group", Int, "G, channels per quantization group"),
            attr("col_tiles", Int, "ceil(N / tile_rows)"),
            attr("groups", Int, "ceil(K / G)"),
            attr("tile_rows", Int, "output rows of one plane tile (mxm.cols)"),
            attr("last_tile_rows", Int, "N - tile_rows * (col_tiles - 1)"),
            attr("last_group_cols", Int, "K - G * (groups - 1)"),
            attr("scheme", Str, "the quantization scheme (q35, int4, ...)"),
        ],
        optional: PLACEMENT,
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::RmsNorm,
        name: "lpu.rmsnorm",
        doc: "y = x / sqrt(lane_sum(x * x) / n + eps) * weight (docs/q35-format.md 8.4).",
        attributes: &[
            attr("x", Buffer(Read), "input, f32[n]"),
            attr("weight", Buffer(Read), "const norm vector, f32[n]"),
            attr("y", Buffer(Write), "output, f32[n]"),
            attr("n", Int, "features"),
            attr("eps", F32, "epsilon"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::Quantize,
        name: "lpu.quantize",
        doc: "The f32 half of int8 activation quantization (8.1): amax = max |x|,\n\
              scale = amax / 127 on every lane of a word, xs = x * (127 / amax);\n\
              all zeros when amax < 2^-120. lpu.matmul rounds xs to int8 (f32toi8).",
        attributes: &[
            attr("x", Buffer(Read), "input, f32[n]"),
            attr("xs", Buffer(Write), "x * (127 / amax), f32[n]"),
            attr(
                "scale",
                Buffer(Write),
                "amax / 127 on every lane, f32[lanes]",
            ),
            attr("n", Int, "features"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::MatMul,
        name: "lpu.matmul",
        doc: "y = W x (8.2): codes = f32toi8(xs); per (col tile, group) one plane tile\n\
              gives the group's exact int32 partial sums acc_g for the tile's rows;\n\
              y = +0.0, y = y + f32(acc_g) * d[g, r] for ascending g, then y * scale.",
        attributes: &[
            attr(
                "xs",
                Buffer(Read),
                "prescaled input from lpu.quantize, f32[cols]",
            ),
            attr(
                "scale",
                Buffer(Read),
                "the activation scale word, f32[lanes]",
            ),
            attr("weight", Weight, "the lpu.weight"),
            attr("y", Buffer(Write), "output, f32[rows]"),
            attr("rows", Int, "N"),
            attr("cols", Int, "K"),
            attr("group", Int, "G"),
            attr("col_tiles", Int, "output tiles"),
            attr("groups", Int, "quantization groups"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::Rope,
        name: "lpu.rope",
        doc: "Rotary embedding at the position on @pos_idx: y = x * C + swap(x) * S with\n\
              C, S the rows of @rope_cos / @rope_sin for that position (S holds -sin on\n\
              even lanes, +sin on odd ones; swap exchanges lanes 2i and 2i+1).",
        attributes: &[
            attr("x", Buffer(Read), "input, f32[heads * head_dim]"),
            attr("y", Buffer(Write), "output, f32[heads * head_dim]"),
            attr("heads", Int, "heads"),
            attr("head_dim", Int, "head width"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[buffers::POS_IDX, buffers::ROPE_COS, buffers::ROPE_SIN],
    },
    OpDef {
        kind: OpKind::KvWrite,
        name: "lpu.kv_write",
        doc: "Writes the token's k into column pos of K^T (a scatter by @kv_idx: lane\n\
              pos % lanes to word pos / lanes, every other lane to the row's junk word)\n\
              and v into row pos of the V cache (@pos_idx).",
        attributes: &[
            attr("k", Buffer(Read), "keys, f32[kv_dim]"),
            attr("v", Buffer(Read), "values, f32[kv_dim]"),
            attr("kcache", Buffer(Update), "the block's K cache"),
            attr("vcache", Buffer(Update), "the block's V cache"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[buffers::KV_IDX, buffers::POS_IDX],
    },
    OpDef {
        kind: OpKind::Attention,
        name: "lpu.attention",
        doc: "Grouped-query attention over the whole context: per head, scores over all\n\
              ctx positions (dot over head_dim ascending, times scale) plus @attn_mask,\n\
              softmax (max, exp, lane_sum), output summed over positions ascending.\n\
              Masked positions weigh exactly zero.",
        attributes: &[
            attr("q", Buffer(Read), "queries, f32[heads * head_dim]"),
            attr("kcache", Buffer(Read), "the block's K cache"),
            attr("vcache", Buffer(Read), "the block's V cache"),
            attr("y", Buffer(Write), "output, f32[heads * head_dim]"),
            attr("heads", Int, "query heads"),
            attr("kv_heads", Int, "key/value heads"),
            attr("head_dim", Int, "head width"),
            attr("scale", F32, "score scale, 1 / sqrt(head_dim)"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[buffers::ATTN_MASK],
    },
    OpDef {
        kind: OpKind::SwiGlu,
        name: "lpu.swiglu",
        doc: "y = silu(gate) * up, silu(x) = x / (1 + exp(-x)), element-wise.",
        attributes: &[
            attr("gate", Buffer(Read), "f32[n]"),
            attr("up", Buffer(Read), "f32[n]"),
            attr("y", Buffer(Write), "f32[n]"),
            attr("n", Int, "features"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::Add,
        name: "lpu.add",
        doc: "y = a + b, element-wise (the residual connections).",
        attributes: &[
            attr("a", Buffer(Read), "f32[n]"),
            attr("b", Buffer(Read), "f32[n]"),
            attr("y", Buffer(Write), "f32[n]"),
            attr("n", Int, "features"),
        ],
        optional: SCHEDULE,
        implicit_reads: &[],
    },
    OpDef {
        kind: OpKind::Mix,
        name: "lpu.mix",
        doc: "y_r = sum_i M[r, i] * x_i along lanes (docs/q35-format.md 8.4 and 14.5) for a\n\
              block-diagonal M (blocks of `block` features, dividing the lanes): for\n\
              i = 0 .. block-1, y_r = y_r + m[i][r] * x[block * floor(r / block) + i] from\n\
              +0.0, m[i][r] = M[r, block * floor(r / block) + i] (the const `matrix`).",
        attributes: &[
            attr("x", Buffer(Read), "input, f32[n]"),
            attr(
                "matrix",
                Buffer(Read),
                "const, f32[block x words x lanes]: M's block columns, step by step",
            ),
            attr("y", Buffer(Write), "output, f32[n]"),
            attr("n", Int, "features"),
            attr(
                "block",
                Int,
                "the diagonal blocks' size (divides n and the lanes)",
            ),
        ],
        optional: SCHEDULE,
        implicit_reads: &[],
    },
];

/// Output rows of a plane tile and other tiling figures of one matmul,
/// derived from its shape (the attributes `lpu.weight` and `lpu.matmul`
/// carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// N.
    pub rows: u64,
    /// K.
    pub cols: u64,
    /// G.
    pub group: u64,
    /// Output rows per plane tile.
    pub tile_rows: u64,
}

impl Tiling {
    /// `ceil(N / tile_rows)`.
    pub fn col_tiles(&self) -> u64 {
        self.rows.div_ceil(self.tile_rows.max(1))
    }

    /// `ceil(K / G)`.
    pub fn groups(&self) -> u64 {
        self.cols.div_ceil(self.group.max(1))
    }

    /// Rows of the last (possibly ragged) output tile.
    pub fn last_tile_rows(&self) -> u64 {
        self.rows - self.tile_rows * self.col_tiles().saturating_sub(1)
    }

    /// Columns of the last (possibly ragged) group.
    pub fn last_group_cols(&self) -> u64 {
        self.cols - self.group * self.groups().saturating_sub(1)
    }

    /// Output rows `first .. end` of tile `c`.
    pub fn tile(&self, c: u64) -> std::ops::Range<u64> {
        let first = c * self.tile_rows;
        first..(first + self.tile_rows).min(self.rows)
    }

    /// Input columns `first .. end` of group `g`.
    pub fn group_cols(&self, g: u64) -> std::ops::Range<u64> {
        let first = g * self.group;
        first..(first + self.group).min(self.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_the_table_and_names_round_trip() {
        for (i, k) in OpKind::ALL.into_iter().enumerate() {
            assert_eq!(OPS[i].kind, k);
            assert_eq!(k as usize, i);
            assert_eq!(OpKind::from_name(k.name()), Some(k));
            assert!(k.name().starts_with("lpu."));
        }
        assert_eq!(OpKind::from_name("lpu.conv"), None);
        for k in BufferKind::ALL {
            assert_eq!(BufferKind::parse(k.as_str()), Some(k));
            assert_eq!(BUFFER_KINDS[k as usize], k.as_str());
        }
    }

    #[test]
    fn attribute_names_in_an_op_are_unique() {
        for def in &OPS {
            let mut names: Vec<&str> = def
                .attributes
                .iter()
                .chain(def.optional)
                .map(|a| a.name)
                .collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n, "{}", def.name);
        }
    }

    #[test]
    fn ragged_tiles_are_attributes_of_the_shape() {
        // SmolLM2's 576 = 320 + 256 outputs, 576 = 4 x 128 + 64 inputs.
        let t = Tiling {
            rows: 576,
            cols: 576,
            group: 128,
            tile_rows: 320,
        };
        assert_eq!((t.col_tiles(), t.groups()), (2, 5));
        assert_eq!((t.last_tile_rows(), t.last_group_cols()), (256, 64));
        assert_eq!((t.tile(1), t.group_cols(4)), (320..576, 512..576));
        let even = Tiling {
            rows: 640,
            cols: 256,
            group: 128,
            tile_rows: 320,
        };
        assert_eq!((even.last_tile_rows(), even.last_group_cols()), (320, 128));
    }
}
