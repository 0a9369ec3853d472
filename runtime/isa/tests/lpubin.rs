//! Program <-> .lpubin: the docs example through the container and back.

use q35_isa::SymbolKind;
use q35_isa::{Instruction, Program, QueueId, Table, TableId, assemble};
use q35_lpubin::{ElemType, LpuBinary};
use q35_target::Target;

fn doc_example() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/isa.md");
    let doc = std::fs::read_to_string(path).expect("docs/isa.md is readable");
    let start = doc.find("```lpuasm\n").expect("an ```lpuasm block") + 10;
    let len = doc[start..].find("```").expect("closed");
    doc[start..start + len].to_string()
}

/// The MEM image: every (slice, word) -> bytes.
fn image(p: &Program) -> Vec<(QueueId, u32, Vec<u8>)> {
    let mut words: Vec<_> = p
        .mem
        .iter()
        .flat_map(|m| m.words())
        .map(|(q, a, w)| (q, a, w.to_vec()))
        .collect();
    words.sort();
    words
}

fn target() -> Target {
    Target::builtin("lpu-v1").expect("the built-in target")
}

#[test]
fn doc_example_through_lpubin() {
    let p = assemble("isa.md", &doc_example()).expect("assembles");
    let bytes = p
        .to_lpubin(&target(), "q35-isa test")
        .expect("converts")
        .to_bytes()
        .expect("writes");
    let bin = LpuBinary::from_bytes(bytes.clone()).expect("a valid container");
    assert_eq!(bin.target_name(), "lpu-v1");
    assert_eq!(bin.target_hash(), &target().hash().0);
    let vxm0 = bin.queue(88).expect("vxm.0 is queue 88");
    let fadd = Instruction::Fadd {
        a: q35_isa::Stream::east(0),
        b: q35_isa::Stream::west(0),
        dst: q35_isa::Stream::east(4),
    };
    assert_eq!(vxm0.words().get(1), Some(fadd.encode().expect("valid")));
    // mem.w3 is MEM slice 40, mem.e0 slice 44.
    let mem = bin.mem().expect("a mem section");
    assert_eq!(mem.word_bytes(), 320);
    assert_eq!(mem.word(40, 0).map(|w| w[1]), Some(0xc0), "byte 3 of -2.5");
    assert!(mem.word(44, 1).is_none());

    let back = Program::from_lpubin(&bin, &target()).expect("reads back");
    assert_eq!(back.queues, p.queues);
    assert_eq!(back.symbols, p.symbols);
    assert_eq!(image(&back), image(&p));
    // lpubin -> Program -> lpubin is the identity on bytes.
    let again = back
        .to_lpubin(&target(), "q35-isa test")
        .expect("converts")
        .to_bytes()
        .expect("writes");
    assert_eq!(again, bytes);
}

#[test]
fn tables_are_renumbered_into_name_order() {
    let text = format!(
        ".target lpu-v1\n.table zeta u16 [{}]\n.table alpha u16 [1, 2]\n.queue sxm.w\n  permute s0.e -> s4.e, zeta, 1\n  halt\n",
        (0..320)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let p = assemble("t.lpuasm", &text).expect("assembles");
    let sxm = "sxm.w".parse::<QueueId>().expect("queue");
    let Instruction::Permute { map, .. } = p.queues[&sxm][0] else {
        panic!("permute")
    };
    assert_eq!(map, TableId(0));
    let bin = LpuBinary::from_bytes(
        p.to_lpubin(&target(), "t")
            .expect("converts")
            .to_bytes()
            .expect("writes"),
    )
    .expect("valid");
    let back = Program::from_lpubin(&bin, &target()).expect("reads back");
    assert_eq!(
        back.tables[0],
        Table {
            name: "alpha".into(),
            values: vec![1, 2]
        }
    );
    let Instruction::Permute { map, .. } = back.queues[&sxm][0] else {
        panic!("permute")
    };
    assert_eq!(map, TableId(1), "zeta is second in name order");
    assert_eq!(back.tables[1].values.len(), 320);
}

#[test]
fn symbol_kinds_and_sixteen_bit_types_round_trip() {
    let text = ".target lpu-v1\n\
        .symbol pos_idx position u16 [320] at mem.w0+mem.w1 @0\n\
        .symbol x_in input f32 [576] at mem.w2 @0\n\
        .symbol kcache.0 kv_cache f32 [64, 640] at mem.w3 @0\n\
        .symbol d i16 [4] at mem.w4 @0\n";
    let p = assemble("t.lpuasm", text).expect("assembles");
    let kinds: Vec<SymbolKind> = p.symbols.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            SymbolKind::Position,
            SymbolKind::Input,
            SymbolKind::KvCache,
            SymbolKind::Output
        ]
    );
    let bin = LpuBinary::from_bytes(
        p.to_lpubin(&target(), "t")
            .expect("converts")
            .to_bytes()
            .expect("writes"),
    )
    .expect("valid container");
    let s = bin.symbol("pos_idx").expect("written");
    assert_eq!((s.kind, s.elem), (SymbolKind::Position, ElemType::U16));
    assert_eq!(
        bin.symbol("d").map(|s| (s.kind, s.elem)),
        Some((SymbolKind::Output, ElemType::I16))
    );
    let back = Program::from_lpubin(&bin, &target()).expect("reads back");
    assert_eq!(back.symbols.len(), 4);
    for s in &p.symbols {
        assert!(back.symbols.contains(s), "{s:?}");
    }
    // The listing names a kind only when it is not `output`.
    let listing = back.to_lpuasm();
    assert!(
        listing.contains(".symbol pos_idx position u16 [320] at mem.w0+mem.w1 @0"),
        "{listing}"
    );
    assert!(
        listing.contains(".symbol d i16 [4] at mem.w4 @0"),
        "{listing}"
    );
    assert_eq!(
        assemble("back.lpuasm", &listing).expect("reassembles"),
        back
    );
}

#[test]
fn unsupported_and_invalid() {
    // A word that is not an instruction.
    let mut b = q35_lpubin::Builder::new("lpu-v1", target().hash().0, "t");
    b.queue(3, vec![0xff]);
    let bin = LpuBinary::from_bytes(b.to_bytes().expect("writes")).expect("valid container");
    let e = Program::from_lpubin(&bin, &target()).expect_err("opcode 0xff");
    assert!(
        e.to_string().starts_with(
            "queue mem.w40, instruction 0: word 0x00000000000000ff: unknown opcode 0xff"
        ),
        "{e}"
    );
    let mut b = q35_lpubin::Builder::new("lpu-v1", target().hash().0, "t");
    b.queue(200, vec![0x05]);
    let bin = LpuBinary::from_bytes(b.to_bytes().expect("writes")).expect("valid container");
    assert_eq!(
        Program::from_lpubin(&bin, &target())
            .expect_err("queue 200")
            .to_string(),
        "queue 200 is not a queue of lpu-v1"
    );
}
