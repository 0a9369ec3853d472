//! Facts two crates must agree on, where neither can see the other.

/// model.toml validation (q35-model) accepts exactly the group sizes the
/// Q35 packer (q35-quant) can lay out.
#[test]
fn group_quantum_matches_the_packer() {
    assert_eq!(
        q35_model::GROUP_QUANTUM as usize,
        q35_quant::CHANNEL_QUANTUM,
        "q35-model's GROUP_QUANTUM and q35-quant's CHANNEL_QUANTUM disagree"
    );
}
