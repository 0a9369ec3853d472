//! Where one run's cycles went: per-unit busy fractions, the ops and layers
//! (by the binary's debug map) with the most cycles, each op against the
//! machine's bound of its kind, and the idle cycles of each unit explained
//! by what was in flight. Built from a [`Timeline`] (a recorded run or the
//! static walk, which are equal), so `q35sim run` and `q35sim profile`
//! print the same thing.
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

/// One source op (debug-map label) of the step.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStat {
    /// The label (`blk.0.attn_q`).
    pub label: String,
    /// Its layer (`blk.0`, or the label itself outside blocks).
    pub layer: String,
    /// The op kind (the label without its `blk.N.` prefix).
    pub kind: String,
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
    /// Multiply-accumulates (each `mm`: the rows of its plane's active
    /// weights x the plane's columns).
    pub macs: u64,
    /// Packed weight bytes decoded (`unpack35`: 7 streams x 320 bytes).
    pub weight_bytes: u64,
    /// MEM bytes read (`read`, `gather`: 320 each).
    pub mem_read_bytes: u64,
    /// VXM element operations (320 per VXM instruction).
    pub vxm_ops: u64,
    /// The bound: the fewest cycles the machine needs for this work (the
    /// largest of MACs / MACs per cycle, weight and MEM bytes / MEM read
    /// bandwidth, VXM ops / VXM lanes per cycle).
    pub bound_cycles: f64,
    /// Which resource sets the bound: `MXM`, `MEM` or `VXM`.
    pub bound_by: &'static str,
}

impl OpStat {
    /// First issue to last completion.
    pub fn span(&self) -> u64 {
        self.last - self.first
    }

    /// Busy cycles over every unit.
    pub fn busy_total(&self) -> u64 {
        self.busy.iter().sum()
    }

    /// Bound over span: 1 means the op ran at the machine's bound.
    pub fn efficiency(&self) -> f64 {
        if self.span() == 0 {
            0.0
        } else {
            self.bound_cycles / self.span() as f64
        }
    }
}

/// A layer: its ops summed.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStat {
    /// `blk.N` or a top-level op's label.
    pub name: String,
    /// First issue of any of its ops.
    pub first: u64,
    /// Last completion of any of its ops.
    pub last: u64,
    /// Busy cycles of its ops, every unit.
    pub busy: u64,
    /// Its ops.
    pub ops: usize,
}

/// Idle cycles of a unit group with their attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    /// The group (`VXM`, `MEM`, `SXM`, `MXM mxm.0`, ...).
    pub unit: String,
    /// Cycles (of `0 ..= last_cycle`) on which no queue of the group was busy.
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
    /// Ops by busy cycles (then span), most first.
    pub ops: Vec<OpStat>,
    /// Layers in program order.
    pub layers: Vec<LayerStat>,
    /// Idle attribution of the MXM planes that work, the VXM, MEM and SXM.
    pub idle: Vec<Idle>,
    /// Every label, indexed by [`Event::label`].
    pub labels: Vec<String>,
    /// Every issue, resolved, in issue order.
    pub events: Vec<Event>,
    /// Peak MACs per cycle.
    pub peak_macs: u64,
    /// Peak MEM read bytes per cycle (every slice's read ports).
    pub peak_mem_bytes: u64,
    /// Peak VXM element ops per cycle (ALUs x lanes).
    pub peak_vxm_ops: u64,
}

fn unit_slot(u: Unit) -> Option<usize> {
    match u {
        Unit::Mem => Some(0),
        Unit::Vxm => Some(1),
        Unit::Sxm => Some(2),
        Unit::Mxm => Some(3),
        Unit::Control => None,
    }
}

/// `blk.N` of `blk.N.op`, else the label.
pub fn layer_of(label: &str) -> String {
    let mut parts = label.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("blk"), Some(n), Some(_)) => format!("blk.{n}"),
        _ => label.to_string(),
    }
}

/// The op kind: the label without `blk.N.`.
pub fn kind_of(label: &str) -> String {
    let mut parts = label.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("blk"), Some(_), Some(op)) => op.to_string(),
        _ => label.to_string(),
    }
}

/// Profiles one step of `binary` from its timeline.
pub fn analyse(
    binary: &LpuBinary,
    loaded: &Loaded,
    config: &MachineConfig,
    timeline: &Timeline,
) -> StepProfile {
    let debug = binary.debug();
    let target = &config.target;
    let lanes = u64::from(q35_isa::VECTOR_BYTES);
    let mut labels: Vec<String> = Vec::new();
    let mut label_ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut intern = |s: &str| -> u32 {
        if let Some(&i) = label_ids.get(s) {
            return i;
        }
        labels.push(s.to_string());
        label_ids.insert(s.to_string(), labels.len() as u32 - 1);
        labels.len() as u32 - 1
    };
    // Per plane: rows of the shadow and the active weights.
    let mut shadow = [0u64; 4];
    let mut active = [0u64; 4];
    let mut events = Vec::with_capacity(timeline.issues.len());
    let mut ops: Vec<Option<OpStat>> = Vec::new();
    for issue in &timeline.issues {
        let queue = QueueId::from_index(issue.queue).expect("queue index");
        let Some(ins) = loaded.queues[usize::from(issue.queue)]
            .as_ref()
            .and_then(|l| l.get(issue.index as usize))
            .copied()
        else {
            continue;
        };
        let label = debug
            .as_ref()
            .and_then(|d| d.locate(issue.queue, issue.index))
            .map_or(NO_LABEL, |e| e.location);
        let id = intern(label);
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
        let (mut macs, mut weight_bytes, mut mem_read_bytes, mut vxm_ops) = (0, 0, 0, 0);
        if let Instruction::Lw { n, .. } = ins {
            shadow[plane] = u64::from(n);
        }
        if matches!(ins, Instruction::Iw {}) {
            active[plane] = shadow[plane];
        }
        if matches!(ins, Instruction::Mm { .. }) {
            macs = active[plane] * u64::from(target.mxm.cols);
        }
        if matches!(ins, Instruction::Unpack35 { .. }) {
            weight_bytes = 7 * lanes;
        }
        if matches!(ins, Instruction::Read { .. } | Instruction::Gather { .. }) {
            mem_read_bytes = lanes;
        }
        if info.unit == Unit::Vxm {
            vxm_ops = lanes;
        }
        if ops.len() <= id as usize {
            ops.resize(id as usize + 1, None);
        }
        let op = ops[id as usize].get_or_insert_with(|| OpStat {
            label: label.to_string(),
            layer: layer_of(label),
            kind: kind_of(label),
            first: issue.cycle,
            last: issue.cycle,
            busy: [0; 4],
            instructions: 0,
            control: 0,
            macs: 0,
            weight_bytes: 0,
            mem_read_bytes: 0,
            vxm_ops: 0,
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
        op.macs += macs;
        op.weight_bytes += weight_bytes;
        op.mem_read_bytes += mem_read_bytes;
        op.vxm_ops += vxm_ops;
        events.push(Event {
            cycle: issue.cycle,
            extent,
            busy,
            queue,
            label: id,
            ins,
        });
    }
    let peak_macs = target.macs_per_cycle();
    let mem_slices = 2 * u64::from(target.mem_slices_per_hemisphere());
    let peak_mem_bytes = mem_slices * u64::from(target.mem.read_ports) * lanes;
    let alus = QueueId::all().filter(|q| q.unit() == Unit::Vxm).count() as u64;
    let peak_vxm_ops = alus * lanes;
    let mut ops: Vec<OpStat> = ops.into_iter().flatten().collect();
    for op in &mut ops {
        let bounds = [
            (op.macs as f64 / peak_macs as f64, "MXM"),
            (
                (op.mem_read_bytes.max(op.weight_bytes)) as f64 / peak_mem_bytes as f64,
                "MEM",
            ),
            (op.vxm_ops as f64 / peak_vxm_ops as f64, "VXM"),
        ];
        let (b, by) = bounds
            .into_iter()
            .fold((0.0, "VXM"), |a, x| if x.0 > a.0 { x } else { a });
        op.bound_cycles = b;
        op.bound_by = by;
    }
    let mut layers: Vec<LayerStat> = Vec::new();
    let mut by_first = ops.clone();
    by_first.sort_by_key(|o| (o.first, o.label.clone()));
    for op in &by_first {
        match layers.iter_mut().find(|l| l.name == op.layer) {
            Some(l) => {
                l.first = l.first.min(op.first);
                l.last = l.last.max(op.last);
                l.busy += op.busy_total();
                l.ops += 1;
            }
            None => layers.push(LayerStat {
                name: op.layer.clone(),
                first: op.first,
                last: op.last,
                busy: op.busy_total(),
                ops: 1,
            }),
        }
    }
    ops.sort_by(|a, b| {
        (b.busy_total(), b.span())
            .cmp(&(a.busy_total(), a.span()))
            .then(a.label.cmp(&b.label))
    });

    let p = &timeline.profile;
    let total = p.total_cycles();
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
    let idle = idle_attribution(&events, &labels, p.last_cycle());
    StepProfile {
        total_cycles: total,
        last_cycle: p.last_cycle(),
        instructions: p.instructions(),
        units,
        ops,
        layers,
        idle,
        labels,
        events,
        peak_macs,
        peak_mem_bytes,
        peak_vxm_ops,
    }
}

/// Idle cycles of each group with what was in flight (module doc).
fn idle_attribution(events: &[Event], labels: &[String], last: u64) -> Vec<Idle> {
    let n = last as usize + 2;
    // Groups: VXM, MEM, SXM, MXM plane 0..3.
    let group_of = |e: &Event| -> Option<usize> {
        match e.queue.unit() {
            Unit::Vxm => Some(0),
            Unit::Mem => Some(1),
            Unit::Sxm => Some(2),
            Unit::Mxm => match e.queue.kind() {
                q35_isa::QueueKind::Mxm(p) => Some(3 + usize::from(p).min(3)),
                q35_isa::QueueKind::Mem { .. }
                | q35_isa::QueueKind::Vxm(_)
                | q35_isa::QueueKind::Sxm(_) => None,
            },
            Unit::Control => None,
        }
    };
    let mut busy = vec![vec![0i32; n + 1]; 7];
    // In flight by kind: SXM, MXM, VXM, MEM.
    let mut flight = vec![vec![0i32; n + 1]; 4];
    let mut latest = vec![u32::MAX; n];
    let mut used = [false; 7];
    for e in events {
        let c = (e.cycle as usize).min(n - 1);
        if e.ins.info().unit != Unit::Control {
            latest[c] = e.label;
        }
        let Some(g) = group_of(e) else { continue };
        if e.ins.info().unit == Unit::Control {
            continue;
        }
        used[g] = true;
        let end = ((e.cycle + e.busy) as usize).min(n);
        busy[g][c] += 1;
        busy[g][end] -= 1;
        let k = match e.queue.unit() {
            Unit::Sxm => 0,
            Unit::Mxm => 1,
            Unit::Vxm => 2,
            Unit::Mem | Unit::Control => 3,
        };
        let end = ((e.cycle + e.extent) as usize).min(n);
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
    let mut by_op: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); 7];
    let (mut b, mut f) = ([0i32; 7], [0i32; 4]);
    let mut cur = u32::MAX;
    for c in 0..=(last as usize) {
        for g in 0..7 {
            b[g] += busy[g][c];
        }
        for k in 0..4 {
            f[k] += flight[k][c];
        }
        if latest[c] != u32::MAX {
            cur = latest[c];
        }
        let cause = f.iter().position(|&x| x > 0).unwrap_or(4);
        for g in 0..7 {
            if used[g] && b[g] == 0 {
                idle[g] += 1;
                by_cause[g][cause] += 1;
                *by_op[g].entry(cur).or_default() += 1;
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
                .map(|(&l, &v)| {
                    let name = labels
                        .get(l as usize)
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
    /// The step's profile as JSON.
    pub fn to_json(&self, top: usize) -> Value {
        json!({
            "total_cycles": self.total_cycles,
            "last_cycle": self.last_cycle,
            "instructions": self.instructions,
            "units": self.units.iter().map(|u| json!({
                "name": u.name, "kind": u.kind, "busy_cycles": u.busy,
                "queues": u.queues, "busy_fraction": u.fraction,
            })).collect::<Vec<_>>(),
            "ops": self.ops.iter().take(top).map(|o| json!({
                "label": o.label, "layer": o.layer, "kind": o.kind,
                "first_issue": o.first, "last_done": o.last, "span_cycles": o.span(),
                "busy_cycles": {"MEM": o.busy[0], "VXM": o.busy[1], "SXM": o.busy[2], "MXM": o.busy[3]},
                "instructions": o.instructions, "macs": o.macs, "weight_bytes": o.weight_bytes,
                "mem_read_bytes": o.mem_read_bytes, "vxm_ops": o.vxm_ops,
                "bound_cycles": o.bound_cycles, "bound_by": o.bound_by,
                "efficiency": o.efficiency(),
            })).collect::<Vec<_>>(),
            "layers": self.layers.iter().map(|l| json!({
                "name": l.name, "first_issue": l.first, "last_done": l.last,
                "span_cycles": l.last - l.first, "busy_cycles": l.busy, "ops": l.ops,
            })).collect::<Vec<_>>(),
            "idle": self.idle.iter().map(|i| json!({
                "unit": i.unit, "idle_cycles": i.idle,
                "causes": i.causes.iter().map(|(c, n)| json!({"cause": c, "cycles": n})).collect::<Vec<_>>(),
                "ops": i.ops.iter().map(|(c, n)| json!({"op": c, "cycles": n})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "peaks_per_cycle": {
                "macs": self.peak_macs, "mem_read_bytes": self.peak_mem_bytes,
                "vxm_ops": self.peak_vxm_ops,
            },
        })
    }

    /// The step's profile as text (`top` ops).
    pub fn to_text(&self, top: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
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
            "ops with the most busy unit cycles (span: first issue to last completion):"
        );
        for o in self.ops.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<24} {:>8} cycles [{}..{}], busy {:>8}, bound {:>9.1} ({}), {:>5.1}% of bound",
                o.label,
                o.span(),
                o.first,
                o.last,
                o.busy_total(),
                o.bound_cycles,
                o.bound_by,
                100.0 * o.efficiency()
            );
        }
        let mut layers = self.layers.clone();
        layers.sort_by(|a, b| b.busy.cmp(&a.busy).then(a.name.cmp(&b.name)));
        let _ = writeln!(out, "layers with the most busy unit cycles:");
        for l in layers.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<24} {:>8} cycles [{}..{}], busy {}, {} ops",
                l.name,
                l.last - l.first,
                l.first,
                l.last,
                l.busy,
                l.ops
            );
        }
        let _ = writeln!(
            out,
            "idle cycles by what was in flight (not a proven dependency: docs/profiling.md):"
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
