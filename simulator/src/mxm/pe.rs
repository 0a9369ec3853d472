//! The PE-level reference model of one plane: every processing element,
//! every cycle.
//!
//! A processing element (PE) is a `b x b` block of MACs (`b =
//! pe_block`); PE(I, J) covers MAC rows `I b .. (I+1) b` and columns
//! `J b .. (J+1) b`, and the plane is `R/b x C/b` of them. State, as the
//! hardware would hold it:
//!
//! - every MAC has two weight registers, buffer 0 and buffer 1; the plane
//!   has a select saying which one newly issued vectors read;
//! - each link between neighbouring PEs is a pipeline of `pe_hop_cycles`
//!   registers: activations travel east (one `i8` per MAC row), partial sums
//!   travel south (one `i64` per MAC column; from PE row `R/b - 1` into the
//!   accumulator row). A register holds the value, the tag of the `Multiply`
//!   it belongs to (the command index), its `accumulate` flag and, for
//!   activations, the weight buffer the vector reads: control travels with
//!   the data. The buffer bit is the swap's wavefront: PE(I, J) reads the
//!   new buffer from the first vector issued after the swap on, that is from
//!   cycle `swap end + (I + J) hop`, and the old one for every vector before;
//! - the west edge has a triangular input skew: the rows of PE row `I`
//!   delay their elements by `I * hop` cycles;
//! - below the array, the accumulator row (one wide register per column)
//!   and a triangular output deskew (the columns of PE column `J` delay by
//!   `(C/b - 1 - J) * hop + 1` cycles), so a vector's `C` sums leave
//!   together.
//!
//! One cycle `c` is: (0) a swap that ends at `c` flips the select; (1) the
//! commands of cycle `c` issue in list order, each checked for hazards
//! against the current state; (2a) the running load writes its rows of this
//! cycle into its buffer, after checking that no activation still to be
//! consumed by those rows' PE row reads that buffer; (2b) every PE with
//! activations arriving computes, for each of its columns, `psum =
//! psum_north + sum over its b rows of w * x` (in `i64`, checked against
//! `acc_bits` at the PE's output), and the accumulator row takes the sums
//! arriving from the bottom PE row; (3) an output vector whose deskewed sums
//! arrive is emitted. A hazard in (1) or (2) stops the plane at `c` with
//! nothing emitted at `c`. Among overflows in one cycle the lowest column,
//! then the earliest `Multiply`, is reported.

use std::ops::Range;

use super::{
    Command, Cycle, Hazard, HazardKind, MxmError, Output, OverflowSite, PlaneConfig, RunResult,
    WeightTile, issue_order,
};

/// An activation in flight: one MAC row's element of a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Act {
    x: i8,
    tag: usize,
    accumulate: bool,
    /// The weight buffer (0 or 1) this vector reads at every PE.
    buffer: usize,
}

/// A partial sum in flight: one MAC column's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Psum {
    sum: i64,
    tag: usize,
    accumulate: bool,
}

/// The vector issued this cycle, entering the west edge.
#[derive(Debug, Clone)]
struct Feed {
    x: Vec<i8>,
    tag: usize,
    accumulate: bool,
    buffer: usize,
}

/// The load in progress.
#[derive(Debug, Clone)]
struct Loading {
    tile: WeightTile,
    start: Cycle,
    /// The buffer it writes (the one new vectors do not read).
    buffer: usize,
    /// Its command index.
    index: usize,
}

/// The PE-level state of one plane. [`run_pe`] drives it cycle by cycle.
#[derive(Debug, Clone)]
struct PePlane {
    config: PlaneConfig,
    /// `h = pe_hop_cycles` as an index.
    hop: usize,
    /// `b`.
    b: usize,
    /// `R / b`.
    br: usize,
    /// `C / b`.
    bc: usize,
    /// The two weight buffers, each `R x C` row-major (MAC (i, j) at
    /// `i * C + j`).
    weights: [Vec<i8>; 2],
    /// The buffer newly issued vectors read.
    select: usize,
    /// `east[s][i * bc + J]`: MAC row `i`'s activation that PE(i / b, J)
    /// passed east at a cycle `c` with `c % h == s`; PE(i / b, J+1) reads it
    /// at `c + h`. PE column `C/b - 1` passes nothing (the east edge).
    east: Vec<Vec<Option<Act>>>,
    /// `south[s][I * C + j]`: column `j`'s partial sum PE(I, j / b) passed
    /// south, read by PE(I+1, j / b) (or, for `I = R/b - 1`, by the
    /// accumulator) `h` cycles later.
    south: Vec<Vec<Option<Psum>>>,
    /// Scratch for the next `east` slot.
    next_east: Vec<Option<Act>>,
    /// Scratch for the next `south` slot.
    next_south: Vec<Option<Psum>>,
    /// Input skew: MAC row `i` is a ring of `(i / b) * h` registers (PE row
    /// 0: none).
    skew: Vec<Vec<Option<Act>>>,
    /// The accumulator row.
    acc: Vec<i64>,
    /// Output deskew: column `j` is a ring of `(C/b - 1 - j/b) * h + 1`
    /// registers holding (accumulator value, tag).
    deskew: Vec<Vec<Option<(i64, usize)>>>,
    /// Occupied registers in `east`, `south`, `skew` and `deskew`.
    live: usize,
    feed: Option<Feed>,
    loading: Option<Loading>,
    /// The running swap ends (flips the select) at this cycle.
    swap_ends: Option<Cycle>,
    /// A `LoadWeights` was issued since the last `Swap`.
    shadow_loaded: bool,
}

impl PePlane {
    /// A plane with all-zero weights in both buffers, empty pipelines and a
    /// zero accumulator row.
    fn new(config: PlaneConfig) -> Result<Self, MxmError> {
        config.validate()?;
        let (r, c, b) = (config.rows, config.cols, config.pe_block);
        let (br, bc) = (config.block_rows(), config.block_cols());
        let hop = config.pe_hop_cycles as usize;
        Ok(Self {
            config,
            hop,
            b,
            br,
            bc,
            weights: [vec![0; r * c], vec![0; r * c]],
            select: 0,
            east: vec![vec![None; r * bc]; hop],
            south: vec![vec![None; br * c]; hop],
            next_east: vec![None; r * bc],
            next_south: vec![None; br * c],
            skew: (0..r).map(|i| vec![None; (i / b) * hop]).collect(),
            acc: vec![0; c],
            deskew: (0..c)
                .map(|j| vec![None; (bc - 1 - j / b) * hop + 1])
                .collect(),
            live: 0,
            feed: None,
            loading: None,
            swap_ends: None,
            shadow_loaded: false,
        })
    }

    /// Nothing in flight, no load and no swap running: stepping would only
    /// repeat the same state.
    fn is_idle(&self) -> bool {
        self.live == 0 && self.feed.is_none() && self.loading.is_none() && self.swap_ends.is_none()
    }

    /// Phase 0 of cycle `c`: a swap ending now flips the select, so vectors
    /// issued from now on read the other buffer.
    fn begin_cycle(&mut self, c: Cycle) {
        if self.swap_ends == Some(c) {
            self.select ^= 1;
            self.swap_ends = None;
        }
    }

    /// Phase 1: issues command `index` at cycle `c` (already checked
    /// against the plane's shape); `Some(kind)` is a hazard that refuses it.
    fn issue_checked(&mut self, index: usize, c: Cycle, command: &Command) -> Option<HazardKind> {
        match command {
            Command::LoadWeights(tile) => {
                if self.swap_ends.is_some() {
                    return Some(HazardKind::LoadDuringSwap);
                }
                if self.loading.is_some() {
                    return Some(HazardKind::LoadWhileLoading);
                }
                self.loading = Some(Loading {
                    tile: tile.clone(),
                    start: c,
                    buffer: self.select ^ 1,
                    index,
                });
                self.shadow_loaded = true;
                None
            }
            Command::Swap => {
                if !self.shadow_loaded {
                    return Some(HazardKind::SwapWithoutLoad);
                }
                if self.loading.is_some() {
                    return Some(HazardKind::SwapBeforeLoadDone);
                }
                // Vectors in flight are no hazard: they carry their buffer.
                self.swap_ends = Some(c + self.config.swap_cycles);
                self.shadow_loaded = false;
                None
            }
            Command::Multiply { vector, accumulate } => {
                if self.swap_ends.is_some() {
                    return Some(HazardKind::MultiplyDuringSwap);
                }
                if self.feed.is_some() {
                    return Some(HazardKind::MultiplyPortBusy);
                }
                self.feed = Some(Feed {
                    x: vector.clone(),
                    tag: index,
                    accumulate: *accumulate,
                    buffer: self.select,
                });
                None
            }
        }
    }

    /// Some activation that PE row `block_row` has still to consume (this
    /// cycle or later) reads `buffer`: it is in the feed, in the input skew
    /// of the PE row's MAC rows, or on their east links.
    fn pending_reader(&self, block_row: usize, buffer: usize) -> bool {
        let rows = block_row * self.b..(block_row + 1) * self.b;
        let reads = |a: &Option<Act>| a.is_some_and(|a| a.buffer == buffer);
        let bc = self.bc;
        self.feed.as_ref().is_some_and(|f| f.buffer == buffer)
            || rows.clone().any(|i| self.skew[i].iter().any(reads))
            || self
                .east
                .iter()
                .any(|slot| slot[rows.start * bc..rows.end * bc].iter().any(reads))
    }

    /// Phase 2a of cycle `c`: the running load's writes of this cycle (tile
    /// rows `k rate .. (k+1) rate` on its `k`-th cycle; on its first, also
    /// the rows past the tile, cleared). `Err` if one of them hits a buffer
    /// row still to be read.
    fn load_step(&mut self, c: Cycle) -> Result<(), Hazard> {
        let Some(load) = &self.loading else {
            return Ok(());
        };
        let (r, cols, b) = (self.config.rows, self.config.cols, self.b);
        let rate = self.config.install_rows_per_cycle;
        let n = load.tile.rows();
        let k = (c - load.start) as usize;
        let tile_rows = (k * rate).min(n)..((k + 1) * rate).min(n);
        let cleared = if k == 0 { n..r } else { r..r };
        let block_rows = |rows: &Range<usize>| {
            if rows.is_empty() {
                0..0
            } else {
                rows.start / b..(rows.end - 1) / b + 1
            }
        };
        for block_row in block_rows(&tile_rows).chain(block_rows(&cleared)) {
            if self.pending_reader(block_row, load.buffer) {
                return Err(Hazard {
                    cycle: c,
                    command: load.index,
                    kind: HazardKind::LoadIntoBufferInUse,
                });
            }
        }
        let weights = &mut self.weights[load.buffer];
        for i in tile_rows.clone() {
            weights[i * cols..(i + 1) * cols].copy_from_slice(load.tile.row(i));
        }
        weights[cleared.start * cols..cleared.end * cols].fill(0);
        if tile_rows.end >= n {
            self.loading = None;
        }
        Ok(())
    }

    /// Phases 2 and 3 of cycle `c`: the load, every PE, the accumulator
    /// row, then the emit. `Err` is the first hazard of this cycle.
    fn compute(&mut self, c: Cycle) -> Result<Option<Output>, Hazard> {
        self.load_step(c)?;
        let (r, cols, b, bc) = (self.config.rows, self.config.cols, self.b, self.bc);
        let h = self.hop;
        let s = (c % h as Cycle) as usize;
        let (lo, hi) = (self.config.acc_min(), self.config.acc_max());
        let mut overflow: Option<(usize, usize, OverflowSite)> = None;
        let mut note = |column: usize, tag: usize, site: OverflowSite| {
            if overflow.is_none_or(|(j0, t0, _)| (column, tag) < (j0, t0)) {
                overflow = Some((column, tag, site));
            }
        };
        let mut live = self.live as isize;

        // (3, read) The deskewed sums arriving now, before this cycle's writes.
        let arriving: Vec<Option<(i64, usize)>> = self
            .deskew
            .iter()
            .map(|ring| ring[(c % ring.len() as Cycle) as usize])
            .collect();

        // West edge: PE row 0's MAC rows take the fed element now, the
        // others after their skew.
        let feed = self.feed.take();
        let mut west: Vec<Option<Act>> = Vec::with_capacity(r);
        for (i, ring) in self.skew.iter_mut().enumerate() {
            let entering = feed.as_ref().map(|f| Act {
                x: f.x[i],
                tag: f.tag,
                accumulate: f.accumulate,
                buffer: f.buffer,
            });
            if ring.is_empty() {
                west.push(entering);
            } else {
                let k = (c % ring.len() as Cycle) as usize;
                west.push(ring[k]);
                live += isize::from(entering.is_some()) - isize::from(ring[k].is_some());
                ring[k] = entering;
            }
        }

        // (2b) Every PE reads what its neighbours passed h cycles ago.
        let east_in = &self.east[s];
        let south_in = &self.south[s];
        for bi in 0..self.br {
            let rows = bi * b..(bi + 1) * b;
            for bj in 0..bc {
                let col_range = bj * b..(bj + 1) * b;
                let x_in = |i: usize| {
                    if bj == 0 {
                        west[i]
                    } else {
                        east_in[i * bc + bj - 1]
                    }
                };
                let Some(lead) = x_in(rows.start) else {
                    debug_assert!(rows.clone().all(|i| x_in(i).is_none()));
                    for i in rows.clone() {
                        self.next_east[i * bc + bj] = None;
                    }
                    for j in col_range {
                        self.next_south[bi * cols + j] = None;
                    }
                    continue;
                };
                debug_assert!(
                    rows.clone()
                        .all(|i| x_in(i).is_some_and(|a| a.tag == lead.tag
                            && a.buffer == lead.buffer
                            && a.accumulate == lead.accumulate))
                );
                let weights = &self.weights[lead.buffer];
                for j in col_range {
                    let north = if bi == 0 {
                        0
                    } else {
                        let p = south_in[(bi - 1) * cols + j];
                        debug_assert!(p.is_some_and(|p| p.tag == lead.tag));
                        p.map_or(0, |p| p.sum)
                    };
                    let block: i64 = rows
                        .clone()
                        .map(|i| {
                            let x = x_in(i).map_or(0, |a| a.x);
                            i64::from(weights[i * cols + j]) * i64::from(x)
                        })
                        .sum();
                    let sum = north + block;
                    if sum < lo || sum > hi {
                        note(j, lead.tag, OverflowSite::PartialSum { row: rows.end - 1 });
                    }
                    self.next_south[bi * cols + j] = Some(Psum {
                        sum,
                        tag: lead.tag,
                        accumulate: lead.accumulate,
                    });
                }
                for i in rows.clone() {
                    self.next_east[i * bc + bj] = if bj + 1 < bc { x_in(i) } else { None };
                }
            }
        }

        // The accumulator row takes the sums leaving the bottom PE row,
        // then passes the result into the output deskew.
        let bottom = (self.br - 1) * cols;
        for j in 0..cols {
            let value = match self.south[s][bottom + j] {
                None => None,
                Some(p) => {
                    let v = if p.accumulate {
                        self.acc[j] + p.sum
                    } else {
                        p.sum
                    };
                    if v < lo || v > hi {
                        note(j, p.tag, OverflowSite::Accumulator);
                    }
                    self.acc[j] = v;
                    Some((v, p.tag))
                }
            };
            let ring = &mut self.deskew[j];
            let k = (c % ring.len() as Cycle) as usize;
            live += isize::from(value.is_some()) - isize::from(ring[k].is_some());
            ring[k] = value;
        }

        // Commit the links.
        let count = |v: &[Option<Act>]| v.iter().filter(|e| e.is_some()).count() as isize;
        let count_p = |v: &[Option<Psum>]| v.iter().filter(|e| e.is_some()).count() as isize;
        live += count(&self.next_east) - count(&self.east[s]);
        live += count_p(&self.next_south) - count_p(&self.south[s]);
        std::mem::swap(&mut self.east[s], &mut self.next_east);
        std::mem::swap(&mut self.south[s], &mut self.next_south);
        self.live = live as usize;

        if let Some((column, tag, site)) = overflow {
            return Err(Hazard {
                cycle: c,
                command: tag,
                kind: HazardKind::AccumulatorOverflow { column, site },
            });
        }

        // (3) Emit when every column's deskewed sum has arrived.
        if arriving.iter().all(Option::is_some) {
            let tag = arriving[0].map_or(0, |(_, t)| t);
            debug_assert!(arriving.iter().all(|a| a.is_some_and(|(_, t)| t == tag)));
            let values = arriving
                .iter()
                .map(|a| a.map_or(0, |(v, _)| v as i32))
                .collect();
            return Ok(Some(Output {
                cycle: c,
                command: tag,
                values,
            }));
        }
        debug_assert!(arriving.iter().all(Option::is_none), "ragged output at {c}");
        Ok(None)
    }
}

/// Runs a timed program on the PE-level model: steps every cycle from 0
/// (skipping cycles in which the plane is idle and no command is due) until
/// every command has issued and every output has been emitted, or until
/// the first hazard.
pub fn run_pe(config: &PlaneConfig, program: &[(Cycle, Command)]) -> Result<RunResult, MxmError> {
    let order = issue_order(config, program)?;
    let mut plane = PePlane::new(*config)?;
    let mut outputs = Vec::new();
    let mut next = 0;
    let mut cycle: Cycle = 0;
    let mut last_command: Cycle = 0;
    let hazard = 'run: loop {
        if plane.is_idle() {
            match order.get(next) {
                None => break 'run None,
                Some(&i) => cycle = cycle.max(program[i].0),
            }
        }
        plane.begin_cycle(cycle);
        while let Some(&index) = order.get(next) {
            let (at, command) = &program[index];
            if *at != cycle {
                break;
            }
            last_command = cycle;
            next += 1;
            if let Some(kind) = plane.issue_checked(index, cycle, command) {
                break 'run Some(Hazard {
                    cycle,
                    command: index,
                    kind,
                });
            }
        }
        match plane.compute(cycle) {
            Ok(Some(output)) => outputs.push(output),
            Ok(None) => {}
            Err(h) => break 'run Some(h),
        }
        cycle += 1;
    };
    let end_cycle = match hazard {
        Some(h) => h.cycle,
        None => outputs
            .last()
            .map_or(last_command, |o: &Output| o.cycle.max(last_command)),
    };
    Ok(RunResult {
        outputs,
        hazard,
        end_cycle,
    })
}
