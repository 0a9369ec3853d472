//! The MXM plane models against hand-checked examples, against each other
//! (differential: every output, emit cycle and first hazard), and the
//! tiling against a plain integer matmul and its closed cycle formula.

use proptest::prelude::*;
use q35_sim::mxm::{
    Buffering, Command, Cycle, Hazard, HazardKind, MatmulShape, Output, OverflowSite, PlaneConfig,
    RunResult, TiledMatmul, WeightTile, predicted_cycles, reference_matmul, run_fast, run_pe,
};

fn cfg(rows: usize, cols: usize, rate: usize, swap: u64, hop: u64, acc_bits: u32) -> PlaneConfig {
    PlaneConfig {
        rows,
        cols,
        install_rows_per_cycle: rate,
        swap_cycles: swap,
        pe_hop_cycles: hop,
        acc_bits,
    }
}

fn load(rows: usize, cols: usize, data: &[i8]) -> Command {
    Command::LoadWeights(WeightTile::new(rows, cols, data.to_vec()).unwrap())
}

fn mul(x: &[i8], accumulate: bool) -> Command {
    Command::Multiply {
        vector: x.to_vec(),
        accumulate,
    }
}

/// Runs both models, asserts they agree exactly, returns the result.
fn both(config: &PlaneConfig, program: &[(Cycle, Command)]) -> RunResult {
    let fast = run_fast(config, program).unwrap();
    let pe = run_pe(config, program).unwrap();
    assert_eq!(fast, pe, "fast (left) and PE-level (right) models differ");
    fast
}

fn out(cycle: Cycle, command: usize, values: &[i32]) -> Output {
    Output {
        cycle,
        command,
        values: values.to_vec(),
    }
}

fn hazard(cycle: Cycle, command: usize, kind: HazardKind) -> Option<Hazard> {
    Some(Hazard {
        cycle,
        command,
        kind,
    })
}

// ---------------------------------------------------------------- hand-checked

/// 2x2, one row a cycle, hop 1, swap 1. W = [[1, 2], [3, 4]]:
/// load 0..2 (rows at cycles 0 and 1), swap at 2 (ends 3), multiply at 3:
/// col 0 = 1*5 + 3*6 = 23, col 1 = 2*5 + 4*6 = 34, emitted at
/// 3 + (2+2-1)*1 + 1 = 7. Then x = [1, 1] accumulated at 4: [27, 40] at 8.
#[test]
fn two_by_two_exact_cycles() {
    let c = cfg(2, 2, 1, 1, 1, 32);
    assert_eq!(c.latency(), 4);
    assert_eq!(c.array_span(), 2);
    let program = vec![
        (0, load(2, 2, &[1, 2, 3, 4])),
        (2, Command::Swap),
        (3, mul(&[5, 6], false)),
        (4, mul(&[1, 1], true)),
        (5, mul(&[-1, 0], false)),
    ];
    let r = both(&c, &program);
    assert_eq!(r.hazard, None);
    assert_eq!(
        r.outputs,
        vec![
            out(7, 2, &[23, 34]),
            out(8, 3, &[27, 40]),
            out(9, 4, &[-1, -2]),
        ]
    );
    assert_eq!(r.end_cycle, 9);
}

/// The same plane, each hazard at its exact cycle.
#[test]
fn two_by_two_hazards() {
    let c = cfg(2, 2, 1, 1, 1, 32);
    let w = [1, 2, 3, 4];
    // Swap at 1: the load writes rows at 0 and 1, finished at 2.
    let r = both(&c, &[(0, load(2, 2, &w)), (1, Command::Swap)]);
    assert_eq!(r.hazard, hazard(1, 1, HazardKind::SwapBeforeLoadDone));
    // Multiply at 2 while the swap issued at 2 runs (it ends at 3).
    let r = both(
        &c,
        &[
            (0, load(2, 2, &w)),
            (2, Command::Swap),
            (2, mul(&[1, 1], false)),
        ],
    );
    assert_eq!(r.hazard, hazard(2, 2, HazardKind::MultiplyDuringSwap));
    // The vector issued at 4 is in the array during 4 ..= 6: a swap at 6
    // is refused, at 7 it is fine.
    let base = vec![
        (0, load(2, 2, &w)),
        (2, Command::Swap),
        (4, mul(&[1, 1], false)),
        (4, load(2, 2, &[0, 0, 0, 1])),
    ];
    let mut p = base.clone();
    p.push((6, Command::Swap));
    let r = both(&c, &p);
    assert_eq!(r.hazard, hazard(6, 4, HazardKind::SwapWhileInFlight));
    // Stopped at 6: the output due at 8 never appears.
    assert!(r.outputs.is_empty());
    assert_eq!(r.end_cycle, 6);
    let mut p = base.clone();
    p.push((7, Command::Swap));
    p.push((8, mul(&[0, 3], false)));
    let r = both(&c, &p);
    assert_eq!(r.hazard, None);
    assert_eq!(r.outputs, vec![out(8, 2, &[4, 6]), out(12, 5, &[0, 3])]);
    // Two vectors in one cycle.
    let r = both(
        &c,
        &[
            (0, load(2, 2, &w)),
            (2, Command::Swap),
            (3, mul(&[1, 1], false)),
            (3, mul(&[1, 1], false)),
        ],
    );
    assert_eq!(r.hazard, hazard(3, 3, HazardKind::MultiplyPortBusy));
    // A load during a load, a load during a swap, a swap with nothing new.
    let r = both(&c, &[(0, load(2, 2, &w)), (1, load(1, 2, &[1, 1]))]);
    assert_eq!(r.hazard, hazard(1, 1, HazardKind::LoadWhileLoading));
    let r = both(
        &c,
        &[
            (0, load(2, 2, &w)),
            (2, Command::Swap),
            (2, load(1, 2, &[1, 1])),
        ],
    );
    assert_eq!(r.hazard, hazard(2, 2, HazardKind::LoadDuringSwap));
    let r = both(
        &c,
        &[(0, load(2, 2, &w)), (2, Command::Swap), (9, Command::Swap)],
    );
    assert_eq!(r.hazard, hazard(9, 2, HazardKind::SwapWithoutLoad));
    let r = both(&c, &[(5, Command::Swap)]);
    assert_eq!(r.hazard, hazard(5, 0, HazardKind::SwapWithoutLoad));
}

/// 3x3 with a 2-cycle hop and a ragged 2-row load (row 2 is zero):
/// latency (3+3-1)*2 + 1 = 11; three vectors back to back.
#[test]
fn three_by_three_hop_two() {
    let c = cfg(3, 3, 2, 2, 2, 32);
    assert_eq!(c.latency(), 11);
    let w = [1, -2, 3, -128, 5, 7];
    let program = vec![
        // Load of 2 rows at 2 rows/cycle: cycle 0 only, done at 1.
        (0, load(2, 3, &w)),
        (1, Command::Swap),
        // The swap runs during 1..3.
        (3, mul(&[1, 1, 100], false)),
        (4, mul(&[-128, 127, 0], false)),
        (5, mul(&[2, 0, 0], true)),
    ];
    let r = both(&c, &program);
    assert_eq!(r.hazard, None);
    // x . W: col 0 = x0*1 + x1*(-128); col 1 = -2 x0 + 5 x1; col 2 = 3 x0 + 7 x1.
    assert_eq!(
        r.outputs,
        vec![
            out(14, 2, &[-127, 3, 10]),
            out(15, 3, &[-128 - 128 * 127, 256 + 635, -384 + 889]),
            out(16, 4, &[-16384 + 2, 891 - 4, 505 + 6]),
        ]
    );
}

/// 1x1: latency 2; a vector issued at t computes at t, reaches the
/// accumulator at t + 1 and is emitted at t + 2.
#[test]
fn one_by_one() {
    let c = cfg(1, 1, 1, 1, 1, 32);
    let r = both(
        &c,
        &[
            (0, load(1, 1, &[-128])),
            (1, Command::Swap),
            (2, mul(&[-128], false)),
            (3, mul(&[-128], true)),
            (4, mul(&[127], true)),
        ],
    );
    assert_eq!(r.hazard, None);
    assert_eq!(
        r.outputs,
        vec![
            out(4, 2, &[16384]),
            out(5, 3, &[32768]),
            out(6, 4, &[32768 - 16256])
        ]
    );
}

// ------------------------------------------------------------------- overflow

/// acc_bits = 16: a partial sum of PE(1, 0) overflows at t + 1, an
/// accumulator at t + R.
#[test]
fn overflow_small_accumulator() {
    let c = cfg(2, 2, 2, 1, 1, 16);
    let w = [-128, 1, -128, 1];
    let base = vec![(0, load(2, 2, &w)), (1, Command::Swap)];
    // 16384 + 16384 = 32768 > 32767 in PE(1, 0) at 2 + (1 + 0).
    let mut p = base.clone();
    p.push((2, mul(&[-128, -128], false)));
    let r = both(&c, &p);
    assert_eq!(
        r.hazard,
        hazard(
            3,
            2,
            HazardKind::AccumulatorOverflow {
                column: 0,
                site: OverflowSite::PartialSum { row: 1 }
            }
        )
    );
    // Just inside: 16384 + 16256 = 32640, then 32640 - 128.
    let mut p = base.clone();
    p.push((2, mul(&[-128, -127], false)));
    p.push((3, mul(&[0, 1], true)));
    let r = both(&c, &p);
    assert_eq!(r.hazard, None);
    assert_eq!(r.outputs[1].values, vec![32640 - 128, -255 + 1]);
    // Negative side: -32512 - 256 = -32768 would fit, -32512 - 384 does not.
    let mut p = base.clone();
    p.push((2, mul(&[127, 127], false)));
    p.push((3, mul(&[2, 1], true)));
    let r = both(&c, &p);
    // The accumulator of column 0 takes vector 3 at 3 + R*h = 5.
    assert_eq!(
        r.hazard,
        hazard(
            5,
            3,
            HazardKind::AccumulatorOverflow {
                column: 0,
                site: OverflowSite::Accumulator
            }
        )
    );
    // Vector 2 is emitted at 2 + 4 = 6, after the stop: nothing emitted.
    assert!(r.outputs.is_empty());
}

/// acc_bits = 32 on a 32x32 plane: every vector adds 32 * 16384 = 2^19 to
/// every column, so the 4096th accumulated vector reaches 2^31 and
/// overflows in column 0's accumulator first.
#[test]
fn overflow_int32_accumulate() {
    let c = cfg(32, 32, 32, 1, 1, 32);
    let mut p = vec![(0, load(32, 32, &[-128; 32 * 32])), (1, Command::Swap)];
    for v in 0..4100u64 {
        p.push((2 + v, mul(&[-128; 32], v > 0)));
    }
    let r = both(&c, &p);
    let t = 2 + 4095;
    assert_eq!(
        r.hazard,
        hazard(
            t + 32,
            4097,
            HazardKind::AccumulatorOverflow {
                column: 0,
                site: OverflowSite::Accumulator
            }
        )
    );
    // The last vector emitted before the stop (at t + 31, latency 64) is
    // vector 4062 (command 4064): 4063 * 2^19 in every column.
    let last = r.outputs.last().unwrap();
    assert_eq!((last.cycle, last.command), (t + 31, 4064));
    assert_eq!(last.values, vec![4063 << 19; 32]);
}

// -------------------------------------------------------------------- tiling

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_i8(state: &mut u64, n: usize) -> Vec<i8> {
    (0..n).map(|_| splitmix(state) as i8).collect()
}

/// The worked example of docs/mxm-timing.md: 576 x 1536 on lpu-v1's
/// 320x320 plane, decode (M = 1) and prefill (M = 64), both bufferings.
#[test]
fn worked_example_lpu_v1() {
    let c = PlaneConfig::LPU_V1;
    let expected = [
        (1, Buffering::Single, 6491),
        (1, Buffering::Double, 6411),
        (64, Buffering::Single, 7121),
        (64, Buffering::Double, 7041),
    ];
    let mut s = 7;
    for (m, buffering, cycles) in expected {
        let shape = MatmulShape { m, k: 576, n: 1536 };
        assert_eq!(predicted_cycles(&c, &shape, buffering).unwrap(), cycles);
        let a = random_i8(&mut s, m * 576);
        let b = random_i8(&mut s, 576 * 1536);
        let t = TiledMatmul::new(&c, &a, &b, shape, buffering).unwrap();
        assert_eq!(t.scheduled_cycles, cycles);
        let r = run_fast(&c, &t.program).unwrap();
        assert_eq!(r.hazard, None);
        assert_eq!(r.end_cycle, cycles);
        assert_eq!(
            t.assemble(&r).unwrap(),
            reference_matmul(&a, &b, shape).unwrap()
        );
    }
}

fn arb_config() -> impl Strategy<Value = PlaneConfig> {
    (1usize..=32, 1usize..=32, 1u64..=3, 1u64..=2).prop_flat_map(|(rows, cols, swap, hop)| {
        (1usize..=rows + 1).prop_map(move |rate| cfg(rows, cols, rate, swap, hop, 32))
    })
}

fn arb_matmul() -> impl Strategy<Value = (PlaneConfig, MatmulShape, Vec<i8>, Vec<i8>)> {
    arb_config().prop_flat_map(|c| {
        (1usize..=3 * c.rows, 1usize..=3 * c.cols, 1usize..=8).prop_flat_map(move |(k, n, m)| {
            (
                Just(c),
                Just(MatmulShape { m, k, n }),
                proptest::collection::vec(any::<i8>(), m * k),
                proptest::collection::vec(any::<i8>(), k * n),
            )
        })
    })
}

fn buffering() -> impl Strategy<Value = Buffering> {
    prop_oneof![Just(Buffering::Single), Just(Buffering::Double)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Valid schedules: both models agree, nothing is refused, the result is
    /// the integer matmul and the measured cycles are the closed formula.
    #[test]
    fn tiled_matmul_models_agree((c, shape, a, b) in arb_matmul(), buf in buffering()) {
        let t = TiledMatmul::new(&c, &a, &b, shape, buf).unwrap();
        let r = both(&c, &t.program);
        prop_assert_eq!(r.hazard, None);
        let formula = predicted_cycles(&c, &shape, buf).unwrap();
        prop_assert_eq!(t.scheduled_cycles, formula);
        prop_assert_eq!(r.end_cycle, formula);
        prop_assert_eq!(r.outputs.last().map(|o| o.cycle), Some(formula));
        prop_assert_eq!(t.assemble(&r).unwrap(), reference_matmul(&a, &b, shape).unwrap());
    }

    /// Double-buffered schedules are tight: issuing any command but the
    /// first one cycle earlier makes that command the first hazard.
    #[test]
    fn double_buffered_schedule_is_earliest(
        (c, shape, a, b) in arb_matmul(),
        pick in any::<prop::sample::Index>(),
    ) {
        let t = TiledMatmul::new(&c, &a, &b, shape, Buffering::Double).unwrap();
        let i = 1 + pick.index(t.program.len() - 1);
        let mut p = t.program.clone();
        p[i].0 -= 1;
        let r = both(&c, &p);
        let h = r.hazard.expect("an earlier command must be refused");
        prop_assert_eq!((h.cycle, h.command), (p[i].0, i));
    }

    /// Perturbed schedules (a command moved, duplicated or dropped): the
    /// models agree on every output and the first hazard, whatever it is.
    #[test]
    fn perturbed_schedules_agree(
        (c, shape, a, b) in arb_matmul(),
        buf in buffering(),
        pick in any::<prop::sample::Index>(),
        how in 0u8..4,
        shift in 1u64..40,
    ) {
        let t = TiledMatmul::new(&c, &a, &b, shape, buf).unwrap();
        let mut p = t.program.clone();
        let i = pick.index(p.len());
        match how {
            0 => p[i].0 = p[i].0.saturating_sub(shift),
            1 => p[i].0 += shift,
            2 => { let dup = p[i].clone(); p.insert(i + 1, dup); }
            _ => { p.remove(i); }
        }
        both(&c, &p);
    }
}

// ------------------------------------------------------------ random programs

/// A random timed program on a small plane with a narrow accumulator, so
/// every hazard kind comes up.
fn random_program(s: &mut u64) -> (PlaneConfig, Vec<(Cycle, Command)>) {
    let mut pick = |n: u64| splitmix(s) % n;
    let rows = 1 + pick(6) as usize;
    let cols = 1 + pick(6) as usize;
    let c = cfg(
        rows,
        cols,
        1 + pick(4) as usize,
        1 + pick(3),
        1 + pick(3),
        12 + pick(21) as u32,
    );
    let len = 1 + pick(30);
    let mut cycle = 0;
    let mut program = Vec::new();
    for _ in 0..len {
        cycle += pick(6);
        let kind = pick(10);
        let command = if kind < 3 {
            let n = 1 + pick(rows as u64) as usize;
            let data = (0..n * cols)
                .map(|_| {
                    let v = pick(1024);
                    if v < 256 { -128 } else { v as i8 }
                })
                .collect();
            Command::LoadWeights(WeightTile::new(n, cols, data).unwrap())
        } else if kind < 5 {
            Command::Swap
        } else {
            let vector = (0..rows)
                .map(|_| {
                    let v = pick(1024);
                    if v < 256 { -128 } else { v as i8 }
                })
                .collect();
            Command::Multiply {
                vector,
                accumulate: pick(3) != 0,
            }
        };
        program.push((cycle, command));
    }
    (c, program)
}

/// 3,000 random programs: the models agree on every one, and between them
/// the programs provoke every hazard kind (so the agreement is not vacuous).
#[test]
fn random_programs_agree_and_cover_every_hazard() {
    let mut s = 0x35;
    let mut seen = [0usize; 9];
    let mut outputs = 0;
    for _ in 0..3000 {
        let (c, p) = random_program(&mut s);
        let r = both(&c, &p);
        outputs += r.outputs.len();
        let slot = match r.hazard.map(|h| h.kind) {
            None => 0,
            Some(HazardKind::SwapWhileInFlight) => 1,
            Some(HazardKind::SwapBeforeLoadDone) => 2,
            Some(HazardKind::SwapWithoutLoad) => 3,
            Some(HazardKind::LoadWhileLoading) => 4,
            Some(HazardKind::LoadDuringSwap) => 5,
            Some(HazardKind::MultiplyDuringSwap) => 6,
            Some(HazardKind::MultiplyPortBusy) => 7,
            Some(HazardKind::AccumulatorOverflow { .. }) => 8,
        };
        seen[slot] += 1;
    }
    eprintln!("outcomes (none, then each kind): {seen:?}, {outputs} outputs");
    assert!(outputs > 1000);
    assert!(seen.iter().all(|&n| n > 0), "hazard coverage {seen:?}");
}

/// Bad input is a typed error from both models, never a panic.
#[test]
fn bad_input_is_an_error() {
    let c = cfg(2, 2, 1, 1, 1, 32);
    let bad = [
        vec![(0, load(3, 2, &[0; 6]))],
        vec![(0, load(2, 3, &[0; 6]))],
        vec![(0, mul(&[1], false))],
    ];
    for p in &bad {
        assert!(run_fast(&c, p).is_err());
        assert!(run_pe(&c, p).is_err());
    }
    assert!(WeightTile::new(2, 2, vec![0; 3]).is_err());
    for broken in [
        cfg(0, 2, 1, 1, 1, 32),
        cfg(2, 0, 1, 1, 1, 32),
        cfg(2, 2, 0, 1, 1, 32),
        cfg(2, 2, 1, 0, 1, 32),
        cfg(2, 2, 1, 1, 0, 32),
        cfg(2, 2, 1, 1, 1, 33),
    ] {
        assert!(run_fast(&broken, &[]).is_err());
        assert!(run_pe(&broken, &[]).is_err());
    }
    let shape = MatmulShape { m: 2, k: 3, n: 2 };
    assert!(TiledMatmul::new(&c, &[0; 5], &[0; 6], shape, Buffering::Double).is_err());
    assert!(predicted_cycles(&c, &MatmulShape { m: 0, k: 1, n: 1 }, Buffering::Single).is_err());
}

/// The largest plane the PE-level model is meant for: 64x64, two K folds
/// and two output tiles, both bufferings.
#[test]
fn sixty_four_square_plane() {
    let c = cfg(64, 64, 8, 1, 1, 32);
    let shape = MatmulShape {
        m: 3,
        k: 100,
        n: 120,
    };
    let mut s = 64;
    let a = random_i8(&mut s, 3 * 100);
    let b = random_i8(&mut s, 100 * 120);
    for buffering in [Buffering::Single, Buffering::Double] {
        let t = TiledMatmul::new(&c, &a, &b, shape, buffering).unwrap();
        let r = both(&c, &t.program);
        assert_eq!(r.hazard, None);
        assert_eq!(
            r.end_cycle,
            predicted_cycles(&c, &shape, buffering).unwrap()
        );
        assert_eq!(
            t.assemble(&r).unwrap(),
            reference_matmul(&a, &b, shape).unwrap()
        );
    }
}
