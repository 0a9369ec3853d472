//! `Q35_QUANT_SOURCE_HASH`: a SHA-256 over the sources that decide what the
//! quantizer computes (every file of `runtime/`, the workspace's
//! `Cargo.toml` and `Cargo.lock`), so that a quantized model cached by one
//! build (`quant_cache`) is never taken for another build's. Any change
//! under `runtime/` gives a new hash: conservative, never stale.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        // Build products and editor state are not sources.
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let host = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let runtime = host
        .parent()
        .expect("runtime/host has a parent")
        .to_path_buf();
    let root = runtime
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf();
    let mut all = Vec::new();
    files(&runtime, &mut all);
    for f in ["Cargo.toml", "Cargo.lock"] {
        all.push(root.join(f));
    }
    all.sort();
    let mut h = Sha256::new();
    for p in &all {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        match std::fs::read(p) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(u64::MAX.to_le_bytes()),
        }
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=Q35_QUANT_SOURCE_HASH={hex}");
    println!("cargo:rerun-if-changed={}", runtime.display());
    for f in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
}
