//! libFuzzer target `mlir_opt`: feeds each input to [`q35_fuzz_mlir::mlir_opt`].
//!
//! Unlike the other targets this one has its own `main`: the MLIR static
//! libraries Debian ships include `mlir-opt`'s `main`, and with `no_main`
//! the linker takes it instead of libFuzzer's (the binary then parses its
//! arguments as mlir-opt options). This `main` calls libFuzzer's driver,
//! which is what libFuzzer's own `main` does.

use std::ffi::{CString, c_char, c_int};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    q35_fuzz_mlir::mlir_opt(data);
});

/// The callback libFuzzer calls per input (C ABI).
type TestOneInput = unsafe extern "C" fn(*const u8, usize) -> c_int;

unsafe extern "C" {
    /// `fuzzer::FuzzerDriver(int *argc, char ***argv, UserCallback)`, the
    /// entry of libFuzzer (compiled by libfuzzer-sys), by its C++ name.
    #[link_name = "_ZN6fuzzer12FuzzerDriverEPiPPPcPFiPKhmE"]
    fn fuzzer_driver(argc: *mut c_int, argv: *mut *mut *mut c_char, cb: TestOneInput) -> c_int;
    /// Defined by `fuzz_target!` above.
    fn LLVMFuzzerTestOneInput(data: *const u8, size: usize) -> c_int;
}

fn main() {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_encoded_bytes()).expect("no NUL in an argument"))
        .collect();
    let mut ptrs: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    ptrs.push(std::ptr::null_mut());
    let mut argc = c_int::try_from(args.len()).expect("argument count fits an int");
    let mut argv = ptrs.as_mut_ptr();
    // SAFETY: argc/argv describe NUL-terminated strings that outlive the
    // call (libFuzzer may permute the pointer array, never the strings),
    // and the callback is the fuzz_target! entry with libFuzzer's signature.
    let code = unsafe { fuzzer_driver(&mut argc, &mut argv, LLVMFuzzerTestOneInput) };
    std::process::exit(code);
}
