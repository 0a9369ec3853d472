//! The semantics of each q35 op on the hardware contract
//! (docs/q35-format.md section 8): every operator is a call into
//! [`q35_contract::semantics`] (or the contract's [`IntMatrix`] matmul and
//! row dequantisation), applied token by token in the order the golden
//! model applies it; parallelism splits only independent outputs (matmul
//! rows, attention heads), never a sum. Operands are checked against the
//! op's attributes and bound weights before anything runs; a mismatch is an
//! [`InterpError::Op`] naming the op's location.

use q35_contract::semantics::{self, ActivationI8};
use q35_contract::{IntMatrix, RopeTable};
use rayon::prelude::*;

use super::program::{Attrs, Interpreter, Step};
use super::weights::Binding;
use super::{InterpError, Tensor, Value};

/// Matmul output rows per parallel task (as the golden model splits them).
const ROWS: usize = 64;

type OpResult<T> = Result<T, String>;

/// An operand as an f32 matrix `tokens x width`.
fn matrix<'v>(v: &'v Value, what: &str) -> OpResult<(usize, usize, &'v [f32])> {
    match v {
        Value::F32(t) if t.dims().len() == 2 => Ok((t.dims()[0], t.dims()[1], t.data())),
        other => Err(format!(
            "{what} must be a tokens x features f32 tensor, not {}",
            other.type_string()
        )),
    }
}

fn index(v: &Value, what: &str) -> OpResult<usize> {
    match v {
        Value::Index(i) => Ok(*i),
        other => Err(format!(
            "{what} must be an index, not {}",
            other.type_string()
        )),
    }
}

/// The KV cache `[layers, 2, positions, kv_heads, head_dim]`.
fn cache_dims(v: &Value) -> OpResult<[usize; 5]> {
    match v {
        Value::F32(t) => <[usize; 5]>::try_from(t.dims()).map_err(|_| {
            format!("the KV cache must be layers x 2 x positions x kv_heads x head_dim, not {t}")
        }),
        other => Err(format!(
            "the KV cache must be an f32 tensor, not {}",
            other.type_string()
        )),
    }
}

fn out(dims: Vec<usize>, data: Vec<f32>) -> Value {
    Value::F32(Tensor { dims, data })
}

/// `y = W x` for each of `n` tokens of `k` features: `act(t)` is token
/// t's int8 activation (8.1), multiplied by the integer matmul (8.2), rows
/// split across the pool.
fn int_matmul(
    m: &IntMatrix,
    n: usize,
    k: usize,
    act: impl Fn(usize) -> OpResult<ActivationI8>,
) -> OpResult<Value> {
    if k != m.cols() {
        return Err(format!(
            "the input has {k} features but the weight is {}x{}",
            m.rows(),
            m.cols()
        ));
    }
    let rows = m.rows();
    let mut y = vec![0f32; n * rows];
    for t in 0..n {
        let act = act(t)?;
        y[t * rows..(t + 1) * rows]
            .par_chunks_mut(ROWS)
            .enumerate()
            .try_for_each(|(ci, o)| m.matvec_rows(&act, ci * ROWS, o))
            .map_err(|e| format!("token {t}: {e}"))?;
    }
    Ok(out(vec![n, rows], y))
}

/// `q35.matmul`, `q35.lm_head`: each token of the f32 input quantized to
/// int8 (8.1), then the integer matmul (8.2).
fn matmul(m: &IntMatrix, x: &Value) -> OpResult<Value> {
    let (n, k, data) = matrix(x, "the input")?;
    int_matmul(m, n, k, |t| {
        ActivationI8::quantize(&data[t * k..(t + 1) * k])
            .map_err(|e| format!("token {t}: int8 activation: {e}"))
    })
}

/// `q35.quantize`: each token of the f32 input quantized to int8 (8.1),
/// returned as the codes (`tokens x k`, i8) and the scales (`tokens`, f32).
fn quantize(x: &Value) -> OpResult<Vec<Value>> {
    let (n, k, data) = matrix(x, "the input")?;
    let mut codes = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(n);
    for t in 0..n {
        let act = ActivationI8::quantize(&data[t * k..(t + 1) * k])
            .map_err(|e| format!("token {t}: int8 activation: {e}"))?;
        codes.extend_from_slice(act.codes());
        scales.push(act.scale());
    }
    Ok(vec![
        Value::I8 {
            dims: vec![n, k],
            data: codes,
        },
        out(vec![n], scales),
    ])
}

/// `q35.qmatmul`: the integer matmul (8.2) of each token's int8 codes and
/// scale, as `q35.quantize` produced them (checked to be what the contract
/// admits: codes in -127..=127, a finite non-negative scale).
fn qmatmul(m: &IntMatrix, codes: &Value, scale: &Value) -> OpResult<Value> {
    let (n, k, codes) = match codes {
        Value::I8 { dims, data } if dims.len() == 2 => (dims[0], dims[1], data),
        other => {
            return Err(format!(
                "the codes must be a tokens x features i8 tensor, not {}",
                other.type_string()
            ));
        }
    };
    let scales = match scale {
        Value::F32(t) if t.dims() == [n] => t.data(),
        other => {
            return Err(format!(
                "the scale must be a tensor<{n}xf32> (one per token of the codes), not {}",
                other.type_string()
            ));
        }
    };
    int_matmul(m, n, k, |t| {
        ActivationI8::from_parts(scales[t], codes[t * k..(t + 1) * k].to_vec())
            .map_err(|e| format!("token {t}: int8 activation: {e}"))
    })
}

impl Interpreter<'_> {
    /// Runs `@decode` on `args` (in the function's argument order); returns
    /// the values it returns.
    pub fn call(&self, args: Vec<Value>) -> Result<Vec<Value>, InterpError> {
        if args.len() != self.args.len() {
            return Err(InterpError::Call(format!(
                "{} arguments given, the function takes {}",
                args.len(),
                self.args.len()
            )));
        }
        let mut tokens = None;
        let mut slots: Vec<Option<Value>> = vec![None; self.slots];
        for (i, (v, ty)) in args.into_iter().zip(&self.args).enumerate() {
            ty.conform(&v, &mut tokens)
                .map_err(|e| InterpError::Call(format!("argument #{i} {e}")))?;
            slots[i] = Some(v);
        }
        for step in &self.steps {
            let err = |message: String| InterpError::Op {
                location: step.location.clone(),
                op: step.kind.name().to_owned(),
                message,
            };
            let values = self.execute(step, &mut slots).map_err(err)?;
            if values.len() != step.results.len() {
                return Err(err(format!(
                    "gave {} results for {} declared",
                    values.len(),
                    step.results.len()
                )));
            }
            let single = values.len() == 1;
            for (i, (v, ty)) in values.iter().zip(&step.result_types).enumerate() {
                ty.conform(v, &mut tokens).map_err(|e| {
                    err(if single {
                        format!("result {e}")
                    } else {
                        format!("result #{i} {e}")
                    })
                })?;
            }
            for (&s, &dead) in step.operands.iter().zip(&step.last_use) {
                if dead {
                    slots[s] = None;
                }
            }
            for (&s, v) in step.results.iter().zip(values) {
                slots[s] = Some(v);
            }
        }
        let mut results = Vec::with_capacity(self.results.len());
        for (i, (s, ty)) in self.results.iter().enumerate() {
            let again = self.results[i + 1..].iter().any(|(t, _)| t == s);
            let v = if again {
                slots[*s].clone()
            } else {
                slots[*s].take()
            }
            .ok_or_else(|| InterpError::Call(format!("result #{i} has no value")))?;
            ty.conform(&v, &mut tokens)
                .map_err(|e| InterpError::Call(format!("result #{i} {e}")))?;
            results.push(v);
        }
        Ok(results)
    }

    fn operand<'s>(slots: &'s [Option<Value>], step: &Step, i: usize) -> OpResult<&'s Value> {
        slots[step.operands[i]]
            .as_ref()
            .ok_or_else(|| format!("operand #{i} has no value"))
    }

    /// Runs one op; its results, in result order.
    fn execute(&self, step: &Step, slots: &mut [Option<Value>]) -> OpResult<Vec<Value>> {
        let arg = |i| Self::operand(slots, step, i);
        let one = match step.attrs {
            Attrs::Embed { table } => self.embed(table, arg(0)?),
            Attrs::RmsNorm { weight, eps } => {
                let Binding::Vector(w) = self.weights[weight].binding else {
                    return Err("the weight is not a vector".into());
                };
                let (n, d, x) = matrix(arg(0)?, "the input")?;
                if w.len() != d {
                    return Err(format!(
                        "the input has {d} features but the weight @{} has {}",
                        self.weights[weight].symbol,
                        w.len()
                    ));
                }
                let mut y = vec![0f32; n * d];
                for (xt, yt) in x.chunks_exact(d.max(1)).zip(y.chunks_exact_mut(d.max(1))) {
                    semantics::rmsnorm(xt, w, eps, yt);
                }
                Ok(out(vec![n, d], y))
            }
            Attrs::Mix { matrix: mw } => {
                let Binding::Table { rows, cols, data } = self.weights[mw].binding else {
                    return Err("the matrix is not an f32 table".into());
                };
                let (n, d, x) = matrix(arg(0)?, "the input")?;
                if rows != d || cols != d {
                    return Err(format!(
                        "the input has {d} features but the matrix @{} is {rows}x{cols}",
                        self.weights[mw].symbol
                    ));
                }
                let mut y = vec![0f32; n * d];
                for (xt, yt) in x.chunks_exact(d.max(1)).zip(y.chunks_exact_mut(d.max(1))) {
                    semantics::mix_along_lanes(data, xt, yt);
                }
                Ok(out(vec![n, d], y))
            }
            Attrs::MatMul { weight } | Attrs::LmHead { weight } => {
                let Binding::Matrix(m) = self.weights[weight].binding else {
                    return Err("the weight is not a quantized matrix".into());
                };
                matmul(m, arg(0)?)
            }
            Attrs::QMatMul { weight } => {
                let Binding::Matrix(m) = self.weights[weight].binding else {
                    return Err("the weight is not a quantized matrix".into());
                };
                qmatmul(m, arg(0)?, arg(1)?)
            }
            Attrs::Quantize => return quantize(arg(0)?),
            Attrs::Rope {
                heads,
                head_dim,
                base,
            } => {
                let (n, d, x) = matrix(arg(0)?, "the input")?;
                let pos = index(arg(1)?, "the position")?;
                if heads * head_dim != d {
                    return Err(format!(
                        "heads {heads} x head_dim {head_dim} = {} does not match the input's {d} features",
                        heads * head_dim
                    ));
                }
                let mut y = x.to_vec();
                self.with_rope(head_dim, base, pos + n, |table| {
                    for (t, yt) in y.chunks_exact_mut(d).enumerate() {
                        for head in yt.chunks_exact_mut(head_dim) {
                            semantics::rope_in_place(head, pos + t, table);
                        }
                    }
                });
                Ok(out(vec![n, d], y))
            }
            Attrs::KvWrite { layer } => {
                let dims = cache_dims(arg(0)?)?;
                let (n, kd, k) = matrix(arg(1)?, "k")?;
                let (nv, vd, v) = matrix(arg(2)?, "v")?;
                let (k, v) = (k.to_vec(), v.to_vec());
                let pos = index(arg(3)?, "the position")?;
                let [layers, two, positions, kvh, hd] = dims;
                let kvd = kvh * hd;
                if two != 2 || layer >= layers {
                    return Err(format!(
                        "layer {layer} is not in the KV cache of {layers} layers x {two} (K, V)"
                    ));
                }
                if (n, kd) != (nv, vd) || kd != kvd {
                    return Err(format!(
                        "k is {n}x{kd} and v is {nv}x{vd}; the cache holds {kvh} kv heads x {hd} = {kvd}"
                    ));
                }
                if pos + n > positions {
                    return Err(format!(
                        "positions {pos}..{} are past the cache's {positions}",
                        pos + n
                    ));
                }
                // The cache dies here in a threaded function: move it.
                let slot = step.operands[0];
                let mut cache = if step.last_use[0] {
                    match slots[slot].take() {
                        Some(Value::F32(t)) => t,
                        _ => return Err("the KV cache has no value".into()),
                    }
                } else {
                    match &slots[slot] {
                        Some(Value::F32(t)) => t.clone(),
                        _ => return Err("the KV cache has no value".into()),
                    }
                };
                let plane = positions * kvd;
                for (which, src) in [(0, &k), (1, &v)] {
                    let base = (layer * 2 + which) * plane + pos * kvd;
                    cache.data[base..base + n * kvd].copy_from_slice(src);
                }
                Ok(Value::F32(cache))
            }
            Attrs::Attention {
                layer,
                heads,
                kv_heads,
                head_dim,
                causal,
                scale,
            } => {
                let (n, d, q) = matrix(arg(0)?, "q")?;
                let cache_v = arg(1)?;
                let [layers, two, positions, kvh, hd] = cache_dims(cache_v)?;
                let pos = index(arg(2)?, "the position")?;
                if heads * head_dim != d {
                    return Err(format!(
                        "heads {heads} x head_dim {head_dim} = {} does not match q's {d} features",
                        heads * head_dim
                    ));
                }
                if (kvh, hd) != (kv_heads, head_dim) || two != 2 || layer >= layers {
                    return Err(format!(
                        "layer {layer}, kv_heads {kv_heads}, head_dim {head_dim} do not fit the KV cache {layers}x{two}x{positions}x{kvh}x{hd}"
                    ));
                }
                if pos + n > positions {
                    return Err(format!(
                        "positions {pos}..{} are past the cache's {positions}",
                        pos + n
                    ));
                }
                let Value::F32(cache) = cache_v else {
                    return Err("the KV cache is not f32".into());
                };
                let kvd = kv_heads * head_dim;
                let plane = positions * kvd;
                let keys = &cache.data()[layer * 2 * plane..][..plane];
                let values = &cache.data()[(layer * 2 + 1) * plane..][..plane];
                let group = heads / kv_heads;
                let mut y = vec![0f32; n * d];
                for (t, (qt, yt)) in q.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
                    // Token t sees positions 0 ..= pos + t (causal) or every
                    // position written so far.
                    let seen = if causal { pos + t + 1 } else { pos + n };
                    yt.par_chunks_mut(head_dim)
                        .enumerate()
                        .for_each(|(head, o)| {
                            let kv = head / group;
                            let gather = |src: &[f32]| -> Vec<f32> {
                                (0..seen)
                                    .flat_map(|j| {
                                        src[j * kvd + kv * head_dim..][..head_dim].iter().copied()
                                    })
                                    .collect()
                            };
                            let (ks, vs) = (gather(keys), gather(values));
                            let mut scores = Vec::with_capacity(seen);
                            semantics::attention_head(
                                &qt[head * head_dim..(head + 1) * head_dim],
                                &ks,
                                &vs,
                                scale,
                                &mut scores,
                                o,
                            );
                        });
                }
                Ok(out(vec![n, d], y))
            }
            Attrs::Add => {
                let (a, b) = (arg(0)?, arg(1)?);
                let (n, d, x) = matrix(a, "lhs")?;
                let (m, e, z) = matrix(b, "rhs")?;
                if (n, d) != (m, e) {
                    return Err(format!(
                        "lhs is {} but rhs is {}",
                        a.type_string(),
                        b.type_string()
                    ));
                }
                let mut y = x.to_vec();
                semantics::add_in_place(&mut y, z);
                Ok(out(vec![n, d], y))
            }
            Attrs::SwiGlu => {
                let (a, b) = (arg(0)?, arg(1)?);
                let (n, d, g) = matrix(a, "gate")?;
                let (m, e, u) = matrix(b, "up")?;
                if (n, d) != (m, e) {
                    return Err(format!(
                        "gate is {} but up is {}",
                        a.type_string(),
                        b.type_string()
                    ));
                }
                let mut y = vec![0f32; n * d];
                semantics::swiglu(g, u, &mut y);
                Ok(out(vec![n, d], y))
            }
        };
        one.map(|v| vec![v])
    }

    /// Rows of the embedding table for each token: a quantized table's row
    /// dequantized (the contract's lookup of a tied, quantized head), an f32
    /// table's row as is.
    fn embed(&self, table: usize, tokens: &Value) -> OpResult<Value> {
        let Value::I32 { dims, data } = tokens else {
            return Err(format!(
                "tokens must be an i32 tensor, not {}",
                tokens.type_string()
            ));
        };
        if dims.len() != 1 {
            return Err(format!("tokens must be 1-D, not {}", tokens.type_string()));
        }
        let w = &self.weights[table];
        let (rows, cols) = match w.binding {
            Binding::Matrix(m) => (m.rows(), m.cols()),
            Binding::Table { rows, cols, .. } => (rows, cols),
            Binding::Vector(_) => return Err(format!("@{} is not a table", w.symbol)),
        };
        let mut y = Vec::with_capacity(data.len() * cols);
        for &t in data {
            let outside = || format!("token {t} is outside the {rows} rows of @{}", w.symbol);
            let r = usize::try_from(t)
                .ok()
                .filter(|&r| r < rows)
                .ok_or_else(outside)?;
            match w.binding {
                Binding::Matrix(m) => y.extend(m.dequantize_row(r).ok_or_else(outside)?),
                Binding::Table { data: d, .. } => y.extend_from_slice(&d[r * cols..(r + 1) * cols]),
                Binding::Vector(_) => return Err(format!("@{} is not a table", w.symbol)),
            }
        }
        Ok(out(vec![data.len(), cols], y))
    }

    /// Runs `f` with the RoPE table of (`head_dim`, `base`) covering at
    /// least `positions` positions. Entries do not depend on the table's
    /// length, so a table grown later gives the same values.
    fn with_rope(&self, head_dim: usize, base: f32, positions: usize, f: impl FnOnce(&RopeTable)) {
        let mut ropes = self
            .ropes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (head_dim, base.to_bits());
        let stale = ropes.get(&key).is_none_or(|t| t.positions() < positions);
        if stale {
            let grown = positions.max(ropes.get(&key).map_or(0, |t| 2 * t.positions()));
            ropes.insert(key, RopeTable::new(head_dim, base, grown));
        }
        if let Some(table) = ropes.get(&key) {
            f(table);
        }
    }
}
