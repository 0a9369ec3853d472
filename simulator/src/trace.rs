//! `--trace FILE.json`: a Chrome trace-event file (the Trace Event Format
//! that Perfetto's JSON importer and chrome://tracing read) of one or more
//! steps.
//!
//! One process per step (`pid` = step + 1, steps laid end to end at the
//! target's clock); one track (`tid`) per functional unit: MEM west and
//! east (every slice of the hemisphere), VXM (every ALU), each MXM plane,
//! each SXM. A slice (`ph: X`) is a run of one source op's instructions on
//! a track, named by the op (`blk.3.attn_q`: source op and layer; `cat` is
//! the op kind, `args.layer` the layer): consecutive instructions of one
//! label merge into one slice (from the first issue to the end of the last
//! one's occupancy), and a slice ends where another op's instruction
//! starts, so slices on a track never overlap and the file stays bounded by
//! the number of op changes, not instructions. Counters (`ph: C`) per cycle
//! bucket: stream registers holding a value (average), MEM reads and
//! writes.
//!
//! Times: `ts` and `dur` are microseconds (the format's unit; Perfetto
//! ignores `displayTimeUnit` for them). Every boundary is first snapped to
//! a whole nanosecond `n` of the step's clock; `ts` is written as
//! `(n + 0.5) / 1000` and `dur` as `(end - start) / 1000`, so Perfetto's
//! importer, which truncates `value * 1000` to an integer nanosecond, gets
//! exactly `n` for a start and at most the true end for an end: adjacent
//! slices can touch but never overlap after import.

use q35_isa::{Dir, Instruction, QueueKind, Unit};
use serde_json::{Value, json};

use crate::analysis::{Event, StepProfile};
use crate::config::MachineConfig;

/// Track ids and names, in display order.
pub const TRACKS: [(u32, &str); 10] = [
    (1, "MEM west"),
    (2, "MEM east"),
    (3, "VXM"),
    (4, "MXM mxm.0"),
    (5, "MXM mxm.1"),
    (6, "MXM mxm.2"),
    (7, "MXM mxm.3"),
    (8, "SXM sxm.w"),
    (9, "SXM sxm.e"),
    (10, "C2C links"),
];

/// The track of an event (`None`: control).
pub fn track_of(e: &Event) -> Option<u32> {
    use q35_isa::Hemisphere::{East, West};
    if e.ins.info().unit == Unit::Control {
        return None;
    }
    Some(match e.queue.kind() {
        QueueKind::Mem {
            hemisphere: West, ..
        } => 1,
        QueueKind::Mem {
            hemisphere: East, ..
        } => 2,
        QueueKind::Vxm(_) => 3,
        QueueKind::Mxm(p) => 4 + u32::from(p).min(3),
        QueueKind::Sxm(West) => 8,
        QueueKind::Sxm(East) => 9,
        QueueKind::C2c(_) => 10,
    })
}

/// Cycle `c` at `clock_mhz` in whole nanoseconds (rounded down).
pub fn cycle_ns(c: u64, clock_mhz: f64) -> u64 {
    (c as f64 * 1000.0 / clock_mhz).floor() as u64
}

/// A start at `ns` nanoseconds as the format's microseconds (module doc:
/// half a nanosecond late, so that truncating `ts * 1000` gives `ns`).
fn ts_us(ns: u64) -> f64 {
    (ns as f64 + 0.5) / 1000.0
}

/// A merged slice: (track, label index, start cycle, end cycle).
pub type Slice = (u32, u32, u64, u64);

/// The merged slices of a step, by track then start.
pub fn slices(step: &StepProfile) -> Vec<Slice> {
    let mut per: Vec<Vec<(u64, u64, u32)>> = vec![Vec::new(); TRACKS.len() + 1];
    for e in &step.events {
        if let Some(t) = track_of(e) {
            per[t as usize].push((e.cycle, e.cycle + e.busy.max(1), e.label));
        }
    }
    let mut out = Vec::new();
    for (t, evs) in per.iter_mut().enumerate() {
        evs.sort_unstable();
        let mut cur: Option<(u32, u64, u64)> = None;
        for &(s, e, l) in evs.iter() {
            cur = match cur {
                Some((cl, cs, ce)) if cl == l => Some((cl, cs, ce.max(e))),
                Some((cl, cs, ce)) => {
                    let end = ce.min(s).max(cs + 1);
                    out.push((t as u32, cl, cs, end));
                    Some((l, s.max(end), e.max(s.max(end) + 1)))
                }
                None => Some((l, s, e)),
            };
        }
        if let Some((cl, cs, ce)) = cur {
            out.push((t as u32, cl, cs, ce));
        }
    }
    out
}

/// Counters per bucket of `bucket` cycles: (first cycle, stream registers
/// in use on average, MEM reads, MEM writes).
pub fn counters(
    step: &StepProfile,
    config: &MachineConfig,
    bucket: u64,
) -> Vec<(u64, f64, u64, u64)> {
    let bucket = bucket.max(1);
    let n = (step.total_cycles / bucket + 1) as usize;
    let cycles = (n as u64 * bucket) as usize + 1;
    let mut use_diff = vec![0i64; cycles + 1];
    let mut reads = vec![0u64; n];
    let mut writes = vec![0u64; n];
    let hop = config.hop;
    let width = u64::from(config.width);
    let wl = config.mem.write_latency;
    for e in &step.events {
        let b = |c: u64| ((c / bucket) as usize).min(n - 1);
        if matches!(e.ins, Instruction::Read { .. } | Instruction::Gather { .. }) {
            reads[b(e.cycle)] += 1;
        }
        if matches!(
            e.ins,
            Instruction::Write { .. } | Instruction::Scatter { .. }
        ) {
            writes[b(e.cycle + wl.saturating_sub(1))] += 1;
        }
        let p = u64::from(config.position(e.queue));
        let w = e.cycle + config.latency(e.ins.latency_class());
        for g in e.ins.writes().iter() {
            let exit = match g.first.dir {
                Dir::East => w + width.saturating_sub(p) * hop,
                Dir::West => w + (p + 1) * hop,
            };
            let (s, x) = ((w as usize).min(cycles), (exit as usize).min(cycles));
            use_diff[s] += i64::from(g.count);
            use_diff[x] -= i64::from(g.count);
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut cur = 0i64;
    for i in 0..n {
        let mut sum = 0i64;
        let range = (i as u64 * bucket) as usize..((i as u64 + 1) * bucket) as usize;
        for d in &use_diff[range] {
            cur += d;
            sum += cur;
        }
        out.push((
            i as u64 * bucket,
            sum as f64 / bucket as f64,
            reads[i],
            writes[i],
        ));
    }
    out
}

/// One step to show: its profile, a process name, and where it starts (cycles).
#[derive(Debug)]
pub struct TraceStep<'a> {
    /// The step's profile.
    pub step: &'a StepProfile,
    /// Process name (`step 3: decode token 17 at position 3`).
    pub name: String,
    /// First cycle of the step on the trace's time axis.
    pub offset: u64,
}

/// The trace as JSON (`clock_mhz` converts cycles to microseconds).
pub fn to_json(steps: &[TraceStep<'_>], config: &MachineConfig) -> Value {
    let mhz = config.target.clock_mhz;
    let mut ev: Vec<Value> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let pid = i as u64 + 1;
        ev.push(json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": s.name}}));
        ev.push(json!({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}}));
        for (tid, name) in TRACKS {
            ev.push(json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}));
            ev.push(json!({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}}));
        }
        for (tid, l, a, b) in slices(s.step) {
            let label = &s.step.labels[l as usize];
            let (na, nb) = (cycle_ns(s.offset + a, mhz), cycle_ns(s.offset + b, mhz));
            ev.push(json!({
                "name": label, "cat": crate::analysis::kind_of(label), "ph": "X",
                "ts": ts_us(na), "dur": (nb - na) as f64 / 1000.0,
                "pid": pid, "tid": tid,
                "args": {"first_cycle": a, "end_cycle": b, "layer": crate::analysis::layer_of(label)},
            }));
        }
        let bucket = (s.step.total_cycles / 500).max(1);
        for (c, streams, r, w) in counters(s.step, config, bucket) {
            let ts = ts_us(cycle_ns(s.offset + c, mhz));
            ev.push(json!({"name": "stream registers in use", "ph": "C", "ts": ts, "pid": pid, "args": {"registers": streams}}));
            ev.push(json!({"name": format!("MEM accesses per {bucket} cycles"), "ph": "C", "ts": ts, "pid": pid, "args": {"reads": r, "writes": w}}));
        }
    }
    json!({
        "traceEvents": ev,
        "displayTimeUnit": "ns",
        "otherData": {"producer": "q35sim", "target": config.target_name, "clock_mhz": config.target.clock_mhz},
    })
}

/// Adds a system's link traffic to a trace whose process `i + 1` is chip
/// `i` (as [`to_json`] numbers the steps it is given, one per chip): for
/// each vector chip `c` took (`received[c]`, [`crate::system::ChipRun`]),
/// a flow arrow from the sender's `send`/`fwd` to the taking `recv`/`fwd`
/// on the `C2C links` tracks, and a `waiting on link L` slice on the
/// receiver's track from the vector's arrival to its taking when it
/// waited. Only chips with a process in the trace are drawn.
pub fn add_transfers(
    trace: &mut Value,
    received: &[&[crate::link::Transfer]],
    traced: usize,
    config: &MachineConfig,
) {
    let mhz = config.target.clock_mhz;
    let Some(events) = trace.get_mut("traceEvents").and_then(Value::as_array_mut) else {
        return;
    };
    let mut id = 0u64;
    for (c, list) in received.iter().enumerate().take(traced) {
        let pid = c as u64 + 1;
        for t in *list {
            if t.taken > t.arrival {
                let (na, nb) = (cycle_ns(t.arrival, mhz), cycle_ns(t.taken, mhz));
                events.push(json!({
                    "name": format!("waiting on link {}", t.link), "cat": "c2c", "ph": "X",
                    "ts": ts_us(na), "dur": (nb - na) as f64 / 1000.0,
                    "pid": pid, "tid": 10,
                    "args": {"arrival_cycle": t.arrival, "taken_cycle": t.taken},
                }));
            }
            let from = t.from.chip as usize;
            if from >= traced {
                continue;
            }
            id += 1;
            events.push(json!({
                "name": "link", "cat": "c2c", "ph": "s", "id": id,
                "ts": ts_us(cycle_ns(t.from.cycle, mhz)), "pid": from as u64 + 1, "tid": 10,
            }));
            events.push(json!({
                "name": "link", "cat": "c2c", "ph": "f", "bp": "e", "id": id,
                "ts": ts_us(cycle_ns(t.taken, mhz)), "pid": pid, "tid": 10,
            }));
        }
    }
}
