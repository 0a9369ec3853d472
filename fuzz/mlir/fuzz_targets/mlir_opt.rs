//! libFuzzer target `mlir_opt`: feeds each input to [`q35_fuzz_mlir::mlir_opt`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz_mlir::mlir_opt(data);
});
