//! libFuzzer target `isa_program`: feeds each input to [`q35_fuzz::isa_program`]
//! (bytes -> a valid program through the ISA table -> round trips).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::isa_program(data);
});
