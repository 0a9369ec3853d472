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

#[test]
fn report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing on CI: scripts/setup installs it"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium; scripts/setup does)"
        );
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lit/sim/sxm-reduce-f32.lpuasm");
    let text = std::fs::read_to_string(&path).expect("readable");
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let program = q35_isa::assemble("sxm-reduce-f32.lpuasm", &text).expect("assembles");
    let bytes = program
        .to_lpubin(&config.target, "report test")
        .expect("converts")
        .to_bytes()
        .expect("serialises");
    let binary = q35_lpubin::LpuBinary::from_bytes(bytes).expect("reads back");
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
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(!dom.contains("id=\"q35-error\""), "script error: {dom}");
    assert!(
        dom.contains("id=\"q35-drawn\""),
        "the script did not finish: {dom}"
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
