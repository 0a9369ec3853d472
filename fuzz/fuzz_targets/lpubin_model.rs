//! libFuzzer target `lpubin_model`: feeds each input to
//! [`q35_fuzz::lpubin_model`].
//!
//! The seeds are compiled models; random bytes rarely pass their CRC-32s,
//! so, as for `lpubin`, the custom mutator recomputes every CRC the mutated
//! header still locates ([`q35_fuzz::fix_lpubin_crcs`]) for seven mutations
//! in eight: the metadata, embedding, tokenizer, symbols, tables and code
//! behind the checksums get fuzzed, and the checks themselves still see
//! damaged files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::lpubin_model(data);
});

libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    if seed % 8 != 0 {
        q35_fuzz::fix_lpubin_crcs(&mut data[..size]);
    }
    size
});
