//! Instruction semantics: what one issued instruction reads, computes and
//! writes, one function per unit, arithmetic exactly as docs/isa.md 3 and
//! docs/q35-format.md 8 say (IEEE f32 with no fused multiply-add: Rust's
//! `f32` operators).
//!
//! [`execute`] is the one exhaustive `match` on [`Instruction`]. It runs an
//! instruction issued on `ctx.cycle`: inputs are read from the streams at
//! the unit's position on that cycle, results are put on their streams at
//! `cycle + latency` (the stream model checks collisions), MEM writes and
//! the rows of an `lw` become [`Deferred`] events for the engine, and
//! control instructions return a [`Flow`] the engine acts on. Nothing here
//! decides when an instruction issues.
//!
//! Hot paths work on whole 320-byte vectors: an f32 operand group is
//! converted once per instruction into `[f32; 320]`, computed lane-wise
//! (vectorisable loops, no per-lane dispatch), and split back.

use q35_isa::{Acc, ElemWidth, Instruction, LatencyClass, QueueId, QueueKind, Stream};

use crate::config::MachineConfig;
use crate::hazard::HazardKind;
use crate::mxm::{self, LoadOutcome, MultiplyOutcome, Step};
use crate::replay::SlotLog;
use crate::state::{PortConflict, State};
use crate::streams::{LANES, Streams, Vector, Writer};

/// A hazard raised by an instruction, at the cycle it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The cycle.
    pub cycle: u64,
    /// What.
    pub kind: HazardKind,
}

/// What the queue does next, for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Issue the next instruction `issue_cycles` later (unit instructions).
    Next,
    /// `nop n`.
    Wait(u64),
    /// `repeat n, d, stride`.
    Repeat {
        /// Repetitions.
        n: u32,
        /// Cycles between them.
        d: u32,
        /// Words added to address fields per repetition.
        stride: i32,
    },
    /// `sync`.
    Park,
    /// `notify`.
    Notify,
    /// `halt`.
    Halt,
}

/// Work an instruction leaves for a later cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// A `write`: pool buffer `data` into word `addr` of `slice`.
    MemWrite {
        /// Dense queue number of the slice.
        slice: u16,
        /// Word.
        addr: u32,
        /// Pool buffer with the vector.
        data: u32,
    },
    /// A `scatter`: byte `l` of pool buffer `data` into lane `l` of word
    /// `base + idx[l]` (`idx`: u16 from pool buffers `lo`, `hi`).
    Scatter {
        /// Dense queue number of the slice.
        slice: u16,
        /// Base word (address offset applied).
        base: i64,
        /// Low bytes of the indices.
        lo: u32,
        /// High bytes of the indices.
        hi: u32,
        /// The bytes.
        data: u32,
    },
    /// Step `step` of an `lw`: rows `step*k .. step*k + k` (below `n`) from
    /// streams `src ..`.
    LoadRows {
        /// Plane.
        plane: u16,
        /// First stream.
        src: Stream,
        /// Rows a cycle.
        k: u32,
        /// Rows in all.
        n: u32,
        /// Which cycle of the load.
        step: u32,
    },
}

/// Vector buffers for deferred work, reused (no allocation per write).
#[derive(Debug, Default)]
pub struct Pool {
    buffers: Vec<Vector>,
    free: Vec<u32>,
}

impl Pool {
    /// A buffer holding `v`.
    pub fn put(&mut self, v: &Vector) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.buffers[i as usize] = *v;
                i
            }
            None => {
                self.buffers.push(*v);
                (self.buffers.len() - 1) as u32
            }
        }
    }
    /// The buffer's bytes.
    pub fn get(&self, i: u32) -> &Vector {
        &self.buffers[i as usize]
    }
    /// Returns the buffer.
    pub fn release(&mut self, i: u32) {
        self.free.push(i);
    }
}

/// Where an instruction's stream operands come from and where its results
/// go. [`execute`] calls `read` and `write` in an order fixed by the
/// instruction alone (never by values), which is what lets
/// [`crate::replay`] resolve them once and for all.
pub trait Operands {
    /// The slot of the value on `s` at `position` on `cycle`
    /// ([`Operands::bytes`] has its bytes).
    fn read_slot(&mut self, s: Stream, position: u32, cycle: u64) -> Result<u32, Fault>;
    /// The bytes of a slot [`Operands::read_slot`] gave.
    fn bytes(&self, slot: u32) -> &Vector;
    /// The value on `s` at `position` on `cycle`.
    fn read(&mut self, s: Stream, position: u32, cycle: u64) -> Result<&Vector, Fault> {
        let slot = self.read_slot(s, position, cycle)?;
        Ok(self.bytes(slot))
    }
    /// Whether MEM `read`s and `write`s book their port and banks. A replay
    /// skips the bookings no gather or scatter shares a (slice, cycle)
    /// with: their conflicts depend on no value, and the recording run had
    /// none.
    fn books_static(&self) -> bool {
        true
    }
    /// Puts `bytes` on `s` at `position` on `cycle`, written by instruction
    /// `index` of `queue`.
    fn write(
        &mut self,
        s: Stream,
        position: u32,
        cycle: u64,
        bytes: &Vector,
        queue: QueueId,
        index: u32,
    ) -> Result<(), Fault> {
        *self.write_mut(s, position, cycle, queue, index)? = *bytes;
        Ok(())
    }
    /// As [`Operands::write`], handing out the new value's bytes for the
    /// caller to write in place (no copy through a buffer of the caller's).
    fn write_mut(
        &mut self,
        s: Stream,
        position: u32,
        cycle: u64,
        queue: QueueId,
        index: u32,
    ) -> Result<&mut Vector, Fault>;
}

/// The engine's operands: the stream model, logging the slab slot of every
/// value read or written when `log` is set (to record a replay).
#[derive(Debug)]
pub struct Live<'a> {
    /// Values in flight.
    pub streams: &'a mut Streams,
    /// Slab slots in the order of the `read`/`write` calls, when recording.
    pub log: Option<&'a mut SlotLog>,
}

impl Operands for Live<'_> {
    fn bytes(&self, slot: u32) -> &Vector {
        self.streams.slab(slot)
    }

    fn read_slot(&mut self, s: Stream, position: u32, cycle: u64) -> Result<u32, Fault> {
        match self.streams.read_slot(s, position, cycle) {
            Some(slot) => {
                if let Some(log) = &mut self.log {
                    log.push(slot);
                }
                Ok(slot)
            }
            None => Err(Fault {
                cycle,
                kind: HazardKind::StreamReadBeforeArrival {
                    stream: s,
                    position,
                    next: self.streams.next_arrival(s, position, cycle),
                },
            }),
        }
    }

    #[inline(always)]
    fn write_mut(
        &mut self,
        s: Stream,
        position: u32,
        cycle: u64,
        queue: QueueId,
        index: u32,
    ) -> Result<&mut Vector, Fault> {
        // The stream model places the value by its slot; the caller
        // writes its bytes.
        let slot = self.streams.alloc();
        let writer = Writer {
            queue: queue.index(),
            index,
        };
        match self.streams.write(s, position, cycle, slot, writer) {
            Ok(()) => {
                if let Some(log) = &mut self.log {
                    log.push(slot);
                }
                Ok(self.streams.bytes_mut(slot))
            }
            Err(c) => Err(Fault {
                cycle: c.cycle,
                kind: HazardKind::StreamWriteCollision {
                    stream: s,
                    position: c.position,
                    other_queue: QueueId::from_index(c.other.queue).unwrap_or(queue),
                    other_index: c.other.index,
                },
            }),
        }
    }
}

/// Everything an instruction may touch. `O` is where its stream operands
/// come from: the stream model ([`Live`], the engine) or a recorded list of
/// slots ([`crate::replay`]).
#[derive(Debug)]
pub struct Ctx<'a, O: Operands> {
    /// The machine.
    pub config: &'a MachineConfig,
    /// Architectural state.
    pub state: &'a mut State,
    /// Values in flight.
    pub operands: O,
    /// Deferred-work buffers.
    pub pool: &'a mut Pool,
    /// Deferred work this instruction adds: (cycle, work).
    pub deferred: &'a mut Vec<(u64, Deferred)>,
    /// The issue cycle.
    pub cycle: u64,
    /// The issuing queue.
    pub queue: QueueId,
    /// Instruction index (for writer attribution).
    pub index: u32,
    /// Words added to address fields (`repeat` strides).
    pub addr_offset: i64,
}

impl<O: Operands> Ctx<'_, O> {
    fn position(&self) -> u32 {
        self.config.position(self.queue)
    }

    fn fault<T>(&self, cycle: u64, kind: HazardKind) -> Result<T, Fault> {
        Err(Fault { cycle, kind })
    }

    /// Reads one stream at the unit's position on the issue cycle.
    fn read(&mut self, s: Stream) -> Result<Vector, Fault> {
        let (pos, cycle) = (self.position(), self.cycle);
        self.read_at(s, pos, cycle)
    }

    fn read_at(&mut self, s: Stream, position: u32, cycle: u64) -> Result<Vector, Fault> {
        self.operands.read(s, position, cycle).copied()
    }

    /// The slots of `N` consecutive streams from `first`, read in order.
    fn slots<const N: usize>(&mut self, first: Stream) -> Result<[u32; N], Fault> {
        let (pos, cycle) = (self.position(), self.cycle);
        let mut out = [0u32; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.operands.read_slot(nth(first, i), pos, cycle)?;
        }
        Ok(out)
    }

    /// The bytes of slots from [`Ctx::slots`].
    fn group<const N: usize>(&self, slots: [u32; N]) -> [&Vector; N] {
        slots.map(|s| self.operands.bytes(s))
    }

    /// Reads `N` consecutive streams from `first`.
    fn read_group<const N: usize>(&mut self, first: Stream) -> Result<[Vector; N], Fault> {
        let mut out = [[0u8; LANES]; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.read(nth(first, i))?;
        }
        Ok(out)
    }

    /// Puts `planes` on consecutive streams from `first`, `latency` cycles
    /// after issue, at the unit's position.
    fn write_group(&mut self, first: Stream, latency: u64, planes: &[Vector]) -> Result<(), Fault> {
        self.write_planes(first, latency, planes.len(), |i, v| *v = planes[i])
    }

    /// Puts `n` values on consecutive streams from `first`, `latency`
    /// cycles after issue, at the unit's position; `fill(i, bytes)` writes
    /// value `i`'s bytes in place.
    #[inline(always)]
    fn write_planes(
        &mut self,
        first: Stream,
        latency: u64,
        n: usize,
        mut fill: impl FnMut(usize, &mut Vector),
    ) -> Result<(), Fault> {
        let cycle = self.cycle + latency;
        let position = self.position();
        for i in 0..n {
            let v =
                self.operands
                    .write_mut(nth(first, i), position, cycle, self.queue, self.index)?;
            fill(i, v);
        }
        Ok(())
    }

    /// Puts 32-bit lanes on the 4-stream group from `first` (byte `p` of
    /// lane `l` is lane `l` of stream `p`, little-endian).
    #[inline(always)]
    fn write32(&mut self, first: Stream, latency: u64, bits: &[u32; LANES]) -> Result<(), Fault> {
        self.write_planes(first, latency, 4, |p, v| plane_of(bits, p, v))
    }

    fn latency(&self, class: LatencyClass) -> u64 {
        self.config.latency(class)
    }
}

/// Stream `i` of the group from `first`.
fn nth(first: Stream, i: usize) -> Stream {
    Stream {
        id: first.id + i as u8,
        dir: first.dir,
    }
}

/// Lane `l` of a 4-stream f32 group (little-endian bytes).
#[inline(always)]
fn f32_at(g: [&Vector; 4], l: usize) -> f32 {
    f32::from_le_bytes([g[0][l], g[1][l], g[2][l], g[3][l]])
}

/// Lane-wise f32 of a 4-stream group (little-endian bytes).
#[inline(always)]
fn to_f32(g: [&Vector; 4]) -> [f32; LANES] {
    let mut out = [0f32; LANES];
    for (l, o) in out.iter_mut().enumerate() {
        *o = f32::from_le_bytes([g[0][l], g[1][l], g[2][l], g[3][l]]);
    }
    out
}

/// Lane-wise 32 bits of a 4-stream group.
#[inline(always)]
fn to_u32(g: [&Vector; 4]) -> [u32; LANES] {
    let mut out = [0u32; LANES];
    for (l, o) in out.iter_mut().enumerate() {
        *o = u32::from_le_bytes([g[0][l], g[1][l], g[2][l], g[3][l]]);
    }
    out
}

/// Lane-wise i32 of a 4-stream group.
#[inline(always)]
fn to_i32(g: [&Vector; 4]) -> [i32; LANES] {
    let mut out = [0i32; LANES];
    for (l, o) in out.iter_mut().enumerate() {
        *o = i32::from_le_bytes([g[0][l], g[1][l], g[2][l], g[3][l]]);
    }
    out
}

/// Byte plane `p` of 32-bit lanes (little-endian: plane 0 the low bytes).
#[inline(always)]
fn plane_of(bits: &[u32; LANES], p: usize, out: &mut Vector) {
    let shift = 8 * p as u32;
    for (o, &b) in out.iter_mut().zip(bits) {
        *o = (b >> shift) as u8;
    }
}

/// The bits of f32 lanes.
#[inline(always)]
fn bits_f32(v: &[f32; LANES]) -> [u32; LANES] {
    v.map(f32::to_bits)
}

/// The bits of i32 lanes.
#[inline(always)]
fn bits_i32(v: &[i32; LANES]) -> [u32; LANES] {
    v.map(|x| x as u32)
}

/// `f32toi8`: round half away from zero (`f32::round`), clamp to
/// -127..=127 (docs/q35-format.md 8.1); NaN gives 0.
#[inline(always)]
pub fn f32_to_i8(x: f32) -> i8 {
    // `as` saturates and maps NaN to 0; the clamp keeps -128 out.
    x.round().clamp(-127.0, 127.0) as i8
}

/// The control instructions, as a pattern.
macro_rules! control_ops {
    () => {
        Instruction::Nop { .. }
            | Instruction::Repeat { .. }
            | Instruction::Sync {}
            | Instruction::Notify {}
            | Instruction::Halt {}
    };
}

/// The MEM instructions, as a pattern.
macro_rules! mem_ops {
    () => {
        Instruction::Read { .. }
            | Instruction::Write { .. }
            | Instruction::Gather { .. }
            | Instruction::Scatter { .. }
    };
}

/// The VXM instructions, as a pattern.
macro_rules! vxm_ops {
    () => {
        Instruction::Fadd { .. }
            | Instruction::Fsub { .. }
            | Instruction::Fmul { .. }
            | Instruction::Fdiv { .. }
            | Instruction::Fmax { .. }
            | Instruction::Fmin { .. }
            | Instruction::Fsqrt { .. }
            | Instruction::Fexp { .. }
            | Instruction::Fneg { .. }
            | Instruction::Fabs { .. }
            | Instruction::Fconst { .. }
            | Instruction::I32tof32 { .. }
            | Instruction::F32toi8 { .. }
            | Instruction::F16tof32 { .. }
            | Instruction::I8toi32 { .. }
            | Instruction::Iadd32 { .. }
            | Instruction::Fcmplt { .. }
            | Instruction::Icmplt { .. }
            | Instruction::Select { .. }
            | Instruction::Unpack35 { .. }
    };
}

/// The SXM instructions, as a pattern.
macro_rules! sxm_ops {
    () => {
        Instruction::Shift { .. }
            | Instruction::Bcast { .. }
            | Instruction::Permute { .. }
            | Instruction::Transpose { .. }
    };
}

/// The MXM instructions, as a pattern.
macro_rules! mxm_ops {
    () => {
        Instruction::Lw { .. } | Instruction::Iw {} | Instruction::Mm { .. }
    };
}

/// The C2C instructions, as a pattern.
macro_rules! c2c_ops {
    () => {
        Instruction::Send { .. } | Instruction::Recv { .. } | Instruction::Fwd { .. }
    };
}

/// Runs one instruction issued on `ctx.cycle`.
pub fn execute<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<Flow, Fault> {
    match *ins {
        Instruction::Nop { n } => Ok(Flow::Wait(u64::from(n))),
        Instruction::Repeat { n, d, stride } => Ok(Flow::Repeat { n, d, stride }),
        Instruction::Sync {} => Ok(Flow::Park),
        Instruction::Notify {} => Ok(Flow::Notify),
        Instruction::Halt {} => Ok(Flow::Halt),
        mem_ops!() => mem(ctx, ins).map(|()| Flow::Next),
        vxm_ops!() => vxm_on(Simd::detect(), ctx, ins).map(|()| Flow::Next),
        sxm_ops!() => match Simd::detect() {
            // SAFETY: `Simd::detect` found the host runs these instructions.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { sxm_avx512(ctx, ins) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { sxm_avx2(ctx, ins) },
            #[cfg(not(target_arch = "x86_64"))]
            Simd::Avx512 | Simd::Avx2 => sxm_portable(ctx, ins),
            Simd::Portable => sxm_portable(ctx, ins),
        }
        .map(|()| Flow::Next),
        mxm_ops!() => mxm(ctx, ins).map(|()| Flow::Next),
        c2c_ops!() => link(ctx, ins).map(|()| Flow::Next),
    }
}

/// Which build of the VXM and SXM functions runs: the same Rust (IEEE f32
/// with no fused multiply-add, integer ops), so the same bits, compiled for
/// AVX-512, AVX2 or the baseline target (`tests` hold the builds equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Avx512,
    Avx2,
    Portable,
}

impl Simd {
    /// The widest build the host runs (the standard library caches the
    /// CPU's features: a load and a test per call).
    #[inline(always)]
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }
}

/// [`vxm`] in build `simd` (which the host must run: [`Simd::detect`]'s or
/// narrower).
#[inline(always)]
fn vxm_on<O: Operands>(simd: Simd, ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    match simd {
        // SAFETY: the caller passes a build the host runs.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { vxm_avx512(ctx, ins) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { vxm_avx2(ctx, ins) },
        #[cfg(not(target_arch = "x86_64"))]
        Simd::Avx512 | Simd::Avx2 => vxm_portable(ctx, ins),
        Simd::Portable => vxm_portable(ctx, ins),
    }
}

/// [`vxm`] compiled for AVX-512 (F, BW, VL), as [`vxm_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn vxm_avx512<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    vxm(ctx, ins)
}

/// [`sxm`] compiled for AVX-512, as [`vxm_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn sxm_avx512<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    sxm(ctx, ins)
}

/// [`vxm`] for a host without AVX2. This, the AVX2 builds and the other
/// units' functions are not inlined into [`execute`], whose frame stays
/// small (a frame past a page is probed page by page on every call).
#[inline(never)]
fn vxm_portable<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    vxm(ctx, ins)
}

/// [`sxm`] for a host without AVX2, as [`vxm_portable`].
#[inline(never)]
fn sxm_portable<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    sxm(ctx, ins)
}

/// [`crate::link::execute`], not inlined, as [`vxm_portable`].
#[inline(never)]
fn link<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    crate::link::execute(ctx, ins)
}

/// [`vxm`] compiled for AVX2: the same Rust, so the same IEEE f32 and
/// integer results (no fused multiply-add, no reassociation), lane loops
/// eight or more lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn vxm_avx2<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    vxm(ctx, ins)
}

/// [`sxm`] compiled for AVX2, as [`vxm_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sxm_avx2<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    sxm(ctx, ins)
}

/// Checks a MEM address against the slice.
fn address<O: Operands>(ctx: &Ctx<'_, O>, cycle: u64, addr: i64) -> Result<u32, Fault> {
    let words = ctx.config.mem.words_per_slice;
    if (0..i64::from(words)).contains(&addr) {
        Ok(addr as u32)
    } else {
        ctx.fault(
            cycle,
            HazardKind::AddressOutOfRange {
                address: addr,
                words,
            },
        )
    }
}

/// Books the slice's port and banks on `cycle`.
fn book<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    cycle: u64,
    read: bool,
    banks: u64,
) -> Result<(), Fault> {
    let slice = usize::from(ctx.queue.index());
    let m = ctx.config.mem;
    let ports = &mut ctx.state.ports[slice];
    ports.forget_before(ctx.cycle);
    ports
        .book(cycle, read, banks, m.read_ports, m.write_ports)
        .map_err(|conflict: PortConflict| Fault {
            cycle,
            kind: HazardKind::MemPortConflict { conflict },
        })
}

fn bank_bit<O: Operands>(ctx: &Ctx<'_, O>, addr: u32) -> u64 {
    let banks = ctx.config.mem.banks;
    // No division on the usual power-of-two bank count.
    let bank = if banks.is_power_of_two() {
        addr & (banks - 1)
    } else {
        addr % banks
    };
    1u64 << bank
}

/// The u16 indices of a 2-stream group.
fn indices(lo: &Vector, hi: &Vector) -> [u16; LANES] {
    let mut out = [0u16; LANES];
    for (l, o) in out.iter_mut().enumerate() {
        *o = u16::from_le_bytes([lo[l], hi[l]]);
    }
    out
}

/// MEM: `read`, `write`, `gather`, `scatter`. Not inlined into
/// [`execute`]: a gather's buffers would make every call's frame larger.
#[inline(never)]
fn mem<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    let slice = usize::from(ctx.queue.index());
    let t = ctx.cycle;
    let rl = ctx.latency(LatencyClass::MemRead);
    let wl = ctx.latency(LatencyClass::MemWrite);
    let off = ctx.addr_offset;
    match *ins {
        Instruction::Read { addr, dst } => {
            let a = address(ctx, t, i64::from(addr) + off)?;
            if ctx.operands.books_static() {
                book(ctx, t, true, bank_bit(ctx, a))?;
            }
            let position = ctx.position();
            let word = ctx.state.mem[slice].word(a);
            ctx.operands
                .write(dst, position, t + rl, word, ctx.queue, ctx.index)
        }
        Instruction::Write { addr, src } => {
            let a = address(ctx, t, i64::from(addr) + off)?;
            let slot = ctx.slots::<1>(src)?;
            if ctx.operands.books_static() {
                book(ctx, t + wl - 1, false, bank_bit(ctx, a))?;
            }
            let data = ctx.pool.put(ctx.operands.bytes(slot[0]));
            ctx.deferred.push((
                t + wl,
                Deferred::MemWrite {
                    slice: ctx.queue.index(),
                    addr: a,
                    data,
                },
            ));
            Ok(())
        }
        Instruction::Gather { idx, dst, base } => {
            let [lo, hi] = ctx.read_group::<2>(idx)?;
            let m = indices(&lo, &hi);
            let base = i64::from(base) + off;
            let mut banks = 0u64;
            let mut out = [0u8; LANES];
            for (l, &i) in m.iter().enumerate() {
                let a = address(ctx, t, base + i64::from(i))?;
                banks |= bank_bit(ctx, a);
                out[l] = ctx.state.mem[slice].word(a)[l];
            }
            book(ctx, t, true, banks)?;
            ctx.write_group(dst, rl, &[out])
        }
        Instruction::Scatter { idx, val, base } => {
            let [lo, hi] = ctx.read_group::<2>(idx)?;
            let v = ctx.read(val)?;
            let m = indices(&lo, &hi);
            let base = i64::from(base) + off;
            let mut banks = 0u64;
            for &i in &m {
                let a = address(ctx, t, base + i64::from(i))?;
                banks |= bank_bit(ctx, a);
            }
            book(ctx, t + wl - 1, false, banks)?;
            let (lo, hi, data) = (ctx.pool.put(&lo), ctx.pool.put(&hi), ctx.pool.put(&v));
            ctx.deferred.push((
                t + wl,
                Deferred::Scatter {
                    slice: ctx.queue.index(),
                    base,
                    lo,
                    hi,
                    data,
                },
            ));
            Ok(())
        }
        control_ops!() | vxm_ops!() | sxm_ops!() | mxm_ops!() | c2c_ops!() => wrong_unit(ctx, ins),
    }
}

/// Applies a deferred MEM write or scatter (addresses were checked at issue).
pub fn commit(state: &mut State, pool: &mut Pool, work: Deferred) {
    match work {
        Deferred::MemWrite { slice, addr, data } => {
            *state.mem[usize::from(slice)].word_mut(addr) = *pool.get(data);
            pool.release(data);
        }
        Deferred::Scatter {
            slice,
            base,
            lo,
            hi,
            data,
        } => {
            let m = indices(pool.get(lo), pool.get(hi));
            let v = *pool.get(data);
            let s = &mut state.mem[usize::from(slice)];
            for (l, &i) in m.iter().enumerate() {
                let a = (base + i64::from(i)) as u32;
                s.word_mut(a)[l] = v[l];
            }
            for b in [lo, hi, data] {
                pool.release(b);
            }
        }
        Deferred::LoadRows { .. } => {}
    }
}

/// Binary f32 lane-wise.
#[inline(always)]
fn f32_binary<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    a: Stream,
    b: Stream,
    dst: Stream,
    class: LatencyClass,
    op: impl Fn(f32, f32) -> f32,
) -> Result<(), Fault> {
    let xs = ctx.slots::<4>(a)?;
    let ys = ctx.slots::<4>(b)?;
    // Lane by lane from the byte planes: no lane arrays of the inputs.
    let (x, y) = (ctx.group(xs), ctx.group(ys));
    let mut z = [0u32; LANES];
    for (l, z) in z.iter_mut().enumerate() {
        *z = op(f32_at(x, l), f32_at(y, l)).to_bits();
    }
    let lat = ctx.latency(class);
    ctx.write32(dst, lat, &z)
}

/// Unary f32 lane-wise.
#[inline(always)]
fn f32_unary<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    a: Stream,
    dst: Stream,
    class: LatencyClass,
    op: impl Fn(f32) -> f32,
) -> Result<(), Fault> {
    let xs = ctx.slots::<4>(a)?;
    let x = ctx.group(xs);
    let mut z = [0u32; LANES];
    for (l, z) in z.iter_mut().enumerate() {
        *z = op(f32_at(x, l)).to_bits();
    }
    let lat = ctx.latency(class);
    ctx.write32(dst, lat, &z)
}

/// A u8 mask from two 4-stream groups.
#[inline(always)]
fn compare<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    a: Stream,
    b: Stream,
    dst: Stream,
    lt: impl Fn([&Vector; 4], [&Vector; 4]) -> [bool; LANES],
) -> Result<(), Fault> {
    let xs = ctx.slots::<4>(a)?;
    let ys = ctx.slots::<4>(b)?;
    let m = lt(ctx.group(xs), ctx.group(ys));
    let lat = ctx.latency(LatencyClass::VxmAlu);
    ctx.write_planes(dst, lat, 1, |_, out| {
        for l in 0..LANES {
            out[l] = u8::from(m[l]);
        }
    })
}

/// VXM: point-wise arithmetic, conversions, `unpack35`.
#[inline(always)]
fn vxm<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    use LatencyClass::{VxmAlu, VxmConvert, VxmSpecial};
    match *ins {
        Instruction::Fadd { a, b, dst } => f32_binary(ctx, a, b, dst, VxmAlu, |x, y| x + y),
        Instruction::Fsub { a, b, dst } => f32_binary(ctx, a, b, dst, VxmAlu, |x, y| x - y),
        Instruction::Fmul { a, b, dst } => f32_binary(ctx, a, b, dst, VxmAlu, |x, y| x * y),
        Instruction::Fdiv { a, b, dst } => f32_binary(ctx, a, b, dst, VxmSpecial, |x, y| x / y),
        Instruction::Fmax { a, b, dst } => f32_binary(ctx, a, b, dst, VxmAlu, f32::max),
        Instruction::Fmin { a, b, dst } => f32_binary(ctx, a, b, dst, VxmAlu, f32::min),
        Instruction::Fsqrt { a, dst } => f32_unary(ctx, a, dst, VxmSpecial, f32::sqrt),
        Instruction::Fexp { a, dst } => f32_unary(ctx, a, dst, VxmSpecial, crate::contract::exp),
        Instruction::Fneg { a, dst } => f32_unary(ctx, a, dst, VxmAlu, |x| -x),
        Instruction::Fabs { a, dst } => f32_unary(ctx, a, dst, VxmAlu, f32::abs),
        Instruction::Fconst { imm, dst } => {
            let z = [imm.value(); LANES];
            let lat = ctx.latency(VxmAlu);
            ctx.write32(dst, lat, &bits_f32(&z))
        }
        Instruction::I32tof32 { a, dst } => {
            let xs = ctx.slots::<4>(a)?;
            let x = to_i32(ctx.group(xs));
            let mut z = [0f32; LANES];
            for l in 0..LANES {
                // Round to nearest even.
                z[l] = x[l] as f32;
            }
            let lat = ctx.latency(VxmConvert);
            ctx.write32(dst, lat, &bits_f32(&z))
        }
        Instruction::F32toi8 { a, dst } => {
            let xs = ctx.slots::<4>(a)?;
            let x = to_f32(ctx.group(xs));
            let lat = ctx.latency(VxmConvert);
            ctx.write_planes(dst, lat, 1, |_, out| {
                for l in 0..LANES {
                    out[l] = f32_to_i8(x[l]) as u8;
                }
            })
        }
        Instruction::F16tof32 { a, dst } => {
            let [lo, hi] = ctx.read_group::<2>(a)?;
            let mut z = [0f32; LANES];
            for l in 0..LANES {
                z[l] = half::f16::from_bits(u16::from_le_bytes([lo[l], hi[l]])).to_f32();
            }
            let lat = ctx.latency(VxmConvert);
            ctx.write32(dst, lat, &bits_f32(&z))
        }
        Instruction::I8toi32 { a, dst } => {
            let x = ctx.read(a)?;
            let mut z = [0i32; LANES];
            for l in 0..LANES {
                z[l] = i32::from(x[l] as i8);
            }
            let lat = ctx.latency(VxmConvert);
            ctx.write32(dst, lat, &bits_i32(&z))
        }
        Instruction::Iadd32 { a, b, dst } => {
            let xs = ctx.slots::<4>(a)?;
            let ys = ctx.slots::<4>(b)?;
            let (x, y) = (to_i32(ctx.group(xs)), to_i32(ctx.group(ys)));
            let mut z = [0i32; LANES];
            for l in 0..LANES {
                z[l] = x[l].wrapping_add(y[l]);
            }
            let lat = ctx.latency(VxmAlu);
            ctx.write32(dst, lat, &bits_i32(&z))
        }
        Instruction::Fcmplt { a, b, dst } => compare(ctx, a, b, dst, |x, y| {
            let (x, y) = (to_f32(x), to_f32(y));
            std::array::from_fn(|l| x[l] < y[l])
        }),
        Instruction::Icmplt { a, b, dst } => compare(ctx, a, b, dst, |x, y| {
            let (x, y) = (to_i32(x), to_i32(y));
            std::array::from_fn(|l| x[l] < y[l])
        }),
        Instruction::Select { m, a, b, dst } => {
            let ms = ctx.slots::<1>(m)?;
            let xs = ctx.slots::<4>(a)?;
            let ys = ctx.slots::<4>(b)?;
            let ([mask], x, y) = (ctx.group(ms), ctx.group(xs), ctx.group(ys));
            let (x, y) = (to_u32(x), to_u32(y));
            let mut z = [0u32; LANES];
            for l in 0..LANES {
                z[l] = if mask[l] != 0 { x[l] } else { y[l] };
            }
            let lat = ctx.latency(VxmAlu);
            ctx.write32(dst, lat, &z)
        }
        Instruction::Unpack35 { src, dst, m4, m3 } => {
            let cs = ctx.slots::<7>(src)?;
            let g = ctx.group(cs);
            let codes: [Vector; 8] = std::array::from_fn(|b| g.get(b).map_or([0; LANES], |v| **v));
            let lat = ctx.latency(VxmConvert);
            ctx.write_planes(dst, lat, 16, |i, out| {
                unpack35_plane(&codes, m4 as i16, m3 as i16, i, out)
            })
        }
        control_ops!() | mem_ops!() | sxm_ops!() | mxm_ops!() | c2c_ops!() => wrong_unit(ctx, ins),
    }
}

/// `unpack35`'s 16 int8 rows from 7 code planes: pair `k` of lane `l` is
/// bits `7k .. 7k+7` of the lane's 56-bit little-endian word, split by
/// `split_pair` into a 4-bit and a 3-bit two's complement code, times
/// `m4` and `m3` (`|m * c| <= 128` by the field ranges; -128 is a valid
/// weight). Written lane-parallel per pair (two bytes, a shift, sign
/// extensions by xor-subtract), which vectorises; `tests` hold it equal to
/// `split_pair` on every code.
/// Row `i` of them is [`unpack35_plane`]; `codes[7]` is zero (the
/// word's bits past 56).
#[cfg(test)]
fn unpack35(codes: [&Vector; 7], m4: i16, m3: i16) -> [Vector; 16] {
    let codes: [Vector; 8] = std::array::from_fn(|b| codes.get(b).map_or([0; LANES], |v| **v));
    let mut out = [[0u8; LANES]; 16];
    for (i, o) in out.iter_mut().enumerate() {
        unpack35_plane(&codes, m4, m3, i, o);
    }
    out
}

/// Row `i` of `unpack35` (pair `i / 2`: its 4-bit code for even `i`, its
/// 3-bit code for odd) from the 7 code planes and a zero eighth.
#[inline(always)]
fn unpack35_plane(codes: &[Vector; 8], m4: i16, m3: i16, i: usize, out: &mut Vector) {
    let k = i / 2;
    let (b, r) = (7 * k / 8, 7 * k % 8);
    let (lo, hi) = (&codes[b], &codes[b + 1]);
    if i.is_multiple_of(2) {
        for l in 0..LANES {
            let code = ((u16::from(lo[l]) | (u16::from(hi[l]) << 8)) >> r) & 0x7f;
            let c4 = ((code & 0x0f) as i16 ^ 8) - 8;
            out[l] = (m4 * c4) as i8 as u8;
        }
    } else {
        for l in 0..LANES {
            let code = ((u16::from(lo[l]) | (u16::from(hi[l]) << 8)) >> r) & 0x7f;
            let c3 = (((code >> 4) & 0x07) as i16 ^ 4) - 4;
            out[l] = (m3 * c3) as i8 as u8;
        }
    }
}

/// Reads the `ew`-stream group of an SXM operand.
#[inline(always)]
fn read_ew<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    src: Stream,
    ew: ElemWidth,
) -> Result<([Vector; 4], usize), Fault> {
    let n = ew.bytes() as usize;
    let mut g = [[0u8; LANES]; 4];
    for (i, plane) in g.iter_mut().enumerate().take(n) {
        *plane = ctx.read(nth(src, i))?;
    }
    Ok((g, n))
}

/// Applies a lane map to every byte plane of a group: lane `l` of the
/// result is lane `map(l)` of the input, or 0 for `None`.
#[inline(always)]
fn lane_map<O: Operands>(
    ctx: &mut Ctx<'_, O>,
    src: Stream,
    dst: Stream,
    ew: ElemWidth,
    class: LatencyClass,
    map: &LaneMap,
) -> Result<(), Fault> {
    let (g, n) = read_ew(ctx, src, ew)?;
    let cycle = ctx.cycle + ctx.latency(class);
    let position = ctx.position();
    // A loop, not a closure: `apply` inlines into the SIMD build.
    for (p, plane) in g.iter().enumerate().take(n) {
        let out = ctx
            .operands
            .write_mut(nth(dst, p), position, cycle, ctx.queue, ctx.index)?;
        map.apply(plane, out);
    }
    Ok(())
}

/// An SXM lane map: lane `l` of the result is lane `from(l)` of the
/// input, or 0. A `permute` table's is made once, when the table is
/// loaded ([`PermuteTable`]).
#[derive(Clone)]
enum LaneMap {
    /// `from(l) = l + n` for `l < len`.
    Shift { n: usize, len: usize },
    /// `from(l) = from`.
    Bcast(usize),
    /// A table of a few runs (copied or filled; [`Runs`]).
    Runs(Box<[Run]>),
    /// A table by lane: `from(l) = lanes[l]`, 0 for `LANES` (which
    /// [`LaneMap::apply`] reads as a zero lane past the input).
    Gather(Box<[u16; LANES]>),
}

impl LaneMap {
    /// A `permute` table's map (`lanes[l]` not below `LANES` gives 0).
    #[inline(always)]
    fn table(lanes: &[u16; LANES]) -> LaneMap {
        let runs = Runs::of(lanes);
        if runs.count <= MAX_RUNS {
            LaneMap::Runs(runs.runs[..runs.count].into())
        } else {
            LaneMap::Gather(Box::new(lanes.map(|f| f.min(LANES as u16))))
        }
    }

    #[inline(always)]
    fn apply(&self, plane: &Vector, out: &mut Vector) {
        match self {
            LaneMap::Shift { n, len } => {
                out[..*len].copy_from_slice(&plane[*n..*n + *len]);
                out[*len..].fill(0);
            }
            LaneMap::Bcast(from) => out.fill(plane[*from]),
            LaneMap::Runs(runs) => Runs::apply(runs, plane, out),
            LaneMap::Gather(lanes) => {
                let mut ext = [0u8; LANES + 1];
                ext[..LANES].copy_from_slice(plane);
                for (o, &f) in out.iter_mut().zip(lanes.iter()) {
                    *o = ext[usize::from(f)];
                }
            }
        }
    }
}

/// Runs up to which a `permute` table is applied run by run rather than
/// lane by lane (a run is one copy or fill; a lane, one byte load and store).
const MAX_RUNS: usize = 16;

/// A `permute` table as runs of lanes: `(first lane, first source lane,
/// lanes, fill)`, a source of `u16::MAX` for lanes that get 0; a run copies
/// consecutive source lanes, or with `fill` repeats one source lane.
/// Rotations and the attention's pack tables are a few copied runs; the
/// attention output's spread of one value per kv head's lanes, a few
/// filled ones.
struct Runs {
    runs: [Run; LANES],
    count: usize,
}

/// One of [`Runs`]: `(first lane, first source lane, lanes, fill)`.
type Run = (u16, u16, u16, bool);

impl Runs {
    /// The runs of `lanes` (lane `l` from lane `lanes[l]`, 0 when that is
    /// not below `LANES`).
    #[inline(always)]
    fn of(lanes: &[u16; LANES]) -> Runs {
        let mut runs = Runs {
            runs: [(0, 0, 0, false); LANES],
            count: 0,
        };
        let mut l = 0;
        while l < LANES {
            let (start, from) = (l, lanes[l]);
            l += 1;
            if usize::from(from) >= LANES {
                while l < LANES && usize::from(lanes[l]) >= LANES {
                    l += 1;
                }
                runs.runs[runs.count] = (start as u16, u16::MAX, (l - start) as u16, false);
            } else if l < LANES && lanes[l] == from {
                while l < LANES && lanes[l] == from {
                    l += 1;
                }
                runs.runs[runs.count] = (start as u16, from, (l - start) as u16, true);
            } else {
                while l < LANES
                    && usize::from(lanes[l]) < LANES
                    && usize::from(lanes[l]) == usize::from(from) + (l - start)
                {
                    l += 1;
                }
                runs.runs[runs.count] = (start as u16, from, (l - start) as u16, false);
            }
            runs.count += 1;
        }
        runs
    }

    /// `out[l] = plane[lanes[l]]` (0 past the end), run by run.
    #[inline(always)]
    fn apply(runs: &[Run], plane: &Vector, out: &mut Vector) {
        for &(at, from, len, fill) in runs {
            let (at, len) = (usize::from(at), usize::from(len));
            if from == u16::MAX {
                out[at..at + len].fill(0);
            } else if fill {
                out[at..at + len].fill(plane[usize::from(from)]);
            } else {
                let from = usize::from(from);
                out[at..at + len].copy_from_slice(&plane[from..from + len]);
            }
        }
    }
}

/// A `permute` table: its values and the lane map made from them once,
/// when the table is loaded (a run of a compiled model permutes with the
/// same few tables hundreds of thousands of times).
#[derive(Clone)]
pub struct PermuteTable {
    values: Vec<u16>,
    map: LaneMap,
}

impl PermuteTable {
    /// The table of `values` (lane `l` from lane `values[l]`; lanes past
    /// its end, and entries not below `LANES`, give 0).
    pub fn new(values: Vec<u16>) -> PermuteTable {
        let mut lanes = [u16::MAX; LANES];
        for (o, &v) in lanes.iter_mut().zip(&values) {
            *o = v;
        }
        PermuteTable {
            map: LaneMap::table(&lanes),
            values,
        }
    }

    /// The table's values.
    pub fn values(&self) -> &[u16] {
        &self.values
    }
}

impl std::fmt::Debug for PermuteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PermuteTable").field(&self.values).finish()
    }
}

/// A table with no entries: every lane 0 (a `permute` of a table the
/// program does not have).
static NO_TABLE: std::sync::LazyLock<PermuteTable> =
    std::sync::LazyLock::new(|| PermuteTable::new(Vec::new()));

/// SXM: `shift`, `bcast`, `permute`, `transpose`.
#[inline(always)]
fn sxm<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    match *ins {
        Instruction::Shift { src, dst, n, w, ew } => {
            // Lane `l` from lane `l + n` while `l + n < w` (`w <= LANES`
            // by the field's range), then 0.
            let n = (n as usize).min(LANES);
            let len = (w as usize).min(LANES).saturating_sub(n);
            let map = LaneMap::Shift { n, len };
            lane_map(ctx, src, dst, ew, LatencyClass::SxmShift, &map)
        }
        Instruction::Bcast { src, dst, l, ew } => {
            let from = (l as usize).min(LANES - 1);
            let map = LaneMap::Bcast(from);
            lane_map(ctx, src, dst, ew, LatencyClass::SxmPermute, &map)
        }
        Instruction::Permute { src, dst, map, ew } => {
            // The map is the table's, made when it was loaded. The tables
            // are moved out of the state (a pointer swap) while the planes
            // are read and written, and put back whatever happens.
            let tables = std::mem::take(&mut ctx.state.tables);
            let lanes = tables.get(usize::from(map.0)).unwrap_or(&NO_TABLE);
            let done = lane_map(ctx, src, dst, ew, LatencyClass::SxmPermute, &lanes.map);
            ctx.state.tables = tables;
            done
        }
        Instruction::Transpose { src, dst } => {
            let g = ctx.read_group::<16>(src)?;
            let lat = ctx.latency(LatencyClass::SxmTranspose);
            ctx.write_planes(dst, lat, 16, |i, plane| {
                for sl in 0..LANES / 16 {
                    for j in 0..16 {
                        plane[sl * 16 + j] = g[j][sl * 16 + i];
                    }
                }
            })
        }
        control_ops!() | mem_ops!() | vxm_ops!() | mxm_ops!() | c2c_ops!() => wrong_unit(ctx, ins),
    }
}

/// Maps a plane model hazard issued on `cycle` to the docs/isa.md kinds.
fn plane_hazard(kind: mxm::HazardKind, cycle: u64) -> HazardKind {
    match kind {
        mxm::HazardKind::AccumulatorOverflow { .. } => {
            HazardKind::AccumulatorOverflow { detail: kind }
        }
        // A second vector into the array in one cycle: the unit is busy.
        // (One queue issues at most one `mm` a cycle, so lpu-v1 programs
        // cannot reach it.)
        mxm::HazardKind::MultiplyPortBusy => HazardKind::UnitBusy { until: cycle + 1 },
        mxm::HazardKind::LoadIntoBufferInUse
        | mxm::HazardKind::SwapBeforeLoadDone
        | mxm::HazardKind::SwapWithoutLoad
        | mxm::HazardKind::LoadWhileLoading
        | mxm::HazardKind::LoadDuringSwap
        | mxm::HazardKind::MultiplyDuringSwap => HazardKind::WeightBufferInUse { detail: kind },
    }
}

fn plane_index<O: Operands>(ctx: &Ctx<'_, O>) -> usize {
    match ctx.queue.kind() {
        QueueKind::Mxm(p) => usize::from(p),
        // The loader puts MXM instructions in MXM queues only.
        QueueKind::Mem { .. } | QueueKind::Vxm(_) | QueueKind::Sxm(_) | QueueKind::C2c(_) => 0,
    }
}

/// A plane model error is a simulator bug (commands are issued in cycle
/// order with checked shapes); reported as a hazard of the instruction
/// rather than a panic.
fn model_error<O: Operands>(ctx: &Ctx<'_, O>, e: &mxm::MxmError) -> Fault {
    Fault {
        cycle: ctx.cycle,
        kind: HazardKind::Internal {
            message: e.to_string(),
        },
    }
}

/// MXM: `lw`, `iw`, `mm` (not inlined, as [`mem`]).
#[inline(never)]
fn mxm<O: Operands>(ctx: &mut Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    let p = plane_index(ctx);
    let t = ctx.cycle;
    let index = ctx.index as usize;
    match *ins {
        Instruction::Lw { src, k, n } => {
            let step = ctx.state.planes[p]
                .model
                .begin_load(index, t, n as usize)
                .map_err(|e| model_error(ctx, &e))?;
            match step {
                LoadOutcome::Hazard(kind) => return ctx.fault(t, plane_hazard(kind, t)),
                // A row written while a vector issued before the last swap
                // still reads the old weights there (docs/mxm-timing.md).
                LoadOutcome::Issued {
                    in_use: Some((cycle, kind)),
                } => return ctx.fault(cycle, plane_hazard(kind, cycle)),
                LoadOutcome::Issued { in_use: None } => {}
            }
            ctx.state.planes[p].load_rows = n as usize;
            for step in 0..n.div_ceil(k) {
                ctx.deferred.push((
                    t + u64::from(step),
                    Deferred::LoadRows {
                        plane: p as u16,
                        src,
                        k,
                        n,
                        step,
                    },
                ));
            }
            Ok(())
        }
        Instruction::Iw {} => {
            let step = ctx.state.planes[p]
                .model
                .swap(index, t)
                .map_err(|e| model_error(ctx, &e))?;
            match step {
                Step::Done => Ok(()),
                Step::Hazard(kind) => ctx.fault(t, plane_hazard(kind, t)),
            }
        }
        Instruction::Mm { src, dst, acc } => {
            let x = ctx.read(src)?;
            let x: [i8; LANES] = x.map(|b| b as i8);
            let mut out = [0i32; LANES];
            let outcome = ctx.state.planes[p]
                .model
                .multiply(index, t, &x, acc == Acc::Add, &mut out)
                .map_err(|e| model_error(ctx, &e))?;
            match outcome {
                MultiplyOutcome::Hazard(kind) => ctx.fault(t, plane_hazard(kind, t)),
                MultiplyOutcome::Issued {
                    overflow: Some((cycle, kind)),
                    ..
                } => ctx.fault(cycle, plane_hazard(kind, cycle)),
                MultiplyOutcome::Issued {
                    emit,
                    overflow: None,
                } => ctx.write32(dst, emit - t, &bits_i32(&out)),
            }
        }
        control_ops!() | mem_ops!() | vxm_ops!() | sxm_ops!() | c2c_ops!() => wrong_unit(ctx, ins),
    }
}

/// Step `step` of an `lw` on `cycle`: its rows from their streams into the
/// plane's shadow weights; after the last step, the rest of them zeroed.
pub fn load_rows<O: Operands>(ctx: &mut Ctx<'_, O>, work: Deferred) -> Result<(), Fault> {
    let Deferred::LoadRows {
        plane,
        src,
        k,
        n,
        step,
    } = work
    else {
        return Ok(());
    };
    let p = usize::from(plane);
    let (pos, cycle) = (ctx.position(), ctx.cycle);
    for j in 0..k {
        let row = step * k + j;
        if row >= n {
            break;
        }
        let v = ctx.operands.read(nth(src, j as usize), pos, cycle)?;
        // Rows go straight into the shadow buffer, which nothing reads
        // before the load ends (`FastPlane::shadow_row_mut`).
        let shadow = ctx.state.planes[p].model.shadow_row_mut(row as usize);
        for (w, &b) in shadow.iter_mut().zip(v) {
            *w = b as i8;
        }
    }
    if (step + 1) * k >= n {
        let plane = &mut ctx.state.planes[p];
        let rows = plane.load_rows;
        plane.model.finish_load(rows);
    }
    Ok(())
}

/// [`execute`] sends each instruction to its unit's function, so a unit
/// function never sees another unit's instruction; should it, that is a
/// simulator bug, reported rather than panicking.
pub(crate) fn wrong_unit<O: Operands>(ctx: &Ctx<'_, O>, ins: &Instruction) -> Result<(), Fault> {
    ctx.fault(
        ctx.cycle,
        HazardKind::Internal {
            message: format!("`{ins}` dispatched to the wrong unit"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::split_pair;
    use q35_isa::TableId;

    /// Operands for one instruction: reads hand out slots `0, 1, 2, ..`
    /// of `slab` in order, writes are kept.
    struct Fixed {
        slab: Vec<Vector>,
        next: u32,
        out: Vec<Vector>,
    }

    impl Operands for Fixed {
        fn read_slot(&mut self, _s: Stream, _position: u32, _cycle: u64) -> Result<u32, Fault> {
            self.next += 1;
            Ok((self.next - 1) % self.slab.len() as u32)
        }

        fn bytes(&self, slot: u32) -> &Vector {
            &self.slab[slot as usize]
        }

        fn write_mut(
            &mut self,
            _s: Stream,
            _position: u32,
            _cycle: u64,
            _queue: QueueId,
            _index: u32,
        ) -> Result<&mut Vector, Fault> {
            self.out.push([0x55; LANES]);
            Ok(self.out.last_mut().expect("just pushed"))
        }
    }

    /// f32 bit patterns where builds could differ: signed zeros,
    /// infinities, NaNs with payloads and signs, subnormals, the extremes,
    /// halves (rounding), values that overflow or round in products.
    const SPECIAL: [u32; 20] = [
        0x0000_0000,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0001,
        0x7f80_0001,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x3f80_0000,
        0xbfc0_0000,
        0x3f00_0000,
        0x4020_0000,
        0xc2fe_0000,
        0x42fe_0001,
        0x4b00_0001,
        0x3eaa_aaab,
    ];

    /// 16 input planes: planes 0..4 lane `l` = `SPECIAL[l % 20]`, planes
    /// 4..8 `SPECIAL[l / 20 % 20]` (every pair meets), the rest pseudo-random.
    fn planes() -> Vec<Vector> {
        let mut slab = vec![[0u8; LANES]; 16];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for l in 0..LANES {
            let (a, b) = (SPECIAL[l % 20], SPECIAL[l / 20 % 20]);
            for p in 0..4 {
                slab[p][l] = (a >> (8 * p)) as u8;
                slab[4 + p][l] = (b >> (8 * p)) as u8;
            }
            for plane in &mut slab[8..] {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                plane[l] = (x >> 56) as u8;
            }
        }
        slab
    }

    /// What `ins` writes when run on `simd`'s build over [`planes`].
    fn outputs(simd: Simd, ins: &Instruction) -> Vec<Vector> {
        let config = crate::config::load_target(None).expect("lpu-v1");
        let mut state = State {
            mem: Vec::new(),
            ports: Vec::new(),
            planes: Vec::new(),
            tables: vec![PermuteTable::new((0..LANES as u16).rev().collect())],
            links: crate::link::Links::default(),
        };
        let (mut pool, mut deferred) = (Pool::default(), Vec::new());
        let mut ctx = Ctx {
            config: &config,
            state: &mut state,
            operands: Fixed {
                slab: planes(),
                next: 0,
                out: Vec::new(),
            },
            pool: &mut pool,
            deferred: &mut deferred,
            cycle: 10,
            queue: "vxm.0".parse().expect("a queue"),
            index: 0,
            addr_offset: 0,
        };
        match ins.info().unit {
            q35_isa::Unit::Sxm => match simd {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the test runs a build only when the host has it.
                Simd::Avx512 => unsafe { sxm_avx512(&mut ctx, ins) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Simd::Avx2 => unsafe { sxm_avx2(&mut ctx, ins) },
                #[cfg(not(target_arch = "x86_64"))]
                Simd::Avx512 | Simd::Avx2 => sxm_portable(&mut ctx, ins),
                Simd::Portable => sxm_portable(&mut ctx, ins),
            },
            _ => vxm_on(simd, &mut ctx, ins),
        }
        .expect("runs");
        ctx.operands.out
    }

    #[test]
    fn lane_maps_are_the_isa_formulas() {
        let plane: Vector = std::array::from_fn(|l| (l * 7 + 3) as u8);
        // Permute: lane l from lane table[l], 0 for an entry past the
        // lanes or past the table's end.
        let mut tables: Vec<Vec<u16>> = vec![
            (0..LANES as u16).map(|l| (l + 37) % LANES as u16).collect(),
            (0..LANES as u16).rev().collect(),
            vec![318, 319, 320, 321, 0, 1, 2, u16::MAX, 5, 5, 5],
            (0..LANES as u16)
                .map(|l| {
                    if l % 64 < 40 {
                        l / 64 * 40 + l % 64
                    } else {
                        999
                    }
                })
                .collect(),
            Vec::new(),
        ];
        tables.push((0..LANES as u16).map(|l| (l * 13) % 331).collect());
        // One source lane per 64 lanes (the attention output's spread),
        // then lanes 3, 3, 4, 5 (a fill run meeting a copy run), and fills
        // of lanes past the end (0).
        tables.push((0..LANES as u16).map(|l| l / 64 * 7 + 2).collect());
        tables.push(vec![3, 3, 4, 5, 9, 9, 400, 400, 0]);
        for t in &tables {
            let mut lanes = [u16::MAX; LANES];
            for (o, &v) in lanes.iter_mut().zip(t) {
                *o = v;
            }
            let gather = LaneMap::Gather(Box::new(lanes.map(|f| f.min(LANES as u16))));
            for map in [
                {
                    let runs = Runs::of(&lanes);
                    LaneMap::Runs(runs.runs[..runs.count].into())
                },
                gather,
                LaneMap::table(&lanes),
            ] {
                let mut out = [0xaau8; LANES];
                map.apply(&plane, &mut out);
                for (l, &got) in out.iter().enumerate() {
                    let want = t
                        .get(l)
                        .map_or(0, |&f| plane.get(usize::from(f)).copied().unwrap_or(0));
                    assert_eq!(got, want, "table {t:?} lane {l}");
                }
            }
        }
        // Shift and bcast through the SXM, every width.
        for (text, want) in [
            (
                "shift s8.e -> s1.w, 7, 300, 1",
                (0..LANES)
                    .map(|l| if l + 7 < 300 { Some(l + 7) } else { None })
                    .collect::<Vec<_>>(),
            ),
            (
                "shift s8.e -> s1.w, 0, 320, 2",
                (0..LANES).map(Some).collect(),
            ),
            ("shift s8.e -> s1.w, 320, 320, 4", vec![None; LANES]),
            ("shift s8.e -> s1.w, 300, 10, 4", vec![None; LANES]),
            ("bcast s8.e -> s1.w, 319, 4", vec![Some(319); LANES]),
        ] {
            let ins: Instruction = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let slab = planes();
            let got = outputs(Simd::detect(), &ins);
            for (p, out) in got.iter().enumerate() {
                for l in 0..LANES {
                    let w = want[l].map_or(0, |f| slab[p][f]);
                    assert_eq!(out[l], w, "{text}: plane {p} lane {l}");
                }
            }
        }
    }

    #[test]
    fn every_simd_build_gives_the_same_bits() {
        let mut builds = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                builds.push(Simd::Avx2);
            }
            if Simd::detect() == Simd::Avx512 {
                builds.push(Simd::Avx512);
            }
        }
        let program = [
            "fadd s0.e, s4.e -> s16.e",
            "fsub s0.e, s4.e -> s16.e",
            "fmul s0.e, s4.e -> s16.e",
            "fdiv s0.e, s4.e -> s16.e",
            "fmax s0.e, s4.e -> s16.e",
            "fmin s0.e, s4.e -> s16.e",
            "fsqrt s0.e -> s16.e",
            "fexp s0.e -> s16.e",
            "fneg s0.e -> s16.e",
            "fabs s0.e -> s16.e",
            "fconst 2.5 -> s16.e",
            "i32tof32 s0.e -> s16.e",
            "f32toi8 s0.e -> s16.e",
            "f16tof32 s0.e -> s16.e",
            "i8toi32 s0.e -> s16.e",
            "iadd32 s0.e, s4.e -> s16.e",
            "fcmplt s0.e, s4.e -> s16.e",
            "icmplt s0.e, s4.e -> s16.e",
            "select s8.e, s0.e, s4.e -> s16.e",
            "unpack35 s0.e -> s16.e, 16, 32",
            "unpack35 s8.e -> s16.e, 3, 7",
            "shift s0.e -> s8.w, 7, 300, 4",
            "bcast s0.e -> s2.w, 33, 2",
            "transpose s0.e -> s16.w",
        ];
        let mut instructions: Vec<(&str, Instruction)> = program
            .iter()
            .map(|text| {
                (
                    *text,
                    text.parse().unwrap_or_else(|e| panic!("{text}: {e}")),
                )
            })
            .collect();
        // A table by id (the text form names tables of a program).
        if let (_, Instruction::Bcast { src, dst, ew, .. }) = instructions[instructions.len() - 2] {
            let map = TableId(0);
            instructions.push((
                "permute (table 0)",
                Instruction::Permute { src, dst, map, ew },
            ));
        }
        for (text, ins) in instructions {
            let want = outputs(Simd::Portable, &ins);
            assert!(!want.is_empty(), "{text} wrote nothing");
            let f32_out = text.starts_with('f')
                && !text.starts_with("f32toi8")
                && !text.starts_with("fcmplt")
                || text.starts_with("i32tof32");
            for &simd in &builds[1..] {
                let got = outputs(simd, &ins);
                assert_eq!(got.len(), want.len(), "{text}: {simd:?}");
                if f32_out {
                    // A NaN result's payload is not specified (Rust, IEEE
                    // 754): with two NaN operands the builds may keep
                    // either's. Every other result is bit for bit.
                    for l in 0..LANES {
                        let bits =
                            |g: &[Vector]| u32::from_le_bytes([g[0][l], g[1][l], g[2][l], g[3][l]]);
                        let (w, g) = (f32::from_bits(bits(&want)), f32::from_bits(bits(&got)));
                        assert!(
                            w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
                            "{text}: {simd:?} lane {l}: {:08x} against {:08x}",
                            g.to_bits(),
                            w.to_bits()
                        );
                    }
                } else {
                    assert!(
                        got == want,
                        "{text}: {simd:?} differs from the portable build"
                    );
                }
            }
        }
    }

    #[test]
    #[expect(
        clippy::needless_range_loop,
        reason = "lane l of several planes, by index as the ISA states it"
    )]
    fn unpack35_is_split_pair_times_the_scales_on_every_code() {
        for m4 in 1..=16i16 {
            for m3 in [1i16, 2, 7, 16, 31, 32] {
                // Lane l holds pair codes (l + 37k) mod 128 for k = 0..8.
                let mut planes = [[0u8; LANES]; 7];
                for l in 0..LANES {
                    let mut word = 0u64;
                    for k in 0..8u64 {
                        word |= ((l as u64 + 37 * k) % 128) << (7 * k);
                    }
                    for (b, p) in planes.iter_mut().enumerate() {
                        p[l] = (word >> (8 * b)) as u8;
                    }
                }
                let codes: [&Vector; 7] = std::array::from_fn(|b| &planes[b]);
                let out = unpack35(codes, m4, m3);
                for l in 0..LANES {
                    for k in 0..8 {
                        let (c4, c3) = split_pair(((l + 37 * k) % 128) as u8);
                        let want4 = (i32::from(m4) * i32::from(c4)) as i8 as u8;
                        let want3 = (i32::from(m3) * i32::from(c3)) as i8 as u8;
                        assert_eq!(out[2 * k][l], want4, "m4 {m4} lane {l} pair {k}");
                        assert_eq!(out[2 * k + 1][l], want3, "m3 {m3} lane {l} pair {k}");
                    }
                }
            }
        }
    }
}
