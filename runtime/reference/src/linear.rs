//! Matrix-vector layers behind one trait, so quantized layers plug into the
//! same block code.
//!
//! A [`Linear`] maps `n` input rows of `in_features` to `n` output rows of
//! `out_features` (`y = W x` per row, `W` stored as `out_features` rows of
//! `in_features`, GGUF's layout). The reference implements it twice, with the
//! same bits: [`DenseLinear`] holds f32 weights, [`DequantLinear`] holds the
//! GGUF's quantized blocks and dequantizes rows on the fly (llama.cpp-exact,
//! through `q35_gguf::dequant`). The quantized integer path (q35-quant) adds
//! its own implementations.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use q35_gguf::GgmlType;
use rayon::prelude::*;

use crate::kernels::{Q4_1_QS, QBLOCK, matmul_t, rows_q4_1, rows_q8_0};

/// A linear layer without bias.
///
/// Implementations may use the rayon pool they are called in (the model runs
/// every forward pass inside its own pool).
pub trait Linear: Send + Sync + fmt::Debug {
    /// Input width.
    fn in_features(&self) -> usize;
    /// Output width.
    fn out_features(&self) -> usize;
    /// `x` holds `n` rows of [`in_features`](Linear::in_features) values,
    /// `out` receives `n` rows of [`out_features`](Linear::out_features).
    /// Callers guarantee both lengths.
    fn forward(&self, x: &[f32], out: &mut [f32]);
    /// The layer's weights as f32 rows (`out_features` rows of
    /// `in_features`), when it has such a form. Quantizers start from here.
    fn weights_f32(&self) -> Option<Cow<'_, [f32]>> {
        None
    }
    /// True when [`forward_rows`](Linear::forward_rows) computes a part of
    /// the rows for a part of the cost, so a decode step may run several
    /// layers' rows as one parallel job ([`forward_fused`]). Default: false.
    fn row_parallel(&self) -> bool {
        false
    }
    /// For one token (`x` holds [`in_features`](Linear::in_features)
    /// values): rows `r0..r0 + out.len()` of its output, the same bits as
    /// [`forward`](Linear::forward) gives them. The default runs `forward`
    /// and copies the rows out.
    fn forward_rows(&self, x: &[f32], r0: usize, out: &mut [f32]) {
        let mut full = vec![0.0f32; self.out_features()];
        self.forward(x, &mut full);
        out.copy_from_slice(&full[r0..r0 + out.len()]);
    }
}

/// Runs one token through several layers that read the same input (Q, K
/// and V) as one parallel job over all their rows, instead of one job per
/// layer: fewer hand-offs between threads per decode step, same bits (every
/// output row is computed alone). Layers that are not
/// [`row_parallel`](Linear::row_parallel) run one by one.
pub(crate) fn forward_fused(layers: &[&dyn Linear], x: &[f32], outs: &mut [&mut [f32]]) {
    if !layers.iter().all(|l| l.row_parallel()) {
        for (l, o) in layers.iter().zip(outs.iter_mut()) {
            l.forward(x, o);
        }
        return;
    }
    let total: usize = layers.iter().map(|l| l.out_features()).sum();
    let rpt = rows_per_task(total);
    let tasks: Vec<(&dyn Linear, usize, &mut [f32])> = layers
        .iter()
        .zip(outs.iter_mut())
        .flat_map(|(&l, o)| {
            o.chunks_mut(rpt)
                .enumerate()
                .map(move |(ci, oc)| (l, ci * rpt, oc))
        })
        .collect();
    tasks
        .into_par_iter()
        .for_each(|(l, r0, oc)| l.forward_rows(x, r0, oc));
}

/// SwiGLU's two input products for one token as one parallel job, each task
/// finishing its rows with `silu(gate) * up` into `g` (`u` receives the up
/// rows). Same bits as `gate.forward`, `up.forward` and the product after;
/// layers that are not [`row_parallel`](Linear::row_parallel) run so.
pub(crate) fn forward_swiglu(
    gate: &dyn Linear,
    up: &dyn Linear,
    x: &[f32],
    g: &mut [f32],
    u: &mut [f32],
) {
    let glu = |g: &mut [f32], u: &[f32]| {
        for (gv, uv) in g.iter_mut().zip(u) {
            *gv = crate::kernels::silu(*gv) * uv;
        }
    };
    if !(gate.row_parallel() && up.row_parallel()) {
        gate.forward(x, g);
        up.forward(x, u);
        glu(g, u);
        return;
    }
    let rpt = rows_per_task(2 * g.len()).max(4);
    g.par_chunks_mut(rpt)
        .zip(u.par_chunks_mut(rpt))
        .enumerate()
        .for_each(|(ci, (gc, uc))| {
            gate.forward_rows(x, ci * rpt, gc);
            up.forward_rows(x, ci * rpt, uc);
            glu(gc, uc);
        });
}

/// Which matrix of the model a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    AttnOutput,
    /// SwiGLU gate.
    Gate,
    /// SwiGLU up projection.
    Up,
    /// SwiGLU down projection.
    Down,
    /// The LM head (the token embedding when tied).
    LmHead,
}

/// A layer's place in the model: block index (none for the LM head) and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    /// Transformer block, `None` for the LM head.
    pub block: Option<usize>,
    /// Which matrix.
    pub kind: LinearKind,
}

impl LinearKind {
    /// The seven per-block matrices in forward order.
    pub const BLOCK: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::AttnOutput,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// llama.cpp's tensor name stem (`attn_q`, ..., `output`).
    pub fn gguf_stem(self) -> &'static str {
        match self {
            LinearKind::Q => "attn_q",
            LinearKind::K => "attn_k",
            LinearKind::V => "attn_v",
            LinearKind::AttnOutput => "attn_output",
            LinearKind::Gate => "ffn_gate",
            LinearKind::Up => "ffn_up",
            LinearKind::Down => "ffn_down",
            LinearKind::LmHead => "output",
        }
    }
}

impl LinearId {
    /// llama.cpp's GGUF tensor name (`blk.3.attn_q.weight`, `output.weight`).
    pub fn gguf_name(&self) -> String {
        match self.block {
            Some(b) => format!("blk.{b}.{}.weight", self.kind.gguf_stem()),
            None => format!("{}.weight", self.kind.gguf_stem()),
        }
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.gguf_name())
    }
}

/// Rows per parallel task: a multiple of 4 (the kernel's row group) giving
/// about eight tasks per worker thread.
fn rows_per_task(rows: usize) -> usize {
    let tasks = 8 * rayon::current_num_threads().max(1);
    rows.div_ceil(tasks).next_multiple_of(4).max(4)
}

/// Runs `rows_fn(first_row, n_rows, out_t)` over row ranges in parallel and
/// assembles `out` (token-major) from the row-major partial results.
fn parallel_rows<F>(rows: usize, n: usize, out: &mut [f32], rows_fn: F)
where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    let rpt = rows_per_task(rows);
    if n == 1 {
        out.par_chunks_mut(rpt)
            .enumerate()
            .for_each(|(ci, oc)| rows_fn(ci * rpt, oc.len(), oc));
        return;
    }
    let mut tmp = vec![0.0f32; rows * n];
    tmp.par_chunks_mut(rpt * n)
        .enumerate()
        .for_each(|(ci, tc)| rows_fn(ci * rpt, tc.len() / n, tc));
    for (t, orow) in out.chunks_exact_mut(rows).enumerate() {
        for (r, o) in orow.iter_mut().enumerate() {
            *o = tmp[r * n + t];
        }
    }
}

/// f32 weights, `rows` rows of `cols` values (shared, so a tied LM head and
/// the embedding table are one allocation).
#[derive(Clone)]
pub struct DenseLinear {
    rows: usize,
    cols: usize,
    w: Arc<[f32]>,
}

impl fmt::Debug for DenseLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseLinear")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl DenseLinear {
    /// A layer of `rows` outputs over `cols` inputs.
    ///
    /// # Panics
    /// If `w.len() != rows * cols` (callers check shapes first).
    pub fn new(rows: usize, cols: usize, w: Arc<[f32]>) -> DenseLinear {
        assert_eq!(w.len(), rows * cols, "DenseLinear: weight size");
        DenseLinear { rows, cols, w }
    }

    /// The weights, row-major.
    pub fn weights(&self) -> &Arc<[f32]> {
        &self.w
    }
}

impl Linear for DenseLinear {
    fn in_features(&self) -> usize {
        self.cols
    }

    fn out_features(&self) -> usize {
        self.rows
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let n = x.len() / self.cols;
        let cols = self.cols;
        parallel_rows(self.rows, n, out, |r0, nr, out_t| {
            matmul_t(&self.w[r0 * cols..(r0 + nr) * cols], cols, x, n, out_t);
        });
    }

    fn weights_f32(&self) -> Option<Cow<'_, [f32]>> {
        Some(Cow::Borrowed(&self.w))
    }

    fn row_parallel(&self) -> bool {
        true
    }

    fn forward_rows(&self, x: &[f32], r0: usize, out: &mut [f32]) {
        let cols = self.cols;
        matmul_t(&self.w[r0 * cols..(r0 + out.len()) * cols], cols, x, 1, out);
    }
}

/// Weights kept in a GGUF block format and dequantized during the product;
/// numerically the same as [`DenseLinear`] on `Gguf::tensor_f32` of the same
/// tensor. Q4_1 and Q8_0 blocks are split into arrays of fp16 scales (and
/// minimums) and codes, the file's bytes and no more (20 and 34 bytes per 32
/// weights), for the fused dequantize-and-dot kernels: decode is bound by
/// reading the weights, so every byte counts. Other formats (Q4_0, F16) are
/// kept as bytes and dequantized a few rows at a time by `q35_gguf::dequant`.
#[derive(Clone)]
pub struct DequantLinear {
    rows: usize,
    cols: usize,
    ty: GgmlType,
    packed: Arc<Packed>,
}

enum Packed {
    /// Per block: scale and minimum (fp16 bits), 16 bytes of nibbles.
    Q4_1 {
        d: Vec<u16>,
        m: Vec<u16>,
        qs: Vec<[u8; Q4_1_QS]>,
    },
    /// Per block: scale (fp16 bits), 32 signed codes.
    Q8_0 {
        d: Vec<u16>,
        qs: Vec<[i8; QBLOCK]>,
    },
    Raw {
        row_bytes: usize,
        data: Vec<u8>,
    },
}

impl fmt::Debug for DequantLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DequantLinear")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("ty", &self.ty)
            .finish()
    }
}

/// Rows dequantized at once (one kernel row group).
const DEQUANT_ROWS: usize = 4;

fn u16_le(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn f16(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

impl DequantLinear {
    /// Wraps raw tensor bytes of type `ty` holding `rows` rows of `cols`.
    /// Returns `None` if the type has no dequantizer or the sizes disagree.
    pub fn new(rows: usize, cols: usize, ty: GgmlType, data: &[u8]) -> Option<DequantLinear> {
        if matches!(ty, GgmlType::Other(_)) {
            return None;
        }
        let (block, block_bytes) = ty.block_layout()?;
        let (block, block_bytes) = (block as usize, block_bytes as usize);
        if block == 0 || !cols.is_multiple_of(block) {
            return None;
        }
        let row_bytes = cols / block * block_bytes;
        if data.len() != rows * row_bytes {
            return None;
        }
        let packed = match ty {
            GgmlType::Q4_1 => {
                let blocks = data.len() / 20;
                let mut d = Vec::with_capacity(blocks);
                let mut m = Vec::with_capacity(blocks);
                let mut qs = Vec::with_capacity(blocks);
                for b in data.chunks_exact(20) {
                    d.push(u16_le(&b[0..2]));
                    m.push(u16_le(&b[2..4]));
                    qs.push(b[4..20].try_into().expect("16 bytes"));
                }
                Packed::Q4_1 { d, m, qs }
            }
            GgmlType::Q8_0 => {
                let (d, qs) = data
                    .chunks_exact(34)
                    .map(|b| {
                        let mut q = [0i8; QBLOCK];
                        for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                            *o = v as i8;
                        }
                        (u16_le(&b[0..2]), q)
                    })
                    .unzip();
                Packed::Q8_0 { d, qs }
            }
            _ => Packed::Raw {
                row_bytes,
                data: data.to_vec(),
            },
        };
        Some(DequantLinear {
            rows,
            cols,
            ty,
            packed: Arc::new(packed),
        })
    }

    /// The GGUF type the weights are kept in.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Rows `r0..r0 + nr` of the product with `n` tokens `x`, row-major
    /// (`out_t[r * n + t]`): the fused kernels for one token, else rows
    /// dequantized a few at a time and multiplied.
    fn rows_into(&self, x: &[f32], n: usize, r0: usize, nr: usize, out_t: &mut [f32]) {
        let cols = self.cols;
        let bpr = cols / QBLOCK;
        if n == 1 {
            let blocks = r0 * bpr..(r0 + nr) * bpr;
            match &*self.packed {
                Packed::Q4_1 { d, m, qs } => {
                    let (d, m) = (&d[blocks.clone()], &m[blocks.clone()]);
                    return rows_q4_1(d, m, &qs[blocks], cols, x, out_t);
                }
                Packed::Q8_0 { d, qs } => {
                    return rows_q8_0(&d[blocks.clone()], &qs[blocks], cols, x, out_t);
                }
                Packed::Raw { .. } => {}
            }
        }
        let mut buf = vec![0.0f32; DEQUANT_ROWS * cols];
        let mut r = 0;
        while r < nr {
            let g = DEQUANT_ROWS.min(nr - r);
            self.dequant_rows(r0 + r, g, &mut buf);
            matmul_t(&buf[..g * cols], cols, x, n, &mut out_t[r * n..(r + g) * n]);
            r += g;
        }
    }

    /// Dequantizes rows `r0..r0 + nr` into `buf` (llama.cpp's arithmetic).
    pub fn dequant_rows(&self, r0: usize, nr: usize, buf: &mut [f32]) {
        let cols = self.cols;
        let bpr = cols / QBLOCK;
        let buf = &mut buf[..nr * cols];
        match &*self.packed {
            Packed::Q4_1 { d, m, qs } => {
                let blocks = r0 * bpr..(r0 + nr) * bpr;
                for (((o, &d), &m), q) in buf
                    .chunks_exact_mut(QBLOCK)
                    .zip(&d[blocks.clone()])
                    .zip(&m[blocks.clone()])
                    .zip(&qs[blocks])
                {
                    let (d, m) = (f16(d), f16(m));
                    for k in 0..Q4_1_QS {
                        o[k] = f32::from(q[k] & 0x0f) * d + m;
                        o[k + Q4_1_QS] = f32::from(q[k] >> 4) * d + m;
                    }
                }
            }
            Packed::Q8_0 { d, qs } => {
                let blocks = r0 * bpr..(r0 + nr) * bpr;
                for ((o, &d), q) in buf
                    .chunks_exact_mut(QBLOCK)
                    .zip(&d[blocks.clone()])
                    .zip(&qs[blocks])
                {
                    let d = f16(d);
                    for k in 0..QBLOCK {
                        o[k] = f32::from(q[k]) * d;
                    }
                }
            }
            Packed::Raw { row_bytes, data } => {
                let bytes = &data[r0 * row_bytes..(r0 + nr) * row_bytes];
                // The type and sizes were checked in `new`.
                let _ = q35_gguf::dequant::dequantize(self.ty, bytes, buf);
            }
        }
    }
}

impl Linear for DequantLinear {
    fn in_features(&self) -> usize {
        self.cols
    }

    fn out_features(&self) -> usize {
        self.rows
    }

    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let n = x.len() / self.cols;
        parallel_rows(self.rows, n, out, |r0, nr, out_t| {
            self.rows_into(x, n, r0, nr, out_t);
        });
    }

    fn row_parallel(&self) -> bool {
        true
    }

    fn forward_rows(&self, x: &[f32], r0: usize, out: &mut [f32]) {
        self.rows_into(x, 1, r0, out.len(), out);
    }

    fn weights_f32(&self) -> Option<Cow<'_, [f32]>> {
        let mut w = vec![0.0f32; self.rows * self.cols];
        self.dequant_rows(0, self.rows, &mut w);
        Some(Cow::Owned(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_dequant_agree_bitwise() {
        let rows = 13;
        let cols = 64;
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.01)
            .collect();
        let q = q35_gguf::dequant::quantize_q4_1(&w);
        let dq = DequantLinear::new(rows, cols, GgmlType::Q4_1, &q).expect("q4_1");
        let mut wf = vec![0.0f32; rows * cols];
        q35_gguf::dequant::dequantize(GgmlType::Q4_1, &q, &mut wf).expect("dequant");
        let dense = DenseLinear::new(rows, cols, wf.into());
        for n in [1usize, 3] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 11 % 7) as f32 - 3.0) * 0.2)
                .collect();
            let mut a = vec![0.0; n * rows];
            let mut b = vec![0.0; n * rows];
            dense.forward(&x, &mut a);
            dq.forward(&x, &mut b);
            assert_eq!(a, b);
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = crate::kernels::dot(
                        &dense.weights()[r * cols..(r + 1) * cols],
                        &x[t * cols..(t + 1) * cols],
                    );
                    assert_eq!(a[t * rows + r].to_bits(), want.to_bits());
                }
            }
        }
    }

    #[test]
    fn names() {
        let id = LinearId {
            block: Some(3),
            kind: LinearKind::Q,
        };
        assert_eq!(id.gguf_name(), "blk.3.attn_q.weight");
        let head = LinearId {
            block: None,
            kind: LinearKind::LmHead,
        };
        assert_eq!(head.to_string(), "output.weight");
    }
}
