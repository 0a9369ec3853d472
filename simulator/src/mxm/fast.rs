//! The fast plane model: the one the simulator runs on its hot path.
//!
//! No PE is stepped. Weights are kept row-major, as they arrive (`w[i][j]`
//! at `i * C + j`), and a vector's outputs are accumulated row after row
//! into `C` exact `i32` partial sums (`|sum| <= R * 128 * 128 < 2^31` for
//! `R <= 4096`), two rows at a time, which the compiler vectorises (with
//! AVX2 where the host has it: the same integer arithmetic, so the same
//! bits). After each `pe_block` rows the partial sums are what PE row `I`
//! passes on, so the overflow checks need no second pass. Cycles and
//! hazards come from the formulas of `docs/mxm-timing.md`:
//!
//! - with `b = pe_block`, PE(I, J) (a `b x b` block of MACs) adds its
//!   block's contribution to a vector issued at `t` at `t + (I+J)h`, column
//!   `j` reaches the accumulator at `t + (R/b + j/b)h`, and the vector is
//!   emitted at `t + (R/b + C/b - 1)h + 1`;
//! - a load of `n` rows at `c` runs during `c .. c + ceil(n / rate)` and
//!   writes block row `I` first at `c + first_write(n, I)`; a swap at `c`
//!   runs during `c .. c + swap_cycles`.
//!
//! A swap is a wavefront behind the vectors issued before it, and no vector
//! may be issued while it runs, so every vector reads one weight set at
//! every PE: the active one at its issue. The buffers are therefore
//! exchanged at the swap's issue and each vector's outputs are computed at
//! its issue. The shadow buffer stays in use until the last vector that
//! read it has passed each PE row; a load into it is checked against that
//! vector's issue cycle when it is issued, and its first write into a PE
//! row still in use is reported as a hazard of that (future) cycle.
//! Partial-sum overflow is impossible for a column whose `128 * sum |w|`
//! fits the accumulator; only other columns pay for an exact scan, one PE
//! at a time.

use super::{
    Command, Cycle, Hazard, HazardKind, MxmError, Output, OverflowSite, PlaneConfig, RunResult,
    WeightTile, check_command, earlier, issue_order,
};
// Which build of the row kernel the host runs: the same Rust compiled for
// AVX-512 (BW), for AVX2, or for the baseline target. The level the golden
// model's group sums detect (the same CPU features) chooses it.
use q35_contract::dots::{self, DotLevel as Kernel};

/// The fast model of one plane's state.
#[derive(Debug, Clone)]
pub struct FastPlane {
    config: PlaneConfig,
    /// Active weights, row-major: row `i` is `active[i*C .. (i+1)*C]`.
    active: Vec<i8>,
    /// Shadow weights, row-major.
    shadow: Vec<i8>,
    /// Rows `dirty ..` of the shadow buffer are zero (what
    /// [`FastPlane::finish_load`] need not zero again).
    shadow_dirty: usize,
    /// The same of the active buffer.
    active_dirty: usize,
    /// Every column of every tile is safe (`R * 128 * 128` fits the
    /// accumulator), so no per-column sums are needed.
    always_safe: bool,
    /// Partial sums of the vector being multiplied (scratch).
    partial: Vec<i32>,
    /// Per column: a partial sum of this vector overflowed (scratch).
    overflowed: Vec<bool>,
    /// The host has AVX2.
    kernel: Kernel,
    /// Per active column: no partial sum of it can overflow.
    active_safe: Vec<bool>,
    /// Per shadow column: no partial sum of it can overflow.
    shadow_safe: Vec<bool>,
    /// The accumulator row (kept wide; in range unless a hazard was reported).
    acc: Vec<i64>,
    /// A `LoadWeights` was issued since the last `Swap`.
    shadow_loaded: bool,
    /// The running load (if any) writes until this cycle (exclusive).
    load_done_at: Cycle,
    /// The running swap (if any) ends at this cycle (exclusive).
    swap_done_at: Cycle,
    /// Issue cycle of the last `Multiply`.
    last_multiply: Option<Cycle>,
    /// Issue cycle of the last `Multiply` that read the active buffer.
    active_reader: Option<Cycle>,
    /// Issue cycle of the last `Multiply` that read the shadow buffer (it
    /// was active then).
    shadow_reader: Option<Cycle>,
    /// Issue cycle of the last command (commands come in cycle order).
    last_issue: Cycle,
}

/// A weight tile in the fast model's column-major form: column `j` is
/// `data[j * rows .. (j + 1) * rows]`, with each column's `sum |w|` (which
/// decides whether its partial sums can overflow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnTile {
    rows: usize,
    cols: usize,
    data: Vec<i8>,
    abs_sums: Vec<i64>,
}

impl WeightTile {
    /// The tile transposed into column-major form.
    pub fn to_columns(&self) -> ColumnTile {
        let (n, c) = (self.rows(), self.cols());
        let mut data = vec![0i8; n * c];
        // 16x16 blocks keep both sides in cache.
        const B: usize = 16;
        let src = self.data();
        for i0 in (0..n).step_by(B) {
            for j0 in (0..c).step_by(B) {
                for i in i0..(i0 + B).min(n) {
                    let row = &src[i * c..(i + 1) * c];
                    for (j, &w) in row.iter().enumerate().take((j0 + B).min(c)).skip(j0) {
                        data[j * n + i] = w;
                    }
                }
            }
        }
        let abs_sums = if n == 0 {
            vec![0; c]
        } else {
            data.chunks_exact(n)
                .map(|col| col.iter().map(|w| i64::from(w.unsigned_abs())).sum())
                .collect()
        };
        ColumnTile {
            rows: n,
            cols: c,
            data,
            abs_sums,
        }
    }
}

/// The result of issuing a `LoadWeights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The load runs.
    Issued {
        /// The first cycle it writes a PE row of the shadow buffer that a
        /// vector issued before the last swap has still to read, with the
        /// hazard ([`HazardKind::LoadIntoBufferInUse`]) that happens then.
        in_use: Option<(Cycle, HazardKind)>,
    },
    /// Refused: this hazard happens at the issue cycle.
    Hazard(HazardKind),
}

/// The result of issuing a `Swap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Issued.
    Done,
    /// Refused: this hazard happens at the issue cycle.
    Hazard(HazardKind),
}

/// The result of issuing a `Multiply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiplyOutcome {
    /// The vector entered the array; the outputs were written.
    Issued {
        /// The emit cycle, `issue + latency`.
        emit: Cycle,
        /// The first overflow this vector will cause: its cycle and kind.
        overflow: Option<(Cycle, HazardKind)>,
    },
    /// Refused: this hazard happens at the issue cycle.
    Hazard(HazardKind),
}

impl FastPlane {
    /// A plane with all-zero weights in both buffers and a zero accumulator.
    pub fn new(config: PlaneConfig) -> Result<Self, MxmError> {
        config.validate()?;
        let n = config.rows * config.cols;
        Ok(Self {
            config,
            active: vec![0; n],
            shadow: vec![0; n],
            shadow_dirty: 0,
            active_dirty: 0,
            always_safe: config.rows as i64 * 128 * 128 <= config.acc_max(),
            partial: vec![0; config.cols],
            overflowed: vec![false; config.cols],
            kernel: dots::dot_level(),
            active_safe: vec![true; config.cols],
            shadow_safe: vec![true; config.cols],
            acc: vec![0; config.cols],
            shadow_loaded: false,
            load_done_at: 0,
            swap_done_at: 0,
            last_multiply: None,
            active_reader: None,
            shadow_reader: None,
            last_issue: 0,
        })
    }

    /// The plane's parameters.
    pub fn config(&self) -> &PlaneConfig {
        &self.config
    }

    fn in_order(&mut self, index: usize, cycle: Cycle, command: &Command) -> Result<(), MxmError> {
        check_command(&self.config, index, cycle, command)?;
        if cycle < self.last_issue {
            return Err(MxmError::Command {
                index,
                cycle,
                op: command.name(),
                reason: format!("issued after a command of cycle {}", self.last_issue),
            });
        }
        self.last_issue = cycle;
        Ok(())
    }

    /// Issues `LoadWeights(tile)` at `cycle` (command `index`, for errors).
    /// Transposes the tile first; a hot path converts its tiles once with
    /// [`WeightTile::to_columns`] and calls [`Self::load_columns`].
    pub fn load_weights(
        &mut self,
        index: usize,
        cycle: Cycle,
        tile: &WeightTile,
    ) -> Result<LoadOutcome, MxmError> {
        check_load_shape(&self.config, index, cycle, tile.rows(), tile.cols())?;
        self.load_columns(index, cycle, &tile.to_columns())
    }

    /// Issues `LoadWeights` of a tile already in column-major form.
    pub fn load_columns(
        &mut self,
        index: usize,
        cycle: Cycle,
        tile: &ColumnTile,
    ) -> Result<LoadOutcome, MxmError> {
        check_load_shape(&self.config, index, cycle, tile.rows, tile.cols)?;
        let outcome = self.begin_load(index, cycle, tile.rows)?;
        if let LoadOutcome::Hazard(_) = outcome {
            return Ok(outcome);
        }
        let (c, n) = (self.config.cols, tile.rows);
        for (j, column) in tile.data.chunks_exact(n).enumerate() {
            for (i, &w) in column.iter().enumerate() {
                self.shadow[i * c + j] = w;
            }
        }
        self.shadow_dirty = self.shadow_dirty.max(n);
        self.finish_load(n);
        Ok(outcome)
    }

    /// The timing half of `LoadWeights` of `rows` rows at `cycle`: the same
    /// checks, hazards and load window as [`Self::load_columns`], with the
    /// weights to come from [`Self::fill_shadow_rows`] before the window
    /// ends (the simulator's `lw` reads its rows from streams on the cycles
    /// after its issue).
    pub fn begin_load(
        &mut self,
        index: usize,
        cycle: Cycle,
        rows: usize,
    ) -> Result<LoadOutcome, MxmError> {
        check_load_shape(&self.config, index, cycle, rows, self.config.cols)?;
        if cycle < self.last_issue {
            return Err(MxmError::Command {
                index,
                cycle,
                op: "LoadWeights",
                reason: format!("issued after a command of cycle {}", self.last_issue),
            });
        }
        self.last_issue = cycle;
        if cycle < self.swap_done_at {
            return Ok(LoadOutcome::Hazard(HazardKind::LoadDuringSwap));
        }
        if cycle < self.load_done_at {
            return Ok(LoadOutcome::Hazard(HazardKind::LoadWhileLoading));
        }
        // The shadow's last reader leaves PE row I after t + busy(I); the
        // load first writes PE row I at cycle + first_write(rows, I).
        let config = &self.config;
        let in_use = self.shadow_reader.and_then(|t| {
            (0..config.block_rows())
                .map(|i| cycle + config.first_write(rows, i))
                .enumerate()
                .filter(|&(i, w)| w <= t + config.block_row_busy(i))
                .map(|(_, w)| w)
                .min()
                .map(|w| (w, HazardKind::LoadIntoBufferInUse))
        });
        self.shadow_loaded = true;
        self.load_done_at = cycle + self.config.load_cycles(rows);
        Ok(LoadOutcome::Issued { in_use })
    }

    /// The values half of `LoadWeights`: `n` rows of `C` weights,
    /// row-major in `data` (`n * C` of them), into the shadow buffer; rows
    /// `n .. R` become 0.
    ///
    /// # Panics
    /// If `n > R` or `data.len() != n * C` (callers pass a checked tile).
    pub fn fill_shadow_rows(&mut self, n: usize, data: &[i8]) {
        let (r, c) = (self.config.rows, self.config.cols);
        assert!(n <= r && data.len() == n * c, "a {n}x{c} tile");
        self.shadow[..n * c].copy_from_slice(data);
        self.shadow_dirty = self.shadow_dirty.max(n);
        self.finish_load(n);
    }

    /// The shadow buffer's rows (row-major, `R * C`), for a load that
    /// writes its rows as they arrive; [`Self::finish_load`] ends it. The
    /// shadow is read by nothing but [`Self::swap`], which refuses to run
    /// before the load is done, so writing early is writing at the end.
    pub fn shadow_rows_mut(&mut self) -> &mut [i8] {
        self.shadow_dirty = self.config.rows;
        &mut self.shadow
    }

    /// Row `row` of the shadow buffer (`C` weights; `row < R`), as
    /// [`Self::shadow_rows_mut`] for a load that writes row by row.
    ///
    /// # Panics
    /// If `row >= R`.
    pub fn shadow_row_mut(&mut self, row: usize) -> &mut [i8] {
        let c = self.config.cols;
        self.shadow_dirty = self.shadow_dirty.max(row + 1);
        &mut self.shadow[row * c..(row + 1) * c]
    }

    /// Ends a load of `n` rows written through [`Self::shadow_rows_mut`]:
    /// rows `n .. R` become 0 and the columns' overflow safety is decided.
    pub fn finish_load(&mut self, n: usize) {
        let c = self.config.cols;
        let n = n.min(self.config.rows);
        // Rows past `shadow_dirty` are zero already.
        if self.shadow_dirty > n {
            self.shadow[n * c..self.shadow_dirty * c].fill(0);
        }
        self.shadow_dirty = n;
        if self.always_safe {
            self.shadow_safe.fill(true);
            return;
        }
        let mut abs_sums = vec![0i64; c];
        for row in self.shadow[..n * c].chunks_exact(c) {
            for (s, &w) in abs_sums.iter_mut().zip(row) {
                *s += i64::from(w.unsigned_abs());
            }
        }
        let bound = self.config.acc_max();
        for (safe, s) in self.shadow_safe.iter_mut().zip(abs_sums) {
            // |x| <= 128, so every partial sum is at most 128 * sum |w|.
            *safe = s * 128 <= bound;
        }
    }

    /// Issues `Swap` at `cycle`.
    pub fn swap(&mut self, index: usize, cycle: Cycle) -> Result<Step, MxmError> {
        self.in_order(index, cycle, &Command::Swap)?;
        if !self.shadow_loaded {
            return Ok(Step::Hazard(HazardKind::SwapWithoutLoad));
        }
        if cycle < self.load_done_at {
            return Ok(Step::Hazard(HazardKind::SwapBeforeLoadDone));
        }
        // Vectors in flight keep their weights: the swap follows them as a
        // wavefront, and no vector may be issued until it ends.
        std::mem::swap(&mut self.active, &mut self.shadow);
        std::mem::swap(&mut self.active_dirty, &mut self.shadow_dirty);
        std::mem::swap(&mut self.active_safe, &mut self.shadow_safe);
        std::mem::swap(&mut self.active_reader, &mut self.shadow_reader);
        self.shadow_loaded = false;
        self.swap_done_at = cycle + self.config.swap_cycles;
        Ok(Step::Done)
    }

    /// Issues `Multiply` of `x` at `cycle` and writes the vector's outputs
    /// (the accumulator row after it) into `out` (length `C`).
    pub fn multiply(
        &mut self,
        index: usize,
        cycle: Cycle,
        x: &[i8],
        accumulate: bool,
        out: &mut [i32],
    ) -> Result<MultiplyOutcome, MxmError> {
        let (r, c) = (self.config.rows, self.config.cols);
        let err = |reason: String| MxmError::Command {
            index,
            cycle,
            op: "Multiply",
            reason,
        };
        if x.len() != r {
            return Err(err(format!(
                "activation vector of length {}, the plane has {r} rows",
                x.len()
            )));
        }
        if out.len() != c {
            return Err(err(format!(
                "output buffer of length {}, the plane has {c} columns",
                out.len()
            )));
        }
        if cycle < self.last_issue {
            return Err(err(format!(
                "issued after a command of cycle {}",
                self.last_issue
            )));
        }
        self.last_issue = cycle;
        if cycle < self.swap_done_at {
            return Ok(MultiplyOutcome::Hazard(HazardKind::MultiplyDuringSwap));
        }
        if self.last_multiply == Some(cycle) {
            return Ok(MultiplyOutcome::Hazard(HazardKind::MultiplyPortBusy));
        }
        self.last_multiply = Some(cycle);
        self.active_reader = Some(cycle);
        let h = self.config.pe_hop_cycles;
        let b = self.config.pe_block;
        let br = self.config.block_rows() as Cycle;
        let (lo, hi) = (self.config.acc_min(), self.config.acc_max());
        let mut first: Option<(Cycle, usize, OverflowSite)> = None;
        let mut note = |at: Cycle, column: usize, site: OverflowSite| {
            if first.is_none_or(|(c0, j0, _)| (at, column) < (c0, j0)) {
                first = Some((at, column, site));
            }
        };
        let check = !self.active_safe.iter().all(|&s| s);
        self.partial.fill(0);
        self.overflowed.fill(false);
        for (bi, (rows, xs)) in self
            .active
            .chunks_exact(b * c)
            .zip(x.chunks_exact(b))
            .enumerate()
        {
            // Rows from `active_dirty` on are zero: they add nothing.
            if bi * b < self.active_dirty {
                block(self.kernel, &mut self.partial, rows, xs);
            }
            if check {
                // PE(I, J) checks the sum over rows 0 .. (I+1)b at its output.
                for (j, ((&p, &safe), over)) in self
                    .partial
                    .iter()
                    .zip(&self.active_safe)
                    .zip(self.overflowed.iter_mut())
                    .enumerate()
                {
                    let p = i64::from(p);
                    if !safe && !*over && (p < lo || p > hi) {
                        *over = true;
                        note(
                            cycle + (bi as Cycle + (j / b) as Cycle) * h,
                            j,
                            OverflowSite::PartialSum {
                                row: (bi + 1) * b - 1,
                            },
                        );
                    }
                }
            }
        }
        for (j, ((acc, o), &sum)) in self
            .acc
            .iter_mut()
            .zip(out.iter_mut())
            .zip(&self.partial)
            .enumerate()
        {
            let sum = i64::from(sum);
            let value = if accumulate { *acc + sum } else { sum };
            if value < lo || value > hi {
                note(
                    cycle + (br + (j / b) as Cycle) * h,
                    j,
                    OverflowSite::Accumulator,
                );
            }
            *acc = value;
            // Out of range only after a reported overflow; never emitted then.
            *o = value as i32;
        }
        Ok(MultiplyOutcome::Issued {
            emit: cycle + self.config.latency(),
            overflow: first
                .map(|(at, column, site)| (at, HazardKind::AccumulatorOverflow { column, site })),
        })
    }
}

/// Columns a [`block_lanes`] pass keeps in registers.
const CHUNK: usize = 32;

/// `acc[j] += sum_r rows[r][j] * xs[r]` over one PE block (`xs.len()` rows
/// of `acc.len()` weights, row-major in `rows`), in wrapping i32. Each
/// product of two i8 values fits i16 (`|p| <= 2^14`); a chunk of columns
/// sums its rows in registers and adds them to `acc` once, instead of a
/// load and a store of `acc` per row pair. Integer addition wrapping in i32
/// is associative and commutative, so the sums are those of any order (and
/// exact for every plane the configuration accepts: docs/mxm-timing.md).
#[inline(always)]
fn block_lanes(acc: &mut [i32], rows: &[i8], xs: &[i8]) {
    let c = acc.len();
    let full = c - c % CHUNK;
    for j0 in (0..full).step_by(CHUNK) {
        let mut s = [0i32; CHUNK];
        for (r, &x) in xs.iter().enumerate() {
            let x = i16::from(x);
            let w: &[i8; CHUNK] = rows[r * c + j0..r * c + j0 + CHUNK]
                .try_into()
                .expect("a chunk is CHUNK weights");
            for (s, &w) in s.iter_mut().zip(w) {
                *s = s.wrapping_add(i32::from(i16::from(w) * x));
            }
        }
        for (a, s) in acc[j0..j0 + CHUNK].iter_mut().zip(s) {
            *a = a.wrapping_add(s);
        }
    }
    for j in full..c {
        let mut s = 0i32;
        for (r, &x) in xs.iter().enumerate() {
            s = s.wrapping_add(i32::from(i16::from(rows[r * c + j]) * i16::from(x)));
        }
        acc[j] = acc[j].wrapping_add(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn block_avx512(acc: &mut [i32], rows: &[i8], xs: &[i8]) {
    block_lanes(acc, rows, xs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn block_avx2(acc: &mut [i32], rows: &[i8], xs: &[i8]) {
    block_lanes(acc, rows, xs);
}

/// [`block_lanes`], compiled for the host's widest [`Kernel`].
fn block(kernel: Kernel, acc: &mut [i32], rows: &[i8], xs: &[i8]) {
    match kernel {
        // SAFETY: `dots::dot_level` found the host runs these instructions.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { block_avx512(acc, rows, xs) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { block_avx2(acc, rows, xs) },
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx512 | Kernel::Avx2 => block_lanes(acc, rows, xs),
        Kernel::Scalar => block_lanes(acc, rows, xs),
    }
}

fn check_load_shape(
    config: &PlaneConfig,
    index: usize,
    cycle: Cycle,
    rows: usize,
    cols: usize,
) -> Result<(), MxmError> {
    let reason = if rows == 0 || rows > config.rows {
        format!("{rows} weight rows, the plane takes 1 ..= {}", config.rows)
    } else if cols != config.cols {
        format!("{cols} weight columns, the plane has {}", config.cols)
    } else {
        return Ok(());
    };
    Err(MxmError::Command {
        index,
        cycle,
        op: "LoadWeights",
        reason,
    })
}

/// `sum a[i] * b[i]` over the shorter length, in `i32` (wrapping if the
/// exact sum does not fit; the plane model only calls it on columns where
/// it cannot). Sixteen independent lanes of `i16`
/// products (|p * q| <= 2^14 fits) widened into `i32`, over fixed-size
/// chunks so there are no bounds checks: LLVM vectorises it even on the
/// baseline x86-64 target (SSE2, which has no 32-bit multiply), about 1.7x
/// the plain `i32` zip.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a_chunks, a_rest) = a[..n].as_chunks::<16>();
    let (b_chunks, b_rest) = b[..n].as_chunks::<16>();
    let mut lanes = [0i32; 16];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for k in 0..16 {
            lanes[k] = lanes[k].wrapping_add(i32::from(i16::from(x[k]) * i16::from(y[k])));
        }
    }
    let tail = a_rest.iter().zip(b_rest).fold(0i32, |s, (&p, &q)| {
        s.wrapping_add(i32::from(p) * i32::from(q))
    });
    lanes.iter().fold(tail, |s, &l| s.wrapping_add(l))
}

/// Runs a timed program on the fast model: issues every command in cycle
/// order (list order within a cycle) and stops at the first hazard.
pub fn run_fast(config: &PlaneConfig, program: &[(Cycle, Command)]) -> Result<RunResult, MxmError> {
    let order = issue_order(config, program)?;
    let mut plane = FastPlane::new(*config)?;
    let mut outputs: Vec<Output> = Vec::new();
    // The earliest hazard so far of the array's work (a load's write into a
    // buffer in use, an overflow): it happens in phase 2 of its cycle,
    // after that cycle's issues, so only commands of later cycles are
    // preempted by it.
    let mut pending: Option<Hazard> = None;
    let mut issue_hazard: Option<Hazard> = None;
    let mut last_cycle = 0;
    for index in order {
        let (cycle, command) = &program[index];
        let cycle = *cycle;
        if pending.is_some_and(|h| h.cycle < cycle) {
            break;
        }
        last_cycle = cycle;
        let refused = match command {
            Command::LoadWeights(tile) => match plane.load_weights(index, cycle, tile)? {
                LoadOutcome::Issued { in_use } => {
                    if let Some((at, kind)) = in_use {
                        let h = Hazard {
                            cycle: at,
                            command: index,
                            kind,
                        };
                        pending = Some(earlier(pending, h));
                    }
                    None
                }
                LoadOutcome::Hazard(kind) => Some(kind),
            },
            Command::Swap => match plane.swap(index, cycle)? {
                Step::Done => None,
                Step::Hazard(kind) => Some(kind),
            },
            Command::Multiply { vector, accumulate } => {
                let mut values = vec![0i32; config.cols];
                match plane.multiply(index, cycle, vector, *accumulate, &mut values)? {
                    MultiplyOutcome::Issued { emit, overflow: o } => {
                        if let Some((at, kind)) = o {
                            let h = Hazard {
                                cycle: at,
                                command: index,
                                kind,
                            };
                            pending = Some(earlier(pending, h));
                        }
                        outputs.push(Output {
                            cycle: emit,
                            command: index,
                            values,
                        });
                        None
                    }
                    MultiplyOutcome::Hazard(kind) => Some(kind),
                }
            }
        };
        if let Some(kind) = refused {
            issue_hazard = Some(Hazard {
                cycle,
                command: index,
                kind,
            });
            break;
        }
    }
    let hazard = issue_hazard.or(pending);
    let end_cycle = match hazard {
        Some(h) => {
            outputs.retain(|o| o.cycle < h.cycle);
            h.cycle
        }
        None => outputs
            .last()
            .map_or(last_cycle, |o| o.cycle.max(last_cycle)),
    };
    Ok(RunResult {
        outputs,
        hazard,
        end_cycle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_i8_matches_i64_sum() {
        for n in [0, 1, 15, 16, 17, 33, 320] {
            let a: Vec<i8> = (0..n)
                .map(|i| if i % 3 == 0 { -128 } else { (i * 37) as i8 })
                .collect();
            let b: Vec<i8> = (0..n)
                .map(|i| if i % 5 == 0 { -128 } else { (i * 91) as i8 })
                .collect();
            let exact: i64 = a
                .iter()
                .zip(&b)
                .map(|(&p, &q)| i64::from(p) * i64::from(q))
                .sum();
            assert_eq!(i64::from(dot_i8(&a, &b)), exact, "length {n}");
        }
        // The shorter slice decides the length.
        assert_eq!(dot_i8(&[2, 3, 4], &[5, 7]), 31);
    }

    /// Deterministic i8 values, -128 and 127 included.
    fn values(seed: u64, n: usize) -> Vec<i8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as i8
            })
            .collect()
    }

    #[test]
    fn every_block_kernel_is_the_exact_sum() {
        let kernels: Vec<Kernel> = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|&k| k <= dots::dot_level())
            .collect();
        // 320 columns (whole chunks), 37 and 70 (a remainder), blocks of 1, 16, 20.
        for (c, b) in [(320, 16), (37, 1), (70, 20), (32, 16)] {
            let mut rows = values(c as u64, b * c);
            rows[0] = -128;
            let mut xs = values(b as u64 + 7, b);
            xs[0] = -128;
            let start = values(3, c)
                .into_iter()
                .map(|v| i32::from(v) << 20)
                .collect::<Vec<_>>();
            let want: Vec<i32> = (0..c)
                .map(|j| {
                    let s: i64 = (0..b)
                        .map(|r| i64::from(rows[r * c + j]) * i64::from(xs[r]))
                        .sum();
                    (i64::from(start[j]) + s) as i32
                })
                .collect();
            for &k in &kernels {
                let mut acc = start.clone();
                block(k, &mut acc, &rows, &xs);
                assert_eq!(acc, want, "{k:?}, {c} columns, blocks of {b}");
            }
        }
    }

    #[test]
    fn a_short_load_after_a_full_one_multiplies_by_zero_rows() {
        let config = PlaneConfig {
            rows: 32,
            cols: 32,
            pe_block: 16,
            install_rows_per_cycle: 32,
            swap_cycles: 1,
            pe_hop_cycles: 1,
            acc_bits: 32,
        };
        let (r, c) = (config.rows, config.cols);
        let mut plane = FastPlane::new(config).unwrap();
        let full = values(11, r * c);
        let short = values(12, 5 * c);
        let x = values(13, r);
        let mut cycle = 0;
        for (i, tile) in [&full, &short, &full, &short].into_iter().enumerate() {
            let n = tile.len() / c;
            assert!(matches!(
                plane.begin_load(3 * i, cycle, n).unwrap(),
                LoadOutcome::Issued { in_use: None }
            ));
            for row in 0..n {
                plane
                    .shadow_row_mut(row)
                    .copy_from_slice(&tile[row * c..(row + 1) * c]);
            }
            plane.finish_load(n);
            cycle += 1000;
            assert_eq!(plane.swap(3 * i + 1, cycle).unwrap(), Step::Done);
            cycle += 1000;
            let mut out = vec![0i32; c];
            plane
                .multiply(3 * i + 2, cycle, &x, false, &mut out)
                .unwrap();
            let want: Vec<i32> = (0..c)
                .map(|j| {
                    (0..n)
                        .map(|k| i32::from(tile[k * c + j]) * i32::from(x[k]))
                        .sum()
                })
                .collect();
            assert_eq!(out, want, "load {i} of {n} rows");
            cycle += 1000;
        }
    }

    #[test]
    fn safe_columns_are_only_the_provably_safe_ones() {
        let config = PlaneConfig {
            rows: 2,
            cols: 2,
            pe_block: 1,
            install_rows_per_cycle: 2,
            swap_cycles: 1,
            pe_hop_cycles: 1,
            acc_bits: 16,
        };
        let mut plane = FastPlane::new(config).unwrap();
        // Column 0: 128 * (128 + 127) = 32640 <= 32767; column 1: 128 * 256 > 32767.
        let tile = WeightTile::new(2, 2, vec![-128, -128, 127, -128]).unwrap();
        assert_eq!(
            plane.load_weights(0, 0, &tile).unwrap(),
            LoadOutcome::Issued { in_use: None }
        );
        assert_eq!(plane.shadow_safe, vec![true, false]);
        assert_eq!(plane.shadow, vec![-128, -128, 127, -128]);
    }
}
