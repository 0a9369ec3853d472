//! libFuzzer target `tokenizer_encode`: feeds each input to [`q35_fuzz::tokenizer_encode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::tokenizer_encode(data);
});
