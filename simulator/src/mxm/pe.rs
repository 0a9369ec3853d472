//! The PE-level reference model of one plane: every processing element,
//! every cycle.
//!
//! State, as the hardware would hold it:
//!
//! - each PE(i, j) has an active and a shadow weight register;
//! - each link between neighbours is a pipeline of `pe_hop_cycles`
//!   registers: activations travel east (PE(i, j) to PE(i, j+1)), partial
//!   sums travel south (PE(i, j) to PE(i+1, j), and from row `R-1` into the
//!   accumulator row). A register holds the value, the tag of the `Multiply`
//!   it belongs to (the command index) and its `accumulate` flag: control
//!   travels with the data;
//! - the west edge has a triangular input skew: row `i` delays its element
//!   by `i * hop` cycles;
//! - below the array, the accumulator row (one wide register per column)
//!   and a triangular output deskew (column `j` delays by
//!   `(C-1-j) * hop + 1` cycles), so a vector's `C` sums leave together.
//!
//! One cycle `c` is: (0) a swap that ends at `c` exchanges every PE's
//! active and shadow weights; (1) the commands of cycle `c` issue in list
//! order, each checked for hazards against the current state; (2) every PE
//! with an activation arriving computes `psum = psum_north + w * x` (in
//! `i64`, checked against `acc_bits`), the accumulator row takes the sums
//! arriving from the bottom row, and the running load writes its rows of
//! this cycle; (3) an output vector whose deskewed sums arrive is emitted.
//! A hazard in (1) or (2) stops the plane at `c` with nothing emitted at `c`.
//! Among overflows in one cycle the lowest column, then the earliest
//! `Multiply`, is reported.

use super::{
    Command, Cycle, Hazard, HazardKind, MxmError, Output, OverflowSite, PlaneConfig, RunResult,
    WeightTile, issue_order,
};

/// An activation in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Act {
    x: i8,
    tag: usize,
    accumulate: bool,
}

/// A partial sum in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Psum {
    sum: i64,
    tag: usize,
    accumulate: bool,
}

/// One processing element's weight registers.
#[derive(Debug, Clone, Copy, Default)]
struct Pe {
    active: i8,
    shadow: i8,
}

/// The load in progress.
#[derive(Debug, Clone)]
struct Loading {
    tile: WeightTile,
    start: Cycle,
}

/// The PE-level state of one plane. [`run_pe`] drives it cycle by cycle.
#[derive(Debug, Clone)]
struct PePlane {
    config: PlaneConfig,
    /// `h = pe_hop_cycles` as an index.
    hop: usize,
    /// PE(i, j) at `i * C + j`.
    pes: Vec<Pe>,
    /// `east[s][i * C + j]`: the activation PE(i, j) passed east at a cycle
    /// `c` with `c % h == s`; PE(i, j+1) reads it at `c + h`. Column `C-1`
    /// passes nothing (the east edge).
    east: Vec<Vec<Option<Act>>>,
    /// `south[s][i * C + j]`: the partial sum PE(i, j) passed south, read by
    /// PE(i+1, j) (or, for `i = R-1`, by the accumulator) `h` cycles later.
    south: Vec<Vec<Option<Psum>>>,
    /// Scratch for the next `east` slot.
    next_east: Vec<Option<Act>>,
    /// Scratch for the next `south` slot.
    next_south: Vec<Option<Psum>>,
    /// Input skew: row `i` is a ring of `i * h` registers (row 0: none).
    skew: Vec<Vec<Option<Act>>>,
    /// The accumulator row.
    acc: Vec<i64>,
    /// Output deskew: column `j` is a ring of `(C-1-j) * h + 1` registers
    /// holding (accumulator value, tag).
    deskew: Vec<Vec<Option<(i64, usize)>>>,
    /// Occupied registers in `east`, `south`, `skew` and `deskew`.
    live: usize,
    /// The vector issued this cycle, entering the west edge: (x, tag, accumulate).
    feed: Option<(Vec<i8>, usize, bool)>,
    loading: Option<Loading>,
    /// The running swap ends (exchanges the buffers) at this cycle.
    swap_ends: Option<Cycle>,
    /// A `LoadWeights` was issued since the last `Swap`.
    shadow_loaded: bool,
}

impl PePlane {
    /// A plane with all-zero weights in both buffers, empty pipelines and a
    /// zero accumulator row.
    fn new(config: PlaneConfig) -> Result<Self, MxmError> {
        config.validate()?;
        let (r, c) = (config.rows, config.cols);
        let hop = config.pe_hop_cycles as usize;
        Ok(Self {
            config,
            hop,
            pes: vec![Pe::default(); r * c],
            east: vec![vec![None; r * c]; hop],
            south: vec![vec![None; r * c]; hop],
            next_east: vec![None; r * c],
            next_south: vec![None; r * c],
            skew: (0..r).map(|i| vec![None; i * hop]).collect(),
            acc: vec![0; c],
            deskew: (0..c).map(|j| vec![None; (c - 1 - j) * hop + 1]).collect(),
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

    /// Phase 0 of cycle `c`: a swap ending now exchanges the buffers.
    fn begin_cycle(&mut self, c: Cycle) {
        if self.swap_ends == Some(c) {
            for pe in &mut self.pes {
                std::mem::swap(&mut pe.active, &mut pe.shadow);
            }
            self.swap_ends = None;
        }
    }

    /// A vector is inside the array: some PE has yet to compute on it.
    /// Sums leaving the bottom row are past the array.
    fn vector_in_array(&self) -> bool {
        let c = self.config.cols;
        let above_bottom = (self.config.rows - 1) * c;
        self.feed.is_some()
            || self.skew.iter().flatten().any(Option::is_some)
            || self.east.iter().flatten().any(Option::is_some)
            || self
                .south
                .iter()
                .any(|slot| slot[..above_bottom].iter().any(Option::is_some))
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
                // Rows past the tile are cleared at issue; its own rows are
                // written at `rate` rows a cycle from this cycle on.
                let cols = self.config.cols;
                for pe in &mut self.pes[tile.rows() * cols..] {
                    pe.shadow = 0;
                }
                self.loading = Some(Loading {
                    tile: tile.clone(),
                    start: c,
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
                if self.vector_in_array() {
                    return Some(HazardKind::SwapWhileInFlight);
                }
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
                self.feed = Some((vector.clone(), index, *accumulate));
                None
            }
        }
    }

    /// Phases 2 and 3 of cycle `c`: every PE, the accumulator row, the
    /// load, then the emit. `Err` is the first overflow of this cycle.
    fn compute(&mut self, c: Cycle) -> Result<Option<Output>, Hazard> {
        let (r, cols) = (self.config.rows, self.config.cols);
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

        // West edge: row 0 takes the fed element now, row i after its skew.
        let feed = self.feed.take();
        let mut west: Vec<Option<Act>> = Vec::with_capacity(r);
        for (i, ring) in self.skew.iter_mut().enumerate() {
            let entering = feed.as_ref().map(|(x, tag, accumulate)| Act {
                x: x[i],
                tag: *tag,
                accumulate: *accumulate,
            });
            if i == 0 {
                west.push(entering);
            } else {
                let k = (c % ring.len() as Cycle) as usize;
                west.push(ring[k]);
                live += isize::from(entering.is_some()) - isize::from(ring[k].is_some());
                ring[k] = entering;
            }
        }

        // (2) Every PE reads what its neighbours passed h cycles ago.
        let east_in = &self.east[s];
        let south_in = &self.south[s];
        for i in 0..r {
            for j in 0..cols {
                let x_in = if j == 0 {
                    west[i]
                } else {
                    east_in[i * cols + j - 1]
                };
                let (passed_east, passed_south) = match x_in {
                    None => (None, None),
                    Some(a) => {
                        let north = if i == 0 {
                            0
                        } else {
                            south_in[(i - 1) * cols + j].map_or(0, |p| p.sum)
                        };
                        let w = self.pes[i * cols + j].active;
                        let sum = north + i64::from(w) * i64::from(a.x);
                        if sum < lo || sum > hi {
                            note(j, a.tag, OverflowSite::PartialSum { row: i });
                        }
                        let psum = Psum {
                            sum,
                            tag: a.tag,
                            accumulate: a.accumulate,
                        };
                        ((j + 1 < cols).then_some(a), Some(psum))
                    }
                };
                self.next_east[i * cols + j] = passed_east;
                self.next_south[i * cols + j] = passed_south;
            }
        }

        // The accumulator row takes the sums leaving the bottom row, then
        // passes the result into the output deskew.
        for j in 0..cols {
            let value = match self.south[s][(r - 1) * cols + j] {
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

        // The running load writes this cycle's rows into the shadow registers.
        if let Some(load) = &self.loading {
            let rate = self.config.install_rows_per_cycle;
            let k = (c - load.start) as usize;
            let n = load.tile.rows();
            let first = k * rate;
            let end = ((k + 1) * rate).min(n);
            for i in first..end {
                for (pe, &w) in self.pes[i * cols..(i + 1) * cols]
                    .iter_mut()
                    .zip(load.tile.row(i))
                {
                    pe.shadow = w;
                }
            }
            if end >= n {
                self.loading = None;
            }
        }

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
