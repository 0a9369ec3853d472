//! The checks a parsed target must pass: every count and latency at least 1
//! and the sizes consistent with each other. Checks run in file order and
//! the first problem is reported as (dotted key, message).

use crate::{Target, Unit};

/// Accumulators q35 can reason about: wide enough for one int8 x int8
/// product, narrow enough that bounds fit in 64-bit arithmetic.
const ACC_BITS: std::ops::RangeInclusive<u32> = 16..=64;

/// The first problem with `t`, in file order, or `None` if it is valid.
pub(crate) fn first_problem(t: &Target) -> Option<(String, String)> {
    let mut problems = Vec::new();
    check(t, &mut |key: &str, message: String| {
        problems.push((key.to_owned(), message))
    });
    problems.into_iter().next()
}

fn check(t: &Target, fail: &mut dyn FnMut(&str, String)) {
    if t.name.trim().is_empty() {
        fail("name", "must not be empty".into());
    }
    if !(t.clock_mhz.is_finite() && t.clock_mhz > 0.0) {
        fail("clock_mhz", "must be a positive number of MHz".into());
    }

    let v = &t.vector;
    at_least_one(
        fail,
        &[
            ("vector.lanes", v.lanes),
            ("vector.superlanes", v.superlanes),
            ("vector.lanes_per_superlane", v.lanes_per_superlane),
            ("vector.superlane_skew_cycles", v.superlane_skew_cycles),
        ],
    );
    if u64::from(v.lanes) != u64::from(v.superlanes) * u64::from(v.lanes_per_superlane) {
        fail(
            "vector.lanes",
            format!(
                "{} must equal superlanes x lanes_per_superlane = {} x {} = {}",
                v.lanes,
                v.superlanes,
                v.lanes_per_superlane,
                u64::from(v.superlanes) * u64::from(v.lanes_per_superlane)
            ),
        );
    }

    at_least_one(
        fail,
        &[
            ("streams.per_direction", t.streams.per_direction),
            ("streams.hop_cycles", t.streams.hop_cycles),
        ],
    );

    let mut outward = t.floorplan.outward.clone();
    outward.sort();
    if outward != [Unit::Mxm, Unit::Sxm, Unit::Mem] {
        fail(
            "floorplan.outward",
            "must list \"mem\", \"sxm\" and \"mxm\" once each, from the VXM outward".into(),
        );
    }

    let m = &t.mxm;
    at_least_one(
        fail,
        &[
            ("mxm.rows", m.rows),
            ("mxm.cols", m.cols),
            ("mxm.planes", m.planes),
            ("mxm.acc_bits", m.acc_bits),
            ("mxm.weight_buffers", m.weight_buffers),
            ("mxm.install_rows_per_cycle", m.install_rows_per_cycle),
            ("mxm.swap_cycles", m.swap_cycles),
            ("mxm.pe_block", m.pe_block),
            ("mxm.pe_hop_cycles", m.pe_hop_cycles),
            ("mxm.queues_per_plane", m.queues_per_plane),
        ],
    );
    if m.rows != v.lanes {
        fail(
            "mxm.rows",
            format!(
                "{} must equal vector.lanes = {} (a [1xK] activation is one vector)",
                m.rows, v.lanes
            ),
        );
    }
    if m.cols != v.lanes {
        fail(
            "mxm.cols",
            format!(
                "{} must equal vector.lanes = {} (a row of weights arrives as one vector)",
                m.cols, v.lanes
            ),
        );
    }
    if m.pe_block >= 1 && !(m.rows.is_multiple_of(m.pe_block) && m.cols.is_multiple_of(m.pe_block))
    {
        fail(
            "mxm.pe_block",
            format!(
                "{} must divide mxm.rows = {} and mxm.cols = {}",
                m.pe_block, m.rows, m.cols
            ),
        );
    }
    if !m.planes.is_multiple_of(2) {
        fail(
            "mxm.planes",
            format!("{} must be even: each hemisphere holds half", m.planes),
        );
    }
    if !ACC_BITS.contains(&m.acc_bits) {
        fail(
            "mxm.acc_bits",
            format!(
                "{} must be between {} and {}",
                m.acc_bits,
                ACC_BITS.start(),
                ACC_BITS.end()
            ),
        );
    }
    if m.install_rows_per_cycle > t.streams.per_direction {
        fail(
            "mxm.install_rows_per_cycle",
            format!(
                "{} must be at most streams.per_direction = {} (each row arrives on its own stream)",
                m.install_rows_per_cycle, t.streams.per_direction
            ),
        );
    }

    let x = &t.vxm;
    at_least_one(
        fail,
        &[
            ("vxm.alus_per_lane", x.alus_per_lane),
            ("vxm.alu_latency", x.alu_latency),
            ("vxm.convert_latency", x.convert_latency),
            ("vxm.special_latency", x.special_latency),
        ],
    );

    let mem = &t.mem;
    at_least_one(
        fail,
        &[
            ("mem.slices", mem.slices),
            ("mem.words_per_slice", mem.words_per_slice),
            ("mem.word_bytes", mem.word_bytes),
            ("mem.banks_per_slice", mem.banks_per_slice),
            ("mem.read_ports", mem.read_ports),
            ("mem.write_ports", mem.write_ports),
            ("mem.read_latency_cycles", mem.read_latency_cycles),
            ("mem.write_latency_cycles", mem.write_latency_cycles),
        ],
    );
    let product =
        u64::from(mem.slices) * u64::from(mem.words_per_slice) * u64::from(mem.word_bytes);
    if mem.bytes != product {
        fail(
            "mem.bytes",
            format!(
                "{} must equal slices x words_per_slice x word_bytes = {} x {} x {} = {product}",
                mem.bytes, mem.slices, mem.words_per_slice, mem.word_bytes
            ),
        );
    }
    if mem.bytes > i64::MAX as u64 {
        fail("mem.bytes", format!("{} must be below 2^63", mem.bytes));
    }
    if !mem.slices.is_multiple_of(2) {
        fail(
            "mem.slices",
            format!("{} must be even: each hemisphere holds half", mem.slices),
        );
    }
    if mem.word_bytes != v.lanes {
        fail(
            "mem.word_bytes",
            format!(
                "{} must equal vector.lanes = {} (a word is one vector)",
                mem.word_bytes, v.lanes
            ),
        );
    }
    if mem.banks_per_slice > 0 && !mem.words_per_slice.is_multiple_of(mem.banks_per_slice) {
        fail(
            "mem.banks_per_slice",
            format!(
                "{} must divide words_per_slice = {}",
                mem.banks_per_slice, mem.words_per_slice
            ),
        );
    }

    let s = &t.sxm;
    at_least_one(
        fail,
        &[
            ("sxm.units", s.units),
            ("sxm.shift_latency", s.shift_latency),
            ("sxm.permute_latency", s.permute_latency),
            ("sxm.transpose_latency", s.transpose_latency),
            ("sxm.queues_per_unit", s.queues_per_unit),
        ],
    );
    if !s.units.is_multiple_of(2) {
        fail(
            "sxm.units",
            format!("{} must be even: each hemisphere holds half", s.units),
        );
    }
    // Shift, bcast and permute move data across superlanes: superlane i
    // runs i cycles after superlane 0, so they need the whole vector
    // (docs/isa.md 1, superlane skew).
    for (key, latency) in [
        ("sxm.shift_latency", s.shift_latency),
        ("sxm.permute_latency", s.permute_latency),
    ] {
        if latency < v.superlanes {
            fail(
                key,
                format!(
                    "{latency} must be at least vector.superlanes = {} (it moves data across superlanes, so it needs the whole vector)",
                    v.superlanes
                ),
            );
        }
    }

    at_least_one(fail, &[("icu.instruction_bytes", t.icu.instruction_bytes)]);

    let c = &t.c2c;
    at_least_one(
        fail,
        &[
            ("c2c.links_per_chip", c.links_per_chip),
            ("c2c.lanes_per_link", c.lanes_per_link),
            ("c2c.link_latency_cycles", c.link_latency_cycles),
            ("c2c.receive_latency_cycles", c.receive_latency_cycles),
            ("c2c.receive_buffer_vectors", c.receive_buffer_vectors),
            ("c2c.chips_per_node", c.chips_per_node),
            ("c2c.nodes_per_rack", c.nodes_per_rack),
        ],
    );
    if !(c.gbps_per_lane.is_finite() && c.gbps_per_lane > 0.0) {
        fail(
            "c2c.gbps_per_lane",
            "must be a positive number of Gb/s".into(),
        );
        return;
    }
    let local = u64::from(c.chips_per_node.saturating_sub(1));
    if local + u64::from(c.global_links_per_chip) > u64::from(c.links_per_chip) {
        fail(
            "c2c.global_links_per_chip",
            format!(
                "{} global links and chips_per_node - 1 = {local} links inside the node exceed links_per_chip = {}",
                c.global_links_per_chip, c.links_per_chip
            ),
        );
    }
    if t.clock_mhz.is_finite() && t.clock_mhz > 0.0 && t.vector.lanes > 0 {
        let serialise = t.c2c_vector_cycles();
        if u64::from(c.link_latency_cycles) < serialise {
            fail(
                "c2c.link_latency_cycles",
                format!(
                    "{} is less than the {serialise} cycles a link takes to carry one {}-byte vector (lanes_per_link x gbps_per_lane at clock_mhz)",
                    c.link_latency_cycles, t.vector.lanes
                ),
            );
        }
    }
}

fn at_least_one(fail: &mut dyn FnMut(&str, String), values: &[(&str, u32)]) {
    for &(key, value) in values {
        if value == 0 {
            fail(key, "must be at least 1".into());
        }
    }
}
