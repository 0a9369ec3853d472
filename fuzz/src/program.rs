//! A structure-aware generator: bytes -> a valid [`Program`], built
//! through q35-isa's one instruction table, so a fuzzer spends its time on
//! programs that pass every encoding and placement rule instead of on
//! random bytes the assembler refuses. The `isa_program` harness checks the
//! program's round trips; a simulator harness runs the same programs.

use q35_isa::program::check_placement;
use q35_isa::{INSTRUCTIONS, Instruction, Program, QueueId, Table};

use crate::isa;

/// Reads the fuzzer's bytes; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, i| acc | u64::from(self.u8()) << (8 * i))
    }
}

/// Most instructions a generated program holds (keeps one run short).
const MAX_INSTRUCTIONS: usize = 512;

/// The program `data` describes, for lpu-v1: up to two tables (their values
/// from the bytes), then instructions until the bytes run out. Each
/// instruction takes an opcode from the table (one byte), a queue among
/// those whose unit runs it (one byte) and every operand field's bits
/// (eight bytes each, masked to the field); words that do not decode and
/// placements the rules refuse are skipped. The result always validates.
pub fn program_from_bytes(data: &[u8]) -> Program {
    let mut b = Bytes(data);
    let mut p = Program::new("lpu-v1");
    for t in 0..b.u8() % 3 {
        let len = usize::from(b.u8() % 64) + 1;
        let values = (0..len)
            .map(|_| u16::from(b.u8()) | u16::from(b.u8()) << 8)
            .collect();
        p.tables.push(Table {
            name: format!("t{t}"),
            values,
        });
    }
    let queues: Vec<QueueId> = QueueId::all().collect();
    let mut count = 0;
    while !b.0.is_empty() && count < MAX_INSTRUCTIONS {
        let info = &INSTRUCTIONS[usize::from(b.u8()) % INSTRUCTIONS.len()];
        let fits: Vec<QueueId> = queues
            .iter()
            .copied()
            .filter(|q| q.accepts(info.unit))
            .collect();
        let queue = fits[usize::from(b.u8()) % fits.len()];
        let mut word = u64::from(info.opcode as u8);
        for (i, spec) in info.operands.iter().enumerate() {
            let bits = spec.kind.bits();
            let mask = if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            word |= (b.u64() & mask) << info.bit_range(i).start;
        }
        let Ok(ins) = Instruction::decode(word) else {
            continue;
        };
        let list = p.queues.entry(queue).or_default();
        if check_placement(queue, list.last(), &ins, &p.tables).is_ok() {
            list.push(ins);
            count += 1;
        }
    }
    p.queues.retain(|_, list| !list.is_empty());
    p
}

/// Generates a program from `data` ([`program_from_bytes`]): it validates,
/// its disassembly assembles to the identical program, and it becomes an
/// `.lpubin` that loads back to the identical bytes. Returns whether the
/// program holds an instruction.
pub fn isa_program(data: &[u8]) -> bool {
    let p = program_from_bytes(data);
    p.validate()
        .unwrap_or_else(|e| panic!("the generator made an invalid program: {e}"));
    let listing = p.to_lpuasm();
    let again = q35_isa::assemble("generated.lpuasm", &listing).unwrap_or_else(|e| {
        panic!("a generated program's disassembly does not assemble: {e}\n{listing}")
    });
    assert!(again == p, "disassembly changes the program:\n{listing}");
    isa::to_binary(&p);
    !p.queues.is_empty()
}
