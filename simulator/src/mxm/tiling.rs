//! A whole `(M x K) x (K x N)` int8 matmul on one plane, weight-stationary.
//!
//! The matmul is cut into `ceil(K/R) x ceil(N/C)` folds, ordered output
//! tile by output tile (`N` outer) and, inside one, K fold by K fold. A
//! fold loads its `min(R, K - kR) x C` weight block (columns past `N` are
//! zero), swaps it in and streams the `M` activation rows (each padded to
//! `R` with zeros) one per cycle.
//!
//! - **Single-buffered** weights ([`Buffering::Single`]): a fold's load
//!   waits until the previous fold's last vector has left the array (one
//!   weight buffer cannot change under it): load, swap, stream, drain.
//! - **Double-buffered** ([`Buffering::Double`]): the next fold's load is
//!   issued as soon as the previous swap has ended, so it overlaps the
//!   stream; its swap still waits for the array to empty.
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
    /// Load, swap, stream, drain, fold after fold.
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

/// The closed cycle formula: the emit cycle of the last output vector when
/// the first load issues at cycle 0 (`docs/mxm-timing.md`, section 4).
///
/// With `Lw_f = ceil(rows_f / rate)`, `S` the swap, `A = (R+C-2)h` the
/// array span, `L = (R+C-1)h + 1` the latency and `F` folds:
///
/// - single: `sum_f (Lw_f + S) + F*M + (F-1)*A + L - 1`
/// - double: `Lw_0 + S + sum_{f>=1} (S + max(Lw_f, M + A)) + M - 1 + L`
pub fn predicted_cycles(
    config: &PlaneConfig,
    shape: &MatmulShape,
    buffering: Buffering,
) -> Result<Cycle, MxmError> {
    config.validate()?;
    shape.check()?;
    let folds = folds(config, shape);
    let f = folds.len() as Cycle;
    let m = shape.m as Cycle;
    let s = config.swap_cycles;
    let a = config.array_span();
    let l = config.latency();
    let lw = |fold: &Fold| config.load_cycles(fold.rows);
    Ok(match buffering {
        Buffering::Single => {
            folds.iter().map(|fold| lw(fold) + s).sum::<Cycle>() + f * m + (f - 1) * a + l - 1
        }
        Buffering::Double => {
            lw(&folds[0])
                + s
                + folds[1..]
                    .iter()
                    .map(|fold| s + lw(fold).max(m + a))
                    .sum::<Cycle>()
                + m
                - 1
                + l
        }
    })
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
        let span = config.array_span();
        let mut program = Vec::new();
        let mut multiplies = Vec::new();
        let mut push = |cycle: Cycle, command: Command, tag: Option<(usize, usize)>| {
            program.push((cycle, command));
            multiplies.push(tag);
        };
        // The previous fold's swap end, and its last vector's issue cycle.
        let mut prev: Option<Cycle> = None;
        let mut last_vector: Cycle = 0;
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
            // The first cycle no vector of the previous fold is in the array.
            let array_empty = prev.map_or(0, |_| last_vector + span + 1);
            let load = match (prev, buffering) {
                (None, _) => 0,
                // One buffer: it may not change under a vector in flight.
                (Some(_), Buffering::Single) => array_empty,
                // Two: not during the swap, not while the last load writes
                // (which ended before that swap).
                (Some(swap_end), Buffering::Double) => swap_end,
            };
            let swap = (load + lw).max(array_empty);
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
            last_vector = first + m as Cycle - 1;
            prev = Some(first);
        }
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
