//! The lpu dialect in MLIR: building its ops from the op table
//! (`q35_frontend::lpu_ops`), annotating existing ops (placement and
//! schedule attributes, for the passes that follow `--lpu-lower`), and the
//! lpu interpreter ([`interp`]).
//!
//! Ops are built with melior's `OperationBuilder` ([`build`]): every
//! required attribute of the table must be given, with a value of its kind,
//! and is written in table order; optional ones (placement, schedule) are
//! accepted by name. [`set_placement`], [`set_cycles`] and
//! [`set_total_cycles`] add the attributes `--lpu-place` and
//! `--lpu-schedule` produce to ops that already exist.

pub mod interp;
pub mod plan;

use melior::Context;
use melior::ir::attribute::{
    ArrayAttribute, FlatSymbolRefAttribute, FloatAttribute, IntegerAttribute, StringAttribute,
    TypeAttribute,
};
use melior::ir::operation::{OperationBuilder, OperationMutLike};
use melior::ir::r#type::IntegerType;
use melior::ir::{Attribute, Identifier, Location, Operation, Type};
use q35_frontend::lpu_ops::{
    ADDR_ATTR, AttrKind, CYCLES_ATTR, OpKind, SLICES_ATTR, TOTAL_CYCLES_ATTR,
};

/// A value for one attribute of an lpu op.
#[derive(Debug, Clone)]
pub enum AttrValue<'c> {
    /// A flat symbol reference (a buffer or weight).
    Symbol(String),
    /// A 64-bit integer.
    Int(i64),
    /// An f32 float.
    F32(f32),
    /// A string (also for [`AttrKind::OneOf`]).
    Str(String),
    /// A type.
    Type(Type<'c>),
    /// An array of strings.
    Strings(Vec<String>),
    /// An array of 64-bit integers.
    Ints(Vec<i64>),
}

impl AttrValue<'_> {
    /// Whether the value fits an attribute of `kind`.
    pub fn fits(&self, kind: AttrKind) -> bool {
        match (self, kind) {
            (AttrValue::Symbol(_), AttrKind::Buffer(_) | AttrKind::Weight)
            | (AttrValue::Int(_), AttrKind::Int)
            | (AttrValue::F32(_), AttrKind::F32)
            | (AttrValue::Str(_), AttrKind::Str)
            | (AttrValue::Type(_), AttrKind::Type)
            | (AttrValue::Strings(_), AttrKind::Strings)
            | (AttrValue::Ints(_), AttrKind::Ints) => true,
            (AttrValue::Str(s), AttrKind::OneOf(values)) => values.contains(&s.as_str()),
            (
                AttrValue::Symbol(_)
                | AttrValue::Int(_)
                | AttrValue::F32(_)
                | AttrValue::Str(_)
                | AttrValue::Type(_)
                | AttrValue::Strings(_)
                | AttrValue::Ints(_),
                _,
            ) => false,
        }
    }
}

impl<'c> AttrValue<'c> {
    /// The MLIR attribute.
    pub fn to_attribute(&self, context: &'c Context) -> Attribute<'c> {
        let i64_type = IntegerType::new(context, 64).into();
        match self {
            AttrValue::Symbol(s) => FlatSymbolRefAttribute::new(context, s).into(),
            AttrValue::Int(i) => IntegerAttribute::new(i64_type, *i).into(),
            AttrValue::F32(x) => {
                FloatAttribute::new(context, Type::float32(context), f64::from(*x)).into()
            }
            AttrValue::Str(s) => StringAttribute::new(context, s).into(),
            AttrValue::Type(t) => TypeAttribute::new(*t).into(),
            AttrValue::Strings(v) => {
                let items: Vec<Attribute<'c>> = v
                    .iter()
                    .map(|s| StringAttribute::new(context, s).into())
                    .collect();
                ArrayAttribute::new(context, &items).into()
            }
            AttrValue::Ints(v) => {
                let items: Vec<Attribute<'c>> = v
                    .iter()
                    .map(|&i| IntegerAttribute::new(i64_type, i).into())
                    .collect();
                ArrayAttribute::new(context, &items).into()
            }
        }
    }
}

/// Builds lpu op `kind` at `location` from `values` (by attribute name):
/// every required attribute of the table, of its kind, written in table
/// order, then any optional ones the table lists. Returns a message naming
/// the op and the attribute on a missing, unknown or ill-kinded value.
pub fn build<'c>(
    context: &'c Context,
    kind: OpKind,
    location: Location<'c>,
    values: &[(&str, AttrValue<'c>)],
) -> Result<Operation<'c>, String> {
    let def = kind.def();
    let find = |name: &str| values.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let mut attrs = Vec::with_capacity(values.len());
    for a in def.attributes {
        let v = find(a.name).ok_or_else(|| format!("{}: no value for `{}`", def.name, a.name))?;
        if !v.fits(a.kind) {
            return Err(format!("{}: `{}` cannot be {v:?}", def.name, a.name));
        }
        attrs.push((Identifier::new(context, a.name), v.to_attribute(context)));
    }
    for (name, v) in values {
        if def.attribute(name).is_some() {
            continue;
        }
        let a = def
            .optional
            .iter()
            .find(|a| a.name == *name)
            .ok_or_else(|| format!("{}: no attribute `{name}` in the op table", def.name))?;
        if !v.fits(a.kind) {
            return Err(format!("{}: `{name}` cannot be {v:?}", def.name));
        }
        attrs.push((Identifier::new(context, name), v.to_attribute(context)));
    }
    OperationBuilder::new(def.name, location)
        .add_attributes(&attrs)
        .build()
        .map_err(|e| format!("{}: {e}", def.name))
}

/// Records a buffer's or weight's placement (`--lpu-place`): its MEM slices
/// and first word address.
pub fn set_placement<'c: 'a, 'a>(
    context: &'c Context,
    op: &mut impl OperationMutLike<'c, 'a>,
    slices: &[&str],
    addr: u64,
) {
    let slices = AttrValue::Strings(slices.iter().map(|s| (*s).to_owned()).collect());
    op.set_attribute(SLICES_ATTR, slices.to_attribute(context));
    let addr = AttrValue::Int(i64::try_from(addr).unwrap_or(i64::MAX));
    op.set_attribute(ADDR_ATTR, addr.to_attribute(context));
}

/// Records the cycles an op's instructions occupy (`--lpu-schedule`):
/// `lpu.cycles = [first, last]`.
pub fn set_cycles<'c: 'a, 'a>(
    context: &'c Context,
    op: &mut impl OperationMutLike<'c, 'a>,
    first: u64,
    last: u64,
) {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let cycles = AttrValue::Ints(vec![to_i64(first), to_i64(last)]);
    op.set_attribute(CYCLES_ATTR, cycles.to_attribute(context));
}

/// Records the program's cycle count on `@decode` (`lpu.total_cycles`).
pub fn set_total_cycles<'c: 'a, 'a>(
    context: &'c Context,
    func: &mut impl OperationMutLike<'c, 'a>,
    cycles: u64,
) {
    let v = AttrValue::Int(i64::try_from(cycles).unwrap_or(i64::MAX));
    func.set_attribute(TOTAL_CYCLES_ATTR, v.to_attribute(context));
}
