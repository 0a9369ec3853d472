//! The quantized matmul on the simulator: `y` bit for bit equal to the
//! contract's `QuantizedMatrix::matvec`, the predicted cycle count equal to
//! the simulated one, on SmolLM2's shapes and edge cases.

mod common;

use half::f16;
use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::matmul::{matmul, matmul_tokens, place_weight, place_weight_tokens};
use q35_contract::{ActivationI8, Layout, QuantScheme, QuantizedMatrix};
use q35_isa::{DType, Hemisphere, Instruction, QueueKind};
use q35_target::Target;

/// splitmix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo + 1) as u64) as i32
    }
    fn f32(&mut self, amp: f32) -> f32 {
        (self.below(2_000_001) as f32 / 1_000_000.0 - 1.0) * amp
    }
}

/// How the codes of a test matrix are chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Codes {
    /// Uniform in each channel's range.
    Random,
    /// The most negative code everywhere (integer weight -128 with
    /// multipliers (16, 32)).
    Min,
}

fn matrix(
    rows: usize,
    cols: usize,
    g: usize,
    scheme: QuantScheme,
    mults: (u8, u8),
    codes_kind: Codes,
    seed: u64,
) -> QuantizedMatrix {
    let mut rng = Rng(seed);
    let layout = Layout::new(rows, cols, g).expect("layout");
    let cp = layout.cols_padded();
    // Slot mask: exactly half of each padded group 4-bit, shuffled.
    let mut four = vec![false; cp];
    for gi in 0..layout.n_groups() {
        let start = layout.group_start(gi);
        let plen = layout.group_padded_len(gi);
        let mut idx: Vec<usize> = (0..plen).collect();
        for i in (1..plen).rev() {
            idx.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &o in &idx[..plen / 2] {
            four[start + o] = true;
        }
    }
    if scheme == QuantScheme::Q35Alternating {
        for (j, f) in four.iter_mut().enumerate() {
            *f = j.is_multiple_of(2);
        }
    }
    let mut codes = vec![0i8; rows * cp];
    for r in 0..rows {
        for gi in 0..layout.n_groups() {
            let start = layout.group_start(gi);
            for j in start..start + layout.group_len(gi) {
                let (lo, hi) = if four[j] { (-8, 7) } else { (-4, 3) };
                codes[r * cp + j] = match codes_kind {
                    Codes::Random => rng.range(lo, hi) as i8,
                    Codes::Min => lo as i8,
                };
            }
        }
    }
    let n_scales = rows * layout.n_groups();
    let scales: Vec<f16> = (0..n_scales)
        .map(|i| match (codes_kind, i % 97) {
            (Codes::Min, _) => f16::from_f32(0.001),
            (_, 0) => f16::from_f32(-0.0),
            (_, 1) => f16::ZERO,
            _ => f16::from_f32(rng.f32(0.02)),
        })
        .collect();
    let mask = match scheme {
        QuantScheme::Q35 | QuantScheme::Q35Rtn => Some(four.as_slice()),
        _ => None,
    };
    QuantizedMatrix::from_codes(layout, scheme, mults, &codes, &scales, mask).expect("matrix")
}

/// The quantize kernel's outputs on the host (docs/q35-format.md 8.1):
/// `xs_i = x_i * (127 / amax)`, all zeros for a zero token.
fn xs_of(x: &[f32]) -> Vec<f32> {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax < q35_contract::semantics::ACT_ZERO_BELOW {
        return vec![0.0; x.len()];
    }
    let inv = 127.0 / amax;
    x.iter().map(|&v| v * inv).collect()
}

#[derive(Clone)]
struct Case {
    rows: usize,
    cols: usize,
    g: usize,
    scheme: QuantScheme,
    mults: (u8, u8),
    codes: Codes,
    /// One activation per token (several: streamed through each installed
    /// tile by `matmul_tokens`).
    x: Vec<Vec<f32>>,
    planes: Vec<u16>,
}

/// The issue cycles of every `mm` of `program`, per MXM plane (walking
/// each plane's instruction list: `nop` and `repeat` included).
fn mm_cycles(program: &q35_isa::Program) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for (q, list) in &program.queues {
        let QueueKind::Mxm(plane) = q.kind() else {
            continue;
        };
        let plane = usize::from(plane);
        if out.len() <= plane {
            out.resize(plane + 1, Vec::new());
        }
        let (mut t, mut prev_mm) = (0u64, false);
        for ins in list {
            match ins {
                Instruction::Mm { .. } => {
                    out[plane].push(t);
                    prev_mm = true;
                }
                Instruction::Repeat { n, d, .. } => {
                    if prev_mm {
                        for k in 0..u64::from(*n) {
                            out[plane].push(t + k * u64::from(*d));
                        }
                    }
                }
                other => prev_mm = other.unit() == q35_isa::Unit::Control && prev_mm,
            }
            t += ins.issue_cycles();
        }
    }
    out
}

/// What one run measured.
struct Run {
    cycles: u64,
    tiles: usize,
    /// `mm` issue cycles per plane.
    mms: Vec<Vec<u64>>,
}

/// Builds, runs and checks one matmul.
fn check(case: &Case, seed: u64) -> Run {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let m = matrix(
        case.rows,
        case.cols,
        case.g,
        case.scheme,
        case.mults,
        case.codes,
        seed,
    );
    let tokens = case.x.len();
    let mut want = Vec::new();
    let mut xs = Vec::new();
    let mut scales = Vec::new();
    for x in &case.x {
        let act = ActivationI8::quantize(x).expect("finite activation");
        want.push(m.matvec(&act).expect("matvec"));
        let xk = xs_of(x);
        for (i, (&v, &q)) in xk.iter().zip(act.codes()).enumerate() {
            assert_eq!(
                (v.round().clamp(-127.0, 127.0)) as i8,
                q,
                "host xs element {i}"
            );
        }
        // Token k's vector starts at word k * ceil(cols / 320).
        let words = case.cols.div_ceil(320) * 320;
        xs.extend(xk.iter().map(|v| v.to_bits()));
        xs.resize(xs.len() + words - case.cols, 0);
        scales.extend(std::iter::repeat_n(act.scale().to_bits(), 320));
    }
    let y_words = case.rows.div_ceil(320) * 320;
    let mut p = ProgramBuilder::new(&target);
    let xb = p
        .buffer("xs", DType::F32, xs.len() as u64, Hemisphere::West)
        .unwrap();
    let sb = p
        .buffer("scale", DType::F32, scales.len() as u64, Hemisphere::East)
        .unwrap();
    let yb = p
        .buffer("y", DType::F32, (tokens * y_words) as u64, Hemisphere::East)
        .unwrap();
    p.init(&xb, DType::F32, xs);
    p.init(&sb, DType::F32, scales);
    p.symbol(
        "y",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![(tokens * y_words) as u32],
        &yb,
    );
    let w = if tokens == 1 {
        place_weight(&mut p, "w", &m, &case.planes).expect("placed")
    } else {
        place_weight_tokens(&mut p, "w", &m, &case.planes, tokens as u32).expect("placed")
    };
    let tiles = w.tiles.len();
    if tokens == 1 {
        matmul(&mut p, "matmul", &xb, &sb, &w, &yb, 0).expect("scheduled");
    } else {
        // One view of each buffer per token.
        let view = |b: &q35_codegen::Buffer, k: usize, words: usize| q35_codegen::Buffer {
            name: format!("{}[{k}]", b.name),
            slices: b.slices.clone(),
            addr: b.addr + (k * words) as u32,
            words: words as u32,
        };
        let (xw, yw) = (case.cols.div_ceil(320), case.rows.div_ceil(320));
        let xv: Vec<_> = (0..tokens).map(|k| view(&xb, k, xw)).collect();
        let sv: Vec<_> = (0..tokens).map(|k| view(&sb, k, 1)).collect();
        let yv: Vec<_> = (0..tokens).map(|k| view(&yb, k, yw)).collect();
        matmul_tokens(&mut p, "matmul", &xv, &sv, &w, &yv, 0).expect("scheduled");
    }
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    let got = common::f32_symbol(&done, &bin, "y");
    let shape = format!("{}x{} G={}", case.rows, case.cols, case.g);
    for (k, want) in want.iter().enumerate() {
        for r in 0..case.rows {
            let g = got[k * y_words + r];
            assert_eq!(
                g.to_bits(),
                want[r].to_bits(),
                "{shape}: token {k} row {r}: got {g} want {}",
                want[r]
            );
        }
    }
    assert_eq!(
        done.profile.total_cycles(),
        built.cycles,
        "{shape}: predicted cycles"
    );
    let mms = mm_cycles(&built.program);
    assert_eq!(
        mms.iter().map(Vec::len).sum::<usize>(),
        tiles * tokens,
        "{shape}: one mm per tile and token"
    );
    Run {
        cycles: built.cycles,
        tiles,
        mms,
    }
}

fn activation(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.f32(3.0)).collect()
}

/// Prints the cycles and the tile rate against the plane's bound
/// (docs/mxm-timing.md 2): a plane installs a tile's `L` rows in `L / 16`
/// cycles and swaps in 1, and a load may start only `d(L)` cycles after the
/// vector two tiles back (both buffers alternate), so a plane runs at most
/// two tiles per `L / 16 + 1 + d(L)` cycles.
fn report(shape: &str, g: u32, run: &Run) {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mach = q35_codegen::Mach::new(&target);
    let bound = (f64::from(g / 16) + mach.swap as f64 + mach.reuse_delay(g) as f64) / 2.0;
    let used: Vec<&Vec<u64>> = run.mms.iter().filter(|v| !v.is_empty()).collect();
    let first = used
        .iter()
        .filter_map(|v| v.first())
        .min()
        .copied()
        .unwrap_or(0);
    let last = used
        .iter()
        .filter_map(|v| v.last())
        .max()
        .copied()
        .unwrap_or(0);
    let per_plane: Vec<String> = used
        .iter()
        .map(|v| {
            let gaps = v.len().saturating_sub(1).max(1) as f64;
            format!(
                "{}@{:.1}",
                v.len(),
                (v.last().unwrap_or(&0) - v.first().unwrap_or(&0)) as f64 / gaps
            )
        })
        .collect();
    println!(
        "matmul {shape}: {} cycles, {} tiles on {} planes ({:.1} cycles per tile overall); \
         mm issues {first}..={last}; per plane tiles@cycles between mm: {}; plane bound {bound:.1} cycles per tile",
        run.cycles,
        run.tiles,
        used.len(),
        run.cycles as f64 / run.tiles as f64,
        per_plane.join(" "),
    );
}

const ALL: [u16; 4] = [0, 1, 2, 3];

#[test]
fn smollm2_shapes_are_exact_and_predicted() {
    for (i, (rows, cols)) in [(576, 576), (192, 576), (1536, 576), (576, 1536)]
        .into_iter()
        .enumerate()
    {
        let case = Case {
            rows,
            cols,
            g: 128,
            scheme: QuantScheme::Q35,
            mults: (4, 7),
            codes: Codes::Random,
            x: vec![activation(cols, 100 + i as u64)],
            planes: ALL.to_vec(),
        };
        let run = check(&case, 7 + i as u64);
        report(&format!("{rows}x{cols} G=128"), 128, &run);
    }
}

#[test]
fn ragged_and_straddling_groups() {
    // 100 x 200, G = 64: groups of 64, 64, 64 and 8 (padded to 16), one
    // partial column tile; q35-alternating (no stored mask).
    let case = Case {
        rows: 100,
        cols: 200,
        g: 64,
        scheme: QuantScheme::Q35Alternating,
        mults: (1, 2),
        codes: Codes::Random,
        x: vec![activation(200, 3)],
        planes: ALL.to_vec(),
    };
    let run = check(&case, 11);
    report("100x200 G=64", 64, &run);
    // 130 x 330, G = 48: group 6 (channels 288..330, padded to 336)
    // straddles the 320-lane word boundary; q35-rtn, two planes.
    let case = Case {
        rows: 130,
        cols: 330,
        g: 48,
        scheme: QuantScheme::Q35Rtn,
        mults: (3, 5),
        codes: Codes::Random,
        x: vec![activation(330, 4)],
        planes: vec![1, 2],
    };
    let run = check(&case, 12);
    report("130x330 G=48", 48, &run);
    // 400 x 700, G = 96 on one east plane: groups 288..384 and 576..672
    // straddle word boundaries, the last group (672..700) is 28 channels
    // padded to 32.
    let case = Case {
        rows: 400,
        cols: 700,
        g: 96,
        scheme: QuantScheme::Q35,
        mults: (5, 9),
        codes: Codes::Random,
        x: vec![activation(700, 5)],
        planes: vec![3],
    };
    let run = check(&case, 13);
    report("400x700 G=96", 96, &run);
}

#[test]
fn zero_activation_gives_zero() {
    let case = Case {
        rows: 576,
        cols: 576,
        g: 128,
        scheme: QuantScheme::Q35,
        mults: (4, 7),
        codes: Codes::Random,
        x: vec![vec![0.0; 576]],
        planes: ALL.to_vec(),
    };
    check(&case, 21);
}

#[test]
fn largest_accumulator_does_not_overflow() {
    // Every integer weight -128 (codes -8 x 16 and -4 x 32) against every
    // activation code 127: |acc| = 128 * 127 * 128 per group of 128, far
    // inside int32 (docs/q35-format.md 8.3); the plane checks every partial
    // sum and would stop the run on an overflow.
    let mut x = vec![1.0f32; 576];
    x[5] = -1.0;
    let case = Case {
        rows: 576,
        cols: 576,
        g: 128,
        scheme: QuantScheme::Q35,
        mults: (16, 32),
        codes: Codes::Min,
        x: vec![x],
        planes: ALL.to_vec(),
    };
    check(&case, 31);
}

#[test]
fn tokens_stream_through_one_install() {
    // Several tokens through each installed tile: every token's row bit
    // for bit its own matvec (a zero token among them), and the tiles'
    // installs paid once: fewer cycles than one matmul per token.
    for (i, (rows, cols, g, planes, tokens)) in [
        (576, 576, 128, ALL.to_vec(), 8usize),
        (1536, 576, 128, ALL.to_vec(), 4),
        (130, 330, 48, vec![1, 2], 5),
    ]
    .into_iter()
    .enumerate()
    {
        let scheme = if g == 48 {
            QuantScheme::Q35Rtn
        } else {
            QuantScheme::Q35
        };
        let mut x: Vec<Vec<f32>> = (0..tokens)
            .map(|k| activation(cols, 200 + 10 * i as u64 + k as u64))
            .collect();
        x[1] = vec![0.0; cols];
        let many = Case {
            rows,
            cols,
            g,
            scheme,
            mults: (4, 7),
            codes: Codes::Random,
            x: x.clone(),
            planes: planes.clone(),
        };
        let one = Case {
            x: vec![x[0].clone()],
            ..many.clone()
        };
        let run_many = check(&many, 40 + i as u64);
        let run_one = check(&one, 40 + i as u64);
        println!(
            "{rows}x{cols} G={g}: {tokens} tokens in {} cycles, one token in {} ({:.1} cycles a token)",
            run_many.cycles,
            run_one.cycles,
            run_many.cycles as f64 / tokens as f64
        );
        assert!(
            run_many.cycles < tokens as u64 * run_one.cycles,
            "{rows}x{cols}: {tokens} tokens took {} cycles, one took {}",
            run_many.cycles,
            run_one.cycles
        );
    }
}
