//! The MXM plane models against hand-checked examples, against each other
//! (differential: every output, emit cycle and first hazard), and the
//! tiling against a plain integer matmul and its closed cycle formula.

use proptest::prelude::*;
use q35_sim::mxm::{
    Buffering, Command, Cycle, Hazard, HazardKind, MatmulShape, Output, OverflowSite, PlaneConfig,
    RunResult, TiledMatmul, WeightTile, predicted_cycles, reference_matmul, run_fast, run_pe,
};

fn cfg(rows: usize, cols: usize, rate: usize, swap: u64, hop: u64, acc_bits: u32) -> PlaneConfig {
    cfgb(rows, cols, 1, rate, swap, hop, acc_bits)
}

/// A plane of `b x b` PE blocks.
fn cfgb(
    rows: usize,
    cols: usize,
    b: usize,
    rate: usize,
    swap: u64,
    hop: u64,
    acc_bits: u32,
) -> PlaneConfig {
    PlaneConfig {
        rows,
        cols,
        pe_block: b,
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
    // (the load writes at 4 and 5) is no hazard; that vector keeps the old
    // weights, and the one at 7 = 6 + S reads the new ones.
    let p = vec![
        (0, load(2, 2, &w)),
        (2, Command::Swap),
        (4, mul(&[1, 1], false)),
        (4, load(2, 2, &[0, 0, 0, 1])),
        (6, Command::Swap),
        (7, mul(&[0, 3], false)),
    ];
    let r = both(&c, &p);
    assert_eq!(r.hazard, None);
    assert_eq!(r.outputs, vec![out(8, 2, &[4, 6]), out(11, 5, &[0, 3])]);
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

// ---------------------------------------------------- swap wavefront, PE blocks

/// 2x2, one row a cycle, a two-cycle swap. W1 = [[1, 2], [3, 4]] active
/// from 4; W2 = [[5, 6], [7, 8]] loaded at 4 and 5 into the other buffer
/// (nobody has read it). The swap at 7 follows the vectors of 5 and 6
/// (still in the array until 7 and 8) through it: they read W1, the vector
/// issued at 9 = 7 + S reads W2; one issued at 7 after the swap, or at 8,
/// is refused.
#[test]
fn wavefront_swap_keeps_old_weights_for_earlier_vectors() {
    let c = cfg(2, 2, 1, 2, 1, 32);
    let base = vec![
        (0, load(2, 2, &[1, 2, 3, 4])),
        (2, Command::Swap),
        (4, load(2, 2, &[5, 6, 7, 8])),
        (5, mul(&[1, 0], false)),
        (6, mul(&[0, 1], false)),
    ];
    let mut p = base.clone();
    p.push((7, mul(&[1, 1], false)));
    p.push((7, Command::Swap));
    p.push((9, mul(&[1, 1], false)));
    p.push((10, mul(&[1, -1], true)));
    let r = both(&c, &p);
    assert_eq!(r.hazard, None);
    assert_eq!(
        r.outputs,
        vec![
            out(9, 3, &[1, 2]),
            out(10, 4, &[3, 4]),
            // Issued at 7, listed before the swap: the old weights.
            out(11, 5, &[4, 6]),
            out(13, 7, &[12, 14]),
            out(14, 8, &[12 + 5 - 7, 14 + 6 - 8]),
        ]
    );
    for at in [7, 8] {
        let mut p = base.clone();
        p.push((7, Command::Swap));
        p.push((at, mul(&[1, 1], false)));
        let r = both(&c, &p);
        assert_eq!(r.hazard, hazard(at, 6, HazardKind::MultiplyDuringSwap));
    }
}

/// 4x4 in 2x2 PE blocks, hop 1: latency (2 + 2 - 1) + 1 = 4. W1 all ones
/// (x . W1 = sum x in every column), W2 = 2 I. The vector issued the cycle
/// before the swap (3) reads W1, the one at 5 = 4 + S reads W2.
#[test]
fn pe_blocks_and_wavefront_swap() {
    let c = cfgb(4, 4, 2, 4, 1, 1, 32);
    assert_eq!((c.latency(), c.array_span()), (4, 2));
    let ones = [1i8; 16];
    let two_i: Vec<i8> = (0..16).map(|k| if k % 5 == 0 { 2 } else { 0 }).collect();
    let program = vec![
        (0, load(4, 4, &ones)),
        (1, Command::Swap),
        (2, load(4, 4, &two_i)),
        (2, mul(&[1, 2, 3, 4], false)),
        (3, mul(&[1, 1, 1, 1], false)),
        (4, Command::Swap),
        (5, mul(&[1, 2, 3, 4], false)),
        (6, mul(&[1, 1, 1, 1], true)),
    ];
    let r = both(&c, &program);
    assert_eq!(r.hazard, None);
    assert_eq!(
        r.outputs,
        vec![
            out(6, 3, &[10, 10, 10, 10]),
            out(7, 4, &[4, 4, 4, 4]),
            out(9, 6, &[2, 4, 6, 8]),
            out(10, 7, &[4, 6, 8, 10]),
        ]
    );
    // W1's buffer is the shadow now, last read by the vector of 3: PE row
    // I reads it until 3 + (I + C/b - 1) = 4 + I. A full load (one cycle
    // at rate 4) at 5 writes PE row 1 at 5 <= 5: refused at 5; at 6 it is
    // fine. A 2-row load at 5 clears PE row 1 at 5: refused too.
    for (at, rows, expect) in [
        (5, 4, hazard(5, 8, HazardKind::LoadIntoBufferInUse)),
        (5, 2, hazard(5, 8, HazardKind::LoadIntoBufferInUse)),
        (6, 4, None),
    ] {
        let mut p = program.clone();
        p.push((at, load(rows, 4, &vec![1; rows * 4])));
        assert_eq!(both(&c, &p).hazard, expect, "load of {rows} at {at}");
    }
    assert_eq!((c.reuse_delay(4), c.reuse_delay(2)), (3, 3));
}

/// The load hazard at its exact cycle, after the issue: 4x2, one row a
/// cycle, hop 2. The vector of 9 reads W1 at PE row I until
/// 9 + (I + 1) * 2; after the swap at 9 a load into W1's buffer at c
/// writes row I at c + I: a hazard iff c + I <= 11 + 2I, first at row
/// c - 11 (reuse delay 1 + max_I (I + 2) = 6).
#[test]
fn load_into_buffer_in_use_at_its_write_cycle() {
    let c = cfg(4, 2, 1, 1, 2, 32);
    assert_eq!(c.reuse_delay(4), 6);
    assert_eq!(c.latency(), 11);
    let w1 = [1, 2, 3, 4, 5, 6, 7, 8];
    let base = vec![
        (0, load(4, 2, &w1)),
        (4, Command::Swap),
        (5, load(4, 2, &[0; 8])),
        (9, mul(&[1, 1, 1, 1], false)),
        (9, Command::Swap),
    ];
    for (at, expect) in [(13, Some(15)), (14, Some(17)), (15, None)] {
        let mut p = base.clone();
        p.push((at, load(4, 2, &[1, 0, 0, 1, 2, 0, 0, 2])));
        let r = both(&c, &p);
        assert_eq!(
            r.hazard.map(|h| (h.cycle, h.command, h.kind)),
            expect.map(|cycle| (cycle, 5, HazardKind::LoadIntoBufferInUse)),
            "load at {at}"
        );
    }
    // The hazard at 15 stops the plane: a vector due at 16 is not issued,
    // the output of 9 (due at 20) is not emitted.
    let mut p = base.clone();
    p.push((13, load(4, 2, &[0; 8])));
    p.push((16, mul(&[1, 1, 1, 1], false)));
    let r = both(&c, &p);
    assert_eq!(r.hazard, hazard(15, 5, HazardKind::LoadIntoBufferInUse));
    assert!(r.outputs.is_empty());
    // An issue hazard in the same cycle comes first (phase 1 before 2).
    let mut p = base.clone();
    p.push((13, load(4, 2, &[0; 8])));
    p.push((15, Command::Swap));
    let r = both(&c, &p);
    assert_eq!(r.hazard, hazard(15, 6, HazardKind::SwapBeforeLoadDone));
    // At 15 the load is legal; swapped in at 19, it is read from 20.
    let mut p = base.clone();
    p.push((15, load(4, 2, &[1, 0, 0, 1, 2, 0, 0, 2])));
    p.push((19, Command::Swap));
    p.push((20, mul(&[1, 2, 3, 4], false)));
    let r = both(&c, &p);
    assert_eq!(r.hazard, None);
    assert_eq!(
        r.outputs,
        vec![out(20, 3, &[16, 20]), out(31, 7, &[1 + 3 * 2, 2 + 4 * 2])]
    );
}

// ------------------------------------------------------------------- overflow

/// acc_bits = 16 in 2x2 PE blocks: the sum is checked at each block's
/// output, over its two rows. Column 0: 16384 + 16384 = 32768 overflows
/// in PE(0, 0) at t (site: row 1, its bottom MAC row); with b = 1 the same
/// sum overflows in PE(1, 0) at t + 1. Column 2 (PE column 1) at t + 1.
#[test]
fn overflow_at_block_outputs() {
    let w: Vec<i8> = (0..16)
        .map(|k| if k % 4 == 1 || k / 4 >= 2 { 0 } else { -128 })
        .collect();
    let x = [-128, -128, 0, 0];
    for (b, col0_cycle) in [(2, 2), (1, 3)] {
        let c = cfgb(4, 4, b, 4, 1, 1, 16);
        let r = both(
            &c,
            &[(0, load(4, 4, &w)), (1, Command::Swap), (2, mul(&x, false))],
        );
        assert_eq!(
            r.hazard,
            hazard(
                col0_cycle,
                2,
                HazardKind::AccumulatorOverflow {
                    column: 0,
                    site: OverflowSite::PartialSum { row: 1 }
                }
            ),
            "b = {b}"
        );
    }
    // Only column 2 overflowing: PE(0, 1) at 2 + 1 with b = 2.
    let w2: Vec<i8> = (0..16)
        .map(|k| if k % 4 == 2 && k / 4 < 2 { -128 } else { 0 })
        .collect();
    let r = both(
        &cfgb(4, 4, 2, 4, 1, 1, 16),
        &[
            (0, load(4, 4, &w2)),
            (1, Command::Swap),
            (2, mul(&x, false)),
        ],
    );
    assert_eq!(
        r.hazard,
        hazard(
            3,
            2,
            HazardKind::AccumulatorOverflow {
                column: 2,
                site: OverflowSite::PartialSum { row: 1 }
            }
        )
    );
}

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
/// 320x320 plane of 16x16 PE blocks, decode (M = 1) and prefill (M = 64),
/// both bufferings, on both models.
#[test]
fn worked_example_lpu_v1() {
    let c = PlaneConfig::LPU_V1;
    let expected = [
        (1, Buffering::Single, 455),
        (1, Buffering::Double, 252),
        (64, Buffering::Single, 1085),
        (64, Buffering::Double, 690),
    ];
    let mut s = 7;
    for (m, buffering, cycles) in expected {
        let shape = MatmulShape { m, k: 576, n: 1536 };
        assert_eq!(predicted_cycles(&c, &shape, buffering).unwrap(), cycles);
        let a = random_i8(&mut s, m * 576);
        let b = random_i8(&mut s, 576 * 1536);
        let t = TiledMatmul::new(&c, &a, &b, shape, buffering).unwrap();
        assert_eq!(t.scheduled_cycles, cycles);
        let r = both(&c, &t.program);
        assert_eq!(r.hazard, None);
        assert_eq!(r.end_cycle, cycles);
        assert_eq!(
            t.assemble(&r).unwrap(),
            reference_matmul(&a, &b, shape).unwrap()
        );
    }
}

/// A plane of `b x b` blocks, `b` in {1, 2, 4}, `R` and `C` multiples of
/// `b` up to 32.
fn arb_config() -> impl Strategy<Value = PlaneConfig> {
    (
        prop_oneof![Just(1usize), Just(2), Just(4)],
        1u64..=3,
        1u64..=2,
    )
        .prop_flat_map(|(b, swap, hop)| {
            (1..=32 / b, 1..=32 / b).prop_flat_map(move |(br, bc)| {
                let rows = br * b;
                (1usize..=rows + 1).prop_map(move |rate| cfgb(rows, bc * b, b, rate, swap, hop, 32))
            })
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

    /// Double-buffered schedules are the earliest: issuing any command but
    /// the first one cycle earlier is refused (see `assert_earlier_refused`).
    #[test]
    fn double_buffered_schedule_is_earliest(
        (c, shape, a, b) in arb_matmul(),
        pick in any::<prop::sample::Index>(),
    ) {
        let t = TiledMatmul::new(&c, &a, &b, shape, Buffering::Double).unwrap();
        let i = 1 + pick.index(t.program.len() - 1);
        assert_earlier_refused(&c, &t.program, i);
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

/// Moves command `i` of a hazard-free schedule one cycle earlier and
/// checks that this is refused: the moved command is the first hazard, at
/// its new cycle (a load writing a PE row still in use: at that write, one
/// of the load's cycles). The one exception is a swap issued in the cycle
/// of the previous fold's last vector (listed after it, the earliest a swap
/// can be without that vector reading the next fold's weights): moved
/// before it, that vector is issued during the swap (`MultiplyDuringSwap`),
/// or, with a one-cycle swap, just after it, reading the new weights (a
/// different program, no hazard; the models must still agree).
fn assert_earlier_refused(c: &PlaneConfig, program: &[(Cycle, Command)], i: usize) {
    let mut p = program.to_vec();
    let was = p[i].0;
    p[i].0 -= 1;
    let r = both(c, &p);
    // The Multiply the swap follows in its cycle, if any.
    let followed = match p[i].1 {
        Command::Swap => program[..i]
            .iter()
            .rposition(|(at, cmd)| *at == was && matches!(cmd, Command::Multiply { .. })),
        Command::LoadWeights(_) | Command::Multiply { .. } => None,
    };
    match (r.hazard, followed) {
        (Some(h), _) if h.command == i => match (&p[i].1, h.kind) {
            (Command::LoadWeights(tile), HazardKind::LoadIntoBufferInUse) => {
                assert!(
                    (p[i].0..p[i].0 + c.load_cycles(tile.rows())).contains(&h.cycle),
                    "{h}"
                );
            }
            _ => assert_eq!(h.cycle, p[i].0, "{h}"),
        },
        (Some(h), Some(v)) => {
            assert_eq!(
                (h.cycle, h.command, h.kind),
                (was, v, HazardKind::MultiplyDuringSwap)
            );
        }
        (None, Some(_)) => assert_eq!(c.swap_cycles, 1, "command {i} moved to {}", p[i].0),
        (h, None) => panic!("command {i} moved to {}: {h:?}", p[i].0),
    }
}

/// Planes of 16x16 PE blocks (lpu-v1's): the schedule, the formula and
/// both models agree, the product is exact, and every command of the
/// double-buffered schedule is as early as it can be.
#[test]
fn pe_block_16_planes() {
    let mut s = 16;
    for (rows, cols, rate, hop) in [(32, 48, 8, 1), (64, 32, 32, 1), (48, 16, 5, 2)] {
        let c = cfgb(rows, cols, 16, rate, 1, hop, 32);
        for (m, k, n) in [(1, 100, 100), (3, 70, 33), (1, rows, cols * 5)] {
            let shape = MatmulShape { m, k, n };
            let a = random_i8(&mut s, m * k);
            let b = random_i8(&mut s, k * n);
            for buffering in [Buffering::Single, Buffering::Double] {
                let t = TiledMatmul::new(&c, &a, &b, shape, buffering).unwrap();
                let r = both(&c, &t.program);
                assert_eq!(r.hazard, None);
                let formula = predicted_cycles(&c, &shape, buffering).unwrap();
                assert_eq!((t.scheduled_cycles, r.end_cycle), (formula, formula));
                assert_eq!(
                    t.assemble(&r).unwrap(),
                    reference_matmul(&a, &b, shape).unwrap()
                );
                if buffering == Buffering::Double {
                    for i in 1..t.program.len() {
                        assert_earlier_refused(&c, &t.program, i);
                    }
                }
            }
        }
    }
}

/// A long decode chain of independent 320x320 tiles, one vector each, on
/// lpu-v1: after the first, consecutive vectors are 11 and 30 cycles
/// apart in turn (41 cycles per two tiles). A tile's load must wait until
/// the vector two tiles back has left the PE rows it writes
/// (`reuse_delay(320) = 30` after it); then load (10) and swap (1).
#[test]
fn decode_chain_steady_state_lpu_v1() {
    let c = PlaneConfig::LPU_V1;
    let tiles = 24;
    let shape = MatmulShape {
        m: 1,
        k: 320,
        n: 320 * tiles,
    };
    let mut s = 24;
    let a = random_i8(&mut s, 320);
    let b = random_i8(&mut s, 320 * 320 * tiles);
    let t = TiledMatmul::new(&c, &a, &b, shape, Buffering::Double).unwrap();
    let firsts: Vec<Cycle> = t
        .program
        .iter()
        .filter(|(_, cmd)| matches!(cmd, Command::Multiply { .. }))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(firsts[0], 11);
    let gaps: Vec<Cycle> = firsts.windows(2).map(|w| w[1] - w[0]).collect();
    let expected: Vec<Cycle> = (1..tiles)
        .map(|f| if f % 2 == 1 { 11 } else { 30 })
        .collect();
    assert_eq!(gaps, expected);
    // 11 + 12 * 11 + 11 * 30 + 40.
    assert_eq!(
        predicted_cycles(&c, &shape, Buffering::Double).unwrap(),
        513
    );
    let r = both(&c, &t.program);
    assert_eq!(r.end_cycle, 513);
    assert_eq!(
        t.assemble(&r).unwrap(),
        reference_matmul(&a, &b, shape).unwrap()
    );
}

// ------------------------------------------------------------ random programs

/// A random timed program on a small plane with a narrow accumulator, so
/// every hazard kind comes up.
fn random_program(s: &mut u64) -> (PlaneConfig, Vec<(Cycle, Command)>) {
    let mut pick = |n: u64| splitmix(s) % n;
    let b = 1 + pick(3) as usize;
    let most = if b == 1 { 6 } else { 3 };
    let rows = b * (1 + pick(most) as usize);
    let cols = b * (1 + pick(most) as usize);
    let c = cfgb(
        rows,
        cols,
        b,
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
            Some(HazardKind::LoadIntoBufferInUse) => 1,
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
        cfgb(4, 6, 4, 1, 1, 1, 32),
        cfgb(6, 4, 4, 1, 1, 1, 32),
        cfgb(4, 4, 0, 1, 1, 1, 32),
    ] {
        assert!(run_fast(&broken, &[]).is_err());
        assert!(run_pe(&broken, &[]).is_err());
    }
    let shape = MatmulShape { m: 2, k: 3, n: 2 };
    assert!(TiledMatmul::new(&c, &[0; 5], &[0; 6], shape, Buffering::Double).is_err());
    assert!(predicted_cycles(&c, &MatmulShape { m: 0, k: 1, n: 1 }, Buffering::Single).is_err());
}

/// A 64x64 plane of single MACs (the PE-level model's slowest case), two K
/// folds and two output tiles, both bufferings.
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
