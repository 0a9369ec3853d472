//! An interpreter for the lpu dialect, held to the golden model bit for bit.
//!
//! It runs `func.func @decode` of an lpu module (as `--lpu-lower` emits
//! it) one token per call, on MEM buffers laid out as the module declares
//! them and at the granularity its attributes state:
//!
//! - `lpu.matmul`: for each output tile `c < col_tiles` and group
//!   `g < groups` (rows and columns from `rows`, `cols`, `group` and the
//!   weight's `tile_rows`; ragged last tile and group included) one int32
//!   vector of the group's exact partial sums for the tile's rows
//!   ([`semantics::group_dot`], what one plane tile's `mm` produces), then per
//!   row the groups combined in ascending order ([`semantics::combine_groups`])
//!   with the activation scale read from the row's lane of the scale word;
//!   the int8 codes are `f32toi8` of the prescaled input
//!   ([`semantics::f32_to_i8`]).
//! - `lpu.quantize`: [`semantics::prescale_activation`], the scale broadcast
//!   to every lane of its word.
//! - `lpu.rope`: `y = x * C + swap(x) * S` with C, S the rows of `@rope_cos`
//!   and `@rope_sin` at the position each lane of `@pos_idx` holds (word
//!   `k` of `x` reads table word `k % P`, row `(k % P) * ctx + pos`, with `P`
//!   = [`rope_words`](crate::passes::lpu_lower::rope_words)).
//! - `lpu.kv_write`: K^T written by the `@kv_idx` scatter (lane l of row r
//!   to word `kv_idx[l]`: column `pos` gets `k[r]`, the junk word the
//!   rest), V written at row `@pos_idx[0]` (all `ceil(kv_dim / lanes)`
//!   words of it).
//! - `lpu.attention`: every position of the compiled context, scores plus
//!   `@attn_mask` (-inf after `pos`), [`semantics::softmax_in_place`], the
//!   output summed over all positions in the contract's four stripes
//!   ([`semantics::attention_output`]); masked positions weigh exactly
//!   `+0.0`.
//! - `lpu.rmsnorm`, `lpu.swiglu`, `lpu.add`: [`semantics`]' operators.
//! - `lpu.mix`: [`semantics::mix_blocks_along_lanes`] reading the matrix's
//!   coefficients from its const buffer in the machine's layout (step `i`,
//!   word `w`: lane `l` holds `M[r, block floor(r / block) + i]`).
//!
//! No arithmetic is the interpreter's own beyond the sums the contract
//! fixes; weights are bound by the GGUF name each `lpu.weight` and const
//! `lpu.buffer` declares ([`WeightBinder`], e.g.
//! [`WeightBinder::from_golden`]), RoPE tables are built from `q35.arch`
//! with the contract's [`RopeTable`]. [`HostInputs`] is what a host writes
//! before each step; [`LpuLockstep`] runs the interpreter beside
//! [`GoldenModel`] and compares logits and every block's KV cache after
//! every token.

use std::collections::BTreeMap;

use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{Module, RegionLike};
use q35_contract::semantics::{self, ActivationI8};
use q35_contract::{GoldenModel, GoldenSession, IntMatrix, RopeTable};
use q35_frontend::lpu_ops::{BufferKind, CONTEXT_ATTR, OpKind, Tiling, buffers};
use q35_frontend::ops::module_attr;
use rayon::prelude::*;

use crate::interp::{Binding, InterpError, WeightBinder};
use crate::ir::{
    float_attr, format_location, int_attr, json_from_attribute, string_attr, symbol_attr,
    target_from_module, tensor_type_attr,
};
use crate::passes::op_name;

/// The values of a buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 values.
    F32(Vec<f32>),
    /// i16 values (u16 bits: positions and word offsets).
    I16(Vec<i16>),
}

/// A declared `lpu.buffer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferInfo {
    /// Its symbol.
    pub name: String,
    /// Its kind.
    pub kind: BufferKind,
    /// Its dimensions.
    pub dims: Vec<usize>,
    /// Whether it holds i16 (else f32).
    pub i16: bool,
    /// Its `source`, if any.
    pub source: Option<String>,
}

impl BufferInfo {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Largest buffer the interpreter allocates (f32 values): 2^31.
const MAX_BUFFER: usize = 1 << 31;

#[derive(Debug, Clone, Copy)]
struct WeightSlot<'w> {
    matrix: &'w IntMatrix,
    tiling: Tiling,
}

/// One decoded op with its buffers (indices into the buffer list).
#[derive(Debug, Clone)]
enum Attrs {
    RmsNorm {
        x: usize,
        weight: usize,
        y: usize,
        eps: f32,
    },
    Quantize {
        x: usize,
        xs: usize,
        scale: usize,
    },
    MatMul {
        xs: usize,
        scale: usize,
        weight: usize,
        y: usize,
    },
    Rope {
        x: usize,
        y: usize,
    },
    KvWrite {
        k: usize,
        v: usize,
        kcache: usize,
        vcache: usize,
    },
    Attention {
        q: usize,
        kcache: usize,
        vcache: usize,
        y: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
    },
    SwiGlu {
        gate: usize,
        up: usize,
        y: usize,
    },
    Add {
        a: usize,
        b: usize,
        y: usize,
    },
    Mix {
        x: usize,
        matrix: usize,
        y: usize,
        block: usize,
    },
}

#[derive(Debug, Clone)]
struct Step {
    kind: OpKind,
    location: String,
    attrs: Attrs,
}

/// The lpu module decoded for execution, with its weights bound.
#[derive(Debug)]
pub struct LpuInterpreter<'w> {
    ctx: usize,
    lanes: usize,
    blocks: usize,
    kv_dim: usize,
    /// Words a position takes in the RoPE tables.
    rope_words: usize,
    /// The head_dim the RoPE tables are built for (`q35.arch`).
    head_dim: usize,
    buffers: Vec<BufferInfo>,
    by_name: BTreeMap<String, usize>,
    consts: BTreeMap<usize, Vec<f32>>,
    weights: Vec<WeightSlot<'w>>,
    steps: Vec<Step>,
    fixed: Fixed,
}

/// Indices of the fixed buffers.
#[derive(Debug, Clone, Copy)]
struct Fixed {
    x_in: usize,
    pos_idx: usize,
    kv_idx: usize,
    attn_mask: usize,
    logits: usize,
    rope_cos: usize,
    rope_sin: usize,
}

/// The run-time state: the values of every buffer (consts included), kept
/// across steps (the KV caches live here).
#[derive(Debug, Clone)]
pub struct LpuState {
    data: Vec<Data>,
    position: usize,
}

impl LpuState {
    /// The position the next step writes.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// What the host writes before a step at position `pos` (the rules of
/// docs/lpu-dialect.md, "Host inputs").
#[derive(Debug, Clone, PartialEq)]
pub struct HostInputs {
    /// Every lane = `pos` (u16 bits).
    pub pos_idx: Vec<i16>,
    /// Lane `pos % lanes` = `pos / lanes`; every other lane the junk word
    /// `ceil(ctx / lanes)`.
    pub kv_idx: Vec<i16>,
    /// `0.0` at `t <= pos`, `-inf` after.
    pub attn_mask: Vec<f32>,
}

impl HostInputs {
    /// The inputs of position `pos` for a context of `ctx` on `lanes`
    /// lanes; `None` if `pos` is past the context or does not fit u16.
    pub fn new(pos: usize, ctx: usize, lanes: usize) -> Option<HostInputs> {
        if pos >= ctx || lanes == 0 {
            return None;
        }
        let as_u16 = |v: usize| u16::try_from(v).ok().map(|v| v as i16);
        let junk = as_u16(ctx.div_ceil(lanes))?;
        let mut kv_idx = vec![junk; lanes];
        kv_idx[pos % lanes] = as_u16(pos / lanes)?;
        Some(HostInputs {
            pos_idx: vec![as_u16(pos)?; lanes],
            kv_idx,
            attn_mask: (0..ctx)
                .map(|t| if t <= pos { 0.0 } else { f32::NEG_INFINITY })
                .collect(),
        })
    }
}

type OpResult<T> = Result<T, String>;

fn module_error(message: impl Into<String>) -> InterpError {
    InterpError::Module(message.into())
}

impl<'w> LpuInterpreter<'w> {
    /// Decodes `module` (an lpu module) and binds its weights and const
    /// buffers from `binder` by GGUF name.
    pub fn new(module: &Module<'_>, binder: &WeightBinder<'w>) -> Result<Self, InterpError> {
        let m = module.as_operation();
        let ctx = int_attr(&m, CONTEXT_ATTR)
            .and_then(|c| usize::try_from(c).ok())
            .filter(|&c| c > 0 && c as u64 <= crate::passes::lpu_lower::MAX_CONTEXT)
            .ok_or_else(|| {
                module_error(format!(
                    "the module has no `{CONTEXT_ATTR}` in 1..={}",
                    crate::passes::lpu_lower::MAX_CONTEXT
                ))
            })?;
        let lanes = target_from_module(&m)
            .map_err(|e| module_error(e.to_string()))?
            .vector
            .lanes as usize;
        let arch = m
            .attribute(module_attr::ARCH)
            .ok()
            .and_then(|a| json_from_attribute(a).ok())
            .ok_or_else(|| module_error(format!("the module has no `{}`", module_attr::ARCH)))?;
        let get = |k: &str| arch.get(k).and_then(serde_json::Value::as_u64);
        let (Some(blocks), Some(kv_heads), Some(head_dim), Some(base)) = (
            get("blocks"),
            get("kv_heads"),
            get("head_dim"),
            arch.get("rope_base").and_then(serde_json::Value::as_f64),
        ) else {
            return Err(module_error(format!(
                "`{}` needs blocks, kv_heads, head_dim and rope_base",
                module_attr::ARCH
            )));
        };
        let mut interp = LpuInterpreter {
            ctx,
            lanes,
            blocks: blocks as usize,
            kv_dim: usize::try_from(kv_heads.saturating_mul(head_dim)).unwrap_or(usize::MAX),
            rope_words: crate::passes::lpu_lower::rope_words(head_dim, lanes as u64)
                .and_then(|w| usize::try_from(w).ok())
                .ok_or_else(|| module_error(format!("head_dim {head_dim} on {lanes} lanes")))?,
            head_dim: usize::try_from(head_dim).unwrap_or(usize::MAX),
            buffers: Vec::new(),
            by_name: BTreeMap::new(),
            consts: BTreeMap::new(),
            weights: Vec::new(),
            steps: Vec::new(),
            fixed: Fixed {
                x_in: 0,
                pos_idx: 0,
                kv_idx: 0,
                attn_mask: 0,
                logits: 0,
                rope_cos: 0,
                rope_sin: 0,
            },
        };
        let body = m
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or_else(|| module_error("the module has no body"))?;
        let mut weight_index = BTreeMap::new();
        let mut func = None;
        let mut op = body.first_operation();
        while let Some(o) = op {
            match OpKind::from_name(&op_name(&o)) {
                Some(OpKind::Buffer) => interp.declare_buffer(&o)?,
                Some(OpKind::Weight) => {
                    let (name, slot) = Self::declare_weight(&o, binder)?;
                    weight_index.insert(name, interp.weights.len());
                    interp.weights.push(slot);
                }
                Some(_) | None => {
                    if op_name(&o) == "func.func"
                        && string_attr(&o, "sym_name").as_deref() == Some("decode")
                    {
                        func = Some(o);
                    }
                }
            }
            op = o.next_in_block();
        }
        interp.fixed = Fixed {
            x_in: interp.fixed_buffer(buffers::X_IN, &[Some(0)], false)?,
            pos_idx: interp.fixed_buffer(buffers::POS_IDX, &[Some(lanes)], true)?,
            kv_idx: interp.fixed_buffer(buffers::KV_IDX, &[Some(lanes)], true)?,
            attn_mask: interp.fixed_buffer(buffers::ATTN_MASK, &[Some(ctx)], false)?,
            logits: interp.fixed_buffer(buffers::LOGITS, &[Some(0)], false)?,
            rope_cos: interp.fixed_buffer(
                buffers::ROPE_COS,
                &[Some(interp.rope_words * ctx), Some(lanes)],
                false,
            )?,
            rope_sin: interp.fixed_buffer(
                buffers::ROPE_SIN,
                &[Some(interp.rope_words * ctx), Some(lanes)],
                false,
            )?,
        };
        let words = ctx.div_ceil(lanes);
        let v_words = interp.kv_dim.div_ceil(lanes);
        for b in 0..interp.blocks {
            interp.fixed_buffer(
                &buffers::kcache(b),
                &[Some(interp.kv_dim), Some((words + 1) * lanes)],
                false,
            )?;
            interp.fixed_buffer(
                &buffers::vcache(b),
                &[Some(ctx), Some(v_words * lanes)],
                false,
            )?;
        }
        interp.bind_consts(binder, head_dim as usize, base as f32)?;
        let func = func.ok_or_else(|| module_error("the module has no `func.func @decode`"))?;
        let block = func
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or_else(|| module_error("@decode has no body"))?;
        let mut op = block.first_operation();
        while let Some(o) = op {
            let name = op_name(&o);
            if name != "func.return" {
                let location = format_location(o.location());
                let step = interp
                    .decode_op(&o, &name, &weight_index)
                    .map_err(|message| InterpError::Op {
                        location: location.clone(),
                        op: name.clone(),
                        message,
                    })?;
                interp.steps.push(step);
            }
            op = o.next_in_block();
        }
        Ok(interp)
    }

    fn declare_buffer(&mut self, o: &OperationRef<'_, '_>) -> Result<(), InterpError> {
        let err = |message: String| InterpError::Op {
            location: format_location(o.location()),
            op: OpKind::Buffer.name().into(),
            message,
        };
        let name = string_attr(o, "sym_name").ok_or_else(|| err("needs `sym_name`".into()))?;
        let kind = string_attr(o, "kind")
            .and_then(|k| BufferKind::parse(&k))
            .ok_or_else(|| err(format!("@{name} needs a `kind`")))?;
        let t = tensor_type_attr(o, "type")
            .ok_or_else(|| err(format!("@{name} needs a tensor `type`")))?;
        let dims = t
            .dims
            .iter()
            .map(|d| d.and_then(|n| usize::try_from(n).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err(format!("@{name} has a dynamic type {t}")))?;
        if dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none_or(|n| n > MAX_BUFFER)
        {
            return Err(err(format!(
                "@{name} of type {t} is larger than the interpreter's {MAX_BUFFER} values"
            )));
        }
        let i16 = match t.element.as_str() {
            "f32" => false,
            "i16" => true,
            other => {
                return Err(err(format!(
                    "@{name}: element type {other} is not interpreted"
                )));
            }
        };
        if self.by_name.contains_key(&name) {
            return Err(err(format!("@{name} is declared twice")));
        }
        self.by_name.insert(name.clone(), self.buffers.len());
        self.buffers.push(BufferInfo {
            name,
            kind,
            dims,
            i16,
            source: string_attr(o, "source"),
        });
        Ok(())
    }

    fn declare_weight(
        o: &OperationRef<'_, '_>,
        binder: &WeightBinder<'w>,
    ) -> Result<(String, WeightSlot<'w>), InterpError> {
        let err = |message: String| InterpError::Op {
            location: format_location(o.location()),
            op: OpKind::Weight.name().into(),
            message,
        };
        let name = string_attr(o, "sym_name").ok_or_else(|| err("needs `sym_name`".into()))?;
        let source =
            string_attr(o, "source").ok_or_else(|| err(format!("@{name} needs `source`")))?;
        let get = |k: &str| {
            int_attr(o, k)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| err(format!("@{name} needs a non-negative `{k}`")))
        };
        let tiling = Tiling {
            rows: get("rows")?,
            cols: get("cols")?,
            group: get("group")?,
            tile_rows: get("tile_rows")?,
        };
        for (k, want) in [
            ("col_tiles", tiling.col_tiles()),
            ("groups", tiling.groups()),
            ("last_tile_rows", tiling.last_tile_rows()),
            ("last_group_cols", tiling.last_group_cols()),
        ] {
            let got = get(k)?;
            if got != want || tiling.tile_rows == 0 || tiling.group == 0 {
                return Err(err(format!(
                    "@{name}: `{k}` is {got}, but rows {} / cols {} / group {} / tile_rows {} give {want}",
                    tiling.rows, tiling.cols, tiling.group, tiling.tile_rows
                )));
            }
        }
        let weight_err = |message: String| InterpError::Weight {
            symbol: name.clone(),
            source_name: source.clone(),
            message,
        };
        let matrix = match binder.get(&source) {
            Some(Binding::Matrix(m)) => m,
            Some(other) => {
                return Err(weight_err(format!(
                    "bound to {}, not a quantized matrix",
                    other.describe()
                )));
            }
            None => return Err(weight_err("no binding".into())),
        };
        if (
            matrix.rows() as u64,
            matrix.cols() as u64,
            matrix.group_size() as u64,
        ) != (tiling.rows, tiling.cols, tiling.group)
        {
            return Err(weight_err(format!(
                "declared {}x{} (group {}) but bound to {}",
                tiling.rows,
                tiling.cols,
                tiling.group,
                Binding::Matrix(matrix).describe()
            )));
        }
        Ok((name, WeightSlot { matrix, tiling }))
    }

    /// The fixed buffer `name`, checked: `dims` (`Some(0)`: any length).
    fn fixed_buffer(
        &self,
        name: &str,
        dims: &[Option<usize>],
        i16: bool,
    ) -> Result<usize, InterpError> {
        let &i = self
            .by_name
            .get(name)
            .ok_or_else(|| module_error(format!("the module declares no buffer @{name}")))?;
        let b = &self.buffers[i];
        let fits = b.dims.len() == dims.len()
            && b.dims
                .iter()
                .zip(dims)
                .all(|(&d, want)| matches!(want, Some(0) | None) || *want == Some(d))
            && b.i16 == i16;
        if !fits {
            return Err(module_error(format!(
                "buffer @{name} is {:?}{}; expected {:?}{}",
                b.dims,
                if b.i16 { " i16" } else { " f32" },
                dims,
                if i16 { " i16" } else { " f32" },
            )));
        }
        Ok(i)
    }

    /// Fills the const buffers: norm vectors from the binder, the RoPE
    /// tables from the contract's [`RopeTable`].
    fn bind_consts(
        &mut self,
        binder: &WeightBinder<'w>,
        head_dim: usize,
        base: f32,
    ) -> Result<(), InterpError> {
        let (ctx, lanes, words) = (self.ctx, self.lanes, self.rope_words);
        if head_dim == 0 || !head_dim.is_multiple_of(2) || !lanes.is_multiple_of(2) {
            return Err(module_error(format!(
                "head_dim {head_dim} and the {lanes} lanes must be even"
            )));
        }
        let table = RopeTable::new(head_dim, base, ctx);
        let mut cos = vec![0f32; words * ctx * lanes];
        let mut sin = vec![0f32; words * ctx * lanes];
        for w in 0..words {
            for t in 0..ctx {
                for l in 0..lanes {
                    let i = (w * ctx + t) * lanes + l;
                    let (c, s) = table.get(t, ((w * lanes + l) % head_dim) / 2);
                    cos[i] = c;
                    sin[i] = if l % 2 == 0 { -s } else { s };
                }
            }
        }
        for (i, b) in self.buffers.iter().enumerate() {
            if b.kind != BufferKind::Const {
                continue;
            }
            let data = match b.source.as_deref() {
                Some(buffers::ROPE_COS_SOURCE) => cos.clone(),
                Some(buffers::ROPE_SIN_SOURCE) => sin.clone(),
                Some(source) => match binder.get(source) {
                    Some(Binding::Vector(v)) if v.len() == b.len() => v.to_vec(),
                    // `lpu.mix`'s matrix: block x words x lanes, as the
                    // machine reads it.
                    Some(Binding::Table { rows, cols, data })
                        if b.dims.len() == 3
                            && rows == cols
                            && b.dims[2] == self.lanes
                            && rows.div_ceil(self.lanes) == b.dims[1] =>
                    {
                        q35_codegen::kernels::mix::block_columns(data, rows, b.dims[0], self.lanes)
                            .map_err(|message| InterpError::Weight {
                                symbol: b.name.clone(),
                                source_name: source.to_owned(),
                                message,
                            })?
                    }
                    other => {
                        return Err(InterpError::Weight {
                            symbol: b.name.clone(),
                            source_name: source.to_owned(),
                            message: format!(
                                "a const buffer of {} f32 is bound to {}",
                                b.len(),
                                other.map_or_else(|| "nothing".into(), |o| o.describe())
                            ),
                        });
                    }
                },
                None => {
                    return Err(module_error(format!(
                        "const buffer @{} has no `source`",
                        b.name
                    )));
                }
            };
            self.consts.insert(i, data);
        }
        Ok(())
    }

    /// The buffer named by symbol attribute `attr`, an f32 buffer of `len`
    /// values (`None`: any).
    fn buffer(&self, o: &OperationRef<'_, '_>, attr: &str, len: Option<usize>) -> OpResult<usize> {
        let name = symbol_attr(o, attr).ok_or_else(|| format!("needs a symbol `{attr}`"))?;
        let &i = self
            .by_name
            .get(&name)
            .ok_or_else(|| format!("`{attr}` @{name} is not a declared lpu.buffer"))?;
        let b = &self.buffers[i];
        if b.i16 {
            return Err(format!("`{attr}` @{name} is not an f32 buffer"));
        }
        if let Some(n) = len
            && b.len() != n
        {
            return Err(format!(
                "`{attr}` @{name} holds {} values, the op needs {n}",
                b.len()
            ));
        }
        Ok(i)
    }

    fn int(o: &OperationRef<'_, '_>, attr: &str) -> OpResult<usize> {
        int_attr(o, attr)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("needs a non-negative integer `{attr}`"))
    }

    /// A written buffer must not be one the op reads, nor an input or const.
    fn written(&self, y: usize, reads: &[usize], attr: &str) -> OpResult<()> {
        let b = &self.buffers[y];
        if reads.contains(&y) {
            return Err(format!("`{attr}` @{} is also read by the op", b.name));
        }
        match b.kind {
            BufferKind::Scratch | BufferKind::Output | BufferKind::Kv => Ok(()),
            BufferKind::Input | BufferKind::Const => Err(format!(
                "`{attr}` @{} is a {} buffer; the program does not write it",
                b.name,
                b.kind.as_str()
            )),
        }
    }

    fn decode_op(
        &self,
        o: &OperationRef<'_, '_>,
        name: &str,
        weights: &BTreeMap<String, usize>,
    ) -> OpResult<Step> {
        let kind = OpKind::from_name(name).ok_or("the lpu interpreter does not know this op")?;
        let def = kind.def();
        for a in def.attributes {
            if o.attribute(a.name).is_err() {
                return Err(format!("needs `{}`", a.name));
            }
        }
        let attrs = match kind {
            OpKind::Buffer | OpKind::Weight => {
                return Err("a declaration inside @decode".into());
            }
            OpKind::RmsNorm => {
                let n = Self::int(o, "n")?;
                let x = self.buffer(o, "x", Some(n))?;
                let weight = self.buffer(o, "weight", Some(n))?;
                let y = self.buffer(o, "y", Some(n))?;
                if self.buffers[weight].kind != BufferKind::Const {
                    return Err("`weight` must be a const buffer".into());
                }
                self.written(y, &[x, weight], "y")?;
                let eps = float_attr(o, "eps").ok_or("needs an f32 `eps`")? as f32;
                Attrs::RmsNorm { x, weight, y, eps }
            }
            OpKind::Quantize => {
                let n = Self::int(o, "n")?;
                let x = self.buffer(o, "x", Some(n))?;
                let xs = self.buffer(o, "xs", Some(n))?;
                let scale = self.buffer(o, "scale", Some(self.lanes))?;
                self.written(xs, &[x], "xs")?;
                self.written(scale, &[x, xs], "scale")?;
                Attrs::Quantize { x, xs, scale }
            }
            OpKind::MatMul => {
                let w = symbol_attr(o, "weight").ok_or("needs a symbol `weight`")?;
                let &weight = weights
                    .get(&w)
                    .ok_or_else(|| format!("`weight` @{w} is not a declared lpu.weight"))?;
                let t = self.weights[weight].tiling;
                for (k, want) in [
                    ("rows", t.rows),
                    ("cols", t.cols),
                    ("group", t.group),
                    ("col_tiles", t.col_tiles()),
                    ("groups", t.groups()),
                ] {
                    let got = Self::int(o, k)? as u64;
                    if got != want {
                        return Err(format!("`{k}` is {got} but @{w} has {want}"));
                    }
                }
                let xs = self.buffer(o, "xs", Some(t.cols as usize))?;
                let scale = self.buffer(o, "scale", Some(self.lanes))?;
                let y = self.buffer(o, "y", Some(t.rows as usize))?;
                self.written(y, &[xs, scale], "y")?;
                Attrs::MatMul {
                    xs,
                    scale,
                    weight,
                    y,
                }
            }
            OpKind::Rope => {
                let heads = Self::int(o, "heads")?;
                let head_dim = Self::int(o, "head_dim")?;
                let n = heads.saturating_mul(head_dim);
                if head_dim == 0 || !head_dim.is_multiple_of(2) {
                    return Err(format!("`head_dim` {head_dim} must be even and non-zero"));
                }
                if head_dim != self.head_dim {
                    return Err(format!(
                        "`head_dim` {head_dim} differs from q35.arch head_dim {}, which the RoPE tables are built for",
                        self.head_dim
                    ));
                }
                let x = self.buffer(o, "x", Some(n))?;
                let y = self.buffer(o, "y", Some(n))?;
                self.written(y, &[x], "y")?;
                Attrs::Rope { x, y }
            }
            OpKind::KvWrite => {
                let k = self.buffer(o, "k", Some(self.kv_dim))?;
                let v = self.buffer(o, "v", Some(self.kv_dim))?;
                let kcache = self.buffer(o, "kcache", None)?;
                let vcache = self.buffer(o, "vcache", None)?;
                self.cache_pair(kcache, vcache)?;
                self.written(kcache, &[k, v], "kcache")?;
                self.written(vcache, &[k, v], "vcache")?;
                Attrs::KvWrite {
                    k,
                    v,
                    kcache,
                    vcache,
                }
            }
            OpKind::Attention => {
                let heads = Self::int(o, "heads")?;
                let kv_heads = Self::int(o, "kv_heads")?;
                let head_dim = Self::int(o, "head_dim")?;
                if kv_heads == 0
                    || heads % kv_heads != 0
                    || kv_heads.saturating_mul(head_dim) != self.kv_dim
                {
                    return Err(format!(
                        "`heads` {heads}, `kv_heads` {kv_heads}, `head_dim` {head_dim} do not fit the KV caches' {} values",
                        self.kv_dim
                    ));
                }
                let n = heads.saturating_mul(head_dim);
                let q = self.buffer(o, "q", Some(n))?;
                let kcache = self.buffer(o, "kcache", None)?;
                let vcache = self.buffer(o, "vcache", None)?;
                self.cache_pair(kcache, vcache)?;
                let y = self.buffer(o, "y", Some(n))?;
                self.written(y, &[q, kcache, vcache], "y")?;
                let scale = float_attr(o, "scale").ok_or("needs an f32 `scale`")? as f32;
                Attrs::Attention {
                    q,
                    kcache,
                    vcache,
                    y,
                    heads,
                    kv_heads,
                    head_dim,
                    scale,
                }
            }
            OpKind::Mix => {
                let n = Self::int(o, "n")?;
                let block = Self::int(o, "block")?;
                if block == 0 || !n.is_multiple_of(block) || !self.lanes.is_multiple_of(block) {
                    return Err(format!(
                        "`block` = {block} must divide `n` = {n} and the {} lanes",
                        self.lanes
                    ));
                }
                let x = self.buffer(o, "x", Some(n))?;
                let words = n.div_ceil(self.lanes);
                let matrix = self.buffer(o, "matrix", Some(block * words * self.lanes))?;
                if self.buffers[matrix].kind != BufferKind::Const {
                    return Err("`matrix` must be a const buffer".into());
                }
                let y = self.buffer(o, "y", Some(n))?;
                self.written(y, &[x, matrix], "y")?;
                Attrs::Mix {
                    x,
                    matrix,
                    y,
                    block,
                }
            }
            OpKind::SwiGlu | OpKind::Add => {
                let n = Self::int(o, "n")?;
                let (an, bn) = if kind == OpKind::Add {
                    ("a", "b")
                } else {
                    ("gate", "up")
                };
                let a = self.buffer(o, an, Some(n))?;
                let b = self.buffer(o, bn, Some(n))?;
                let y = self.buffer(o, "y", Some(n))?;
                self.written(y, &[a, b], "y")?;
                if kind == OpKind::Add {
                    Attrs::Add { a, b, y }
                } else {
                    Attrs::SwiGlu { gate: a, up: b, y }
                }
            }
        };
        Ok(Step {
            kind,
            location: format_location(o.location()),
            attrs,
        })
    }

    /// `kcache`/`vcache` must be one block's K and V caches.
    fn cache_pair(&self, kcache: usize, vcache: usize) -> OpResult<()> {
        let (k, v) = (&self.buffers[kcache].name, &self.buffers[vcache].name);
        let block = (0..self.blocks).find(|&b| *k == buffers::kcache(b));
        match block {
            Some(b) if *v == buffers::vcache(b) => Ok(()),
            _ => Err(format!(
                "`kcache` @{k} and `vcache` @{v} are not one block's KV caches"
            )),
        }
    }

    /// The compiled context (positions).
    pub fn context(&self) -> usize {
        self.ctx
    }

    /// Lanes of a vector word.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The declared buffers.
    pub fn buffers(&self) -> &[BufferInfo] {
        &self.buffers
    }

    /// The ops of `@decode`, in program order: kind and location.
    pub fn ops(&self) -> impl Iterator<Item = (OpKind, &str)> {
        self.steps.iter().map(|s| (s.kind, s.location.as_str()))
    }

    /// A fresh state: consts loaded, KV caches and everything else `+0.0`,
    /// position 0.
    pub fn new_state(&self) -> LpuState {
        let data = self
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| match self.consts.get(&i) {
                Some(c) => Data::F32(c.clone()),
                None if b.i16 => Data::I16(vec![0; b.len()]),
                None => Data::F32(vec![0.0; b.len()]),
            })
            .collect();
        LpuState { data, position: 0 }
    }

    /// The values of buffer `name` in `state`.
    pub fn buffer_data<'s>(&self, state: &'s LpuState, name: &str) -> Option<&'s Data> {
        self.by_name.get(name).map(|&i| &state.data[i])
    }

    /// Runs one token: the host writes `x_in` (the token's embedding row)
    /// and the [`HostInputs`] of the state's position, `@decode` runs, the
    /// position advances; returns `@logits`.
    pub fn step(&self, state: &mut LpuState, x_in: &[f32]) -> Result<Vec<f32>, InterpError> {
        let pos = state.position;
        let host = HostInputs::new(pos, self.ctx, self.lanes).ok_or_else(|| {
            InterpError::Call(format!(
                "position {pos} is past the compiled context of {}",
                self.ctx
            ))
        })?;
        let x_len = self.buffers[self.fixed.x_in].len();
        if x_in.len() != x_len {
            return Err(InterpError::Call(format!(
                "x_in has {} values, @{} holds {x_len}",
                x_in.len(),
                buffers::X_IN
            )));
        }
        state.data[self.fixed.x_in] = Data::F32(x_in.to_vec());
        state.data[self.fixed.pos_idx] = Data::I16(host.pos_idx);
        state.data[self.fixed.kv_idx] = Data::I16(host.kv_idx);
        state.data[self.fixed.attn_mask] = Data::F32(host.attn_mask);
        for step in &self.steps {
            self.execute(step, &mut state.data)
                .map_err(|message| InterpError::Op {
                    location: step.location.clone(),
                    op: step.kind.name().to_owned(),
                    message,
                })?;
        }
        state.position += 1;
        match &state.data[self.fixed.logits] {
            Data::F32(v) => Ok(v.clone()),
            Data::I16(_) => Err(InterpError::Module("@logits is not f32".into())),
        }
    }

    fn execute(&self, step: &Step, data: &mut [Data]) -> OpResult<()> {
        fn f32s(d: &Data) -> OpResult<&[f32]> {
            match d {
                Data::F32(v) => Ok(v),
                Data::I16(_) => Err("an f32 buffer holds i16".into()),
            }
        }
        fn u16s(d: &Data) -> OpResult<Vec<usize>> {
            match d {
                Data::I16(v) => Ok(v.iter().map(|&x| usize::from(x as u16)).collect()),
                Data::F32(_) => Err("an index buffer holds f32".into()),
            }
        }
        // The written buffer is taken out, computed, and put back; the
        // decoder checked it is not one the op reads.
        let take = |data: &mut [Data], i: usize| -> OpResult<Vec<f32>> {
            match std::mem::replace(&mut data[i], Data::F32(Vec::new())) {
                Data::F32(v) => Ok(v),
                Data::I16(_) => Err(format!("@{} is not f32", self.buffers[i].name)),
            }
        };
        let lanes = self.lanes;
        match step.attrs {
            Attrs::RmsNorm { x, weight, y, eps } => {
                let mut out = take(data, y)?;
                semantics::rmsnorm(f32s(&data[x])?, f32s(&data[weight])?, eps, &mut out);
                data[y] = Data::F32(out);
            }
            Attrs::Mix {
                x,
                matrix,
                y,
                block,
            } => {
                // Step i of word w reads lane l of matrix word i * words + w
                // (the machine's layout), which is M[r, b + i].
                let mut out = take(data, y)?;
                let xv = f32s(&data[x])?;
                let m = f32s(&data[matrix])?;
                let words = xv.len().div_ceil(lanes);
                semantics::mix_blocks_along_lanes(
                    block,
                    |r, i| m[(i * words + r / lanes) * lanes + r % lanes],
                    xv,
                    &mut out,
                );
                data[y] = Data::F32(out);
            }
            Attrs::Quantize { x, xs, scale } => {
                let (s, pre) = semantics::prescale_activation(f32s(&data[x])?)
                    .map_err(|e| format!("int8 activation: {e}"))?;
                data[xs] = Data::F32(pre);
                data[scale] = Data::F32(vec![s; lanes]);
            }
            Attrs::MatMul {
                xs,
                scale,
                weight,
                y,
            } => {
                let WeightSlot { matrix, tiling } = self.weights[weight];
                let codes: Vec<i8> = f32s(&data[xs])?
                    .iter()
                    .map(|&v| semantics::f32_to_i8(v))
                    .collect();
                let scale_word = f32s(&data[scale])?;
                // The codes and scale as the contract admits them.
                ActivationI8::from_parts(scale_word[0], codes.clone())
                    .map_err(|e| format!("int8 activation: {e}"))?;
                let tiles: Vec<Vec<f32>> = (0..tiling.col_tiles())
                    .into_par_iter()
                    .map(|c| tile(matrix, &tiling, c, &codes, scale_word, lanes))
                    .collect();
                data[y] = Data::F32(tiles.concat());
            }
            Attrs::Rope { x, y } => {
                let pos = u16s(&data[self.fixed.pos_idx])?;
                let (cos, sin) = (
                    f32s(&data[self.fixed.rope_cos])?,
                    f32s(&data[self.fixed.rope_sin])?,
                );
                let x = f32s(&data[x])?;
                let mut out = vec![0f32; x.len()];
                for (i, o) in out.iter_mut().enumerate() {
                    let l = i % lanes;
                    let p = pos[l];
                    if p >= self.ctx {
                        return Err(format!("@pos_idx lane {l} holds {p}, past the context"));
                    }
                    let row = (i / lanes) % self.rope_words * self.ctx + p;
                    let (c, s) = (cos[row * lanes + l], sin[row * lanes + l]);
                    *o = x[i] * c + x[i ^ 1] * s;
                }
                data[y] = Data::F32(out);
            }
            Attrs::KvWrite {
                k,
                v,
                kcache,
                vcache,
            } => {
                let kv_idx = u16s(&data[self.fixed.kv_idx])?;
                let pos = u16s(&data[self.fixed.pos_idx])?[0];
                let (kd, vd) = (f32s(&data[k])?.to_vec(), f32s(&data[v])?.to_vec());
                let row = self.buffers[kcache].dims[1];
                let words = row / lanes;
                let mut kc = take(data, kcache)?;
                for (r, &value) in kd.iter().enumerate() {
                    for (l, &w) in kv_idx.iter().enumerate() {
                        if w >= words {
                            return Err(format!(
                                "@kv_idx lane {l} holds word {w}, past the row's {words}"
                            ));
                        }
                        kc[r * row + w * lanes + l] = value;
                    }
                }
                data[kcache] = Data::F32(kc);
                let vrow = self.buffers[vcache].dims[1];
                if pos >= self.ctx {
                    return Err(format!("@pos_idx holds {pos}, past the context"));
                }
                let mut vc = take(data, vcache)?;
                vc[pos * vrow..pos * vrow + vd.len()].copy_from_slice(&vd);
                data[vcache] = Data::F32(vc);
            }
            Attrs::Attention {
                q,
                kcache,
                vcache,
                y,
                heads,
                kv_heads,
                head_dim,
                scale,
            } => {
                let mask = f32s(&data[self.fixed.attn_mask])?;
                let (q, kc, vc) = (f32s(&data[q])?, f32s(&data[kcache])?, f32s(&data[vcache])?);
                let (row, vrow, ctx) = (
                    self.buffers[kcache].dims[1],
                    self.buffers[vcache].dims[1],
                    self.ctx,
                );
                let group = heads / kv_heads;
                let mut out = vec![0f32; heads * head_dim];
                out.par_chunks_mut(head_dim).enumerate().for_each(|(h, o)| {
                    let g = h / group;
                    let qh = &q[h * head_dim..(h + 1) * head_dim];
                    let mut key = vec![0f32; head_dim];
                    let mut scores: Vec<f32> = (0..ctx)
                        .map(|t| {
                            for (d, k) in key.iter_mut().enumerate() {
                                *k = kc[(g * head_dim + d) * row + t];
                            }
                            semantics::dot_f32(qh, &key) * scale + mask[t]
                        })
                        .collect();
                    semantics::softmax_in_place(&mut scores);
                    semantics::attention_output(
                        &scores,
                        |t| &vc[t * vrow + g * head_dim..][..head_dim],
                        o,
                    );
                });
                data[y] = Data::F32(out);
            }
            Attrs::SwiGlu { gate, up, y } => {
                let mut out = take(data, y)?;
                semantics::swiglu(f32s(&data[gate])?, f32s(&data[up])?, &mut out);
                data[y] = Data::F32(out);
            }
            Attrs::Add { a, b, y } => {
                let mut out = f32s(&data[a])?.to_vec();
                semantics::add_in_place(&mut out, f32s(&data[b])?);
                data[y] = Data::F32(out);
            }
        }
        Ok(())
    }
}

/// Output tile `c` of `y = W x`: one int32 partial-sum vector per group
/// (the tile's rows), then each row's groups combined in ascending order
/// and scaled by the scale on the row's lane.
fn tile(m: &IntMatrix, t: &Tiling, c: u64, codes: &[i8], scale: &[f32], lanes: usize) -> Vec<f32> {
    let rows = t.tile(c);
    let (first, end) = (rows.start as usize, rows.end as usize);
    let partial: Vec<Vec<i32>> = (0..t.groups())
        .map(|g| {
            let cols = t.group_cols(g);
            let cols = cols.start as usize..cols.end as usize;
            (first..end)
                .map(|r| semantics::group_dot(&codes[cols.clone()], &m.row(r)[cols.clone()]))
                .collect()
        })
        .collect();
    let mut accs = vec![0i32; partial.len()];
    (first..end)
        .map(|r| {
            for (a, p) in accs.iter_mut().zip(&partial) {
                *a = p[r - first];
            }
            semantics::combine_groups(&accs, m.row_scales(r), scale[r % lanes])
        })
        .collect()
}

/// The lpu interpreter and the golden model, run in lockstep: after every
/// token the logits and every block's K and V caches (written positions
/// equal the golden session's, unwritten ones `+0.0`) must be equal bit for
/// bit; the first difference names the op (`lpu.kv_write` of the block, or
/// the op writing `@logits`), the token and the position.
#[derive(Debug)]
pub struct LpuLockstep<'i, 'w> {
    interp: &'i LpuInterpreter<'w>,
    golden: &'i GoldenModel,
    session: GoldenSession,
    state: LpuState,
    index: usize,
}

fn show(x: f32) -> String {
    format!("{x:e} (0x{:08x})", x.to_bits())
}

impl<'i, 'w> LpuLockstep<'i, 'w> {
    /// Starts both from empty caches.
    pub fn new(
        interp: &'i LpuInterpreter<'w>,
        golden: &'i GoldenModel,
    ) -> Result<Self, InterpError> {
        let a = golden.arch();
        if (a.blocks as usize, a.kv_dim() as usize) != (interp.blocks, interp.kv_dim) {
            return Err(module_error(format!(
                "the module has {} blocks of KV width {}; the golden model {} of {}",
                interp.blocks,
                interp.kv_dim,
                a.blocks,
                a.kv_dim()
            )));
        }
        Ok(LpuLockstep {
            interp,
            golden,
            session: golden.new_session(),
            state: interp.new_state(),
            index: 0,
        })
    }

    /// The interpreter's state after the last step.
    pub fn state(&self) -> &LpuState {
        &self.state
    }

    /// Runs `token` through both; returns the (equal) logits or the first
    /// difference.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, InterpError> {
        let (index, position) = (self.index, self.state.position);
        let x_in = self
            .golden
            .embedding_row(token as usize)
            .ok_or_else(|| InterpError::Call(format!("token {token} is outside the vocabulary")))?
            .to_vec();
        let got = self.interp.step(&mut self.state, &x_in)?;
        let want = self
            .golden
            .step(&mut self.session, token)
            .map_err(|e| InterpError::Golden {
                index,
                message: e.to_string(),
            })?;
        self.index += 1;
        let interp = self.interp;
        let op_at = |pred: &dyn Fn(&Step) -> bool| {
            interp.steps.iter().find(|s| pred(s)).map_or_else(
                || ("?".to_owned(), "?".to_owned()),
                |s| (s.location.clone(), s.kind.name().to_owned()),
            )
        };
        let mismatch = |(location, op): (String, String), detail: String| InterpError::Mismatch {
            index,
            token,
            position,
            location,
            op,
            detail,
        };
        let (lanes, ctx, kvd) = (interp.lanes, interp.ctx, interp.kv_dim);
        for b in 0..interp.blocks {
            let kv_op = || {
                op_at(&|s| {
                    matches!(s.attrs, Attrs::KvWrite { kcache, .. }
                        if interp.buffers[kcache].name == buffers::kcache(b))
                })
            };
            let read = |name: &str| match interp.buffer_data(&self.state, name) {
                Some(Data::F32(v)) => Ok(v.clone()),
                _ => Err(module_error(format!("no f32 buffer @{name}"))),
            };
            let (kc, vc) = (read(&buffers::kcache(b))?, read(&buffers::vcache(b))?);
            let keys = self.session.keys(b).unwrap_or_default();
            let values = self.session.values(b).unwrap_or_default();
            let row = (ctx.div_ceil(lanes) + 1) * lanes;
            let vrow = kvd.div_ceil(lanes) * lanes;
            for t in 0..ctx {
                for r in 0..kvd {
                    let golden = |src: &[f32]| {
                        if t <= position {
                            src.get(t * kvd + r).copied()
                        } else {
                            Some(0.0)
                        }
                    };
                    for (name, ir, g) in [
                        ("keys", kc[r * row + t], golden(keys)),
                        ("values", vc[t * vrow + r], golden(values)),
                    ] {
                        if g.map(f32::to_bits) != Some(ir.to_bits()) {
                            return Err(mismatch(
                                kv_op(),
                                format!(
                                    "cached {name} of block {b} at position {t}, row {r}: lpu {} vs golden {}",
                                    show(ir),
                                    g.map_or_else(|| "(none)".to_owned(), show)
                                ),
                            ));
                        }
                    }
                }
            }
        }
        let logits_op = || {
            op_at(&|s| match s.attrs {
                Attrs::MatMul { y, .. } => y == interp.fixed.logits,
                _ => false,
            })
        };
        if got.len() != want.len() {
            return Err(mismatch(
                logits_op(),
                format!("{} logits vs the golden model's {}", got.len(), want.len()),
            ));
        }
        if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            return Err(mismatch(
                logits_op(),
                format!(
                    "logit {i}: lpu {} vs golden {}",
                    show(got[i]),
                    show(want[i])
                ),
            ));
        }
        Ok(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_inputs_follow_the_layout_rules() {
        let h = HostInputs::new(321, 700, 320).unwrap();
        assert!(h.pos_idx.iter().all(|&p| p == 321));
        // 700 positions = 3 words: junk word 3; position 321 = word 1, lane 1.
        assert_eq!(h.kv_idx[1], 1);
        assert_eq!(h.kv_idx.iter().filter(|&&w| w == 3).count(), 319);
        assert_eq!(h.attn_mask[321], 0.0);
        assert_eq!(h.attn_mask[322], f32::NEG_INFINITY);
        assert!(HostInputs::new(700, 700, 320).is_none());
    }
}
