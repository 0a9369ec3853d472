//! `Machine`: one program loaded once and run many times on persistent MEM
//! (a counter in MEM goes up by one per run), with symbols written and read
//! through `q35_host::Device`; a bad symbol request is an error, not a panic.

use q35_host::{Device, DeviceError};
use q35_lpubin::LpuBinary;
use q35_sim::Machine;

/// `counter += ones` on 320 i32 lanes, written back in place: byte `j` of
/// the counter lives in `mem.w<j>`, of the ones in `mem.e<j>`; the sum
/// leaves the VXM westward on cycle 9 and reaches `mem.w<j>` on `10 + j`.
const COUNTER: &str = "
.target lpu-v1
.mem mem.w0+mem.w1+mem.w2+mem.w3 @0 i32 [5, -6]
.mem mem.e0+mem.e1+mem.e2+mem.e3 @0 i32 fill 1, 320
.symbol counter i32 [320] at mem.w0+mem.w1+mem.w2+mem.w3 @0
.symbol ones constant i32 [320] at mem.e0+mem.e1+mem.e2+mem.e3 @0

.queue mem.w3
    read 0, s3.e
    nop 12
    write 0, s7.w
    halt
.queue mem.w2
    nop 1
    read 0, s2.e
    nop 10
    write 0, s6.w
    halt
.queue mem.w1
    nop 2
    read 0, s1.e
    nop 8
    write 0, s5.w
    halt
.queue mem.w0
    nop 3
    read 0, s0.e
    nop 6
    write 0, s4.w
    halt
.queue mem.e0
    nop 3
    read 0, s0.w
    halt
.queue mem.e1
    nop 2
    read 0, s1.w
    halt
.queue mem.e2
    nop 1
    read 0, s2.w
    halt
.queue mem.e3
    read 0, s3.w
    halt
.queue vxm.0
    nop 5
    iadd32 s0.e, s0.w -> s4.w
    halt
";

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn binary() -> LpuBinary {
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let p = q35_isa::assemble("counter.lpuasm", COUNTER).expect("assembles");
    let bytes = p
        .to_lpubin(&config.target, "machine test")
        .expect("converts")
        .to_bytes()
        .expect("writes");
    LpuBinary::from_bytes(bytes).expect("opens")
}

#[test]
fn runs_many_times_on_persistent_mem() {
    let bin = binary();
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let one = q35_sim::run(&bin, &config, None)
        .expect("loads")
        .expect("runs");
    let mut m = Machine::new(&bin, config).expect("loads");
    let before = i32s(&m.read_symbol("counter").expect("readable"));
    assert_eq!(&before[..3], [5, -6, 0]);
    let mut cycles = Vec::new();
    for run in 1..=3 {
        cycles.push(m.run().expect("runs").cycles);
        let c = i32s(&m.read_symbol("counter").expect("readable"));
        assert_eq!(&c[..3], [5 + run, -6 + run, run], "after run {run}");
        assert!(c[3..].iter().all(|&v| v == run));
    }
    // The same cycles every run, and the same as a one-shot run.
    assert_eq!(cycles, vec![one.profile.total_cycles(); 3]);
    assert_eq!(m.runs(), 3);
    // The host writes the counter; the next run adds one to that.
    let mut v = vec![0i32; 320];
    v[0] = i32::MAX;
    v[319] = -100;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    m.write_symbol("counter", &bytes).expect("writes");
    m.run().expect("runs");
    let c = i32s(&m.read_symbol("counter").expect("readable"));
    assert_eq!((c[0], c[1], c[319]), (i32::MIN, 1, -99), "wrapping add");
    assert_eq!(
        i32s(&m.read_symbol("ones").expect("readable")),
        vec![1; 320]
    );
}

#[test]
fn bad_symbol_requests_are_errors() {
    let bin = binary();
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let mut m = Machine::new(&bin, config).expect("loads");
    let e = m.read_symbol("logits").expect_err("missing");
    assert!(matches!(e, DeviceError::NoSymbol { .. }));
    assert_eq!(e.to_string(), "the program has no symbol `logits`");
    let e = m.write_symbol("counter", &[0; 12]).expect_err("size");
    assert_eq!(
        e.to_string(),
        "symbol `counter` holds 1280 bytes (i32 [320]); 12 bytes were given"
    );
}
