//! docs/isa.md's "Instruction table" section is exactly what
//! `q35_isa::markdown_table()` renders. `Q35_BLESS=1 cargo test -p q35-isa`
//! rewrites it.

const HEADING: &str = "## Instruction table\n";

#[test]
fn instruction_table_in_docs_is_generated() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/isa.md");
    let doc = std::fs::read_to_string(path).expect("docs/isa.md is readable");
    let at = doc
        .find(HEADING)
        .expect("docs/isa.md has a `## Instruction table` heading")
        + HEADING.len();
    let want = format!("\n{}", q35_isa::markdown_table());
    if doc[at..] == want {
        return;
    }
    if std::env::var_os("Q35_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, format!("{}{want}", &doc[..at])).expect("docs/isa.md is writable");
        return;
    }
    panic!(
        "docs/isa.md's instruction table is stale; run `Q35_BLESS=1 cargo test -p q35-isa` \
         to regenerate it.\n--- generated ---\n{want}"
    );
}
