//! The contract is what the machine computes: the hand-scheduled lane
//! reduction of tests/lit/sim/sxm-reduce-f32.lpuasm (nine `shift` + `fadd`
//! steps on the SXMs and the VXM, docs/isa.md 4), run on the simulator with
//! random f32 vectors whose sums depend on the order of the additions, gives
//! bit for bit what `q35_contract::semantics::lane_sum` (the golden model's
//! RMSNorm and softmax sums) gives.

use q35_contract::semantics::{LANES, lane_sum};
use q35_lpubin::LpuBinary;

const PROGRAM: &str = include_str!("../../tests/lit/sim/sxm-reduce-f32.lpuasm");

/// SplitMix64, enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in +-[1, 2) x 2^e for e in -20..20: sums of these round at
    /// every step, so a different order gives different bits.
    fn value(&mut self) -> f32 {
        let r = self.next();
        let mantissa = 1.0 + (r & 0xff_ffff) as f32 / (1u32 << 24) as f32;
        let exponent = ((r >> 24) % 40) as i32 - 20;
        let sign = if (r >> 40) & 1 == 1 { -1.0 } else { 1.0 };
        sign * mantissa * 2f32.powi(exponent)
    }
}

/// The program with its two copies of x replaced by `x`.
fn program_for(x: &[f32]) -> String {
    let list = x
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut replaced = 0;
    let text = PROGRAM
        .lines()
        .map(|line| {
            if line.starts_with(".mem ") && line.contains(" f32 [") {
                replaced += 1;
                let head = &line[..line.find('[').expect("a value list")];
                format!("{head}[{list}]")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(replaced, 2, "the program holds x twice (east and west)");
    text
}

fn simulate(x: &[f32]) -> f32 {
    let config = q35_sim::config::load_target(None).expect("lpu-v1");
    let program = q35_isa::assemble("sxm-reduce-f32.lpuasm", &program_for(x)).expect("assembles");
    let bytes = program
        .to_lpubin(&config.target, "contract_reduce test")
        .expect("encodes")
        .to_bytes()
        .expect("writes");
    let binary = LpuBinary::from_bytes(bytes).expect("reads");
    let finished = match q35_sim::run(&binary, &config, None).expect("loads") {
        Ok(f) => f,
        Err(stop) => panic!("the reduction program stopped: {stop:?}"),
    };
    let sym = binary.symbol("sum").expect("symbol `sum`");
    let dumped = q35_sim::dump::read_symbol(&finished.state, sym).expect("dump");
    f32::from_bits(dumped.bits[0])
}

#[test]
fn machine_lane_reduction_is_the_contracts_lane_sum() {
    let mut rng = Rng(35);
    let mut differs_from_sequential = 0;
    for case in 0..6 {
        let x: Vec<f32> = (0..LANES).map(|_| rng.value()).collect();
        let machine = simulate(&x);
        let contract = lane_sum(&x);
        assert_eq!(
            machine.to_bits(),
            contract.to_bits(),
            "case {case}: machine {machine:e}, contract {contract:e}"
        );
        let sequential = x.iter().fold(0f32, |s, &v| s + v);
        if sequential.to_bits() != contract.to_bits() {
            differs_from_sequential += 1;
        }
    }
    // The data is chosen so the order shows: otherwise this test could not
    // tell the machine's tree from a sequential sum.
    assert!(
        differs_from_sequential >= 3,
        "only {differs_from_sequential} of 6 cases depend on the order"
    );
}
