//! `--trace`: the file is what Perfetto's JSON importer accepts, checked by
//! a strict validator of the Trace Event Format (no Perfetto build runs
//! here: the `perfetto` package on PyPI downloads its trace processor from
//! the network on first use, which CI cannot do; docs/profiling.md).
//!
//! The trace is made from real runs of tests/lit/sim programs (a K = 640
//! matmul and the lane reduction: MEM, VXM, MXM and SXM work) given a debug
//! map, as two steps laid end to end. The validator checks the format's
//! rules (`ph` of X/B/E/C/M/i, `ts`/`dur` numbers in microseconds, integer
//! `pid`/`tid`, `displayTimeUnit`, metadata names and their args), every
//! track and process named, slices named by source op with its kind and
//! layer, both counters, and that no two slices of a track overlap once
//! converted to nanoseconds as Perfetto's importer does (`ts * 1000`
//! truncated): overlapping slices that do not nest are import errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use q35_sim::Machine;
use q35_sim::analysis::{StepProfile, analyse, kind_of, layer_of};
use q35_sim::trace::{TRACKS, TraceStep, cycle_ns, to_json};
use serde_json::Value;

/// A lit program as a binary whose debug map labels each queue's first
/// half and second half with two source ops.
fn program(name: &str) -> q35_lpubin::LpuBinary {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/lit/sim")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("readable");
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let program = q35_isa::assemble(name, &text).expect("assembles");
    let mut builder = program
        .to_lpubin(&config.target, "trace test")
        .expect("converts");
    let plain = q35_lpubin::LpuBinary::from_bytes(builder.to_bytes().expect("serialises"))
        .expect("reads back");
    for (i, q) in plain.queues().enumerate() {
        let block = i % 3;
        builder.debug(q.id(), 0, format!("blk.{block}.attn_q"));
        if q.len() > 2 {
            let second = if i % 2 == 0 {
                format!("blk.{block}.ffn_norm")
            } else {
                format!("lpu.kv_write @kcache_{block}")
            };
            builder.debug(q.id(), (q.len() / 2) as u32, second);
        }
    }
    q35_lpubin::LpuBinary::from_bytes(builder.to_bytes().expect("serialises")).expect("reads back")
}

fn profile(binary: &q35_lpubin::LpuBinary) -> StepProfile {
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let mut machine = Machine::new(binary, config.clone()).expect("loads");
    machine.set_record(true);
    machine.run_once().expect("runs");
    let t = &machine.recorded().expect("recorded").timelines[0];
    analyse(binary, machine.loaded(), &config, t)
}

fn int(v: &Value, what: &str) -> i64 {
    assert!(
        v.is_i64() || v.is_u64(),
        "{what} must be an integer, got {v}"
    );
    v.as_i64().expect("fits i64")
}

fn num(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} must be a number, got {v}"));
    assert!(x.is_finite() && x >= 0.0, "{what} = {x}");
    x
}

/// Perfetto's conversion of a JSON microsecond number to nanoseconds.
fn perfetto_ns(us: f64) -> i64 {
    (us * 1000.0) as i64
}

/// A slice as imported: pid, tid, start and end (ns), name, the event.
type Slice = (i64, i64, i64, i64, String, Value);

/// A track's slices: start, end, name.
type TrackSlices = Vec<(i64, i64, String)>;

/// What the validator saw.
#[derive(Debug, Default)]
struct Seen {
    processes: BTreeMap<i64, String>,
    threads: BTreeMap<(i64, i64), String>,
    slices: Vec<Slice>,
    counters: BTreeSet<String>,
}

/// Checks `trace` against the Trace Event Format as Perfetto imports it.
fn validate(trace: &Value) -> Seen {
    let top = trace.as_object().expect("the trace is a JSON object");
    for key in top.keys() {
        assert!(
            ["traceEvents", "displayTimeUnit", "otherData"].contains(&key.as_str()),
            "unknown top-level key {key}"
        );
    }
    let unit = top["displayTimeUnit"].as_str().expect("displayTimeUnit");
    assert!(unit == "ms" || unit == "ns", "displayTimeUnit {unit}");
    assert!(top["otherData"].is_object());
    let events = top["traceEvents"].as_array().expect("traceEvents array");
    let mut seen = Seen::default();
    for e in events {
        let o = e.as_object().expect("each event is an object");
        let ph = o["ph"].as_str().expect("ph is a string");
        let name = o["name"].as_str().expect("name is a string");
        assert!(!name.is_empty(), "an empty name: {e}");
        let pid = int(&o["pid"], "pid");
        assert!(pid > 0, "pid {pid}");
        let tid = o.get("tid").map(|t| int(t, "tid"));
        if let Some(args) = o.get("args") {
            assert!(args.is_object(), "args must be an object: {e}");
        }
        for key in o.keys() {
            assert!(
                ["name", "cat", "ph", "ts", "dur", "pid", "tid", "args", "s"]
                    .contains(&key.as_str()),
                "unknown event key {key}: {e}"
            );
        }
        match ph {
            "M" => {
                assert!(o.get("ts").is_none(), "metadata has no ts: {e}");
                let args = &o["args"];
                match name {
                    "process_name" => {
                        let n = args["name"].as_str().expect("process name");
                        assert!(
                            seen.processes.insert(pid, n.to_string()).is_none(),
                            "pid {pid} named twice"
                        );
                    }
                    "thread_name" => {
                        let n = args["name"].as_str().expect("thread name");
                        let tid = tid.expect("thread_name has a tid");
                        assert!(
                            seen.threads.insert((pid, tid), n.to_string()).is_none(),
                            "track {pid}/{tid} named twice"
                        );
                    }
                    "process_sort_index" | "thread_sort_index" => {
                        int(&args["sort_index"], "sort_index");
                    }
                    other => panic!("unknown metadata event {other}"),
                }
            }
            "X" => {
                let tid = tid.expect("a slice has a tid");
                let ts = num(&o["ts"], "ts");
                let dur = num(&o["dur"], "dur");
                assert!(o["cat"].is_string(), "cat: {e}");
                let start = perfetto_ns(ts);
                seen.slices.push((
                    pid,
                    tid,
                    start,
                    start + perfetto_ns(dur),
                    name.to_string(),
                    e.clone(),
                ));
            }
            "C" => {
                num(&o["ts"], "ts");
                let args = o["args"].as_object().expect("counter args");
                assert!(!args.is_empty(), "a counter with no series: {e}");
                for (k, v) in args {
                    num(v, k);
                }
                seen.counters.insert(name.to_string());
            }
            "B" | "E" | "i" | "I" => {
                num(&o["ts"], "ts");
                tid.expect("a thread event has a tid");
            }
            other => panic!("ph {other} is not one q35sim writes: {e}"),
        }
    }
    // Every slice's process and track named; no overlap on a track.
    let mut tracks: BTreeMap<(i64, i64), TrackSlices> = BTreeMap::new();
    for (pid, tid, a, b, name, _) in &seen.slices {
        assert!(seen.processes.contains_key(pid), "pid {pid} has no name");
        assert!(
            seen.threads.contains_key(&(*pid, *tid)),
            "track {pid}/{tid} has no name"
        );
        assert!(b >= a);
        tracks
            .entry((*pid, *tid))
            .or_default()
            .push((*a, *b, name.clone()));
    }
    for (track, mut v) in tracks {
        v.sort();
        for w in v.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "track {track:?}: {} [{}, {}) overlaps {} [{}, {}) after import",
                w[0].2,
                w[0].0,
                w[0].1,
                w[1].2,
                w[1].0,
                w[1].1
            );
        }
    }
    seen
}

#[test]
fn trace_is_valid_trace_event_format() {
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let a = program("mxm-matmul-k640.lpuasm");
    let b = program("sxm-reduce-f32.lpuasm");
    let (pa, pb) = (profile(&a), profile(&b));
    let steps = [
        TraceStep {
            step: &pa,
            name: "step 0: prefill token 1 at position 0".into(),
            offset: 0,
        },
        TraceStep {
            step: &pb,
            name: "step 1: decode token 2 at position 1".into(),
            offset: pa.total_cycles,
        },
    ];
    let trace = to_json(&steps, &config);
    // Through text and back, as a viewer reads it.
    let text = serde_json::to_string(&trace).expect("serialises");
    let trace: Value = serde_json::from_str(&text).expect("parses");
    let seen = validate(&trace);

    assert_eq!(
        seen.processes.values().cloned().collect::<Vec<_>>(),
        vec![steps[0].name.clone(), steps[1].name.clone()]
    );
    for pid in [1, 2] {
        let names: Vec<&str> = seen
            .threads
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(
            names,
            TRACKS.iter().map(|t| t.1).collect::<Vec<_>>(),
            "a track per unit and per plane"
        );
    }
    // The units that worked have slices: the matmul's plane, the
    // reduction's SXM, MEM and VXM.
    let used: BTreeSet<String> = seen
        .slices
        .iter()
        .map(|s| seen.threads[&(s.0, s.1)].clone())
        .collect();
    assert!(used.contains("VXM"), "no slice on the VXM: {used:?}");
    for unit in ["MEM", "MXM", "SXM"] {
        assert!(
            used.iter().any(|u| u.starts_with(unit)),
            "no slice on {unit}: {used:?}"
        );
    }
    // Slices named by source op, with its kind and layer.
    let labels: BTreeSet<String> = pa.labels.iter().chain(&pb.labels).cloned().collect();
    for (_, _, _, _, name, e) in &seen.slices {
        assert!(labels.contains(name), "slice {name} is not a source op");
        assert_eq!(e["cat"].as_str(), Some(kind_of(name).as_str()));
        assert_eq!(e["args"]["layer"].as_str(), Some(layer_of(name).as_str()));
    }
    let named: BTreeSet<&str> = seen.slices.iter().map(|s| s.4.as_str()).collect();
    assert!(named.contains("blk.0.attn_q"), "{named:?}");
    assert!(
        named.iter().any(|n| n.starts_with("lpu.kv_write"))
            || named.iter().any(|n| n.ends_with("ffn_norm")),
        "{named:?}"
    );
    // The second step starts where the first ends, at the clock.
    let first_b = seen
        .slices
        .iter()
        .filter(|s| s.0 == 2)
        .map(|s| s.2)
        .min()
        .expect("slices in step 2");
    let start_b = cycle_ns(pa.total_cycles, config.target.clock_mhz) as i64;
    assert!(
        first_b >= start_b,
        "step 2 starts at {first_b} ns, before {start_b}"
    );
    let slice_cycles: Vec<u64> = seen
        .slices
        .iter()
        .filter(|s| s.0 == 1)
        .map(|s| s.5["args"]["first_cycle"].as_u64().expect("first_cycle"))
        .collect();
    for ((_, _, a, _, _, _), c) in seen.slices.iter().filter(|s| s.0 == 1).zip(slice_cycles) {
        assert_eq!(
            *a,
            cycle_ns(c, config.target.clock_mhz) as i64,
            "ts of cycle {c}"
        );
    }
    // Counters for stream and MEM use.
    assert!(
        seen.counters.contains("stream registers in use"),
        "{:?}",
        seen.counters
    );
    assert!(
        seen.counters.iter().any(|c| c.starts_with("MEM accesses")),
        "{:?}",
        seen.counters
    );
}

#[test]
fn validator_rejects_overlap_and_bad_fields() {
    let ok = serde_json::json!({"traceEvents": [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "p"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "t"}},
        {"name": "a", "cat": "a", "ph": "X", "ts": 0.0005, "dur": 0.003, "pid": 1, "tid": 1},
        {"name": "b", "cat": "b", "ph": "X", "ts": 0.0035, "dur": 0.001, "pid": 1, "tid": 1},
    ], "displayTimeUnit": "ns", "otherData": {}});
    validate(&ok);
    let bad = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        std::panic::catch_unwind(|| validate(&v)).is_err()
    };
    // 1.003 us truncates to 1002 ns: b would start inside a.
    assert!(bad(
        &|v| v["traceEvents"][3]["ts"] = serde_json::json!(0.002)
    ));
    assert!(bad(&|v| v["traceEvents"][2]["pid"] = serde_json::json!("1")));
    assert!(bad(&|v| v["traceEvents"][2]["tid"] = serde_json::json!(1.5)));
    assert!(bad(&|v| v["traceEvents"][2]["ts"] = serde_json::json!("0")));
    assert!(bad(&|v| v["traceEvents"][2]["ph"] = serde_json::json!("Q")));
    assert!(bad(&|v| v["displayTimeUnit"] = serde_json::json!("us")));
    assert!(bad(&|v| v["traceEvents"][1]["pid"] = serde_json::json!(2)));
}

/// Without its events (`Events::Drop`, what `q35sim profile` and `run` use
/// when no trace or report is asked for) a step's profile is the same in
/// every other field: the cycles, units, ops, layers and idle attribution.
#[test]
fn dropping_the_events_changes_nothing_else() {
    use q35_sim::analysis::{Events, analyse_events};
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    for name in ["mxm-matmul-k640.lpuasm", "sxm-reduce-f32.lpuasm"] {
        let binary = program(name);
        let mut machine = Machine::new(&binary, config.clone()).expect("loads");
        machine.set_record(true);
        machine.run_once().expect("runs");
        let t = &machine.recorded().expect("recorded").timelines[0];
        let kept = analyse_events(binary.debug(), machine.loaded(), &config, t, Events::Keep);
        let lean = analyse_events(binary.debug(), machine.loaded(), &config, t, Events::Drop);
        assert_eq!(kept.events.len() as u64, kept.instructions, "{name}");
        assert!(lean.events.is_empty(), "{name}");
        assert_eq!(kept.to_json(usize::MAX), lean.to_json(usize::MAX), "{name}");
        assert_eq!(kept.to_text(usize::MAX), lean.to_text(usize::MAX), "{name}");
        assert!(
            kept.idle.iter().any(|i| i.idle > 0),
            "{name}: idle cycles attributed"
        );
    }
}
