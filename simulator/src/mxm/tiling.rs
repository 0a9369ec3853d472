//! A whole `(M x K) x (K x N)` int8 matmul on one plane, weight-stationary.
//!
//! The matmul is cut into `ceil(K/R) x ceil(N/C)` folds, ordered output
//! tile by output tile (`N` outer) and, inside one, K fold by K fold. A
//! fold loads its `min(R, K - kR) x C` weight block (columns past `N` are
//! zero), swaps it in and streams the `M` activation rows (each padded to
//! `R` with zeros) one per cycle.
//!
//! - **Single-buffered** weights ([`Buffering::Single`]): a fold's load
//!   waits until the previous fold's last vector no longer reads any PE row
//!   it writes (as if it overwrote the weights in use, behind that vector):
//!   load, swap, stream, fold after fold.
//! - **Double-buffered** ([`Buffering::Double`]): the next fold's load is
//!   issued as soon as the previous swap has ended and the fold before that
//!   no longer reads the buffer it writes, so it overlaps the stream; its
//!   swap follows the current fold's last vector in the same cycle, so with
//!   a one-cycle swap the vectors of consecutive folds can stream back to
//!   back.
//!
//! The schedule is built by list scheduling (each command at the earliest
//! cycle its constraints allow); [`predicted_cycles`] is the closed formula
//! of `docs/mxm-timing.md`, derived independently, and the tests check that
//! the two and both plane models agree.
//!
//! Accumulation across K folds: the plane has one accumulator row, so it
//! can carry one vector's sum. With `M = 1` (decode) fold `k > 0` streams
//! with `accumulate = true` and the last fold's output is the result. With
//! `M > 1` every fold streams with `accumulate = false` and
//! [`TiledMatmul::assemble`] adds the folds' partial sums (on the machine:
//! the vector unit).

use super::{Command, Cycle, MxmError, PlaneConfig, RunResult, WeightTile};

/// Whether weight loads may overlap the stream of the previous fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffering {
    /// Load (behind the previous fold's last vector), swap, stream, fold
    /// after fold.
    Single,
    /// The next fold's load overlaps the current fold's stream.
    Double,
}

/// The shape of `(M x K) x (K x N)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    /// Activation rows (tokens).
    pub m: usize,
    /// The reduction dimension.
    pub k: usize,
    /// Output channels.
    pub n: usize,
}

impl MatmulShape {
    fn error(&self, reason: String) -> MxmError {
        MxmError::Matmul {
            m: self.m,
            k: self.k,
            n: self.n,
            reason,
        }
    }

    fn check(&self) -> Result<(), MxmError> {
        if self.m == 0 || self.k == 0 || self.n == 0 {
            return Err(self.error("every dimension must be at least 1".into()));
        }
        if self.m > 1 << 20 || self.k > 1 << 24 || self.n > 1 << 24 {
            return Err(self.error("beyond 2^20 rows or 2^24 K or N".into()));
        }
        Ok(())
    }
}

/// One fold: which output tile, which K slice, how many weight rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fold {
    /// Output tile: columns `n_tile * C ..`.
    pub n_tile: usize,
    /// K slice: rows `k_fold * R ..`.
    pub k_fold: usize,
    /// Weight rows loaded, `min(R, K - k_fold * R)`.
    pub rows: usize,
}

/// The folds of `shape` on `config`'s plane, in schedule order.
pub fn folds(config: &PlaneConfig, shape: &MatmulShape) -> Vec<Fold> {
    let (r, c) = (config.rows, config.cols);
    let mut out = Vec::with_capacity(shape.n.div_ceil(c) * shape.k.div_ceil(r));
    for n_tile in 0..shape.n.div_ceil(c) {
        for k_fold in 0..shape.k.div_ceil(r) {
            out.push(Fold {
                n_tile,
                k_fold,
                rows: r.min(shape.k - k_fold * r),
            });
        }
    }
    out
}

/// The cycle formula: the emit cycle of the last output vector when the
/// first load issues at cycle 0 (`docs/mxm-timing.md`, section 4).
///
/// With `Lw_f = ceil(rows_f / rate)`, `d_f` = [`PlaneConfig::reuse_delay`]
/// of `rows_f`, `S` the swap, `L` the latency and `F` folds, the first
/// vectors of consecutive folds are `P_f` cycles apart:
///
/// - single: `P_f = M - 1 + d_f + Lw_f + S`
/// - double: `P_1 = S + max(M - 1, Lw_1)`,
///   `P_f = S + max(M - 1, Lw_f + max(0, d_f + M - 1 - P_{f-1}))` for `f >= 2`
///
/// and `T = Lw_0 + S + sum_{f>=1} P_f + M - 1 + L`.
pub fn predicted_cycles(
    config: &PlaneConfig,
    shape: &MatmulShape,
    buffering: Buffering,
) -> Result<Cycle, MxmError> {
    config.validate()?;
    shape.check()?;
    let folds = folds(config, shape);
    let m = shape.m as Cycle;
    let s = config.swap_cycles;
    let lw = |fold: &Fold| config.load_cycles(fold.rows);
    let d = |fold: &Fold| config.reuse_delay(fold.rows);
    let mut total = lw(&folds[0]) + s;
    let mut prev: Option<Cycle> = None;
    for fold in &folds[1..] {
        let period = match (buffering, prev) {
            (Buffering::Single, _) => m - 1 + d(fold) + lw(fold) + s,
            (Buffering::Double, None) => s + (m - 1).max(lw(fold)),
            (Buffering::Double, Some(p)) => {
                s + (m - 1).max(lw(fold) + (d(fold) + m - 1).saturating_sub(p))
            }
        };
        total += period;
        prev = Some(period);
    }
    Ok(total + m - 1 + config.latency())
}

/// A matmul laid out on one plane: its timed program and how to read the
/// result back.
#[derive(Debug, Clone)]
pub struct TiledMatmul {
    /// The shape.
    pub shape: MatmulShape,
    /// The buffering the schedule uses.
    pub buffering: Buffering,
    /// The folds, in schedule order.
    pub folds: Vec<Fold>,
    /// The timed command list (sorted by cycle), first command at cycle 0.
    pub program: Vec<(Cycle, Command)>,
    /// The emit cycle of the last output vector, as scheduled.
    pub scheduled_cycles: Cycle,
    /// Per command: for a `Multiply`, its (fold index, activation row).
    multiplies: Vec<Option<(usize, usize)>>,
    /// Columns of one plane (output tile width).
    cols: usize,
}

impl TiledMatmul {
    /// Tiles `a` (`M x K`, row-major) times `b` (`K x N`, row-major).
    pub fn new(
        config: &PlaneConfig,
        a: &[i8],
        b: &[i8],
        shape: MatmulShape,
        buffering: Buffering,
    ) -> Result<Self, MxmError> {
        config.validate()?;
        shape.check()?;
        let MatmulShape { m, k, n } = shape;
        if a.len() != m * k {
            return Err(shape.error(format!("activations hold {} values, not M*K", a.len())));
        }
        if b.len() != k * n {
            return Err(shape.error(format!("weights hold {} values, not K*N", b.len())));
        }
        let (r, c) = (config.rows, config.cols);
        let folds = folds(config, &shape);
        let s = config.swap_cycles;
        let mut program = Vec::new();
        let mut multiplies = Vec::new();
        let mut push = |cycle: Cycle, command: Command, tag: Option<(usize, usize)>| {
            program.push((cycle, command));
            multiplies.push(tag);
        };
        // Per scheduled fold: (first vector, last vector); and the last
        // load's issue and length.
        let mut streams: Vec<(Cycle, Cycle)> = Vec::with_capacity(folds.len());
        let mut last_load: Option<(Cycle, Cycle)> = None;
        for (fi, fold) in folds.iter().enumerate() {
            let mut data = vec![0i8; fold.rows * c];
            for i in 0..fold.rows {
                let src = (fold.k_fold * r + i) * n;
                for j in 0..c.min(n - fold.n_tile * c) {
                    data[i * c + j] = b[src + fold.n_tile * c + j];
                }
            }
            let tile = WeightTile::new(fold.rows, c, data)?;
            let lw = config.load_cycles(fold.rows);
            let reuse = config.reuse_delay(fold.rows);
            // The earliest cycle the load may write into its buffer: after
            // the last vector that read it has left every PE row it writes.
            let free_after = |last_reader: Cycle| last_reader + reuse;
            let load = match (streams.last(), buffering) {
                (None, _) => 0,
                // As if overwriting the weights the previous fold is using.
                (Some(&(_, last)), Buffering::Single) => free_after(last),
                // Not during the previous swap (which ended at that fold's
                // first vector), not over the previous load, and not before
                // the fold two back (which read this buffer) has left it.
                (Some(&(first, _)), Buffering::Double) => {
                    let mut at = first;
                    if let Some((issue, len)) = last_load {
                        at = at.max(issue + len);
                    }
                    if streams.len() >= 2 {
                        at = at.max(free_after(streams[streams.len() - 2].1));
                    }
                    at
                }
            };
            // After the load, and in the cycle of the previous fold's last
            // vector at the earliest (listed after it, so that vector still
            // reads the old weights).
            let swap = streams
                .last()
                .map_or(load + lw, |&(_, last)| (load + lw).max(last));
            let first = swap + s;
            push(load, Command::LoadWeights(tile), None);
            push(swap, Command::Swap, None);
            let accumulate = m == 1 && fold.k_fold > 0;
            for row in 0..m {
                let mut vector = vec![0i8; r];
                let base = row * k + fold.k_fold * r;
                vector[..fold.rows].copy_from_slice(&a[base..base + fold.rows]);
                push(
                    first + row as Cycle,
                    Command::Multiply { vector, accumulate },
                    Some((fi, row)),
                );
            }
            streams.push((first, first + m as Cycle - 1));
            last_load = Some((load, lw));
        }
        let last_vector = streams.last().map_or(0, |&(_, last)| last);
        // Issue order = cycle order, list order within a cycle.
        let mut order: Vec<usize> = (0..program.len()).collect();
        order.sort_by_key(|&i| program[i].0);
        let mut slots: Vec<Option<(Cycle, Command)>> = program.into_iter().map(Some).collect();
        let program: Vec<(Cycle, Command)> =
            order.iter().filter_map(|&i| slots[i].take()).collect();
        let multiplies = order.iter().map(|&i| multiplies[i]).collect();
        Ok(Self {
            shape,
            buffering,
            folds,
            program,
            scheduled_cycles: last_vector + config.latency(),
            multiplies,
            cols: c,
        })
    }

    /// The `M x N` result (row-major, exact) from a hazard-free run of
    /// [`Self::program`]: with `M = 1` the last K fold's accumulated output
    /// of each tile, else the sum of every fold's partial output.
    pub fn assemble(&self, run: &RunResult) -> Result<Vec<i64>, MxmError> {
        let MatmulShape { m, n, .. } = self.shape;
        if let Some(h) = run.hazard {
            return Err(self.shape.error(format!("the run stopped: {h}")));
        }
        let mut out = vec![0i64; m * n];
        let mut seen = 0usize;
        for o in &run.outputs {
            let Some(Some((fi, row))) = self.multiplies.get(o.command) else {
                return Err(self.shape.error(format!(
                    "output from command {}, which is not a Multiply of this matmul",
                    o.command
                )));
            };
            let fold = self.folds[*fi];
            let accumulated = m == 1 && fold.k_fold > 0;
            let base = fold.n_tile * self.cols;
            let width = self.cols.min(n - base);
            for (j, &v) in o.values.iter().take(width).enumerate() {
                let slot = &mut out[row * n + base + j];
                if fold.k_fold == 0 || accumulated {
                    *slot = i64::from(v);
                } else {
                    *slot += i64::from(v);
                }
            }
            seen += 1;
        }
        let expected = self.multiplies.iter().flatten().count();
        if seen != expected {
            return Err(self
                .shape
                .error(format!("{seen} output vectors, {expected} expected")));
        }
        Ok(out)
    }
}

/// The plain integer matmul `a (M x K) * b (K x N)`, row-major, exact.
pub fn reference_matmul(a: &[i8], b: &[i8], shape: MatmulShape) -> Result<Vec<i64>, MxmError> {
    shape.check()?;
    let MatmulShape { m, k, n } = shape;
    if a.len() != m * k || b.len() != k * n {
        return Err(shape.error(format!(
            "operands hold {} and {} values, not M*K and K*N",
            a.len(),
            b.len()
        )));
    }
    let mut out = vec![0i64; m * n];
    for row in 0..m {
        for kk in 0..k {
            let x = i64::from(a[row * k + kk]);
            for (o, &w) in out[row * n..(row + 1) * n]
                .iter_mut()
                .zip(&b[kk * n..(kk + 1) * n])
            {
                *o += x * i64::from(w);
            }
        }
    }
    Ok(out)
}
