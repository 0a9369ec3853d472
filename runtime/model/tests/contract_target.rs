//! The contract (`q35-contract`) and the machine description (`q35-target`)
//! do not depend on each other; this crate sees both, so it checks the
//! facts they must share.

use q35_model::Target;

#[test]
fn contract_lanes_are_the_built_in_targets_vector_lanes() {
    // The contract's lane reduction (docs/q35-format.md 8.4) sums across
    // the machine's vector width.
    let lpu = Target::builtin("lpu-v1").unwrap();
    assert_eq!(
        q35_contract::semantics::LANES,
        lpu.vector.lanes as usize,
        "q35_contract::semantics::LANES must equal lpu-v1's vector.lanes"
    );
}
