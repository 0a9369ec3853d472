//! libFuzzer target `chat_template`: feeds each input to [`q35_fuzz::chat_template`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz::chat_template(data);
});
