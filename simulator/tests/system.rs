//! Many chips (`q35_sim::System`): vectors cross links with the planned
//! timing (one hop, a ring of a node, three hops across two nodes of a
//! Dragonfly with forwarding), link hazards name chip, queue, instruction
//! and cycle, results are identical for 1, 2 and 3 host threads, and the
//! timing-only mode gives a run's cycles and link figures without values.

use q35_lpubin::LpuBinary;
use q35_sim::system::{SystemRun, SystemStop};
use q35_sim::{HazardKind, MachineConfig, System};

fn config() -> MachineConfig {
    q35_sim::config::load_target(None).expect("lpu-v1")
}

fn binary(text: &str, config: &MachineConfig) -> LpuBinary {
    let program = q35_isa::assemble("test.lpuasm", text).expect("assembles");
    let bytes = program
        .to_lpubin(&config.target, "system test")
        .expect("encodes")
        .to_bytes()
        .expect("bytes");
    LpuBinary::from_bytes(bytes).expect("reads back")
}

/// MEM slice `mem.e0` (dense 44) word 8 of chip `chip`.
fn received(system: &System, chip: usize) -> Vec<u8> {
    system.state(chip).expect("state").mem[44].word(8).to_vec()
}

/// A chip that sends a vector (lane 0 = `value + 1`, the rest 0) on link
/// `out` on cycle 2 (read from `mem.w0` on cycle 0: position 45, one hop to
/// the ports at 46), and receives on link `inp` on cycle `recv` into
/// `mem.e0` word 8 (on the stream at 46 on `recv + 1`, at 47 on `recv + 2`).
fn sender_receiver(value: u8, out: Option<u32>, inp: Option<(u32, u64)>) -> String {
    let mut s = format!(
        ".target lpu-v1\n.mem mem.w0 @0 u8 [{}]\n.mem mem.w0 @1 u8 fill {value}, 320\n",
        value + 1
    );
    if let Some(out) = out {
        s += "\n.queue mem.w0\n    read 0, s0.e\n    halt\n";
        s += &format!(".queue c2c.{out}\n    nop 2\n    send s0.e\n    halt\n");
    }
    if let Some((inp, recv)) = inp {
        s += &format!(".queue c2c.{inp}\n    nop {recv}\n    recv s1.e\n    halt\n");
        s += &format!(
            ".queue mem.e0\n    nop {}\n    write 8, s1.e\n    halt\n",
            recv + 2
        );
    }
    s
}

fn expected(value: u8) -> Vec<u8> {
    let mut v = vec![0u8; 320];
    v[0] = value + 1;
    v
}

#[test]
fn one_hop_between_two_chips() {
    let config = config();
    // Chip 0's local link 0 reaches chip 1, arriving on its link 6.
    let a = binary(&sender_receiver(10, Some(0), None), &config);
    let b = binary(&sender_receiver(20, None, Some((6, 502))), &config);
    let mut system = System::new(&[&a, &b], config.clone()).expect("a system");
    let run = system.run_once().expect("no hazard");
    assert_eq!(received(&system, 1), expected(10));
    // Chip 1: its last event is the `halt` after the write on 504, plus
    // the superlane skew.
    assert_eq!(run.chips[1].profile.total_cycles(), 505 + 19);
    assert_eq!(run.cycles, 524);
    let out = &run.chips[0].links;
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].link, out[0].to.chip, out[0].to.link), (0, 1, 6));
    assert_eq!(
        (out[0].sent, out[0].received, out[0].busy_cycles),
        (1, 0, 20)
    );
    let inp = &run.chips[1].links;
    assert_eq!(
        (inp[0].link, inp[0].received, inp[0].waited_cycles),
        (6, 1, 0)
    );
    // The vector chip 1 took: sent by chip 0's `send` (#1 of c2c.0) on
    // cycle 2, arrived on link 6 on 502, taken by `recv` (#1 of c2c.6) then.
    let got = &run.chips[1].received;
    assert_eq!(got.len(), 1);
    let t = got[0];
    assert_eq!(
        (
            t.from.chip,
            t.from.queue.to_string(),
            t.from.index,
            t.from.cycle
        ),
        (0, "c2c.0".to_string(), 1, 2)
    );
    assert_eq!(
        (t.link, t.arrival, t.queue.to_string(), t.index, t.taken),
        (6, 502, "c2c.6".to_string(), 1, 502)
    );
    // The timing-only mode agrees.
    assert_eq!(system.timing().expect("no hazard"), run);
    // And a second run on the same system too.
    assert_eq!(system.run_once().expect("no hazard"), run);
}

/// An 8-chip ring over local link 0 (chip i to chip i + 1, arriving on link 6).
fn ring(config: &MachineConfig) -> Vec<LpuBinary> {
    (0..8u8)
        .map(|i| binary(&sender_receiver(i * 3, Some(0), Some((6, 502))), config))
        .collect()
}

fn run_with(
    programs: &[&LpuBinary],
    threads: usize,
) -> (Result<SystemRun, SystemStop>, Vec<Vec<u8>>) {
    let mut system = System::new(programs, config()).expect("a system");
    system.set_threads(threads);
    let run = system.run_once();
    let mem = (0..programs.len())
        .map(|c| {
            // The words these programs touch (whole MEM is 230 MB a chip).
            let mem = &system.state(c).expect("state").mem;
            [mem[43].bytes(), mem[44].bytes()]
                .iter()
                .flat_map(|s| s[..16 * 320].iter().copied())
                .collect()
        })
        .collect();
    (run, mem)
}

#[test]
fn a_ring_of_a_node_is_the_same_on_any_thread_count() {
    let config = config();
    let programs = ring(&config);
    let refs: Vec<&LpuBinary> = programs.iter().collect();
    let (one, mem1) = run_with(&refs, 1);
    let run = one.clone().expect("no hazard");
    for threads in [2, 3, 8] {
        let (other, mem) = run_with(&refs, threads);
        assert_eq!(other, one, "{threads} threads");
        assert!(mem == mem1, "{threads} threads: MEM differs");
    }
    let mut system = System::new(&refs, config).expect("a system");
    system.run_once().expect("no hazard");
    for chip in 0..8u8 {
        let from = (chip + 7) % 8;
        assert_eq!(
            received(&system, usize::from(chip)),
            expected(from * 3),
            "chip {chip}"
        );
    }
    assert_eq!(run.cycles, 524);
    assert_eq!(system.timing().expect("no hazard"), run);
    // A hazard is the same on any thread count too: chip 5 receives early.
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let mut early: Vec<LpuBinary> = ring(&config);
    early[5] = binary(&sender_receiver(15, Some(0), Some((6, 480))), &config);
    let refs: Vec<&LpuBinary> = early.iter().collect();
    let (h1, _) = run_with(&refs, 1);
    for threads in [2, 4] {
        assert_eq!(run_with(&refs, threads).0, h1);
    }
    let Err(SystemStop::Hazard(h)) = h1 else {
        panic!("expected a hazard, got {h1:?}");
    };
    assert_eq!(
        (h.chip, h.hazard.cycle, h.hazard.queue.to_string()),
        (5, 480, "c2c.6".into())
    );
}

#[test]
fn three_hops_across_two_nodes_with_forwarding() {
    let config = config();
    let system_shape = config.target.system(16).expect("two nodes");
    // Chip 1 (node 0) to chip 9 (node 1): to chip 0, over chip 0's global
    // link 7 to chip 8, then to chip 9.
    let route = system_shape.route(1, 9).expect("a route");
    let hops: Vec<(u32, u32, u32, u32)> = route
        .iter()
        .map(|h| (h.from.chip, h.from.link, h.to.chip, h.to.link))
        .collect();
    assert_eq!(hops, [(1, 6, 0, 0), (0, 7, 8, 7), (8, 0, 9, 6)]);
    assert_eq!(system_shape.latency_cycles(1, 9).expect("route"), 1500);
    let empty = binary(".target lpu-v1\n", &config);
    let sender = binary(&sender_receiver(42, Some(6), None), &config);
    let fwd0 = binary(
        ".target lpu-v1\n.queue c2c.7\n    nop 502\n    fwd 0\n    halt\n",
        &config,
    );
    let fwd8 = binary(
        ".target lpu-v1\n.queue c2c.0\n    nop 1002\n    fwd 7\n    halt\n",
        &config,
    );
    let receiver = binary(&sender_receiver(0, None, Some((6, 1502))), &config);
    let mut refs: Vec<&LpuBinary> = vec![&empty; 16];
    refs[1] = &sender;
    refs[0] = &fwd0;
    refs[8] = &fwd8;
    refs[9] = &receiver;
    let mut system = System::new(&refs, config.clone()).expect("a system");
    let run = system.run_once().expect("no hazard");
    assert_eq!(received(&system, 9), expected(42));
    assert_eq!(run.cycles, 1505 + 19);
    assert_eq!(system.timing().expect("no hazard"), run);
    // Forwarding one cycle early at chip 8 is a hazard there.
    let early = binary(
        ".target lpu-v1\n.queue c2c.0\n    nop 1001\n    fwd 7\n    halt\n",
        &config,
    );
    refs[8] = &early;
    let mut system = System::new(&refs, config).expect("a system");
    let Err(SystemStop::Hazard(h)) = system.run_once() else {
        panic!("expected a hazard");
    };
    assert_eq!(h.chip, 8);
    assert_eq!(h.hazard.cycle, 1001);
    assert_eq!(
        h.hazard.kind,
        HazardKind::LinkReceiveBeforeArrival {
            link: 7,
            next: Some(1002)
        }
    );
    assert_eq!(
        h.to_string(),
        "chip 8: cycle 1001: queue c2c.0, instruction #1 `fwd 7`: receive before arrival: no vector has arrived on link 7 (the next one arrives on cycle 1002)"
    );
    assert_eq!(system.timing(), Err(SystemStop::Hazard(h)));
}

#[test]
fn link_hazards() {
    let config = config();
    let quiet = binary(".target lpu-v1\n", &config);
    // Two sends 19 cycles apart on one link: a vector holds it for 20.
    let twice = binary(
        ".target lpu-v1\n.mem mem.w0 @0 u8 [1]\n.queue mem.w0\n    read 0, s0.e\n    nop 18\n    read 0, s0.e\n    halt\n\
         .queue c2c.0\n    nop 2\n    send s0.e\n    nop 18\n    send s0.e\n    halt\n",
        &config,
    );
    let mut system = System::new(&[&twice, &quiet], config.clone()).expect("a system");
    let Err(SystemStop::Hazard(h)) = system.run_once() else {
        panic!("expected a hazard");
    };
    assert_eq!(
        h.to_string(),
        "chip 0: cycle 21: queue c2c.0, instruction #3 `send s0.e`: link overrun: link 0 still carries the vector sent on cycle 2 until cycle 22"
    );
    assert_eq!(system.timing(), Err(SystemStop::Hazard(h)));
    // Sent and never received.
    let once = binary(&sender_receiver(1, Some(0), None), &config);
    let mut system = System::new(&[&once, &quiet], config.clone()).expect("a system");
    let Err(SystemStop::Hazard(h)) = system.run_once() else {
        panic!("expected a hazard");
    };
    assert_eq!(h.chip, 1);
    assert_eq!(h.hazard.cycle, 502);
    assert!(
        h.to_string().contains(
            "vector never received: the vector sent by chip 0 c2c.0 #1 on cycle 2 arrived on link 6"
        ),
        "{h}"
    );
    assert_eq!(system.timing(), Err(SystemStop::Hazard(h)));
    // Three vectors 20 cycles apart into a buffer of 2, taken late: the
    // third arrives (cycle 542) while the first two are held.
    let three = binary(
        ".target lpu-v1\n.mem mem.w0 @0 u8 [1]\n.queue mem.w0\n    read 0, s0.e\n    nop 19\n    read 0, s0.e\n    nop 19\n    read 0, s0.e\n    halt\n\
         .queue c2c.0\n    nop 2\n    send s0.e\n    nop 19\n    send s0.e\n    nop 19\n    send s0.e\n    halt\n",
        &config,
    );
    let late = binary(
        ".target lpu-v1\n.queue c2c.6\n    nop 600\n    recv s1.e\n    repeat 2, 1, 0\n    halt\n",
        &config,
    );
    let mut system = System::new(&[&three, &late], config.clone()).expect("a system");
    let Err(SystemStop::Hazard(h)) = system.run_once() else {
        panic!("expected a hazard");
    };
    assert_eq!((h.chip, h.hazard.cycle), (1, 542));
    assert!(
        matches!(
            h.hazard.kind,
            HazardKind::LinkBufferOverrun {
                link: 6,
                held: 2,
                ..
            }
        ),
        "{h}"
    );
    // An arrival at the link's end, reported there in both modes.
    assert_eq!(
        h.to_string(),
        "chip 1: cycle 542: queue c2c.6, instruction #0 `(link end)`: receive buffer overrun: the vector sent by chip 0 c2c.0 #5 on cycle 42 arrived on link 6 while it held 2 vectors not yet received"
    );
    assert_eq!(system.timing(), Err(SystemStop::Hazard(h)));
    // A lone chip's links reach nothing.
    let mut system = System::new(&[&once], config).expect("a system of one chip");
    let Err(SystemStop::Hazard(h)) = system.run_once() else {
        panic!("expected a hazard");
    };
    assert_eq!(h.hazard.kind, HazardKind::LinkNotConnected { link: 0 });
}

#[test]
fn systems_the_topology_refuses() {
    let config = config();
    let quiet = binary(".target lpu-v1\n", &config);
    let e = System::new(&[&quiet; 12], config).unwrap_err().to_string();
    assert!(e.contains("12 chips are not whole nodes"), "{e}");
}

#[test]
fn timing_only_of_576_chips_walks_one_program() {
    let config = config();
    // Every chip runs the same ring program: each node of 8 is a ring.
    let one = binary(&sender_receiver(5, Some(0), Some((6, 502))), &config);
    let refs: Vec<&LpuBinary> = vec![&one; 576];
    let run = q35_sim::system::timing_of(&refs, &config)
        .expect("a system of 72 nodes")
        .expect("no hazard");
    assert_eq!(run.cycles, 524);
    assert_eq!(run.chips.len(), 576);
    for c in &run.chips {
        let sent: u64 = c.links.iter().map(|l| l.sent).sum();
        let got: u64 = c.links.iter().map(|l| l.received).sum();
        assert_eq!((sent, got), (1, 1));
    }
    // (How fast one static walk for 576 chips is belongs in a benchmark,
    // not in a wall-clock assertion here.)
    // The same as the timing of a built system, for a node.
    let node: Vec<&LpuBinary> = vec![&one; 8];
    let system = System::new(&node, config.clone()).expect("a node");
    assert_eq!(
        q35_sim::system::timing_of(&node, &config).expect("a node"),
        system.timing()
    );
}
