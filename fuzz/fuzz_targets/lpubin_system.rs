//! libFuzzer target `lpubin_system`: feeds each input to
//! [`q35_fuzz::lpubin_system`] (the system container of docs/lpubin.md 8).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::lpubin_system(data);
});
