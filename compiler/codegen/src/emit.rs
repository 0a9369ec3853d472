//! Timed instructions to instruction lists: `nop` fills the gaps, runs of
//! one instruction on consecutive cycles whose addresses advance by a
//! constant stride become `instr; repeat n, 1, stride` (docs/isa.md 2), and
//! every list ends with `halt` on the cycle after its last issue. The
//! result issues every instruction on exactly its scheduled cycle.

use q35_isa::Instruction;

use crate::machine::Cycle;

/// Largest `nop` count.
const MAX_NOP: Cycle = (1 << 24) - 1;
/// Largest `repeat` count.
const MAX_REPEAT: usize = 0xffff;

/// The stride by which `b`'s address fields are `a`'s advanced (0 for
/// instructions without addresses when they are equal).
fn stride(a: &Instruction, b: &Instruction) -> Option<i64> {
    if a.opcode() != b.opcode() {
        return None;
    }
    if a == b {
        return Some(0);
    }
    let info = a.info();
    let (oa, ob) = (a.operands(), b.operands());
    let mut stride = None;
    for i in 0..info.operands.len() {
        if a.is_address(i) {
            let (q35_isa::Operand::UInt(x), q35_isa::Operand::UInt(y)) = (oa[i], ob[i]) else {
                return None;
            };
            let d = i64::from(y) - i64::from(x);
            if stride.is_some_and(|s| s != d) {
                return None;
            }
            stride = Some(d);
        } else if oa[i] != ob[i] {
            return None;
        }
    }
    stride.filter(|s| (-(1 << 15)..(1 << 15)).contains(s))
}

/// One queue's instruction list from its timed instructions (issue cycles
/// strictly increasing by at least each one's issue cycles), with the
/// index in the list of each input instruction's first word.
pub fn queue_list(timed: &[(Cycle, Instruction)]) -> (Vec<Instruction>, Vec<usize>) {
    let mut out = Vec::new();
    let mut index = Vec::with_capacity(timed.len());
    let mut now: Cycle = 0;
    let mut i = 0;
    while i < timed.len() {
        let (t, ins) = timed[i];
        let mut gap = t - now;
        while gap > 0 {
            let n = gap.min(MAX_NOP);
            out.push(Instruction::Nop { n: n as u32 });
            gap -= n;
        }
        index.push(out.len());
        out.push(ins);
        now = t + ins.issue_cycles() as Cycle;
        i += 1;
        if ins.issue_cycles() != 1 || ins.occupancy() > 1 {
            continue;
        }
        // A run on consecutive cycles with one stride.
        let mut n = 0usize;
        let mut s = None;
        while i + n < timed.len() && n < MAX_REPEAT {
            let (tn, next) = timed[i + n];
            if tn != t + 1 + n as Cycle {
                break;
            }
            let Some(d) = stride(&ins, &next) else { break };
            let per = if n == 0 { Some(d) } else { s };
            let Some(per) = per else { break };
            if d != per * (n as i64 + 1) {
                break;
            }
            s = Some(per);
            n += 1;
        }
        if n >= 2 {
            for _ in 0..n {
                index.push(out.len());
            }
            out.push(Instruction::Repeat {
                n: n as u32,
                d: 1,
                stride: s.unwrap_or(0) as i32,
            });
            now = t + 1 + n as Cycle;
            i += n;
        }
    }
    out.push(Instruction::Halt {});
    (out, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use q35_isa::Stream;

    fn read(addr: u32) -> Instruction {
        Instruction::Read {
            addr,
            dst: Stream::east(3),
        }
    }

    #[test]
    fn gaps_become_nops_and_runs_repeats() {
        let timed = vec![
            (2, read(10)),
            (3, read(11)),
            (4, read(12)),
            (5, read(13)),
            (9, read(0)),
            (10, read(5)),
        ];
        let (list, index) = queue_list(&timed);
        let text: Vec<String> = list.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            [
                "nop 2",
                "read 10, s3.e",
                "repeat 3, 1, 1",
                "nop 3",
                "read 0, s3.e",
                "read 5, s3.e",
                "halt"
            ]
        );
        assert_eq!(index, [1, 2, 2, 2, 4, 5]);
    }
}
