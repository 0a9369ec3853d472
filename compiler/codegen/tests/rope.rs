//! RoPE on the simulator: bit-exact with `semantics::rope_in_place` head by
//! head at several positions, predicted cycles equal to simulated ones.

mod common;

use q35_codegen::ProgramBuilder;
use q35_codegen::kernels::rope::{RopeTableError, rope, rope_tables, rope_words};
use q35_contract::rope::RopeTable;
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

#[expect(clippy::too_many_arguments, reason = "one test case")]
fn check(
    name: &str,
    x: &[f32],
    heads: usize,
    head_dim: usize,
    table: &RopeTable,
    ctx: usize,
    pos: usize,
    hs: [Hemisphere; 5],
) -> u64 {
    let n = heads * head_dim;
    assert_eq!(x.len(), n);
    let target = Target::builtin("lpu-v1").expect("lpu-v1");
    let mut p = ProgramBuilder::new(&target);
    let tables = rope_tables(table, head_dim, ctx).unwrap();
    assert_eq!(tables.words, rope_words(head_dim).unwrap());
    let rows = tables.words * ctx;
    assert_eq!(tables.cos.len(), rows * 320);
    let (cos, sin) = (tables.cos, tables.sin);
    let cb = p
        .buffer("rope_cos", DType::F32, (rows * 320) as u64, hs[0])
        .unwrap();
    let sb = p
        .buffer("rope_sin", DType::F32, (rows * 320) as u64, hs[1])
        .unwrap();
    let pb = p.buffer("pos_idx", DType::U16, 320, hs[2]).unwrap();
    let xb = p.buffer("x", DType::F32, n as u64, hs[3]).unwrap();
    let yb = p.buffer("y", DType::F32, n as u64, hs[4]).unwrap();
    p.init(&cb, DType::F32, cos);
    p.init(&sb, DType::F32, sin);
    p.init(&pb, DType::U16, vec![pos as u32; 320]);
    p.init(&xb, DType::F32, x.iter().map(|v| v.to_bits()).collect());
    p.symbol(
        "y",
        q35_isa::SymbolKind::Output,
        DType::F32,
        vec![n as u32],
        &yb,
    );
    rope(
        &mut p,
        "blk.0.rope_q",
        &xb,
        &yb,
        heads as u32,
        head_dim as u32,
        &pb,
        &cb,
        &sb,
        0,
    )
    .unwrap();
    let built = p.finish();
    let (done, bin) = common::run(&built, &target);
    let got = common::f32_symbol(&done, &bin, "y");
    let mut want = x.to_vec();
    for head in want.chunks_mut(head_dim) {
        semantics::rope_in_place(head, pos, table);
    }
    for i in 0..n {
        assert_eq!(
            got[i].to_bits(),
            want[i].to_bits(),
            "{name} pos {pos}: element {i}: {} vs {}",
            got[i],
            want[i]
        );
    }
    assert_eq!(done.profile.total_cycles(), built.cycles, "{name}: cycles");
    println!("rope {name} pos {pos}: {} cycles", built.cycles);
    built.cycles
}

#[test]
fn rope_is_exact_and_predicted() {
    use Hemisphere::{East, West};
    // SmolLM2: head_dim 64, rope base 100000, q 9 heads, k 3 heads.
    let ctx = 1024;
    let table = RopeTable::new(64, 100000.0, ctx);
    let q = values(9 * 64, 1);
    let k = values(3 * 64, 2);
    for (i, pos) in [0usize, 1, 300, ctx - 1].into_iter().enumerate() {
        let hs = if i % 2 == 0 {
            [West, West, East, East, East]
        } else {
            [East, West, West, West, East]
        };
        check("q 9x64", &q, 9, 64, &table, ctx, pos, hs);
        check(
            "k 3x64",
            &k,
            3,
            64,
            &table,
            ctx,
            pos,
            [East, East, East, West, West],
        );
    }
    // Edge cases: zeros of both signs, large magnitudes, one head.
    let mut edge = values(64, 3);
    edge[0] = -0.0;
    edge[1] = 0.0;
    edge[2] = 0.0;
    edge[3] = -0.0;
    edge[10] = 3.0e38;
    edge[11] = -3.0e38;
    check(
        "edge 1x64",
        &edge,
        1,
        64,
        &table,
        ctx,
        7,
        [West, East, West, East, West],
    );
    let small = RopeTable::new(32, 10000.0, 40);
    check(
        "head_dim 32",
        &values(5 * 32, 4),
        5,
        32,
        &small,
        40,
        39,
        [East, East, West, West, East],
    );
}

#[test]
fn rope_head_dim_128_is_exact_and_predicted() {
    use Hemisphere::{East, West};
    // Llama-2/3 shapes: head_dim 128 does not divide 320 (2 table words a
    // position; heads straddle words). q of 8 heads (4 words, a head
    // across words 0/1 and 2/3), k of 2 heads (256 lanes, one word), and
    // 5 heads (2 words, odd word count).
    let ctx = 700;
    let table = RopeTable::new(128, 10000.0, ctx);
    let q = values(8 * 128, 11);
    let k = values(2 * 128, 12);
    let five = values(5 * 128, 13);
    let mut cycles = Vec::new();
    for (i, pos) in [0usize, 1, 5, 319, 320, 333, ctx - 1]
        .into_iter()
        .enumerate()
    {
        let hs = if i % 2 == 0 {
            [West, West, East, East, East]
        } else {
            [East, West, West, West, East]
        };
        cycles.push(check("q 8x128", &q, 8, 128, &table, ctx, pos, hs));
        check(
            "k 2x128",
            &k,
            2,
            128,
            &table,
            ctx,
            pos,
            [East, East, East, West, West],
        );
        check(
            "5x128",
            &five,
            5,
            128,
            &table,
            ctx,
            pos,
            [West, East, West, East, West],
        );
    }
    // Llama-70B's q: 64 heads of 128 (26 words).
    let big = values(64 * 128, 14);
    let c = check(
        "q 64x128",
        &big,
        64,
        128,
        &RopeTable::new(128, 10000.0, 64),
        64,
        37,
        [West, West, East, East, East],
    );
    println!("rope head_dim 128: q 8x128 {cycles:?} cycles; q 64x128 {c} cycles");
    // head_dim 96 (gcd 32: 3 words a position) and 80 (divides 320: 1).
    assert_eq!(rope_words(96).unwrap(), 3);
    assert_eq!(rope_words(80).unwrap(), 1);
    let t96 = RopeTable::new(96, 500000.0, 50);
    check(
        "7x96",
        &values(7 * 96, 15),
        7,
        96,
        &t96,
        50,
        49,
        [East, West, West, East, West],
    );
}

#[test]
fn rope_tables_reject_bad_shapes() {
    let t = RopeTable::new(128, 10000.0, 4);
    assert_eq!(rope_tables(&t, 128, 4).unwrap().words, 2);
    assert!(matches!(rope_words(0), Err(RopeTableError::HeadDim { .. })));
    assert!(matches!(
        rope_words(66 + 1),
        Err(RopeTableError::HeadDim { .. })
    ));
    let t = RopeTable::new(64, 10000.0, 4);
    assert!(matches!(
        rope_tables(&t, 64, 5),
        Err(RopeTableError::Positions { .. })
    ));
    assert!(matches!(
        rope_tables(&t, 32, 4),
        Err(RopeTableError::Mismatch { .. })
    ));
}
