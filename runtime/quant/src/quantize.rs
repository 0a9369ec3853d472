//! Quantizers for every scheme (docs/q35-format.md, "Quantizers").
//!
//! All schemes share one block quantizer: for each (row, group) block it
//! searches the fp16 scale that minimises the (importance-)weighted squared
//! error `sum_j w_j (x_j - d * m_j * c_j)^2`, trying a grid of clipping
//! ratios of the no-clipping scale and the least-squares scale for each
//! (as llama.cpp's `make_qx_quants` does), with the sign of `d` chosen so
//! the largest-magnitude weight lands on the extra negative level. Q35
//! schemes add two matrix-wide choices: which half of every group's
//! channels get 4-bit codes (the slot mask) and the integer multipliers
//! of the 4-bit and 3-bit codes.
//!
//! Work is split into fixed chunks of rows, and every reduction over rows is
//! summed chunk by chunk in chunk order, so results do not depend on the
//! number of threads.

use crate::{QuantError, QuantScheme};
use half::f16;
use q35_contract::{Layout, QuantizedMatrix};

/// Rows per work chunk (fixed: part of what makes results thread-count
/// independent).
const CHUNK_ROWS: usize = 16;

/// Clipping ratios tried first for every block, as fractions of the
/// no-clipping scale; the best is then refined by +-[`CLIP_FINE`].
const CLIP_COARSE: [f32; 11] = [
    0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00, 1.05,
];

/// Refinement offsets around the best coarse clipping ratio.
const CLIP_FINE: [f32; 2] = [-0.025, 0.025];

/// Candidate (4-bit, 3-bit) code multipliers for Q35, in preference order on
/// ties. (4, 7) is the Gaussian optimum (3-bit step 1.75x the 4-bit step).
pub const Q35_MULTIPLIERS: [(u8, u8); 6] = [(4, 7), (1, 2), (3, 5), (5, 9), (2, 3), (1, 1)];

/// Rows sampled to choose the Q35 multipliers of a matrix.
const MULT_SAMPLE_ROWS: usize = 64;

/// Quantizer options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantOptions {
    /// Worker threads (results are identical for any value).
    pub threads: usize,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// Quantizes a row-major `rows x cols` matrix (`y = W x`, `cols` the
/// reduction dimension) with the default options. `importance` is the
/// per-input-channel importance (mean squared calibration activation,
/// [`crate::metrics::channel_importance`]); [`QuantScheme::Q35`] requires
/// it and the other schemes ignore it.
pub fn quantize(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    group_size: usize,
    importance: Option<&[f32]>,
) -> Result<QuantizedMatrix, QuantError> {
    quantize_with(
        weights,
        rows,
        cols,
        scheme,
        group_size,
        importance,
        QuantOptions::default(),
    )
}

/// [`quantize`] with explicit options.
pub fn quantize_with(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    group_size: usize,
    importance: Option<&[f32]>,
    options: QuantOptions,
) -> Result<QuantizedMatrix, QuantError> {
    quantize_impl(
        weights, rows, cols, scheme, group_size, importance, None, options, false,
    )
}

/// The second moments of calibration activations within each span of
/// `group_size` channels (normally one quantization group; any multiple of
/// it is accepted): `blocks[s]` is the row-major `len_s x len_s` matrix
/// `mean_t x_s x_s^T` of span `s`'s channels (`len_s` its unpadded length).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCovariance {
    /// Channels per span (a multiple of the quantization group size).
    pub group_size: usize,
    /// Input columns.
    pub cols: usize,
    /// One block per group.
    pub blocks: Vec<Vec<f32>>,
}

/// Activation-aware Q35 with in-group error compensation (GPTQ restricted
/// to each group): scales and slots are chosen as by [`quantize_with`], then
/// the codes of each block are fixed channel by channel, each rounding
/// error spread over the block's remaining channels through the damped
/// inverse of the group's activation covariance. Only for
/// [`QuantScheme::Q35`].
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors quantize_with plus the covariance"
)]
pub fn quantize_gptq(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    group_size: usize,
    importance: &[f32],
    covariance: &GroupCovariance,
    options: QuantOptions,
) -> Result<QuantizedMatrix, QuantError> {
    check_covariance(rows, cols, group_size, covariance)?;
    quantize_impl(
        weights,
        rows,
        cols,
        scheme,
        group_size,
        Some(importance),
        Some((covariance, None)),
        options,
        false,
    )
}

/// Checks a covariance's span and block sizes against the matrix.
fn check_covariance(
    rows: usize,
    cols: usize,
    group_size: usize,
    covariance: &GroupCovariance,
) -> Result<(), QuantError> {
    Layout::new(rows, cols, group_size)?;
    let span = covariance.group_size;
    if span == 0 || !span.is_multiple_of(group_size) || covariance.cols != cols {
        return Err(QuantError::LengthMismatch {
            what: "covariance span (a multiple of the group size) / columns",
            got: span * 100_000 + covariance.cols,
            expected: group_size * 100_000 + cols,
        });
    }
    for g in 0..cols.div_ceil(span) {
        let len = span.min(cols - g * span);
        let got = covariance.blocks.get(g).map_or(0, Vec::len);
        if got != len * len {
            return Err(QuantError::LengthMismatch {
                what: "covariance block",
                got,
                expected: len * len,
            });
        }
    }
    Ok(())
}

/// [`quantize_gptq`] with a per-group scale search against the calibration
/// loss (docs/q35-format.md section 14) when `scale_search` is set: for
/// every block, the scale chosen by the block quantizer and the candidates
/// `d * f` for `f` in [`SEARCH_FACTORS`] (rounded to fp16) each get the
/// in-group GPTQ codes, and the one whose covariance-weighted error
/// `(w - d m c)^T C (w - d m c)` is smallest is kept. A span of several
/// groups scales all of its groups' scales by one common factor.
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors quantize_gptq plus the search switch"
)]
pub fn quantize_gptq_with(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    group_size: usize,
    importance: &[f32],
    covariance: &GroupCovariance,
    options: QuantOptions,
    scale_search: bool,
) -> Result<QuantizedMatrix, QuantError> {
    quantize_gptq_factored(
        weights,
        rows,
        cols,
        scheme,
        group_size,
        importance,
        (covariance, None),
        options,
        scale_search,
    )
}

/// [`quantize_gptq_with`] with the covariance's GPTQ factors when they were
/// already computed ([`gptq_factors`] of the same covariance): Q, K and V
/// (gate and up) share their input's covariance, so its factors are
/// computed once ([`crate::model::Calibration`] keeps them).
#[expect(
    clippy::too_many_arguments,
    reason = "quantize_gptq_with's arguments, the factors beside the covariance"
)]
pub(crate) fn quantize_gptq_factored(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    group_size: usize,
    importance: &[f32],
    (covariance, factors): (&GroupCovariance, Option<GptqFactors>),
    options: QuantOptions,
    scale_search: bool,
) -> Result<QuantizedMatrix, QuantError> {
    check_covariance(rows, cols, group_size, covariance)?;
    quantize_impl(
        weights,
        rows,
        cols,
        scheme,
        group_size,
        Some(importance),
        Some((covariance, factors)),
        options,
        scale_search,
    )
}

/// Scale factors the search of [`quantize_gptq_with`] tries besides 1.
pub const SEARCH_FACTORS: [f32; 4] = [0.9, 0.95, 1.05, 1.1];

#[expect(
    clippy::too_many_arguments,
    reason = "internal entry point of every quantizer"
)]
fn quantize_impl(
    weights: &[f32],
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    group_size: usize,
    importance: Option<&[f32]>,
    covariance: Option<(&GroupCovariance, Option<GptqFactors>)>,
    options: QuantOptions,
    scale_search: bool,
) -> Result<QuantizedMatrix, QuantError> {
    let layout = Layout::new(rows, cols, group_size)?;
    if weights.len() != rows * cols {
        return Err(QuantError::ShapeMismatch {
            rows,
            cols,
            len: weights.len(),
        });
    }
    if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
        return Err(QuantError::NonFinite {
            what: "weights",
            index,
        });
    }
    let cp = layout.cols_padded();
    // Error weight per padded channel: importance for Q35, 1 otherwise; 0
    // for padding.
    let mut imp = vec![0f32; cp];
    if scheme.needs_importance() {
        let given = importance.ok_or(QuantError::ImportanceRequired(scheme))?;
        if given.len() != cols {
            return Err(QuantError::LengthMismatch {
                what: "importance",
                got: given.len(),
                expected: cols,
            });
        }
        for (index, &v) in given.iter().enumerate() {
            if !v.is_finite() {
                return Err(QuantError::NonFinite {
                    what: "importance",
                    index,
                });
            }
            if v < 0.0 {
                return Err(QuantError::NegativeImportance { index });
            }
        }
        imp[..cols].copy_from_slice(given);
    } else {
        imp[..cols].fill(1.0);
    }
    let threads = options.threads.max(1);

    if let Some(bits) = scheme.uniform_bits() {
        let nmax = (1u32 << (bits - 1)) as f32;
        let class = Class { mult: 1.0, nmax };
        let groups = (0..layout.n_groups())
            .map(|g| [(0..layout.group_padded_len(g)).collect(), Vec::new()])
            .collect();
        let plan = Plan {
            layout,
            weights,
            imp: &imp,
            classes: [class, class],
            four_bit: Vec::new(),
            groups,
            magnitude_weighting: false,
            gptq: None,
            gptq_span: 0,
            scale_search: false,
        };
        let out = plan.run(&(0..rows).collect::<Vec<_>>(), threads, false);
        return Ok(QuantizedMatrix::from_codes(
            layout,
            scheme,
            (1, 1),
            &out.codes,
            &out.scales,
            None,
        )?);
    }

    // Q35: slot mask and multipliers.
    let mask0 = match scheme {
        QuantScheme::Q35Alternating => (0..cp).map(|j| j % 2 == 0).collect(),
        _ => {
            let colsq = column_energy(weights, layout);
            let score: Vec<f64> = (0..cp).map(|j| f64::from(imp[j]) * colsq[j]).collect();
            balanced_mask(layout, &score)
        }
    };
    let aware = scheme == QuantScheme::Q35;
    let mults = choose_multipliers(layout, weights, &imp, &mask0, aware);
    let all_rows: Vec<usize> = (0..rows).collect();
    let mask = if scheme == QuantScheme::Q35Alternating {
        mask0
    } else {
        // Score the 4-bit benefit of every channel on a sample of rows, and
        // keep the better of the initial and the rescored mask there.
        let sample = mask_sample(rows);
        let first =
            Plan::q35(layout, weights, &imp, &mask0, mults, aware).run(&sample, threads, true);
        let mask1 = balanced_mask(layout, first.score.as_deref().unwrap_or_default());
        if mask1 == mask0 {
            mask0
        } else {
            let second =
                Plan::q35(layout, weights, &imp, &mask1, mults, aware).run(&sample, threads, false);
            if second.err < first.err { mask1 } else { mask0 }
        }
    };
    let mut plan = Plan::q35(layout, weights, &imp, &mask, mults, aware);
    if let (Some((cov, factors)), QuantScheme::Q35) = (covariance, scheme) {
        plan.gptq = Some(factors.unwrap_or_else(|| gptq_factors(cov)));
        plan.gptq_span = cov.group_size;
        plan.scale_search = scale_search;
    }
    let best = plan.run(&all_rows, threads, false);
    let best_mask = mask;
    Ok(QuantizedMatrix::from_codes(
        layout,
        scheme,
        mults,
        &best.codes,
        &best.scales,
        Some(&best_mask),
    )?)
}

/// A code class: codes `-nmax ..= nmax - 1`, integer weight `mult * c`.
#[derive(Debug, Clone, Copy)]
struct Class {
    mult: f32,
    nmax: f32,
}

impl Class {
    fn q35((m4, m3): (u8, u8)) -> [Class; 2] {
        [
            Class {
                mult: f32::from(m4),
                nmax: 8.0,
            },
            Class {
                mult: f32::from(m3),
                nmax: 4.0,
            },
        ]
    }
}

/// Round to nearest, ties to even, for |v| < 2^22 (vectorisable, unlike
/// `f32::round`). Larger magnitudes stay large and are clamped by callers.
#[inline(always)]
fn rne(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// A group's GPTQ channel order, upper Cholesky factor (row-major) and
/// covariance in that order (row-major).
type GptqFactor = (Vec<usize>, Vec<f32>, Vec<f32>);

/// Every group's [`gptq_factor`] of a covariance, shared by the matrices
/// that read the same input.
pub(crate) type GptqFactors = std::sync::Arc<Vec<Option<GptqFactor>>>;

/// The GPTQ factors of every group of `cov`.
pub(crate) fn gptq_factors(cov: &GroupCovariance) -> GptqFactors {
    std::sync::Arc::new(cov.blocks.iter().map(|b| gptq_factor(b)).collect())
}

/// One matrix-wide quantization setup.
struct Plan<'a> {
    layout: Layout,
    weights: &'a [f32],
    imp: &'a [f32],
    classes: [Class; 2],
    /// Per group: channel offsets (within the padded group) of each class.
    groups: Vec<[Vec<usize>; 2]>,
    /// Per group: whether each offset is a 4-bit channel.
    four_bit: Vec<Vec<bool>>,
    /// Weight each error also by `sqrt(mean_row_square + w^2)` (llama.cpp's
    /// importance-matrix weighting; activation-aware Q35 only).
    magnitude_weighting: bool,
    /// Per group: the GPTQ channel order and factor (`None`: plain rounding
    /// for that group).
    gptq: Option<GptqFactors>,
    /// Channels per GPTQ span (a multiple of the group size).
    gptq_span: usize,
    /// Search each span's scales (one common factor) against the
    /// covariance-weighted error.
    scale_search: bool,
}

/// The result of quantizing some rows.
struct RowsOut {
    /// Row-major codes, `rows x cols_padded`.
    codes: Vec<i8>,
    /// Row-major scales, `rows x n_groups`.
    scales: Vec<f16>,
    /// Total weighted squared error.
    err: f64,
    /// Per padded channel: `imp_j * sum_r (e3 - e4)` (Q35 only, on request).
    score: Option<Vec<f64>>,
}

impl<'a> Plan<'a> {
    fn q35(
        layout: Layout,
        weights: &'a [f32],
        imp: &'a [f32],
        mask: &[bool],
        mults: (u8, u8),
        magnitude_weighting: bool,
    ) -> Plan<'a> {
        let groups = (0..layout.n_groups())
            .map(|g| {
                let start = layout.group_start(g);
                let (four, three) = (0..layout.group_padded_len(g)).partition(|&o| mask[start + o]);
                [four, three]
            })
            .collect();
        Plan {
            layout,
            weights,
            imp,
            classes: Class::q35(mults),
            four_bit: (0..layout.n_groups())
                .map(|g| {
                    let start = layout.group_start(g);
                    (0..layout.group_padded_len(g))
                        .map(|o| mask[start + o])
                        .collect()
                })
                .collect(),
            groups,
            magnitude_weighting,
            gptq: None,
            gptq_span: 0,
            scale_search: false,
        }
    }

    /// Quantizes the listed rows on `threads` threads; the result holds them
    /// in list order.
    fn run(&self, rows: &[usize], threads: usize, want_score: bool) -> RowsOut {
        let n_chunks = rows.len().div_ceil(CHUNK_ROWS);
        let mut outs: Vec<Option<RowsOut>> = (0..n_chunks).map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.min(n_chunks))
                .map(|t| {
                    scope.spawn(move || {
                        (t..n_chunks)
                            .step_by(threads)
                            .map(|c| {
                                let first = c * CHUNK_ROWS;
                                let last = (first + CHUNK_ROWS).min(rows.len());
                                let chunk = rows[first..last].iter().copied();
                                (c, self.quantize_rows(chunk, want_score))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for (c, out) in h.join().expect("quantizer worker panicked") {
                    outs[c] = Some(out);
                }
            }
        });
        let cp = self.layout.cols_padded();
        let mut all = RowsOut {
            codes: Vec::with_capacity(rows.len() * cp),
            scales: Vec::with_capacity(rows.len() * self.layout.n_groups()),
            err: 0.0,
            score: want_score.then(|| vec![0f64; cp]),
        };
        for out in outs.into_iter().flatten() {
            all.codes.extend_from_slice(&out.codes);
            all.scales.extend_from_slice(&out.scales);
            all.err += out.err;
            if let (Some(total), Some(part)) = (all.score.as_mut(), out.score) {
                for (t, p) in total.iter_mut().zip(part) {
                    *t += p;
                }
            }
        }
        all
    }

    /// Quantizes the given rows (any iterator of row indices), with AVX2
    /// when the CPU has it: the same IEEE operations in wider registers
    /// (Rust never fuses a multiply and an add), so the same bits.
    fn quantize_rows(&self, rows: impl Iterator<Item = usize>, want_score: bool) -> RowsOut {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.quantize_rows_avx2(rows, want_score) };
        }
        self.quantize_rows_impl(rows, want_score)
    }

    /// [`Plan::quantize_rows`] compiled for AVX2 (the helpers it calls are
    /// inlined into it, so they are too).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn quantize_rows_avx2(&self, rows: impl Iterator<Item = usize>, want_score: bool) -> RowsOut {
        self.quantize_rows_impl(rows, want_score)
    }

    #[inline(always)]
    fn quantize_rows_impl(&self, rows: impl Iterator<Item = usize>, want_score: bool) -> RowsOut {
        let l = self.layout;
        let cp = l.cols_padded();
        let n_groups = l.n_groups();
        let mut out = RowsOut {
            codes: Vec::new(),
            scales: Vec::new(),
            err: 0.0,
            score: want_score.then(|| vec![0f64; cp]),
        };
        let mut xs: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
        let mut ws: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
        let mut cs: [Vec<i8>; 2] = [Vec::new(), Vec::new()];
        let (mut gw, mut gf, mut gc) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let row = &self.weights[r * l.cols..(r + 1) * l.cols];
            // Mean square of the row (sequential f32), for magnitude weighting.
            let sigma2 = if self.magnitude_weighting {
                row.iter().fold(0f32, |a, v| a + v * v) / l.cols as f32
            } else {
                0.0
            };
            let base = out.codes.len();
            out.codes.resize(base + cp, 0);
            for g in 0..n_groups {
                let start = l.group_start(g);
                let len = l.group_len(g);
                for (k, idx) in self.groups[g].iter().enumerate() {
                    xs[k].clear();
                    ws[k].clear();
                    xs[k].extend(
                        idx.iter()
                            .map(|&o| if o < len { row[start + o] } else { 0.0 }),
                    );
                    ws[k].extend(idx.iter().map(|&o| {
                        let x = if o < len { row[start + o] } else { 0.0 };
                        if self.magnitude_weighting {
                            self.imp[start + o] * (sigma2 + x * x).sqrt()
                        } else {
                            self.imp[start + o]
                        }
                    }));
                    cs[k].clear();
                    cs[k].resize(idx.len(), 0);
                }
                let (d, err) = quantize_block(
                    [
                        (self.classes[0], &xs[0], &ws[0]),
                        (self.classes[1], &xs[1], &ws[1]),
                    ],
                    &mut cs,
                );
                out.err += err;
                out.scales.push(d);
                for (idx, codes) in self.groups[g].iter().zip(&cs) {
                    for (&o, &c) in idx.iter().zip(codes) {
                        out.codes[base + start + o] = c;
                    }
                }
                if let Some(score) = out.score.as_mut() {
                    let d = d.to_f32();
                    for (idx, x) in self.groups[g].iter().zip(&xs) {
                        for (&o, &x) in idx.iter().zip(x) {
                            let e4 = class_error(x, d, self.classes[0]);
                            let e3 = class_error(x, d, self.classes[1]);
                            score[start + o] += f64::from(self.imp[start + o]) * (e3 - e4);
                        }
                    }
                }
            }
            if let Some(factors) = &self.gptq {
                let first_scale = out.scales.len() - n_groups;
                let search = self.scale_search;
                for (si, f) in factors.iter().enumerate() {
                    let Some((order, u, cov)) = f else {
                        continue;
                    };
                    if search {
                        let s0 = si * self.gptq_span;
                        let g0 = s0 / l.group_size;
                        let g1 = (s0 + order.len()).div_ceil(l.group_size);
                        let d0: Vec<f16> = out.scales[first_scale + g0..first_scale + g1].to_vec();
                        let mut best: Option<(f64, Vec<f16>, Vec<i8>)> = None;
                        for f in std::iter::once(1.0).chain(SEARCH_FACTORS) {
                            let d: Vec<f16> = if f == 1.0 {
                                d0.clone()
                            } else {
                                d0.iter().map(|&d| to_f16(d.to_f32() * f)).collect()
                            };
                            if f != 1.0 && (d == d0 || d.contains(&f16::ZERO)) {
                                continue;
                            }
                            gw.clear();
                            gw.extend(order.iter().map(|&o| row[s0 + o]));
                            gf.clear();
                            gf.extend(order.iter().map(|&o| {
                                let j = s0 + o;
                                let g = j / l.group_size;
                                let four = self.four_bit[g][j - g * l.group_size];
                                let c = self.classes[usize::from(!four)];
                                (d[g - g0].to_f32() * c.mult, c.nmax)
                            }));
                            gc.clear();
                            gc.resize(order.len(), 0);
                            gptq_block(&mut gw, &gf, u, &mut gc);
                            let err = weighted_error(order, row, s0, &gf, &gc, cov);
                            if best.as_ref().is_none_or(|b| err < b.0) {
                                best = Some((err, d, gc.clone()));
                            }
                        }
                        if let Some((_, d, codes)) = best {
                            out.scales[first_scale + g0..first_scale + g1].copy_from_slice(&d);
                            for (&o, &code) in order.iter().zip(&codes) {
                                out.codes[base + s0 + o] = code;
                            }
                        }
                        continue;
                    }
                    let row_scales = &out.scales[first_scale..];
                    let s0 = si * self.gptq_span;
                    gw.clear();
                    gw.extend(order.iter().map(|&o| row[s0 + o]));
                    gf.clear();
                    gf.extend(order.iter().map(|&o| {
                        let j = s0 + o;
                        let g = j / l.group_size;
                        let four = self.four_bit[g][j - g * l.group_size];
                        let c = self.classes[usize::from(!four)];
                        (row_scales[g].to_f32() * c.mult, c.nmax)
                    }));
                    gc.clear();
                    gc.resize(order.len(), 0);
                    gptq_block(&mut gw, &gf, u, &mut gc);
                    for (&o, &code) in order.iter().zip(&gc) {
                        out.codes[base + s0 + o] = code;
                    }
                }
            }
        }
        out
    }
}

/// GPTQ over one span (`w` in GPTQ order, updated in place): fixes the codes
/// channel by channel, channel `j` on the grid `(step_j, nmax_j)` of its
/// block and class, spreading each rounding error over the later channels
/// through the upper Cholesky factor `u` of the damped inverse covariance.
#[inline(always)]
fn gptq_block(w: &mut [f32], grid: &[(f32, f32)], u: &[f32], codes: &mut [i8]) {
    let n = w.len();
    for j in 0..n {
        let (step, nmax) = grid[j];
        let q = if step == 0.0 {
            0.0
        } else {
            rne(w[j] / step).clamp(-nmax, nmax - 1.0)
        };
        codes[j] = q as i8;
        let e = (w[j] - step * q) / u[j * n + j];
        for (wk, &ujk) in w[j + 1..].iter_mut().zip(&u[j * n + j + 1..(j + 1) * n]) {
            *wk -= e * ujk;
        }
    }
}

/// `e^T C e` for the error `e_k = w[s0 + order[k]] - step_k c_k` of one
/// span in GPTQ order (`c` the covariance in that order), in f64.
#[inline(always)]
fn weighted_error(
    order: &[usize],
    row: &[f32],
    s0: usize,
    grid: &[(f32, f32)],
    codes: &[i8],
    c: &[f32],
) -> f64 {
    let n = order.len();
    let e: Vec<f64> = (0..n)
        .map(|k| {
            let w = row.get(s0 + order[k]).copied().unwrap_or(0.0);
            f64::from(w) - f64::from(grid[k].0) * f64::from(codes[k])
        })
        .collect();
    let mut total = 0f64;
    for i in 0..n {
        let ci = &c[i * n..(i + 1) * n];
        let mut s = 0f64;
        for (&cij, &ej) in ci.iter().zip(&e) {
            s += f64::from(cij) * ej;
        }
        total += e[i] * s;
    }
    total
}

/// Lower Cholesky factor of the symmetric `n x n` matrix `a` (row-major),
/// `None` if it is not positive definite.
pub(crate) fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// GPTQ's damping strengths, tried in turn until the damped matrix is
/// positive definite ([`damped`]).
pub(crate) const DAMPING: [f64; 3] = [0.01, 0.1, 1.0];

/// GPTQ's damped copy of the symmetric `n x n` matrix `c` (mean diagonal
/// `mean`), in f64: `c + damp * mean * I`, every diagonal entry that is not
/// positive first set to `mean`.
pub(crate) fn damped(c: &[f32], n: usize, mean: f64, damp: f64) -> Vec<f64> {
    let mut h: Vec<f64> = c.iter().map(|&v| f64::from(v)).collect();
    for i in 0..n {
        if h[i * n + i] <= 0.0 {
            h[i * n + i] = mean;
        }
        h[i * n + i] += damp * mean;
    }
    h
}

/// The GPTQ order and factor of a group's covariance `c` (`n x n`):
/// channels in descending order of their second moment (ties: lower
/// channel first), and the upper Cholesky factor `U` of the permuted
/// `(C + lambda I)^-1` (`= U^T U`), damping with `lambda` = 1 %, 10 %, then
/// 100 % of the mean diagonal until it is positive definite; `None` if the
/// group saw no activations.
fn gptq_factor(c: &[f32]) -> Option<GptqFactor> {
    let n = (c.len() as f64).sqrt() as usize;
    let mean = (0..n).map(|i| f64::from(c[i * n + i])).sum::<f64>() / n as f64;
    if n == 0 || mean <= 0.0 || !mean.is_finite() {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| c[b * n + b].total_cmp(&c[a * n + a]).then(a.cmp(&b)));
    let c: Vec<f32> = (0..n * n)
        .map(|k| c[order[k / n] * n + order[k % n]])
        .collect();
    for damp in DAMPING {
        let h = damped(&c, n, mean, damp);
        let Some(l) = cholesky(&h, n) else {
            continue;
        };
        // L^-1 (lower), then H^-1 = L^-T L^-1.
        let mut li = vec![0f64; n * n];
        for i in 0..n {
            li[i * n + i] = 1.0 / l[i * n + i];
            for j in 0..i {
                let mut s = 0f64;
                for k in j..i {
                    s -= l[i * n + k] * li[k * n + j];
                }
                li[i * n + j] = s / l[i * n + i];
            }
        }
        let mut hinv = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let mut s = 0f64;
                for k in i..n {
                    s += li[k * n + i] * li[k * n + j];
                }
                hinv[i * n + j] = s;
                hinv[j * n + i] = s;
            }
        }
        let Some(lh) = cholesky(&hinv, n) else {
            continue;
        };
        // U = L_h^T.
        let mut u = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..=i {
                u[j * n + i] = lh[i * n + j] as f32;
            }
        }
        return Some((order, u, c));
    }
    None
}

/// Largest |x| (eight fixed lanes, vectorisable).
#[inline(always)]
fn max_abs(x: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for xx in chunks {
        let xx: &[f32; 8] = xx.try_into().expect("chunks of 8");
        for i in 0..8 {
            let a = xx[i].abs();
            m[i] = if a > m[i] { a } else { m[i] };
        }
    }
    let mut r = m.into_iter().fold(0f32, f32::max);
    for &v in rest {
        r = r.max(v.abs());
    }
    r
}

/// Squared error of `x` rounded onto class `c` at scale `d`.
#[inline(always)]
fn class_error(x: f32, d: f32, c: Class) -> f64 {
    let step = d * c.mult;
    if step == 0.0 {
        return f64::from(x) * f64::from(x);
    }
    let code = rne(x / step).clamp(-c.nmax, c.nmax - 1.0);
    let e = f64::from(x) - f64::from(step) * f64::from(code);
    e * e
}

/// Sums `sum_j w_j x_j q_j` and `sum_j w_j q_j^2` of class `c` at
/// `inv = 1 / (d * mult)`.
#[inline(always)]
fn class_sums(c: Class, x: &[f32], w: &[f32], inv: f32) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { class_sums_avx2(c, x, w, inv) };
    }
    class_sums_portable(c, x, w, inv)
}

/// [`class_sums`] in portable Rust.
#[inline(always)]
fn class_sums_portable(c: Class, x: &[f32], w: &[f32], inv: f32) -> (f32, f32) {
    let lo = -c.nmax;
    let hi = c.nmax - 1.0;
    let mut sxq = [0f32; 8];
    let mut sqq = [0f32; 8];
    let xc = x.chunks_exact(8);
    let wc = w.chunks_exact(8);
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xx, ww) in xc.zip(wc) {
        let xx: &[f32; 8] = xx.try_into().expect("chunks of 8");
        let ww: &[f32; 8] = ww.try_into().expect("chunks of 8");
        for i in 0..8 {
            let v = rne(xx[i] * inv);
            let v = if v < lo { lo } else { v };
            let v = if v > hi { hi } else { v };
            let q = v * c.mult;
            let wq = ww[i] * q;
            sxq[i] += wq * xx[i];
            sqq[i] += wq * q;
        }
    }
    let mut a = sxq.iter().sum::<f32>();
    let mut b = sqq.iter().sum::<f32>();
    for (&xv, &wv) in xr.iter().zip(wr) {
        let q = rne(xv * inv).max(lo).min(hi) * c.mult;
        a += wv * q * xv;
        b += wv * q * q;
    }
    (a, b)
}

/// [`class_sums`] with the eight partial sums in one AVX2 register: the
/// same operations on the same lanes in the same order (the clamps as
/// `max(lo, v)` and `min(hi, v)`, which pick `v` exactly when the scalar
/// `if` does), then the same lane sum and scalar tail, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn class_sums_avx2(c: Class, x: &[f32], w: &[f32], inv: f32) -> (f32, f32) {
    use std::arch::x86_64::*;
    const MAGIC: f32 = 12_582_912.0; // as `rne`
    let lo = -c.nmax;
    let hi = c.nmax - 1.0;
    let n = x.len().min(w.len());
    let (vinv, vmagic) = (_mm256_set1_ps(inv), _mm256_set1_ps(MAGIC));
    let (vlo, vhi, vmult) = (
        _mm256_set1_ps(lo),
        _mm256_set1_ps(hi),
        _mm256_set1_ps(c.mult),
    );
    let mut sxq = _mm256_setzero_ps();
    let mut sqq = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, which both slices hold.
        let (xx, ww) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(w.as_ptr().add(i)),
            )
        };
        let v = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xx, vinv), vmagic), vmagic);
        let v = _mm256_max_ps(vlo, v);
        let v = _mm256_min_ps(vhi, v);
        let q = _mm256_mul_ps(v, vmult);
        let wq = _mm256_mul_ps(ww, q);
        sxq = _mm256_add_ps(sxq, _mm256_mul_ps(wq, xx));
        sqq = _mm256_add_ps(sqq, _mm256_mul_ps(wq, q));
        i += 8;
    }
    let (mut a8, mut b8) = ([0f32; 8], [0f32; 8]);
    // SAFETY: each array holds exactly the 8 floats stored.
    unsafe {
        _mm256_storeu_ps(a8.as_mut_ptr(), sxq);
        _mm256_storeu_ps(b8.as_mut_ptr(), sqq);
    }
    let mut a = a8.iter().sum::<f32>();
    let mut b = b8.iter().sum::<f32>();
    for (&xv, &wv) in x[i..n].iter().zip(&w[i..n]) {
        let q = rne(xv * inv).max(lo).min(hi) * c.mult;
        a += wv * q * xv;
        b += wv * q * q;
    }
    (a, b)
}

/// Quantizes one block made of up to two classes of channels. Writes codes
/// into `codes[k]` and returns the fp16 scale and the weighted squared
/// error.
#[inline(always)]
fn quantize_block(parts: [(Class, &[f32], &[f32]); 2], codes: &mut [Vec<i8>; 2]) -> (f16, f64) {
    // The no-clipping scale: the largest |x| / (mult * nmax) maps to -nmax.
    let mut ratio = 0f32;
    for (c, x, _) in parts {
        let inv_denom = 1.0 / (c.mult * c.nmax);
        ratio = ratio.max(max_abs(x) * inv_denom);
    }
    if ratio == 0.0 {
        for c in codes.iter_mut() {
            c.fill(0);
        }
        return (f16::ZERO, 0.0);
    }
    // The sign of the first element attaining the ratio.
    let mut sign = 1f32;
    'find: for (c, x, _) in parts {
        let inv_denom = 1.0 / (c.mult * c.nmax);
        for &v in x {
            if v.abs() * inv_denom == ratio {
                sign = if v > 0.0 { 1.0 } else { -1.0 };
                break 'find;
            }
        }
    }
    let d0 = -sign * ratio;
    let (mut best_gain, mut best_d, mut best_t) = (-1f32, d0, 1f32);
    for t in CLIP_COARSE {
        let (gain, d) = try_ratio(parts, d0, t);
        if gain > best_gain {
            (best_gain, best_d, best_t) = (gain, d, t);
        }
    }
    for dt in CLIP_FINE {
        let (gain, d) = try_ratio(parts, d0, best_t + dt);
        if gain > best_gain {
            (best_gain, best_d) = (gain, d);
        }
    }
    // Round the scale to fp16 and fix the codes at that scale; then one
    // least-squares refinement, kept only if it lowers the error.
    let (mut d16, mut err) = codes_at(parts, to_f16(best_d), codes);
    let (mut sxq, mut sqq) = (0f64, 0f64);
    for (k, (c, x, w)) in parts.into_iter().enumerate() {
        for ((&xv, &wv), &code) in x.iter().zip(w).zip(&codes[k]) {
            let q = f64::from(code) * f64::from(c.mult);
            sxq += f64::from(wv) * f64::from(xv) * q;
            sqq += f64::from(wv) * q * q;
        }
    }
    if sqq > 0.0 {
        let cand = to_f16((sxq / sqq) as f32);
        if cand != d16 && cand != f16::ZERO {
            let mut trial = [codes[0].clone(), codes[1].clone()];
            let (d2, e2) = codes_at(parts, cand, &mut trial);
            if e2 < err {
                d16 = d2;
                err = e2;
                *codes = trial;
            }
        }
    }
    (d16, err)
}

/// (gain, least-squares scale) of clipping ratio `t` from the no-clipping
/// scale `d0` (a function, not a closure, so that it is inlined into the
/// AVX2 build of [`Plan::quantize_rows`]).
#[inline(always)]
fn try_ratio(parts: [(Class, &[f32], &[f32]); 2], d0: f32, t: f32) -> (f32, f32) {
    let d = d0 * t;
    let (mut sxq, mut sqq) = (0f32, 0f32);
    for (c, x, w) in parts {
        let (a, b) = class_sums(c, x, w, 1.0 / (d * c.mult));
        sxq += a;
        sqq += b;
    }
    if sqq > 0.0 {
        (sxq * sxq / sqq, sxq / sqq)
    } else {
        (-1.0, d0)
    }
}

/// `d` as a finite fp16 (saturating at +-65504).
#[inline(always)]
fn to_f16(d: f32) -> f16 {
    f16::from_f32(d.clamp(-65504.0, 65504.0))
}

/// Codes of every part at fp16 scale `d16`, and the weighted squared error.
#[inline(always)]
fn codes_at(parts: [(Class, &[f32], &[f32]); 2], d16: f16, codes: &mut [Vec<i8>; 2]) -> (f16, f64) {
    let d = d16.to_f32();
    let mut err = 0f64;
    for (k, (c, x, w)) in parts.into_iter().enumerate() {
        let step = d * c.mult;
        for ((&xv, &wv), code) in x.iter().zip(w).zip(codes[k].iter_mut()) {
            let q = if step == 0.0 {
                0.0
            } else {
                rne(xv / step).clamp(-c.nmax, c.nmax - 1.0)
            };
            *code = q as i8;
            let e = f64::from(xv) - f64::from(step) * f64::from(q);
            err += f64::from(wv) * e * e;
        }
    }
    (d16, err)
}

/// `sum_r w_rj^2` per padded channel (0 for padding), in f64.
fn column_energy(weights: &[f32], layout: Layout) -> Vec<f64> {
    let mut e = vec![0f64; layout.cols_padded()];
    for row in weights.chunks_exact(layout.cols) {
        for (acc, &w) in e.iter_mut().zip(row) {
            *acc += f64::from(w) * f64::from(w);
        }
    }
    e
}

/// Per group, marks the half of the padded channels with the largest score
/// as 4-bit (ties: lower channel first; padding scores as -infinity).
pub(crate) fn balanced_mask(layout: Layout, score: &[f64]) -> Vec<bool> {
    let mut mask = vec![false; layout.cols_padded()];
    for g in 0..layout.n_groups() {
        let start = layout.group_start(g);
        let len = layout.group_len(g);
        let plen = layout.group_padded_len(g);
        let key = |o: usize| {
            if o < len {
                score[start + o]
            } else {
                f64::NEG_INFINITY
            }
        };
        let mut order: Vec<usize> = (0..plen).collect();
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        for &o in &order[..plen / 2] {
            mask[start + o] = true;
        }
    }
    mask
}

/// Rows used to choose the slot mask: all of a small matrix, else an evenly
/// spaced eighth (at least 256).
fn mask_sample(rows: usize) -> Vec<usize> {
    if rows <= 512 {
        return (0..rows).collect();
    }
    let n = (rows / 8).max(256);
    (0..n).map(|i| i * rows / n).collect()
}

/// Picks the Q35 multipliers with the lowest weighted error on a sample of
/// rows.
fn choose_multipliers(
    layout: Layout,
    weights: &[f32],
    imp: &[f32],
    mask: &[bool],
    aware: bool,
) -> (u8, u8) {
    let n = layout.rows.min(MULT_SAMPLE_ROWS);
    let sample: Vec<usize> = (0..n).map(|i| i * layout.rows / n).collect();
    let mut best = (f64::INFINITY, Q35_MULTIPLIERS[0]);
    for mults in Q35_MULTIPLIERS {
        let plan = Plan::q35(layout, weights, imp, mask, mults, aware);
        let err = plan.quantize_rows(sample.iter().copied(), false).err;
        if err < best.0 {
            best = (err, mults);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_sums_avx2_equals_portable_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut s = 7u64;
            let mut next = move || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            for c in Class::q35((3, 5)) {
                for n in [0, 1, 7, 8, 9, 16, 31, 64, 70] {
                    let x: Vec<f32> = (0..n).map(|_| next() * 0.2).collect();
                    let w: Vec<f32> = (0..n).map(|_| next().abs() * 3.0).collect();
                    // From heavy clipping to codes near zero, both signs.
                    for inv in [-400.0f32, -37.3, -1.0, 0.5, 13.1, 90.0, 1e4] {
                        let want = class_sums_portable(c, &x, &w, inv);
                        // SAFETY: the CPU has AVX2 (checked above).
                        let got = unsafe { class_sums_avx2(c, &x, &w, inv) };
                        assert_eq!(
                            (got.0.to_bits(), got.1.to_bits()),
                            (want.0.to_bits(), want.1.to_bits()),
                            "n {n}, inv {inv}"
                        );
                    }
                }
            }
        }
    }
}
