//! The static walk (`q35_sim::schedule::walk`, `q35sim profile`) against a
//! real run: on every hand-written program of tests/lit/sim that runs
//! without a hazard, the timeline (every issue and its cycle), the busy
//! cycles per queue and the cycle count must be the run's, exactly.

use std::path::Path;

use q35_sim::Machine;
use q35_sim::schedule::walk;

#[test]
fn static_walk_equals_a_run_on_every_clean_lit_program() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lit/sim");
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/lit/sim")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "lpuasm"))
        .collect();
    files.sort();
    let mut compared = 0;
    let mut with_repeat = 0;
    let mut with_sync = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable");
        let Ok(program) = q35_isa::assemble(&path.display().to_string(), &text) else {
            continue;
        };
        let Ok(builder) = program.to_lpubin(&config.target, "static profile test") else {
            continue;
        };
        let bytes = builder.to_bytes().expect("serialises");
        let binary = q35_lpubin::LpuBinary::from_bytes(bytes).expect("reads back");
        let Ok(mut machine) = Machine::new(&binary, config.clone()) else {
            continue;
        };
        machine.set_record(true);
        machine.set_max_cycles(Some(10_000_000));
        if machine.run_once().is_err() {
            continue; // a hazard test: the walk does not claim those
        }
        let run = &machine.recorded().expect("recording").timelines[0];
        let stat = walk(machine.loaded(), machine.config())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            stat.profile.total_cycles(),
            run.profile.total_cycles(),
            "{}: cycles",
            path.display()
        );
        assert_eq!(stat.profile, run.profile, "{}: profile", path.display());
        assert_eq!(stat.issues, run.issues, "{}: timeline", path.display());
        compared += 1;
        with_repeat += usize::from(text.contains("repeat"));
        with_sync += usize::from(text.contains("sync"));
    }
    assert!(compared >= 20, "only {compared} programs compared");
    assert!(
        with_repeat > 0 && with_sync > 0,
        "repeat {with_repeat}, sync {with_sync}"
    );
}
