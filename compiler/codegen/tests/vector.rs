//! Point-wise kernels on the simulator: values bit-exact, the predicted
//! cycle count equal to the simulated one, no hazard.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::vector;
use q35_isa::{DType, Hemisphere};
use q35_target::Target;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20000) as f32 / 997.0 - 10.0
        })
        .collect()
}

#[test]
fn add_is_exact_and_predicted() {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    for (n, ha, hb, ho) in [
        (
            576usize,
            Hemisphere::West,
            Hemisphere::East,
            Hemisphere::East,
        ),
        (1536, Hemisphere::West, Hemisphere::West, Hemisphere::West),
        (100, Hemisphere::East, Hemisphere::East, Hemisphere::West),
    ] {
        let mut p = ProgramBuilder::new(&target);
        let a = p.buffer("a", DType::F32, n as u64, ha).unwrap();
        let b = p.buffer("b", DType::F32, n as u64, hb).unwrap();
        let o = p.buffer("o", DType::F32, n as u64, ho).unwrap();
        let (va, vb) = (values(n, 1), values(n, 7));
        p.init(&a, DType::F32, va.iter().map(|x| x.to_bits()).collect());
        p.init(&b, DType::F32, vb.iter().map(|x| x.to_bits()).collect());
        p.symbol(
            "o",
            q35_isa::SymbolKind::Output,
            DType::F32,
            vec![n as u32],
            &o,
        );
        let words = (n as u32).div_ceil(320);
        vector::add(&mut p, "add", &a, &b, &o, words, 0).unwrap();
        let built = p.finish();
        let (done, bin) = common::run(&built, &target);
        let got = common::f32_symbol(&done, &bin, "o");
        for i in 0..n {
            assert_eq!(
                got[i].to_bits(),
                (va[i] + vb[i]).to_bits(),
                "n {n} element {i}"
            );
        }
        assert_eq!(
            done.profile.total_cycles(),
            built.cycles,
            "n {n}: predicted cycles"
        );
    }
}
