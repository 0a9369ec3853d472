//! `--lpu-lower[=context=N]`: a q35 module (after `q35-quantize-activations`)
//! to the `lpu` dialect, one decode step of one token (docs/lpu-dialect.md).
//!
//! Every value of `@decode` becomes a module-level `lpu.buffer` in MEM: the
//! embedding is the host input `@x_in`, the logits the output `@logits`,
//! each block's KV cache `@kcache_<b>` (K^T, positions on the lanes, one
//! junk word per row) and `@vcache_<b>`, norm vectors const buffers, the
//! RoPE tables `@rope_cos`/`@rope_sin`, everything else a scratch buffer
//! named after the op that writes it. Each quantized matrix becomes an
//! `lpu.weight` with its tiling as attributes (`col_tiles = ceil(N / 320)`,
//! `groups = ceil(K / G)`, ragged `last_tile_rows`/`last_group_cols`). The
//! new `@decode` has one lpu op per model op, in program order, naming its
//! buffers by symbol. The `q35.weight` declarations and the q35 `@decode`
//! are replaced; the module attributes stay, plus `lpu.context`.
//!
//! Option `context` (default 0: the module's `q35.limits` `max_seq_len`):
//! the positions the program attends over (`q35c compile --context N`).
//!
//! Refused, with a diagnostic naming the op and the field (nothing is
//! rewritten): a `q35.matmul`/`q35.lm_head` (quantize first), an f32
//! weight, a scheme the machine does not unpack (not 3.5-bit pairs), a
//! group longer than a plane's rows or not a multiple of 16, a RoPE whose
//! `head_dim` is odd or whose `base`/`head_dim` differ from `q35.arch` (the
//! tables are built from it; a `head_dim` that does not divide the lanes
//! takes [`rope_words`] table words a position), a context past the u16
//! positions of `@pos_idx` (or whose V cache rows, `ceil(kv_dim / lanes)`
//! words each, pass the u16 scatter index), shapes that disagree with
//! `q35.arch`.
//!
//! Before (tiny, after `q35-quantize-activations`):
//! ```mlir
//! %1 = "q35.rmsnorm"(%0) {eps = 9.99999974E-6 : f32, weight = @blk.0.attn_norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
//! %2:2 = "q35.quantize"(%1) : (tensor<?x64xf32>) -> (tensor<?x64xi8>, tensor<?xf32>)
//! %3 = "q35.qmatmul"(%2#0, %2#1) {acc_type = i32, weight = @blk.0.attn_q} : (tensor<?x64xi8>, tensor<?xf32>) -> tensor<?x64xf32>
//! ```
//! After:
//! ```mlir
//! "lpu.buffer"() {kind = "const", source = "blk.0.attn_norm.weight", sym_name = "blk.0.attn_norm", type = tensor<64xf32>} : () -> ()
//! "lpu.weight"() {col_tiles = 1 : i64, cols = 64 : i64, group = 32 : i64, groups = 2 : i64, last_group_cols = 32 : i64, last_tile_rows = 64 : i64, rows = 64 : i64, scheme = "q35", source = "blk.0.attn_q.weight", sym_name = "blk.0.attn_q", tile_rows = 320 : i64} : () -> ()
//! func.func @decode() {
//!   "lpu.rmsnorm"() {eps = 9.99999974E-6 : f32, n = 64 : i64, weight = @blk.0.attn_norm, x = @x_in, y = @blk.0.attn_norm.y} : () -> ()
//!   "lpu.quantize"() {n = 64 : i64, scale = @blk.0.attn_norm.scale, x = @blk.0.attn_norm.y, xs = @blk.0.attn_norm.xs} : () -> ()
//!   "lpu.matmul"() {col_tiles = 1 : i64, cols = 64 : i64, group = 32 : i64, groups = 2 : i64, rows = 64 : i64, scale = @blk.0.attn_norm.scale, weight = @blk.0.attn_q, xs = @blk.0.attn_norm.xs, y = @blk.0.q.y} : () -> ()
//! ```

use std::collections::{BTreeMap, BTreeSet};

use melior::Context;
use melior::dialect::func;
use melior::ir::attribute::{StringAttribute, TypeAttribute};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRefMut};
use melior::ir::r#type::{FunctionType, IntegerType, RankedTensorType, TypeLike};
use melior::ir::{
    Block, BlockRef, Location, Operation, OperationRef, Region, RegionLike, Type, ValueLike,
};
use q35_contract::{CHANNEL_QUANTUM, QuantScheme};
use q35_frontend::lpu_ops::{self, BufferKind, CONTEXT_ATTR, OpKind as Lpu, buffers};
use q35_frontend::ops::{OpKind as Q35, module_attr};

use super::{
    Diagnostic, OptionKind, PassContext, PassId, PassInfo, PassOption, WeightDecl, diagnostic,
    op_name, weights,
};
use crate::ir::{
    TensorInfo, float_attr, int_attr, json_from_attribute, string_attr, string_of, symbol_attr,
};
use crate::lpu::{AttrValue, build};

static ID: PassId = PassId::new();

/// The pass.
pub(crate) static PASS: PassInfo = PassInfo::new(
    "lpu-lower",
    "lower a q35 module (after q35-quantize-activations) to the lpu dialect: one decode step in MEM buffers, tiled weights",
    &[PassOption {
        name: "context",
        kind: OptionKind::UInt,
        default: "0",
        help: "positions of the compiled context (0: the module's q35.limits max_seq_len)",
    }],
    run,
    &ID,
);

/// Largest context: positions are u16 lanes of `@pos_idx` (0 ..= 65535).
pub const MAX_CONTEXT: u64 = 1 << 16;

/// Words a position takes in `@rope_cos`/`@rope_sin`: `head_dim / gcd(lanes,
/// head_dim)`, the period in words of the lane pattern (1 when `head_dim`
/// divides the lanes; 2 for head_dim 128 on 320 lanes). The tables hold
/// `words * ctx` rows, word-major: row `w * ctx + t` is word `w` of position
/// `t`, its lane `l` standing for channel `c = w * lanes + l` (pair `(c %
/// head_dim) / 2`); word `k` of a rotated vector uses word `k % words`
/// (docs/lpu-dialect.md). `None` for `head_dim` 0 or `lanes` 0.
pub fn rope_words(head_dim: u64, lanes: u64) -> Option<u64> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    (head_dim > 0 && lanes > 0).then(|| head_dim / gcd(lanes, head_dim))
}

fn run(cx: &mut PassContext<'_, '_>) {
    let diagnostics = lower(cx);
    for d in diagnostics {
        cx.report(d);
    }
}

/// The architecture facts the lowering needs, from `q35.arch`.
#[derive(Debug, Clone, Copy)]
struct Arch {
    blocks: u64,
    hidden: u64,
    kv_heads: u64,
    head_dim: u64,
    vocab: u64,
    rope_base: f64,
}

impl Arch {
    fn kv_dim(&self) -> u64 {
        self.kv_heads.saturating_mul(self.head_dim)
    }
}

/// Machine figures from `q35.target`.
#[derive(Debug, Clone, Copy)]
struct Machine {
    lanes: u64,
    tile_rows: u64,
    plane_rows: u64,
}

/// What a q35 value is at the lpu level.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    /// Held in this buffer.
    Buffer(String),
    /// The token ids (only `q35.embed` reads them).
    Tokens,
    /// The position (the lpu ops read `@pos_idx` instead).
    Pos,
    /// The KV cache (the lpu ops name each block's caches).
    Cache,
    /// The result of an op that failed to lower (its readers are not
    /// reported again).
    Failed,
}

/// A module-level declaration to build.
enum Decl<'c> {
    Buffer {
        name: String,
        kind: BufferKind,
        ty: Type<'c>,
        source: Option<String>,
    },
    Weight {
        name: String,
        values: Vec<(&'static str, AttrValue<'c>)>,
    },
}

/// One lpu op of the new `@decode`.
struct Step<'c> {
    kind: Lpu,
    location: Location<'c>,
    values: Vec<(&'static str, AttrValue<'c>)>,
}

struct Lowering<'c> {
    context: &'c Context,
    arch: Arch,
    machine: Machine,
    ctx: u64,
    weights: BTreeMap<String, WeightDecl>,
    decls: Vec<Decl<'c>>,
    names: BTreeSet<String>,
    values: BTreeMap<usize, Val>,
    steps: Vec<Step<'c>>,
    logits: Option<usize>,
    /// Index of the op being lowered in `@decode` (names unnamed results).
    index: usize,
    diagnostics: Vec<Diagnostic>,
}

fn key<'c>(v: impl ValueLike<'c>) -> usize {
    v.to_raw().ptr as usize
}

fn lower(cx: &PassContext<'_, '_>) -> Vec<Diagnostic> {
    let module = cx.module;
    let mut diagnostics = Vec::new();
    let at_module = |message: String| vec![diagnostic(&module, message)];
    let Some(arch) = read_arch(&module) else {
        return at_module(format!(
            "lpu-lower needs the module attribute `{}` with blocks, hidden, heads, kv_heads, head_dim, vocab and rope_base (q35c compile writes it)",
            module_attr::ARCH
        ));
    };
    let target = match cx.target() {
        Ok(t) => t,
        Err(e) => return at_module(format!("lpu-lower needs the target: {e}")),
    };
    let machine = Machine {
        lanes: u64::from(target.vector.lanes),
        tile_rows: u64::from(target.mxm.cols),
        plane_rows: u64::from(target.mxm.rows),
    };
    let ctx = match cx.options.uint("context") {
        0 => match read_max_seq_len(&module) {
            Some(n) => n,
            None => {
                return at_module(format!(
                    "lpu-lower needs a context: give `context=N` or the module attribute `{}` with max_seq_len",
                    module_attr::LIMITS
                ));
            }
        },
        n => n,
    };
    if ctx == 0 || ctx > MAX_CONTEXT {
        return at_module(format!(
            "context {ctx} is outside 1..={MAX_CONTEXT} (positions are the u16 lanes of @{})",
            buffers::POS_IDX
        ));
    }
    if arch.head_dim == 0 || arch.kv_heads == 0 || machine.lanes == 0 {
        return at_module(format!(
            "`{}` has head_dim {} and kv_heads {}; the target has {} lanes",
            module_attr::ARCH,
            arch.head_dim,
            arch.kv_heads,
            machine.lanes
        ));
    }
    let v_words = arch.kv_dim().div_ceil(machine.lanes);
    if ctx.saturating_mul(v_words) > MAX_CONTEXT {
        return at_module(format!(
            "context {ctx} x {v_words} words of a V cache row (kv_dim {}) is past the {MAX_CONTEXT} words a u16 scatter index of @{} reaches",
            arch.kv_dim(),
            buffers::POS_IDX
        ));
    }
    let table = weights(&module, &mut diagnostics);
    if !diagnostics.is_empty() {
        return diagnostics;
    }
    let Some(func) = find_decode(&module) else {
        return at_module("lpu-lower needs a `func.func @decode`".into());
    };
    let context_ref = module.context();
    // SAFETY: `ContextRef` has `Context`'s layout; `context_ref` outlives
    // every use of `context` (this function).
    let context = unsafe { context_ref.to_ref() };
    let mut l = Lowering {
        context,
        arch,
        machine,
        ctx,
        weights: table,
        decls: Vec::new(),
        names: BTreeSet::new(),
        values: BTreeMap::new(),
        steps: Vec::new(),
        logits: None,
        index: 0,
        diagnostics,
    };
    l.fixed_buffers();
    l.function(func);
    if !l.diagnostics.is_empty() {
        return l.diagnostics;
    }
    if let Err(d) = l.rewrite(cx, func) {
        return vec![d];
    }
    Vec::new()
}

/// The `q35.arch` facts.
fn read_arch(module: &OperationRef<'_, '_>) -> Option<Arch> {
    let a = json_from_attribute(module.attribute(module_attr::ARCH).ok()?).ok()?;
    let int = |k: &str| a.get(k)?.as_u64();
    Some(Arch {
        blocks: int("blocks")?,
        hidden: int("hidden")?,
        kv_heads: int("kv_heads")?,
        head_dim: int("head_dim")?,
        vocab: int("vocab")?,
        rope_base: a.get("rope_base")?.as_f64()?,
    })
}

/// `q35.limits` `max_seq_len`.
fn read_max_seq_len(module: &OperationRef<'_, '_>) -> Option<u64> {
    let a = json_from_attribute(module.attribute(module_attr::LIMITS).ok()?).ok()?;
    a.get("max_seq_len")?.as_u64()
}

/// The module's `func.func @decode`.
fn find_decode<'c, 'a>(module: &OperationRef<'c, 'a>) -> Option<OperationRef<'c, 'a>> {
    let body = module.region(0).ok()?.first_block()?;
    let mut op = body.first_operation();
    while let Some(o) = op {
        if op_name(&o) == "func.func" && string_attr(&o, "sym_name").as_deref() == Some("decode") {
            return Some(o);
        }
        op = o.next_in_block();
    }
    None
}

/// `tensor<dims x element>`.
fn tensor<'c>(dims: &[u64], element: Type<'c>) -> Type<'c> {
    RankedTensorType::new(dims, element, None).into()
}

fn int(v: u64) -> AttrValue<'static> {
    AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn sym(name: &str) -> AttrValue<'static> {
    AttrValue::Symbol(name.to_owned())
}

/// Schemes whose weights the machine unpacks (`unpack35`: 3.5-bit pairs).
fn unpacks(scheme: QuantScheme) -> bool {
    match scheme {
        QuantScheme::Q35 | QuantScheme::Q35Rtn | QuantScheme::Q35Alternating => true,
        QuantScheme::Int8 | QuantScheme::Int4 | QuantScheme::Int3 => false,
    }
}

impl<'c> Lowering<'c> {
    fn f32(&self) -> Type<'c> {
        Type::float32(self.context)
    }

    fn declare_buffer(
        &mut self,
        name: &str,
        kind: BufferKind,
        ty: Type<'c>,
        source: Option<String>,
    ) {
        self.names.insert(name.to_owned());
        self.decls.push(Decl::Buffer {
            name: name.to_owned(),
            kind,
            ty,
            source,
        });
    }

    /// The buffers every decode program has: host inputs, the output, the
    /// RoPE tables and each block's KV cache.
    fn fixed_buffers(&mut self) {
        let (lanes, ctx, a) = (self.machine.lanes, self.ctx, self.arch);
        let f32 = self.f32();
        let i16: Type<'c> = IntegerType::new(self.context, 16).into();
        self.declare_buffer(
            buffers::X_IN,
            BufferKind::Input,
            tensor(&[a.hidden], f32),
            None,
        );
        self.declare_buffer(
            buffers::POS_IDX,
            BufferKind::Input,
            tensor(&[lanes], i16),
            None,
        );
        self.declare_buffer(
            buffers::KV_IDX,
            BufferKind::Input,
            tensor(&[lanes], i16),
            None,
        );
        self.declare_buffer(
            buffers::ATTN_MASK,
            BufferKind::Input,
            tensor(&[ctx], f32),
            None,
        );
        self.declare_buffer(
            buffers::LOGITS,
            BufferKind::Output,
            tensor(&[a.vocab], f32),
            None,
        );
        for (name, source) in [
            (buffers::ROPE_COS, buffers::ROPE_COS_SOURCE),
            (buffers::ROPE_SIN, buffers::ROPE_SIN_SOURCE),
        ] {
            let words = rope_words(a.head_dim, lanes).unwrap_or(1);
            let ty = tensor(&[words.saturating_mul(ctx), lanes], f32);
            self.declare_buffer(name, BufferKind::Const, ty, Some(source.to_owned()));
        }
        let words = ctx.div_ceil(lanes);
        let v_words = a.kv_dim().div_ceil(lanes);
        let words_row = (words + 1).saturating_mul(lanes);
        for b in 0..a.blocks {
            let b = usize::try_from(b).unwrap_or(usize::MAX);
            let k = tensor(&[a.kv_dim(), words_row], f32);
            self.declare_buffer(&buffers::kcache(b), BufferKind::Kv, k, None);
            let v = tensor(&[ctx, v_words.saturating_mul(lanes)], f32);
            self.declare_buffer(&buffers::vcache(b), BufferKind::Kv, v, None);
        }
    }

    /// A fresh scratch buffer for result `index` of `op` (or `@logits`).
    fn result_buffer(
        &mut self,
        op: &OperationRef<'c, '_>,
        index: usize,
        suffix: &str,
        ty: Type<'c>,
    ) -> Result<String, String> {
        let result = op.result(index).map_err(|e| e.to_string())?;
        let k = key(result);
        if self.logits == Some(k) {
            self.values
                .insert(k, Val::Buffer(buffers::LOGITS.to_owned()));
            return Ok(buffers::LOGITS.to_owned());
        }
        let location = op.location();
        let base = if location.is_name() {
            string_of(location.name_value().as_string_ref()).unwrap_or_default()
        } else {
            format!("op{}", self.index)
        };
        let mut name = format!("{base}.{suffix}");
        let mut n = 1;
        while self.names.contains(&name) {
            name = format!("{base}.{suffix}.{n}");
            n += 1;
        }
        self.declare_buffer(&name, BufferKind::Scratch, ty, None);
        self.values.insert(k, Val::Buffer(name.clone()));
        Ok(name)
    }

    /// The buffer holding operand `index` of `op`.
    fn operand_buffer(&self, op: &OperationRef<'c, '_>, index: usize) -> Result<String, String> {
        let v = op.operand(index).map_err(|e| e.to_string())?;
        match self.values.get(&key(v)) {
            Some(Val::Buffer(name)) => Ok(name.clone()),
            // Already reported at the op that failed.
            Some(Val::Failed) => Err(String::new()),
            Some(other) => Err(format!("operand #{index} is {other:?}, not an activation")),
            None => Err(format!(
                "operand #{index} is not computed by an op lpu-lower lowers"
            )),
        }
    }

    /// The features `n` of result `index` (`tensor<?xNxf32>`).
    fn features(op: &OperationRef<'c, '_>, index: usize) -> Result<u64, String> {
        let t = TensorInfo::of(op.result(index).map_err(|e| e.to_string())?.r#type())
            .ok_or("the result is not a ranked tensor")?;
        match t.dims[..] {
            [_, Some(n)] => Ok(n),
            _ => Err(format!("the result {t} is not tensor<?xNxf32>")),
        }
    }

    fn int_attr(op: &OperationRef<'c, '_>, name: &str) -> Result<u64, String> {
        int_attr(op, name)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| format!("needs a non-negative integer `{name}`"))
    }

    /// The const buffer of the norm vector `@symbol` (declared once).
    fn norm_buffer(&mut self, symbol: &str, n: u64) -> Result<String, String> {
        let w = self
            .weights
            .get(symbol)
            .ok_or_else(|| format!("`weight` @{symbol} is not a declared q35.weight"))?;
        if w.tensor.dims != [Some(n)] || w.tensor.element != "f32" {
            return Err(format!(
                "`weight` @{symbol} is {}, not tensor<{n}xf32>",
                w.tensor
            ));
        }
        if !self.names.contains(symbol) {
            let source = w.source.clone();
            let ty = tensor(&[n], self.f32());
            self.declare_buffer(symbol, BufferKind::Const, ty, Some(source));
        }
        Ok(symbol.to_owned())
    }

    /// The const buffer of `q35.mix`'s f32 `n x n` matrix `@symbol`
    /// (declared once) as the machine reads it: `block` steps of
    /// `ceil(n / lanes)` lane words (docs/lpu-dialect.md, `lpu.mix`).
    fn mix_buffer(&mut self, symbol: &str, n: u64, block: u64) -> Result<String, String> {
        let w = self
            .weights
            .get(symbol)
            .ok_or_else(|| format!("`matrix` @{symbol} is not a declared q35.weight"))?;
        if w.tensor.dims != [Some(n), Some(n)] || w.tensor.element != "f32" {
            return Err(format!(
                "`matrix` @{symbol} is {}, not tensor<{n}x{n}xf32>",
                w.tensor
            ));
        }
        if !self.names.contains(symbol) {
            let source = w.source.clone();
            let lanes = self.machine.lanes;
            let ty = tensor(&[block, n.div_ceil(lanes), lanes], self.f32());
            self.declare_buffer(symbol, BufferKind::Const, ty, Some(source));
        }
        Ok(symbol.to_owned())
    }

    /// The `lpu.weight` of the quantized matrix `@symbol` (declared once)
    /// and its tiling.
    fn weight(&mut self, symbol: &str) -> Result<lpu_ops::Tiling, String> {
        let w = self
            .weights
            .get(symbol)
            .ok_or_else(|| format!("`weight` @{symbol} is not a declared q35.weight"))?;
        let Some(q) = &w.qweight else {
            return Err(format!(
                "`weight` @{symbol} is {}: lpu.matmul needs a quantized (!q35.qweight) matrix",
                w.tensor
            ));
        };
        let [Some(rows), Some(cols)] = w.tensor.dims[..] else {
            return Err(format!("`weight` @{symbol} is {}, not a matrix", w.tensor));
        };
        let scheme: QuantScheme = q
            .scheme
            .parse()
            .map_err(|e| format!("`weight` @{symbol}: {e}"))?;
        if !unpacks(scheme) {
            return Err(format!(
                "`weight` @{symbol}: scheme {:?} is not 3.5-bit pairs; the machine unpacks only q35 schemes (unpack35)",
                q.scheme
            ));
        }
        let group = q.group_size;
        if group == 0 || group > self.machine.plane_rows || group % CHANNEL_QUANTUM as u64 != 0 {
            return Err(format!(
                "`weight` @{symbol}: group {group} must be a multiple of {CHANNEL_QUANTUM} of at most {} (the plane's rows: one group per tile)",
                self.machine.plane_rows
            ));
        }
        let tiling = lpu_ops::Tiling {
            rows,
            cols,
            group,
            tile_rows: self.machine.tile_rows,
        };
        if !self.names.contains(symbol) {
            let values = vec![
                ("sym_name", AttrValue::Str(symbol.to_owned())),
                ("source", AttrValue::Str(w.source.clone())),
                ("rows", int(rows)),
                ("cols", int(cols)),
                ("group", int(group)),
                ("col_tiles", int(tiling.col_tiles())),
                ("groups", int(tiling.groups())),
                ("tile_rows", int(tiling.tile_rows)),
                ("last_tile_rows", int(tiling.last_tile_rows())),
                ("last_group_cols", int(tiling.last_group_cols())),
                ("scheme", AttrValue::Str(q.scheme.clone())),
            ];
            self.names.insert(symbol.to_owned());
            self.decls.push(Decl::Weight {
                name: symbol.to_owned(),
                values,
            });
        }
        Ok(tiling)
    }

    fn step(
        &mut self,
        kind: Lpu,
        op: &OperationRef<'c, '_>,
        values: Vec<(&'static str, AttrValue<'c>)>,
    ) {
        self.steps.push(Step {
            kind,
            location: op.location(),
            values,
        });
    }

    /// Lowers the body of `@decode`.
    fn function(&mut self, func: OperationRef<'c, '_>) {
        let Some(body) = func.region(0).ok().and_then(|r| r.first_block()) else {
            self.diagnostics
                .push(diagnostic(&func, "@decode has no body".into()));
            return;
        };
        for i in 0..body.argument_count() {
            let Ok(arg) = body.argument(i) else { continue };
            let ty = arg.r#type();
            let val = if ty.is_index() {
                Val::Pos
            } else if TensorInfo::of(ty).is_some_and(|t| t.dims.len() == 5) {
                Val::Cache
            } else {
                Val::Tokens
            };
            self.values.insert(key(arg), val);
        }
        if let Some(ret) = body.terminator() {
            self.logits = ret.operand(0).ok().map(key);
        }
        let mut op = body.first_operation();
        while let Some(o) = op {
            let name = op_name(&o);
            if name != "func.return"
                && let Err(message) = self.op(&o, &name)
            {
                if !message.is_empty() {
                    self.diagnostics.push(diagnostic(&o, message));
                }
                for r in o.results() {
                    self.values.insert(key(r), Val::Failed);
                }
            }
            self.index += 1;
            op = o.next_in_block();
        }
        let produced = self
            .logits
            .is_some_and(|k| self.values.get(&k) == Some(&Val::Buffer(buffers::LOGITS.into())));
        if !produced && self.diagnostics.is_empty() {
            self.diagnostics.push(diagnostic(
                &func,
                "the first result (the logits) is not computed by a lowered op".into(),
            ));
        }
    }

    /// Lowers one q35 op.
    fn op(&mut self, op: &OperationRef<'c, '_>, name: &str) -> Result<(), String> {
        let Some(kind) = Q35::from_name(name) else {
            return Err("lpu-lower cannot lower this op".into());
        };
        let f32 = self.f32();
        match kind {
            Q35::Weight => Err("a q35.weight inside @decode".into()),
            Q35::MatMul | Q35::LmHead => Err(
                "quantizes its input implicitly: run q35-quantize-activations before lpu-lower"
                    .into(),
            ),
            Q35::Embed => {
                let tokens = op.operand(0).map_err(|e| e.to_string())?;
                if self.values.get(&key(tokens)) != Some(&Val::Tokens) {
                    return Err("operand #0 is not the function's tokens".into());
                }
                let n = Self::features(op, 0)?;
                if n != self.arch.hidden {
                    return Err(format!(
                        "gives {n} features; q35.arch hidden is {}",
                        self.arch.hidden
                    ));
                }
                let result = op.result(0).map_err(|e| e.to_string())?;
                self.values
                    .insert(key(result), Val::Buffer(buffers::X_IN.into()));
                Ok(())
            }
            Q35::RmsNorm => {
                let n = Self::features(op, 0)?;
                let x = self.operand_buffer(op, 0)?;
                let w = symbol_attr(op, "weight").ok_or("needs a symbol `weight`")?;
                let weight = self.norm_buffer(&w, n)?;
                let eps = float_attr(op, "eps").ok_or("needs an f32 `eps`")? as f32;
                let y = self.result_buffer(op, 0, "y", tensor(&[n], f32))?;
                let values = vec![
                    ("x", sym(&x)),
                    ("weight", sym(&weight)),
                    ("y", sym(&y)),
                    ("n", int(n)),
                    ("eps", AttrValue::F32(eps)),
                ];
                self.step(Lpu::RmsNorm, op, values);
                Ok(())
            }
            Q35::Mix => {
                let n = Self::features(op, 0)?;
                let x = self.operand_buffer(op, 0)?;
                let m = symbol_attr(op, "matrix").ok_or("needs a symbol `matrix`")?;
                let block = int_attr(op, "block")
                    .and_then(|b| u64::try_from(b).ok())
                    .filter(|&b| b > 0)
                    .ok_or("needs a positive integer `block`")?;
                let lanes = self.machine.lanes;
                if !n.is_multiple_of(block) || !lanes.is_multiple_of(block) {
                    return Err(format!(
                        "blocks of {block} features must divide the {n} features and the {lanes} lanes (the machine mixes each block within one lane word)"
                    ));
                }
                let matrix = self.mix_buffer(&m, n, block)?;
                let y = self.result_buffer(op, 0, "y", tensor(&[n], f32))?;
                let values = vec![
                    ("x", sym(&x)),
                    ("matrix", sym(&matrix)),
                    ("y", sym(&y)),
                    ("n", int(n)),
                    ("block", int(block)),
                ];
                self.step(Lpu::Mix, op, values);
                Ok(())
            }
            Q35::Quantize => {
                let n = Self::features(op, 0)?;
                let x = self.operand_buffer(op, 0)?;
                let xs = self.result_buffer(op, 0, "xs", tensor(&[n], f32))?;
                let lanes = self.machine.lanes;
                let scale = self.result_buffer(op, 1, "scale", tensor(&[lanes], f32))?;
                let values = vec![
                    ("x", sym(&x)),
                    ("xs", sym(&xs)),
                    ("scale", sym(&scale)),
                    ("n", int(n)),
                ];
                self.step(Lpu::Quantize, op, values);
                Ok(())
            }
            Q35::QMatMul => {
                let w = symbol_attr(op, "weight").ok_or("needs a symbol `weight`")?;
                let t = self.weight(&w)?;
                let n = Self::features(op, 0)?;
                if n != t.rows {
                    return Err(format!(
                        "gives {n} features but `weight` @{w} has {} rows",
                        t.rows
                    ));
                }
                let xs = self.operand_buffer(op, 0)?;
                let scale = self.operand_buffer(op, 1)?;
                let y = self.result_buffer(op, 0, "y", tensor(&[n], f32))?;
                let values = vec![
                    ("xs", sym(&xs)),
                    ("scale", sym(&scale)),
                    ("weight", sym(&w)),
                    ("y", sym(&y)),
                    ("rows", int(t.rows)),
                    ("cols", int(t.cols)),
                    ("group", int(t.group)),
                    ("col_tiles", int(t.col_tiles())),
                    ("groups", int(t.groups())),
                ];
                self.step(Lpu::MatMul, op, values);
                Ok(())
            }
            Q35::Rope => {
                let n = Self::features(op, 0)?;
                let heads = Self::int_attr(op, "heads")?;
                let head_dim = Self::int_attr(op, "head_dim")?;
                let base = float_attr(op, "base").ok_or("needs an f32 `base`")?;
                if head_dim != self.arch.head_dim {
                    return Err(format!(
                        "`head_dim` {head_dim} differs from q35.arch head_dim {}, which the RoPE tables are built for",
                        self.arch.head_dim
                    ));
                }
                if head_dim == 0 || !head_dim.is_multiple_of(2) {
                    return Err(format!(
                        "`head_dim` {head_dim} must be even and non-zero (RoPE rotates adjacent pairs of lanes)"
                    ));
                }
                if (base as f32).to_bits() != (self.arch.rope_base as f32).to_bits() {
                    return Err(format!(
                        "`base` {base} differs from q35.arch rope_base {}, which the RoPE tables are built for",
                        self.arch.rope_base
                    ));
                }
                if heads.saturating_mul(head_dim) != n {
                    return Err(format!(
                        "`heads` {heads} x `head_dim` {head_dim} is not the input's {n} features"
                    ));
                }
                let x = self.operand_buffer(op, 0)?;
                let y = self.result_buffer(op, 0, "y", tensor(&[n], f32))?;
                let values = vec![
                    ("x", sym(&x)),
                    ("y", sym(&y)),
                    ("heads", int(heads)),
                    ("head_dim", int(head_dim)),
                ];
                self.step(Lpu::Rope, op, values);
                Ok(())
            }
            Q35::KvWrite => {
                let layer = self.layer(op)?;
                let kv_dim = self.arch.kv_dim();
                for i in [1, 2] {
                    let t = crate::ir::operand_tensor(op, i).ok_or("k and v must be tensors")?;
                    if t.last() != Some(kv_dim) {
                        return Err(format!(
                            "operand #{i} is {t}; q35.arch kv_heads x head_dim is {kv_dim}"
                        ));
                    }
                }
                let k = self.operand_buffer(op, 1)?;
                let v = self.operand_buffer(op, 2)?;
                let result = op.result(0).map_err(|e| e.to_string())?;
                self.values.insert(key(result), Val::Cache);
                let values = vec![
                    ("k", sym(&k)),
                    ("v", sym(&v)),
                    ("kcache", sym(&buffers::kcache(layer))),
                    ("vcache", sym(&buffers::vcache(layer))),
                ];
                self.step(Lpu::KvWrite, op, values);
                Ok(())
            }
            Q35::Attention => {
                let layer = self.layer(op)?;
                let n = Self::features(op, 0)?;
                let heads = Self::int_attr(op, "heads")?;
                let kv_heads = Self::int_attr(op, "kv_heads")?;
                let head_dim = Self::int_attr(op, "head_dim")?;
                let scale = float_attr(op, "scale").ok_or("needs an f32 `scale`")? as f32;
                if (kv_heads, head_dim) != (self.arch.kv_heads, self.arch.head_dim) {
                    return Err(format!(
                        "`kv_heads` {kv_heads} x `head_dim` {head_dim} is not the KV cache's {} x {} (q35.arch)",
                        self.arch.kv_heads, self.arch.head_dim
                    ));
                }
                if kv_heads == 0 || heads % kv_heads != 0 || heads.saturating_mul(head_dim) != n {
                    return Err(format!(
                        "`heads` {heads} must be a multiple of `kv_heads` {kv_heads} with heads x head_dim = the {n} features"
                    ));
                }
                let q = self.operand_buffer(op, 0)?;
                let y = self.result_buffer(op, 0, "y", tensor(&[n], f32))?;
                let values = vec![
                    ("q", sym(&q)),
                    ("kcache", sym(&buffers::kcache(layer))),
                    ("vcache", sym(&buffers::vcache(layer))),
                    ("y", sym(&y)),
                    ("heads", int(heads)),
                    ("kv_heads", int(kv_heads)),
                    ("head_dim", int(head_dim)),
                    ("scale", AttrValue::F32(scale)),
                ];
                self.step(Lpu::Attention, op, values);
                Ok(())
            }
            Q35::Add | Q35::SwiGlu => {
                let n = Self::features(op, 0)?;
                let a = self.operand_buffer(op, 0)?;
                let b = self.operand_buffer(op, 1)?;
                let y = self.result_buffer(op, 0, "y", tensor(&[n], f32))?;
                let (lpu, names) = if kind == Q35::Add {
                    (Lpu::Add, ["a", "b"])
                } else {
                    (Lpu::SwiGlu, ["gate", "up"])
                };
                let values = vec![
                    (names[0], sym(&a)),
                    (names[1], sym(&b)),
                    ("y", sym(&y)),
                    ("n", int(n)),
                ];
                self.step(lpu, op, values);
                Ok(())
            }
        }
    }

    /// The op's `layer`, checked against `q35.arch` blocks.
    fn layer(&self, op: &OperationRef<'c, '_>) -> Result<usize, String> {
        let layer = Self::int_attr(op, "layer")?;
        if layer >= self.arch.blocks {
            return Err(format!(
                "`layer` {layer} is past q35.arch's {} blocks",
                self.arch.blocks
            ));
        }
        usize::try_from(layer).map_err(|_| format!("`layer` {layer} is too large"))
    }

    /// Builds every declaration and the new `@decode`, then replaces the
    /// module's q35 declarations and function with them.
    fn rewrite(
        self,
        cx: &PassContext<'c, '_>,
        old: OperationRef<'c, '_>,
    ) -> Result<(), Diagnostic> {
        let module = cx.module;
        let context = self.context;
        let fail = |message: String| diagnostic(&module, message);
        let unknown = Location::unknown(context);
        let mut built: Vec<Operation<'c>> = Vec::new();
        // Fixed buffers, then consts, weights and scratch, each in order of
        // first use; a rotated model's head mix matrix last, so that it
        // leaves every other buffer's position, and with it the
        // placement's alternation of hemispheres, as it is without it.
        let rank = |d: &Decl<'_>| match d {
            Decl::Buffer { kind, source, .. } => match kind {
                BufferKind::Input | BufferKind::Output | BufferKind::Kv => 0,
                BufferKind::Const if source.as_deref().is_some_and(|s| s.starts_with("rope.")) => 0,
                BufferKind::Const if source.as_deref() == Some(q35_frontend::OUTPUT_MIX) => 4,
                BufferKind::Const => 1,
                BufferKind::Scratch => 3,
            },
            Decl::Weight { .. } => 2,
        };
        let mut decls: Vec<&Decl<'c>> = self.decls.iter().collect();
        decls.sort_by_key(|d| rank(d));
        for d in decls {
            let op = match d {
                Decl::Buffer {
                    name,
                    kind,
                    ty,
                    source,
                } => {
                    let mut values = vec![
                        ("sym_name", AttrValue::Str(name.clone())),
                        ("kind", AttrValue::Str(kind.as_str().to_owned())),
                        ("type", AttrValue::Type(*ty)),
                    ];
                    if let Some(s) = source {
                        values.push(("source", AttrValue::Str(s.clone())));
                    }
                    let loc = Location::name(context, name, unknown);
                    build(context, Lpu::Buffer, loc, &values)
                }
                Decl::Weight { name, values } => {
                    let loc = Location::name(context, name, unknown);
                    build(context, Lpu::Weight, loc, values)
                }
            }
            .map_err(fail)?;
            built.push(op);
        }
        let block = Block::new(&[]);
        for s in &self.steps {
            let op = build(context, s.kind, s.location, &s.values).map_err(fail)?;
            block.append_operation(op);
        }
        block.append_operation(func::r#return(&[], unknown));
        let region = Region::new();
        region.append_block(block);
        built.push(func::func(
            context,
            StringAttribute::new(context, "decode"),
            TypeAttribute::new(FunctionType::new(context, &[], &[]).into()),
            region,
            &[],
            old.location(),
        ));

        // Replace: erase the q35 declarations and function, append the lpu ones.
        let body: BlockRef<'c, '_> = module
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or_else(|| fail("the module has no body".into()))?;
        let mut doomed = Vec::new();
        let mut op = body.first_operation();
        while let Some(o) = op {
            if op_name(&o) == Q35::Weight.name() || o == old {
                doomed.push(o);
            }
            op = o.next_in_block();
        }
        let rewriter = cx.rewriter();
        for o in doomed {
            rewriter.as_rewriter_base().erase_op(o);
        }
        for op in built {
            body.append_operation(op);
        }
        // SAFETY: the pass owns the module while it runs; no other
        // reference mutates it.
        let mut m = unsafe { OperationRefMut::from_raw(module.to_raw()) };
        m.set_attribute(CONTEXT_ATTR, int(self.ctx).to_attribute(context));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pair_schemes_unpack() {
        assert!(unpacks(QuantScheme::Q35));
        assert!(!unpacks(QuantScheme::Int4));
    }
}
