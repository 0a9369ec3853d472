//! SwiGLU on the simulator: bit-exact with `semantics::swiglu`, predicted
//! cycles equal to simulated ones.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::swiglu::swiglu;
use q35_contract::semantics;
use q35_isa::{DType, Hemisphere};
use q35_target::Target;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20000) as f32 / 997.0 - 10.0
        })
        .collect()
}

fn check(name: &str, g: &[f32], u: &[f32], hs: [Hemisphere; 3]) {
    let n = g.len();
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let gb = p.buffer("g", DType::F32, n as u64, hs[0]).unwrap();
    let ub = p.buffer("u", DType::F32, n as u64, hs[1]).unwrap();
    let yb = p.buffer("y", DType::F32, n as u64, hs[2]).unwrap();
    p.init(&gb, DType::F32, g.iter().map(|v| v.to_bits()).collect());
    p.init(&ub, DType::F32, u.iter().map(|v| v.to_bits()).collect());
    p.symbol(
        "y",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![n as u32],
        &yb,
    );
    swiglu(&mut p, "blk.0.ffn", &gb, &ub, &yb, n as u32, 0).unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    let got = common::f32_symbol(&done, &bin, "y");
    let mut want = vec![0f32; n];
    semantics::swiglu(g, u, &mut want);
    for i in 0..n {
        assert_eq!(
            got[i].to_bits(),
            want[i].to_bits(),
            "{name}: element {i}: silu({}) * {}: {} vs {}",
            g[i],
            u[i],
            got[i],
            want[i]
        );
    }
    assert_eq!(done.profile.total_cycles(), built.cycles, "{name}: cycles");
    println!("swiglu {name} (n {n}): {} cycles", built.cycles);
}

#[test]
fn swiglu_is_exact_and_predicted() {
    use Hemisphere::{East, West};
    check(
        "smollm2 ffn 1536",
        &values(1536, 1),
        &values(1536, 2),
        [West, East, East],
    );
    check(
        "n 576",
        &values(576, 3),
        &values(576, 4),
        [East, East, West],
    );
    check(
        "n 100",
        &values(100, 5),
        &values(100, 6),
        [West, West, West],
    );
    // Extremes of exp: -g beyond +-88.7 / -104 (inf and 0), zeros of both
    // signs, and -0.0 products.
    let g: Vec<f32> = [
        0.0, -0.0, 1.0, -1.0, 88.0, -88.0, 89.0, -89.0, 104.0, -104.0, 200.0, -200.0, 3.0e38,
        -3.0e38, 1.0e-40, -1.0e-40,
    ]
    .iter()
    .copied()
    .cycle()
    .take(320)
    .collect();
    let u: Vec<f32> = (0..320)
        .map(|i| match i % 5 {
            0 => -0.0,
            1 => 0.0,
            2 => -2.5,
            3 => 1.0e30,
            _ => 7.0,
        })
        .collect();
    check("exp extremes", &g, &u, [East, West, East]);
}
