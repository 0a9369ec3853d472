//! `q35sim` writing into a pipe whose reader is gone (`q35sim run ... |
//! head`) ends quietly, as Unix tools do, instead of panicking in
//! `println!` (q35_host::pipe).

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_tool_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    // The reader is closed before the tool starts: its first write fails.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_q35sim"))
        .arg("isa")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("q35sim runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "q35sim panicked: {stderr}");
    // SIGPIPE is signal 13 on Linux (and the BSDs).
    assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
}
