//! `--report`: the HTML page rendered by Debian's chromium in headless
//! mode (`--dump-dom`); fails on a script error or an empty chart. The page
//! is made from a real run of tests/lit/sim/sxm-reduce-f32.lpuasm (the
//! machine's lane reduction: MEM, VXM and SXM work). Skipped with a message
//! when chromium is not installed, unless `CI` is set (scripts/setup
//! installs it there), where a missing chromium fails.

use std::path::Path;
use std::process::Command;

use q35_sim::Machine;
use q35_sim::analysis::analyse;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn attr(dom: &str, name: &str) -> Option<u64> {
    let at = dom.find(&format!("data-{name}=\""))? + name.len() + 7;
    dom[at..].split('"').next()?.parse().ok()
}

/// The browser, or `None` after saying the test is skipped (a failure on
/// CI, where scripts/setup installs it).
fn browser() -> Option<&'static str> {
    let b = chromium();
    if b.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing on CI: scripts/setup installs it"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium; scripts/setup does)"
        );
    }
    b
}

/// The page rendered by `browser`: its DOM after the scripts ran, checked
/// for a script error and for the marker the script writes when done.
fn render(browser: &str, html: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("report.html");
    std::fs::write(&file, html).expect("writes");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--window-size=1400,2000",
            "--dump-dom",
        ])
        .arg(&file)
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!dom.contains("id=\"q35-error\""), "script error: {dom}");
    assert!(
        dom.contains("id=\"q35-drawn\""),
        "the script did not finish: {dom}"
    );
    dom
}

fn binary(name: &str, text: &str, config: &q35_sim::MachineConfig) -> q35_lpubin::LpuBinary {
    let program = q35_isa::assemble(name, text).expect("assembles");
    let bytes = program
        .to_lpubin(&config.target, "report test")
        .expect("converts")
        .to_bytes()
        .expect("serialises");
    q35_lpubin::LpuBinary::from_bytes(bytes).expect("reads back")
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(browser) = browser() else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lit/sim/sxm-reduce-f32.lpuasm");
    let text = std::fs::read_to_string(&path).expect("readable");
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let binary = binary("sxm-reduce-f32.lpuasm", &text, &config);
    let mut machine = Machine::new(&binary, config.clone()).expect("loads");
    machine.set_record(true);
    machine.run_once().expect("runs");
    let t = &machine.recorded().expect("recorded").timelines[0];
    let step = analyse(&binary, machine.loaded(), &config, t);
    let html = q35_sim::report::to_html(
        "report test",
        &step,
        &serde_json::json!({"cycles": step.total_cycles}),
    );
    let dom = render(browser, &html);
    assert_eq!(
        attr(&dom, "gantt"),
        None,
        "a single chip has no system part"
    );
    for chart in ["wheretime", "timeline", "units", "layers", "roofline"] {
        let n = attr(&dom, chart).unwrap_or(0);
        assert!(n > 0, "chart {chart} is empty");
    }
    assert_eq!(
        attr(&dom, "units"),
        Some(step.units.len() as u64),
        "one bar per unit group"
    );
    // Where time goes: a bar part per class (and for the cycles with
    // nothing in flight and the skew, when there are any) and a row per
    // op kind.
    let parts = step.classes.iter().filter(|c| c.cycles > 0.0).count()
        + usize::from(step.idle_cycles > 0)
        + usize::from(step.skew_cycles > 0);
    assert_eq!(
        attr(&dom, "wheretime"),
        Some((parts + step.kinds.len()) as u64),
        "where the cycles go: {dom}"
    );
}

/// A system's page: chip 0 runs the lane reduction and sends a vector to
/// chip 1 (one hop, arriving 500 cycles later on chip 1's link 6, as in
/// tests/system.rs), which takes it and writes it to MEM. The page has a
/// row per chip in the system chart (a bar per bucket with busy cycles)
/// and the utilisation table, a row per link that carried anything, and
/// chip 0 (the busier) in detail.
#[test]
fn system_report_renders_in_headless_chromium() {
    let Some(browser) = browser() else {
        return;
    };
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lit/sim/sxm-reduce-f32.lpuasm");
    let reduce = std::fs::read_to_string(&path).expect("readable");
    let send = ".mem mem.w8 @1 u8 fill 7, 320\n.queue mem.w8\n    read 1, s20.e\n    halt\n\
                .queue c2c.0\n    nop 10\n    send s20.e\n    halt\n";
    let a = binary("chip0.lpuasm", &format!("{reduce}\n{send}"), &config);
    let b = binary(
        "chip1.lpuasm",
        ".target lpu-v1\n.queue c2c.6\n    nop 510\n    recv s1.e\n    halt\n\
         .queue mem.e0\n    nop 512\n    write 8, s1.e\n    halt\n",
        &config,
    );
    let run = q35_sim::system::timing_of(&[&a, &b], &config)
        .expect("a system")
        .expect("no hazard");
    let width = q35_sim::report::system_bucket_width(run.cycles);
    let (steps, activities): (Vec<_>, Vec<_>) = [&a, &b]
        .iter()
        .map(|bin| {
            let loaded = q35_sim::load::load(bin, &config).expect("loads");
            let t = q35_sim::schedule::walk(&loaded, &config).expect("walks");
            (
                analyse(bin, &loaded, &config, &t),
                q35_sim::analysis::activity(bin.debug(), &loaded, &t, width),
            )
        })
        .unzip();
    let links: usize = run.chips.iter().map(|c| c.links.len()).sum();
    assert_eq!(links, 2, "one link each way: {run:?}");
    let html = q35_sim::report::system_to_html(
        "system report test",
        &run,
        &activities,
        (0, &steps[0]),
        &serde_json::json!({"chips": 2, "cycles": run.cycles}),
    );
    let dom = render(browser, &html);
    assert_eq!(attr(&dom, "chips"), Some(2), "a utilisation row per chip");
    assert_eq!(attr(&dom, "links"), Some(2), "a row per link used");
    // Every chip's busy buckets, chip 1's one receive bucket and its
    // arrow.
    let busy: usize = activities.iter().map(|a| a.buckets.len()).sum();
    assert!(activities.iter().all(|a| !a.buckets.is_empty()));
    assert_eq!(
        attr(&dom, "gantt"),
        Some(busy as u64 + 2),
        "the system chart: {dom}"
    );
    assert!(dom.contains("Chip 0 in detail"), "{dom}");
    for chart in ["wheretime", "timeline", "units", "layers", "roofline"] {
        assert!(attr(&dom, chart).unwrap_or(0) > 0, "chart {chart} is empty");
    }
}
