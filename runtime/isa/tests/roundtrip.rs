//! Property tests over the whole table: random valid instructions (every
//! opcode, random fields in range, generated from the operand kinds) survive
//! encode/decode and print/parse exactly; random programs survive
//! disassembly and reassembly; decoding random words never panics. Also the
//! table's own consistency.

use std::collections::BTreeMap;

use proptest::prelude::*;
use q35_isa::operand::{Access, GroupSize, MAX_GROUPS};
use q35_isa::program::check_placement;
use q35_isa::{
    Acc, DType, Dir, ElemWidth, F32Imm, INSTRUCTIONS, Instruction, MemData, MemInit, Opcode,
    Operand, OperandKind, Operands, Placement, Program, QUEUE_COUNT, QueueId, Stream, Symbol,
    Table, TableId, Unit, assemble,
};

/// A valid instruction `opcode` whose fields come from `seeds` (one per
/// operand): element widths and counts first, since stream groups depend on
/// them. Table operands name table `ew index` (see [`tables`]).
fn make(opcode: Opcode, seeds: &[u64]) -> Instruction {
    let info = opcode.info();
    let mut ops = [Operand::UInt(0); 8];
    let pick = |seed: u64, lo: u64, hi: u64| lo + seed % (hi - lo + 1);
    // Pass 1: fields others depend on.
    for (i, spec) in info.operands.iter().enumerate() {
        let s = seeds[i];
        ops[i] = match spec.kind {
            OperandKind::ElemWidth => Operand::ElemWidth(ElemWidth::ALL[(s % 3) as usize]),
            OperandKind::UInt { min, max, .. } => {
                Operand::UInt(pick(s, min.into(), max.into()) as u32)
            }
            OperandKind::Stream { .. }
            | OperandKind::Addr
            | OperandKind::Int { .. }
            | OperandKind::F32
            | OperandKind::Table
            | OperandKind::Acc => ops[i],
        };
    }
    let ew_of = |name: &str, ops: &[Operand]| match info.operand_index(name).map(|i| ops[i]) {
        Some(Operand::ElemWidth(ew)) => ew,
        other => panic!(
            "{} `{name}` is not an element width: {other:?}",
            info.mnemonic
        ),
    };
    // Pass 2: the rest.
    for (i, spec) in info.operands.iter().enumerate() {
        let s = seeds[i];
        let snapshot = ops;
        ops[i] = match spec.kind {
            OperandKind::Stream { group, .. } => {
                let count = match group {
                    GroupSize::Fixed(n) => u64::from(n),
                    GroupSize::ElemWidthOf(ew) => u64::from(ew_of(ew, &snapshot).bytes()),
                    GroupSize::CountOf(k) => match snapshot[info.operand_index(k).expect("k")] {
                        Operand::UInt(k) => u64::from(k),
                        other => panic!("count operand {other:?}"),
                    },
                };
                let dir = if s >> 32 & 1 == 0 {
                    Dir::East
                } else {
                    Dir::West
                };
                Operand::Stream(Stream {
                    id: pick(s, 0, 32 - count) as u8,
                    dir,
                })
            }
            OperandKind::Addr => Operand::UInt((s & 0xffff) as u32),
            OperandKind::Int { bits } => {
                let half = 1i64 << (bits - 1);
                Operand::Int((pick(s, 0, 2 * half as u64 - 1) as i64 - half) as i32)
            }
            OperandKind::F32 => Operand::F32(F32Imm(s as u32)),
            OperandKind::Table => {
                let ew = info
                    .operand_index("ew")
                    .map_or(ElemWidth::B1, |_| ew_of("ew", &snapshot));
                let index = ElemWidth::ALL
                    .iter()
                    .position(|&w| w == ew)
                    .expect("a width");
                Operand::Table(TableId(index as u16))
            }
            OperandKind::Acc => Operand::Acc(if s & 1 == 0 { Acc::New } else { Acc::Add }),
            OperandKind::ElemWidth | OperandKind::UInt { .. } => snapshot[i],
        };
    }
    let ins = Instruction::from_operands(opcode, &ops[..info.operands.len()])
        .unwrap_or_else(|| panic!("{}: operands do not fit the typed fields", info.mnemonic));
    ins.check()
        .unwrap_or_else(|e| panic!("generated an invalid instruction: {e}"));
    ins
}

/// Tables a `permute` of each element width can name: one entry per lane
/// (320 whatever the width), rotations by 1, 2 and 4 lanes.
fn tables() -> Vec<Table> {
    let lanes = q35_isa::VECTOR_BYTES as u16;
    ElemWidth::ALL
        .iter()
        .map(|ew| Table {
            name: format!("rot{}", ew.bytes()),
            values: (0..lanes)
                .map(|l| (l + ew.bytes() as u16) % lanes)
                .collect(),
        })
        .collect()
}

fn instruction() -> impl Strategy<Value = Instruction> {
    (
        prop::sample::select(Opcode::ALL.to_vec()),
        prop::collection::vec(any::<u64>(), 5),
    )
        .prop_map(|(op, seeds)| make(op, &seeds))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_round_trip(ins in instruction()) {
        let word = ins.encode().expect("a valid instruction encodes");
        prop_assert_eq!(word & 0xff, ins.opcode() as u64);
        let used = ins.info().used_bits();
        if used < 64 {
            prop_assert_eq!(word >> used, 0, "reserved bits are zero");
        }
        prop_assert_eq!(Instruction::decode(word), Ok(ins));
    }

    #[test]
    fn print_parse_round_trip(ins in instruction()) {
        let text = ins.to_string();
        prop_assert_eq!(text.parse::<Instruction>(), Ok(ins), "{}", text);
    }

    #[test]
    fn decoding_random_words_never_panics(word in any::<u64>()) {
        if let Ok(ins) = Instruction::decode(word) {
            // A word that decodes is the canonical encoding of its instruction.
            prop_assert_eq!(ins.encode(), Ok(word));
            prop_assert_eq!(ins.to_string().parse::<Instruction>(), Ok(ins));
        }
    }

    #[test]
    fn decoding_near_valid_words_never_panics(ins in instruction(), flip in 0u32..64) {
        let word = ins.encode().expect("valid") ^ (1u64 << flip);
        if let Ok(other) = Instruction::decode(word) {
            prop_assert_eq!(other.encode(), Ok(word));
        }
    }

    #[test]
    fn programs_round_trip_through_lpuasm(
        items in prop::collection::vec((0..QUEUE_COUNT, instruction()), 0..60),
        mem in prop::collection::vec((0usize..7, prop::collection::vec(any::<u32>(), 1..700), any::<bool>()), 0..4),
    ) {
        let mut p = Program::new("lpu-v1");
        p.tables = tables();
        for (q, ins) in items {
            let queue = QueueId::from_index(q).expect("in range");
            let list: &mut Vec<Instruction> = p.queues.entry(queue).or_default();
            if check_placement(queue, list.last(), &ins, &p.tables).is_ok() {
                list.push(ins);
            }
        }
        for (i, (t, values, fill)) in mem.into_iter().enumerate() {
            let dtype = DType::ALL[t];
            let mask = if dtype.bytes() == 4 { u32::MAX } else { (1 << (8 * dtype.bytes())) - 1 };
            let values: Vec<u32> = values.into_iter().map(|v| v & mask).collect();
            let data = if fill {
                MemData::Fill { value: values[0], count: values.len() as u32 }
            } else {
                MemData::Values(values)
            };
            // Slice i (and its neighbours for byte planes) at word 10: never overlapping.
            let slices: Vec<QueueId> = if i % 2 == 0 {
                vec![QueueId::from_index(i as u16).expect("mem")]
            } else {
                (0..dtype.bytes()).map(|j| QueueId::from_index(20 + 4 * i as u16 + j as u16).expect("mem")).collect()
            };
            p.symbols.push(Symbol { name: format!("s{i}"), kind: q35_lpubin::SymbolKind::Output, dtype, dims: vec![2, 3], at: Placement { slices: slices.clone(), addr: 10 } });
            p.mem.push(MemInit { at: Placement { slices, addr: 10 }, dtype, data });
        }
        p.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let text = p.to_lpuasm();
        let back = assemble("prop.lpuasm", &text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &p);
        prop_assert_eq!(back.to_lpuasm(), text);
    }
}

#[test]
fn every_opcode_is_generated_and_round_trips() {
    for op in Opcode::ALL {
        for seed in 0..50u64 {
            let seeds: Vec<u64> = (0..5)
                .map(|i| seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i * 13))
                .collect();
            let ins = make(op, &seeds);
            assert_eq!(Instruction::decode(ins.encode().expect("valid")), Ok(ins));
            assert_eq!(ins.to_string().parse::<Instruction>(), Ok(ins));
        }
    }
}

#[test]
fn table_is_consistent() {
    let mut mnemonics = BTreeMap::new();
    for (i, info) in INSTRUCTIONS.iter().enumerate() {
        assert_eq!(Opcode::ALL[i], info.opcode);
        assert_eq!(Opcode::from_u8(info.opcode as u8), Some(info.opcode));
        assert_eq!(Opcode::from_mnemonic(info.mnemonic), Some(info.opcode));
        assert!(
            mnemonics.insert(info.mnemonic, ()).is_none(),
            "{} twice",
            info.mnemonic
        );
        assert!(
            info.used_bits() <= 64,
            "{} needs {} bits",
            info.mnemonic,
            info.used_bits()
        );
        assert!(!info.doc.is_empty());
        // The syntax names every operand exactly once, in table (encoding)
        // order, and nothing else: the parser relies on it.
        let placeholders: Vec<&str> = info.syntax.split(['{', '}']).skip(1).step_by(2).collect();
        let names: Vec<&str> = info.operands.iter().map(|o| o.name).collect();
        assert_eq!(placeholders, names, "{}", info.mnemonic);
        let mut reads = 0;
        let mut writes = 0;
        for spec in info.operands {
            let refers = |name: &str, want: fn(&OperandKind) -> bool| {
                let other = info.operand_index(name).map(|j| info.operands[j].kind);
                assert!(
                    other.as_ref().is_some_and(want),
                    "{} `{}` refers to `{name}`",
                    info.mnemonic,
                    spec.name
                );
            };
            match spec.kind {
                OperandKind::Stream { access, group } => {
                    match access {
                        Access::Read => reads += 1,
                        Access::Write => writes += 1,
                    }
                    match group {
                        GroupSize::Fixed(n) => assert!((1..=32).contains(&n)),
                        GroupSize::ElemWidthOf(n) => {
                            refers(n, |k| matches!(k, OperandKind::ElemWidth))
                        }
                        GroupSize::CountOf(n) => refers(n, |k| {
                            matches!(
                                k,
                                OperandKind::UInt {
                                    min: 1,
                                    max: 1..=32,
                                    ..
                                }
                            )
                        }),
                    }
                }
                OperandKind::UInt { bits, min, max } => {
                    assert!(
                        min <= max && u64::from(max) < 1u64 << bits,
                        "{} `{}`",
                        info.mnemonic,
                        spec.name
                    );
                }
                OperandKind::Addr
                | OperandKind::Int { .. }
                | OperandKind::F32
                | OperandKind::ElemWidth
                | OperandKind::Table
                | OperandKind::Acc => {}
            }
        }
        assert!(reads <= MAX_GROUPS && writes <= MAX_GROUPS);
        // Control instructions occupy no unit; unit instructions one cycle or more.
        let example = make(info.opcode, &[7; 5]);
        assert_eq!(
            example.unit() == Unit::Control,
            example.occupancy() == 0,
            "{}",
            info.mnemonic
        );
        assert!(example.issue_cycles() >= 1);
    }
    assert!(
        Opcode::from_u8(0).is_none(),
        "a zero word is not an instruction"
    );
}

#[test]
fn reads_writes_and_cycles() {
    let ins: Instruction = "select s3.e, s4.w, s8.e -> s12.w".parse().expect("select");
    let reads: Vec<(Stream, u8)> = ins.reads().iter().map(|g| (g.first, g.count)).collect();
    assert_eq!(
        reads,
        [
            (Stream::east(3), 1),
            (Stream::west(4), 4),
            (Stream::east(8), 4)
        ]
    );
    let writes: Vec<(Stream, u8)> = ins.writes().iter().map(|g| (g.first, g.count)).collect();
    assert_eq!(writes, [(Stream::west(12), 4)]);
    let lw: Instruction = "lw s2.w, 8, 100".parse().expect("lw");
    assert_eq!(lw.reads()[0].count, 8);
    assert_eq!(lw.reads()[0].streams().last(), Some(Stream::west(9)));
    assert_eq!(lw.occupancy(), 13, "ceil(100 / 8)");
    assert!(lw.writes().is_empty());
    let shift: Instruction = "shift s0.e -> s2.e, 3, 160, 2".parse().expect("shift");
    assert_eq!((shift.reads()[0].count, shift.writes()[0].count), (2, 2));
    assert_eq!(
        "repeat 7, 3, 1"
            .parse::<Instruction>()
            .map(|i| i.issue_cycles()),
        Ok(21)
    );
    assert_eq!(
        "nop 9".parse::<Instruction>().map(|i| i.issue_cycles()),
        Ok(9)
    );
    let ops: Operands = "mm s1.w -> s4.e, new"
        .parse::<Instruction>()
        .expect("mm")
        .operands();
    assert_eq!(ops[2], Operand::Acc(Acc::New));
    let gather: Instruction = "gather s0.e -> s2.w, 100".parse().expect("gather");
    assert_eq!(
        gather.offset_addresses(-3).map(|i| i.to_string()),
        Ok("gather s0.e -> s2.w, 97".into())
    );
    assert!(gather.offset_addresses(-101).is_err());
    assert!(gather.offset_addresses(65436).is_err());
    let fadd: Instruction = "fadd s0.e, s4.e -> s8.e".parse().expect("fadd");
    assert_eq!(fadd.offset_addresses(5), Ok(fadd), "no address fields");
    let unpack: Instruction = "unpack35 s0.e -> s16.w, 4, 7".parse().expect("unpack35");
    assert_eq!((unpack.reads()[0].count, unpack.writes()[0].count), (7, 16));
}
