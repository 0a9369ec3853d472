//! The KV cache write and whole-context masked attention on the simulator:
//! values bit-exact with the contract (`attention_head` over positions
//! `0 ..= pos`), predicted cycles equal to simulated ones, no hazard.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::attention;
use q35_contract::semantics;
use q35_isa::{DType, Hemisphere};
use q35_target::Target;

const HEADS: u32 = 9;
const KV_HEADS: u32 = 3;
const HD: u32 = 64;
const KV_DIM: u32 = KV_HEADS * HD;

/// Deterministic values in `[-amp, amp)`.
fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                .rotate_left(7)
                % 20000;
            (x as f32 / 10000.0 - 1.0) * amp
        })
        .collect()
}

struct Case {
    ctx: u32,
    pos: u32,
    /// Keys and values per position (`ctx` of them, the ones past `pos`
    /// being garbage the kernel must ignore).
    keys: Vec<Vec<f32>>,
    vals: Vec<Vec<f32>>,
    q: Vec<f32>,
}

impl Case {
    fn new(ctx: u32, pos: u32, seed: u32) -> Case {
        let keys = (0..ctx)
            .map(|t| values(KV_DIM as usize, seed * 1000 + t, 2.0))
            .collect();
        let vals = (0..ctx)
            .map(|t| values(KV_DIM as usize, seed * 7000 + t + 3, 3.0))
            .collect();
        let mut q = values((HEADS * HD) as usize, seed + 99, 2.0);
        // A head whose scores are all +-0.0 and one with huge scores.
        if seed.is_multiple_of(2) {
            for d in 0..HD {
                q[(2 * HD + d) as usize] = 0.0;
                q[(4 * HD + d) as usize] *= if d % 2 == 0 { -0.0 } else { 30.0 };
            }
        }
        Case {
            ctx,
            pos,
            keys,
            vals,
            q,
        }
    }

    fn want(&self) -> Vec<f32> {
        let n = self.pos as usize + 1;
        let mut y = vec![0f32; (HEADS * HD) as usize];
        let mut scores = Vec::new();
        for h in 0..HEADS as usize {
            let kvh = h / (HEADS / KV_HEADS) as usize;
            let hd = HD as usize;
            let keys: Vec<f32> = (0..n)
                .flat_map(|t| self.keys[t][kvh * hd..(kvh + 1) * hd].to_vec())
                .collect();
            let vals: Vec<f32> = (0..n)
                .flat_map(|t| self.vals[t][kvh * hd..(kvh + 1) * hd].to_vec())
                .collect();
            semantics::attention_head(
                &self.q[h * hd..(h + 1) * hd],
                &keys,
                &vals,
                1.0 / (HD as f32).sqrt(),
                &mut scores,
                &mut y[h * hd..(h + 1) * hd],
            );
        }
        y
    }
}

fn run_attention(case: &Case) -> (Vec<f32>, u64) {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let ctx = case.ctx;
    let w = ctx.div_ceil(320);
    let q = p
        .buffer("q", DType::F32, u64::from(HEADS * HD), Hemisphere::West)
        .unwrap();
    let kc = p
        .buffer(
            "kcache",
            DType::F32,
            u64::from(KV_DIM * (w + 1) * 320),
            Hemisphere::West,
        )
        .unwrap();
    let vc = p
        .buffer("vcache", DType::F32, u64::from(ctx * 320), Hemisphere::West)
        .unwrap();
    let mask = p
        .buffer("attn_mask", DType::F32, u64::from(ctx), Hemisphere::East)
        .unwrap();
    let y = p
        .buffer("y", DType::F32, u64::from(HEADS * HD), Hemisphere::East)
        .unwrap();
    p.init(&q, DType::F32, case.q.iter().map(|x| x.to_bits()).collect());
    let row_words = (w + 1) as usize * 320;
    let mut kimg = vec![0u32; KV_DIM as usize * row_words];
    for (t, key) in case.keys.iter().enumerate() {
        for (r, &k) in key.iter().enumerate() {
            kimg[r * row_words + t] = k.to_bits();
        }
    }
    // Junk words hold garbage too.
    for r in 0..KV_DIM as usize {
        kimg[r * row_words + w as usize * 320] = 7.5f32.to_bits();
    }
    p.init(&kc, DType::F32, kimg);
    let mut vimg = vec![0u32; ctx as usize * 320];
    for (t, v) in case.vals.iter().enumerate() {
        for (i, &x) in v.iter().enumerate() {
            vimg[t * 320 + i] = x.to_bits();
        }
    }
    p.init(&vc, DType::F32, vimg);
    p.init(
        &mask,
        DType::F32,
        (0..ctx)
            .map(|t| {
                if t <= case.pos {
                    0f32
                } else {
                    f32::NEG_INFINITY
                }
                .to_bits()
            })
            .collect(),
    );
    p.symbol(
        "y",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![HEADS * HD],
        &y,
    );
    attention::attention(
        &mut p,
        "blk.0.attn",
        &q,
        &kc,
        &vc,
        &mask,
        &y,
        HEADS,
        KV_HEADS,
        HD,
        ctx,
        1.0 / (HD as f32).sqrt(),
        0,
    )
    .unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    assert_eq!(
        done.profile.total_cycles(),
        built.cycles,
        "ctx {ctx} pos {}: predicted cycles",
        case.pos
    );
    (common::f32_symbol(&done, &bin, "y"), built.cycles)
}

fn check(ctx: u32, pos: u32, seed: u32) -> u64 {
    let case = Case::new(ctx, pos, seed);
    let want = case.want();
    let (got, cycles) = run_attention(&case);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "ctx {ctx} pos {pos}: y[{i}] = {g} want {w}"
        );
    }
    println!("attention ctx {ctx} pos {pos}: {cycles} cycles");
    cycles
}

#[test]
fn attention_ctx64_is_exact() {
    for (pos, seed) in [(0, 1), (1, 2), (63, 4)] {
        check(64, pos, seed);
    }
}

#[test]
fn attention_ctx400_two_words_is_exact() {
    for (pos, seed) in [(0, 2), (1, 3), (330, 6), (399, 5)] {
        check(400, pos, seed);
    }
}

#[test]
fn attention_ctx256_cycles() {
    let c = check(256, 100, 8);
    println!("attention per decode step (one layer), SmolLM2 shapes, ctx 256: {c} cycles");
}

#[test]
fn kv_write_stores_key_transposed_and_value_row() {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    for (ctx, pos) in [(64u32, 0u32), (400, 1), (400, 333), (400, 399)] {
        let w = ctx.div_ceil(320);
        let mut p = ProgramBuilder::new(&target);
        let k = p
            .buffer("k", DType::F32, u64::from(KV_DIM), Hemisphere::West)
            .unwrap();
        let v = p
            .buffer("v", DType::F32, u64::from(KV_DIM), Hemisphere::East)
            .unwrap();
        let kc_elems = KV_DIM * (w + 1) * 320;
        let kc = p
            .buffer("kcache", DType::F32, u64::from(kc_elems), Hemisphere::West)
            .unwrap();
        let vc = p
            .buffer("vcache", DType::F32, u64::from(ctx * 320), Hemisphere::West)
            .unwrap();
        let kv_idx = p
            .buffer("kv_idx", DType::U16, 320, Hemisphere::East)
            .unwrap();
        let pos_idx = p
            .buffer("pos_idx", DType::U16, 320, Hemisphere::East)
            .unwrap();
        let kv = values(KV_DIM as usize, pos + 5, 4.0);
        let vv = values(KV_DIM as usize, pos + 9, 4.0);
        p.init(&k, DType::F32, kv.iter().map(|x| x.to_bits()).collect());
        p.init(&v, DType::F32, vv.iter().map(|x| x.to_bits()).collect());
        let kold = values(kc_elems as usize, 77, 1.0);
        let vold = values((ctx * 320) as usize, 78, 1.0);
        p.init(&kc, DType::F32, kold.iter().map(|x| x.to_bits()).collect());
        p.init(&vc, DType::F32, vold.iter().map(|x| x.to_bits()).collect());
        p.init(
            &kv_idx,
            DType::U16,
            (0..320)
                .map(|l| if l == pos % 320 { pos / 320 } else { w })
                .collect(),
        );
        p.init(&pos_idx, DType::U16, vec![pos; 320]);
        p.symbol(
            "kcache",
            q35_isa::SymbolKind::Output,
            DType::F32,
            vec![kc_elems],
            &kc,
        );
        p.symbol(
            "vcache",
            q35_isa::SymbolKind::Output,
            DType::F32,
            vec![ctx * 320],
            &vc,
        );
        attention::kv_write(
            &mut p, "blk.0.kv", &k, &v, &kc, &vc, &kv_idx, &pos_idx, KV_DIM, ctx, 0,
        )
        .unwrap();
        let built = p.finish();
        let (done, bin) = common::run(&built, &target);
        assert_eq!(
            done.profile.total_cycles(),
            built.cycles,
            "predicted cycles"
        );
        let kgot = common::f32_symbol(&done, &bin, "kcache");
        let vgot = common::f32_symbol(&done, &bin, "vcache");
        let row = ((w + 1) * 320) as usize;
        for (r, &key) in kv.iter().enumerate() {
            for lane in 0..(w as usize * 320) {
                let i = r * row + lane;
                let want = if lane == pos as usize { key } else { kold[i] };
                assert_eq!(
                    kgot[i].to_bits(),
                    want.to_bits(),
                    "ctx {ctx} pos {pos}: row {r} position {lane}"
                );
            }
            // The junk word got key element r on every lane but pos % 320.
            for l in 0..320usize {
                let i = r * row + w as usize * 320 + l;
                let want = if l == (pos % 320) as usize {
                    kold[i]
                } else {
                    key
                };
                assert_eq!(kgot[i].to_bits(), want.to_bits(), "junk word row {r}");
            }
        }
        for t in 0..ctx as usize {
            for l in 0..320usize {
                let i = t * 320 + l;
                let want = if t == pos as usize {
                    vv.get(l).copied().unwrap_or(0.0)
                } else {
                    vold[i]
                };
                assert_eq!(
                    vgot[i].to_bits(),
                    want.to_bits(),
                    "ctx {ctx} pos {pos}: V row {t} lane {l}"
                );
            }
        }
        println!(
            "kv_write ctx {ctx} pos {pos}: {} cycles ({} rows)",
            built.cycles, KV_DIM
        );
    }
}
