//! Lane reductions on the simulator: the sum bit-exact with the contract's
//! `lane_sum`, the max exact (also over all-negative values), the result on
//! every lane, predicted cycles equal to simulated ones.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::reduce::{ReduceJob, ReduceOp, lane_reduce, lane_reduce_many};
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

/// Runs one reduction of `x` (initialised as given, `words` words) and
/// returns the 320 lanes of the result and the cycle count.
fn run(op: ReduceOp, x: &[f32], words: u32, hx: Hemisphere, ho: Hemisphere) -> (Vec<f32>, u64) {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let xb = p
        .buffer("x", DType::F32, u64::from(words) * 320, hx)
        .unwrap();
    let out = p.buffer("out", DType::F32, 320, ho).unwrap();
    p.init(&xb, DType::F32, x.iter().map(|v| v.to_bits()).collect());
    p.symbol(
        "out",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![320],
        &out,
    );
    lane_reduce(&mut p, "reduce", op, &xb, words, &out, 0).unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    assert_eq!(
        done.profile.total_cycles(),
        built.cycles,
        "predicted cycles"
    );
    (common::f32_symbol(&done, &bin, "out"), built.cycles)
}

fn assert_broadcast(got: &[f32], want: f32, what: &str) {
    for (l, g) in got.iter().enumerate() {
        assert_eq!(
            g.to_bits(),
            want.to_bits(),
            "{what}: lane {l}: {g} vs {want}"
        );
    }
}

#[test]
fn sum_is_lane_sum_bit_for_bit() {
    let mut cases: Vec<(String, Vec<f32>)> = vec![
        ("hidden 576".into(), values(576, 1)),
        ("ffn 1536".into(), values(1536, 2)),
        ("n 100".into(), values(100, 3)),
        ("n 320".into(), values(320, 4)),
        ("zeros".into(), vec![0.0; 576]),
        ("negative zeros".into(), vec![-0.0; 400]),
        (
            "large magnitudes".into(),
            values(960, 5).iter().map(|v| v * 3.0e37).collect(),
        ),
        (
            "cancellation".into(),
            (0..640)
                .map(|i| if i % 2 == 0 { 1.0e8 } else { -1.0e8 + i as f32 })
                .collect(),
        ),
    ];
    // Squares: RMSNorm's terms.
    let sq: Vec<f32> = values(576, 9).iter().map(|v| v * v).collect();
    cases.push(("squares".into(), sq));
    for (i, (name, x)) in cases.iter().enumerate() {
        let words = (x.len() as u32).div_ceil(320);
        let (hx, ho) = if i % 2 == 0 {
            (Hemisphere::West, Hemisphere::East)
        } else {
            (Hemisphere::East, Hemisphere::East)
        };
        let (got, cycles) = run(ReduceOp::Sum, x, words, hx, ho);
        assert_broadcast(&got, semantics::lane_sum(x), name);
        println!("lane_reduce Sum {name} ({words} words): {cycles} cycles");
    }
}

#[test]
fn max_is_exact_even_when_every_value_is_negative() {
    let neg: Vec<f32> = values(640, 11).iter().map(|v| -v.abs() - 1.0).collect();
    // Padding filled with -inf by the caller: the max over 400 negatives.
    let mut padded: Vec<f32> = values(400, 12).iter().map(|v| -v.abs() - 0.5).collect();
    let real = padded.clone();
    padded.resize(640, f32::NEG_INFINITY);
    let mixed = values(1536, 13);
    let mut one_hot = vec![-3.0f32; 960];
    one_hot[959] = -2.5;
    let mut lane_h = vec![-7.0f32; 320];
    // Lanes that are alone in the odd steps (w = 5, 3) hold the maximum.
    lane_h[2] = -1.0;
    let mut cases: Vec<(&str, Vec<f32>, f32)> = Vec::new();
    let fold = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    cases.push(("all negative 640", neg.clone(), fold(&neg)));
    cases.push(("negative, -inf padding", padded, fold(&real)));
    cases.push(("mixed 1536", mixed.clone(), fold(&mixed)));
    cases.push(("last lane of last word", one_hot.clone(), -2.5));
    cases.push(("lane 2", lane_h.clone(), -1.0));
    for lane in [1usize, 2, 4, 159, 160, 161, 319] {
        let mut v = vec![-9.0f32; 320];
        v[lane] = -8.0;
        let (got, _) = run(ReduceOp::Max, &v, 1, Hemisphere::East, Hemisphere::West);
        assert_broadcast(&got, -8.0, &format!("max at lane {lane}"));
    }
    for (name, x, want) in cases {
        let words = (x.len() as u32).div_ceil(320);
        let (got, cycles) = run(ReduceOp::Max, &x, words, Hemisphere::West, Hemisphere::West);
        assert_broadcast(&got, want, name);
        println!("lane_reduce Max {name} ({words} words): {cycles} cycles");
    }
}

/// Nine heads' reductions (SmolLM2's attention heads over 4 words of
/// scores) overlap: together they take fewer cycles than nine times one.
#[test]
fn many_reductions_overlap() {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    for op in [ReduceOp::Sum, ReduceOp::Max] {
        let mut cycles = Vec::new();
        for heads in [1u32, 9] {
            let mut p = ProgramBuilder::new(&target);
            let mut xs = Vec::new();
            let mut outs = Vec::new();
            let mut data = Vec::new();
            for h in 0..heads {
                let hx = if h % 2 == 0 {
                    Hemisphere::West
                } else {
                    Hemisphere::East
                };
                let x = p.buffer(&format!("x{h}"), DType::F32, 1280, hx).unwrap();
                let o = p.buffer(&format!("o{h}"), DType::F32, 320, hx).unwrap();
                let v: Vec<f32> = values(1280, 100 + h).iter().map(|v| v - 20.0).collect();
                p.init(&x, DType::F32, v.iter().map(|v| v.to_bits()).collect());
                p.symbol(
                    &format!("o{h}"),
                    q35_isa::SymbolKind::Output,
                    DType::F32,
                    vec![320],
                    &o,
                );
                xs.push(x);
                outs.push(o);
                data.push(v);
            }
            let jobs: Vec<ReduceJob<'_>> = xs
                .iter()
                .zip(&outs)
                .map(|(x, out)| ReduceJob { x, words: 4, out })
                .collect();
            lane_reduce_many(&mut p, "softmax", op, &jobs, 0).unwrap();
            let built = p.finish();
            let (done, bin) = common::run(&built, &target);
            assert_eq!(
                done.profile.total_cycles(),
                built.cycles,
                "predicted cycles"
            );
            for (h, v) in data.iter().enumerate() {
                let got = common::f32_symbol(&done, &bin, &format!("o{h}"));
                let want = match op {
                    ReduceOp::Sum => semantics::lane_sum(v),
                    ReduceOp::Max => v.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                };
                assert_broadcast(&got, want, &format!("{op:?} head {h}"));
            }
            cycles.push(built.cycles);
        }
        println!(
            "lane_reduce {op:?} of 4 words: one {} cycles, nine {} cycles",
            cycles[0], cycles[1]
        );
        // The scheduler fills the SXM and VXM cycles one reduction leaves
        // free with the others' (queues book intervals).
        assert!(cycles[1] < 9 * cycles[0], "{cycles:?}");
    }
}
