//! An lpu module as the code generator's [`Plan`]: buffers, weights and
//! ops, one to one, with the weights and constant vectors bound from a
//! [`PlanSource`] (the golden model's quantized matrices for emission, or
//! [`ShapeOnly`] placeholders of the right shapes for the placement and
//! scheduling passes, whose result does not depend on weight values).

use std::collections::BTreeMap;

use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{Module, RegionLike};
use q35_codegen::partition::WeightShape;
use q35_codegen::plan::{BufferDecl, BufferKind as PlanKind, Plan, PlanOp};
use q35_contract::{QuantScheme, QuantizedMatrix, RopeTable};
use q35_frontend::lpu_ops::{CONTEXT_ATTR, OpKind};
use q35_frontend::ops::module_attr;
use q35_isa::DType;

use crate::interp::{Binding, WeightBinder};
use crate::ir::{
    float_attr, format_location, int_attr, json_from_attribute, string_attr, symbol_attr,
    tensor_type_attr,
};
use crate::passes::op_name;

/// Where a plan's weights and constant vectors come from.
pub trait PlanSource {
    /// The quantized matrix packed from GGUF tensor `source` (`rows x
    /// cols`, groups of `group`, in `scheme`).
    fn weight(
        &self,
        source: &str,
        rows: usize,
        cols: usize,
        group: usize,
        scheme: QuantScheme,
    ) -> Result<QuantizedMatrix, String>;
    /// The f32 vector of GGUF tensor `source` (a norm weight), `n` long.
    fn vector(&self, source: &str, n: usize) -> Result<Vec<f32>, String>;
    /// The square f32 matrix `source` (a rotated model's head mix) as
    /// `lpu.mix` reads it ([`q35_codegen::kernels::mix::block_columns`]):
    /// `block x words x lanes` values.
    fn mix_columns(
        &self,
        source: &str,
        block: usize,
        words: usize,
        lanes: usize,
    ) -> Result<Vec<f32>, String>;
}

/// The golden model's weights: quantized matrices by GGUF name (a tied LM
/// head, `token_embd.weight` at the lpu level, is `output.weight`) and its
/// norm vectors, bound by GGUF name as the interpreters bind them
/// ([`WeightBinder::from_golden`]).
#[derive(Debug)]
pub struct GoldenSource<'a> {
    layers: &'a BTreeMap<String, QuantizedMatrix>,
    binder: WeightBinder<'a>,
}

impl<'a> GoldenSource<'a> {
    /// The quantized `layers` by GGUF name and the golden model built from
    /// them (for its norms).
    pub fn new(
        layers: &'a BTreeMap<String, QuantizedMatrix>,
        golden: &'a q35_contract::GoldenModel,
    ) -> Self {
        GoldenSource {
            layers,
            binder: WeightBinder::from_golden(golden),
        }
    }
}

impl PlanSource for GoldenSource<'_> {
    fn weight(
        &self,
        source: &str,
        rows: usize,
        cols: usize,
        group: usize,
        scheme: QuantScheme,
    ) -> Result<QuantizedMatrix, String> {
        let m = self
            .layers
            .get(source)
            .or_else(|| {
                (source == "token_embd.weight")
                    .then(|| self.layers.get("output.weight"))
                    .flatten()
            })
            .ok_or_else(|| format!("no quantized matrix `{source}`"))?;
        if (m.rows(), m.cols(), m.group_size(), m.scheme()) != (rows, cols, group, scheme) {
            return Err(format!(
                "`{source}` is {}x{} in groups of {} ({}), the module declares {rows}x{cols} in groups of {group} ({scheme})",
                m.rows(),
                m.cols(),
                m.group_size(),
                m.scheme()
            ));
        }
        Ok(m.clone())
    }

    fn vector(&self, source: &str, n: usize) -> Result<Vec<f32>, String> {
        let v = match self.binder.get(source) {
            Some(Binding::Vector(v)) => Some(v),
            _ => None,
        };
        let v = v.ok_or_else(|| format!("no vector `{source}` in the golden model"))?;
        if v.len() != n {
            return Err(format!(
                "`{source}` holds {} values, the module declares {n}",
                v.len()
            ));
        }
        Ok(v.to_vec())
    }

    fn mix_columns(
        &self,
        source: &str,
        block: usize,
        words: usize,
        lanes: usize,
    ) -> Result<Vec<f32>, String> {
        let Some(Binding::Table { rows, cols, data }) = self.binder.get(source) else {
            return Err(format!("no matrix `{source}` in the golden model"));
        };
        if rows != cols || rows.div_ceil(lanes) != words {
            return Err(format!(
                "`{source}` is {rows}x{cols}, the module declares {words} lane words of it"
            ));
        }
        q35_codegen::kernels::mix::block_columns(data, rows, block, lanes)
            .map_err(|e| format!("`{source}`: {e}"))
    }
}

/// Placeholders of the right shapes
/// ([`q35_codegen::plan::placeholder_matrix`], zero norms). Placement and
/// the schedule depend only on shapes.
#[derive(Clone, Copy, Debug)]
pub struct ShapeOnly;

impl PlanSource for ShapeOnly {
    fn weight(
        &self,
        _source: &str,
        rows: usize,
        cols: usize,
        group: usize,
        scheme: QuantScheme,
    ) -> Result<QuantizedMatrix, String> {
        q35_codegen::plan::placeholder_matrix(scheme, rows, cols, group)
    }

    fn vector(&self, _source: &str, n: usize) -> Result<Vec<f32>, String> {
        Ok(vec![0.0; n])
    }

    fn mix_columns(
        &self,
        _source: &str,
        block: usize,
        words: usize,
        lanes: usize,
    ) -> Result<Vec<f32>, String> {
        Ok(vec![0.0; block * words * lanes])
    }
}

/// The module cannot be translated.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {op}: {message}")]
pub struct PlanError {
    /// Source location.
    pub location: String,
    /// The op.
    pub op: String,
    /// What is wrong.
    pub message: String,
}

fn module_error(message: impl Into<String>) -> PlanError {
    PlanError {
        location: "module".into(),
        op: "builtin.module".into(),
        message: message.into(),
    }
}

fn sym(o: &OperationRef<'_, '_>, attr: &str) -> Result<String, String> {
    symbol_attr(o, attr).ok_or_else(|| format!("needs a symbol `{attr}`"))
}

fn int(o: &OperationRef<'_, '_>, attr: &str) -> Result<u32, String> {
    int_attr(o, attr)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("needs a non-negative integer `{attr}`"))
}

fn f32v(o: &OperationRef<'_, '_>, attr: &str) -> Result<f32, String> {
    float_attr(o, attr)
        .map(|v| v as f32)
        .ok_or_else(|| format!("needs a float `{attr}`"))
}

/// An `lpu.weight`'s declaration: its symbol, the GGUF tensor it binds,
/// its shape, group size and scheme.
struct WeightDecl {
    sym_name: String,
    source: String,
    rows: usize,
    cols: usize,
    group: usize,
    scheme: QuantScheme,
}

/// Reads the `lpu.weight` `o` (errors through `err`, which locates them).
fn weight_decl(
    o: &OperationRef<'_, '_>,
    err: &dyn Fn(String) -> PlanError,
) -> Result<WeightDecl, PlanError> {
    let sym_name = string_attr(o, "sym_name").ok_or_else(|| err("needs `sym_name`".into()))?;
    let source = string_attr(o, "source").ok_or_else(|| err("needs `source`".into()))?;
    let size = |attr: &str| int(o, attr).map(|v| v as usize).map_err(err);
    let (rows, cols, group) = (size("rows")?, size("cols")?, size("group")?);
    let scheme = string_attr(o, "scheme")
        .and_then(|s| QuantScheme::ALL.into_iter().find(|q| q.as_str() == s))
        .ok_or_else(|| err(format!("@{sym_name}: unknown `scheme`")))?;
    Ok(WeightDecl {
        sym_name,
        source,
        rows,
        cols,
        group,
        scheme,
    })
}

/// The MEM an lpu module needs at the least, from its shapes alone (no
/// weight is materialised): what `lpu-place` compares with the chip before
/// it builds placeholder weights, so a model far too large for one chip
/// (LLaMA-70B's 30 GB at 3.5 bits) is an error naming both sizes, not an
/// allocation of its placeholders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemNeed {
    /// Weights: packed codes, slot masks and fp16 group scales.
    pub weight_bytes: u64,
    /// Weights counted.
    pub weights: u64,
    /// The KV caches.
    pub kv_bytes: u64,
    /// Every other buffer (inputs, outputs, constants, scratch).
    pub other_bytes: u64,
}

impl MemNeed {
    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.weight_bytes + self.kv_bytes + self.other_bytes
    }

    /// What a step of `users` at once needs at least: a KV cache each;
    /// the weights and the other buffers are counted once (the per-user
    /// rows of the inputs and intermediates are small beside the caches,
    /// and a lower bound must not count the constants again).
    pub fn batched(self, users: u32) -> MemNeed {
        MemNeed {
            kv_bytes: self.kv_bytes * u64::from(users.max(1)),
            ..self
        }
    }
}

/// [`MemNeed`] of the module operation `m`. The code generator needs more
/// than this (weight images are laid out in whole words per plane tile,
/// kernels add scratch), so a module over it cannot fit; one under it may
/// still not.
pub fn mem_need(m: &OperationRef<'_, '_>) -> Result<MemNeed, PlanError> {
    let body = m
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| module_error("the module has no body"))?;
    let mut need = MemNeed::default();
    let mut op = body.first_operation();
    while let Some(o) = op {
        let name = op_name(&o);
        let err = |message: String| PlanError {
            location: format_location(o.location()),
            op: name.clone(),
            message,
        };
        match OpKind::from_name(&name) {
            Some(OpKind::Weight) => {
                let w = weight_decl(&o, &err)?;
                let layout = q35_contract::format::Layout::new(w.rows, w.cols, w.group)
                    .map_err(|e| err(format!("@{}: {e}", w.sym_name)))?;
                let bytes = layout.packed_bytes(w.scheme)
                    + layout.mask_bytes(w.scheme)
                    + 2 * w.rows * layout.n_groups();
                need.weight_bytes += bytes as u64;
                need.weights += 1;
            }
            Some(OpKind::Buffer) => {
                let sym_name = string_attr(&o, "sym_name").unwrap_or_default();
                let t = tensor_type_attr(&o, "type")
                    .ok_or_else(|| err(format!("@{sym_name} needs a tensor `type`")))?;
                let elements: u64 = t
                    .dims
                    .iter()
                    .copied()
                    .product::<Option<u64>>()
                    .ok_or_else(|| err(format!("@{sym_name} has a dynamic type {t}")))?;
                let bytes = elements
                    * match t.element.as_str() {
                        "i16" => 2,
                        _ => 4,
                    };
                if string_attr(&o, "kind").as_deref() == Some("kv") {
                    need.kv_bytes += bytes;
                } else {
                    need.other_bytes += bytes;
                }
            }
            Some(_) | None => {}
        }
        op = o.next_in_block();
    }
    Ok(need)
}

/// Translates `module` (an lpu module) into a [`Plan`].
pub fn to_plan(module: &Module<'_>, src: &dyn PlanSource) -> Result<Plan, PlanError> {
    op_to_plan(&module.as_operation(), src)
}

/// [`to_plan`] on the module operation (what a pass holds).
pub fn op_to_plan(m: &OperationRef<'_, '_>, src: &dyn PlanSource) -> Result<Plan, PlanError> {
    plan_of(m, src, None)
}

/// [`op_to_plan`] without binding any weight: the plan's `weights` is
/// empty and each weight's shape is returned by name instead (a
/// timing-only system compile makes placeholders of these shapes stage by
/// stage, `q35_codegen::partition::SystemOptions::placeholders`, so a
/// model larger than the host's memory compiles). Norm vectors come from
/// `src`.
pub fn op_to_plan_shapes(
    m: &OperationRef<'_, '_>,
    src: &dyn PlanSource,
) -> Result<(Plan, BTreeMap<String, WeightShape>), PlanError> {
    let mut shapes = BTreeMap::new();
    let plan = plan_of(m, src, Some(&mut shapes))?;
    Ok((plan, shapes))
}

fn plan_of(
    m: &OperationRef<'_, '_>,
    src: &dyn PlanSource,
    mut shapes: Option<&mut BTreeMap<String, WeightShape>>,
) -> Result<Plan, PlanError> {
    let ctx = int_attr(m, CONTEXT_ATTR)
        .and_then(|c| u32::try_from(c).ok())
        .filter(|&c| c > 0)
        .ok_or_else(|| module_error(format!("the module has no positive `{CONTEXT_ATTR}`")))?;
    let arch = m
        .attribute(module_attr::ARCH)
        .ok()
        .and_then(|a| json_from_attribute(a).ok())
        .ok_or_else(|| module_error(format!("the module has no `{}`", module_attr::ARCH)))?;
    let (Some(head_dim), Some(base)) = (
        arch.get("head_dim").and_then(serde_json::Value::as_u64),
        arch.get("rope_base").and_then(serde_json::Value::as_f64),
    ) else {
        return Err(module_error("`q35.arch` needs head_dim and rope_base"));
    };
    let rope = RopeTable::new(head_dim as usize, base as f32, ctx as usize);
    let tables = q35_codegen::kernels::rope::rope_tables(&rope, head_dim as usize, ctx as usize)
        .map_err(|e| module_error(e.to_string()))?;
    let (cos, sin) = (tables.cos, tables.sin);
    let body = m
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| module_error("the module has no body"))?;
    let mut buffers = Vec::new();
    let mut weights = BTreeMap::new();
    let mut func = None;
    let mut op = body.first_operation();
    while let Some(o) = op {
        let name = op_name(&o);
        let err = |message: String| PlanError {
            location: format_location(o.location()),
            op: name.clone(),
            message,
        };
        match OpKind::from_name(&name) {
            Some(OpKind::Buffer) => {
                let sym_name =
                    string_attr(&o, "sym_name").ok_or_else(|| err("needs `sym_name`".into()))?;
                let kind = match string_attr(&o, "kind").as_deref() {
                    Some("input") => PlanKind::Input,
                    Some("output") => PlanKind::Output,
                    Some("kv") => PlanKind::Kv,
                    Some("const") => PlanKind::Const,
                    Some("scratch") => PlanKind::Scratch,
                    other => return Err(err(format!("@{sym_name}: unknown kind {other:?}"))),
                };
                let t = tensor_type_attr(&o, "type")
                    .ok_or_else(|| err(format!("@{sym_name} needs a tensor `type`")))?;
                let dims = t
                    .dims
                    .iter()
                    .map(|d| d.and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err(format!("@{sym_name} has a dynamic type {t}")))?;
                let dtype = match t.element.as_str() {
                    "f32" => DType::F32,
                    "i16" => DType::U16,
                    other => return Err(err(format!("@{sym_name}: element type {other}"))),
                };
                let n: usize = dims.iter().map(|&d| d as usize).product();
                let init = match (kind, string_attr(&o, "source").as_deref()) {
                    (PlanKind::Const, Some("rope.cos")) => Some(cos.clone()),
                    (PlanKind::Const, Some("rope.sin")) => Some(sin.clone()),
                    (PlanKind::Const, Some(source)) if dims.len() == 3 => Some(
                        src.mix_columns(
                            source,
                            dims[0] as usize,
                            dims[1] as usize,
                            dims[2] as usize,
                        )
                        .map_err(|e| err(format!("@{sym_name}: {e}")))?
                        .into_iter()
                        .map(f32::to_bits)
                        .collect(),
                    ),
                    (PlanKind::Const, Some(source)) => Some(
                        src.vector(source, n)
                            .map_err(|e| err(format!("@{sym_name}: {e}")))?
                            .into_iter()
                            .map(f32::to_bits)
                            .collect(),
                    ),
                    (PlanKind::Const, None) => {
                        return Err(err(format!("const @{sym_name} has no `source`")));
                    }
                    _ => None,
                };
                buffers.push(BufferDecl {
                    name: sym_name,
                    kind,
                    dtype,
                    dims,
                    init,
                });
            }
            Some(OpKind::Weight) => {
                let d = weight_decl(&o, &err)?;
                if let Some(shapes) = shapes.as_deref_mut() {
                    shapes.insert(
                        d.sym_name,
                        WeightShape {
                            rows: d.rows,
                            cols: d.cols,
                            group: d.group,
                            scheme: d.scheme,
                        },
                    );
                    op = o.next_in_block();
                    continue;
                }
                let w = src
                    .weight(&d.source, d.rows, d.cols, d.group, d.scheme)
                    .map_err(|e| err(format!("@{}: {e}", d.sym_name)))?;
                weights.insert(d.sym_name, w);
            }
            Some(_) | None => {
                if name == "func.func" && string_attr(&o, "sym_name").as_deref() == Some("decode") {
                    func = Some(o);
                }
            }
        }
        op = o.next_in_block();
    }
    let func = func.ok_or_else(|| module_error("the module has no `func.func @decode`"))?;
    let block = func
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| module_error("@decode has no body"))?;
    let mut ops = Vec::new();
    let mut op = block.first_operation();
    while let Some(o) = op {
        let name = op_name(&o);
        if name != "func.return" {
            let location = format_location(o.location());
            let plan_op = decode(&o, &name).map_err(|message| PlanError {
                location: location.clone(),
                op: name.clone(),
                message,
            })?;
            ops.push((label(&name, &plan_op), plan_op));
        }
        op = o.next_in_block();
    }
    Ok(Plan {
        ctx,
        buffers,
        weights,
        ops,
        users: 1,
        attend: None,
    })
}

/// A readable label for an op: the buffer it writes, without the `.y`.
fn label(name: &str, op: &PlanOp) -> String {
    let y = match op {
        PlanOp::MatMul { weight, .. } => return weight.clone(),
        PlanOp::KvWrite { kcache, .. } => return format!("{name} @{kcache}"),
        PlanOp::Send { x, to, .. } => return format!("{name} @{x} to chip {to}"),
        PlanOp::Recv { y, from, .. } => return format!("{name} @{y} from chip {from}"),
        PlanOp::RmsNorm { y, .. }
        | PlanOp::Rope { y, .. }
        | PlanOp::Attention { y, .. }
        | PlanOp::SwiGlu { y, .. }
        | PlanOp::Add { y, .. }
        | PlanOp::Mix { y, .. } => y.clone(),
        PlanOp::Quantize { xs, .. } => xs.clone(),
    };
    y.strip_suffix(".y").unwrap_or(&y).to_string()
}

fn decode(o: &OperationRef<'_, '_>, name: &str) -> Result<PlanOp, String> {
    let kind = OpKind::from_name(name).ok_or_else(|| format!("`{name}` is not an lpu op"))?;
    Ok(match kind {
        OpKind::RmsNorm => PlanOp::RmsNorm {
            x: sym(o, "x")?,
            weight: sym(o, "weight")?,
            y: sym(o, "y")?,
            n: int(o, "n")?,
            eps: f32v(o, "eps")?,
        },
        OpKind::Quantize => PlanOp::Quantize {
            x: sym(o, "x")?,
            xs: sym(o, "xs")?,
            scale: sym(o, "scale")?,
            n: int(o, "n")?,
        },
        OpKind::MatMul => PlanOp::MatMul {
            xs: sym(o, "xs")?,
            scale: sym(o, "scale")?,
            weight: sym(o, "weight")?,
            y: sym(o, "y")?,
            row0: 0,
        },
        OpKind::Rope => PlanOp::Rope {
            x: sym(o, "x")?,
            y: sym(o, "y")?,
            heads: int(o, "heads")?,
            head_dim: int(o, "head_dim")?,
        },
        OpKind::KvWrite => PlanOp::KvWrite {
            k: sym(o, "k")?,
            v: sym(o, "v")?,
            kcache: sym(o, "kcache")?,
            vcache: sym(o, "vcache")?,
            users: None,
        },
        OpKind::Attention => PlanOp::Attention {
            q: sym(o, "q")?,
            kcache: sym(o, "kcache")?,
            vcache: sym(o, "vcache")?,
            y: sym(o, "y")?,
            heads: int(o, "heads")?,
            kv_heads: int(o, "kv_heads")?,
            head_dim: int(o, "head_dim")?,
            scale: f32v(o, "scale")?,
            users: None,
        },
        OpKind::SwiGlu => PlanOp::SwiGlu {
            gate: sym(o, "gate")?,
            up: sym(o, "up")?,
            y: sym(o, "y")?,
            n: int(o, "n")?,
        },
        OpKind::Add => PlanOp::Add {
            a: sym(o, "a")?,
            b: sym(o, "b")?,
            y: sym(o, "y")?,
            n: int(o, "n")?,
        },
        OpKind::Mix => PlanOp::Mix {
            x: sym(o, "x")?,
            matrix: sym(o, "matrix")?,
            y: sym(o, "y")?,
            n: int(o, "n")?,
            block: int(o, "block")?,
        },
        OpKind::Buffer | OpKind::Weight => {
            return Err(format!("`{name}` belongs at module level"));
        }
    })
}
