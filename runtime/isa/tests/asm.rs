//! The assembler and disassembler on whole programs: the example of
//! docs/isa.md, error messages and their locations, exact round trips.

use q35_isa::{
    DType, Dir, ElemWidth, F32Imm, Instruction, MemData, Program, QueueId, Stream, assemble,
};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/isa.md");
    std::fs::read_to_string(path).expect("docs/isa.md is readable")
}

/// The ```lpuasm block of docs/isa.md's Assembly section.
fn doc_example() -> String {
    let doc = doc();
    let start = doc
        .find("```lpuasm\n")
        .expect("docs/isa.md has an ```lpuasm example")
        + 10;
    let len = doc[start..]
        .find("```")
        .expect("the example block is closed");
    doc[start..start + len].to_string()
}

fn q(name: &str) -> QueueId {
    name.parse().expect("a queue name")
}

#[test]
fn doc_example_assembles() {
    let p = assemble("isa.md", &doc_example()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.target, "lpu-v1");
    assert_eq!(p.queues.len(), 9);
    assert_eq!(
        p.queues[&q("vxm.0")],
        [
            Instruction::Nop { n: 5 },
            Instruction::Fadd {
                a: Stream::east(0),
                b: Stream::west(0),
                dst: Stream::east(4)
            },
            Instruction::Halt {},
        ]
    );
    assert_eq!(
        p.queues[&q("mem.e3")][2],
        Instruction::Write {
            addr: 8,
            src: Stream::east(7)
        }
    );
    // Issue cycles: the write of mem.e3 issues on cycle 0 + 1 + 12 = 13.
    let e3 = &p.queues[&q("mem.e3")];
    assert_eq!(
        e3[..2].iter().map(Instruction::issue_cycles).sum::<u64>(),
        13
    );

    assert_eq!(p.mem.len(), 2);
    assert_eq!(p.mem[0].dtype, DType::F32);
    assert_eq!(
        p.mem[0].data,
        MemData::Values(vec![
            1f32.to_bits(),
            (-2.5f32).to_bits(),
            0.003f32.to_bits()
        ])
    );
    // -2.5 = 0xc0200000: byte 3 (0xc0) of lane 1 is word 0 of mem.w3.
    let words = p.mem[0].words();
    let w3 = words
        .iter()
        .find(|w| w.0 == q("mem.w3"))
        .expect("a word in mem.w3");
    assert_eq!((w3.1, w3.2[1], w3.2[3]), (0, 0xc0, 0));
    assert_eq!(
        p.mem[1].data,
        MemData::Fill {
            value: 0.25f32.to_bits(),
            count: 320
        }
    );
    assert_eq!(p.symbols[0].name, "sum");
    assert_eq!(p.symbols[0].at.addr, 8);
    p.validate().expect("an assembled program is valid");
}

#[test]
fn disassembly_reassembles_identically() {
    let p = assemble("isa.md", &doc_example()).expect("the example assembles");
    let text = p.to_lpuasm();
    let back = assemble("dis.lpuasm", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, p);
    assert_eq!(back.to_lpuasm(), text);
}

#[test]
fn tables_lists_and_fills_round_trip() {
    let rev: Vec<String> = (0..320).rev().map(|i| i.to_string()).collect();
    let text = format!(
        ".target lpu-v1\n\
         .table rev u16 [{}]\n\
         .table empty u16 []\n\
         .mem mem.w5 @100 i8 [-128, 127, 0]\n\
         .mem mem.w5 @103 u16 fill 0xffff, 700\n\
         .mem mem.e1+mem.e2 @7 f16 [1.5, 0x7e01, -0.0, 65504]\n\
         .mem mem.e9 @0 f32 [0x7fc00001, inf, -1e-45]\n\
         .symbol out i32 [2, 320] at mem.e9 @64\n\
         .queue sxm.e\n\
         permute s0.w -> s4.w, rev, 4 ; comment\n\
         repeat 3, 2, -1\n\
         shift s8.e -> s9.e, 5, 320, 1\n\
         bcast s0.e -> s2.e, 319, 2\n\
         halt\n\
         .queue mxm.2\n\
         lw s0.e, 32, 320\n\
         iw\n\
         mm s0.e -> s4.w, add\n\
         .queue mem.w5\n\
         read 65535, s31.w\n\
         repeat 1, 65535, 32767\n\
         gather s0.e -> s2.w, 3\n\
         scatter s0.w, s2.w, 3\n\
         sync\n\
         notify\n\
         nop 16777215\n\
         .queue vxm.15\n\
         fconst 0x7fc00001 -> s0.e\n\
         unpack35 s0.e -> s16.w, 16, 32\n\
         select s0.e, s1.e, s5.w -> s28.e\n",
        rev.join(", ")
    );
    let p = assemble("t.lpuasm", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.tables[0].values.len(), 320);
    assert!(p.tables[1].values.is_empty());
    let dis = p.to_lpuasm();
    assert!(dis.contains("permute s0.w -> s4.w, rev, 4"), "{dis}");
    assert!(dis.contains(".table rev u16 [\n    319, 318,"), "{dis}");
    let back = assemble("dis.lpuasm", &dis).unwrap_or_else(|e| panic!("{e}\n{dis}"));
    assert_eq!(back, p);
    // Identical words, queue by queue.
    for (queue, list) in &p.queues {
        let words: Vec<u64> = list.iter().map(|i| i.encode().expect("valid")).collect();
        let again: Vec<u64> = back.queues[queue]
            .iter()
            .map(|i| i.encode().expect("valid"))
            .collect();
        assert_eq!(words, again);
    }
    let Instruction::Fconst { imm, .. } = p.queues[&q("vxm.15")][0] else {
        panic!("fconst")
    };
    assert_eq!(imm, F32Imm(0x7fc0_0001));
}

/// Assembles `body` after a `.target` line and returns the error text.
fn error(body: &str) -> String {
    let text = format!(".target lpu-v1\n{body}");
    match assemble("bad.lpuasm", &text) {
        Ok(p) => panic!("assembled:\n{body}\nto {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_are_located_and_name_the_token() {
    let cases: &[(&str, &str)] = &[
        (
            ".queue vxm.0\n  fadd s0.e, s4.e -> s8.e\n  fmad s0.e\n",
            "bad.lpuasm:4:3: unknown mnemonic `fmad`",
        ),
        (
            ".queue vxm.0\n  fadd 3, s4.e -> s8.e\n",
            "bad.lpuasm:3:8: `fadd` operand `a`: expected stream group of 4",
        ),
        (
            ".queue mem.w0\n  read 0, s32.e\n",
            "bad.lpuasm:3:11: `read` operand `dst`: stream `s32.e` is out of range",
        ),
        (
            ".queue mem.w0\n  read 65536, s1.e\n",
            "bad.lpuasm:3:8: `read` operand `addr`: 65536 is out of range",
        ),
        (
            ".queue vxm.0\n  fadd s30.e, s4.e -> s8.e\n",
            "bad.lpuasm:3:8: `fadd` operand `a`: a group of 4 streams from s30.e runs past stream 31",
        ),
        (
            ".queue mem.w0\n  fadd s0.e, s4.e -> s8.e\n",
            "bad.lpuasm:3:3: `fadd s0.e, s4.e -> s8.e` in mem.w0: `fadd` is a vxm instruction, not valid in mem queue mem.w0",
        ),
        (
            ".queue vxm.0\n  repeat 2, 1, 0\n",
            "bad.lpuasm:3:3: `repeat 2, 1, 0` in vxm.0: `repeat` is the first instruction of its queue",
        ),
        (
            ".queue vxm.0\n  nop 2\n  repeat 2, 1, 0\n",
            "`repeat` must follow a unit instruction, not `nop`",
        ),
        (
            ".queue mxm.0\n  mm s0.e -> s4.e, new\n",
            "mxm.0 reads west-flowing streams, not s0.e",
        ),
        (
            ".queue mxm.0\n  lw s0.w, 8, 400\n",
            "`lw` operand `n`: 400 is out of range (expected integer 1..=320)",
        ),
        (
            ".queue sxm.w\n  bcast s0.e -> s4.e, 320, 4\n",
            "bad.lpuasm:3:23: `bcast` operand `l`: 320 is out of range (expected integer 0..=319)",
        ),
        (
            ".queue sxm.w\n  shift s0.e -> s4.e, 321, 320, 2\n",
            "bad.lpuasm:3:23: `shift` operand `n`: 321 is out of range (expected integer 0..=320)",
        ),
        (
            ".queue sxm.w\n  shift s0.e -> s4.e, 1, 0, 4\n",
            "bad.lpuasm:3:26: `shift` operand `w`: 0 is out of range (expected integer 1..=320)",
        ),
        (
            ".table t u16 [0, 1]\n.queue sxm.w\n  permute s0.e -> s4.e, t, 4\n",
            "table `t` has 2 entries; a map of 4-byte elements needs 320 (one per lane)",
        ),
        (
            ".queue sxm.w\n  permute s0.e -> s4.e, nope, 1\n",
            "bad.lpuasm:3:25: `permute` operand `map`: unknown table `nope`",
        ),
        (
            ".table t u16 [0, 1]\n.queue sxm.w\n  permute s0.e -> s4.e, t, 1\n",
            "table `t` has 2 entries; a map of 1-byte elements needs 320 (one per lane)",
        ),
        (
            ".queue vxm.0\n  halt extra\n",
            "bad.lpuasm:3:8: `halt`: unexpected `extra` after the last operand",
        ),
        (
            "  halt\n",
            "bad.lpuasm:2:3: instruction outside a `.queue` section",
        ),
        (".queue vxm.16\n", "bad.lpuasm:2:8: unknown queue `vxm.16`"),
        (
            ".queue vxm.1\n.queue vxm.1\n",
            "bad.lpuasm:3:8: queue `vxm.1` has a `.queue` section already",
        ),
        (
            ".mem vxm.0 @0 i8 [1]\n",
            "bad.lpuasm:2:6: .mem vxm.0 @0: vxm.0 is not a MEM slice",
        ),
        (
            ".mem mem.w0 @0 i8 [1, 300]\n",
            "bad.lpuasm:2:23: `300` is not a i8 value",
        ),
        (
            ".mem mem.w0 @0 i9 [1]\n",
            "bad.lpuasm:2:16: unknown type `i9`",
        ),
        (
            ".mem mem.w0 0 i8 [1]\n",
            "bad.lpuasm:2:13: expected an address `@0`..`@65535`, found `0`",
        ),
        (
            ".mem mem.w0 @65535 f32 [1]\n",
            "words 65535..65539 run past the last address 65535",
        ),
        (
            ".mem mem.w0+mem.w1 @0 f32 [1]\n",
            "2 slices for f32: give one, or one per byte (4)",
        ),
        (
            ".mem mem.w0+mem.x1 @0 i16 [1]\n",
            "bad.lpuasm:2:13: unknown queue `mem.x1`",
        ),
        (".mem mem.w0 @0 i8 [1, 2\n", "unclosed `[`"),
        (
            ".mem mem.w0 @0 i8 [1]\n.mem mem.w0 @0 i8 fill 2, 1\n",
            "overlap",
        ),
        (
            ".mem mem.w0 @0 i8 fill 2, 0\n",
            "expected an element count >= 1, found `0`",
        ),
        (
            ".symbol x f32 [0] at mem.w0 @0\n",
            "expected a dimension >= 1, found `0`",
        ),
        (
            ".symbol x f32 [4] on mem.w0 @0\n",
            "bad.lpuasm:2:19: expected `at`, found `on`",
        ),
        (
            ".table a u16 [1]\n.table a u16 [2]\n",
            "bad.lpuasm:3:8: table `a` is defined twice",
        ),
        (".frob 1\n", "bad.lpuasm:2:1: unknown directive `.frob`"),
        (".target lpu-v1\n", "bad.lpuasm:2:1: `.target` given twice"),
    ];
    for (body, want) in cases {
        let got = error(body);
        assert!(
            got.contains(want),
            "for\n{body}\nwant `{want}`\n got `{got}`"
        );
    }
    let e = assemble("x.lpuasm", ".queue vxm.0\n").expect_err("no .target");
    assert_eq!(
        e.to_string(),
        "x.lpuasm:1:1: expected `.target` before `.queue`"
    );
    let e = assemble("x.lpuasm", "; nothing\n").expect_err("no .target");
    assert_eq!(e.line, 1);
}

#[test]
fn missing_halt_is_not_an_assembler_error() {
    let p = assemble("ok.lpuasm", ".target lpu-v1\n.queue vxm.0\n  nop 3\n").expect("assembles");
    assert_eq!(p.queues[&q("vxm.0")], [Instruction::Nop { n: 3 }]);
}

#[test]
fn validate_reports_what_the_assembler_would() {
    let mut p = Program::new("lpu-v1");
    p.queues.insert(q("mem.e0"), vec![Instruction::Iw {}]);
    let e = p.validate().expect_err("iw is an MXM instruction");
    assert_eq!(
        e.to_string(),
        "queue mem.e0, instruction 0 (`iw`): `iw` is a mxm instruction, not valid in mem queue mem.e0"
    );
    p.queues
        .insert(q("mem.e0"), vec![Instruction::Nop { n: 0 }]);
    assert!(
        p.validate()
            .expect_err("nop 0")
            .to_string()
            .contains("0 is out of range")
    );
}

/// An SXM element is one lane of its `ew`-stream group (docs/isa.md 1, 3): a
/// vector has 320 elements whatever `ew`, so lane operands and permute maps
/// count lanes. One step of the reduction of a 320-lane f32 vector (shift by
/// 160, width 320, 4-byte elements) must be expressible.
#[test]
fn sxm_lane_operands_count_lanes_whatever_the_element_width() {
    let map: Vec<String> = (0..320).map(|l| ((l + 160) % 320).to_string()).collect();
    for ew in [1, 2, 4] {
        let text = format!(
            ".target lpu-v1\n.table half u16 [{}]\n.queue sxm.e\n\
             shift s0.e -> s4.w, 160, 320, {ew}\n\
             shift s0.e -> s4.w, 320, 320, {ew}\n\
             bcast s0.e -> s4.w, 319, {ew}\n\
             permute s0.e -> s4.w, half, {ew}\n\
             halt\n",
            map.join(", ")
        );
        let p = assemble("lanes.lpuasm", &text).unwrap_or_else(|e| panic!("ew {ew}: {e}"));
        let list = &p.queues[&q("sxm.e")];
        assert_eq!(
            list[0],
            Instruction::Shift {
                src: Stream {
                    id: 0,
                    dir: Dir::East
                },
                dst: Stream {
                    id: 4,
                    dir: Dir::West
                },
                n: 160,
                w: 320,
                ew: ElemWidth::from_bytes(ew).expect("1, 2 or 4"),
            }
        );
        for ins in list {
            let word = ins.encode().unwrap_or_else(|e| panic!("{ins}: {e}"));
            assert_eq!(Instruction::decode(word), Ok(*ins));
        }
    }
}
