//! libFuzzer target `gguf`: feeds each input to [`q35_fuzz::gguf`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::gguf(data);
});
