//! libFuzzer target `lpuasm`: feeds each input to [`q35_fuzz::lpuasm`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::lpuasm(data);
});
