//! Systems of chips (`Target::system`): the link wiring is symmetric, every
//! hop of a route is a real link, nodes are fully connected and any two
//! chips of a one-level Dragonfly are at most 3 hops apart; impossible
//! systems are refused with the keys that limit them.

use q35_target::{LinkEnd, LinkKind, SystemError, Target};

fn lpu() -> Target {
    Target::builtin("lpu-v1").expect("built-in target")
}

#[test]
fn link_figures_of_lpu_v1() {
    let t = lpu();
    // 4 lanes x 30 Gb/s = 15 GB/s = 16.7 bytes a cycle at 900 MHz: a
    // 320-byte vector takes 19.2 cycles, 20 whole ones.
    assert!((t.c2c_link_bytes_per_cycle() - 16.666_666).abs() < 1e-3);
    assert_eq!(t.c2c_vector_cycles(), 20);
    assert_eq!(t.c2c_position(), t.vxm_position());
}

#[test]
fn wiring_is_symmetric_and_uses_every_link_of_a_full_system() {
    let t = lpu();
    // 73 nodes: every global port of every node is used.
    for chips in [1, 2, 5, 8, 16, 72, 576, 584] {
        let s = t.system(chips).expect("a system");
        let mut used = 0;
        for chip in 0..chips {
            for link in 0..16 {
                let end = LinkEnd { chip, link };
                if let Some(far) = s.neighbour(end).expect("in range") {
                    assert_ne!(far.chip, chip, "{end:?}");
                    assert_eq!(
                        s.neighbour(far).expect("in range"),
                        Some(end),
                        "{chips}: {end:?}"
                    );
                    used += 1;
                }
            }
        }
        let per_chip_local = chips.min(8) - 1;
        let nodes = chips.div_ceil(8);
        assert_eq!(
            used,
            chips * per_chip_local + nodes * (nodes - 1),
            "{chips} chips"
        );
    }
    let full = t.system(584).expect("73 nodes");
    assert_eq!(full.nodes(), 73);
    for chip in [0, 100, 583] {
        for link in 0..16 {
            let k = full.kind(LinkEnd { chip, link }).expect("in range");
            assert_eq!(
                k,
                if link < 7 {
                    LinkKind::Local
                } else {
                    LinkKind::Global
                }
            );
        }
    }
}

#[test]
fn routes_are_real_links_and_at_most_three_hops() {
    let t = lpu();
    for chips in [2, 8, 24, 576] {
        let s = t.system(chips).expect("a system");
        let step = if chips > 100 { 37 } else { 1 };
        for a in (0..chips).step_by(step) {
            for b in (0..chips).step_by(step) {
                let route = s.route(a, b).expect("a route");
                let mut at = a;
                for hop in &route {
                    assert_eq!(hop.from.chip, at);
                    assert_eq!(s.neighbour(hop.from).expect("in range"), Some(hop.to));
                    at = hop.to.chip;
                }
                assert_eq!(at, b);
                let hops = route.len() as u32;
                match (a == b, s.node_of(a) == s.node_of(b)) {
                    (true, _) => assert_eq!(hops, 0),
                    (false, true) => assert_eq!(hops, 1),
                    (false, false) => assert!((1..=3).contains(&hops), "{a} -> {b}: {hops}"),
                }
                assert_eq!(
                    s.latency_cycles(a, b).expect("route"),
                    u64::from(hops) * 500
                );
            }
        }
    }
    // Nodes 0 and 1 of a 3-node system: port 0 of node 0 is chip 0's first
    // global link (link 7), landing on node 1's port 3 - 2 - 0 = 1: chip 0, link 8.
    let s = t.system(24).expect("3 nodes");
    let r = s.route(0, 8).expect("route");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].from, LinkEnd { chip: 0, link: 7 });
    assert_eq!(r[0].to, LinkEnd { chip: 8, link: 8 });
    // Chip 1 to chip 9: a local hop to chip 0, the global hop, a local hop.
    assert_eq!(s.hops(1, 9).expect("route"), 3);
}

#[test]
fn impossible_systems_are_refused() {
    let t = lpu();
    assert_eq!(t.system(0), Err(SystemError::NoChips));
    let e = t.system(12).unwrap_err();
    assert_eq!(
        e,
        SystemError::PartialNode {
            chips: 12,
            per_node: 8
        }
    );
    assert!(e.to_string().contains("c2c.chips_per_node = 8"), "{e}");
    let e = t.system(74 * 8).unwrap_err().to_string();
    assert!(
        e.contains("74 nodes") && e.contains("8 x 9 + 1 = 73"),
        "{e}"
    );
    let s = t.system(8).expect("a node");
    let e = s
        .neighbour(LinkEnd { chip: 8, link: 0 })
        .unwrap_err()
        .to_string();
    assert_eq!(e, "chip 8 is not in the system (chips 0..8)");
    let e = s
        .neighbour(LinkEnd { chip: 0, link: 16 })
        .unwrap_err()
        .to_string();
    assert_eq!(e, "link 16 is not a link of a chip (links 0..16)");
    // A single node has no global links in use.
    assert_eq!(s.kind(LinkEnd { chip: 3, link: 7 }), Ok(LinkKind::Unused));
}

#[test]
fn link_parameters_are_checked() {
    let text = include_str!("../../../targets/lpu-v1.toml");
    let err = |t: &str| {
        Target::parse(t, std::path::Path::new("mine.toml"))
            .unwrap_err()
            .to_string()
    };
    let e = err(&text.replace("global_links_per_chip = 9 ", "global_links_per_chip = 10"));
    assert!(
        e.starts_with("mine.toml:") && e.contains("`c2c.global_links_per_chip`: 10 global links"),
        "{e}"
    );
    let e = err(&text.replace("link_latency_cycles = 500 ", "link_latency_cycles = 19  "));
    assert!(
        e.contains("`c2c.link_latency_cycles`: 19 is less than the 20 cycles"),
        "{e}"
    );
    let e = err(&text.replace("receive_buffer_vectors = 2 ", "receive_buffer_vectors = 0 "));
    assert!(
        e.contains("`c2c.receive_buffer_vectors`: must be at least 1"),
        "{e}"
    );
    let e = err(&text.replace("receive_latency_cycles = 1 ", "receive_latency_cycles = 0 "));
    assert!(
        e.contains("`c2c.receive_latency_cycles`: must be at least 1"),
        "{e}"
    );
}
