//! The built-in lpu-v1 target: it is the file on disk, it agrees with the
//! published figures it cites, its derived figures, its hash, and every kind
//! of bad description gets a located diagnostic.

use std::path::{Path, PathBuf};

use q35_target::{Hemisphere, Slice, Target, TargetError, Unit, diag};

fn file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../targets/lpu-v1.toml")
}

fn text() -> String {
    std::fs::read_to_string(file()).unwrap()
}

fn lpu() -> Target {
    Target::builtin("lpu-v1").unwrap()
}

/// `text` with the value of `table.key` replaced by `value`.
fn set(text: &str, key: &str, value: &str) -> String {
    let (line, col) = diag::locate(text, key).unwrap_or_else(|| panic!("{key} not in the file"));
    let mut out: Vec<String> = text.lines().map(str::to_owned).collect();
    let l = &mut out[line - 1];
    let start = col - 1;
    let end = l[start..]
        .find(" #")
        .map_or(l.len(), |i| start + i)
        .min(l.len());
    l.replace_range(start..end, value);
    out.join("\n") + "\n"
}

fn err(text: &str) -> String {
    Target::parse(text, Path::new("lpu-v1.toml"))
        .expect_err("should be rejected")
        .to_string()
}

#[test]
fn builtin_is_the_file_on_disk() {
    assert_eq!(q35_target::BUILTIN.len(), 1);
    let (name, builtin) = q35_target::BUILTIN[0];
    assert_eq!(name, "lpu-v1");
    assert_eq!(builtin, text(), "rebuild: the embedded text is stale");
    let from_file = Target::load(&file()).unwrap();
    let mut t = lpu();
    assert_eq!(t.source, Path::new("<builtin lpu-v1>"));
    t.source = from_file.source.clone();
    assert_eq!(t, from_file);
}

#[test]
fn published_figures() {
    let t = lpu();
    assert_eq!((t.vector.lanes, t.vector.superlanes), (320, 20));
    assert_eq!(
        (t.mxm.rows, t.mxm.cols, t.mxm.planes, t.mxm.acc_bits),
        (320, 320, 4, 32)
    );
    // 409,600 MACs x 900 MHz: the published ~750 TOPS int8 peak.
    assert_eq!(t.macs_per_cycle(), 409_600);
    let tops = t.peak_int8_ops_per_second() / 1e12;
    assert!((730.0..=740.0).contains(&tops), "{tops}");
    // 220 MiB in 88 slices of 2.5 MiB.
    assert_eq!(t.mem_bytes(), 220 << 20);
    assert_eq!(t.mem_bytes(), t.mem.bytes);
    assert_eq!(t.mem_slice_bytes(), 5 << 19);
    assert_eq!(t.vxm_alus(), 5120);
    // One queue per functional slice (docs/isa.md 2): 126 of the
    // published 144 independent instruction queues.
    let q = t.instruction_queues();
    assert_eq!((q.mem, q.vxm, q.mxm, q.sxm, q.c2c), (88, 16, 4, 2, 16));
    assert_eq!(q.total(), 126);
    // All four planes in 40 cycles: 32 streams x 320 B a cycle.
    assert_eq!(t.mxm_plane_install_cycles(), 10);
    assert_eq!(t.mxm.planes * t.mxm_plane_install_cycles(), 40);
    // 20 x 20 processing elements of 16 x 16 MACs: an `mm` result leaves
    // 19 + 19 + 1 hops and one output register after its issue.
    assert_eq!((t.mxm_fill_cycles(), t.mxm_drain_cycles()), (19, 19));
    assert_eq!(t.mxm_latency(), 40);
    assert_eq!(t.acc_max(), i32::MAX as u64);
    // About 14 GB/s per link per direction (4 lanes x 30 Gb/s = 15 GB/s).
    assert_eq!(t.c2c_link_bytes_per_second(), 15e9);
    assert_eq!(t.chips_per_rack(), 72);
    assert!((t.cycle_ns() - 1.111).abs() < 1e-3);
}

#[test]
fn floorplan_positions() {
    let t = lpu();
    let plan = t.floorplan();
    assert_eq!(plan.len(), 93);
    assert_eq!(t.floorplan_width(), 93);
    let names: Vec<String> = plan.iter().map(ToString::to_string).collect();
    assert_eq!(&names[..4], ["MXM W", "SXM W0", "MEM W43", "MEM W42"]);
    assert_eq!(
        &names[44..49],
        ["MEM W1", "MEM W0", "VXM", "MEM E0", "MEM E1"]
    );
    assert_eq!(&names[89..], ["MEM E42", "MEM E43", "SXM E0", "MXM E"]);
    assert_eq!(t.vxm_position(), 46);
    assert_eq!(t.position(Slice::Vxm), Some(46));
    assert_eq!(t.position(Slice::Mem(Hemisphere::West, 0)), Some(45));
    assert_eq!(t.position(Slice::Mem(Hemisphere::East, 43)), Some(90));
    assert_eq!(t.position(Slice::Mem(Hemisphere::East, 44)), None);
    assert_eq!(t.position(Slice::Mxm(Hemisphere::East)), Some(92));
    assert_eq!(t.mxm_planes_of(Hemisphere::West), 0..2);
    assert_eq!(t.mxm_planes_of(Hemisphere::East), 2..4);
    assert_eq!(t.mxm_plane_hemisphere(3), Some(Hemisphere::East));
    assert_eq!(t.mxm_plane_hemisphere(4), None);
    // The two hemispheres mirror each other around the VXM.
    for (i, s) in plan.iter().enumerate() {
        let mirror = plan[plan.len() - 1 - i];
        let flipped = match *s {
            Slice::Mxm(_) => Slice::Mxm(Hemisphere::East),
            Slice::Sxm(_, n) => Slice::Sxm(Hemisphere::East, n),
            Slice::Mem(_, n) => Slice::Mem(Hemisphere::East, n),
            Slice::Vxm => Slice::Vxm,
        };
        if i <= 46 {
            assert_eq!(mirror, flipped, "{s} at {i}");
        }
        assert_eq!(t.position(*s), Some(i as u32));
    }
    // A vector from MEM W0 to the west MXM crosses 45 positions.
    assert_eq!(t.hop_cycles(45, 0), 45);
    // Another order from the VXM outward moves the units.
    let mut other = t.clone();
    other.floorplan.outward = vec![Unit::Mxm, Unit::Sxm, Unit::Mem];
    assert_eq!(other.position(Slice::Mxm(Hemisphere::East)), Some(47));
    assert_eq!(other.position(Slice::Mem(Hemisphere::West, 43)), Some(0));
}

/// The lpu-v1 hash. It changes whenever a parameter of targets/lpu-v1.toml
/// (or the canonical form in src/hash.rs) changes; programs compiled for the
/// old one are then refused by the simulator, which is the point. To update
/// after an intended change: run this test, check that the diff of the
/// target file is what you meant, and paste the `left` value it prints here.
const LPU_V1_HASH: &str = "545c5a705619dbc03481886bd3076d9465ee5feb71dbf13765c5035dfcbcc66c";

#[test]
fn hash_is_pinned() {
    assert_eq!(lpu().hash().to_string(), LPU_V1_HASH);
}

#[test]
fn hash_ignores_comments_layout_order_description_and_source() {
    let t = lpu();
    let stripped: String = text()
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace(" = ", "="))
        .collect::<Vec<_>>()
        .join("\n");
    let mut u = Target::parse(&stripped, Path::new("elsewhere.toml")).unwrap();
    assert_eq!(u.hash(), t.hash());
    // Tables in another order, another description.
    let (head, tables) = stripped.split_once("\n[").unwrap();
    let mut parts: Vec<&str> = tables.split("\n[").collect();
    parts.reverse();
    let reordered = format!(
        "{}\n[{}\n",
        head.replace("LPU-style", "a different sentence about"),
        parts.join("\n[")
    );
    u = Target::parse(&reordered, Path::new("x.toml")).unwrap();
    assert_ne!(u.description, t.description);
    assert_eq!(u.hash(), t.hash());
    assert!(!t.canonical().contains("description"));
    assert!(!t.canonical().contains("builtin"));
    assert!(t.canonical().contains("\nmxm.acc_bits = 32\n"));
}

#[test]
fn every_parameter_changes_the_hash() {
    let t = lpu();
    let base = t.hash();
    let text = text();
    let canonical = t.canonical();
    let keys: Vec<&str> = canonical
        .lines()
        .skip(1)
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    assert!(keys.len() >= 40, "{keys:?}");
    let mut unchanged = Vec::new();
    for key in &keys {
        let current = canonical
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap();
        let changed = if let Ok(n) = current.parse::<u64>() {
            (n + 1).to_string()
        } else if let Ok(x) = current.parse::<f64>() {
            format!("{:?}", x * 1.5)
        } else if current.starts_with('[') {
            r#"["mxm", "sxm", "mem"]"#.to_owned()
        } else {
            format!("\"{}x\"", current.trim_matches('"'))
        };
        // The hash is a function of the struct; validity does not matter.
        match toml::from_str::<Target>(&set(&text, key, &changed)) {
            Ok(u) => assert_ne!(u.hash(), base, "{key} = {changed}"),
            Err(_) => unchanged.push(*key),
        }
    }
    // An enum of one value has nothing to change to.
    assert_eq!(unchanged, ["c2c.topology"]);
}

#[test]
fn every_count_must_be_at_least_one() {
    let text = text();
    let t = lpu();
    let canonical = t.canonical();
    let mut checked = 0;
    for line in canonical.lines().skip(1) {
        let (key, value) = line.split_once(" = ").unwrap();
        if value.parse::<u64>().is_err()
            || key == "icu.notify_latency_cycles"
            || key == "c2c.global_links_per_chip"
        {
            continue;
        }
        let e = err(&set(&text, key, "0"));
        let (l, c) = diag::locate(&text, key).unwrap();
        assert!(
            e.starts_with(&format!("lpu-v1.toml:{l}:{c}: `{key}`: ")),
            "{key}: {e}"
        );
        checked += 1;
    }
    assert!(checked >= 35, "{checked}");
    // A Notify may take effect on the next cycle boundary with no delay.
    Target::parse(
        &set(&text, "icu.notify_latency_cycles", "0"),
        Path::new("x"),
    )
    .unwrap();
    // A system of one node needs no global links.
    Target::parse(
        &set(&text, "c2c.global_links_per_chip", "0"),
        Path::new("x"),
    )
    .unwrap();
}

#[test]
fn sizes_must_agree() {
    let text = text();
    let cases = [
        (
            set(&text, "mem.bytes", "230686721"),
            "`mem.bytes`: 230686721 must equal slices x words_per_slice x word_bytes = 88 x 8192 x 320 = 230686720",
        ),
        (
            set(
                &set(&text, "mem.word_bytes", "256"),
                "mem.bytes",
                "184549376",
            ),
            "`mem.word_bytes`: 256 must equal vector.lanes = 320 (a word is one vector)",
        ),
        (
            set(&text, "vector.superlanes", "21"),
            "`vector.lanes`: 320 must equal superlanes x lanes_per_superlane = 21 x 16 = 336",
        ),
        (
            set(&text, "mxm.planes", "3"),
            "`mxm.planes`: 3 must be even",
        ),
        (
            set(&text, "mxm.cols", "256"),
            "`mxm.cols`: 256 must equal vector.lanes = 320",
        ),
        (
            set(&text, "mxm.acc_bits", "8"),
            "`mxm.acc_bits`: 8 must be between 16 and 64",
        ),
        (
            set(&text, "mxm.install_rows_per_cycle", "33"),
            "`mxm.install_rows_per_cycle`: 33 must be at most streams.per_direction = 32",
        ),
        (
            set(&set(&text, "mem.slices", "87"), "mem.bytes", "228065280"),
            "`mem.slices`: 87 must be even",
        ),
        (
            set(&text, "mem.banks_per_slice", "3"),
            "`mem.banks_per_slice`: 3 must divide words_per_slice = 8192",
        ),
        (set(&text, "sxm.units", "3"), "`sxm.units`: 3 must be even"),
        (
            set(&text, "sxm.permute_latency", "19"),
            "`sxm.permute_latency`: 19 must be at least vector.superlanes = 20",
        ),
        (
            set(&text, "floorplan.outward", r#"["mem", "mem", "mxm"]"#),
            "`floorplan.outward`: must list \"mem\", \"sxm\" and \"mxm\" once each",
        ),
        (
            set(&text, "clock_mhz", "0.0"),
            "`clock_mhz`: must be a positive number of MHz",
        ),
        (
            set(&text, "c2c.gbps_per_lane", "-1.0"),
            "`c2c.gbps_per_lane`: must be a positive",
        ),
        (set(&text, "name", "\" \""), "`name`: must not be empty"),
    ];
    for (bad, expected) in cases {
        let e = err(&bad);
        assert!(e.contains(expected), "expected {expected:?} in {e}");
        assert!(e.starts_with("lpu-v1.toml:"), "{e}");
    }
}

#[test]
fn schema_errors_name_line_and_key() {
    let text = text();
    let e = err(&text.replace("[mxm]\n", "[mxm]\nfill_cycles = 320\n"));
    let line = text.lines().position(|l| l == "[mxm]").unwrap() + 2;
    assert!(
        e.starts_with(&format!(
            "lpu-v1.toml:{line}:1: `mxm.fill_cycles`: unknown field `fill_cycles`"
        )),
        "{e}"
    );
    let e = err(&set(&text, "mxm.rows", "\"320\""));
    assert!(e.contains("`mxm.rows`: invalid type: string"), "{e}");
    let without = text
        .lines()
        .filter(|l| !l.starts_with("acc_bits"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(err(&without).contains("missing field `acc_bits`"));
    let e = err(&set(&text, "c2c.topology", "\"torus\""));
    assert!(e.contains("`c2c.topology`: unknown variant `torus`"), "{e}");
}

#[test]
fn builtin_load_and_io_errors() {
    match Target::builtin("tpu") {
        Err(e @ TargetError::Unknown { .. }) => {
            assert_eq!(
                e.to_string(),
                "unknown target `tpu`; built-in targets: lpu-v1"
            )
        }
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mine.toml");
    std::fs::write(&p, set(&text(), "clock_mhz", "1250.0")).unwrap();
    let t = Target::load(&p).unwrap();
    assert_eq!(t.source, p);
    assert_eq!(t.clock_mhz, 1250.0);
    assert_ne!(t.hash(), lpu().hash());
    let e = Target::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(e, TargetError::Io { .. }), "{e}");
    assert!(e.to_string().contains("absent.toml: cannot read"), "{e}");
}

#[test]
fn validate_reports_without_a_text() {
    let mut t = lpu();
    t.source = PathBuf::from("q35.target");
    t.validate().unwrap();
    t.mxm.planes = 0;
    assert_eq!(
        t.validate().unwrap_err().to_string(),
        "q35.target: `mxm.planes`: must be at least 1"
    );
}
