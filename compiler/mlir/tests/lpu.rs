//! The lpu stage against the golden model, bit for bit.
//!
//! The module `q35c compile --emit=lpu` produces (q35 -> the compile
//! pipeline -> `q35-quantize-activations` -> `lpu-lower`) is run by the lpu
//! interpreter (`q35_mlir::lpu::interp`: MEM buffers, per (col tile, group)
//! int32 partial sums combined in ascending group order, the masked
//! whole-context attention) with the golden model's own weights bound by
//! GGUF name, beside `q35_contract::GoldenModel`: logits and every block's
//! K^T and V caches must be equal in every bit after every token. A mutated
//! attribute must break the equality, and bad modules are errors naming the
//! op. The SmolLM2 test needs the GGUF (see tests/common).

mod common;
mod golden;

use golden::{smollm2_golden, tiny_golden, tiny_spec};

use melior::ir::attribute::FloatAttribute;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationMutLike};
use melior::ir::{Module, RegionLike, Type};
use q35_frontend::lpu_ops::OpKind;
use q35_mlir::interp::{InterpError, WeightBinder};
use q35_mlir::lpu::interp::{Data, LpuInterpreter, LpuLockstep};
use q35_mlir::passes::RunOptions;
use q35_model::ModelSpec;

fn lpu_module<'c>(context: &'c melior::Context, spec: &ModelSpec, ctx: Option<u64>) -> Module<'c> {
    q35_mlir::compile_lpu(context, spec, ctx, RunOptions::default()).unwrap()
}

const TOKENS: [u32; 8] = [1, 17, 200, 3, 42, 255, 0, 97];

#[test]
fn tiny_lpu_equals_golden_bit_for_bit() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = lpu_module(&context, &spec, None);
    let interp = LpuInterpreter::new(&module, &binder).unwrap();
    assert_eq!(interp.context(), 128);
    // One lpu op per model op: per block 2 rmsnorm, 4 quantize, 7 matmul,
    // 2 rope, kv_write, attention, swiglu, 2 add; then norm, quantize, head.
    let count = |k: OpKind| interp.ops().filter(|(o, _)| *o == k).count();
    assert_eq!(count(OpKind::MatMul), 2 * 7 + 1);
    assert_eq!(count(OpKind::Quantize), 2 * 4 + 1);
    assert_eq!(interp.ops().count(), 2 * 20 + 3);
    let mut lock = LpuLockstep::new(&interp, &golden).unwrap();
    for t in TOKENS {
        lock.step(t).unwrap();
    }
    assert_eq!(lock.state().position(), TOKENS.len());
    // The K cache is K^T: row (kv head, dim) over positions; the junk word
    // (word 1 of 128 positions on 320 lanes) took the scatter's other lanes.
    let Some(Data::F32(k)) = interp.buffer_data(lock.state(), "kcache_0") else {
        panic!("no kcache_0");
    };
    assert_eq!(k.len(), 32 * 640);
    assert!(k[320..640].iter().any(|&v| v != 0.0));

    // The printed module, parsed back, runs the same.
    let text = module.as_operation().to_string();
    let reparsed = q35_mlir::parse_module(&context, &text, "tiny.lpu.mlir").unwrap();
    let again = LpuInterpreter::new(&reparsed, &binder).unwrap();
    let mut lock = LpuLockstep::new(&again, &golden).unwrap();
    for t in &TOKENS[..3] {
        lock.step(*t).unwrap();
    }
}

/// Llama-shaped heads at toy size: head_dim 128 (does not divide the 320
/// lanes: two RoPE table words a position, heads straddling words) and
/// kv_dim 384 > 320 (two V cache words a position, a kv head across the
/// word boundary). The lowering accepts it and the interpreter stays
/// bit-exact with the golden model, caches included.
#[test]
fn wide_heads_lpu_equals_golden_bit_for_bit() {
    let mut spec = tiny_spec();
    spec.arch.hidden = 96;
    spec.arch.heads = 6;
    spec.arch.kv_heads = 3;
    spec.arch.head_dim = 128;
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    for ctx in [None, Some(700)] {
        let module = lpu_module(&context, &spec, ctx);
        let interp = LpuInterpreter::new(&module, &binder).unwrap();
        let n = interp.context();
        // RoPE tables: 2 words a position; V rows: 2 words a position.
        let fresh = interp.new_state();
        let Some(Data::F32(cos)) = interp.buffer_data(&fresh, "rope_cos") else {
            panic!("no rope_cos");
        };
        assert_eq!(cos.len(), 2 * n * 320);
        let mut lock = LpuLockstep::new(&interp, &golden).unwrap();
        for t in TOKENS {
            lock.step(t).unwrap();
        }
        let Some(Data::F32(v)) = interp.buffer_data(lock.state(), "vcache_1") else {
            panic!("no vcache_1");
        };
        assert_eq!(v.len(), n * 640);
        // Position 1's channels 320.. (kv head 2's dims 64..) are word 3.
        assert!(v[3 * 320..3 * 320 + 64].iter().any(|&x| x != 0.0));
    }
}

/// A context that is not a multiple of the lanes, and one longer than a
/// word, give the same bits (the mask and exact zeros make the extra
/// positions vanish).
#[test]
fn tiny_lpu_any_context_is_exact() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    for ctx in [5, 700] {
        let module = lpu_module(&context, &spec, Some(ctx));
        let interp = LpuInterpreter::new(&module, &binder).unwrap();
        assert_eq!(interp.context(), ctx as usize);
        let mut lock = LpuLockstep::new(&interp, &golden).unwrap();
        for t in &TOKENS[..5] {
            lock.step(*t).unwrap();
        }
        let err = lock.step(TOKENS[5]);
        if ctx == 5 {
            assert!(
                matches!(&err, Err(InterpError::Call(m)) if m.contains("past the compiled context")),
                "{err:?}"
            );
        } else {
            err.unwrap();
        }
    }
}

/// Sets f32 attribute `name` of the first (or last) op `op` in `@decode`
/// to `v`.
fn mutate(
    context: &melior::Context,
    module: &Module<'_>,
    (op, last): (&str, bool),
    name: &str,
    v: f64,
) {
    let body = module.body();
    let mut o = body.first_operation();
    while let Some(x) = o {
        if x.name().as_string_ref().as_str() == Ok("func.func") {
            let block = x.region(0).unwrap().first_block().unwrap();
            let mut s = block.first_operation_mut();
            let mut found = None;
            while let Some(y) = s {
                s = y.next_in_block_mut();
                if y.name().as_string_ref().as_str() == Ok(op) {
                    found = Some(y);
                    if !last {
                        break;
                    }
                }
            }
            if let Some(mut y) = found {
                y.set_attribute(
                    name,
                    FloatAttribute::new(context, Type::float32(context), v).into(),
                );
                return;
            }
        }
        o = x.next_in_block();
    }
    panic!("no {op}");
}

/// A wrong attribute gives a wrong answer, named at the op that differs.
#[test]
fn mutated_attributes_break_bit_equality() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    // The first norm changes block 0's keys; block 0's attention changes
    // block 1's; the final norm changes only the logits (the head).
    for (op, attr, value, named) in [
        (("lpu.rmsnorm", false), "eps", 1e-3, "lpu.kv_write"),
        (("lpu.attention", false), "scale", 0.3, "lpu.kv_write"),
        (("lpu.rmsnorm", true), "eps", 1e-3, "lpu.matmul"),
    ] {
        let module = lpu_module(&context, &spec, None);
        mutate(&context, &module, op, attr, value);
        let interp = LpuInterpreter::new(&module, &binder).unwrap();
        let mut lock = LpuLockstep::new(&interp, &golden).unwrap();
        let err = TOKENS
            .iter()
            .find_map(|&t| lock.step(t).err())
            .unwrap_or_else(|| panic!("{op:?} {attr} = {value} went unnoticed"));
        match err {
            InterpError::Mismatch { op: o, .. } => assert_eq!(o, named, "{op:?} {attr}"),
            other => panic!("{other}"),
        }
    }
}

/// Bad modules and bindings are errors naming the op or weight.
#[test]
fn errors_name_the_op() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = lpu_module(&context, &spec, None);
    let text = module.as_operation().to_string();
    let parse = |t: &str| q35_mlir::parse_module(&context, t, "bad.mlir").unwrap();

    // A matmul whose tiling disagrees with its weight.
    let bad = text.replacen(
        "groups = 2 : i64, rows = 64",
        "groups = 3 : i64, rows = 64",
        1,
    );
    let m = parse(&bad);
    let err = LpuInterpreter::new(&m, &binder).unwrap_err().to_string();
    assert!(err.contains("'lpu.matmul' op `groups` is 3"), "{err}");

    // A weight bound to nothing.
    let empty = WeightBinder::new();
    let err = LpuInterpreter::new(&module, &empty)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no binding") || err.contains("bound to nothing"),
        "{err}"
    );

    // An op writing a const buffer.
    let bad = text.replacen("y = @blk.0.attn_norm.y", "y = @blk.0.ffn_norm", 1);
    let m = parse(&bad);
    let err = LpuInterpreter::new(&m, &binder).unwrap_err().to_string();
    assert!(err.contains("is a const buffer"), "{err}");
}

/// SmolLM2-135M: the lpu module (with the model.toml's group sizes: 2 col
/// tiles and 9 groups of 64 for a 576 x 576 matrix, 576 = 320 + 256
/// outputs; 1 col tile of 192 rows and 5 groups, 4 x 128 + 64 inputs, for
/// attn_k and attn_v) equals the golden model bit for bit on two tokens.
#[test]
fn smollm2_lpu_equals_golden_bit_for_bit() {
    let Some(gguf) = common::smollm2_gguf() else {
        eprintln!("skipped: no SmolLM2 GGUF (Q35_SKIP_MODEL_TESTS=1)");
        return;
    };
    let spec = common::smollm2_spec(&gguf);
    let (golden, tokenizer) = smollm2_golden(&spec);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = lpu_module(&context, &spec, Some(640));
    let text = module.as_operation().to_string();
    assert!(text.contains(
        "col_tiles = 2 : i64, cols = 576 : i64, group = 64 : i64, groups = 9 : i64, last_group_cols = 64 : i64, last_tile_rows = 256 : i64, rows = 576 : i64, scheme = \"q35\", source = \"blk.0.attn_q.weight\""
    ));
    assert!(text.contains(
        "col_tiles = 1 : i64, cols = 576 : i64, group = 128 : i64, groups = 5 : i64, last_group_cols = 64 : i64, last_tile_rows = 192 : i64, rows = 192 : i64, scheme = \"q35\", source = \"blk.0.attn_k.weight\""
    ));
    let interp = LpuInterpreter::new(&module, &binder).unwrap();
    let mut lock = LpuLockstep::new(&interp, &golden).unwrap();
    for t in tokenizer.encode("Once upon", false).into_iter().take(2) {
        lock.step(t).unwrap();
    }
    assert_eq!(lock.state().position(), 2);
}

/// tiny.toml with the residual-stream rotation (`[quantization] rotation =
/// "block-hadamard"`): the final norm's output goes through `lpu.mix` (its
/// matrix in a const buffer of 64 steps x 1 lane word) before the head, and
/// the lpu interpreter equals the golden model, which applies the mix as
/// the contract's `mix_along_lanes`, bit for bit. One changed in-block
/// coefficient of the bound matrix changes the logits.
#[test]
fn rotated_tiny_lpu_mix_equals_golden_bit_for_bit() {
    let mut spec = tiny_spec();
    spec.quant.rotation = q35_model::Rotation::BlockHadamard;
    let golden = tiny_golden(&spec, 16);
    let mix = golden
        .head_mix()
        .expect("a rotated model mixes its head input");
    assert!(golden.output_norm().iter().all(|&g| g == 1.0));
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = lpu_module(&context, &spec, Some(16));
    let interp = LpuInterpreter::new(&module, &binder).unwrap();
    let count = |k: OpKind| interp.ops().filter(|(o, _)| *o == k).count();
    assert_eq!(count(OpKind::Mix), 1);
    assert_eq!(interp.ops().count(), 2 * 20 + 4);
    let mut lock = LpuLockstep::new(&interp, &golden).unwrap();
    for t in TOKENS {
        lock.step(t).unwrap();
    }
    let mut changed = mix.to_vec();
    changed[64 + 3] += 0.25;
    let mut bad = WeightBinder::from_golden(&golden);
    bad.bind(
        q35_frontend::OUTPUT_MIX,
        q35_mlir::interp::Binding::Table {
            rows: 64,
            cols: 64,
            data: &changed,
        },
    );
    let wrong = LpuInterpreter::new(&module, &bad).unwrap();
    let mut lock = LpuLockstep::new(&wrong, &golden).unwrap();
    let e = (0..3).find_map(|i| lock.step(TOKENS[i]).err());
    assert!(
        e.is_some(),
        "a changed mix coefficient must change the logits"
    );
}
