//! The matrix unit (MXM): one weight-stationary systolic plane, its timing
//! and its values.
//!
//! The machine semantics are written down in `docs/mxm-timing.md`; this
//! module is their executable form, twice:
//!
//! - [`pe`]: the PE-level reference model. Every processing element (a
//!   `b x b` block of MACs) keeps its two weight buffers, every link between
//!   elements is a pipeline register, and the whole array steps one cycle at
//!   a time. It is slow and meant to be read.
//! - [`fast`]: the plane model the simulator calls on its hot path. It
//!   computes each output vector as exact integer dot products over
//!   column-major weights and derives emit cycles and hazards from the
//!   formulas, with no per-PE stepping.
//! - [`tiling`]: a whole `(M x K) x (K x N)` matmul on one plane, fold by
//!   fold, with and without double-buffered weights: the command schedule
//!   (earliest hazard-free issue cycles) and its closed cycle formula.
//!
//! Both models run the same timed command list ([`run_pe`], [`run_fast`])
//! and must agree exactly on every output vector, every emit cycle and the
//! first hazard; `simulator/tests/mxm.rs` holds them to that.

pub mod fast;
pub mod pe;
pub mod tiling;

use std::fmt;

pub use fast::{ColumnTile, FastPlane, LoadOutcome, MultiplyOutcome, Step, dot_i8, run_fast};
pub use pe::run_pe;
pub use tiling::{
    Buffering, Fold, MatmulShape, TiledMatmul, folds, predicted_cycles, reference_matmul,
};

/// A cycle number of the plane's clock; the first command of a program is
/// usually issued at cycle 0.
pub type Cycle = u64;

/// The largest `rows` or `cols` a plane may have (the PE-level model keeps
/// about `(rows + cols) * (rows + cols) / pe_block * pe_hop_cycles`
/// registers; the fast model has no limit of its own but shares this one).
pub const MAX_DIM: usize = 4096;

/// The largest `pe_hop_cycles` and `swap_cycles` accepted.
pub const MAX_STAGE_CYCLES: u64 = 1024;

/// The parameters of one systolic plane. The target description
/// (`targets/*.toml`) provides them; [`PlaneConfig::LPU_V1`] is lpu-v1's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneConfig {
    /// `R`: PE rows, the reduction dimension `K` of one tile.
    pub rows: usize,
    /// `C`: PE columns, the output channels `N` of one tile.
    pub cols: usize,
    /// `b`: one processing element is a `b x b` block of MACs that adds its
    /// block's contribution within one hop; `rows` and `cols` are multiples
    /// of it, so the plane is `R/b x C/b` elements. 1 makes every MAC its
    /// own element.
    pub pe_block: usize,
    /// Weight rows written into the shadow buffer per cycle by `LoadWeights`.
    pub install_rows_per_cycle: usize,
    /// Cycles a `Swap` takes: vectors issued this many cycles after it see
    /// the new weights, none may be issued meanwhile.
    pub swap_cycles: u64,
    /// Cycles an activation (eastward) or a partial sum (southward) takes
    /// from one processing element (block) to the next.
    pub pe_hop_cycles: u64,
    /// Width of the signed accumulator (partial sums and the accumulator
    /// row); a value outside `-2^(acc_bits-1) ..= 2^(acc_bits-1)-1` is an
    /// overflow hazard. At most 32 (outputs are `i32`).
    pub acc_bits: u32,
}

impl PlaneConfig {
    /// lpu-v1: a 320x320 int8 plane of 20x20 processing elements of 16x16
    /// MACs (one per superlane of 16 lanes; ASSUMED), 32 weight rows
    /// installed per cycle (all 320 rows in 10 cycles; published: "under 40
    /// cycles" for four planes), one-cycle swap and hop (ASSUMED), int32
    /// accumulators (published).
    pub const LPU_V1: Self = Self {
        rows: 320,
        cols: 320,
        pe_block: 16,
        install_rows_per_cycle: 32,
        swap_cycles: 1,
        pe_hop_cycles: 1,
        acc_bits: 32,
    };

    /// Checks every field's range; each model calls this first.
    pub fn validate(&self) -> Result<(), MxmError> {
        let bad = |field: &'static str, value: u64, reason: &'static str| {
            Err(MxmError::Config {
                field,
                value,
                reason,
            })
        };
        if self.rows == 0 || self.rows > MAX_DIM {
            return bad("rows", self.rows as u64, "must be in 1 ..= 4096");
        }
        if self.cols == 0 || self.cols > MAX_DIM {
            return bad("cols", self.cols as u64, "must be in 1 ..= 4096");
        }
        if self.pe_block == 0
            || !self.rows.is_multiple_of(self.pe_block)
            || !self.cols.is_multiple_of(self.pe_block)
        {
            return bad(
                "pe_block",
                self.pe_block as u64,
                "must be at least 1 and divide rows and cols",
            );
        }
        if self.install_rows_per_cycle == 0 {
            return bad("install_rows_per_cycle", 0, "must be at least 1");
        }
        if self.swap_cycles == 0 || self.swap_cycles > MAX_STAGE_CYCLES {
            return bad("swap_cycles", self.swap_cycles, "must be in 1 ..= 1024");
        }
        if self.pe_hop_cycles == 0 || self.pe_hop_cycles > MAX_STAGE_CYCLES {
            return bad("pe_hop_cycles", self.pe_hop_cycles, "must be in 1 ..= 1024");
        }
        if !(2..=32).contains(&self.acc_bits) {
            return bad("acc_bits", u64::from(self.acc_bits), "must be in 2 ..= 32");
        }
        Ok(())
    }

    /// `R / b`: rows of processing elements.
    pub fn block_rows(&self) -> usize {
        self.rows / self.pe_block
    }

    /// `C / b`: columns of processing elements.
    pub fn block_cols(&self) -> usize {
        self.cols / self.pe_block
    }

    /// `(R/b + C/b - 2) * hop`: a vector issued at `t` is inside the array
    /// (some element still has to compute on it) during cycles
    /// `t ..= t + span`; element (R/b-1, C/b-1) computes on it at `t + span`.
    pub fn array_span(&self) -> Cycle {
        (self.block_rows() as Cycle + self.block_cols() as Cycle - 2) * self.pe_hop_cycles
    }

    /// The plane latency `(R/b + C/b - 1) * hop + 1`: a vector issued at `t`
    /// is emitted, all `C` columns at once, at `t + latency`.
    pub fn latency(&self) -> Cycle {
        (self.block_rows() as Cycle + self.block_cols() as Cycle - 1) * self.pe_hop_cycles + 1
    }

    /// The last cycle, relative to a vector's issue, at which it is read by
    /// the elements of block row `block_row`: element (I, C/b - 1) computes
    /// on it at `t + (I + C/b - 1) * hop`. A weight load may not write that
    /// block row of the buffer the vector reads until the cycle after.
    pub fn block_row_busy(&self, block_row: usize) -> Cycle {
        (block_row + self.block_cols() - 1) as Cycle * self.pe_hop_cycles
    }

    /// The first cycle, relative to its issue, at which a `LoadWeights` of
    /// `rows` rows writes block row `block_row`: tile row `r` is written at
    /// `floor(r / rate)`, the rows past the tile are cleared at 0. So a block
    /// row wholly inside the tile is first written at `floor(I b / rate)`,
    /// any other at 0.
    pub fn first_write(&self, rows: usize, block_row: usize) -> Cycle {
        let b = self.pe_block;
        if (block_row + 1) * b <= rows {
            (block_row * b / self.install_rows_per_cycle) as Cycle
        } else {
            0
        }
    }

    /// The reuse delay `d(n)`: the fewest cycles after the issue of a vector
    /// `t_last` at which a `LoadWeights` of `rows` rows into the buffer it
    /// reads writes no block row before `t_last` has left it,
    /// `1 + max_I (block_row_busy(I) - first_write(n, I))`
    /// (`docs/mxm-timing.md`, section 4).
    pub fn reuse_delay(&self, rows: usize) -> Cycle {
        (0..self.block_rows())
            // A slow load may reach a block row only after the vector has
            // left it whatever its issue cycle (the term saturates at 0);
            // block row 0 is written at issue, so the maximum is at least 1.
            .map(|i| (self.block_row_busy(i) + 1).saturating_sub(self.first_write(rows, i)))
            .max()
            .unwrap_or(1)
    }

    /// Cycles `LoadWeights` of `rows` rows takes: `ceil(rows / rate)`.
    pub fn load_cycles(&self, rows: usize) -> Cycle {
        rows.div_ceil(self.install_rows_per_cycle) as Cycle
    }

    /// The smallest value the accumulator holds, `-2^(acc_bits-1)`.
    pub fn acc_min(&self) -> i64 {
        -(1i64 << (self.acc_bits - 1))
    }

    /// The largest value the accumulator holds, `2^(acc_bits-1) - 1`.
    pub fn acc_max(&self) -> i64 {
        (1i64 << (self.acc_bits - 1)) - 1
    }
}

/// A block of int8 weights for one `LoadWeights`: `rows x cols`, row-major
/// (`w[i][j]` at `i * cols + j`; row `i` feeds PE row `i`, column `j` PE
/// column `j`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightTile {
    rows: usize,
    cols: usize,
    data: Vec<i8>,
}

impl WeightTile {
    /// A tile from row-major data; `data.len()` must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<i8>) -> Result<Self, MxmError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(MxmError::Tile {
                rows,
                cols,
                len: data.len(),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows (`n` of `LoadWeights { rows: n }`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (must equal the plane's `cols`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major weights.
    pub fn data(&self) -> &[i8] {
        &self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[i8] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// One command to a plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write the tile into the shadow buffer, `install_rows_per_cycle` rows
    /// a cycle from the issue cycle; shadow rows `tile.rows() .. R` become 0.
    LoadWeights(WeightTile),
    /// Make the shadow buffer the active one (`swap_cycles` cycles).
    Swap,
    /// Stream one activation vector (length `R`) through the array.
    Multiply {
        /// `x[i]` enters PE row `i`.
        vector: Vec<i8>,
        /// Add the column sums to the accumulator row instead of replacing it.
        accumulate: bool,
    },
}

impl Command {
    /// The command's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::LoadWeights(_) => "LoadWeights",
            Command::Swap => "Swap",
            Command::Multiply { .. } => "Multiply",
        }
    }
}

/// Where an accumulator overflow happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OverflowSite {
    /// The partial sum leaving the processing element whose bottom MAC row
    /// is `row` (block row `I` has `row = (I + 1) b - 1`): the sum over
    /// rows `0 ..= row`, checked at the element's output.
    PartialSum {
        /// The bottom MAC row of the element.
        row: usize,
    },
    /// The accumulator row's add (`accumulate = true`) below the column.
    Accumulator,
}

/// What went wrong. Both models report the same kind at the same cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HazardKind {
    /// A `Swap` before the `LoadWeights` into the shadow buffer finished.
    SwapBeforeLoadDone,
    /// A `Swap` with no `LoadWeights` since the last swap (or ever).
    SwapWithoutLoad,
    /// A `LoadWeights` while a previous `LoadWeights` is still writing.
    LoadWhileLoading,
    /// A `LoadWeights` while a `Swap` is exchanging the buffers.
    LoadDuringSwap,
    /// A `LoadWeights` writes a row of the shadow buffer on a cycle when a
    /// vector issued before the last `Swap` has still to read that block
    /// row's old weights (the buffer is still in use behind the swap's
    /// wavefront). Reported at the cycle of the write.
    LoadIntoBufferInUse,
    /// A `Multiply` while a `Swap` is exchanging the buffers.
    MultiplyDuringSwap,
    /// A second `Multiply` in one cycle (one vector enters per cycle).
    MultiplyPortBusy,
    /// A partial sum or the accumulator left the `acc_bits` range.
    AccumulatorOverflow {
        /// The PE column (output channel).
        column: usize,
        /// Which add overflowed.
        site: OverflowSite,
    },
}

impl fmt::Display for HazardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HazardKind::SwapBeforeLoadDone => write!(f, "swap before the weight load finished"),
            HazardKind::SwapWithoutLoad => {
                write!(f, "swap with no weights loaded since the last swap")
            }
            HazardKind::LoadWhileLoading => write!(f, "weight load while a weight load is running"),
            HazardKind::LoadDuringSwap => write!(f, "weight load during a swap"),
            HazardKind::LoadIntoBufferInUse => write!(
                f,
                "weight load overwrites weights an earlier vector has still to read"
            ),
            HazardKind::MultiplyDuringSwap => write!(f, "multiply during a swap"),
            HazardKind::MultiplyPortBusy => write!(f, "second multiply in one cycle"),
            HazardKind::AccumulatorOverflow {
                column,
                site: OverflowSite::PartialSum { row },
            } => write!(
                f,
                "accumulator overflow: partial sum of rows 0 ..= {row}, column {column}"
            ),
            HazardKind::AccumulatorOverflow {
                column,
                site: OverflowSite::Accumulator,
            } => write!(f, "accumulator overflow: accumulator of column {column}"),
        }
    }
}

/// The first hazard of a run: the plane stops at `cycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hazard {
    /// The cycle it happened.
    pub cycle: Cycle,
    /// Index (in the program as given) of the offending command; for an
    /// overflow, of the `Multiply` whose sum overflowed.
    pub command: usize,
    /// What happened.
    pub kind: HazardKind,
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cycle {}, command {}: {}",
            self.cycle, self.command, self.kind
        )
    }
}

/// One emitted output vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The emit cycle (`issue + latency`).
    pub cycle: Cycle,
    /// Index of the `Multiply` that produced it.
    pub command: usize,
    /// The accumulator row after this vector's column sums, one per column.
    pub values: Vec<i32>,
}

/// What a run of a timed program produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// Every output emitted before the run stopped, in emit order.
    pub outputs: Vec<Output>,
    /// The first hazard, if any; the run stops at its cycle, and outputs
    /// due at that cycle or later are not emitted.
    pub hazard: Option<Hazard>,
    /// The hazard's cycle, or else the later of the last emit and the last
    /// command's issue cycle (0 for an empty program).
    pub end_cycle: Cycle,
}

/// Bad input: a model refuses it before simulating anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MxmError {
    /// A [`PlaneConfig`] field out of range.
    #[error("MXM plane config: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The accepted range.
        reason: &'static str,
    },
    /// A [`WeightTile`] whose data length is not `rows * cols`.
    #[error("MXM weight tile {rows}x{cols}: {len} values given")]
    Tile {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Values given.
        len: usize,
    },
    /// A command that does not fit the plane.
    #[error("MXM command {index} ({op} at cycle {cycle}): {reason}")]
    Command {
        /// Index in the program as given.
        index: usize,
        /// Its issue cycle.
        cycle: Cycle,
        /// `LoadWeights`, `Swap` or `Multiply`.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A matmul whose operands do not match its shape.
    #[error("MXM matmul {m}x{k} by {k}x{n}: {reason}")]
    Matmul {
        /// Rows of the activations.
        m: usize,
        /// The reduction dimension.
        k: usize,
        /// Output channels.
        n: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Validates `config` and every command of `program` against it and
/// returns the issue order: command indices stably sorted by cycle (commands
/// of one cycle issue in list order).
pub(crate) fn issue_order(
    config: &PlaneConfig,
    program: &[(Cycle, Command)],
) -> Result<Vec<usize>, MxmError> {
    config.validate()?;
    for (index, (cycle, command)) in program.iter().enumerate() {
        check_command(config, index, *cycle, command)?;
    }
    let mut order: Vec<usize> = (0..program.len()).collect();
    order.sort_by_key(|&i| program[i].0);
    Ok(order)
}

/// Checks one command's operand shapes against the plane.
pub(crate) fn check_command(
    config: &PlaneConfig,
    index: usize,
    cycle: Cycle,
    command: &Command,
) -> Result<(), MxmError> {
    let err = |reason: String| MxmError::Command {
        index,
        cycle,
        op: command.name(),
        reason,
    };
    match command {
        Command::LoadWeights(tile) => {
            if tile.rows() == 0 || tile.rows() > config.rows {
                return Err(err(format!(
                    "{} weight rows, the plane takes 1 ..= {}",
                    tile.rows(),
                    config.rows
                )));
            }
            if tile.cols() != config.cols {
                return Err(err(format!(
                    "{} weight columns, the plane has {}",
                    tile.cols(),
                    config.cols
                )));
            }
        }
        Command::Swap => {}
        Command::Multiply { vector, .. } => {
            if vector.len() != config.rows {
                return Err(err(format!(
                    "activation vector of length {}, the plane has {} rows",
                    vector.len(),
                    config.rows
                )));
            }
        }
    }
    if cycle > Cycle::MAX / 4 {
        return Err(err("issue cycle beyond 2^62".to_string()));
    }
    Ok(())
}

/// The earlier of two hazards found during the array's work (phase 2 of a
/// cycle): by cycle; in one cycle a load's write (checked before the array
/// computes) before an overflow; overflows by column, then command.
pub(crate) fn earlier(a: Option<Hazard>, b: Hazard) -> Hazard {
    match a {
        None => b,
        Some(a) => {
            let key = |h: &Hazard| {
                let (rank, column) = match h.kind {
                    HazardKind::AccumulatorOverflow { column, .. } => (1, column),
                    HazardKind::LoadIntoBufferInUse
                    | HazardKind::SwapBeforeLoadDone
                    | HazardKind::SwapWithoutLoad
                    | HazardKind::LoadWhileLoading
                    | HazardKind::LoadDuringSwap
                    | HazardKind::MultiplyDuringSwap
                    | HazardKind::MultiplyPortBusy => (0, 0),
                };
                (h.cycle, rank, column, h.command)
            };
            if key(&b) < key(&a) { b } else { a }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpu_v1_figures() {
        let c = PlaneConfig::LPU_V1;
        c.validate().unwrap();
        assert_eq!((c.block_rows(), c.block_cols()), (20, 20));
        assert_eq!(c.latency(), 40);
        assert_eq!(c.array_span(), 38);
        // Block row I is first written at floor(16 I / 32) and busy until
        // t + I + 19: binding at I = 19, 19 + 19 - 9 + 1 = 30.
        assert_eq!(c.reuse_delay(320), 30);
        // 256 rows: block rows 16..20 are cleared at issue: 19 + 19 + 1.
        assert_eq!(c.reuse_delay(256), 39);
        assert_eq!(c.load_cycles(320), 10);
        assert_eq!(c.load_cycles(256), 8);
        assert_eq!(c.load_cycles(1), 1);
        assert_eq!(
            (c.acc_min(), c.acc_max()),
            (i64::from(i32::MIN), i64::from(i32::MAX))
        );
    }

    #[test]
    fn overflow_order_is_cycle_then_column_then_command() {
        let h = |cycle, column, command| Hazard {
            cycle,
            command,
            kind: HazardKind::AccumulatorOverflow {
                column,
                site: OverflowSite::Accumulator,
            },
        };
        assert_eq!(earlier(Some(h(5, 3, 0)), h(4, 9, 9)), h(4, 9, 9));
        assert_eq!(earlier(Some(h(5, 3, 0)), h(5, 2, 9)), h(5, 2, 9));
        assert_eq!(earlier(Some(h(5, 3, 1)), h(5, 3, 0)), h(5, 3, 0));
        assert_eq!(earlier(Some(h(5, 3, 0)), h(5, 3, 1)), h(5, 3, 0));
        assert_eq!(earlier(None, h(7, 0, 0)), h(7, 0, 0));
    }
}
