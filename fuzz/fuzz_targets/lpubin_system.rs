//! libFuzzer target `lpubin_system`: feeds each input to
//! [`q35_fuzz::lpubin_system`] (the system container of docs/lpubin.md 8).
//!
//! As for `lpubin`, the custom mutator lets libFuzzer mutate and then, for
//! seven mutations in eight, recomputes every CRC the mutated header still
//! locates ([`q35_fuzz::fix_lpubin_system_crcs`]: each chip image's own,
//! each chip entry's, the header's), so the fields behind the checksums
//! get fuzzed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::lpubin_system(data);
});

libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    if seed % 8 != 0 {
        q35_fuzz::fix_lpubin_system_crcs(&mut data[..size]);
    }
    size
});
