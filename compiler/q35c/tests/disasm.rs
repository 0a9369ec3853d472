//! Snapshot of the tiny model's compiled program (`q35c compile
//! examples/tiny.toml --context 64 -o tiny.lpuasm`): per queue, the number of
//! instructions and the mnemonics used; then the whole instruction list of
//! MXM plane 0 (every `lw`/`iw`/`mm` and the gaps between them). The full
//! disassembly (36k lines) is too long to review as a snapshot; this digest
//! changes whenever placement, scheduling or a kernel does, so the diff
//! shows what a change did to the program.

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn tiny_program_digest() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("tiny.lpuasm");
    let status = Command::new(env!("CARGO_BIN_EXE_q35c"))
        .arg("compile")
        .arg(root.join("examples/tiny.toml"))
        .args(["--context", "64", "-o"])
        .arg(&out)
        .output()
        .expect("q35c runs");
    assert!(
        status.status.success(),
        "q35c compile failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("lpuasm written");
    let mut digest = String::new();
    let mut queue: Option<String> = None;
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut plane0 = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(q) = t.strip_prefix(".queue ") {
            queue = Some(q.to_string());
            continue;
        }
        if t.is_empty() || t.starts_with('.') || t.starts_with(';') {
            continue;
        }
        if let Some(q) = &queue {
            let mnemonic = t.split_whitespace().next().unwrap_or("").to_string();
            *counts
                .entry(q.clone())
                .or_default()
                .entry(mnemonic)
                .or_default() += 1;
            if q == "mxm.0" {
                plane0.push(t.to_string());
            }
        }
    }
    digest.push_str(&format!("queues: {}\n", counts.len()));
    for (q, m) in &counts {
        let total: usize = m.values().sum();
        let kinds: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        digest.push_str(&format!("{q}: {total} ({})\n", kinds.join(", ")));
    }
    digest.push_str("\nmxm.0:\n");
    for l in plane0 {
        digest.push_str(&l);
        digest.push('\n');
    }
    insta::assert_snapshot!("tiny_program_digest", digest);
}
