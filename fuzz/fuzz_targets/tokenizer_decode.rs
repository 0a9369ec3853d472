//! libFuzzer target `tokenizer_decode`: feeds each input to [`q35_fuzz::tokenizer_decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::tokenizer_decode(data);
});
