//! Output into a closed pipe (`q35sim run ... | head`).
//!
//! Rust programs start with SIGPIPE ignored, so a write to a pipe whose
//! reader has gone fails with `BrokenPipe`, and `println!` / `eprintln!`
//! panic on it. Command-line tools on Unix end quietly instead (the default
//! action of SIGPIPE), which is what [`default_sigpipe`] restores. Files are
//! not pipes: an output file is written to a temporary and renamed
//! (`q35_lpubin::write_atomically`), so a tool ended this way never leaves a
//! partial output under its name.

/// Restores SIGPIPE's default action (end the process quietly). Call it
/// first in `main`, before any thread starts.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets a signal's disposition to SIG_DFL (no handler, so no Rust
    // code runs in a signal context); called before other threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
