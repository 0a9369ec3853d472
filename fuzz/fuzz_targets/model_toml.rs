//! libFuzzer target `model_toml`: feeds each input to [`q35_fuzz::model_toml`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::model_toml(data);
});
