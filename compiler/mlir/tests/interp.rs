//! The q35 IR interpreter against the golden model, bit for bit.
//!
//! The module `q35c compile` emits is interpreted op by op
//! (`q35_mlir::interp`) with the weights of a golden model bound by GGUF
//! name, and run side by side with that golden model
//! (`q35_contract::GoldenModel::step`): logits and every block's KV cache
//! must be equal in every bit after every token. A mutated attribute must
//! break the equality (so the check can fail), and bad IR or input is an
//! error naming the op. The SmolLM2 test needs the GGUF
//! (`Q35_SMOLLM2_GGUF`, else `.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`)
//! and fails without it unless `Q35_SKIP_MODEL_TESTS=1`.
//!
//! The module after `q35-quantize-activations` (explicit `q35.quantize` and
//! `q35.qmatmul`) interprets to the same bits as the module before it and
//! as the golden model: the rewriting pass preserves semantics.

mod common;
mod golden;

use golden::{smollm2_golden, tiny_golden, tiny_spec};

use melior::ir::attribute::{FloatAttribute, IntegerAttribute, TypeAttribute};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRefMut};
use melior::ir::r#type::IntegerType;
use melior::ir::{Attribute, Module, RegionLike, Type};
use q35_contract::GoldenModel;
use q35_mlir::interp::{Binding, InterpError, Interpreter, Lockstep, OpKind, Tensor, WeightBinder};
use q35_mlir::passes::{self, RunOptions};

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Runs `tokens` one per call through the interpreter and the golden model
/// and checks logits and KV cache bit for bit after every token.
fn check_stepwise(interp: &Interpreter<'_>, golden: &GoldenModel, tokens: &[u32]) {
    let mut session = golden.new_session();
    let mut cache = interp.new_cache().unwrap();
    let [layers, two, positions, kvh, hd] = <[usize; 5]>::try_from(cache.dims()).unwrap();
    assert_eq!((layers, two), (golden.arch().blocks as usize, 2));
    let kvd = kvh * hd;
    for (i, &t) in tokens.iter().enumerate() {
        let out = interp.decode(&[t], i, cache).unwrap();
        let want = golden.step(&mut session, t).unwrap();
        assert_eq!(out.logits.dims(), [1, golden.vocab()]);
        assert_eq!(
            bits(out.logits.data()),
            bits(&want),
            "logits of token #{i} ({t})"
        );
        let plane = positions * kvd;
        for l in 0..layers {
            for (w, golden_kv) in [(0, session.keys(l)), (1, session.values(l))] {
                let ir = &out.cache.data()[(l * 2 + w) * plane..][..plane];
                let golden_kv = golden_kv.unwrap();
                assert_eq!(golden_kv.len(), (i + 1) * kvd);
                assert_eq!(
                    bits(&ir[..golden_kv.len()]),
                    bits(golden_kv),
                    "KV cache of layer {l} ({}) after token #{i}",
                    ["keys", "values"][w]
                );
                assert!(
                    ir[golden_kv.len()..].iter().all(|v| v.to_bits() == 0),
                    "unwritten cache positions stay +0.0"
                );
            }
        }
        cache = out.cache;
    }
}

const TOKENS: [u32; 8] = [1, 17, 200, 3, 42, 255, 0, 97];

#[test]
fn tiny_ir_equals_golden_bit_for_bit() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = q35_mlir::compile(&context, &spec).unwrap();
    let interp = Interpreter::new(&module, &binder).unwrap();
    assert_eq!(interp.ops().count(), 35);
    assert_eq!(interp.weight_symbols().count(), 20);
    check_stepwise(&interp, &golden, &TOKENS);

    // The lockstep checker agrees, token by token.
    let mut lock = Lockstep::new(&interp, &golden).unwrap();
    for t in TOKENS {
        lock.step(t).unwrap();
    }
    assert_eq!(lock.position(), TOKENS.len());

    // The printed module, parsed back, interprets the same.
    let text = module.as_operation().to_string();
    let reparsed = q35_mlir::parse_module(&context, &text, "tiny.mlir").unwrap();
    let again = Interpreter::new(&reparsed, &binder).unwrap();
    check_stepwise(&again, &golden, &TOKENS[..3]);
}

/// Several tokens in one call (`?` = 4: prefill) give, row by row, the
/// logits of one token per call: every op is per token, attention causal.
#[test]
fn tiny_prefill_equals_stepwise() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = q35_mlir::compile(&context, &spec).unwrap();
    let interp = Interpreter::new(&module, &binder).unwrap();
    let mut session = golden.new_session();
    let want = golden.run(&mut session, &TOKENS[..4]).unwrap();
    let out = interp
        .decode(&TOKENS[..4], 0, interp.new_cache().unwrap())
        .unwrap();
    assert_eq!(out.logits.dims(), [4, 256]);
    assert_eq!(bits(out.logits.data()), bits(&want));
    // ... and decoding continues from the prefilled cache.
    let next = interp.decode(&TOKENS[4..5], 4, out.cache).unwrap();
    assert_eq!(
        bits(next.logits.data()),
        bits(&golden.step(&mut session, TOKENS[4]).unwrap())
    );
}

/// `module` after `pipeline` (MLIR pass-pipeline syntax).
fn after_passes<'c>(
    context: &'c melior::Context,
    spec: &q35_model::ModelSpec,
    pipeline: &str,
) -> Module<'c> {
    let mut module = q35_mlir::compile(context, spec).unwrap();
    let pipeline = passes::parse_pipeline(pipeline).unwrap();
    passes::run_with(context, &mut module, &pipeline, RunOptions::default()).unwrap();
    module
}

fn count(interp: &Interpreter<'_>, kind: OpKind) -> usize {
    interp.ops().filter(|o| o.kind == kind).count()
}

/// `q35-quantize-activations` preserves semantics: with `share=true` and
/// `share=false`, the rewritten module (every matmul a `q35.quantize`
/// feeding a `q35.qmatmul`) interprets to the same logits and KV cache, bit
/// for bit, as the module before the pass and as the golden model, token
/// by token and in one prefill call.
#[test]
fn quantize_activations_preserves_semantics() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let original = q35_mlir::compile(&context, &spec).unwrap();
    let before = Interpreter::new(&original, &binder).unwrap();
    assert_eq!(
        (
            count(&before, OpKind::MatMul),
            count(&before, OpKind::LmHead)
        ),
        (14, 1)
    );
    // tiny: 2 blocks of 7 matmuls reading 4 distinct values, and the head.
    for (share, quantizes) in [(true, 2 * 4 + 1), (false, 2 * 7 + 1)] {
        let module = after_passes(
            &context,
            &spec,
            &format!("builtin.module(q35-quantize-activations{{share={share}}},q35-verify)"),
        );
        let after = Interpreter::new(&module, &binder).unwrap();
        assert_eq!(
            count(&after, OpKind::MatMul) + count(&after, OpKind::LmHead),
            0
        );
        assert_eq!(count(&after, OpKind::QMatMul), 15, "share={share}");
        assert_eq!(count(&after, OpKind::Quantize), quantizes, "share={share}");
        assert_eq!(after.ops().count(), 35 + quantizes, "share={share}");
        assert_eq!(
            after.returned_by(0).map(|o| o.kind),
            Some(OpKind::QMatMul),
            "the logits come from a q35.qmatmul"
        );

        // Against the golden model, one token per call.
        check_stepwise(&after, &golden, &TOKENS);
        let mut lock = Lockstep::new(&after, &golden).unwrap();
        for t in TOKENS {
            lock.step(t).unwrap();
        }

        // Against the module before the pass, one token per call...
        let (mut c0, mut c1) = (before.new_cache().unwrap(), after.new_cache().unwrap());
        for (i, &t) in TOKENS.iter().enumerate() {
            let (x, y) = (
                before.decode(&[t], i, c0).unwrap(),
                after.decode(&[t], i, c1).unwrap(),
            );
            assert_eq!(
                bits(x.logits.data()),
                bits(y.logits.data()),
                "share={share}: logits of token #{i}"
            );
            assert_eq!(
                bits(x.cache.data()),
                bits(y.cache.data()),
                "share={share}: KV cache after token #{i}"
            );
            (c0, c1) = (x.cache, y.cache);
        }
        // ... and in one prefill call of 4 tokens (`?` = 4).
        let x = before
            .decode(&TOKENS[..4], 0, before.new_cache().unwrap())
            .unwrap();
        let y = after
            .decode(&TOKENS[..4], 0, after.new_cache().unwrap())
            .unwrap();
        assert_eq!(y.logits.dims(), [4, 256]);
        assert_eq!(bits(x.logits.data()), bits(y.logits.data()));
        assert_eq!(bits(x.cache.data()), bits(y.cache.data()));
    }

    // The comparison can fail after the pass too, and names the op that
    // now computes the logits: the final norm's eps changed leaves every
    // KV cache equal and changes the logits of the first token.
    let module = after_passes(&context, &spec, "q35-quantize-activations");
    op_named(&module, "output_norm").set_attribute("eps", f32_attr(&module, 1e-2));
    match first_mismatch(&module, &golden) {
        Some(InterpError::Mismatch {
            index,
            location,
            op,
            ..
        }) => {
            assert_eq!(index, 0);
            assert_eq!(op, "q35.qmatmul");
            assert_eq!(Some(location), before.returned_by(0).map(|o| o.location));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

/// The op of `module`'s `@decode` whose location is `name`.
fn op_named<'c, 'a>(module: &'a Module<'c>, name: &str) -> OperationRefMut<'c, 'a> {
    let func = module.body().first_operation().unwrap();
    let mut func = Some(func);
    while let Some(f) = func {
        if f.name().as_string_ref().as_str() == Ok("func.func") {
            break;
        }
        func = f.next_in_block();
    }
    let func = func.expect("func.func");
    let block = func.region(0).unwrap().first_block().unwrap();
    let mut op = block.first_operation_mut();
    while let Some(o) = op {
        if q35_mlir::ir::format_location(o.location()) == name {
            return o;
        }
        op = o.next_in_block_mut();
    }
    panic!("no op at {name}");
}

fn f32_attr<'c>(module: &Module<'c>, v: f64) -> Attribute<'c> {
    let ctx = module.context();
    FloatAttribute::new(
        unsafe { ctx.to_ref() },
        Type::float32(unsafe { ctx.to_ref() }),
        v,
    )
    .into()
}

/// Interprets `module` beside `golden` on TOKENS; the first mismatch.
fn first_mismatch(module: &Module<'_>, golden: &GoldenModel) -> Option<InterpError> {
    let binder = WeightBinder::from_golden(golden);
    let interp = Interpreter::new(module, &binder).unwrap();
    let mut lock = Lockstep::new(&interp, golden).unwrap();
    TOKENS.iter().find_map(|&t| lock.step(t).err())
}

/// The check can fail: an attribute changed in the IR (through melior)
/// changes the interpreter's results, and the lockstep names the op whose
/// result first differs, the token and the position.
#[test]
fn mutated_attributes_break_bit_equality() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let context = q35_mlir::create_context().unwrap();

    // eps of block 0's attention norm: K and V of layer 0 differ at once.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    op_named(&module, "blk.0.attn_norm").set_attribute("eps", f32_attr(&module, 1e-2));
    let binder = WeightBinder::from_golden(&golden);
    let interp = Interpreter::new(&module, &binder).unwrap();
    let out = interp
        .decode(&TOKENS[..1], 0, interp.new_cache().unwrap())
        .unwrap();
    let want = golden.step(&mut golden.new_session(), TOKENS[0]).unwrap();
    assert_ne!(bits(out.logits.data()), bits(&want), "eps is followed");
    match first_mismatch(&module, &golden) {
        Some(InterpError::Mismatch {
            index,
            position,
            location,
            op,
            ..
        }) => {
            assert_eq!((index, position), (0, 0));
            assert_eq!(
                (location.as_str(), op.as_str()),
                ("blk.0.kv_write", "q35.kv_write")
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }

    // The RoPE base of block 1's keys: position 0 does not rotate, so the
    // first difference is layer 1's cache at position 1.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    op_named(&module, "blk.1.k_rope").set_attribute("base", f32_attr(&module, 500.0));
    let e = first_mismatch(&module, &golden).expect("a mismatch");
    let text = e.to_string();
    assert!(
        text.starts_with(
            "mismatch at token #1 (id 17, position 1) in op `blk.1.kv_write` (q35.kv_write): cached keys of layer 1 at position 1"
        ),
        "{text}"
    );

    // The attention scale of block 0: the logits differ, KV of layer 1 first.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    op_named(&module, "blk.0.attn").set_attribute("scale", f32_attr(&module, 0.3));
    assert!(matches!(
        first_mismatch(&module, &golden),
        Some(InterpError::Mismatch { ref location, .. }) if location == "blk.1.kv_write"
    ));

    // Unmutated, the same comparison finds nothing.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    assert_eq!(first_mismatch(&module, &golden), None);
}

/// Bad IR, bindings and inputs are errors naming the op (its location, the
/// graph node name) or the weight, never panics.
#[test]
fn errors_name_the_op() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 16);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();

    // A token outside the table.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    let interp = Interpreter::new(&module, &binder).unwrap();
    let e = interp
        .decode(&[300], 0, interp.new_cache().unwrap())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "embed: 'q35.embed' op token 300 is outside the 256 rows of @token_embd"
    );
    // Past the cache.
    let e = interp
        .decode(&[1, 2], 127, interp.new_cache().unwrap())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "blk.0.kv_write: 'q35.kv_write' op positions 127..129 are past the cache's 128"
    );
    // A cache of the wrong shape.
    let e = interp
        .decode(&[1], 0, Tensor::zeros(vec![2, 2, 64, 2, 16]))
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "argument #2 is tensor<2x2x64x2x16xf32> but the type is tensor<2x2x128x2x16xf32>"
        ),
        "{e}"
    );

    // An attribute that no longer fits the operands: a run-time shape error.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    let i64t = IntegerType::new(&context, 64).into();
    op_named(&module, "blk.0.attn").set_attribute("heads", IntegerAttribute::new(i64t, 2).into());
    let interp = Interpreter::new(&module, &binder).unwrap();
    let e = interp
        .decode(&[1], 0, interp.new_cache().unwrap())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "blk.0.attn: 'q35.attention' op heads 2 x head_dim 16 = 32 does not match q's 64 features"
    );
    // One the decoder refuses outright.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    op_named(&module, "blk.1.attn")
        .set_attribute("kv_heads", IntegerAttribute::new(i64t, 3).into());
    let e = Interpreter::new(&module, &binder).unwrap_err();
    assert_eq!(
        e.to_string(),
        "blk.1.attn: 'q35.attention' op `heads` = 4 is not a multiple of `kv_heads` = 3"
    );

    // Bindings: missing, or of another shape than declared.
    let module = q35_mlir::compile(&context, &spec).unwrap();
    let e = Interpreter::new(&module, &WeightBinder::new()).unwrap_err();
    assert!(
        e.to_string().ends_with(": nothing is bound to this source"),
        "{e}"
    );
    let mut wrong = binder.clone();
    let b0 = &golden.blocks()[0];
    wrong.bind("blk.0.attn_q.weight", Binding::Matrix(&b0.k));
    assert_eq!(
        Interpreter::new(&module, &wrong).unwrap_err().to_string(),
        "weight @blk.0.attn_q (source `blk.0.attn_q.weight`): the IR declares tensor<64x64x!q35.qweight<\"q35\", 32 : i32>> but the binding holds a 32x64 quantized matrix (group 32)"
    );
    let mut wrong = binder.clone();
    wrong.bind("output_norm.weight", Binding::Vector(&b0.attn_norm[..10]));
    assert!(Interpreter::new(&module, &wrong).is_err());

    // An attribute the op table fixes, changed: the contract defines no
    // other accumulator (after the pass, on a q35.qmatmul).
    let module = after_passes(&context, &spec, "q35-quantize-activations");
    let i16t = IntegerType::new(&context, 16).into();
    op_named(&module, "blk.0.q").set_attribute("acc_type", TypeAttribute::new(i16t).into());
    assert_eq!(
        Interpreter::new(&module, &binder).unwrap_err().to_string(),
        "blk.0.q: 'q35.qmatmul' op `acc_type` = i16 is not interpreted (the contract defines i32)"
    );
}

/// The binder names exactly the tensors the architecture expects.
#[test]
fn binder_covers_the_expected_tensors() {
    let spec = tiny_spec();
    let golden = tiny_golden(&spec, 4);
    let binder = WeightBinder::from_golden(&golden);
    let mut expected: Vec<String> = spec
        .arch
        .expected_tensors()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    expected.sort();
    let bound: Vec<String> = binder.sources().map(str::to_owned).collect();
    assert_eq!(bound, expected);
}

/// SmolLM2-135M: its compiled module, interpreted with the golden model's
/// own weights (the model.toml's scheme, q35, group 128, activation-aware
/// slots from a short calibration), equals the golden model bit for bit on
/// a few tokens.
#[test]
fn smollm2_ir_equals_golden_bit_for_bit() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let spec = common::smollm2_spec(&gguf);
    let (golden, tokenizer) = smollm2_golden(&spec);
    let binder = WeightBinder::from_golden(&golden);
    let context = q35_mlir::create_context().unwrap();
    let module = q35_mlir::compile(&context, &spec).unwrap();
    let interp = Interpreter::new(&module, &binder).unwrap();
    let tokens = tokenizer.encode("Once upon a", false);
    assert!(tokens.len() >= 3);
    check_stepwise(&interp, &golden, &tokens[..3]);

    // After q35-quantize-activations: the same bits.
    let module = after_passes(&context, &spec, "q35-quantize-activations");
    let after = Interpreter::new(&module, &binder).unwrap();
    assert_eq!(count(&after, OpKind::QMatMul), 30 * 7 + 1);
    check_stepwise(&after, &golden, &tokens[..3]);
}
