//! The block-diagonal mix along lanes (`lpu.mix`) on the simulator:
//! bit-exact with the contract's dense `semantics::mix_along_lanes`,
//! predicted cycles equal to simulated ones.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::mix::{block_columns, mix};
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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A block-diagonal `n x n` matrix (blocks of `block`) with -0.0 off its
/// blocks here and there and a few zeros inside.
fn block_matrix(n: usize, block: usize, seed: u32) -> Vec<f32> {
    let v = values(n * n, seed);
    (0..n * n)
        .map(|k| {
            let (r, c) = (k / n, k % n);
            if r / block != c / block {
                if k % 5 == 0 { -0.0 } else { 0.0 }
            } else if k % 13 == 0 {
                0.0
            } else {
                v[k] / 8.0
            }
        })
        .collect()
}

/// Runs the mix and checks it against the contract; returns the cycles.
fn check(name: &str, m: &[f32], x: &[f32], block: usize, hs: [Hemisphere; 3]) -> u64 {
    let n = x.len();
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let table = block_columns(m, n, block, 320).unwrap();
    let mut p = ProgramBuilder::new(&target);
    let xb = p.buffer("x", DType::F32, n as u64, hs[0]).unwrap();
    let mb = p
        .buffer("m", DType::F32, table.len() as u64, hs[1])
        .unwrap();
    let yb = p.buffer("y", DType::F32, n as u64, hs[2]).unwrap();
    p.init(&xb, DType::F32, bits(x));
    p.init(&mb, DType::F32, bits(&table));
    p.symbol(
        "y",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![n as u32],
        &yb,
    );
    mix(
        &mut p,
        "output_mix",
        &xb,
        &mb,
        &yb,
        n as u32,
        block as u32,
        0,
    )
    .unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    let got = common::f32_symbol(&done, &bin, "y");
    let mut want = vec![0f32; n];
    semantics::mix_along_lanes(m, x, &mut want);
    assert_eq!(bits(&got[..n]), bits(&want), "{name}");
    assert_eq!(done.profile.total_cycles(), built.cycles, "{name}: cycles");
    println!("mix {name} (n {n}, block {block}): {} cycles", built.cycles);
    built.cycles
}

#[test]
fn mix_is_the_dense_contract_bit_for_bit_and_predicted() {
    use Hemisphere::{East, West};
    // SmolLM2's 576 in nine blocks of 64: two lane words.
    let m = block_matrix(576, 64, 1);
    check("smollm2 576", &m, &values(576, 2), 64, [West, East, East]);
    check(
        "smollm2 576 east",
        &m,
        &values(576, 3),
        64,
        [East, West, West],
    );
    // Zeros, negative zeros and exact cancellations in the input.
    let mut x = values(576, 4);
    for v in x.iter_mut().step_by(7) {
        *v = -0.0;
    }
    x[1] = 0.0;
    check("signed zeros", &m, &x, 64, [West, West, East]);
    // tiny's 64 (one block, one word) and smaller blocks.
    check(
        "n 64",
        &block_matrix(64, 64, 5),
        &values(64, 6),
        64,
        [East, East, West],
    );
    check(
        "blocks of 32",
        &block_matrix(640, 32, 7),
        &values(640, 8),
        32,
        [West, East, West],
    );
}

/// An M with a nonzero entry off its blocks cannot be laid out: skipping
/// that term would change the result.
#[test]
fn an_off_block_entry_is_refused() {
    let mut m = block_matrix(128, 64, 9);
    m[3 * 128 + 100] = 1.0;
    let e = block_columns(&m, 128, 64, 320).unwrap_err();
    assert!(e.contains("(3, 100)"), "{e}");
}
