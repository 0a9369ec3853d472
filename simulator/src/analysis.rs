//! Where one run's cycles went: every cycle of the step attributed to the
//! source ops (by the binary's debug map) in flight on it, summed per op,
//! per layer, per op kind and per class of kind (matmuls, norms,
//! attention, ...); per-unit busy fractions; each op and the whole step
//! against the machine's bound for its work; and the idle cycles of each
//! unit explained by what was in flight. Built from a [`Timeline`] (a
//! recorded run or the static walk, which are equal), so `q35sim run` and
//! `q35sim profile` print the same thing.
//!
//! # Where time goes
//!
//! An instruction is *in flight* from its issue until it is done (its
//! occupancy or its latency, whichever is longer: until its result is on
//! its stream). Each cycle `c` of `0 .. last_cycle` is split equally among
//! the distinct ops with an instruction in flight on `c`; a cycle with none
//! goes to "nothing in flight" (a gap of the schedule, `sync`, values
//! draining off the chip), and the superlane skew (`total - last_cycle`:
//! the other superlanes finishing) is its own line. The shares therefore
//! add up to the step's cycle count exactly (up to float rounding). An op
//! whose instructions were hoisted to the start of the step by the list
//! scheduler (index and mask work that depends on nothing) gets only the
//! few cycles those instructions are in flight, not its whole span.
//!
//! # What the idle attribution can and cannot say
//!
//! The binary holds the schedule, not the dependencies the scheduler
//! honoured, so a unit's idle cycle cannot be proven to wait on a
//! particular result. What the timeline does give exactly is what else was
//! in flight on that cycle (issued and not yet done: occupancy, or latency
//! until the result is on its stream). An idle cycle is attributed to the
//! first of: an SXM instruction in flight (a lane reduction, shift,
//! broadcast or permute: the 20-superlane latency that norms and attention
//! softmax wait on), an MXM pass in flight (the array's latency), VXM work
//! in flight, MEM work in flight; else to "nothing in flight" (a gap of the
//! schedule, or `sync`). It is also charged to the source op of the latest
//! instruction issued at or before it.

use std::collections::BTreeMap;

use q35_isa::{Instruction, QueueId, Unit};
use q35_lpubin::LpuBinary;
use serde_json::{Value, json};

use crate::config::MachineConfig;
use crate::load::Loaded;
use crate::timeline::Timeline;

/// The label of instructions the debug map does not cover.
pub const NO_LABEL: &str = "(no source op)";

/// One issued instruction, resolved.
#[derive(Debug, Clone)]
pub struct Event {
    /// Issue cycle.
    pub cycle: u64,
    /// Cycles until done (occupancy or latency, at least 1).
    pub extent: u64,
    /// Busy cycles it adds to its unit.
    pub busy: u64,
    /// Queue.
    pub queue: QueueId,
    /// Index into [`StepProfile::labels`].
    pub label: u32,
    /// The instruction.
    pub ins: Instruction,
}

/// What the attribution of cycles and idle time needs of one issue: half
/// of an [`Event`], so a step of millions of issues is analysed without
/// holding its events when no trace asks for them.
#[derive(Debug, Clone, Copy)]
struct Span {
    cycle: u64,
    /// [`Event::extent`] (occupancy and latency are small: `u32` holds any).
    extent: u32,
    /// [`Event::busy`].
    busy: u32,
    label: u32,
    queue: QueueId,
    /// A control instruction (`nop`, `repeat`, `sync`, ...): never in flight.
    control: bool,
}

/// Whether [`analyse_events`] keeps every issue in [`StepProfile::events`]
/// (what a trace and a report are drawn from) or only the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// Keep them (`--trace`, `--report`).
    Keep,
    /// Leave [`StepProfile::events`] empty: the text and JSON profile need
    /// none of it, and it is the analysis's largest allocation (48 bytes an
    /// issue: 140 MB for SmolLM2 at context 1024).
    Drop,
}

/// Busy cycles of one unit or group of queues.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitBusy {
    /// Display name (`MEM (88 slices)`, `MEM busiest: mem.e3`, `VXM (16 ALUs)`, `MXM mxm.0`, `SXM sxm.w`).
    pub name: String,
    /// Unit kind: `MEM`, `VXM`, `SXM` or `MXM`.
    pub kind: &'static str,
    /// Busy cycles summed over the group's queues.
    pub busy: u64,
    /// Queues in the group (the fraction is busy / (queues x cycles)).
    pub queues: u64,
    /// Busy fraction, 0..=1.
    pub fraction: f64,
}

/// The work of an op (or a group of ops) and the machine's bound for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    /// Multiply-accumulates (each `mm`: the rows of its plane's active
    /// weights x the plane's columns).
    pub macs: u64,
    /// Packed weight bytes decoded (`unpack35`: 7 streams x 320 bytes).
    pub weight_bytes: u64,
    /// MEM bytes read (`read`, `gather`: 320 each).
    pub mem_read_bytes: u64,
    /// VXM element operations (320 per VXM instruction).
    pub vxm_ops: u64,
}

impl Work {
    fn add(&mut self, o: &Work) {
        self.macs += o.macs;
        self.weight_bytes += o.weight_bytes;
        self.mem_read_bytes += o.mem_read_bytes;
        self.vxm_ops += o.vxm_ops;
    }

    /// The fewest cycles the machine needs for this work, and the resource
    /// that sets it (`MXM`, `MEM` or `VXM`): the largest of MACs / peak
    /// MACs per cycle, MEM bytes (weights or reads, the larger) / MEM read
    /// bandwidth, VXM ops / VXM lanes per cycle.
    pub fn bound(&self, peaks: &Peaks) -> (f64, &'static str) {
        let bounds = [
            (self.macs as f64 / peaks.macs as f64, "MXM"),
            (
                self.mem_read_bytes.max(self.weight_bytes) as f64 / peaks.mem_bytes as f64,
                "MEM",
            ),
            (self.vxm_ops as f64 / peaks.vxm_ops as f64, "VXM"),
        ];
        bounds
            .into_iter()
            .fold((0.0, "VXM"), |a, x| if x.0 > a.0 { x } else { a })
    }
}

/// The machine's peaks per cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peaks {
    /// MACs per cycle (every MXM plane).
    pub macs: u64,
    /// MEM read bytes per cycle (every slice's read ports).
    pub mem_bytes: u64,
    /// VXM element ops per cycle (ALUs x lanes).
    pub vxm_ops: u64,
}

/// One source op (debug-map label) of the step.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStat {
    /// The label (`blk.0.attn_q`).
    pub label: String,
    /// Its layer (`blk.0`, or the label itself outside blocks).
    pub layer: String,
    /// The op kind ([`kind_of`]: the label without its `blk.N.` prefix).
    pub kind: String,
    /// Cycles of the step attributed to it (module doc, "Where time goes").
    pub cycles: f64,
    /// First issue cycle.
    pub first: u64,
    /// Last cycle any of its instructions is done.
    pub last: u64,
    /// Busy cycles by unit kind: MEM, VXM, SXM, MXM.
    pub busy: [u64; 4],
    /// Instructions issued (control included).
    pub instructions: u64,
    /// Control instructions among them (they do not count in the span).
    pub control: u64,
    /// Its work.
    pub work: Work,
    /// The bound: the fewest cycles the machine needs for its work
    /// ([`Work::bound`]).
    pub bound_cycles: f64,
    /// Which resource sets the bound: `MXM`, `MEM` or `VXM`.
    pub bound_by: &'static str,
}

impl OpStat {
    /// First issue to last completion (overlaps other ops; hoisted
    /// instructions stretch it: [`OpStat::cycles`] is the measure that adds
    /// up).
    pub fn span(&self) -> u64 {
        self.last - self.first
    }

    /// Busy cycles over every unit.
    pub fn busy_total(&self) -> u64 {
        self.busy.iter().sum()
    }

    /// Bound over attributed cycles: 1 means the op ran at the machine's
    /// bound in the cycles it was given.
    pub fn efficiency(&self) -> f64 {
        efficiency(self.bound_cycles, self.cycles)
    }
}

fn efficiency(bound: f64, cycles: f64) -> f64 {
    if cycles <= 0.0 { 0.0 } else { bound / cycles }
}

/// A layer: its ops summed.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStat {
    /// `blk.N` or a top-level op's label.
    pub name: String,
    /// Cycles attributed to its ops.
    pub cycles: f64,
    /// First issue of any of its ops.
    pub first: u64,
    /// Last completion of any of its ops.
    pub last: u64,
    /// Busy cycles of its ops, every unit.
    pub busy: u64,
    /// Its ops.
    pub ops: usize,
}

/// Ops grouped by kind (every layer's `attn_q` together) or by class
/// (every matmul together): where the step's cycles go.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The kind (`attn_q`) or class (`matmul`).
    pub name: String,
    /// The class of a kind ([`class_of`]); a class's own name for a class.
    pub class: String,
    /// Cycles attributed to its ops.
    pub cycles: f64,
    /// Busy unit cycles of its ops.
    pub busy: u64,
    /// Its ops.
    pub ops: usize,
    /// Their work.
    pub work: Work,
    /// The machine's bound for that work.
    pub bound_cycles: f64,
    /// What sets it.
    pub bound_by: &'static str,
}

impl Group {
    /// Bound over attributed cycles.
    pub fn efficiency(&self) -> f64 {
        efficiency(self.bound_cycles, self.cycles)
    }
}

/// Idle cycles of a unit group with their attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    /// The group (`VXM`, `MEM`, `SXM`, `MXM mxm.0`, ...).
    pub unit: String,
    /// Cycles (of `0 .. last_cycle`) on which no queue of the group was busy.
    pub idle: u64,
    /// By cause (what was in flight), largest first.
    pub causes: Vec<(String, u64)>,
    /// By source op of the latest issue, largest first (top 5).
    pub ops: Vec<(String, u64)>,
}

/// The profile of one step (one run of the program).
#[derive(Debug, Clone)]
pub struct StepProfile {
    /// Cycle count (with the superlane skew).
    pub total_cycles: u64,
    /// Last event on superlane 0.
    pub last_cycle: u64,
    /// Instructions issued.
    pub instructions: u64,
    /// Busy fraction of each unit group.
    pub units: Vec<UnitBusy>,
    /// Ops by attributed cycles, most first.
    pub ops: Vec<OpStat>,
    /// Layers in program order.
    pub layers: Vec<LayerStat>,
    /// Op kinds by attributed cycles, most first.
    pub kinds: Vec<Group>,
    /// Classes of kinds by attributed cycles, most first.
    pub classes: Vec<Group>,
    /// Cycles of `0 .. last_cycle` with nothing in flight.
    pub idle_cycles: u64,
    /// The superlane skew: `total_cycles - last_cycle`.
    pub skew_cycles: u64,
    /// The step's work (every op's).
    pub work: Work,
    /// The machine's bound for the step's work.
    pub bound_cycles: f64,
    /// What sets it.
    pub bound_by: &'static str,
    /// Idle attribution of the MXM planes that work, the VXM, MEM and SXM.
    pub idle: Vec<Idle>,
    /// Every label, indexed by [`Event::label`].
    pub labels: Vec<String>,
    /// Every issue, resolved, in issue order (empty when analysed with
    /// [`Events::Drop`]).
    pub events: Vec<Event>,
    /// The machine's peaks per cycle.
    pub peaks: Peaks,
}

/// The line for cycles with nothing in flight (a gap of the schedule,
/// `sync`, values draining off the chip).
pub const NOTHING_IN_FLIGHT: &str = "(nothing in flight)";
/// The line for the superlane skew (the last superlanes finishing).
pub const SKEW: &str = "(superlane skew)";

fn unit_slot(u: Unit) -> Option<usize> {
    match u {
        Unit::Mem => Some(0),
        Unit::Vxm => Some(1),
        Unit::Sxm => Some(2),
        Unit::Mxm => Some(3),
        // Link time is the system's account (`crate::system`), not a unit's.
        Unit::C2c | Unit::Control => None,
    }
}

/// A chip-to-chip transfer's label (`c2c.send.<value>`, `c2c.recv.<value>`,
/// from the many-chip split): the transfer (`c2c.send`) and the value.
fn transfer(label: &str) -> Option<(&str, &str)> {
    ["c2c.send", "c2c.recv", "c2c.fwd"]
        .into_iter()
        .find_map(|t| {
            let rest = label.strip_prefix(t)?;
            match rest.strip_prefix('.') {
                Some(value) => Some((t, value)),
                None => rest.is_empty().then_some((t, "")),
            }
        })
}

/// `blk.N` of `blk.N.op`, of a KV-cache write `lpu.kv_write @kcache_N`
/// and of a transfer of a block's value (`c2c.send.blk.N.attn_residual.y`);
/// else the label.
pub fn layer_of(label: &str) -> String {
    if let Some((_, value)) = transfer(label)
        && value.starts_with("blk.")
    {
        return layer_of(value);
    }
    let mut parts = label.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("blk"), Some(n), Some(_)) => format!("blk.{n}"),
        _ => match label.rsplit_once(" @") {
            Some((_, sym)) => match sym
                .strip_prefix("kcache_")
                .or_else(|| sym.strip_prefix("vcache_"))
            {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("blk.{n}")
                }
                _ => label.to_string(),
            },
            None => label.to_string(),
        },
    }
}

/// The op kind: the label without `blk.N.`; an `lpu.` op on a symbol
/// (`lpu.kv_write @kcache_0`) without the dialect prefix and the symbol; a
/// piece of a matmul cut by rows (`blk.N.ffn_up.rows1920`, docs/backend.md
/// 8) its matmul's; a chip-to-chip transfer (`c2c.send.<value>`) the
/// transfer.
pub fn kind_of(label: &str) -> String {
    if let Some((t, _)) = transfer(label) {
        return t.to_string();
    }
    let label = match label.rsplit_once(".rows") {
        Some((op, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => op,
        _ => label,
    };
    let mut parts = label.splitn(3, '.');
    let k = match (parts.next(), parts.next(), parts.next()) {
        (Some("blk"), Some(_), Some(op)) => op,
        _ => label,
    };
    let k = match k.split_once(" @") {
        Some((op, _)) => op,
        None => k,
    };
    k.strip_prefix("lpu.").unwrap_or(k).to_string()
}

/// The class of an op kind, so that every matmul, norm, ... adds up
/// together: `matmul` (the block's projections and the output head,
/// `token_embd`: the embedding is tied), `norm`, `attention`, `rope`,
/// `quantize` (`*.xs`: activations to int8 for the next matmul),
/// `residual`, `activation`, `KV-cache write`, `chip-to-chip` (a
/// stage's sends and receives); any other kind is its own class.
pub fn class_of(kind: &str) -> String {
    let class = match kind {
        "attn_q" | "attn_k" | "attn_v" | "attn_output" | "ffn_gate" | "ffn_up" | "ffn_down"
        | "token_embd" | "output" => "matmul",
        "attn" => "attention",
        "q_rope" | "k_rope" => "rope",
        "kv_write" => "KV-cache write",
        "c2c.send" | "c2c.recv" | "c2c.fwd" => "chip-to-chip",
        "ffn_swiglu" => "activation",
        k if k.ends_with("_norm") => "norm",
        k if k.ends_with(".xs") => "quantize",
        k if k.ends_with("_residual") => "residual",
        k => k,
    };
    class.to_string()
}

/// The label id of every instruction, by queue: each debug-map entry covers
/// its queue's instructions up to the next entry; instructions before a
/// queue's first entry (or in a binary without a debug map) get
/// [`NO_LABEL`]. Built once, so labelling an issue is an index; it needs no
/// timeline, so `q35sim profile` builds it on a second thread while the
/// schedule is walked ([`Labels::new`], [`analyse_labelled`]).
#[derive(Debug, Clone)]
pub struct Labels {
    /// The distinct labels; id 0 is [`NO_LABEL`].
    names: Vec<String>,
    /// Per queue (dense index) and instruction, its label's id.
    table: Vec<Vec<u32>>,
}

impl Labels {
    /// The labels of `loaded`'s instructions from `debug`.
    pub fn new(debug: Option<q35_lpubin::DebugMap<'_>>, loaded: &Loaded) -> Labels {
        let mut names = Vec::new();
        let table = label_table(debug, loaded, &mut names);
        Labels { names, table }
    }
}

/// Where a step's work falls in time, coarsely: its unit-busy cycles per
/// bucket of `width` cycles, and in each the layer ([`layer_of`]) with
/// the most of them. A system's report draws one such row per chip on the
/// system's time axis ([`activity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// Cycles a bucket.
    pub width: u64,
    /// Per bucket with any busy cycles: (bucket, busy unit-cycles issued
    /// in it, its layer's index in [`Activity::layers`]).
    pub buckets: Vec<(u64, u64, u32)>,
    /// The layers named.
    pub layers: Vec<String>,
    /// The first cycle a busy instruction issued and the last one any was
    /// busy (`None`: nothing was).
    pub span: Option<(u64, u64)>,
}

/// The [`Activity`] of `timeline` (a walk of `loaded`, labelled from
/// `debug`) in buckets of `width` cycles: each issue's busy cycles (its
/// occupancy; control instructions have none) count in its issue cycle's
/// bucket.
pub fn activity(
    debug: Option<q35_lpubin::DebugMap<'_>>,
    loaded: &Loaded,
    timeline: &Timeline,
    width: u64,
) -> Activity {
    let width = width.max(1);
    let Labels { names, table } = Labels::new(debug, loaded);
    let mut layers: Vec<String> = Vec::new();
    let mut layer_ids: BTreeMap<String, u32> = BTreeMap::new();
    let layer_of_label: Vec<u32> = names
        .iter()
        .map(|n| {
            let l = layer_of(n);
            *layer_ids.entry(l.clone()).or_insert_with(|| {
                layers.push(l);
                (layers.len() - 1) as u32
            })
        })
        .collect();
    // (bucket, layer) -> busy cycles.
    let mut per: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    let mut span = None;
    for issue in &timeline.issues {
        let Some(ins) = loaded.queues[usize::from(issue.queue)]
            .as_ref()
            .and_then(|l| l.get(issue.index as usize))
        else {
            continue;
        };
        if ins.info().unit == Unit::Control {
            continue;
        }
        let label = table[usize::from(issue.queue)][issue.index as usize];
        let busy = ins.occupancy();
        *per.entry((issue.cycle / width, layer_of_label[label as usize]))
            .or_default() += busy;
        let end = issue.cycle + busy.max(1) - 1;
        span = Some(span.map_or((issue.cycle, end), |(a, b): (u64, u64)| {
            (a.min(issue.cycle), b.max(end))
        }));
    }
    // (bucket, busy, its busiest layer, that layer's busy cycles).
    let mut buckets: Vec<(u64, u64, u32, u64)> = Vec::new();
    for ((b, layer), busy) in per {
        match buckets.last_mut() {
            Some(last) if last.0 == b => {
                // The layer with the most busy cycles (the first of equals).
                if busy > last.3 {
                    (last.2, last.3) = (layer, busy);
                }
                last.1 += busy;
            }
            _ => buckets.push((b, busy, layer, busy)),
        }
    }
    Activity {
        width,
        buckets: buckets
            .into_iter()
            .filter(|b| b.1 > 0)
            .map(|(b, busy, layer, _)| (b, busy, layer))
            .collect(),
        layers,
        span,
    }
}

/// Busy fraction of each unit group of a run's counters `p` over its own
/// cycles: MEM (all slices, and the busiest slice), the VXM's ALUs, each
/// MXM plane and SXM ([`StepProfile::units`]).
pub fn unit_busy(p: &crate::profile::Profile) -> Vec<UnitBusy> {
    let total = p.total_cycles();
    let alus = QueueId::all().filter(|q| q.unit() == Unit::Vxm).count() as u64;
    let frac = |busy: u64, queues: u64| {
        if total == 0 || queues == 0 {
            0.0
        } else {
            busy as f64 / (queues * total) as f64
        }
    };
    let mut units = Vec::new();
    let mem: Vec<(QueueId, u64)> = QueueId::all()
        .filter(|q| q.unit() == Unit::Mem)
        .map(|q| (q, p.busy(q)))
        .collect();
    let mem_busy: u64 = mem.iter().map(|m| m.1).sum();
    units.push(UnitBusy {
        name: format!("MEM ({} slices)", mem.len()),
        kind: "MEM",
        busy: mem_busy,
        queues: mem.len() as u64,
        fraction: frac(mem_busy, mem.len() as u64),
    });
    if let Some(&(q, b)) = mem.iter().max_by_key(|m| (m.1, std::cmp::Reverse(m.0))) {
        units.push(UnitBusy {
            name: format!("MEM busiest: {q}"),
            kind: "MEM",
            busy: b,
            queues: 1,
            fraction: frac(b, 1),
        });
    }
    let vxm_busy: u64 = QueueId::all()
        .filter(|q| q.unit() == Unit::Vxm)
        .map(|q| p.busy(q))
        .sum();
    units.push(UnitBusy {
        name: format!("VXM ({alus} ALUs)"),
        kind: "VXM",
        busy: vxm_busy,
        queues: alus,
        fraction: frac(vxm_busy, alus),
    });
    for q in QueueId::all().filter(|q| matches!(q.unit(), Unit::Mxm | Unit::Sxm)) {
        let kind = if q.unit() == Unit::Mxm { "MXM" } else { "SXM" };
        units.push(UnitBusy {
            name: format!("{kind} {q}"),
            kind,
            busy: p.busy(q),
            queues: 1,
            fraction: frac(p.busy(q), 1),
        });
    }
    units
}

/// [`Labels`]' table, its names pushed onto `labels`.
fn label_table(
    debug: Option<q35_lpubin::DebugMap<'_>>,
    loaded: &Loaded,
    labels: &mut Vec<String>,
) -> Vec<Vec<u32>> {
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut intern = |s: &str, labels: &mut Vec<String>| -> u32 {
        if let Some(&i) = ids.get(s) {
            return i;
        }
        labels.push(s.to_string());
        let id = labels.len() as u32 - 1;
        ids.insert(s.to_string(), id);
        id
    };
    let none = intern(NO_LABEL, labels);
    let mut table: Vec<Vec<u32>> = loaded
        .queues
        .iter()
        .map(|q| vec![none; q.as_ref().map_or(0, Vec::len)])
        .collect();
    if let Some(debug) = debug {
        let entries: Vec<_> = debug.iter().collect();
        // The file stores each distinct location once, so most lookups
        // hit by address; a miss interns by text.
        let mut by_addr: BTreeMap<(usize, usize), u32> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let Some(list) = table.get_mut(usize::from(e.queue)) else {
                continue;
            };
            let from = (e.index as usize).min(list.len());
            let to = match entries.get(i + 1) {
                Some(n) if n.queue == e.queue => (n.index as usize).min(list.len()),
                _ => list.len(),
            };
            if from < to {
                let addr = (e.location.as_ptr() as usize, e.location.len());
                let id = match by_addr.get(&addr) {
                    Some(&id) => id,
                    None => {
                        let id = intern(e.location, labels);
                        by_addr.insert(addr, id);
                        id
                    }
                };
                list[from..to].fill(id);
            }
        }
    }
    table
}

/// Profiles one step of `binary`'s first program from its timeline.
pub fn analyse(
    binary: &LpuBinary,
    loaded: &Loaded,
    config: &MachineConfig,
    timeline: &Timeline,
) -> StepProfile {
    analyse_with(binary.debug(), loaded, config, timeline)
}

/// [`analyse`] for any program: its decoded queues and debug map (e.g. a
/// further program's, `Machine::loaded_program` and `Machine::debug_map`).
pub fn analyse_with(
    debug: Option<q35_lpubin::DebugMap<'_>>,
    loaded: &Loaded,
    config: &MachineConfig,
    timeline: &Timeline,
) -> StepProfile {
    analyse_events(debug, loaded, config, timeline, Events::Keep)
}

/// [`analyse_with`], keeping the issues in [`StepProfile::events`] or not
/// (every other field is the same either way).
pub fn analyse_events(
    debug: Option<q35_lpubin::DebugMap<'_>>,
    loaded: &Loaded,
    config: &MachineConfig,
    timeline: &Timeline,
    keep: Events,
) -> StepProfile {
    analyse_labelled(Labels::new(debug, loaded), loaded, config, timeline, keep)
}

/// [`analyse_events`] with the instructions' labels already made.
pub fn analyse_labelled(
    labels: Labels,
    loaded: &Loaded,
    config: &MachineConfig,
    timeline: &Timeline,
    keep: Events,
) -> StepProfile {
    let target = &config.target;
    let lanes = u64::from(q35_isa::VECTOR_BYTES);
    let Labels {
        names: labels,
        table,
    } = labels;
    // Per plane: rows of the shadow and the active weights.
    let mut shadow = [0u64; 4];
    let mut active = [0u64; 4];
    let mut events = match keep {
        Events::Keep => Vec::with_capacity(timeline.issues.len()),
        Events::Drop => Vec::new(),
    };
    let mut spans = Vec::with_capacity(timeline.issues.len());
    let mut ops: Vec<Option<OpStat>> = vec![None; labels.len()];
    for (i, issue) in timeline.issues.iter().enumerate() {
        // The issues interleave every queue's list: fetch ahead.
        if let Some(ahead) = timeline.issues.get(i + 16) {
            let q = usize::from(ahead.queue);
            if let (Some(Some(list)), Some(ids)) = (loaded.queues.get(q), table.get(q)) {
                let at = ahead.index as usize;
                crate::issue_queue::prefetch(list.as_ptr().wrapping_add(at));
                crate::issue_queue::prefetch(ids.as_ptr().wrapping_add(at));
            }
        }
        let queue = QueueId::from_index(issue.queue).expect("queue index");
        let Some(ins) = loaded.queues[usize::from(issue.queue)]
            .as_ref()
            .and_then(|l| l.get(issue.index as usize))
            .copied()
        else {
            continue;
        };
        let id = table[usize::from(issue.queue)][issue.index as usize];
        let label = &labels[id as usize];
        let info = ins.info();
        let busy = if info.unit == Unit::Control {
            0
        } else {
            ins.occupancy()
        };
        let latency = config.latency(ins.latency_class());
        let extent = busy.max(latency).max(1);
        let plane = match queue.kind() {
            q35_isa::QueueKind::Mxm(p) => usize::from(p).min(3),
            _ => 0,
        };
        let mut work = Work::default();
        if let Instruction::Lw { n, .. } = ins {
            shadow[plane] = u64::from(n);
        }
        if matches!(ins, Instruction::Iw {}) {
            active[plane] = shadow[plane];
        }
        if matches!(ins, Instruction::Mm { .. }) {
            work.macs = active[plane] * u64::from(target.mxm.cols);
        }
        if matches!(ins, Instruction::Unpack35 { .. }) {
            work.weight_bytes = 7 * lanes;
        }
        if matches!(ins, Instruction::Read { .. } | Instruction::Gather { .. }) {
            work.mem_read_bytes = lanes;
        }
        if info.unit == Unit::Vxm {
            work.vxm_ops = lanes;
        }
        let op = ops[id as usize].get_or_insert_with(|| OpStat {
            label: label.clone(),
            layer: layer_of(label),
            kind: kind_of(label),
            cycles: 0.0,
            first: issue.cycle,
            last: issue.cycle,
            busy: [0; 4],
            instructions: 0,
            control: 0,
            work: Work::default(),
            bound_cycles: 0.0,
            bound_by: "VXM",
        });
        // Control (`nop` gaps before a bundle, `repeat`) spans nothing.
        if info.unit != Unit::Control {
            if op.instructions == op.control {
                op.first = issue.cycle;
                op.last = issue.cycle + extent;
            }
            op.first = op.first.min(issue.cycle);
            op.last = op.last.max(issue.cycle + extent);
        } else {
            op.control += 1;
        }
        if let Some(s) = unit_slot(info.unit) {
            op.busy[s] += busy;
        }
        op.instructions += 1;
        op.work.add(&work);
        spans.push(Span {
            cycle: issue.cycle,
            extent: u32::try_from(extent).unwrap_or(u32::MAX),
            busy: u32::try_from(busy).unwrap_or(u32::MAX),
            label: id,
            queue,
            control: info.unit == Unit::Control,
        });
        if keep == Events::Keep {
            events.push(Event {
                cycle: issue.cycle,
                extent,
                busy,
                queue,
                label: id,
                ins,
            });
        }
    }
    let alus = QueueId::all().filter(|q| q.unit() == Unit::Vxm).count() as u64;
    let mem_slices = 2 * u64::from(target.mem_slices_per_hemisphere());
    let peaks = Peaks {
        macs: target.macs_per_cycle(),
        mem_bytes: mem_slices * u64::from(target.mem.read_ports) * lanes,
        vxm_ops: alus * lanes,
    };
    let p = &timeline.profile;
    let total = p.total_cycles();
    let last_cycle = p.last_cycle();
    // Two passes over the spans that share nothing: side by side.
    let ((shares, idle_cycles), idle) = std::thread::scope(|s| {
        let idle = s.spawn(|| idle_attribution(&spans, &labels, last_cycle));
        let shares = attribute(&spans, labels.len(), last_cycle);
        (
            shares,
            idle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    for (op, &share) in ops.iter_mut().zip(&shares) {
        if let Some(op) = op {
            op.cycles = share;
        }
    }
    let mut ops: Vec<OpStat> = ops.into_iter().flatten().collect();
    let mut step_work = Work::default();
    for op in &mut ops {
        (op.bound_cycles, op.bound_by) = op.work.bound(&peaks);
        step_work.add(&op.work);
    }
    let (bound_cycles, bound_by) = step_work.bound(&peaks);
    let mut layers: Vec<LayerStat> = Vec::new();
    let mut by_first = ops.clone();
    by_first.sort_by_key(|o| (o.first, o.label.clone()));
    for op in &by_first {
        match layers.iter_mut().find(|l| l.name == op.layer) {
            Some(l) => {
                l.cycles += op.cycles;
                l.first = l.first.min(op.first);
                l.last = l.last.max(op.last);
                l.busy += op.busy_total();
                l.ops += 1;
            }
            None => layers.push(LayerStat {
                name: op.layer.clone(),
                cycles: op.cycles,
                first: op.first,
                last: op.last,
                busy: op.busy_total(),
                ops: 1,
            }),
        }
    }
    let kinds = group(&ops, |o| o.kind.clone(), &peaks);
    let classes = group(&ops, |o| class_of(&o.kind), &peaks);
    ops.sort_by(|a, b| {
        b.cycles
            .total_cmp(&a.cycles)
            .then(b.busy_total().cmp(&a.busy_total()))
            .then(a.label.cmp(&b.label))
    });

    let units = unit_busy(p);
    drop(spans);
    StepProfile {
        total_cycles: total,
        last_cycle,
        instructions: p.instructions(),
        units,
        ops,
        layers,
        kinds,
        classes,
        idle_cycles,
        skew_cycles: total.saturating_sub(last_cycle),
        work: step_work,
        bound_cycles,
        bound_by,
        idle,
        labels,
        events,
        peaks,
    }
}

/// Ops grouped by `key`, most attributed cycles first.
fn group(ops: &[OpStat], key: impl Fn(&OpStat) -> String, peaks: &Peaks) -> Vec<Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for o in ops {
        let name = key(o);
        let g = groups.entry(name.clone()).or_insert_with(|| Group {
            class: class_of(&name),
            name,
            cycles: 0.0,
            busy: 0,
            ops: 0,
            work: Work::default(),
            bound_cycles: 0.0,
            bound_by: "VXM",
        });
        g.cycles += o.cycles;
        g.busy += o.busy_total();
        g.ops += 1;
        g.work.add(&o.work);
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    for g in &mut out {
        (g.bound_cycles, g.bound_by) = g.work.bound(peaks);
    }
    out.sort_by(|a, b| b.cycles.total_cmp(&a.cycles).then(a.name.cmp(&b.name)));
    out
}

/// Splits every cycle of `0 .. last` equally among the labels with a
/// non-control instruction in flight on it (module doc): the cycles of each
/// label, and the cycles with nothing in flight.
fn attribute(spans: &[Span], labels: usize, last: u64) -> (Vec<f64>, u64) {
    let n = last as usize;
    // Starts and ends by cycle (counting sort: cycles are dense).
    let mut start_at = vec![0u32; n + 1];
    let mut end_at = vec![0u32; n + 1];
    let live = || {
        spans.iter().filter(|e| !e.control).filter_map(|e| {
            let s = e.cycle as usize;
            let t = ((e.cycle + u64::from(e.extent)) as usize).min(n);
            (s < t).then_some((s, t, e.label))
        })
    };
    let mut count_live = 0usize;
    for (s, t, _) in live() {
        start_at[s] += 1;
        end_at[t] += 1;
        count_live += 1;
    }
    let csr = |counts: &[u32]| -> Vec<usize> {
        let mut off = Vec::with_capacity(counts.len() + 1);
        let mut acc = 0usize;
        off.push(0);
        for &c in counts {
            acc += c as usize;
            off.push(acc);
        }
        off
    };
    let (so, eo) = (csr(&start_at), csr(&end_at));
    let mut starts = vec![0u32; count_live];
    let mut ends = vec![0u32; count_live];
    let (mut sf, mut ef) = (so.clone(), eo.clone());
    for (s, t, l) in live() {
        starts[sf[s]] = l;
        sf[s] += 1;
        ends[ef[t]] = l;
        ef[t] += 1;
    }
    let mut shares = vec![0.0f64; labels];
    let mut count = vec![0u32; labels];
    let mut pos = vec![usize::MAX; labels];
    let mut active: Vec<u32> = Vec::new();
    let mut idle = 0u64;
    let mut seg = 0usize;
    for c in 0..=n {
        let changes = eo[c + 1] > eo[c] || so[c + 1] > so[c] || c == n;
        if !changes {
            continue;
        }
        // The set was constant on seg .. c.
        let len = (c - seg) as f64;
        if c > seg {
            if active.is_empty() {
                idle += (c - seg) as u64;
            } else {
                let each = len / active.len() as f64;
                for &l in &active {
                    shares[l as usize] += each;
                }
            }
        }
        seg = c;
        for &l in &ends[eo[c]..eo[c + 1]] {
            let l = l as usize;
            count[l] -= 1;
            if count[l] == 0 {
                let at = pos[l];
                active.swap_remove(at);
                if let Some(&moved) = active.get(at) {
                    pos[moved as usize] = at;
                }
                pos[l] = usize::MAX;
            }
        }
        for &l in &starts[so[c]..so[c + 1]] {
            let l = l as usize;
            if count[l] == 0 {
                pos[l] = active.len();
                active.push(l as u32);
            }
            count[l] += 1;
        }
    }
    (shares, idle)
}

/// Idle cycles of each group with what was in flight (module doc).
fn idle_attribution(spans: &[Span], labels: &[String], last: u64) -> Vec<Idle> {
    let n = last as usize + 2;
    // Groups: VXM, MEM, SXM, MXM plane 0..3.
    let group_of = |e: &Span| -> Option<usize> {
        match e.queue.unit() {
            Unit::Vxm => Some(0),
            Unit::Mem => Some(1),
            Unit::Sxm => Some(2),
            Unit::Mxm => match e.queue.kind() {
                q35_isa::QueueKind::Mxm(p) => Some(3 + usize::from(p).min(3)),
                q35_isa::QueueKind::Mem { .. }
                | q35_isa::QueueKind::Vxm(_)
                | q35_isa::QueueKind::Sxm(_)
                | q35_isa::QueueKind::C2c(_) => None,
            },
            Unit::C2c | Unit::Control => None,
        }
    };
    let mut busy = vec![vec![0i32; n + 1]; 7];
    // In flight by kind: SXM, MXM, VXM, MEM.
    let mut flight = vec![vec![0i32; n + 1]; 4];
    let mut latest = vec![u32::MAX; n];
    let mut used = [false; 7];
    for e in spans {
        let c = (e.cycle as usize).min(n - 1);
        if !e.control {
            latest[c] = e.label;
        }
        let Some(g) = group_of(e) else { continue };
        if e.control {
            continue;
        }
        used[g] = true;
        let end = ((e.cycle + u64::from(e.busy)) as usize).min(n);
        busy[g][c] += 1;
        busy[g][end] -= 1;
        let k = match e.queue.unit() {
            Unit::Sxm => 0,
            Unit::Mxm => 1,
            Unit::Vxm => 2,
            Unit::Mem | Unit::C2c | Unit::Control => 3,
        };
        let end = ((e.cycle + u64::from(e.extent)) as usize).min(n);
        flight[k][c] += 1;
        flight[k][end] -= 1;
    }
    let names = [
        "VXM",
        "MEM",
        "SXM",
        "MXM mxm.0",
        "MXM mxm.1",
        "MXM mxm.2",
        "MXM mxm.3",
    ];
    let causes = [
        "an SXM lane op in flight (reduction, shift, broadcast, permute)",
        "an MXM pass in flight",
        "VXM work in flight",
        "MEM work in flight",
        "nothing in flight (schedule gap, sync)",
    ];
    let mut idle = [0u64; 7];
    let mut by_cause = [[0u64; 5]; 7];
    // Idle cycles per group and label (the last slot: before the first
    // issue), a dense table: a BTreeMap entry per idle cycle and group was
    // most of the analysis's own time on a long step.
    let none = labels.len();
    let mut by_op: Vec<Vec<u64>> = vec![vec![0; none + 1]; 7];
    let (mut b, mut f) = ([0i32; 7], [0i32; 4]);
    let mut cur = none;
    for c in 0..(last as usize) {
        for g in 0..7 {
            b[g] += busy[g][c];
        }
        for k in 0..4 {
            f[k] += flight[k][c];
        }
        if latest[c] != u32::MAX {
            cur = (latest[c] as usize).min(none);
        }
        let cause = f.iter().position(|&x| x > 0).unwrap_or(4);
        for g in 0..7 {
            if used[g] && b[g] == 0 {
                idle[g] += 1;
                by_cause[g][cause] += 1;
                by_op[g][cur] += 1;
            }
        }
    }
    (0..7)
        .filter(|&g| used[g])
        .map(|g| {
            let mut cs: Vec<(String, u64)> = (0..5)
                .filter(|&k| by_cause[g][k] > 0)
                .map(|k| (causes[k].to_string(), by_cause[g][k]))
                .collect();
            cs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut os: Vec<(String, u64)> = by_op[g]
                .iter()
                .enumerate()
                .filter(|&(_, &v)| v > 0)
                .map(|(l, &v)| {
                    let name = labels
                        .get(l)
                        .map_or("(before the first issue)", String::as_str);
                    (name.to_string(), v)
                })
                .collect();
            os.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            os.truncate(5);
            Idle {
                unit: names[g].to_string(),
                idle: idle[g],
                causes: cs,
                ops: os,
            }
        })
        .collect()
}

impl StepProfile {
    /// Part of the step's cycles, 0..=1.
    fn share(&self, cycles: f64) -> f64 {
        if self.total_cycles == 0 {
            0.0
        } else {
            cycles / self.total_cycles as f64
        }
    }

    /// The machine's bound over the step's cycles.
    pub fn achieved(&self) -> f64 {
        efficiency(self.bound_cycles, self.total_cycles as f64)
    }

    /// The step's profile as JSON (`top` ops).
    pub fn to_json(&self, top: usize) -> Value {
        let group = |g: &Group| {
            json!({
                "name": g.name, "class": g.class, "cycles": g.cycles, "share": self.share(g.cycles),
                "busy_cycles": g.busy, "ops": g.ops, "macs": g.work.macs,
                "weight_bytes": g.work.weight_bytes, "mem_read_bytes": g.work.mem_read_bytes,
                "vxm_ops": g.work.vxm_ops, "bound_cycles": g.bound_cycles,
                "bound_by": g.bound_by, "efficiency": g.efficiency(),
            })
        };
        json!({
            "total_cycles": self.total_cycles,
            "last_cycle": self.last_cycle,
            "instructions": self.instructions,
            "bound": {
                "cycles": self.bound_cycles, "by": self.bound_by, "achieved": self.achieved(),
                "macs": self.work.macs, "weight_bytes": self.work.weight_bytes,
                "mem_read_bytes": self.work.mem_read_bytes, "vxm_ops": self.work.vxm_ops,
            },
            "where_time_goes": {
                "definition": "each cycle of the step split equally among the source ops with an instruction in flight on it (docs/profiling.md)",
                "classes": self.classes.iter().map(group).collect::<Vec<_>>(),
                "kinds": self.kinds.iter().map(group).collect::<Vec<_>>(),
                "nothing_in_flight_cycles": self.idle_cycles,
                "superlane_skew_cycles": self.skew_cycles,
            },
            "units": self.units.iter().map(|u| json!({
                "name": u.name, "kind": u.kind, "busy_cycles": u.busy,
                "queues": u.queues, "busy_fraction": u.fraction,
            })).collect::<Vec<_>>(),
            "ops": self.ops.iter().take(top).map(|o| json!({
                "label": o.label, "layer": o.layer, "kind": o.kind, "class": class_of(&o.kind),
                "cycles": o.cycles, "share": self.share(o.cycles),
                "first_issue": o.first, "last_done": o.last, "span_cycles": o.span(),
                "busy_cycles": {"MEM": o.busy[0], "VXM": o.busy[1], "SXM": o.busy[2], "MXM": o.busy[3]},
                "instructions": o.instructions, "macs": o.work.macs, "weight_bytes": o.work.weight_bytes,
                "mem_read_bytes": o.work.mem_read_bytes, "vxm_ops": o.work.vxm_ops,
                "bound_cycles": o.bound_cycles, "bound_by": o.bound_by,
                "efficiency": o.efficiency(),
            })).collect::<Vec<_>>(),
            "layers": self.layers.iter().map(|l| json!({
                "name": l.name, "cycles": l.cycles, "share": self.share(l.cycles),
                "first_issue": l.first, "last_done": l.last,
                "span_cycles": l.last - l.first, "busy_cycles": l.busy, "ops": l.ops,
            })).collect::<Vec<_>>(),
            "idle": self.idle.iter().map(|i| json!({
                "unit": i.unit, "idle_cycles": i.idle,
                "causes": i.causes.iter().map(|(c, n)| json!({"cause": c, "cycles": n})).collect::<Vec<_>>(),
                "ops": i.ops.iter().map(|(c, n)| json!({"op": c, "cycles": n})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "peaks_per_cycle": {
                "macs": self.peaks.macs, "mem_read_bytes": self.peaks.mem_bytes,
                "vxm_ops": self.peaks.vxm_ops,
            },
        })
    }

    /// The step's profile as text (`top` ops and layers).
    pub fn to_text(&self, top: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let _ = writeln!(
            out,
            "machine bound for the step's work: {:.0} cycles (set by {}; {} MACs, {} MEM bytes, {} VXM ops at peak rates); its {} cycles run at {} of that",
            self.bound_cycles,
            self.bound_by,
            self.work.macs,
            self.work.weight_bytes.max(self.work.mem_read_bytes),
            self.work.vxm_ops,
            self.total_cycles,
            pct(self.achieved()),
        );
        let _ = writeln!(out, "unit busy fraction (of {} cycles):", self.total_cycles);
        for u in &self.units {
            let _ = writeln!(
                out,
                "  {:<22} {:>10} cycles {:>6.1}%",
                u.name,
                u.busy,
                100.0 * u.fraction
            );
        }
        let _ = writeln!(
            out,
            "where the {} cycles go (each cycle split equally among the ops in flight on it; busy: unit cycles; docs/profiling.md):",
            self.total_cycles
        );
        let header = |out: &mut String, what: &str| {
            let _ = writeln!(
                out,
                "  {what:<26} {:>10} {:>6} {:>10} {:>5} {:>11} {:>9}",
                "cycles", "share", "busy", "ops", "bound (by)", "of bound"
            );
        };
        let row = |out: &mut String, name: &str, g: &Group| {
            let _ = writeln!(
                out,
                "  {:<26} {:>10.0} {:>6} {:>10} {:>5} {:>7.0} {:<3} {:>9}",
                name,
                g.cycles,
                pct(self.share(g.cycles)),
                g.busy,
                g.ops,
                g.bound_cycles,
                g.bound_by,
                pct(g.efficiency())
            );
        };
        header(&mut out, "by class");
        for g in &self.classes {
            row(&mut out, &g.name, g);
        }
        for (name, cycles) in [
            (NOTHING_IN_FLIGHT, self.idle_cycles),
            (SKEW, self.skew_cycles),
        ] {
            let _ = writeln!(
                out,
                "  {name:<26} {cycles:>10} {:>6}",
                pct(self.share(cycles as f64))
            );
        }
        header(&mut out, "by op kind (all layers)");
        for g in &self.kinds {
            if g.class == g.name {
                row(&mut out, &g.name, g);
            } else {
                row(&mut out, &format!("{} ({})", g.name, g.class), g);
            }
        }
        let mut layers = self.layers.clone();
        layers.sort_by(|a, b| b.cycles.total_cmp(&a.cycles).then(a.name.cmp(&b.name)));
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>6} {:>10} {:>5}",
            format!("by layer (top {top})"),
            "cycles",
            "share",
            "busy",
            "ops"
        );
        for l in layers.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<26} {:>10.0} {:>6} {:>10} {:>5}",
                l.name,
                l.cycles,
                pct(self.share(l.cycles)),
                l.busy,
                l.ops
            );
        }
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>6} {:>10} {:>11} {:>9}  span [first issue..last done]",
            format!("by op (top {top})"),
            "cycles",
            "share",
            "busy",
            "bound (by)",
            "of bound"
        );
        for o in self.ops.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<26} {:>10.0} {:>6} {:>10} {:>7.0} {:<3} {:>9}  {} [{}..{}]",
                o.label,
                o.cycles,
                pct(self.share(o.cycles)),
                o.busy_total(),
                o.bound_cycles,
                o.bound_by,
                pct(o.efficiency()),
                o.span(),
                o.first,
                o.last
            );
        }
        let _ = writeln!(
            out,
            "stalls: idle cycles of each unit by what was in flight (not a proven dependency: docs/profiling.md):"
        );
        for i in &self.idle {
            let causes: Vec<String> = i
                .causes
                .iter()
                .take(3)
                .map(|(c, n)| format!("{n} {c}"))
                .collect();
            let ops: Vec<String> = i
                .ops
                .iter()
                .take(3)
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {}: {} idle: {}; during {}",
                i.unit,
                i.idle,
                causes.join(", "),
                ops.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_layers_and_classes() {
        assert_eq!(kind_of("blk.3.attn_q"), "attn_q");
        assert_eq!(layer_of("blk.3.attn_q"), "blk.3");
        assert_eq!(kind_of("lpu.kv_write @kcache_12"), "kv_write");
        assert_eq!(layer_of("lpu.kv_write @kcache_12"), "blk.12");
        assert_eq!(layer_of("lpu.kv_write @other"), "lpu.kv_write @other");
        assert_eq!(kind_of("blk.0.attn.xs"), "attn.xs");
        assert_eq!(class_of("attn.xs"), "quantize");
        assert_eq!(class_of("ffn_down"), "matmul");
        assert_eq!(class_of("output_norm"), "norm");
        assert_eq!(class_of("token_embd"), "matmul");
        assert_eq!(class_of("something_new"), "something_new");
        assert_eq!(kind_of("token_embd"), "token_embd");
        assert_eq!(layer_of("token_embd"), "token_embd");
        // The many-chip split's row pieces and transfers.
        assert_eq!(kind_of("blk.0.ffn_gate.rows11520"), "ffn_gate");
        assert_eq!(layer_of("blk.0.ffn_gate.rows11520"), "blk.0");
        assert_eq!(kind_of("output.rows0"), "output");
        assert_eq!(kind_of("blk.0.ffn_gate.rowsx"), "ffn_gate.rowsx");
        assert_eq!(kind_of("c2c.send.blk.7.attn_residual.y"), "c2c.send");
        assert_eq!(layer_of("c2c.send.blk.7.attn_residual.y"), "blk.7");
        assert_eq!(kind_of("c2c.recv.x_in"), "c2c.recv");
        assert_eq!(layer_of("c2c.recv.x_in"), "c2c.recv.x_in");
        assert_eq!(kind_of("c2c.fwd"), "c2c.fwd");
        assert_eq!(class_of("c2c.recv"), "chip-to-chip");
        assert_eq!(kind_of("c2c.sender"), "c2c.sender");
    }

    #[test]
    fn activity_buckets_busy_cycles_by_layer() {
        let text = ".target lpu-v1\n.mem mem.w0 @0 u8 fill 1, 320\n\
                    .queue mem.w0\n    read 0, s0.e\n    nop 30\n    read 0, s1.e\n    read 0, s2.e\n    halt\n";
        let config = crate::config::load_target(None).expect("lpu-v1");
        let bin = q35_lpubin::LpuBinary::from_bytes(
            q35_isa::assemble("a.lpuasm", text)
                .expect("assembles")
                .to_lpubin(&config.target, "test")
                .expect("encodes")
                .to_bytes()
                .expect("bytes"),
        )
        .expect("reads back");
        let loaded = crate::load::load(&bin, &config).expect("loads");
        let t = crate::schedule::walk(&loaded, &config).expect("walks");
        let a = activity(bin.debug(), &loaded, &t, 10);
        // One read (occupancy 1) in cycles 0..10, two in 30..40 (the nop
        // and halt are control: no busy cycles); no labels: one layer.
        assert_eq!(a.width, 10);
        assert_eq!(a.buckets, vec![(0, 1, 0), (3, 2, 0)]);
        assert_eq!(a.span, Some((0, 32)));
        assert_eq!(a.layers.len(), 1);
    }

    fn ev(cycle: u64, extent: u32, label: u32) -> Span {
        Span {
            cycle,
            extent,
            busy: 1,
            queue: QueueId::all()
                .find(|q| q.unit() == Unit::Vxm)
                .expect("a VXM queue"),
            label,
            control: false,
        }
    }

    #[test]
    fn attribution_splits_cycles_and_adds_up() {
        // Label 0 on 0..4, label 1 on 2..6 and 10..12, label 2 on 3..4:
        // cycles 0,1 -> 0; 2 -> 0,1; 3 -> 0,1,2; 4,5 -> 1; 6..10 nothing;
        // 10,11 -> 1; 12,13 nothing.
        let evs = vec![ev(0, 4, 0), ev(2, 4, 1), ev(10, 2, 1), ev(3, 1, 2)];
        let (shares, idle) = attribute(&evs, 3, 14);
        let want = [
            2.0 + 0.5 + 1.0 / 3.0,
            0.5 + 1.0 / 3.0 + 2.0 + 2.0,
            1.0 / 3.0,
        ];
        for (got, want) in shares.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{shares:?}");
        }
        assert_eq!(idle, 6);
        assert!((shares.iter().sum::<f64>() + idle as f64 - 14.0).abs() < 1e-9);
        // Events past the end are clipped; control is never in flight.
        let mut halt = ev(1, 100, 0);
        halt.control = true;
        let (shares, idle) = attribute(&[ev(0, 100, 1), halt], 2, 5);
        assert_eq!((shares, idle), (vec![0.0, 5.0], 0));
    }
}
