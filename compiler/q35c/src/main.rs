//! `q35c`: the q35 compiler driver.
fn main() {}
