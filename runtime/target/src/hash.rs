//! The target hash: SHA-256 over a canonical text form of the parsed
//! parameters, so comments, layout and key order in the file do not change
//! it and every parameter does. `description` (prose) and `source` (a path)
//! are not parameters and are left out.
//!
//! The canonical form is a version line, then one `dotted.key = value` line
//! per parameter in byte order of the keys: integers in decimal, floats in
//! Rust's shortest round-trip form (`900.0`), strings quoted with `"` and `\`
//! escaped, arrays as `[a, b]`. [`Target::canonical`] returns it.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::Target;

/// First line of the canonical form; bump it if the form itself changes.
const VERSION: &str = "q35-target canonical v1";

/// A target's SHA-256; prints as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetHash(pub [u8; 32]);

impl fmt::Display for TargetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Target {
    /// The text [`Target::hash`] digests (see the module documentation).
    pub fn canonical(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            // Every field is a string, number, bool, array or table, which
            // TOML always represents.
            Err(e) => unreachable!("a Target serializes to TOML: {e}"),
        };
        if let toml::Value::Table(t) = &mut value {
            t.remove("description");
        }
        let mut lines = Vec::new();
        flatten("", &value, &mut lines);
        lines.sort();
        let mut out = String::from(VERSION);
        out.push('\n');
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// SHA-256 of [`Target::canonical`]: identifies the machine a program
    /// was compiled for.
    pub fn hash(&self) -> TargetHash {
        TargetHash(Sha256::digest(self.canonical().as_bytes()).into())
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push(format!("{prefix} = {}", scalar(other))),
    }
}

fn scalar(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => {
            let mut q = String::from('"');
            for c in s.chars() {
                match c {
                    '"' | '\\' => {
                        q.push('\\');
                        q.push(c);
                    }
                    '\n' => q.push_str("\\n"),
                    c => q.push(c),
                }
            }
            q.push('"');
            q
        }
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(x) => format!("{x:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(scalar).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) => {
            let mut items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", scalar(v)))
                .collect();
            items.sort();
            format!("{{{}}}", items.join(", "))
        }
    }
}
