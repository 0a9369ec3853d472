//! MXM plane model speed: the fast model's 320x320 matvecs per second, the
//! simulated cycles per host second of a tiled 576 x 1536 decode matvec on
//! lpu-v1 (16x16 PE blocks), and the PE-level model on the same matvec and
//! on a 32x32 plane of single MACs for comparison.
//! Run with `cargo bench -p q35-sim --bench mxm`.

use q35_sim::mxm::{
    Buffering, Command, FastPlane, LoadOutcome, MatmulShape, MultiplyOutcome, PlaneConfig, Step,
    TiledMatmul, WeightTile, run_fast, run_pe,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn random_i8(state: &mut u64, n: usize) -> Vec<i8> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*state >> 56) as i8
        })
        .collect()
}

/// Repeats `f` until at least `min` has passed; returns (calls, seconds).
fn time(min: Duration, mut f: impl FnMut()) -> (u64, f64) {
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < min {
        f();
        calls += 1;
    }
    (calls, start.elapsed().as_secs_f64())
}

fn main() {
    let min = Duration::from_secs(2);
    let mut s = 1u64;

    // 1. Fast model: back-to-back 320x320 matvecs on one loaded plane.
    let c = PlaneConfig::LPU_V1;
    let mut plane = FastPlane::new(c).expect("lpu-v1 config");
    let tile = WeightTile::new(320, 320, random_i8(&mut s, 320 * 320)).expect("tile");
    let issued = LoadOutcome::Issued { in_use: None };
    assert_eq!(plane.load_weights(0, 0, &tile).expect("load"), issued);
    assert_eq!(plane.swap(1, 10).expect("swap"), Step::Done);
    let x = random_i8(&mut s, 320);
    let mut out = vec![0i32; 320];
    let mut cycle = 11;
    let (n, secs) = time(min, || {
        let r = plane
            .multiply(2, cycle, &x, false, &mut out)
            .expect("multiply");
        assert!(matches!(r, MultiplyOutcome::Issued { overflow: None, .. }));
        black_box(&out);
        cycle += 1;
    });
    let per_s = n as f64 / secs;
    println!(
        "fast 320x320 matvec:        {:>12.0} matvecs/s  ({:.2} GMAC/s, {:.2} us each)",
        per_s,
        per_s * 320.0 * 320.0 / 1e9,
        1e6 / per_s
    );

    // 1b. Fast model: a 320-row weight load (transpose into column-major).
    let mut cycle = cycle + 1000;
    let (n, secs) = time(min, || {
        assert_eq!(plane.load_weights(3, cycle, &tile).expect("load"), issued);
        cycle += 10;
    });
    println!(
        "fast 320x320 LoadWeights:   {:>12.0} loads/s    ({:.2} us each, transposing)",
        n as f64 / secs,
        secs / n as f64 * 1e6
    );
    let columns = tile.to_columns();
    let (n, secs) = time(min, || {
        assert_eq!(
            plane.load_columns(3, cycle, &columns).expect("load"),
            issued
        );
        cycle += 10;
    });
    println!(
        "fast 320x320 load_columns:  {:>12.0} loads/s    ({:.2} us each, pre-transposed)",
        n as f64 / secs,
        secs / n as f64 * 1e6
    );

    // 2. Fast model: a whole tiled decode matvec, 576 x 1536, double-buffered.
    let shape = MatmulShape {
        m: 1,
        k: 576,
        n: 1536,
    };
    let a = random_i8(&mut s, 576);
    let b = random_i8(&mut s, 576 * 1536);
    for buffering in [Buffering::Double, Buffering::Single] {
        let t = TiledMatmul::new(&c, &a, &b, shape, buffering).expect("tiling");
        let (n, secs) = time(min, || {
            black_box(run_fast(&c, &t.program).expect("run"));
        });
        let per_s = n as f64 / secs;
        println!(
            "fast 1x576x1536 {:?}:   {:>12.0} matmuls/s, {} cycles each: {:.2} M simulated cycles/s",
            buffering,
            per_s,
            t.scheduled_cycles,
            per_s * t.scheduled_cycles as f64 / 1e6
        );
    }

    // 2b. The same decode matmul as a simulator would drive it: tiles
    // transposed once at program load, one output buffer, no allocation.
    let t = TiledMatmul::new(&c, &a, &b, shape, Buffering::Double).expect("tiling");
    let tiles: Vec<_> = t
        .program
        .iter()
        .filter_map(|(_, cmd)| match cmd {
            Command::LoadWeights(tile) => Some(tile.to_columns()),
            Command::Swap | Command::Multiply { .. } => None,
        })
        .collect();
    let (n, secs) = time(min, || {
        let mut plane = FastPlane::new(c).expect("config");
        let mut next_tile = tiles.iter();
        for (i, (cycle, cmd)) in t.program.iter().enumerate() {
            let ok = match cmd {
                Command::LoadWeights(_) => {
                    let tile = next_tile.next().expect("tile");
                    plane.load_columns(i, *cycle, tile).expect("load") == issued
                }
                Command::Swap => plane.swap(i, *cycle).expect("swap") == Step::Done,
                Command::Multiply { vector, accumulate } => matches!(
                    plane
                        .multiply(i, *cycle, vector, *accumulate, &mut out)
                        .expect("multiply"),
                    MultiplyOutcome::Issued { overflow: None, .. }
                ),
            };
            assert!(ok);
        }
        black_box(&out);
    });
    let per_s = n as f64 / secs;
    println!(
        "fast 1x576x1536 pre-transposed: {:>8.0} matmuls/s, {} cycles each: {:.2} M simulated cycles/s",
        per_s,
        t.scheduled_cycles,
        per_s * t.scheduled_cycles as f64 / 1e6
    );

    // 3. PE-level against fast: the same decode matvec on lpu-v1, and an
    // 8 x 96 x 96 matmul on a 32x32 plane of single MACs.
    let (n_pe, secs_pe) = time(min, || {
        black_box(run_pe(&c, &t.program).expect("run"));
    });
    let pe_cycles = n_pe as f64 / secs_pe * t.scheduled_cycles as f64;
    println!(
        "PE-level lpu-v1 1x576x1536: {:>12.0} simulated cycles/s ({:.0}x slower than pre-transposed fast)",
        pe_cycles,
        per_s * t.scheduled_cycles as f64 / pe_cycles
    );
    let c32 = PlaneConfig {
        rows: 32,
        cols: 32,
        pe_block: 1,
        ..PlaneConfig::LPU_V1
    };
    let shape = MatmulShape { m: 8, k: 96, n: 96 };
    let a = random_i8(&mut s, 8 * 96);
    let b = random_i8(&mut s, 96 * 96);
    let t = TiledMatmul::new(&c32, &a, &b, shape, Buffering::Double).expect("tiling");
    let cycles = t.scheduled_cycles as f64;
    let (n_pe, secs_pe) = time(min, || {
        black_box(run_pe(&c32, &t.program).expect("run"));
    });
    let (n_fast, secs_fast) = time(min, || {
        black_box(run_fast(&c32, &t.program).expect("run"));
    });
    let pe_cycles = n_pe as f64 / secs_pe * cycles;
    let fast_cycles = n_fast as f64 / secs_fast * cycles;
    println!(
        "PE-level 32x32 b=1, 8x96x96: {:>11.0} simulated cycles/s ({:.1} M MAC-steps/s)",
        pe_cycles,
        pe_cycles * 1024.0 / 1e6
    );
    println!(
        "fast     32x32 b=1, 8x96x96: {:>11.0} simulated cycles/s ({:.0}x the PE-level model)",
        fast_cycles,
        fast_cycles / pe_cycles
    );
}
