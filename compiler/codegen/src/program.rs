//! [`ProgramBuilder`]: a [`Sched`] plus the data of a program (MEM
//! placement and initial contents, tables, symbols), finished into a
//! [`q35_isa::Program`] with its predicted cycle count and a debug map.

use std::collections::{BTreeMap, BTreeSet};

use q35_isa::{
    DType, Hemisphere, MemData, MemInit, Placement, Program, QueueId, Symbol, SymbolKind, Table,
    TableId,
};
use q35_target::Target;

use crate::alloc::{Alloc, AllocError, Buffer};
use crate::emit;
use crate::machine::Mach;
use crate::sched::Sched;

/// Lanes in a vector (and bytes in a MEM word).
pub const LANES: u32 = q35_isa::VECTOR_BYTES;

/// A program under construction.
#[derive(Debug)]
pub struct ProgramBuilder {
    /// The schedule.
    pub sched: Sched,
    /// MEM placement.
    pub alloc: Alloc,
    tables: Vec<Table>,
    mem: Vec<MemInit>,
    symbols: Vec<Symbol>,
    /// Slices new buffers avoid (those of the op being compiled).
    avoid: BTreeSet<QueueId>,
    /// Kernel scratch handed out again ([`ProgramBuilder::set_reuse`]):
    /// per (kind, hemisphere, slices, words), the buffers so far and a
    /// rotation counter.
    reuse: Option<BTreeMap<ReuseKey, (Vec<Buffer>, usize)>>,
    /// Whether placed weights write their images (codes, scales, slot
    /// masks) into the program's MEM contents ([`ProgramBuilder::set_weight_images`]).
    weight_images: bool,
}

/// Kernel scratch that may be handed out again: kind, hemisphere (as a
/// number), slices, words.
type ReuseKey = (String, u8, usize, u32);

/// A finished program.
#[derive(Debug)]
pub struct Built {
    /// The program.
    pub program: Program,
    /// The cycle count the simulator will measure.
    pub cycles: u64,
    /// Per queue (dense index) and instruction index, the bundle label.
    pub debug: Vec<(u16, u32, String)>,
}

impl ProgramBuilder {
    /// An empty program for `target`.
    pub fn new(target: &Target) -> ProgramBuilder {
        let mach = Mach::new(target);
        let alloc = Alloc::new(mach.words_per_slice, u64::from(LANES));
        ProgramBuilder {
            sched: Sched::new(mach),
            alloc,
            tables: Vec::new(),
            mem: Vec::new(),
            symbols: Vec::new(),
            avoid: BTreeSet::new(),
            reuse: None,
            weight_images: true,
        }
    }

    /// Whether kernel scratch asked for with
    /// [`ProgramBuilder::scratch_slices`] may be a buffer an earlier kernel
    /// call had (off: every call gets its own). Sharing is always correct:
    /// the scheduler orders every write of a MEM word after the earlier
    /// reads and writes of it; it costs overlap between the calls, and
    /// saves MEM.
    pub fn set_reuse(&mut self, on: bool) {
        self.reuse = on.then(BTreeMap::new);
    }

    /// [`ProgramBuilder::place_slices`] for scratch a kernel writes before
    /// it reads (no initial contents) of kind `kind` (e.g.
    /// `attention.scratch`): with reuse on, an earlier buffer of the same
    /// kind, hemisphere and size whose slices the current op does not
    /// avoid, taken in rotation; else a new one.
    pub fn scratch_slices(
        &mut self,
        name: &str,
        kind: &str,
        h: Hemisphere,
        slices: usize,
        words: u32,
    ) -> Result<Buffer, AllocError> {
        let key = (kind.to_string(), h as u8, slices, words);
        if let Some(pool) = self.reuse.as_mut().and_then(|r| r.get_mut(&key)) {
            let n = pool.0.len();
            for j in 0..n {
                let b = &pool.0[(pool.1 + j) % n];
                if !b.slices.iter().any(|s| self.avoid.contains(s)) {
                    let b = Buffer {
                        name: name.to_string(),
                        ..b.clone()
                    };
                    pool.1 = (pool.1 + j + 1) % n;
                    self.avoid.extend(b.slices.iter().copied());
                    return Ok(b);
                }
            }
        }
        let b = self.place_slices(name, h, slices, words)?;
        if let Some(r) = self.reuse.as_mut() {
            r.entry(key).or_default().0.push(b.clone());
        }
        Ok(b)
    }

    /// A program for `target` that continues after another of the same
    /// binary: MEM is allocated from `alloc` on (what the other program
    /// left), and its tables start as `tables` (ids the other program's
    /// placed weights refer to stay valid).
    pub fn after(target: &Target, alloc: Alloc, tables: Vec<Table>) -> ProgramBuilder {
        let mut p = ProgramBuilder::new(target);
        p.alloc = alloc;
        p.tables = tables;
        p
    }

    /// Whether placed weights put their images (codes, scales, slot masks)
    /// into the program's MEM contents: on by default; off for a
    /// timing-only program (placeholder weights of the right shapes, whose
    /// placement and schedule are the real ones but whose values mean
    /// nothing, docs/backend.md 8).
    pub fn set_weight_images(&mut self, on: bool) {
        self.weight_images = on;
    }

    /// See [`ProgramBuilder::set_weight_images`].
    pub fn weight_images(&self) -> bool {
        self.weight_images
    }

    /// The tables so far (a table's id is its index).
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The machine.
    pub fn mach(&self) -> &crate::machine::Mach {
        &self.sched.mach
    }

    /// Places a buffer of `elements` elements of `dtype` (one slice per byte
    /// plane) in hemisphere `h`.
    pub fn buffer(
        &mut self,
        name: &str,
        dtype: DType,
        elements: u64,
        h: Hemisphere,
    ) -> Result<Buffer, AllocError> {
        let words = elements.div_ceil(u64::from(LANES)).max(1);
        let words = u32::try_from(words).unwrap_or(u32::MAX);
        self.place_slices(name, h, dtype.bytes() as usize, words)
    }

    /// [`ProgramBuilder::buffer`] in hemisphere `first`, or in the other one
    /// when `first` has no room.
    pub fn buffer_either(
        &mut self,
        name: &str,
        dtype: DType,
        elements: u64,
        first: Hemisphere,
    ) -> Result<Buffer, AllocError> {
        match self.buffer(name, dtype, elements, first) {
            Ok(b) => Ok(b),
            Err(e) => {
                let other = match first {
                    Hemisphere::West => Hemisphere::East,
                    Hemisphere::East => Hemisphere::West,
                };
                self.buffer(name, dtype, elements, other).map_err(|_| e)
            }
        }
    }

    /// Places `slices` slices of `words` words avoiding the current op's
    /// slices and every buffer placed since [`ProgramBuilder::set_avoid`]
    /// (a kernel's buffers are read together in its bundles, so they are
    /// kept on distinct slices too).
    pub fn place_slices(
        &mut self,
        name: &str,
        h: Hemisphere,
        slices: usize,
        words: u32,
    ) -> Result<Buffer, AllocError> {
        let buf = self
            .alloc
            .place_avoiding(name, h, slices, words, &self.avoid)?;
        self.avoid.extend(buf.slices.iter().copied());
        Ok(buf)
    }

    /// Makes new buffers avoid the slices of `bufs` (the operands of the op
    /// being compiled, whose kernel may read its own scratch together with
    /// them) until the next call.
    pub fn set_avoid(&mut self, bufs: &[&Buffer]) {
        self.avoid = bufs.iter().flat_map(|b| b.slices.iter().copied()).collect();
    }

    /// The slices new buffers avoid now.
    pub fn avoided(&self) -> &BTreeSet<QueueId> {
        &self.avoid
    }

    /// Makes new buffers avoid exactly `slices` (what
    /// [`ProgramBuilder::avoided`] returned earlier).
    pub fn set_avoided(&mut self, slices: BTreeSet<QueueId>) {
        self.avoid = slices;
    }

    /// Makes new buffers avoid the slices of `bufs` too (beside those set by
    /// [`ProgramBuilder::set_avoid`]).
    pub fn also_avoid(&mut self, bufs: &[&Buffer]) {
        self.avoid
            .extend(bufs.iter().flat_map(|b| b.slices.iter().copied()));
    }

    /// Initial contents of `buf` (element bit patterns, packed lane-wise).
    pub fn init(&mut self, buf: &Buffer, dtype: DType, values: Vec<u32>) {
        self.mem.push(MemInit {
            at: Placement {
                slices: buf.slices.clone(),
                addr: buf.addr,
            },
            dtype,
            data: MemData::Values(values),
        });
    }

    /// Initial contents of words of one slice given as raw 320-byte words.
    pub fn init_words(&mut self, slice: q35_isa::QueueId, addr: u32, bytes: Vec<u8>) {
        let values = bytes.into_iter().map(u32::from).collect();
        self.mem.push(MemInit {
            at: Placement {
                slices: vec![slice],
                addr,
            },
            dtype: DType::U8,
            data: MemData::Values(values),
        });
    }

    /// Declares `buf` as the symbol `name` (`dims` elements of `dtype`)
    /// the host binds as `kind`.
    pub fn symbol(
        &mut self,
        name: &str,
        kind: SymbolKind,
        dtype: DType,
        dims: Vec<u32>,
        buf: &Buffer,
    ) {
        self.symbols.push(Symbol {
            name: name.to_string(),
            kind,
            dtype,
            dims,
            at: Placement {
                slices: buf.slices.clone(),
                addr: buf.addr,
            },
        });
    }

    /// Adds a table (e.g. a permute map).
    pub fn table(&mut self, name: &str, values: Vec<u16>) -> TableId {
        if let Some(i) = self.tables.iter().position(|t| t.name == name) {
            return TableId(i as u16);
        }
        self.tables.push(Table {
            name: name.to_string(),
            values,
        });
        TableId(self.tables.len() as u16 - 1)
    }

    /// The program, its predicted cycles and its debug map.
    pub fn finish(mut self) -> Built {
        self.sched.sort_queues();
        let cycles = self.sched.total_cycles();
        let mut program = Program::new(&self.sched.mach.target.name);
        program.tables = self.tables;
        program.mem = self.mem;
        program.symbols = self.symbols;
        let labels = self.sched.labels();
        let mut debug = Vec::new();
        for (q, timed, label) in self.sched.timed() {
            let (list, index) = emit::queue_list(timed);
            for (k, &i) in index.iter().enumerate() {
                if k == 0 || index[k - 1] != i {
                    debug.push((q.index(), i as u32, labels[label[k] as usize].clone()));
                }
            }
            program.queues.insert(q, list);
        }
        Built {
            program,
            cycles,
            debug,
        }
    }
}
