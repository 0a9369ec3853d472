//! The golden forward pass built from plain data: shape checks at
//! construction, the errors of a bad token or a full session, and the KV
//! cache a simulator's `--check` mode reads (append-only, one `kv_dim` row
//! per position, the same bits on every run).

use std::sync::Arc;

use half::f16;
use q35_contract::{
    Architecture, GoldenBlock, GoldenError, GoldenHead, GoldenModel, IntMatrix, Layout,
    QuantScheme, QuantizedMatrix,
};

fn arch() -> Architecture {
    Architecture {
        family: "llama".into(),
        blocks: 2,
        hidden: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        ffn: 48,
        vocab: 20,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: false,
        context: 8,
    }
}

/// A deterministic int8 matrix (codes from a small LCG, scale 1/64).
fn matrix(rows: u32, cols: u32, seed: u32) -> IntMatrix {
    let layout = Layout::new(rows as usize, cols as usize, 16).unwrap();
    let cp = layout.cols_padded();
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut codes = vec![0i8; layout.rows * cp];
    for r in 0..layout.rows {
        for j in 0..layout.cols {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            codes[r * cp + j] = ((state >> 16) % 61) as i8 - 30;
        }
    }
    let scales = vec![f16::from_f32(1.0 / 64.0); layout.rows * layout.n_groups()];
    QuantizedMatrix::from_codes(layout, QuantScheme::Int8, (1, 1), &codes, &scales, None)
        .unwrap()
        .unpack()
}

fn blocks(a: &Architecture) -> Vec<GoldenBlock> {
    (0..a.blocks)
        .map(|b| GoldenBlock {
            attn_norm: vec![1.0; a.hidden as usize],
            ffn_norm: vec![0.5; a.hidden as usize],
            q: matrix(a.q_dim(), a.hidden, 10 * b + 1),
            k: matrix(a.kv_dim(), a.hidden, 10 * b + 2),
            v: matrix(a.kv_dim(), a.hidden, 10 * b + 3),
            o: matrix(a.hidden, a.q_dim(), 10 * b + 4),
            gate: matrix(a.ffn, a.hidden, 10 * b + 5),
            up: matrix(a.ffn, a.hidden, 10 * b + 6),
            down: matrix(a.hidden, a.ffn, 10 * b + 7),
        })
        .collect()
}

fn model(max_positions: usize) -> Result<GoldenModel, GoldenError> {
    let a = arch();
    let n = (a.vocab * a.hidden) as usize;
    let embedding: Arc<[f32]> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
    let head = GoldenHead::Quantized(matrix(a.vocab, a.hidden, 99));
    let blocks = blocks(&a);
    GoldenModel::new(a, max_positions, embedding, blocks, vec![1.0; 32], head)
}

#[test]
fn kv_cache_grows_one_row_per_position_and_is_append_only() {
    let g = model(8).unwrap();
    let kvd = g.arch().kv_dim() as usize;
    let mut s = g.new_session();
    assert_eq!((s.position(), s.blocks()), (0, 2));
    g.step(&mut s, 3).unwrap();
    let first: Vec<f32> = s.keys(1).unwrap().to_vec();
    assert_eq!(first.len(), kvd);
    let logits = g.run(&mut s, &[5, 7]).unwrap();
    assert_eq!(logits.len(), 2 * 20);
    assert_eq!(s.position(), 3);
    for b in 0..2 {
        assert_eq!(s.keys(b).unwrap().len(), 3 * kvd);
        assert_eq!(s.values(b).unwrap().len(), 3 * kvd);
    }
    assert_eq!(&s.keys(1).unwrap()[..kvd], &first[..]);
    assert!(s.keys(2).is_none() && s.values(2).is_none());
    // Same tokens, same bits: logits and cache.
    let mut t = g.new_session();
    g.step(&mut t, 3).unwrap();
    let again = g.run(&mut t, &[5, 7]).unwrap();
    assert_eq!(
        logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        again.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(s, t);
}

#[test]
fn bad_tokens_and_full_sessions_are_errors() {
    let g = model(2).unwrap();
    let mut s = g.new_session();
    assert_eq!(
        g.step(&mut s, 20).unwrap_err(),
        GoldenError::Token {
            token: 20,
            vocab: 20
        }
    );
    g.run(&mut s, &[1, 2]).unwrap();
    let e = g.step(&mut s, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "position 2 is past the 2 positions the model was built for"
    );
    assert!(g.logits(&[0.0; 5]).is_err());
}

#[test]
fn construction_checks_every_shape() {
    assert!(model(0).is_err());
    assert!(model(9).is_err());
    let a = arch();
    let mut bl = blocks(&a);
    bl[1].k = matrix(a.kv_dim(), a.hidden + 16, 1);
    let e = GoldenModel::new(
        a.clone(),
        4,
        vec![0.0; 640].into(),
        bl,
        vec![1.0; 32],
        GoldenHead::F32(vec![0.0; 640].into()),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "blk.1.attn_k: matrix is 16x48, the architecture needs 16x32"
    );
    let e = GoldenModel::new(
        a.clone(),
        4,
        vec![0.0; 640].into(),
        blocks(&a),
        vec![1.0; 32],
        GoldenHead::F32(vec![0.0; 639].into()),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("LM head has 639 values"), "{e}");
}

/// The stream-rotation variant (docs/q35-format.md section 14): the final
/// norm's output is mixed by the dense matrix, row by row in ascending
/// order along the lanes, before the head; nothing else changes.
#[test]
fn head_mix_is_the_dense_product_along_lanes_before_the_head() {
    use q35_contract::semantics::{dot_lanes, mix_along_lanes, rmsnorm};
    let a = arch();
    let d = a.hidden as usize;
    let n = (a.vocab * a.hidden) as usize;
    let embedding: Arc<[f32]> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
    let head_w: Arc<[f32]> = (0..n).map(|i| ((i % 7) as f32 - 3.0) / 5.0).collect();
    let f32_model = GoldenModel::new(
        a.clone(),
        4,
        embedding.clone(),
        blocks(&a),
        vec![0.75; d],
        GoldenHead::F32(head_w.clone()),
    )
    .unwrap();
    let mix: Arc<[f32]> = (0..d * d)
        .map(|k| ((k * 37 % 101) as f32 - 50.0) / 97.0)
        .collect();
    let mixed = f32_model.clone().with_head_mix(mix.clone()).unwrap();
    assert_eq!(mixed.head_mix(), Some(&mix[..]));
    assert!(f32_model.head_mix().is_none());
    let mut s = mixed.new_session();
    let x = mixed.advance(&mut s, 3).unwrap();
    let got = mixed.logits(&x).unwrap();
    // By hand: rmsnorm, the mix, then each head row's lane dot product.
    let mut h = vec![0f32; d];
    rmsnorm(&x, &[0.75; 32], a.norm_eps, &mut h);
    let mut v = vec![0f32; d];
    mix_along_lanes(&mix, &h, &mut v);
    let want: Vec<u32> = head_w
        .chunks_exact(d)
        .map(|w| dot_lanes(w, &v).to_bits())
        .collect();
    assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    // The blocks are untouched: the same residual as without the mix.
    let mut t = f32_model.new_session();
    assert_eq!(f32_model.advance(&mut t, 3).unwrap(), x);
    assert_ne!(f32_model.logits(&x).unwrap(), got);
    // The identity mixes nothing, bit for bit (quantized head too).
    let eye: Arc<[f32]> = (0..d * d)
        .map(|k| if k / d == k % d { 1.0 } else { 0.0 })
        .collect();
    let q = model(4).unwrap();
    let qi = q.clone().with_head_mix(eye).unwrap();
    let (mut s1, mut s2) = (q.new_session(), qi.new_session());
    let (l1, l2) = (
        q.run(&mut s1, &[1, 2]).unwrap(),
        qi.run(&mut s2, &[1, 2]).unwrap(),
    );
    assert_eq!(
        l1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        l2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // The embedding mix: the looked-up row mixed before the first block,
    // so a permutation of the channels equals a model whose rows are
    // permuted that way.
    let perm: Vec<usize> = (0..d).map(|i| (i * 5 + 3) % d).collect();
    let p_mix: Arc<[f32]> = (0..d * d)
        .map(|k| if perm[k / d] == k % d { 1.0 } else { 0.0 })
        .collect();
    let permuted: Arc<[f32]> = embedding
        .chunks_exact(d)
        .flat_map(|row| perm.iter().map(|&j| row[j]).collect::<Vec<_>>())
        .collect();
    let by_mix = f32_model.clone().with_embedding_mix(p_mix.clone()).unwrap();
    assert_eq!(by_mix.embedding_mix(), Some(&p_mix[..]));
    let by_table = GoldenModel::new(
        a.clone(),
        4,
        permuted,
        blocks(&a),
        vec![0.75; d],
        GoldenHead::F32(head_w.clone()),
    )
    .unwrap();
    let (mut s1, mut s2) = (by_mix.new_session(), by_table.new_session());
    let (l1, l2) = (
        by_mix.run(&mut s1, &[4, 9]).unwrap(),
        by_table.run(&mut s2, &[4, 9]).unwrap(),
    );
    assert_eq!(
        l1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        l2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(s1, s2);
    assert!(
        f32_model
            .clone()
            .with_embedding_mix(vec![1.0; 3].into())
            .is_err()
    );
    // Bad matrices are errors naming the problem.
    let e = q.clone().with_head_mix(vec![0.0; 5].into()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "head mix: 5 values, a 32 x 32 matrix needs 1024"
    );
    let mut nan = vec![0f32; d * d];
    nan[33] = f32::NAN;
    let e = q.with_head_mix(nan.into()).unwrap_err();
    assert_eq!(e.to_string(), "head mix: entry (1, 1) is NaN, not finite");
}
