//! Activation quantization on the simulator: `scale` and the f32 products
//! `xs` bit-exact, and `xs` rounded as `f32toi8` does (half away from zero,
//! clamp to +-127) equal to `ActivationI8::quantize`'s codes; predicted
//! cycles equal to simulated ones.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::quantize::quantize;
use q35_contract::semantics::{ACT_ZERO_BELOW, ActivationI8};
use q35_isa::{DType, Hemisphere};
use q35_target::Target;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20000) as f32 / 997.0 - 10.0
        })
        .collect()
}

/// `f32toi8` (docs/isa.md 3): round half away from zero, clamp, NaN to 0.
fn f32toi8(v: f32) -> i8 {
    if v.is_nan() {
        0
    } else {
        v.round().clamp(-127.0, 127.0) as i8
    }
}

fn check(name: &str, x: &[f32], hs: [Hemisphere; 3]) -> u64 {
    let n = x.len();
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let xb = p.buffer("x", DType::F32, n as u64, hs[0]).unwrap();
    let xs = p.buffer("xs", DType::F32, n as u64, hs[1]).unwrap();
    let sc = p.buffer("scale", DType::F32, 320, hs[2]).unwrap();
    p.init(&xb, DType::F32, x.iter().map(|v| v.to_bits()).collect());
    let words = n.div_ceil(320);
    p.symbol(
        "xs",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![(words * 320) as u32],
        &xs,
    );
    p.symbol(
        "scale",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![320],
        &sc,
    );
    quantize(&mut p, "blk.0.attn_q.act", &xb, n as u32, &xs, &sc, 0).unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    let got = common::f32_symbol(&done, &bin, "xs");
    let scale = common::f32_symbol(&done, &bin, "scale");
    let want = ActivationI8::quantize(x).unwrap();
    for (l, s) in scale.iter().enumerate() {
        assert_eq!(
            s.to_bits(),
            want.scale().to_bits(),
            "{name}: scale lane {l}"
        );
    }
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let zero = amax < ACT_ZERO_BELOW;
    let inv = 127.0 / amax;
    for i in 0..n {
        let exact = if zero { 0.0 } else { x[i] * inv };
        assert_eq!(got[i].to_bits(), exact.to_bits(), "{name}: xs {i}");
        assert_eq!(f32toi8(got[i]), want.codes()[i], "{name}: code {i}");
    }
    for (i, v) in got.iter().enumerate().skip(n) {
        assert_eq!(v.to_bits(), 0, "{name}: padding lane {i}");
    }
    assert_eq!(done.profile.total_cycles(), built.cycles, "{name}: cycles");
    println!("quantize {name} (n {n}): {} cycles", built.cycles);
    built.cycles
}

#[test]
fn quantize_is_exact_and_predicted() {
    use Hemisphere::{East, West};
    check("smollm2 hidden 576", &values(576, 1), [West, East, East]);
    check("ffn 1536", &values(1536, 2), [East, West, West]);
    check("n 100", &values(100, 3), [East, East, East]);
    // Halves: x * inv lands on .5 exactly (127 / 127 = 1: codes are x).
    let mut halves: Vec<f32> = (0..320).map(|i| (i % 255) as f32 - 127.0 + 0.5).collect();
    halves[7] = 127.0;
    check("ties round away from zero", &halves, [West, West, East]);
    check("all zeros", &vec![0.0; 576], [West, East, West]);
    // A zero token with negative values: xs must be +0.0 everywhere.
    let tiny: Vec<f32> = values(640, 4).iter().map(|v| v * 1.0e-38).collect();
    check("zero token (amax < 2^-120)", &tiny, [East, East, West]);
    // amax exactly 2^-120: not a zero token.
    let mut edge = vec![-0.0f32; 320];
    edge[5] = -ACT_ZERO_BELOW;
    edge[9] = ACT_ZERO_BELOW * 0.5;
    check("amax = 2^-120", &edge, [West, East, East]);
    let big: Vec<f32> = values(960, 5).iter().map(|v| v * 3.0e37).collect();
    check("large magnitudes", &big, [West, West, West]);
    let neg: Vec<f32> = values(576, 6).iter().map(|v| -v.abs()).collect();
    check("all negative", &neg, [East, West, East]);
}
