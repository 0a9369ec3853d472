//! libFuzzer target `lpubin`: feeds each input to [`q35_fuzz::lpubin`].
//!
//! Random bytes rarely pass the header and section CRC-32s, so the custom
//! mutator lets libFuzzer mutate as usual and then, for seven mutations in
//! eight, recomputes every CRC the mutated header still locates
//! ([`q35_fuzz::fix_lpubin_crcs`]): the fields behind the checksums get
//! fuzzed, and the checksum checks themselves still see damaged files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::lpubin(data);
});

libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    if seed % 8 != 0 {
        q35_fuzz::fix_lpubin_crcs(&mut data[..size]);
    }
    size
});
