//! The ISA against the lpu-v1 target: latencies, queue positions, and the
//! timing of docs/isa.md's example checked with them.

use q35_isa::{Instruction, QueueId, assemble};
use q35_target::Target;

fn target() -> Target {
    Target::builtin("lpu-v1").expect("the built-in target")
}

#[test]
fn latencies_and_positions_come_from_the_target() {
    let t = target();
    q35_isa::check_target(&t).expect("lpu-v1 has the ISA's shape");
    let parse = |s: &str| s.parse::<Instruction>().expect("valid");
    assert_eq!(parse("read 0, s0.e").latency(&t), t.mem.read_latency_cycles);
    assert_eq!(
        parse("fdiv s0.e, s4.e -> s8.e").latency(&t),
        t.vxm.special_latency
    );
    assert_eq!(
        u64::from(parse("mm s0.w -> s4.e, new").latency(&t)),
        t.mxm_latency()
    );
    // 20 x 20 processing elements of 16 x 16 MACs (docs/mxm-timing.md).
    assert_eq!(parse("mm s0.w -> s4.e, new").latency(&t), 40);
    assert_eq!(parse("notify").latency(&t), t.icu.notify_latency_cycles);
    assert_eq!(parse("halt").latency(&t), 0);
    // docs/isa.md 1: MXM W 0, SXM W 1, MEM W43..W0 2..45, VXM 46, MEM E0..E43 47..90, SXM E 91, MXM E 92.
    let pos = |q: &str| q.parse::<QueueId>().expect("queue").position(&t);
    assert_eq!(pos("mxm.0"), Some(0));
    assert_eq!(pos("mxm.1"), Some(0));
    assert_eq!(pos("sxm.w"), Some(1));
    assert_eq!(pos("mem.w43"), Some(2));
    assert_eq!(pos("mem.w0"), Some(45));
    assert_eq!(pos("vxm.7"), Some(46));
    assert_eq!(pos("mem.e0"), Some(47));
    assert_eq!(pos("mem.e43"), Some(90));
    assert_eq!(pos("sxm.e"), Some(91));
    assert_eq!(pos("mxm.3"), Some(92));
    // The dense numbering runs west to east over the MEM slices.
    let mem: Vec<u32> = QueueId::all()
        .filter(|q| q.unit() == q35_isa::Unit::Mem)
        .filter_map(|q| q.position(&t))
        .collect();
    assert_eq!(mem, (2..=45).chain(47..=90).collect::<Vec<u32>>());
}

/// Issue cycle of instruction `i` of a queue (no sync/notify in the list).
fn issue(list: &[Instruction], i: usize) -> u64 {
    list[..i].iter().map(Instruction::issue_cycles).sum()
}

#[test]
fn doc_example_timing_holds_on_lpu_v1() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/isa.md"))
        .expect("docs/isa.md is readable");
    let start = doc.find("```lpuasm\n").expect("an ```lpuasm block") + 10;
    let len = doc[start..].find("```").expect("closed");
    let p = assemble("isa.md", &doc[start..start + len]).expect("assembles");
    let t = target();
    p.validate_target(&t).expect("fits lpu-v1");
    let q = |s: &str| s.parse::<QueueId>().expect("queue");
    let vxm = p.queues[&q("vxm.0")].as_slice();
    let fadd_at = issue(vxm, 1);
    let vxm_pos = u64::from(t.vxm_position());
    let hops = |queue: QueueId| {
        u64::from(queue.position(&t).expect("placed")).abs_diff(vxm_pos)
            * u64::from(t.streams.hop_cycles)
    };
    // Every read's value reaches the VXM on the cycle fadd reads it.
    for (&queue, list) in &p.queues {
        for (i, ins) in list.iter().enumerate() {
            if let Instruction::Read { .. } = ins {
                let arrives = issue(list, i) + u64::from(ins.latency(&t)) + hops(queue);
                assert_eq!(arrives, fadd_at, "{queue} read");
            } else if let Instruction::Write { .. } = ins {
                let sum_at = fadd_at + u64::from(vxm[1].latency(&t)) + hops(queue);
                assert_eq!(issue(list, i), sum_at, "{queue} write");
            }
        }
    }
}
