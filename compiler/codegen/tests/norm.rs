//! RMSNorm on the simulator: bit-exact with `semantics::rmsnorm`, predicted
//! cycles equal to simulated ones.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::norm::{rmsnorm, rmsnorm_quantize};
use q35_contract::semantics::{self, ACT_ZERO_BELOW, ActivationI8};
use q35_isa::{DType, Hemisphere};
use q35_target::Target;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20000) as f32 / 997.0 - 10.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs rmsnorm and checks it against the contract; returns the cycles.
fn check(name: &str, x: &[f32], w: &[f32], eps: f32, hs: [Hemisphere; 3]) -> u64 {
    let n = x.len();
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let xb = p.buffer("x", DType::F32, n as u64, hs[0]).unwrap();
    let wb = p.buffer("w", DType::F32, n as u64, hs[1]).unwrap();
    let yb = p.buffer("y", DType::F32, n as u64, hs[2]).unwrap();
    p.init(&xb, DType::F32, bits(x));
    p.init(&wb, DType::F32, bits(w));
    p.symbol(
        "y",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![n as u32],
        &yb,
    );
    rmsnorm(&mut p, "blk.0.attn_norm", &xb, &wb, &yb, n as u32, eps, 0).unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    let got = common::f32_symbol(&done, &bin, "y");
    let mut want = vec![0f32; n];
    semantics::rmsnorm(x, w, eps, &mut want);
    for i in 0..n {
        assert_eq!(
            got[i].to_bits(),
            want[i].to_bits(),
            "{name}: element {i}: {} vs {}",
            got[i],
            want[i]
        );
    }
    assert_eq!(done.profile.total_cycles(), built.cycles, "{name}: cycles");
    println!("rmsnorm {name} (n {n}): {} cycles", built.cycles);
    check_fused(name, x, w, eps, hs);
    built.cycles
}

/// Runs the fused rmsnorm + quantize and checks `y`, `scale` and `xs`
/// against the contract (rmsnorm, then the activation quantization of `y`).
fn check_fused(name: &str, x: &[f32], w: &[f32], eps: f32, hs: [Hemisphere; 3]) {
    let n = x.len();
    let words = n.div_ceil(320);
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let xb = p.buffer("x", DType::F32, n as u64, hs[0]).unwrap();
    let wb = p.buffer("w", DType::F32, n as u64, hs[1]).unwrap();
    let yb = p.buffer("y", DType::F32, n as u64, hs[2]).unwrap();
    let xs = p.buffer("xs", DType::F32, n as u64, hs[0]).unwrap();
    let sc = p.buffer("scale", DType::F32, 320, hs[1]).unwrap();
    p.init(&xb, DType::F32, bits(x));
    p.init(&wb, DType::F32, bits(w));
    for (sym, buf, len) in [("y", &yb, n), ("xs", &xs, words * 320), ("scale", &sc, 320)] {
        p.symbol(
            sym,
            q35_isa::SymbolKind::Output,
            DType::F32,
            vec![len as u32],
            buf,
        );
    }
    rmsnorm_quantize(
        &mut p,
        "blk.0.attn_norm",
        &xb,
        &wb,
        &yb,
        n as u32,
        eps,
        &xs,
        &sc,
        0,
    )
    .unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    assert_eq!(
        done.profile.total_cycles(),
        built.cycles,
        "{name}: fused cycles"
    );
    let mut y = vec![0f32; n];
    semantics::rmsnorm(x, w, eps, &mut y);
    let got_y = common::f32_symbol(&done, &bin, "y");
    assert_eq!(bits(&got_y), bits(&y), "{name}: fused y");
    let amax = y.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax.is_finite() {
        let want = ActivationI8::quantize(&y).unwrap();
        let scale = common::f32_symbol(&done, &bin, "scale");
        assert!(
            scale.iter().all(|s| s.to_bits() == want.scale().to_bits()),
            "{name}: fused scale"
        );
        let zero = amax < ACT_ZERO_BELOW;
        let inv = 127.0 / amax;
        let got = common::f32_symbol(&done, &bin, "xs");
        for i in 0..words * 320 {
            let exact = match (i < n, zero) {
                (false, _) | (true, true) => 0.0,
                (true, false) => y[i] * inv,
            };
            assert_eq!(got[i].to_bits(), exact.to_bits(), "{name}: fused xs {i}");
        }
    }
    println!("rmsnorm + quantize {name} (n {n}): {} cycles", built.cycles);
}

#[test]
fn rmsnorm_is_exact_and_predicted() {
    use Hemisphere::{East, West};
    let eps = 1e-5;
    check(
        "smollm2 hidden 576",
        &values(576, 1),
        &values(576, 2),
        eps,
        [West, East, East],
    );
    check(
        "ffn 1536",
        &values(1536, 3),
        &values(1536, 4),
        eps,
        [East, East, West],
    );
    check(
        "n 100",
        &values(100, 5),
        &values(100, 6),
        eps,
        [West, West, West],
    );
    check(
        "n 320",
        &values(320, 7),
        &values(320, 8),
        1e-6,
        [East, West, East],
    );
    check(
        "zeros",
        &vec![0.0; 576],
        &values(576, 9),
        eps,
        [West, East, West],
    );
    // -0.0 products: negative zeros in x, negative weights.
    let mut x = values(640, 10);
    for v in x.iter_mut().step_by(3) {
        *v = -0.0;
    }
    let w: Vec<f32> = values(640, 11).iter().map(|v| -v.abs()).collect();
    check("negative zeros", &x, &w, eps, [East, East, East]);
    // Large magnitudes: the sum of squares overflows to +inf, r = 0.
    let big: Vec<f32> = values(576, 12).iter().map(|v| v * 1.0e37).collect();
    check(
        "overflowing squares",
        &big,
        &values(576, 13),
        eps,
        [West, East, East],
    );
    let tiny: Vec<f32> = values(576, 14).iter().map(|v| v * 1.0e-30).collect();
    check(
        "tiny values",
        &tiny,
        &values(576, 15),
        eps,
        [West, East, East],
    );
}
