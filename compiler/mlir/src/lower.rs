//! Lowers a [`Graph`] into the q35 dialect: module attributes describing the
//! model, one `q35.weight` per weight, and `func.func @decode`.
//!
//! ```mlir
//! module attributes {q35.model = "tiny", q35.arch = {...}, q35.target = {...}, ...} {
//!   "q35.weight"() {source = "token_embd.weight", sym_name = "token_embd",
//!                   type = tensor<256x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
//!   ...
//!   func.func @decode(%tokens: tensor<?xi32>, %pos: index, %kv: tensor<2x2x128x2x16xf32>)
//!       -> (tensor<?x256xf32>, tensor<2x2x128x2x16xf32>) {
//!     %0 = "q35.embed"(%arg0) {table = @token_embd} : (tensor<?xi32>) -> tensor<?x64xf32>
//!     ...
//!     return %logits, %cache : ...
//!   }
//! }
//! ```
//!
//! `q35.target` is the whole [`q35_target::Target`], converted generically
//! (serde to JSON, JSON to attributes: [`attribute_from_json`]) so it never
//! falls behind the target description; [`crate::ir::target_from_module`]
//! reads it back.
//!
//! Ops are built with melior's `OperationBuilder`; only the `!q35.qweight`
//! element type (a dynamic IRDL type with no C API constructor) is obtained by
//! parsing its spelling. Each op's location is the graph node's name.

use std::collections::BTreeMap;

use melior::Context;
use melior::dialect::func;
use melior::ir::attribute::{
    ArrayAttribute, BoolAttribute, DictionaryAttribute, FlatSymbolRefAttribute, FloatAttribute,
    IntegerAttribute, StringAttribute, TypeAttribute,
};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationBuilder, OperationLike, OperationMutLike};
use melior::ir::r#type::{FunctionType, IntegerType, RankedTensorType};
use melior::ir::{Attribute, Block, Identifier, Location, Module, Region, RegionLike, Type, Value};
use q35_frontend::ops::{AttrKind, AttrValue, Elem, OpKind, ValueType, module_attr};
use q35_frontend::{DType, Dim, Graph, NodeIndex, Op, Shape, Weight};
use q35_model::{ModelSpec, WeightSource};

use crate::dialect::{capture_diagnostics, create_context};
use crate::error::MlirError;
use crate::passes;

/// MLIR's marker for a dynamic dimension (`ShapedType::kDynamic`).
const DYNAMIC: u64 = i64::MIN as u64;

/// Builds the graph of `spec`, lowers it, verifies it, runs the compile
/// pipeline ([`passes::COMPILE_PIPELINE`]) and prints the module.
pub fn emit_q35(spec: &ModelSpec) -> Result<String, MlirError> {
    emit_q35_with(spec, passes::RunOptions::default())
}

/// [`emit_q35`] with pass-pipeline options.
pub fn emit_q35_with(spec: &ModelSpec, options: passes::RunOptions) -> Result<String, MlirError> {
    let context = create_context()?;
    let module = compile_with(&context, spec, options)?;
    Ok(module.as_operation().to_string())
}

/// Builds the graph of `spec`, lowers it into `context` and runs the
/// compile pipeline: the module [`emit_q35`] prints, as a module (for the
/// interpreter, [`crate::interp`]). `context` must come from
/// [`create_context`].
pub fn compile<'c>(context: &'c Context, spec: &ModelSpec) -> Result<Module<'c>, MlirError> {
    compile_with(context, spec, passes::RunOptions::default())
}

/// [`compile`] with pass-pipeline options.
pub fn compile_with<'c>(
    context: &'c Context,
    spec: &ModelSpec,
    options: passes::RunOptions,
) -> Result<Module<'c>, MlirError> {
    let graph = q35_frontend::build(spec)?;
    let mut module = lower(context, spec, &graph)?;
    let pipeline = passes::pipeline(&passes::COMPILE_PIPELINE)?;
    passes::run_with(context, &mut module, &pipeline, options)?;
    Ok(module)
}

/// The passes `q35c compile --emit=lpu` runs: the compile pipeline, then
/// `q35-quantize-activations` and `lpu-lower` (with `context=N` when
/// `positions` is given; else the module's `max_seq_len`).
pub fn lpu_pipeline(positions: Option<u64>) -> Result<Vec<passes::PassSpec>, MlirError> {
    let mut pipeline = passes::pipeline(&passes::COMPILE_PIPELINE)?;
    pipeline.push(passes::PassSpec::new("q35-quantize-activations", "")?);
    let options = positions.map_or_else(String::new, |n| format!("context={n}"));
    pipeline.push(passes::PassSpec::new("lpu-lower", &options)?);
    Ok(pipeline)
}

/// Builds the graph of `spec`, lowers it into `context` and runs
/// [`lpu_pipeline`]: the module in the lpu dialect (for the lpu
/// interpreter, [`crate::lpu::interp`]).
pub fn compile_lpu<'c>(
    context: &'c Context,
    spec: &ModelSpec,
    positions: Option<u64>,
    options: passes::RunOptions,
) -> Result<Module<'c>, MlirError> {
    let graph = q35_frontend::build(spec)?;
    let mut module = lower(context, spec, &graph)?;
    passes::run_with(context, &mut module, &lpu_pipeline(positions)?, options)?;
    Ok(module)
}

/// [`lpu_pipeline`] followed by `lpu-place` and `lpu-schedule`: the
/// backend's whole pass pipeline (docs/backend.md).
pub fn backend_pipeline(positions: Option<u64>) -> Result<Vec<passes::PassSpec>, MlirError> {
    let mut pipeline = lpu_pipeline(positions)?;
    pipeline.push(passes::PassSpec::new("lpu-place", "")?);
    pipeline.push(passes::PassSpec::new("lpu-schedule", "")?);
    Ok(pipeline)
}

/// [`compile_lpu`] followed by `lpu-place`: the lpu module placed, ready
/// for `lpu-schedule` (which the emission runs itself with the real weights,
/// [`passes::lpu_codegen::schedule`]).
pub fn compile_placed<'c>(
    context: &'c Context,
    spec: &ModelSpec,
    positions: Option<u64>,
    options: passes::RunOptions,
) -> Result<Module<'c>, MlirError> {
    let graph = q35_frontend::build(spec)?;
    let mut module = lower(context, spec, &graph)?;
    let mut pipeline = lpu_pipeline(positions)?;
    pipeline.push(passes::PassSpec::new("lpu-place", "")?);
    passes::run_with(context, &mut module, &pipeline, options)?;
    Ok(module)
}

/// [`compile_lpu`], printed.
pub fn emit_lpu_with(
    spec: &ModelSpec,
    positions: Option<u64>,
    options: passes::RunOptions,
) -> Result<String, MlirError> {
    let context = create_context()?;
    let module = compile_lpu(&context, spec, positions, options)?;
    Ok(module.as_operation().to_string())
}

/// An attribute holding a JSON value: object -> dictionary, string ->
/// string, integer -> `i64`, float -> `f64`, bool -> `true`/`false`, array ->
/// array. `null` and integers beyond `i64` have no attribute and are errors.
pub fn attribute_from_json<'c>(
    context: &'c Context,
    value: &serde_json::Value,
) -> Result<Attribute<'c>, String> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => return Err("null has no attribute".into()),
        Value::Bool(b) => BoolAttribute::new(context, *b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => IntegerAttribute::new(IntegerType::new(context, 64).into(), i).into(),
            (None, Some(x)) if !n.is_u64() => {
                FloatAttribute::new(context, Type::float64(context), x).into()
            }
            _ => return Err(format!("{n} does not fit a 64-bit signed integer")),
        },
        Value::String(s) => StringAttribute::new(context, s).into(),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|v| attribute_from_json(context, v))
                .collect::<Result<Vec<_>, _>>()?;
            ArrayAttribute::new(context, &items).into()
        }
        Value::Object(map) => {
            let entries = map
                .iter()
                .map(|(k, v)| {
                    attribute_from_json(context, v)
                        .map(|a| (Identifier::new(context, k), a))
                        .map_err(|e| format!("`{k}`: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            DictionaryAttribute::new(context, &entries).into()
        }
    })
}

/// Lowers `graph` (built from `spec`) into a verified module.
pub fn lower<'c>(
    context: &'c Context,
    spec: &ModelSpec,
    graph: &Graph,
) -> Result<Module<'c>, MlirError> {
    let unknown = Location::unknown(context);
    let mut module = Module::new(unknown);
    let mut l = Lowering {
        context,
        qweight: BTreeMap::new(),
    };

    for (name, attr) in l.module_attributes(spec)? {
        module.as_operation_mut().set_attribute(name, attr);
    }
    for w in graph.weights() {
        let op = l.weight_decl(w)?;
        module.body().append_operation(op);
    }
    let func = l.decode_func(graph)?;
    module.body().append_operation(func);

    let messages = capture_diagnostics(context);
    if !module.as_operation().verify() {
        return Err(MlirError::Verify {
            diagnostics: messages.borrow().clone(),
        });
    }
    drop(messages);
    Ok(module)
}

struct Lowering<'c> {
    context: &'c Context,
    /// `!q35.qweight` types by (scheme, group size).
    qweight: BTreeMap<(String, u32), Type<'c>>,
}

impl<'c> Lowering<'c> {
    fn id(&self, name: &str) -> Identifier<'c> {
        Identifier::new(self.context, name)
    }

    fn int(&self, v: u64) -> Attribute<'c> {
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        IntegerAttribute::new(IntegerType::new(self.context, 64).into(), v).into()
    }

    fn f32(&self, v: f32) -> Attribute<'c> {
        FloatAttribute::new(self.context, Type::float32(self.context), f64::from(v)).into()
    }

    fn str(&self, v: &str) -> Attribute<'c> {
        StringAttribute::new(self.context, v).into()
    }

    fn bool(&self, v: bool) -> Attribute<'c> {
        BoolAttribute::new(self.context, v).into()
    }

    fn int_type(&self, bits: u32) -> Attribute<'c> {
        TypeAttribute::new(IntegerType::new(self.context, bits).into()).into()
    }

    fn dict(&self, entries: &[(&str, Attribute<'c>)]) -> Attribute<'c> {
        let entries: Vec<_> = entries.iter().map(|(k, v)| (self.id(k), *v)).collect();
        DictionaryAttribute::new(self.context, &entries).into()
    }

    /// `q35.quant`: the scheme, the group size and, when some kinds of
    /// matrix have their own, `group_size_of = {kind = G, ...}` (each
    /// weight's `!q35.qweight` type carries the size it is quantized with);
    /// `rotation = "block-hadamard"` for a rotated model.
    fn quant_attr(&self, quant: &q35_model::QuantConfig) -> Attribute<'c> {
        let own: Vec<(&str, Attribute<'c>)> = quant
            .group_size_of_pairs()
            .into_iter()
            .map(|(k, g)| (k, self.int(g.into())))
            .collect();
        let mut entries = vec![
            ("scheme", self.str(quant.scheme.as_str())),
            ("group_size", self.int(quant.group_size.into())),
            ("act_type", self.int_type(8)),
            ("acc_type", self.int_type(32)),
        ];
        if !own.is_empty() {
            entries.push(("group_size_of", self.dict(&own)));
        }
        // Only a rotated model says so (the others keep their bytes); its
        // `q35.mix` carries the arithmetic.
        if quant.rotation != q35_model::Rotation::None {
            entries.push(("rotation", self.str(quant.rotation.as_str())));
        }
        self.dict(&entries)
    }

    fn module_attributes(
        &self,
        spec: &ModelSpec,
    ) -> Result<Vec<(&'static str, Attribute<'c>)>, MlirError> {
        let a = &spec.arch;
        let target = serde_json::to_value(&spec.target)
            .map_err(|e| e.to_string())
            .and_then(|v| attribute_from_json(self.context, &v))
            .map_err(|message| MlirError::Attribute {
                name: module_attr::TARGET.into(),
                message,
            })?;
        let weights = match &spec.weights {
            WeightSource::Gguf { path } => format!(
                "gguf:{}",
                path.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            WeightSource::Synthetic { seed } => format!("synthetic:{seed}"),
            WeightSource::None => "none".to_string(),
        };
        Ok(vec![
            (module_attr::MODEL, self.str(&spec.name)),
            (module_attr::WEIGHTS, self.str(&weights)),
            (
                module_attr::ARCH,
                self.dict(&[
                    ("family", self.str(&a.family)),
                    ("blocks", self.int(a.blocks.into())),
                    ("hidden", self.int(a.hidden.into())),
                    ("heads", self.int(a.heads.into())),
                    ("kv_heads", self.int(a.kv_heads.into())),
                    ("head_dim", self.int(a.head_dim.into())),
                    ("ffn", self.int(a.ffn.into())),
                    ("vocab", self.int(a.vocab.into())),
                    ("rope_base", self.f32(a.rope_base)),
                    ("norm_eps", self.f32(a.norm_eps)),
                    ("tied_embeddings", self.bool(a.tied_embeddings)),
                    ("context", self.int(a.context.into())),
                ]),
            ),
            (module_attr::QUANT, self.quant_attr(&spec.quant)),
            (
                module_attr::LIMITS,
                self.dict(&[
                    ("max_seq_len", self.int(spec.limits.max_seq_len.into())),
                    ("batch", self.int(spec.limits.batch.into())),
                ]),
            ),
            (module_attr::TARGET, target),
        ])
    }

    fn qweight_type(&mut self, scheme: &str, group_size: u32) -> Result<Type<'c>, MlirError> {
        if let Some(t) = self.qweight.get(&(scheme.to_string(), group_size)) {
            return Ok(*t);
        }
        let spelling = format!("!q35.qweight<{scheme:?}, {group_size} : i32>");
        let t = Type::parse(self.context, &spelling).ok_or_else(|| MlirError::Build {
            op: OpKind::Weight.name().into(),
            message: format!("cannot make type {spelling}"),
        })?;
        self.qweight.insert((scheme.to_string(), group_size), t);
        Ok(t)
    }

    fn tensor(&self, dims: &[u64], element: Type<'c>) -> Type<'c> {
        RankedTensorType::new(dims, element, None).into()
    }

    fn value_type(&self, shape: &Shape, dtype: DType) -> Type<'c> {
        let element = match dtype {
            DType::F32 => Type::float32(self.context),
            DType::F16 => Type::float16(self.context),
            DType::I32 => IntegerType::new(self.context, 32).into(),
            DType::Index => Type::index(self.context),
        };
        if shape.rank() == 0 {
            return element;
        }
        let dims: Vec<u64> = shape
            .dims()
            .iter()
            .map(|d| match d {
                Dim::Dynamic => DYNAMIC,
                Dim::Static(n) => *n,
            })
            .collect();
        self.tensor(&dims, element)
    }

    fn weight_decl(&mut self, w: &Weight) -> Result<melior::ir::Operation<'c>, MlirError> {
        let loc = Location::name(self.context, &w.symbol, Location::unknown(self.context));
        self.build(OpKind::Weight, loc, &w.symbol, &[], &[], &w.attributes())
    }

    /// An MLIR type for a table type (weights' `!q35.qweight` by spelling).
    fn table_type(&mut self, t: &ValueType) -> Result<Type<'c>, MlirError> {
        let (dims, elem) = match t {
            ValueType::Index => return Ok(Type::index(self.context)),
            ValueType::Tensor { dims, elem } => (dims, elem),
            ValueType::Other(s) => {
                return Err(MlirError::Build {
                    op: String::new(),
                    message: format!("no MLIR type for {s}"),
                });
            }
        };
        let element = match elem {
            Elem::F32 => Type::float32(self.context),
            Elem::F16 => Type::float16(self.context),
            Elem::I32 => IntegerType::new(self.context, 32).into(),
            Elem::I8 => IntegerType::new(self.context, 8).into(),
            Elem::QWeight { scheme, group_size } => {
                let group = u32::try_from(*group_size).map_err(|_| MlirError::Build {
                    op: OpKind::Weight.name().into(),
                    message: format!("group size {group_size} does not fit i32"),
                })?;
                self.qweight_type(scheme, group)?
            }
            Elem::Other(s) => {
                return Err(MlirError::Build {
                    op: String::new(),
                    message: format!("no MLIR element type for {s}"),
                });
            }
        };
        let dims: Vec<u64> = dims
            .iter()
            .map(|d| match d {
                Dim::Dynamic => DYNAMIC,
                Dim::Static(n) => *n,
            })
            .collect();
        Ok(self.tensor(&dims, element))
    }

    /// An attribute from a table value.
    fn attribute(&mut self, v: &AttrValue) -> Result<Attribute<'c>, MlirError> {
        Ok(match v {
            AttrValue::Symbol(s) => FlatSymbolRefAttribute::new(self.context, s).into(),
            AttrValue::Float(x) => {
                FloatAttribute::new(self.context, Type::float32(self.context), *x).into()
            }
            AttrValue::Int(i) => {
                IntegerAttribute::new(IntegerType::new(self.context, 64).into(), *i).into()
            }
            AttrValue::Bool(b) => self.bool(*b),
            AttrValue::Str(s) => self.str(s),
            AttrValue::Type(t) => TypeAttribute::new(self.table_type(t)?).into(),
        })
    }

    /// Builds op `kind` from the table: its name, then each attribute in
    /// table order, constants from the table and parameters from `values`.
    fn build(
        &mut self,
        kind: OpKind,
        loc: Location<'c>,
        node: &str,
        operands: &[Value<'c, '_>],
        results: &[Type<'c>],
        values: &[AttrValue],
    ) -> Result<melior::ir::Operation<'c>, MlirError> {
        let def = kind.def();
        let error = |message: String| MlirError::Build {
            op: def.name.into(),
            message: format!("{node} ({message})"),
        };
        let mut values = values.iter();
        let mut attrs = Vec::with_capacity(def.attributes.len());
        for a in def.attributes {
            let attr = match a.kind {
                AttrKind::IsType(spelling) => Type::parse(self.context, spelling)
                    .map(|t| TypeAttribute::new(t).into())
                    .ok_or_else(|| error(format!("cannot make type {spelling}")))?,
                AttrKind::IsStr(s) => self.str(s),
                kind => match values.next() {
                    Some(v) if v.fits(kind) => self.attribute(v)?,
                    Some(v) => return Err(error(format!("`{}` cannot be {v:?}", a.name))),
                    None => return Err(error(format!("no value for `{}`", a.name))),
                },
            };
            attrs.push((self.id(a.name), attr));
        }
        if let Some(extra) = values.next() {
            return Err(error(format!("an extra attribute value {extra:?}")));
        }
        OperationBuilder::new(def.name, loc)
            .add_operands(operands)
            .add_results(results)
            .add_attributes(&attrs)
            .build()
            .map_err(|e| error(e.to_string()))
    }

    fn decode_func(&mut self, graph: &Graph) -> Result<melior::ir::Operation<'c>, MlirError> {
        let order = graph.topological_order().map_err(|e| MlirError::Lower {
            node: String::new(),
            problem: e.to_string(),
        })?;
        let ctx = self.context;
        let arg_types: Vec<Type<'c>> = graph
            .inputs()
            .iter()
            .map(|&n| self.value_type(&graph.node(n).shape, graph.node(n).dtype))
            .collect();
        let result_types: Vec<Type<'c>> = graph
            .outputs()
            .iter()
            .map(|&n| self.value_type(&graph.node(n).shape, graph.node(n).dtype))
            .collect();
        let block_args: Vec<(Type<'c>, Location<'c>)> = graph
            .inputs()
            .iter()
            .zip(&arg_types)
            .map(|(&n, &t)| {
                (
                    t,
                    Location::name(ctx, &graph.node(n).name, Location::unknown(ctx)),
                )
            })
            .collect();
        let block = Block::new(&block_args);
        {
            let mut values: Vec<Option<Value<'c, '_>>> = vec![None; graph.node_count()];
            for (i, &n) in graph.inputs().iter().enumerate() {
                let arg = block.argument(i).map_err(|e| MlirError::Lower {
                    node: graph.node(n).name.clone(),
                    problem: e.to_string(),
                })?;
                values[n.index()] = Some(arg.into());
            }
            for &n in &order {
                let node = graph.node(n);
                if matches!(node.op, Op::Input(_)) {
                    continue;
                }
                let operands = graph
                    .operands(n)
                    .iter()
                    .map(|o| {
                        values[o.index()].ok_or_else(|| MlirError::Lower {
                            node: node.name.clone(),
                            problem: format!("operand `{}` has no value", graph.node(*o).name),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let op = self.node_op(graph, n, &operands)?;
                let op = block.append_operation(op);
                let result = op.result(0).map_err(|e| MlirError::Lower {
                    node: node.name.clone(),
                    problem: e.to_string(),
                })?;
                values[n.index()] = Some(result.into());
            }
            let results = graph
                .outputs()
                .iter()
                .map(|o| {
                    values[o.index()].ok_or_else(|| MlirError::Lower {
                        node: graph.node(*o).name.clone(),
                        problem: "output has no value".into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            block.append_operation(func::r#return(&results, Location::unknown(ctx)));
        }
        let region = Region::new();
        region.append_block(block);
        Ok(func::func(
            ctx,
            StringAttribute::new(ctx, "decode"),
            TypeAttribute::new(FunctionType::new(ctx, &arg_types, &result_types).into()),
            region,
            &[],
            Location::unknown(ctx),
        ))
    }

    fn node_op(
        &mut self,
        graph: &Graph,
        n: NodeIndex,
        operands: &[Value<'c, '_>],
    ) -> Result<melior::ir::Operation<'c>, MlirError> {
        let node = graph.node(n);
        let ctx = self.context;
        let loc = Location::name(ctx, &node.name, Location::unknown(ctx));
        let result = self.value_type(&node.shape, node.dtype);
        let Some(kind) = node.op.op_kind() else {
            return Err(MlirError::Lower {
                node: node.name.clone(),
                problem: format!("{:?} is not an op", node.op),
            });
        };
        if let Some(id) = node.op.weight()
            && graph.weight(id).is_none()
        {
            return Err(MlirError::Lower {
                node: node.name.clone(),
                problem: format!("weight #{} is not declared", id.0),
            });
        }
        let values = node.op.attributes(graph.weights());
        self.build(kind, loc, &node.name, operands, &[result], &values)
    }
}
