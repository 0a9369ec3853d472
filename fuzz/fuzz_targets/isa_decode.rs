//! libFuzzer target `isa_decode`: feeds each input to [`q35_fuzz::isa_decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::isa_decode(data);
});
