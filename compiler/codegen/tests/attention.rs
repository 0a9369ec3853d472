//! The KV cache write and whole-context masked attention on the simulator:
//! values bit-exact with the contract (`attention_head` over positions
//! `0 ..= pos`), predicted cycles equal to simulated ones, no hazard.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::{attention, rope};
use q35_contract::semantics;
use q35_isa::{DType, Hemisphere};
use q35_target::Target;

/// Heads, kv heads and head_dim of an attention op.
#[derive(Clone, Copy, Debug)]
struct Shape {
    heads: u32,
    kv_heads: u32,
    hd: u32,
}

impl Shape {
    fn kv_dim(self) -> u32 {
        self.kv_heads * self.hd
    }
    /// Words of a V cache row.
    fn wv(self) -> u32 {
        self.kv_dim().div_ceil(320)
    }
}

/// SmolLM2: 9 heads, 3 kv heads, head_dim 64.
const SMOL: Shape = Shape {
    heads: 9,
    kv_heads: 3,
    hd: 64,
};
/// Llama-shaped heads (head_dim 128, heads straddle words): kv_dim 256.
const LLAMA_256: Shape = Shape {
    heads: 8,
    kv_heads: 2,
    hd: 128,
};
/// kv_dim 512: two words a V row, a kv head across the word boundary.
const LLAMA_512: Shape = Shape {
    heads: 4,
    kv_heads: 4,
    hd: 128,
};

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
    shape: Shape,
    ctx: u32,
    /// Positions the kernel reads (a context bucket when below `ctx`).
    attend: u32,
    pos: u32,
    /// Keys and values per position (`ctx` of them, the ones past `pos`
    /// being garbage the kernel must ignore).
    keys: Vec<Vec<f32>>,
    vals: Vec<Vec<f32>>,
    q: Vec<f32>,
}

impl Case {
    fn new(shape: Shape, ctx: u32, pos: u32, seed: u32) -> Case {
        let (kv_dim, hd) = (shape.kv_dim(), shape.hd);
        let keys = (0..ctx)
            .map(|t| values(kv_dim as usize, seed * 1000 + t, 2.0))
            .collect();
        let vals = (0..ctx)
            .map(|t| values(kv_dim as usize, seed * 7000 + t + 3, 3.0))
            .collect();
        let mut q = values((shape.heads * hd) as usize, seed + 99, 2.0);
        // A head whose scores are all +-0.0 and one with huge scores.
        if seed.is_multiple_of(2) {
            let (zero, huge) = (2 % shape.heads, (shape.heads - 1).min(4));
            for d in 0..hd {
                q[(zero * hd + d) as usize] = 0.0;
                q[(huge * hd + d) as usize] *= if d % 2 == 0 { -0.0 } else { 30.0 };
            }
        }
        Case {
            shape,
            ctx,
            attend: ctx,
            pos,
            keys,
            vals,
            q,
        }
    }

    fn want(&self) -> Vec<f32> {
        let Shape {
            heads,
            kv_heads,
            hd,
        } = self.shape;
        let n = self.pos as usize + 1;
        let mut y = vec![0f32; (heads * hd) as usize];
        let mut scores = Vec::new();
        for h in 0..heads as usize {
            let kvh = h / (heads / kv_heads) as usize;
            let hd = hd as usize;
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
                1.0 / (hd as f32).sqrt(),
                &mut scores,
                &mut y[h * hd..(h + 1) * hd],
            );
        }
        y
    }
}

/// The kernel's output `y`, its cycles (predicted = simulated, asserted)
/// and the program's initial MEM contents.
fn run_attention(case: &Case) -> (Vec<f32>, u64, Vec<q35_isa::MemInit>) {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let ctx = case.ctx;
    let shape = case.shape;
    let (qd, kv_dim, wv) = (shape.heads * shape.hd, shape.kv_dim(), shape.wv());
    let w = ctx.div_ceil(320);
    let q = p
        .buffer("q", DType::F32, u64::from(qd), Hemisphere::West)
        .unwrap();
    let kc = p
        .buffer(
            "kcache",
            DType::F32,
            u64::from(kv_dim * (w + 1) * 320),
            Hemisphere::West,
        )
        .unwrap();
    let vc = p
        .buffer(
            "vcache",
            DType::F32,
            u64::from(ctx * wv * 320),
            Hemisphere::West,
        )
        .unwrap();
    let mask = p
        .buffer("attn_mask", DType::F32, u64::from(ctx), Hemisphere::East)
        .unwrap();
    let y = p
        .buffer("y", DType::F32, u64::from(qd), Hemisphere::East)
        .unwrap();
    p.init(&q, DType::F32, case.q.iter().map(|x| x.to_bits()).collect());
    let row_words = (w + 1) as usize * 320;
    let mut kimg = vec![0u32; kv_dim as usize * row_words];
    for (t, key) in case.keys.iter().enumerate() {
        for (r, &k) in key.iter().enumerate() {
            kimg[r * row_words + t] = k.to_bits();
        }
    }
    // Junk words hold garbage too.
    for r in 0..kv_dim as usize {
        kimg[r * row_words + w as usize * 320] = 7.5f32.to_bits();
    }
    p.init(&kc, DType::F32, kimg);
    let vrow = (wv * 320) as usize;
    let mut vimg = vec![0u32; ctx as usize * vrow];
    for (t, v) in case.vals.iter().enumerate() {
        for (i, &x) in v.iter().enumerate() {
            vimg[t * vrow + i] = x.to_bits();
        }
        // Lanes past kv_dim hold garbage.
        for i in v.len()..vrow {
            vimg[t * vrow + i] = (-1.25f32 * i as f32).to_bits();
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
    p.symbol("y", q35_isa::SymbolKind::Output, DType::F32, vec![qd], &y);
    attention::attention(
        &mut p,
        "blk.0.attn",
        &q,
        &kc,
        &vc,
        &mask,
        &y,
        shape.heads,
        shape.kv_heads,
        shape.hd,
        ctx,
        case.attend,
        1.0 / (shape.hd as f32).sqrt(),
        0,
    )
    .unwrap();
    let built = p.finish();
    let mem = built.program.mem.clone();
    let (done, bin) = common::run(&built, &target);
    assert_eq!(
        done.profile.total_cycles(),
        built.cycles,
        "ctx {ctx} pos {}: predicted cycles",
        case.pos
    );
    (common::f32_symbol(&done, &bin, "y"), built.cycles, mem)
}

fn check(shape: Shape, ctx: u32, pos: u32, seed: u32) -> u64 {
    check_case(&Case::new(shape, ctx, pos, seed)).0
}

/// Runs `case` and asserts `y` bit for bit against the contract; its
/// cycles and initial MEM.
fn check_case(case: &Case) -> (u64, Vec<q35_isa::MemInit>) {
    let want = case.want();
    let (got, cycles, mem) = run_attention(case);
    let (shape, ctx, attend, pos) = (case.shape, case.ctx, case.attend, case.pos);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{shape:?} ctx {ctx} attend {attend} pos {pos}: y[{i}] = {g} want {w}"
        );
    }
    println!("attention {shape:?} ctx {ctx} attend {attend} pos {pos}: {cycles} cycles");
    (cycles, mem)
}

/// A context bucket (the first `attend` positions read) gives the
/// contract's values at every position below `attend`, in fewer cycles
/// than whole-context attention, from the very same MEM image.
fn check_bucket(shape: Shape, ctx: u32, attend: u32, positions: &[u32]) {
    for (i, &pos) in positions.iter().enumerate() {
        assert!(pos < attend, "a bucket serves positions below {attend}");
        let seed = 11 + i as u32;
        let whole = Case::new(shape, ctx, pos, seed);
        let (full_cycles, full_mem) = check_case(&whole);
        let bucket = Case { attend, ..whole };
        let (cycles, mem) = check_case(&bucket);
        assert!(
            cycles < full_cycles,
            "{shape:?} ctx {ctx} attend {attend}: {cycles} cycles, whole context {full_cycles}"
        );
        assert!(
            mem == full_mem,
            "{shape:?} ctx {ctx} attend {attend}: the bucket's MEM image differs"
        );
    }
}

#[test]
fn attention_bucket_is_exact_and_shares_the_mem_image() {
    // SmolLM2 at its compiled context: one word of positions of four, a
    // bucket ending inside a word, and one ending on the partial last word.
    check_bucket(SMOL, 1024, 64, &[0, 5, 63]);
    check_bucket(SMOL, 1024, 330, &[1, 329]);
    check_bucket(SMOL, 1000, 961, &[960]);
    // Two V words a position.
    check_bucket(LLAMA_512, 400, 100, &[0, 99]);
}

#[test]
fn attention_bucket_past_the_context_is_an_error() {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let buf =
        |p: &mut ProgramBuilder, name: &str, n: u64, h| p.buffer(name, DType::F32, n, h).unwrap();
    let q = buf(&mut p, "q", 576, Hemisphere::West);
    let kc = buf(&mut p, "kcache", 192 * 2 * 320, Hemisphere::West);
    let vc = buf(&mut p, "vcache", 64 * 320, Hemisphere::West);
    let mask = buf(&mut p, "attn_mask", 64, Hemisphere::East);
    let y = buf(&mut p, "y", 576, Hemisphere::East);
    for attend in [0, 65] {
        let e = attention::attention(
            &mut p,
            "blk.0.attn",
            &q,
            &kc,
            &vc,
            &mask,
            &y,
            9,
            3,
            64,
            64,
            attend,
            0.125,
            0,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("attends to {attend} positions of a cache of 64")),
            "{e}"
        );
    }
}

#[test]
fn attention_ctx64_is_exact() {
    for (pos, seed) in [(0, 1), (1, 2), (63, 4)] {
        check(SMOL, 64, pos, seed);
    }
}

#[test]
fn attention_ctx400_two_words_is_exact() {
    for (pos, seed) in [(0, 2), (1, 3), (330, 6), (399, 5)] {
        check(SMOL, 400, pos, seed);
    }
}

#[test]
fn attention_head_dim_128_kv_dim_256_is_exact() {
    for (ctx, pos, seed) in [(64, 0, 1), (64, 63, 2), (400, 1, 4), (400, 399, 3)] {
        check(LLAMA_256, ctx, pos, seed);
    }
}

#[test]
fn attention_head_dim_128_kv_dim_512_is_exact() {
    for (ctx, pos, seed) in [(64, 0, 2), (64, 40, 1), (400, 330, 4), (400, 399, 5)] {
        check(LLAMA_512, ctx, pos, seed);
    }
}

#[test]
fn attention_ctx256_cycles() {
    let c = check(SMOL, 256, 100, 8);
    println!("attention per decode step (one layer), SmolLM2 shapes, ctx 256: {c} cycles");
}

#[test]
fn attention_ctx1024_cycles() {
    // SmolLM2's compiled context (its model.toml's max_seq_len): four words
    // of positions, the last one partial past 960.
    let c = check(SMOL, 1024, 700, 9);
    println!("attention per decode step (one layer), SmolLM2 shapes, ctx 1024: {c} cycles");
}

#[test]
fn kv_write_stores_key_transposed_and_value_row() {
    kv_write_case(SMOL, &[(64, 0), (400, 1), (400, 333), (400, 399)]);
}

#[test]
fn kv_write_head_dim_128() {
    kv_write_case(LLAMA_256, &[(64, 0), (400, 399)]);
    // Two V words a position: pos * 2 + w, computed on the chip.
    kv_write_case(
        LLAMA_512,
        &[(64, 0), (64, 63), (400, 1), (400, 333), (400, 399)],
    );
    // kv_dim 1024 (Llama-70B: 8 kv heads of 128): four words a position.
    let shape = Shape {
        heads: 8,
        kv_heads: 8,
        hd: 128,
    };
    kv_write_case(shape, &[(64, 5), (400, 398)]);
}

fn kv_write_case(shape: Shape, cases: &[(u32, u32)]) {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let kv_dim = shape.kv_dim();
    let wv = shape.wv();
    let vrow = (wv * 320) as usize;
    for &(ctx, pos) in cases {
        let w = ctx.div_ceil(320);
        let mut p = ProgramBuilder::new(&target);
        let k = p
            .buffer("k", DType::F32, u64::from(kv_dim), Hemisphere::West)
            .unwrap();
        let v = p
            .buffer("v", DType::F32, u64::from(kv_dim), Hemisphere::East)
            .unwrap();
        let kc_elems = kv_dim * (w + 1) * 320;
        let kc = p
            .buffer("kcache", DType::F32, u64::from(kc_elems), Hemisphere::West)
            .unwrap();
        let vc = p
            .buffer(
                "vcache",
                DType::F32,
                (ctx as usize * vrow) as u64,
                Hemisphere::West,
            )
            .unwrap();
        let kv_idx = p
            .buffer("kv_idx", DType::U16, 320, Hemisphere::East)
            .unwrap();
        let pos_idx = p
            .buffer("pos_idx", DType::U16, 320, Hemisphere::East)
            .unwrap();
        let kv = values(kv_dim as usize, pos + 5, 4.0);
        let vv = values(kv_dim as usize, pos + 9, 4.0);
        p.init(&k, DType::F32, kv.iter().map(|x| x.to_bits()).collect());
        p.init(&v, DType::F32, vv.iter().map(|x| x.to_bits()).collect());
        let kold = values(kc_elems as usize, 77, 1.0);
        let vold = values(ctx as usize * vrow, 78, 1.0);
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
            vec![ctx * vrow as u32],
            &vc,
        );
        attention::kv_write(
            &mut p, "blk.0.kv", &k, &v, &kc, &vc, &kv_idx, &pos_idx, kv_dim, ctx, 0,
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
            for l in 0..vrow {
                let i = t * vrow + l;
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
            "kv_write {shape:?} ctx {ctx} pos {pos}: {} cycles ({} rows)",
            built.cycles, kv_dim
        );
    }
}

/// Llama-70B's attention shape (64 heads, 8 kv heads, head_dim 128: kv_dim
/// 1024, four V words a position) at a short context, bit-exact.
#[test]
fn attention_llama70b_heads_is_exact() {
    let shape = Shape {
        heads: 64,
        kv_heads: 8,
        hd: 128,
    };
    let t = std::time::Instant::now();
    let c = check(shape, 64, 50, 2);
    println!(
        "attention llama-70b heads, ctx 64: {c} cycles (built and simulated in {:.1?})",
        t.elapsed()
    );
}

/// One Llama-70B block's RoPE, KV write and attention at context 2048
/// build: the scheduler places them without error (not simulated: the
/// point is compile time and the cycle estimate). 2048 is the longest
/// context whose caches fit 4 slices of lpu-v1's 8192 words (K: 1024 rows
/// of `W + 1 = 8` words; V: 2048 x 4 words); 4096 needs twice that. Run
/// with `--ignored --nocapture`.
#[test]
#[ignore = "a minute or more; a compile-time measurement"]
fn llama70b_attention_block_builds_at_ctx_2048() {
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let (heads, kv_heads, hd, ctx) = (64u32, 8u32, 128u32, 2048u32);
    let (qd, kv_dim) = (heads * hd, kv_heads * hd);
    let (w, wv) = (ctx.div_ceil(320), kv_dim.div_ceil(320));
    let start = std::time::Instant::now();
    let mut p = ProgramBuilder::new(&target);
    let table = q35_contract::rope::RopeTable::new(hd as usize, 10000.0, ctx as usize);
    let tables =
        q35_codegen::kernels::rope::rope_tables(&table, hd as usize, ctx as usize).unwrap();
    let rows = tables.words as u64 * u64::from(ctx);
    let buf = |p: &mut ProgramBuilder, name: &str, dt, n: u64, h| p.buffer(name, dt, n, h).unwrap();
    let cos = buf(&mut p, "rope_cos", DType::F32, rows * 320, Hemisphere::West);
    let sin = buf(&mut p, "rope_sin", DType::F32, rows * 320, Hemisphere::West);
    p.init(&cos, DType::F32, tables.cos);
    p.init(&sin, DType::F32, tables.sin);
    let pos_idx = buf(&mut p, "pos_idx", DType::U16, 320, Hemisphere::East);
    let kv_idx = buf(&mut p, "kv_idx", DType::U16, 320, Hemisphere::East);
    let mask = buf(
        &mut p,
        "attn_mask",
        DType::F32,
        u64::from(ctx),
        Hemisphere::East,
    );
    let kc = buf(
        &mut p,
        "kcache",
        DType::F32,
        u64::from(kv_dim * (w + 1) * 320),
        Hemisphere::West,
    );
    let vc = buf(
        &mut p,
        "vcache",
        DType::F32,
        u64::from(ctx * wv * 320),
        Hemisphere::West,
    );
    let q = buf(&mut p, "q", DType::F32, u64::from(qd), Hemisphere::East);
    let k = buf(&mut p, "k", DType::F32, u64::from(kv_dim), Hemisphere::West);
    let v = buf(&mut p, "v", DType::F32, u64::from(kv_dim), Hemisphere::East);
    let qr = buf(&mut p, "qr", DType::F32, u64::from(qd), Hemisphere::West);
    let kr = buf(
        &mut p,
        "kr",
        DType::F32,
        u64::from(kv_dim),
        Hemisphere::East,
    );
    let y = buf(&mut p, "y", DType::F32, u64::from(qd), Hemisphere::East);
    let l = "blk.0";
    let t1 = rope::rope(&mut p, l, &q, &qr, heads, hd, &pos_idx, &cos, &sin, 0).unwrap();
    let t2 = rope::rope(&mut p, l, &k, &kr, kv_heads, hd, &pos_idx, &cos, &sin, 0).unwrap();
    let t3 = attention::kv_write(
        &mut p, l, &kr, &v, &kc, &vc, &kv_idx, &pos_idx, kv_dim, ctx, 0,
    )
    .unwrap();
    let scale = 1.0 / (hd as f32).sqrt();
    let t4 = attention::attention(
        &mut p, l, &qr, &kc, &vc, &mask, &y, heads, kv_heads, hd, ctx, ctx, scale, 0,
    )
    .unwrap();
    let mem = p.alloc.used_bytes();
    let built = p.finish();
    println!(
        "llama-70b block, ctx {ctx}: rope q ends {t1}, rope k {t2}, kv_write {t3}, attention {t4}; \
         {} cycles, {} MB of MEM, built in {:.1?}",
        built.cycles,
        mem / 1_000_000,
        start.elapsed()
    );
    assert!(built.cycles > u64::from(ctx));
}
