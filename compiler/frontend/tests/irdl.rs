//! `dialects/q35.irdl.mlir` and `dialects/lpu.irdl.mlir` are generated from
//! the op tables: they must equal `q35_frontend::ops::irdl::render()` and
//! `q35_frontend::lpu_ops::irdl::render()`. `Q35_BLESS=1` rewrites them.

use std::path::Path;

#[test]
fn irdl_file_matches_the_op_table() {
    check_generated("q35.irdl.mlir", &q35_frontend::ops::irdl::render());
}

#[test]
fn lpu_irdl_file_matches_the_op_table() {
    check_generated("lpu.irdl.mlir", &q35_frontend::lpu_ops::irdl::render());
}

/// Every lpu op and each of its required attributes is in the file.
#[test]
fn every_lpu_op_and_attribute_is_declared() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dialects/lpu.irdl.mlir");
    let text = std::fs::read_to_string(&path).unwrap();
    for def in &q35_frontend::lpu_ops::OPS {
        let mnemonic = def.name.strip_prefix("lpu.").unwrap();
        let start = text
            .find(&format!("irdl.operation @{mnemonic} {{"))
            .unwrap_or_else(|| panic!("{} missing", def.name));
        let body = &text[start..start + text[start..].find("\n  }").unwrap()];
        for a in def.attributes {
            assert!(
                body.contains(&format!("\"{}\" = %", a.name)),
                "{}.{}",
                def.name,
                a.name
            );
        }
    }
}

fn check_generated(file: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dialects")
        .join(file);
    if std::env::var_os("Q35_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap();
    if on_disk != generated {
        let line = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || on_disk.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} differs from the op table at line {line}; regenerate with \
             `Q35_BLESS=1 cargo test -p q35-frontend --test irdl`",
            path.display()
        );
    }
}

/// Every op of the table is in the file, with its operand, result and
/// attribute names (a second look at the same fact, independent of the
/// renderer's layout).
#[test]
fn every_op_operand_and_attribute_is_declared() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dialects/q35.irdl.mlir");
    let text = std::fs::read_to_string(&path).unwrap();
    for def in &q35_frontend::ops::OPS {
        let mnemonic = def.name.strip_prefix("q35.").unwrap();
        let start = text
            .find(&format!("irdl.operation @{mnemonic} {{"))
            .unwrap_or_else(|| panic!("{} missing", def.name));
        let body = &text[start..start + text[start..].find("\n  }").unwrap()];
        for v in def.operands.iter().chain(def.results) {
            assert!(
                body.contains(&format!("{}: %", v.name)),
                "{}.{}",
                def.name,
                v.name
            );
        }
        for a in def.attributes {
            assert!(
                body.contains(&format!("\"{}\" = %", a.name)),
                "{}.{}",
                def.name,
                a.name
            );
        }
    }
}

/// docs/lpu-dialect.md documents every lpu op and each of its attributes
/// (required and optional), in backticks.
#[test]
fn lpu_dialect_doc_covers_the_op_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/lpu-dialect.md");
    let text = std::fs::read_to_string(&path).unwrap();
    for def in &q35_frontend::lpu_ops::OPS {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", def.name)))
            .unwrap_or_else(|| panic!("{} has no row in the ops table", def.name));
        for a in def.attributes.iter().chain(def.optional) {
            let in_row = row.contains(&format!("`{}`", a.name));
            let elsewhere = text.contains(&format!("`{}", a.name));
            assert!(in_row || elsewhere, "{}.{} undocumented", def.name, a.name);
        }
        for a in def.attributes {
            assert!(
                row.contains(&format!("`{}`", a.name)),
                "{}.{} missing from its row",
                def.name,
                a.name
            );
        }
    }
}
