//! libFuzzer target `sim_program`: feeds each input to [`q35_fuzz::sim_program`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::sim_program(data);
});
