//! The residual-stream rotation (QuaRot proper, docs/q35-format.md section
//! 14) for a model whose LM head is tied to its embedding.
//!
//! Every RMSNorm weight is folded into the matrices that read the norm's
//! output (attention norm into Q, K, V; FFN norm into gate, up), and the
//! residual stream is rotated by an orthogonal `R` (`x' = R x`): input
//! matrices become `W diag(gamma) R^T`, output matrices (`attn_output`,
//! `ffn_down`) `R W`, and the tied table is stored once as rows `R e_t`, so
//! the embedding lookup already yields the rotated embedding and the LM
//! head quantizes a rotated, incoherent matrix. RMSNorm commutes with `R`
//! (it only divides by the vector's norm, which `R` keeps), so the blocks
//! need nothing on line; the norm weights become 1. The head sees the
//! unrotated stream through `M = R diag(gamma_out) R^T`: the final norm's
//! output is mixed by `M` on line (one dense `hidden x hidden` f32 product
//! per token, `q35_contract::semantics::mix_along_lanes`, the golden-pass
//! variant `GoldenModel::with_head_mix`), then the head multiplies by the
//! rotated table.
//!
//! [`rotate_head_model`] is the same rotation for the tied table alone:
//! the blocks keep the unrotated stream, the lookup un-rotates a row on line
//! (`R^T`, `GoldenModel::with_embedding_mix`) and the head mixes the final
//! norm's output by `R diag(gamma_out)`: two dense products a token.
//!
//! `R` is chosen by [`StreamRotation`]: a block-diagonal randomized
//! Walsh-Hadamard matrix, a Kronecker product of a seeded random orthogonal
//! matrix with one, or a seeded random orthogonal matrix (Gram-Schmidt of a
//! Gaussian matrix). Every choice is deterministic (fixed seeds, fixed
//! algorithm, f64, rounded once to f32).

use std::borrow::Cow;
use std::sync::Arc;

use q35_reference::{DenseLinear, Linear, LinearId, LinearKind, Model, WeightMap, splitmix64};
use rayon::prelude::*;

use super::ModelQuantError;
use super::smooth::{dims, weights};

/// Which orthogonal matrix rotates the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRotation {
    /// `blockdiag(H_b / sqrt(b)) D`: the Walsh-Hadamard matrix of the
    /// largest power of two `b` dividing `hidden` (at most 512) on each
    /// block of `b` channels, after fixed random signs `D` (64 x 9 blocks
    /// for SmolLM2's 576). Mixes only within a block.
    BlockHadamard,
    /// As [`StreamRotation::BlockHadamard`] with blocks of `n` channels (a
    /// power of two) from the first channel on, the rest of `hidden` in
    /// ever smaller power-of-two blocks (576 at 128: four of 128 and one of
    /// 64). CLI: `block-hadamard-N`.
    BlockHadamardOf(usize),
    /// `(O_m kron H_b / sqrt(b)) D` with `m = hidden / b` and `O_m` a seeded
    /// random orthogonal matrix: every channel mixes with every other.
    KronHadamard,
    /// A seeded random orthogonal `hidden x hidden` matrix (Gram-Schmidt
    /// of a Gaussian matrix).
    Random,
}

impl StreamRotation {
    /// Every choice without a parameter, in the order the CLI lists them.
    pub const ALL: [StreamRotation; 3] = [
        StreamRotation::BlockHadamard,
        StreamRotation::KronHadamard,
        StreamRotation::Random,
    ];

    /// The CLI spelling.
    pub fn name(self) -> String {
        match self {
            StreamRotation::BlockHadamard => "block-hadamard".into(),
            StreamRotation::BlockHadamardOf(n) => format!("block-hadamard-{n}"),
            StreamRotation::KronHadamard => "kron-hadamard".into(),
            StreamRotation::Random => "random".into(),
        }
    }
}

impl std::str::FromStr for StreamRotation {
    type Err = String;

    fn from_str(s: &str) -> Result<StreamRotation, String> {
        if let Some(n) = s.strip_prefix("block-hadamard-") {
            return match n.parse::<usize>() {
                Ok(n) if n >= 2 && n.is_power_of_two() => Ok(StreamRotation::BlockHadamardOf(n)),
                _ => Err(format!(
                    "stream rotation {s}: the block size {n} is not a power of two of at least 2"
                )),
            };
        }
        StreamRotation::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown stream rotation {s} (expected {}, or block-hadamard-N)",
                    StreamRotation::ALL.map(StreamRotation::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for StreamRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Seed of the Gaussian matrices (SplitMix64).
const GAUSSIAN_SEED: u64 = 0x5154_5354;

/// The orthogonal `d x d` matrix `R` of `kind`, row-major f64 (`x' = R x`).
pub fn stream_rotation_matrix(kind: StreamRotation, d: usize) -> Result<Vec<f64>, ModelQuantError> {
    let rot = Rotation::new(kind, d)?;
    // Column j of R is R e_j.
    let mut r = vec![0f64; d * d];
    let mut col = vec![0f64; d];
    for j in 0..d {
        col.fill(0.0);
        col[j] = 1.0;
        rot.apply(&mut col);
        for (i, &v) in col.iter().enumerate() {
            r[i * d + j] = v;
        }
    }
    Ok(r)
}

/// `R` in the form that applies it fastest: the Hadamard kinds as signs,
/// a fast Walsh-Hadamard transform per block and (Kronecker) a small
/// dense mix across blocks; the random kind as a dense matrix.
struct Rotation {
    d: usize,
    /// Block size `b` (a power of two) and `m = d / b` blocks
    /// ([`StreamRotation::KronHadamard`]).
    b: usize,
    m: usize,
    /// The Hadamard blocks' sizes, first channel first (block kinds).
    blocks: Vec<usize>,
    /// Row-major `m x m` (Kronecker factor), or `R^T`, `d x d` (random).
    dense: Vec<f64>,
    /// Fixed `+-1` signs (Hadamard kinds), else empty.
    signs: Vec<f32>,
    kind: StreamRotation,
}

impl Rotation {
    fn new(kind: StreamRotation, d: usize) -> Result<Rotation, ModelQuantError> {
        if d == 0 {
            return Err(ModelQuantError::Input(
                "the stream rotation needs a positive hidden size".into(),
            ));
        }
        let b = (1usize << d.trailing_zeros()).min(512);
        let m = d / b;
        let blocks = match kind {
            StreamRotation::BlockHadamardOf(n) => {
                if !n.is_power_of_two() || n < 2 {
                    return Err(ModelQuantError::Input(format!(
                        "stream rotation block size {n} is not a power of two of at least 2"
                    )));
                }
                let mut blocks = vec![n; d / n];
                let mut rest = d % n;
                while rest > 0 {
                    let p = 1usize << (usize::BITS - 1 - rest.leading_zeros());
                    blocks.push(p);
                    rest -= p;
                }
                blocks
            }
            StreamRotation::BlockHadamard
            | StreamRotation::KronHadamard
            | StreamRotation::Random => vec![b; m],
        };
        Ok(match kind {
            StreamRotation::Random => Rotation {
                d,
                b,
                m,
                blocks,
                // Stored transposed, so `apply` runs as axpy over rows.
                dense: transpose(&random_orthogonal(d, GAUSSIAN_SEED), d),
                signs: Vec::new(),
                kind,
            },
            StreamRotation::BlockHadamard
            | StreamRotation::BlockHadamardOf(_)
            | StreamRotation::KronHadamard => Rotation {
                d,
                b,
                m,
                blocks,
                dense: match kind {
                    StreamRotation::KronHadamard => random_orthogonal(m, GAUSSIAN_SEED),
                    StreamRotation::BlockHadamard
                    | StreamRotation::BlockHadamardOf(_)
                    | StreamRotation::Random => Vec::new(),
                },
                signs: super::pipeline::rotation_signs(d),
                kind,
            },
        })
    }

    /// `x = R x` in place (f64).
    fn apply(&self, x: &mut [f64]) {
        let (d, b, m) = (self.d, self.b, self.m);
        match self.kind {
            StreamRotation::Random => {
                // x = R old = sum_i old_i (column i of R), column i of R
                // being row i of the stored transpose.
                let old = x.to_vec();
                x.fill(0.0);
                for (&o, col) in old.iter().zip(self.dense.chunks_exact(d)) {
                    for (v, &r) in x.iter_mut().zip(col) {
                        *v += o * r;
                    }
                }
            }
            StreamRotation::BlockHadamard
            | StreamRotation::BlockHadamardOf(_)
            | StreamRotation::KronHadamard => {
                for (v, &s) in x.iter_mut().zip(&self.signs) {
                    *v *= f64::from(s);
                }
                let mut lo = 0;
                for &n in &self.blocks {
                    let part = &mut x[lo..lo + n];
                    super::calibration::hadamard_f64(part);
                    let norm = 1.0 / (n as f64).sqrt();
                    for v in part.iter_mut() {
                        *v *= norm;
                    }
                    lo += n;
                }
                if self.kind == StreamRotation::KronHadamard && m > 1 {
                    let old = x.to_vec();
                    for p in 0..m {
                        for a in 0..b {
                            x[p * b + a] =
                                (0..m).map(|q| self.dense[p * m + q] * old[q * b + a]).sum();
                        }
                    }
                }
            }
        }
    }
}

/// The transpose of the row-major `n x n` matrix `a`.
fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
}

/// A seeded random orthogonal `n x n` matrix: modified Gram-Schmidt on the
/// rows of a Gaussian matrix (Box-Muller from SplitMix64), row-major f64.
fn random_orthogonal(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    let mut uniform = || ((splitmix64(&mut state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut g: Vec<f64> = (0..n * n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect();
    for i in 0..n {
        let (done, rest) = g.split_at_mut(i * n);
        let row = &mut rest[..n];
        // Twice, for orthogonality to f64 rounding.
        for _ in 0..2 {
            for prev in done.chunks_exact(n) {
                let dot: f64 = prev.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                for (x, &p) in row.iter_mut().zip(prev) {
                    *x -= dot * p;
                }
            }
        }
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        for x in row.iter_mut() {
            *x /= norm;
        }
    }
    g
}

/// A model with its residual stream rotated ([`rotate_stream_model`]).
#[derive(Debug)]
pub struct RotatedStream {
    /// The rewritten model: f32-equivalent to the original (its LM head
    /// applies the mix, then the rotated table; the head's f32 weights are
    /// that table, which is what gets quantized).
    pub model: Model,
    /// `M = R diag(gamma_out) R^T`, row-major `hidden x hidden` f32: what
    /// the final norm's output is mixed by before the head.
    pub head_mix: Arc<[f32]>,
}

/// The model with every norm folded and its residual stream rotated by
/// `kind`'s matrix (module doc). Needs a tied LM head (the case this
/// rotation is for).
pub fn rotate_stream_model(
    model: &Model,
    kind: StreamRotation,
) -> Result<RotatedStream, ModelQuantError> {
    let c = model.config().clone();
    if !c.tied_embeddings {
        return Err(ModelQuantError::Input(
            "the stream rotation is built for a tied LM head; this model has its own".into(),
        ));
    }
    let d = c.hidden;
    let rot = Rotation::new(kind, d)?;
    let gamma = model.output_norm();
    let ones = vec![1f32; d];
    let mut map = WeightMap::new("stream-rotated model");
    let table = rotate_rows(model.embedding(), d, None, &rot);
    map.insert(
        "token_embd.weight",
        vec![d as u64, c.vocab as u64],
        table.clone(),
    );
    for (b, blk) in model.blocks().iter().enumerate() {
        let id = |kind| LinearId {
            block: Some(b),
            kind,
        };
        for kind in LinearKind::BLOCK {
            let w = weights(model, id(kind))?;
            let (cols, rows) = dims(&c, kind);
            let w = match kind {
                LinearKind::Q | LinearKind::K | LinearKind::V => {
                    rotate_rows(&w, d, Some(&blk.attn_norm), &rot)
                }
                LinearKind::Gate | LinearKind::Up => rotate_rows(&w, d, Some(&blk.ffn_norm), &rot),
                LinearKind::AttnOutput | LinearKind::Down => rotate_output(&w, cols, &rot),
                LinearKind::LmHead => w,
            };
            map.insert(id(kind).gguf_name(), vec![cols as u64, rows as u64], w);
        }
        map.insert(
            format!("blk.{b}.attn_norm.weight"),
            vec![d as u64],
            ones.clone(),
        );
        map.insert(
            format!("blk.{b}.ffn_norm.weight"),
            vec![d as u64],
            ones.clone(),
        );
    }
    map.insert("output_norm.weight", vec![d as u64], ones);
    // M = R diag(gamma) R^T, column by column: M e_j = R (gamma . R^T e_j),
    // and R^T e_j is row j of R (the transpose of R's columns).
    let r = stream_rotation_matrix(kind, d)?;
    let mut head_mix = vec![0f32; d * d];
    let cols: Vec<Vec<f64>> = (0..d)
        .into_par_iter()
        .map(|j| {
            let mut v: Vec<f64> = (0..d).map(|i| r[j * d + i] * f64::from(gamma[i])).collect();
            rot.apply(&mut v);
            v
        })
        .collect();
    for (j, col) in cols.iter().enumerate() {
        for (i, &v) in col.iter().enumerate() {
            head_mix[i * d + j] = v as f32;
        }
    }
    let head_mix: Arc<[f32]> = head_mix.into();
    let mut out = Model::from_config_weights(c.clone(), map)?;
    out.set_threads(model.threads())?;
    let head = LinearId {
        block: None,
        kind: LinearKind::LmHead,
    };
    out.replace_linear(
        head,
        Box::new(MixedHead {
            mix: head_mix.clone(),
            table: DenseLinear::new(c.vocab, d, table.into()),
            d,
        }),
    )?;
    Ok(RotatedStream {
        model: out,
        head_mix,
    })
}

/// A model with only its tied table rotated ([`rotate_head_model`]).
#[derive(Debug)]
pub struct RotatedHead {
    /// The rewritten model: the blocks and the embedding the reference looks
    /// up as before, the final norm's weight 1, and an LM head that mixes
    /// by [`RotatedHead::head_mix`], then multiplies by the rotated table
    /// (its f32 weights, what gets quantized); f32-equivalent to the
    /// original.
    pub model: Model,
    /// `R diag(gamma_out)`, row-major `hidden x hidden` f32: the final norm's
    /// output is mixed by it before the head.
    pub head_mix: Arc<[f32]>,
    /// `R^T`, row-major `hidden x hidden` f32: a row of the stored (rotated)
    /// table is mixed by it after the lookup, giving the embedding back.
    pub embedding_mix: Arc<[f32]>,
}

/// The model with only its tied embedding/LM-head table rotated by
/// `kind`'s matrix `R`: the table is stored once as rows `R e_t` (so the
/// head quantizes a rotated, incoherent matrix), the lookup un-rotates a
/// row on line (`x = R^T (R e_t)`, the golden variant
/// `GoldenModel::with_embedding_mix`), the blocks keep the unrotated stream
/// and their norms, and the head mixes the final norm's unweighted output by
/// `R diag(gamma_out)` (`GoldenModel::with_head_mix`). Two dense
/// `hidden x hidden` products a token, and no block matrix changes.
pub fn rotate_head_model(
    model: &Model,
    kind: StreamRotation,
) -> Result<RotatedHead, ModelQuantError> {
    let c = model.config().clone();
    if !c.tied_embeddings {
        return Err(ModelQuantError::Input(
            "the head rotation is built for a tied LM head; this model has its own".into(),
        ));
    }
    let d = c.hidden;
    let rot = Rotation::new(kind, d)?;
    let r = stream_rotation_matrix(kind, d)?;
    let gamma = model.output_norm();
    let head_mix: Arc<[f32]> = (0..d * d)
        .map(|k| (r[k] * f64::from(gamma[k % d])) as f32)
        .collect::<Vec<f32>>()
        .into();
    let embedding_mix: Arc<[f32]> = transpose(&r, d)
        .into_iter()
        .map(|v| v as f32)
        .collect::<Vec<f32>>()
        .into();
    let table = rotate_rows(model.embedding(), d, None, &rot);
    let mut map = WeightMap::new("head-rotated model");
    map.insert(
        "token_embd.weight",
        vec![d as u64, c.vocab as u64],
        model.embedding().to_vec(),
    );
    for (b, blk) in model.blocks().iter().enumerate() {
        for kind in LinearKind::BLOCK {
            let id = LinearId {
                block: Some(b),
                kind,
            };
            let (cols, rows) = dims(&c, kind);
            map.insert(
                id.gguf_name(),
                vec![cols as u64, rows as u64],
                weights(model, id)?,
            );
        }
        map.insert(
            format!("blk.{b}.attn_norm.weight"),
            vec![d as u64],
            blk.attn_norm.clone(),
        );
        map.insert(
            format!("blk.{b}.ffn_norm.weight"),
            vec![d as u64],
            blk.ffn_norm.clone(),
        );
    }
    map.insert("output_norm.weight", vec![d as u64], vec![1f32; d]);
    let mut out = Model::from_config_weights(c.clone(), map)?;
    out.set_threads(model.threads())?;
    out.replace_linear(
        LinearId {
            block: None,
            kind: LinearKind::LmHead,
        },
        Box::new(MixedHead {
            mix: head_mix.clone(),
            table: DenseLinear::new(c.vocab, d, table.into()),
            d,
        }),
    )?;
    Ok(RotatedHead {
        model: out,
        head_mix,
        embedding_mix,
    })
}

/// Each row `w` of `m` (`d` wide) as `R (gamma . w)` (the row of
/// `W diag(gamma) R^T`); in f64, rounded once.
fn rotate_rows(m: &[f32], d: usize, gamma: Option<&[f32]>, rot: &Rotation) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    out.par_chunks_mut(d).zip(m.par_chunks(d)).for_each_init(
        || vec![0f64; d],
        |v, (o, row)| {
            for (i, (y, &w)) in v.iter_mut().zip(row).enumerate() {
                *y = f64::from(w) * gamma.map_or(1.0, |g| f64::from(g[i]));
            }
            rot.apply(v);
            for (o, &a) in o.iter_mut().zip(v.iter()) {
                *o = a as f32;
            }
        },
    );
    out
}

/// `R W` for an output matrix `W` (`hidden` rows of `cols`): `R` applied
/// to every column; in f64, rounded once.
fn rotate_output(w: &[f32], cols: usize, rot: &Rotation) -> Vec<f32> {
    let d = w.len() / cols;
    let rotated: Vec<Vec<f64>> = (0..cols)
        .into_par_iter()
        .map(|c| {
            let mut v: Vec<f64> = (0..d).map(|i| f64::from(w[i * cols + c])).collect();
            rot.apply(&mut v);
            v
        })
        .collect();
    let mut out = vec![0f32; w.len()];
    for (c, col) in rotated.iter().enumerate() {
        for (i, &v) in col.iter().enumerate() {
            out[i * cols + c] = v as f32;
        }
    }
    out
}

/// The rotated model's LM head: `table (M x)` for each row `x` (the mix
/// along lanes, as the golden variant computes it, then the f32 table).
/// Its f32 weights are the table: what a tied head quantizes.
#[derive(Debug)]
struct MixedHead {
    mix: Arc<[f32]>,
    table: DenseLinear,
    d: usize,
}

impl Linear for MixedHead {
    fn in_features(&self) -> usize {
        self.d
    }

    fn out_features(&self) -> usize {
        self.table.out_features()
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let mut v = vec![0f32; x.len()];
        for (vr, xr) in v.chunks_exact_mut(self.d).zip(x.chunks_exact(self.d)) {
            q35_contract::semantics::mix_along_lanes(&self.mix, xr, vr);
        }
        self.table.forward(&v, out);
    }

    fn weights_f32(&self) -> Option<Cow<'_, [f32]>> {
        self.table.weights_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rotation_is_orthogonal_and_deterministic() {
        for kind in StreamRotation::ALL {
            for d in [64, 96, 576] {
                let r = stream_rotation_matrix(kind, d).unwrap();
                let mut worst = 0f64;
                // Every row pair at 64 and 96; at 576 the first 40 rows
                // against all (debug builds are slow).
                let rows = if d == 576 { 40 } else { d };
                for a in 0..rows {
                    for b in 0..d {
                        let dot: f64 = (0..d).map(|i| r[a * d + i] * r[b * d + i]).sum();
                        let want = if a == b { 1.0 } else { 0.0 };
                        worst = worst.max((dot - want).abs());
                    }
                }
                assert!(worst < 1e-12, "{kind} at {d}: R R^T off by {worst}");
                assert_eq!(r, stream_rotation_matrix(kind, d).unwrap());
            }
            assert_eq!(kind.name().parse::<StreamRotation>(), Ok(kind));
        }
        // The block form mixes only within its 64-channel blocks, the others
        // across all of them.
        let block = stream_rotation_matrix(StreamRotation::BlockHadamard, 576).unwrap();
        assert_eq!(block[64], 0.0);
        assert_eq!(block[0].abs(), 0.125);
        let kron = stream_rotation_matrix(StreamRotation::KronHadamard, 576).unwrap();
        assert_ne!(kron[64], 0.0);
        assert!("hadamard".parse::<StreamRotation>().is_err());
        // Explicit block sizes: 576 at 128 is four blocks of 128 and one of
        // 64; at 64 it is the default.
        let of = |n| StreamRotation::BlockHadamardOf(n);
        assert_eq!("block-hadamard-128".parse::<StreamRotation>(), Ok(of(128)));
        assert!("block-hadamard-96".parse::<StreamRotation>().is_err());
        assert!("block-hadamard-1".parse::<StreamRotation>().is_err());
        assert_eq!(
            Rotation::new(of(128), 576).unwrap().blocks,
            [128, 128, 128, 128, 64]
        );
        assert_eq!(Rotation::new(of(256), 576).unwrap().blocks, [256, 256, 64]);
        assert_eq!(
            stream_rotation_matrix(of(64), 576).unwrap(),
            block,
            "block-hadamard-64 is block-hadamard at 576"
        );
        for n in [16, 128, 512] {
            let r = stream_rotation_matrix(of(n), 576).unwrap();
            for a in [0, 100, 511, 575] {
                for b in [0, 100, 300, 511, 512, 575] {
                    let dot: f64 = (0..576).map(|i| r[a * 576 + i] * r[b * 576 + i]).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!(
                        (dot - want).abs() < 1e-12,
                        "block {n}: rows {a}, {b}: {dot}"
                    );
                }
            }
            // The first block's row reaches exactly its block.
            assert!(r[..n].iter().all(|&v| v != 0.0) && r[n..576].iter().all(|&v| v == 0.0));
        }
    }
}
