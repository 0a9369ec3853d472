//! The static, cycle-exact list scheduler.
//!
//! # Model
//!
//! Work is described as [`Bundle`]s: a dataflow snippet whose instructions
//! have fixed times relative to each other. A value written onto a stream
//! at position `p` on cycle `w` passes position `q` downstream on cycle
//! `w + |q - p| * hop` and is read there by whoever issues at exactly that
//! cycle (docs/isa.md 1): the machine has no buffering, so once a bundle's
//! first instruction is fixed, every other one is too. Kernels build a
//! bundle backwards from where values must meet (all inputs of a VXM
//! instruction at position 46 on its issue cycle, the rows of an `lw` at the
//! plane on consecutive cycles, ...) with the helpers below, which compute
//! each producer's issue time from the hop distance and latency.
//!
//! [`Sched::place`] then shifts the bundle by the smallest `T` (at least
//! the bundle's dependencies through MEM allow) at which every instruction
//! fits:
//!
//! - **queues** issue in program order: an instruction goes at or after its
//!   queue's previous issue plus that one's issue cycles and occupancy
//!   (a busy unit is a hazard, docs/isa.md 2); VXM instructions take any of
//!   the 16 ALU queues ([`QSel::AnyVxm`]);
//! - **stream registers**: a value occupies its register along one line
//!   (`w - p` eastward, `w + p` westward) from its producer to the chip's
//!   edge, so two values of one register and direction collide exactly when
//!   their lines are equal. Stream ids are chosen at placement (a [`Slot`]
//!   is a group of consecutive registers all of whose values get the same
//!   ids);
//! - **MEM**: at most one read and one write per slice and cycle, one
//!   access per bank and cycle; a read of a word comes after the write that
//!   produced it is visible, a write after every earlier read and write of
//!   the word (program order through MEM);
//! - **MXM** (docs/mxm-timing.md): `iw` after the load finished, `mm` not
//!   during a swap, a load into the buffer the last vectors before the
//!   latest swap still read only `d(n)` after the last of them.
//!
//! Because the rules are the simulator's own, a placed program never
//! reaches a hazard, and the predicted cycle count ([`Sched::total_cycles`])
//! is the one the simulator measures: both are tested.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use q35_isa::{Dir, Instruction, Operand, Stream};
use q35_isa::{QueueId, QueueKind};

use crate::machine::{Cycle, Mach};

/// A value (a group of consecutive stream registers along one line) in a
/// bundle under construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Val(u32);

/// A group of consecutive stream registers whose values share ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotId(u32);

/// Which queue an instruction goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QSel {
    /// This queue.
    Fixed(QueueId),
    /// Any VXM ALU queue free at that cycle.
    AnyVxm,
}

/// A MEM access an instruction makes (for ports, banks and dependencies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemUse {
    /// `read` of one word.
    Read {
        /// Slice.
        slice: QueueId,
        /// Word.
        addr: u32,
    },
    /// `write` of one word.
    Write {
        /// Slice.
        slice: QueueId,
        /// Word.
        addr: u32,
    },
    /// `gather` from words `lo .. hi` (data-dependent within the range).
    Gather {
        /// Slice.
        slice: QueueId,
        /// First word.
        lo: u32,
        /// End word (exclusive).
        hi: u32,
    },
    /// `scatter` into words `lo .. hi`.
    Scatter {
        /// Slice.
        slice: QueueId,
        /// First word.
        lo: u32,
        /// End word (exclusive).
        hi: u32,
    },
}

#[derive(Clone, Debug)]
struct Slot {
    dir: Dir,
    width: u8,
    /// Lines (local) of the values in this slot.
    lines: Vec<Cycle>,
}

#[derive(Clone, Debug)]
struct Value {
    slot: u32,
    /// First register of the value within its slot.
    offset: u8,
    width: u8,
    /// Position and local cycle where it was written.
    pos: u32,
    written: Cycle,
    read: bool,
}

#[derive(Clone, Debug)]
struct Bind {
    operand: usize,
    slot: u32,
    offset: u8,
}

#[derive(Clone, Debug)]
struct Op {
    queue: QSel,
    t: Cycle,
    ins: Instruction,
    /// Cycles the op holds its queue, `max(issue cycles, occupancy)` of
    /// `ins` (asked at every shift a bundle is tried at: computed once).
    len: Cycle,
    binds: Vec<Bind>,
    mem: Option<MemUse>,
}

/// Cycles `ins` holds its queue (see [`Op::len`]).
fn queue_cycles(ins: &Instruction) -> Cycle {
    ins.issue_cycles().max(ins.occupancy()) as Cycle
}

/// A dataflow snippet with fixed relative times (see the module doc).
#[derive(Clone, Debug)]
pub struct Bundle {
    ops: Vec<Op>,
    slots: Vec<Slot>,
    values: Vec<Value>,
    /// Source op for the debug map (`q35.matmul blk.3.attn_q`, ...).
    pub label: String,
}

/// The scheduler could not place a bundle or build an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// A kernel asked for something the machine cannot do (a value read
    /// upstream of its producer, a register group past stream 31, ...).
    #[error("{label}: {message}")]
    Kernel {
        /// The bundle's source op.
        label: String,
        /// What is wrong.
        message: String,
    },
    /// A kernel's own scratch does not fit in MEM.
    #[error("{label}: {error}")]
    Mem {
        /// The bundle's source op.
        label: String,
        /// Where placement ran out.
        error: crate::alloc::AllocError,
    },
    /// A chip-to-chip receive takes a vector later than the link's end
    /// holds it (or before it arrives): the receiving schedule is too late
    /// ([`crate::kernels::c2c::check_arrivals`]).
    #[error("{label}: {message}")]
    LateReceive {
        /// The transfer.
        label: String,
        /// Which vector, and when.
        message: String,
    },
    /// No cycle within the search window fits the bundle.
    #[error("{label}: no cycle from {from} to {to} fits the bundle ({reason})")]
    NoFit {
        /// The bundle's source op.
        label: String,
        /// First cycle tried.
        from: Cycle,
        /// Last cycle tried.
        to: Cycle,
        /// The constraint that failed last.
        reason: String,
    },
}

const PLACEHOLDER: Stream = Stream::east(0);

fn stream_operand_with(ins: &Instruction, operand: usize, s: Stream) -> Instruction {
    let mut ops = ins.operands();
    ops.set(operand, Operand::Stream(s));
    Instruction::from_operands(ins.opcode(), &ops).unwrap_or(*ins)
}

fn operand_index(ins: &Instruction, name: &str) -> usize {
    ins.info()
        .operand_index(name)
        .unwrap_or_else(|| panic!("`{}` has no operand `{name}`", ins.mnemonic()))
}

impl Bundle {
    /// An empty bundle for source op `label`.
    pub fn new(label: impl Into<String>) -> Bundle {
        Bundle {
            ops: Vec::new(),
            slots: Vec::new(),
            values: Vec::new(),
            label: label.into(),
        }
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it has no instruction.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn err(&self, message: impl Into<String>) -> SchedError {
        SchedError::Kernel {
            label: self.label.clone(),
            message: message.into(),
        }
    }

    /// A new slot of `width` registers flowing `dir`.
    pub fn slot(&mut self, dir: Dir, width: u8) -> SlotId {
        self.slots.push(Slot {
            dir,
            width,
            lines: Vec::new(),
        });
        SlotId(self.slots.len() as u32 - 1)
    }

    fn line(dir: Dir, pos: u32, t: Cycle) -> Cycle {
        match dir {
            Dir::East => t - Cycle::from(pos),
            Dir::West => t + Cycle::from(pos),
        }
    }

    /// A value written into `slot` (registers `offset .. offset + width`)
    /// at `pos` on local cycle `written`.
    fn new_value(&mut self, slot: SlotId, offset: u8, width: u8, pos: u32, written: Cycle) -> Val {
        let s = &mut self.slots[slot.0 as usize];
        let line = Self::line(s.dir, pos, written);
        if !s.lines.contains(&line) {
            s.lines.push(line);
        }
        self.values.push(Value {
            slot: slot.0,
            offset,
            width,
            pos,
            written,
            read: false,
        });
        Val(self.values.len() as u32 - 1)
    }

    /// The local cycle at which `v` passes `pos`, if `pos` is downstream of
    /// (or at) its producer.
    pub fn arrival(&self, mach: &Mach, v: Val, pos: u32) -> Option<Cycle> {
        let value = &self.values[v.0 as usize];
        let dir = self.slots[value.slot as usize].dir;
        let ok = match dir {
            Dir::East => pos >= value.pos,
            Dir::West => pos <= value.pos,
        };
        ok.then(|| value.written + mach.hops(value.pos, pos))
    }

    /// Width (registers) of `v`.
    pub fn width(&self, v: Val) -> u8 {
        self.values[v.0 as usize].width
    }

    /// Direction of `v`.
    pub fn dir(&self, v: Val) -> Dir {
        self.slots[self.values[v.0 as usize].slot as usize].dir
    }

    /// The sub-group `first .. first + width` of `v` (e.g. one byte plane
    /// of an f32 value, to write it to its slice).
    pub fn part(&mut self, v: Val, first: u8, width: u8) -> Result<Val, SchedError> {
        let value = self.values[v.0 as usize].clone();
        if first + width > value.width {
            return Err(self.err(format!(
                "registers {first}..{} of a {}-register value",
                first + width,
                value.width
            )));
        }
        self.values[v.0 as usize].read = true;
        self.values.push(Value {
            offset: value.offset + first,
            width,
            read: false,
            ..value
        });
        Ok(Val(self.values.len() as u32 - 1))
    }

    fn bind_input(
        &mut self,
        mach: &Mach,
        ins: &Instruction,
        name: &str,
        v: Val,
        pos: u32,
        t: Cycle,
    ) -> Result<Bind, SchedError> {
        let at = self.arrival(mach, v, pos);
        if at != Some(t) {
            return Err(self.err(format!(
                "`{}` operand `{name}` at position {pos} on cycle {t}: the value passes there {}",
                ins.mnemonic(),
                match at {
                    Some(a) => format!("on cycle {a}"),
                    None => "never (it is upstream of its producer)".to_string(),
                }
            )));
        }
        let value = &mut self.values[v.0 as usize];
        value.read = true;
        Ok(Bind {
            operand: operand_index(ins, name),
            slot: value.slot,
            offset: value.offset,
        })
    }

    /// Adds instruction `ins` on `queue` at position `pos`, local cycle `t`,
    /// reading `inputs` (operand name, value: each must pass `pos` on `t`)
    /// and writing its result operand `out` (name, slot, offset) on
    /// `t + latency`. Returns the result value.
    #[expect(
        clippy::too_many_arguments,
        reason = "one instruction's whole description"
    )]
    fn op(
        &mut self,
        mach: &Mach,
        queue: QSel,
        pos: u32,
        t: Cycle,
        ins: Instruction,
        inputs: &[(&str, Val)],
        out: Option<(&str, SlotId, u8, u8)>,
        mem: Option<MemUse>,
    ) -> Result<Option<Val>, SchedError> {
        let mut binds = Vec::new();
        for &(name, v) in inputs {
            binds.push(self.bind_input(mach, &ins, name, v, pos, t)?);
        }
        let mut result = None;
        if let Some((name, slot, offset, width)) = out {
            let s = &self.slots[slot.0 as usize];
            if offset + width > s.width {
                return Err(self.err("result past its slot"));
            }
            let v = self.new_value(slot, offset, width, pos, t + mach.latency(&ins));
            binds.push(Bind {
                operand: operand_index(&ins, name),
                slot: slot.0,
                offset,
            });
            result = Some(v);
        }
        self.ops.push(Op {
            queue,
            t,
            len: queue_cycles(&ins),
            ins,
            binds,
            mem,
        });
        Ok(result)
    }

    /// `read addr` on `slice` so that the word arrives at position `at` on
    /// local cycle `t`, into register `offset` of `slot` (whose direction
    /// must lead from the slice to `at`).
    #[expect(
        clippy::too_many_arguments,
        reason = "one instruction's whole description"
    )]
    pub fn read_into(
        &mut self,
        mach: &Mach,
        slice: QueueId,
        addr: u32,
        at: u32,
        t: Cycle,
        slot: SlotId,
        offset: u8,
    ) -> Result<Val, SchedError> {
        let p = mach.position(slice);
        let dir = self.slots[slot.0 as usize].dir;
        if Mach::dir(p, at) != Some(dir) {
            return Err(self.err(format!(
                "read on {slice} (position {p}) cannot reach position {at} flowing {dir:?}"
            )));
        }
        let issue = t - mach.read_latency - mach.hops(p, at);
        let ins = Instruction::Read {
            addr,
            dst: PLACEHOLDER,
        };
        let v = self.op(
            mach,
            QSel::Fixed(slice),
            p,
            issue,
            ins,
            &[],
            Some(("dst", slot, offset, 1)),
            Some(MemUse::Read { slice, addr }),
        )?;
        Ok(v.expect("read has a result"))
    }

    /// Reads word `addr` of each of `slices` (byte plane `j` from slice
    /// `j`, all in one hemisphere) as one group arriving at `at` on `t`.
    pub fn read(
        &mut self,
        mach: &Mach,
        slices: &[QueueId],
        addr: u32,
        at: u32,
        t: Cycle,
    ) -> Result<Val, SchedError> {
        let Some(&first) = slices.first() else {
            return Err(self.err("read of no slices"));
        };
        let Some(dir) = Mach::dir(mach.position(first), at) else {
            return Err(self.err("read at the slice's own position"));
        };
        let slot = self.slot(dir, slices.len() as u8);
        for (j, &s) in slices.iter().enumerate() {
            self.read_into(mach, s, addr, at, t, slot, j as u8)?;
        }
        let pos = mach.position(first);
        let written = t - mach.hops(pos, at);
        // The group as one value (its parts were created per slice; the
        // group's line is the same for all of them).
        let v = self.new_value(slot, 0, slices.len() as u8, pos, written);
        // The per-slice values are read through the group.
        let n = self.values.len();
        for value in &mut self.values[n - 1 - slices.len()..n - 1] {
            value.read = true;
        }
        Ok(v)
    }

    /// Writes byte plane `j` of `v` to word `addr` of `slices[j]` as the
    /// value passes each slice.
    pub fn write(
        &mut self,
        mach: &Mach,
        v: Val,
        slices: &[QueueId],
        addr: u32,
    ) -> Result<(), SchedError> {
        if slices.len() != usize::from(self.width(v)) {
            return Err(self.err(format!(
                "writing a {}-register value to {} slices",
                self.width(v),
                slices.len()
            )));
        }
        for (j, &slice) in slices.iter().enumerate() {
            let part = self.part(v, j as u8, 1)?;
            let q = mach.position(slice);
            let Some(t) = self.arrival(mach, part, q) else {
                return Err(self.err(format!(
                    "{slice} (position {q}) is upstream of the value it should write"
                )));
            };
            let ins = Instruction::Write {
                addr,
                src: PLACEHOLDER,
            };
            self.op(
                mach,
                QSel::Fixed(slice),
                q,
                t,
                ins,
                &[("src", part)],
                None,
                Some(MemUse::Write { slice, addr }),
            )?;
        }
        Ok(())
    }

    /// A unit instruction at a fixed queue (`queue`'s position) or any VXM
    /// queue, issued on local cycle `t`, reading `inputs` there and writing
    /// its result `out` (operand name) into a new slot flowing `dir`.
    pub fn unit(
        &mut self,
        mach: &Mach,
        queue: QSel,
        t: Cycle,
        ins: Instruction,
        inputs: &[(&str, Val)],
        out: Option<(&str, Dir)>,
    ) -> Result<Option<Val>, SchedError> {
        let pos = match queue {
            QSel::Fixed(q) => mach.position(q),
            QSel::AnyVxm => mach.vxm,
        };
        let out = match out {
            Some((name, dir)) => {
                let width = result_width(&ins, name);
                let slot = self.slot(dir, width);
                Some((name, slot, 0, width))
            }
            None => None,
        };
        self.op(mach, queue, pos, t, ins, inputs, out, None)
    }

    /// [`Bundle::unit`] with the result into register `offset` of an
    /// existing `slot` (values that must share stream ids, such as the rows
    /// one `lw` reads on consecutive cycles).
    #[expect(
        clippy::too_many_arguments,
        reason = "one instruction's whole description"
    )]
    pub fn unit_into(
        &mut self,
        mach: &Mach,
        queue: QSel,
        t: Cycle,
        ins: Instruction,
        inputs: &[(&str, Val)],
        out: &str,
        slot: SlotId,
        offset: u8,
    ) -> Result<Val, SchedError> {
        let pos = match queue {
            QSel::Fixed(q) => mach.position(q),
            QSel::AnyVxm => mach.vxm,
        };
        let width = result_width(&ins, out);
        let v = self.op(
            mach,
            queue,
            pos,
            t,
            ins,
            inputs,
            Some((out, slot, offset, width)),
            None,
        )?;
        Ok(v.expect("result requested"))
    }

    /// `gather` on `slice` (reads index `idx`, a 2-register u16 value, at
    /// the slice) touching words `lo .. hi`, its result arriving at `at` on
    /// local cycle `t` into register `offset` of `slot`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one instruction's whole description"
    )]
    pub fn gather_into(
        &mut self,
        mach: &Mach,
        slice: QueueId,
        idx: Val,
        base: u32,
        range: (u32, u32),
        at: u32,
        t: Cycle,
        slot: SlotId,
        offset: u8,
    ) -> Result<Val, SchedError> {
        let p = mach.position(slice);
        let issue = t - mach.read_latency - mach.hops(p, at);
        let ins = Instruction::Gather {
            idx: PLACEHOLDER,
            dst: PLACEHOLDER,
            base,
        };
        let v = self.op(
            mach,
            QSel::Fixed(slice),
            p,
            issue,
            ins,
            &[("idx", idx)],
            Some(("dst", slot, offset, 1)),
            Some(MemUse::Gather {
                slice,
                lo: range.0,
                hi: range.1,
            }),
        )?;
        Ok(v.expect("gather has a result"))
    }

    /// `scatter` on `slice` of `val` (1 register) by index `idx` (2
    /// registers) at `base`, touching words `lo .. hi`; both must pass the
    /// slice on the same cycle.
    pub fn scatter(
        &mut self,
        mach: &Mach,
        slice: QueueId,
        idx: Val,
        val: Val,
        base: u32,
        range: (u32, u32),
    ) -> Result<(), SchedError> {
        let q = mach.position(slice);
        let Some(t) = self.arrival(mach, val, q) else {
            return Err(self.err(format!("{slice} is upstream of the value to scatter")));
        };
        let ins = Instruction::Scatter {
            idx: PLACEHOLDER,
            val: PLACEHOLDER,
            base,
        };
        self.op(
            mach,
            QSel::Fixed(slice),
            q,
            t,
            ins,
            &[("idx", idx), ("val", val)],
            None,
            Some(MemUse::Scatter {
                slice,
                lo: range.0,
                hi: range.1,
            }),
        )?;
        Ok(())
    }

    /// `lw` of `n` rows on MXM plane `plane` at local cycle `t`, `k` rows a
    /// cycle: `rows[c]` (a `k`-register value, all in one slot at offset 0)
    /// must pass the plane on `t + c`.
    pub fn lw(
        &mut self,
        mach: &Mach,
        plane: u16,
        t: Cycle,
        k: u32,
        n: u32,
        rows: &[Val],
    ) -> Result<(), SchedError> {
        let q = Mach::plane_queue(plane);
        let pos = mach.position(q);
        if rows.len() != n.div_ceil(k) as usize {
            return Err(self.err(format!(
                "lw of {n} rows, {k} a cycle, from {} values",
                rows.len()
            )));
        }
        let ins = Instruction::Lw {
            src: PLACEHOLDER,
            k,
            n,
        };
        let mut bind = None;
        for (c, &v) in rows.iter().enumerate() {
            let b = self.bind_input(mach, &ins, "src", v, pos, t + c as Cycle)?;
            if self.values[v.0 as usize].width as u32 != k || b.offset != 0 {
                return Err(self.err("lw rows must be whole k-register values"));
            }
            if let Some(prev) = &bind {
                let prev: &Bind = prev;
                if prev.slot != b.slot {
                    return Err(self.err("lw rows must share one slot"));
                }
            }
            bind = Some(b);
        }
        self.ops.push(Op {
            queue: QSel::Fixed(q),
            t,
            len: queue_cycles(&ins),
            ins,
            binds: bind.into_iter().collect(),
            mem: None,
        });
        Ok(())
    }

    /// The latest local cycle of any instruction.
    pub fn last(&self) -> Cycle {
        self.ops.iter().map(|o| o.t).max().unwrap_or(0)
    }

    /// The earliest local cycle of any instruction.
    pub fn first(&self) -> Cycle {
        self.ops.iter().map(|o| o.t).min().unwrap_or(0)
    }

    /// A conflict between this bundle's own instructions that no placement
    /// can resolve: two instructions of one fixed queue on overlapping
    /// cycles, or two MEM accesses of one slice on one cycle using one port
    /// or bank; `None` when there is none. Kernels that pipeline many words
    /// in one bundle check it and fall back to one bundle per word when
    /// buffers share slices.
    pub fn self_conflict(&self, mach: &Mach) -> Option<String> {
        let banks = mach.banks.max(1);
        let all_banks = ((1u32 << banks) - 1) << 2;
        let wl = mach.write_latency;
        let mut busy: HashMap<u16, Vec<(Cycle, Cycle)>> = HashMap::new();
        let mut used: HashMap<(u16, Cycle), u32> = HashMap::new();
        for op in &self.ops {
            if let QSel::Fixed(q) = op.queue {
                let end = op.t + op.len;
                let spans = busy.entry(q.index()).or_default();
                if spans.iter().any(|&(a, b)| op.t < b && a < end) {
                    return Some(format!("{q} busy twice at local cycle {}", op.t));
                }
                spans.push((op.t, end));
            }
            let Some(mem) = op.mem else { continue };
            let (slice, c, bits) = match mem {
                MemUse::Read { slice, addr } => (slice, op.t, 1 | (1 << (2 + addr % banks))),
                MemUse::Gather { slice, .. } => (slice, op.t, 1 | all_banks),
                MemUse::Write { slice, addr } => {
                    (slice, op.t + wl - 1, 2 | (1 << (2 + addr % banks)))
                }
                MemUse::Scatter { slice, .. } => (slice, op.t + wl - 1, 2 | all_banks),
            };
            let u = used.entry((slice.index(), c)).or_insert(0);
            if *u & bits != 0 {
                return Some(format!(
                    "{slice} port or bank used twice on local cycle {c}"
                ));
            }
            *u |= bits;
        }
        None
    }

    /// Every instruction's queue choice, local issue cycle and MEM access,
    /// in the order they were added: what a kernel needs to pack several
    /// independent chains into one bundle without them colliding on a
    /// fixed queue, a MEM port or bank, or the VXM's 16 queues (the
    /// scheduler itself only ever shifts a bundle as a whole).
    pub fn footprint(&self) -> Vec<(QSel, Cycle, Option<MemUse>)> {
        self.ops.iter().map(|o| (o.queue, o.t, o.mem)).collect()
    }
}

/// Registers the result operand `name` of `ins` spans.
fn result_width(ins: &Instruction, name: &str) -> u8 {
    let i = operand_index(ins, name);
    // The table's group size for the placeholder instruction.
    let probe = stream_operand_with(ins, i, PLACEHOLDER);
    probe
        .writes()
        .iter()
        .find(|g| g.first == PLACEHOLDER)
        .map(|g| g.count)
        .unwrap_or(1)
}

#[derive(Clone, Debug, Default)]
struct QueueState {
    /// Earliest cycle the next instruction may issue on an MXM queue (the
    /// plane's rules are checked in time order, so MXM work is placed in
    /// order); other queues fill any free interval.
    cursor: Cycle,
    /// Busy cycles (issue cycles and occupancy).
    busy: BusyBits,
    /// Cycle after the last instruction's issue cycles (where `halt` goes).
    end: Cycle,
    instrs: Vec<(Cycle, Instruction)>,
    label: Vec<u32>,
}

impl QueueState {
    /// Whether `[t, t + len)` is free; if not, a cycle after `t` worth
    /// trying next: the end of the busy run in the way (every start before
    /// it would meet that run).
    fn free(&self, t: Cycle, len: Cycle) -> Result<(), Cycle> {
        self.busy.free(t, len)
    }
}

/// A queue's busy cycles, a bit each (a program of a million cycles takes
/// 128 kB a queue). The scheduler asks whether an instruction's cycles are
/// free at every shift it tries a bundle at, a few million times a
/// program: a bit test, where a search of an interval map was half of a
/// LLaMA-70B stage's code generation. A busy run's end is where the next
/// try starts; runs of touching intervals merge, which skips only starts
/// that would meet one of them, so the earliest shift that fits is the same.
#[derive(Clone, Debug, Default)]
struct BusyBits {
    /// Pages of [`PAGE_WORDS`] words (64 cycles a word), allocated when a
    /// cycle in them is marked: a stage late in a long pipeline works
    /// millions of cycles after cycle 0 (a 576-chip system's last chip
    /// from cycle 3.7 M), and a flat bit set from cycle 0 cost every queue
    /// of every such stage that much zeroed memory (half of the compile).
    pages: Vec<Option<Box<[u64; PAGE_WORDS]>>>,
}

/// Words of a [`BusyBits`] page (32,768 cycles).
const PAGE_WORDS: usize = 512;

/// The MEM ports and banks booked on each (slice, cycle): bit 0 the read
/// port, bit 1 the write port, bit 2 + b bank b. A page of
/// [`PORT_PAGE`] cycles per slice, allocated when a cycle in it is booked
/// (the same values a map keyed by (slice, cycle) holds; the map's probe
/// was a quarter of `Sched::place` on a LLaMA-70B stage, a cache miss per
/// tried shift).
#[derive(Clone, Debug, Default)]
struct PortBook {
    /// Per slice (its queue index), pages of [`PORT_PAGE`] cycles.
    slices: Vec<Vec<Option<Box<[u32; PORT_PAGE]>>>>,
}

/// Cycles of a [`PortBook`] page.
const PORT_PAGE: usize = 1024;

impl PortBook {
    /// What is booked on `slice` at cycle `c` (nothing before cycle 0).
    #[inline]
    fn get(&self, slice: u16, c: Cycle) -> u32 {
        if c < 0 {
            return 0;
        }
        let c = c as usize;
        match self
            .slices
            .get(usize::from(slice))
            .and_then(|pages| pages.get(c / PORT_PAGE))
        {
            Some(Some(page)) => page[c % PORT_PAGE],
            _ => 0,
        }
    }

    /// Books `bits` on `slice` at cycle `c` (`c >= 0`: the scheduler
    /// places nothing before cycle 0).
    fn book(&mut self, slice: u16, c: Cycle, bits: u32) {
        let c = usize::try_from(c).expect("MEM bookings start at cycle 0");
        let s = usize::from(slice);
        if self.slices.len() <= s {
            self.slices.resize_with(s + 1, Vec::new);
        }
        let pages = &mut self.slices[s];
        if pages.len() <= c / PORT_PAGE {
            pages.resize(c / PORT_PAGE + 1, None);
        }
        pages[c / PORT_PAGE].get_or_insert_with(|| Box::new([0; PORT_PAGE]))[c % PORT_PAGE] |= bits;
    }
}

impl BusyBits {
    /// Word `i` (cycles `64 i ..`): zero where no page is.
    fn word(&self, i: usize) -> u64 {
        match self.pages.get(i / PAGE_WORDS) {
            Some(Some(p)) => p[i % PAGE_WORDS],
            _ => 0,
        }
    }

    /// Marks `[start, end)` busy (`start >= 0`).
    fn insert(&mut self, start: Cycle, end: Cycle) {
        let (start, end) = (start.max(0) as usize, end.max(0) as usize);
        if end <= start {
            return;
        }
        let need = end.div_ceil(64).div_ceil(PAGE_WORDS);
        if self.pages.len() < need {
            self.pages.resize(need, None);
        }
        for c in start..end {
            let w = c / 64;
            let page = self.pages[w / PAGE_WORDS].get_or_insert_with(|| Box::new([0; PAGE_WORDS]));
            page[w % PAGE_WORDS] |= 1 << (c % 64);
        }
    }

    fn busy(&self, c: usize) -> bool {
        self.word(c / 64) & (1 << (c % 64)) != 0
    }

    /// The first free cycle at or after busy cycle `c`.
    fn run_end(&self, c: usize) -> usize {
        let (mut i, bit) = (c / 64, c % 64);
        // Ones from `bit` up in the first word.
        let mut w = self.word(i) >> bit;
        let ones = w.trailing_ones() as usize;
        if ones < 64 - bit {
            return c + ones;
        }
        i += 1;
        loop {
            w = self.word(i);
            if w != u64::MAX {
                return i * 64 + w.trailing_ones() as usize;
            }
            i += 1;
        }
    }

    /// [`QueueState::free`].
    fn free(&self, t: Cycle, len: Cycle) -> Result<(), Cycle> {
        let t0 = t.max(0) as usize;
        if self.busy(t0) {
            return Err(self.run_end(t0) as Cycle);
        }
        // The first busy cycle in `(t, t + len)`.
        let end = (t + len).max(0) as usize;
        let last_page = self.pages.len() * PAGE_WORDS * 64;
        let mut c = t0 + 1;
        while c < end {
            if c >= last_page {
                return Ok(());
            }
            let (w, page) = (c / 64, c / 64 / PAGE_WORDS);
            if self.pages[page].is_none() {
                c = (page + 1) * PAGE_WORDS * 64;
                continue;
            }
            let w = self.word(w) >> (c % 64);
            if w == 0 {
                c = (c / 64 + 1) * 64;
                continue;
            }
            let at = c + w.trailing_zeros() as usize;
            return if at < end {
                Err(self.run_end(at) as Cycle)
            } else {
                Ok(())
            };
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct WordState {
    /// Reads from this cycle on see the last write.
    ready: Cycle,
    /// Last cycle a read used the word.
    last_read: Cycle,
}

#[derive(Clone, Copy, Debug)]
struct PlaneState {
    /// Vectors may issue from here on (end of the last swap).
    swap_done: Cycle,
    /// The last `mm` before the latest `iw` (reads the shadow buffer).
    shadow_reader: Option<Cycle>,
    /// The last `mm`.
    last_mm: Option<Cycle>,
    /// Cycle the last `lw` finishes loading.
    load_done: Cycle,
}

impl Default for PlaneState {
    fn default() -> PlaneState {
        PlaneState {
            swap_done: Cycle::MIN,
            shadow_reader: None,
            last_mm: None,
            load_done: Cycle::MIN,
        }
    }
}

/// The program under construction: every queue's timed instructions and
/// every resource's bookings.
#[derive(Debug)]
pub struct Sched {
    /// The machine.
    pub mach: Mach,
    queues: Vec<QueueState>,
    streams: StreamLines,
    /// (slice, cycle) -> bit 0 read port, bit 1 write port, bit 2+b bank b.
    ports: PortBook,
    words: FxHashMap<(u16, u32), WordState>,
    planes: Vec<PlaneState>,
    /// The VXM ALU queues, in the order `QSel::AnyVxm` tries them.
    vxm_queues: Vec<QueueId>,
    /// Working memory of [`Sched::try_at`], kept between attempts.
    scratch: RefCell<Scratch>,
    last_event: Cycle,
    labels: Vec<String>,
    /// First and last cycle of every placed bundle.
    spans: Vec<(Cycle, Cycle)>,
    /// Number of bundles placed.
    pub bundles: usize,
}

/// Where a bundle went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The shift applied to its local cycles.
    pub shift: Cycle,
    /// Its first and last instruction's cycle.
    pub first: Cycle,
    /// Last.
    pub last: Cycle,
}

const SEARCH: Cycle = 1 << 20;
/// Shifts past the first tried after which [`Sched::place`] asks whether
/// the bundle conflicts with itself (then no shift could fit it).
const SELF_CHECK: Cycle = 1 << 16;

struct Tentative {
    queues: Vec<QueueId>,
    ports: Vec<((u16, Cycle), u32)>,
    streams: Vec<(u32, u8)>,
}

/// FxHash (rustc's hasher: a rotate, xor and multiply a word), for the
/// scheduler's maps keyed by small integers, which it probes millions of
/// times; SipHash's protection against chosen keys buys nothing here. No
/// map's iteration order reaches the program.
#[derive(Clone, Copy, Debug, Default)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FxHashSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// The lines every stream register is taken on: one bit set per
/// (direction, register), indexed by line (a cycle; see the module doc)
/// plus [`LINE_BIAS`]. Lines below `-LINE_BIAS` (never met: a line is an
/// issue cycle, at least 0, minus a position) go to a plain set.
#[derive(Debug, Default)]
struct StreamLines {
    bits: Vec<Vec<u64>>,
    low: HashSet<(Dir, u8, Cycle)>,
}

const LINE_BIAS: Cycle = 1 << 16;

impl StreamLines {
    fn index(dir: Dir, reg: u8) -> usize {
        let d = match dir {
            Dir::East => 0,
            Dir::West => 1,
        };
        d * 256 + usize::from(reg)
    }

    fn contains(&self, (dir, reg, line): (Dir, u8, Cycle)) -> bool {
        let k = line + LINE_BIAS;
        if k < 0 {
            return self.low.contains(&(dir, reg, line));
        }
        let k = k as u64;
        self.bits
            .get(Self::index(dir, reg))
            .and_then(|v| v.get((k / 64) as usize))
            .is_some_and(|w| (w >> (k % 64)) & 1 != 0)
    }

    fn insert(&mut self, (dir, reg, line): (Dir, u8, Cycle)) {
        let k = line + LINE_BIAS;
        if k < 0 {
            self.low.insert((dir, reg, line));
            return;
        }
        let k = k as u64;
        let i = Self::index(dir, reg);
        if self.bits.len() <= i {
            self.bits.resize_with(i + 1, Vec::new);
        }
        let v = &mut self.bits[i];
        let w = (k / 64) as usize;
        if v.len() <= w {
            v.resize((w + 1).next_power_of_two(), 0);
        }
        v[w] |= 1 << (k % 64);
    }
}

/// One queue's intervals booked by the bundle under trial, in booking
/// (= issue) order. Entries before `lo` end at or before the cycle being
/// tried, so they cannot overlap it or any later one.
#[derive(Debug, Default)]
struct Booked {
    spans: Vec<(Cycle, Cycle)>,
    lo: usize,
}

impl Booked {
    fn clear(&mut self) {
        self.spans.clear();
        self.lo = 0;
    }

    /// The end of the first booked interval (in booking order) that
    /// overlaps `[t, t + len)`. Bundles are tried in issue order, so `t`
    /// never decreases between calls.
    fn overlap(&mut self, t: Cycle, len: Cycle) -> Option<Cycle> {
        while self.lo < self.spans.len() && self.spans[self.lo].1 <= t {
            self.lo += 1;
        }
        self.spans[self.lo..]
            .iter()
            .find(|&&(s, e)| s < t + len && t < e)
            .map(|&(_, e)| e)
    }
}

impl SchedError {
    /// A kernel's scratch placement error as [`SchedError::Mem`] of
    /// `label` (for `map_err`).
    pub fn mem(label: &str) -> impl FnOnce(crate::alloc::AllocError) -> SchedError + '_ {
        move |error| SchedError::Mem {
            label: label.to_string(),
            error,
        }
    }
}

/// Why a bundle did not fit at a shift ([`Sched::try_at`]; tried about a
/// million times a SmolLM2 compile, so the message is written only when
/// the search gives up).
#[derive(Clone, Copy, Debug)]
enum Conflict {
    /// The op would issue on this cycle, before the program starts.
    BeforeStart(Cycle),
    /// The queue is busy on this cycle.
    QueueBusy(QueueId, Cycle),
    /// Every VXM queue is busy on this cycle.
    VxmBusy(Cycle),
    /// An `lw` during a swap.
    LwDuringSwap,
    /// An `lw` on this cycle into the buffer an `mm` reads until the other.
    LwShadow(Cycle, Cycle),
    /// An `iw` before the load is done.
    IwBeforeLoad,
    /// An `mm` during a swap.
    MmDuringSwap,
    /// A MEM port or bank of this slice is busy on this cycle.
    Port(u16, Cycle),
    /// No run of this many free stream registers in this direction.
    Registers(u8, Dir),
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Conflict::BeforeStart(t) => write!(f, "cycle {t} is before the program starts"),
            Conflict::QueueBusy(q, t) => write!(f, "{q} busy at {t}"),
            Conflict::VxmBusy(t) => write!(f, "every VXM queue busy at {t}"),
            Conflict::LwDuringSwap => f.write_str("lw during a swap"),
            Conflict::LwShadow(t, r) => write!(f, "lw at {t} into a buffer read until {r}"),
            Conflict::IwBeforeLoad => f.write_str("iw before the load is done"),
            Conflict::MmDuringSwap => f.write_str("mm during a swap"),
            Conflict::Port(slice, c) => {
                write!(f, "MEM port or bank of slice {slice} busy at {c}")
            }
            Conflict::Registers(width, dir) => write!(f, "no {width} free {dir:?} registers"),
        }
    }
}

/// [`Sched::try_at`]'s working memory.
#[derive(Debug, Default)]
struct Scratch {
    queues: Vec<QueueId>,
    booked: Vec<Booked>,
    /// Queues with bookings to clear before the next attempt.
    touched: Vec<u16>,
    planes: Vec<Option<PlaneState>>,
    ports: FxHashMap<(u16, Cycle), u32>,
    taken: FxHashSet<(Dir, u8, Cycle)>,
}

impl Sched {
    /// An empty schedule for `mach`.
    pub fn new(mach: Mach) -> Sched {
        let planes = vec![PlaneState::default(); mach.target.mxm.planes as usize];
        let vxm_queues = (0..mach.target.vxm.alus_per_lane as u16)
            .filter_map(|i| QueueId::new(QueueKind::Vxm(i)))
            .collect();
        Sched {
            queues: vec![QueueState::default(); usize::from(q35_isa::QUEUE_COUNT)],
            streams: StreamLines::default(),
            ports: PortBook::default(),
            words: FxHashMap::default(),
            planes,
            vxm_queues,
            scratch: RefCell::new(Scratch::default()),
            last_event: 0,
            labels: Vec::new(),
            spans: Vec::new(),
            bundles: 0,
            mach,
        }
    }

    /// The cycle count of the program so far, as the simulator measures
    /// it: the last event on superlane 0 plus the superlane skew.
    pub fn total_cycles(&self) -> u64 {
        let halts = self
            .queues
            .iter()
            .filter(|q| !q.instrs.is_empty())
            .map(|q| q.end)
            .max()
            .unwrap_or(0);
        (self.last_event.max(halts) + self.mach.skew).max(0) as u64
    }

    /// The source labels of the placed bundles, by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Sorts every queue's instructions by cycle (bundles fill free
    /// intervals, so they are booked out of order).
    pub fn sort_queues(&mut self) {
        for q in &mut self.queues {
            let mut pairs: Vec<((Cycle, Instruction), u32)> =
                q.instrs.drain(..).zip(q.label.drain(..)).collect();
            pairs.sort_by_key(|((t, _), _)| *t);
            for (ti, l) in pairs {
                q.instrs.push(ti);
                q.label.push(l);
            }
        }
    }

    /// Every queue's timed instructions with the index of the bundle
    /// label each came from.
    pub fn timed(&self) -> impl Iterator<Item = (QueueId, &[(Cycle, Instruction)], &[u32])> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.instrs.is_empty())
            .map(|(i, q)| {
                (
                    QueueId::from_index(i as u16).expect("queue index"),
                    q.instrs.as_slice(),
                    q.label.as_slice(),
                )
            })
    }

    /// The earliest shift MEM dependencies allow for `b`.
    fn dependency_floor(&self, b: &Bundle) -> Cycle {
        let mut floor = Cycle::MIN;
        let wl = self.mach.write_latency;
        for op in &b.ops {
            let Some(mem) = op.mem else { continue };
            let (slice, lo, hi, write) = match mem {
                MemUse::Read { slice, addr } => (slice, addr, addr + 1, false),
                MemUse::Gather { slice, lo, hi } => (slice, lo, hi, false),
                MemUse::Write { slice, addr } => (slice, addr, addr + 1, true),
                MemUse::Scatter { slice, lo, hi } => (slice, lo, hi, true),
            };
            for a in lo..hi {
                let Some(w) = self.words.get(&(slice.index(), a)) else {
                    continue;
                };
                let need = if write {
                    // Visible after every earlier read and write.
                    (w.last_read + 1).max(w.ready) - wl
                } else {
                    w.ready
                };
                floor = floor.max(need - op.t);
            }
        }
        floor
    }

    fn port_bits(&self, mem: MemUse, t: Cycle) -> (u16, Cycle, u32) {
        let banks = self.mach.banks.max(1);
        let all_banks = ((1u32 << banks) - 1) << 2;
        match mem {
            MemUse::Read { slice, addr } => (slice.index(), t, 1 | (1 << (2 + addr % banks))),
            MemUse::Gather { slice, .. } => (slice.index(), t, 1 | all_banks),
            MemUse::Write { slice, addr } => (
                slice.index(),
                t + self.mach.write_latency - 1,
                2 | (1 << (2 + addr % banks)),
            ),
            MemUse::Scatter { slice, .. } => (
                slice.index(),
                t + self.mach.write_latency - 1,
                2 | all_banks,
            ),
        }
    }

    /// Tries `b` at `shift`; on success returns the chosen queues and
    /// stream ids, else the reason and the next shift worth trying.
    ///
    /// Allocates nothing per attempt (a bundle is tried at many shifts):
    /// the bundle's own bookings live in `self.scratch`, cleared here.
    fn try_at(
        &self,
        b: &Bundle,
        shift: Cycle,
        order: &[usize],
    ) -> Result<Tentative, (Conflict, Cycle)> {
        let mut scratch = self.scratch.borrow_mut();
        let Scratch {
            queues,
            booked,
            touched,
            planes,
            ports,
            taken,
        } = &mut *scratch;
        // Intervals booked by this bundle so far, per queue: (start, end)
        // in booking order, from `lo` on (see `Booked`).
        for &q in touched.iter() {
            booked[usize::from(q)].clear();
        }
        touched.clear();
        if booked.len() < usize::from(q35_isa::QUEUE_COUNT) {
            booked.resize_with(usize::from(q35_isa::QUEUE_COUNT), Booked::default);
        }
        planes.clear();
        planes.resize(self.planes.len(), None);
        ports.clear();
        queues.clear();
        queues.resize(b.ops.len(), QueueId::from_index(0).expect("queue 0"));
        let retry = |r: Conflict| (r, shift + 1);
        for &i in order {
            let op = &b.ops[i];
            let t = op.t + shift;
            if t < 0 {
                return Err((Conflict::BeforeStart(t), shift - t));
            }
            let len = op.len;
            // Free in the schedule and in this bundle's own bookings; on a
            // conflict, the shift at which that one would clear.
            let free = |q: QueueId, booked: &mut [Booked]| -> Result<(), Cycle> {
                let qs = &self.queues[usize::from(q.index())];
                if matches!(q.kind(), QueueKind::Mxm(_)) && t < qs.cursor {
                    return Err(qs.cursor);
                }
                qs.free(t, len)?;
                if let Some(end) = booked[usize::from(q.index())].overlap(t, len) {
                    return Err(end);
                }
                Ok(())
            };
            let q = match op.queue {
                QSel::Fixed(q) => match free(q, booked) {
                    Ok(()) => q,
                    Err(next) => {
                        return Err((Conflict::QueueBusy(q, t), shift + (next - t).max(1)));
                    }
                },
                QSel::AnyVxm => {
                    let mut earliest = Cycle::MAX;
                    let mut found = None;
                    for &q in &self.vxm_queues {
                        match free(q, booked) {
                            Ok(()) => {
                                found = Some(q);
                                break;
                            }
                            Err(next) => earliest = earliest.min(next),
                        }
                    }
                    match found {
                        Some(q) => q,
                        None => {
                            return Err((Conflict::VxmBusy(t), shift + (earliest - t).max(1)));
                        }
                    }
                }
            };
            queues[i] = q;
            let bq = &mut booked[usize::from(q.index())];
            if bq.spans.is_empty() {
                touched.push(q.index());
            }
            bq.spans.push((t, t + len));
            if let QueueKind::Mxm(p) = q.kind() {
                let st = planes[usize::from(p)].get_or_insert(self.planes[usize::from(p)]);
                match op.ins {
                    Instruction::Lw { n, k, .. } => {
                        if t < st.swap_done {
                            return Err(retry(Conflict::LwDuringSwap));
                        }
                        if let Some(r) = st.shadow_reader
                            && t < r + self.mach.reuse_delay(n)
                        {
                            return Err(retry(Conflict::LwShadow(t, r)));
                        }
                        st.load_done = t + Cycle::from(n.div_ceil(k));
                    }
                    Instruction::Iw {} => {
                        if t < st.load_done {
                            return Err(retry(Conflict::IwBeforeLoad));
                        }
                        st.shadow_reader = st.last_mm;
                        st.swap_done = t + self.mach.swap;
                    }
                    Instruction::Mm { .. } => {
                        if t < st.swap_done {
                            return Err(retry(Conflict::MmDuringSwap));
                        }
                        st.last_mm = Some(t);
                    }
                    _ => {}
                }
            }
            if let Some(mem) = op.mem {
                let (slice, c, bits) = self.port_bits(mem, t);
                let used = self.ports.get(slice, c) | ports.get(&(slice, c)).copied().unwrap_or(0);
                if used & bits != 0 {
                    return Err(retry(Conflict::Port(slice, c)));
                }
                *ports.entry((slice, c)).or_insert(0) |= bits;
            }
        }
        // Stream registers.
        taken.clear();
        let mut streams = Vec::new();
        for (si, slot) in b.slots.iter().enumerate() {
            if slot.lines.is_empty() {
                continue;
            }
            let fits = |base: u8, taken: &FxHashSet<(Dir, u8, Cycle)>| {
                (0..slot.width).all(|j| {
                    slot.lines.iter().all(|&l| {
                        let key = (slot.dir, base + j, l + shift);
                        !self.streams.contains(key) && !taken.contains(&key)
                    })
                })
            };
            let base = (0..=32 - slot.width)
                .find(|&base| fits(base, taken))
                .ok_or_else(|| retry(Conflict::Registers(slot.width, slot.dir)))?;
            for j in 0..slot.width {
                for &l in &slot.lines {
                    taken.insert((slot.dir, base + j, l + shift));
                }
            }
            streams.push((si as u32, base));
        }
        Ok(Tentative {
            queues: queues.clone(),
            ports: ports.iter().map(|(&k, &v)| (k, v)).collect(),
            streams,
        })
    }

    /// Places `b` at the earliest shift `>= not_before - b.first()` that
    /// fits (see the module doc).
    pub fn place(&mut self, b: Bundle, not_before: Cycle) -> Result<Placed, SchedError> {
        if b.ops.is_empty() {
            return Ok(Placed {
                shift: 0,
                first: not_before,
                last: not_before,
            });
        }
        let mut order: Vec<usize> = (0..b.ops.len()).collect();
        order.sort_by_key(|&i| (b.ops[i].t, i));
        // Floors: MEM dependencies, MXM queues (placed in order).
        let mut shift = (not_before - b.first()).max(-b.first());
        shift = shift.max(self.dependency_floor(&b));
        for op in &b.ops {
            if let QSel::Fixed(q) = op.queue
                && matches!(q.kind(), QueueKind::Mxm(_))
            {
                shift = shift.max(self.queues[usize::from(q.index())].cursor - op.t);
            }
        }
        let from = shift;
        let mut reason = None;
        let mut checked_self = false;
        let tentative = loop {
            // A bundle that meets itself (one queue twice on a cycle, or
            // one slice's port or bank) fits at no shift: after a long
            // search, say so instead of trying the whole window.
            if !checked_self && shift > from + SELF_CHECK {
                checked_self = true;
                if let Some(why) = b.self_conflict(&self.mach) {
                    return Err(SchedError::NoFit {
                        label: b.label.clone(),
                        from: from + b.first(),
                        to: shift + b.first(),
                        reason: format!("the bundle meets itself: {why}"),
                    });
                }
            }
            if shift > from + SEARCH {
                return Err(SchedError::NoFit {
                    label: b.label.clone(),
                    from: from + b.first(),
                    to: shift + b.first(),
                    reason: reason.map_or_else(String::new, |r: Conflict| r.to_string()),
                });
            }
            match self.try_at(&b, shift, &order) {
                Ok(t) => break t,
                Err((r, next)) => {
                    reason = Some(r);
                    shift = next.max(shift + 1);
                }
            }
        };
        self.commit(b, shift, &order, tentative)
    }

    fn commit(
        &mut self,
        b: Bundle,
        shift: Cycle,
        order: &[usize],
        tent: Tentative,
    ) -> Result<Placed, SchedError> {
        let label = self.labels.len() as u32;
        self.labels.push(b.label.clone());
        self.bundles += 1;
        let mut bases = vec![0u8; b.slots.len()];
        for &(si, base) in &tent.streams {
            bases[si as usize] = base;
            let slot = &b.slots[si as usize];
            for j in 0..slot.width {
                for &l in &slot.lines {
                    self.streams.insert((slot.dir, base + j, l + shift));
                }
            }
        }
        for ((slice, c), bits) in tent.ports {
            self.ports.book(slice, c, bits);
        }
        let wl = self.mach.write_latency;
        for &i in order {
            let op = &b.ops[i];
            let t = op.t + shift;
            let q = tent.queues[i];
            let mut ins = op.ins;
            for bind in &op.binds {
                let slot = &b.slots[bind.slot as usize];
                let s = Stream {
                    id: bases[bind.slot as usize] + bind.offset,
                    dir: slot.dir,
                };
                ins = stream_operand_with(&ins, bind.operand, s);
            }
            if let Err(e) = ins.check() {
                return Err(SchedError::Kernel {
                    label: b.label.clone(),
                    message: e.to_string(),
                });
            }
            let qs = &mut self.queues[usize::from(q.index())];
            let busy = ins.issue_cycles().max(ins.occupancy()) as Cycle;
            qs.cursor = qs.cursor.max(t + busy);
            qs.busy.insert(t, t + busy);
            qs.end = qs.end.max(t + ins.issue_cycles() as Cycle);
            qs.instrs.push((t, ins));
            qs.label.push(label);
            self.last_event = self.last_event.max(t);
            if let QueueKind::Mxm(p) = q.kind() {
                let st = &mut self.planes[usize::from(p)];
                match ins {
                    Instruction::Lw { n, k, .. } => {
                        st.load_done = t + Cycle::from(n.div_ceil(k));
                        self.last_event = self.last_event.max(st.load_done - 1);
                    }
                    Instruction::Iw {} => {
                        st.shadow_reader = st.last_mm;
                        st.swap_done = t + self.mach.swap;
                    }
                    Instruction::Mm { .. } => st.last_mm = Some(t),
                    _ => {}
                }
            }
            if let Some(mem) = op.mem {
                let (slice, lo, hi, write) = match mem {
                    MemUse::Read { slice, addr } => (slice, addr, addr + 1, false),
                    MemUse::Gather { slice, lo, hi } => (slice, lo, hi, false),
                    MemUse::Write { slice, addr } => (slice, addr, addr + 1, true),
                    MemUse::Scatter { slice, lo, hi } => (slice, lo, hi, true),
                };
                for a in lo..hi {
                    let w = self.words.entry((slice.index(), a)).or_default();
                    if write {
                        w.ready = w.ready.max(t + wl);
                    } else {
                        w.last_read = w.last_read.max(t);
                    }
                }
                if write {
                    self.last_event = self.last_event.max(t + wl - 1);
                }
            }
        }
        // Values nobody reads stay on the chip until they leave it.
        for v in &b.values {
            if v.read {
                continue;
            }
            let dir = b.slots[v.slot as usize].dir;
            let to_edge = match dir {
                Dir::East => self.mach.hops(v.pos, self.mach.edge),
                Dir::West => self.mach.hops(v.pos, 0),
            };
            self.last_event = self.last_event.max(v.written + shift + to_edge);
        }
        self.spans.push((b.first() + shift, b.last() + shift));
        Ok(Placed {
            shift,
            first: b.first() + shift,
            last: b.last() + shift,
        })
    }

    /// The first and last cycle of the bundles placed since the
    /// `first`-th (`(0, 0)` when there are none): an op's span.
    pub fn span_since(&self, first: usize) -> (Cycle, Cycle) {
        let spans = &self.spans[first.min(self.spans.len())..];
        let lo = spans.iter().map(|s| s.0).min().unwrap_or(0);
        let hi = spans.iter().map(|s| s.1).max().unwrap_or(0);
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::{BusyBits, Cycle, PAGE_WORDS};

    /// The first cycle `>= t` from which `len` cycles are free in `busy`
    /// (a plain set), or where the first busy one's run ends.
    fn reference(
        busy: &std::collections::BTreeSet<Cycle>,
        t: Cycle,
        len: Cycle,
    ) -> Result<(), Cycle> {
        let t = t.max(0);
        let Some(&first) = busy.range(t..t + len.max(1)).next() else {
            return Ok(());
        };
        let mut end = first;
        while busy.contains(&end) {
            end += 1;
        }
        Err(end)
    }

    #[test]
    fn paged_busy_bits_answer_as_a_plain_set() {
        // Runs near cycle 0, across page edges and millions of cycles on
        // (pages between them never allocated), against a plain set.
        let page = (PAGE_WORDS * 64) as Cycle;
        let runs: Vec<(Cycle, Cycle)> = vec![
            (0, 3),
            (3, 5),
            (63, 65),
            (page - 2, page + 3),
            (2 * page + 10, 2 * page + 200),
            (3_700_000, 3_700_100),
            (3_700_100, 3_700_101),
            (5 * page - 1, 5 * page),
        ];
        let mut bits = BusyBits::default();
        let mut set = std::collections::BTreeSet::new();
        for &(a, b) in &runs {
            bits.insert(a, b);
            set.extend(a..b);
        }
        assert!(
            bits.pages.iter().filter(|p| p.is_some()).count() < 10,
            "only touched pages are allocated"
        );
        let mut probes: Vec<Cycle> = runs
            .iter()
            .flat_map(|&(a, b)| [a - 1, a, b - 1, b, b + 1])
            .collect();
        probes.extend([0, 1, page, 4 * page, 3_800_000]);
        for &t in &probes {
            for len in [1, 2, 5, 64, 200, page + 7, 3 * page] {
                assert_eq!(
                    bits.free(t, len),
                    reference(&set, t, len),
                    "free({t}, {len})"
                );
            }
        }
    }
}
