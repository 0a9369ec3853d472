//! The ISA doors: `.lpuasm` assembly and 64-bit instruction words.

use q35_isa::{Instruction, Program, assemble, cycles};
use q35_lpubin::LpuBinary;

use crate::{lpu_v1, message};

/// Assembles `data` as `.lpuasm` text (invalid UTF-8 replaced). Errors name
/// a line; an assembled program validates, disassembles to text that
/// assembles to the identical program (and the identical text), and, when it
/// fits lpu-v1, becomes an `.lpubin` that loads back. Returns whether the
/// text assembled.
pub fn lpuasm(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let program = match assemble("fuzz.lpuasm", &text) {
        Ok(p) => p,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    program
        .validate()
        .unwrap_or_else(|e| panic!("assemble returned a program that does not validate: {e}"));
    let listing = program.to_lpuasm();
    let again = assemble("disassembly.lpuasm", &listing)
        .unwrap_or_else(|e| panic!("the disassembly does not assemble: {e}\n{listing}"));
    assert!(
        again == program,
        "disassembly changes the program:\n{listing}"
    );
    assert_eq!(again.to_lpuasm(), listing);
    to_binary(&program);
    true
}

/// A program that fits lpu-v1 becomes an `.lpubin` the loader accepts, and
/// `lpubin -> Program -> lpubin` is the identity on those bytes.
pub(crate) fn to_binary(program: &Program) {
    let target = lpu_v1();
    let builder = match program.to_lpubin(target, "q35-fuzz") {
        Ok(b) => b,
        Err(e) => {
            message(&e);
            return;
        }
    };
    let bytes = match builder.to_bytes() {
        Ok(b) => b,
        Err(e) => {
            message(&e);
            return;
        }
    };
    let bin = LpuBinary::from_bytes(bytes.clone())
        .unwrap_or_else(|e| panic!("the writer's binary is refused: {e}"));
    let back = Program::from_lpubin(&bin, target)
        .unwrap_or_else(|e| panic!("a written binary does not load back: {e}"));
    let rebuilt = back
        .to_lpubin(target, "q35-fuzz")
        .and_then(|b| b.to_bytes().map_err(Into::into))
        .unwrap_or_else(|e| panic!("a loaded program does not write again: {e}"));
    assert!(
        rebuilt == bytes,
        "lpubin -> Program -> lpubin changes the bytes"
    );
}

/// Decodes `data` as little-endian 64-bit instruction words. A word is
/// refused with a typed error or decodes to an instruction that encodes to
/// the same word (the encoding is canonical), prints as assembly that parses
/// back to it, and answers every table-derived query. Returns whether any
/// word decoded.
pub fn isa_decode(data: &[u8]) -> bool {
    let target = lpu_v1();
    let mut any = false;
    for chunk in data.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let ins = match Instruction::decode(word) {
            Ok(i) => i,
            Err(e) => {
                message(&e);
                continue;
            }
        };
        any = true;
        assert_eq!(ins.encode().ok(), Some(word), "`{ins}` encodes differently");
        ins.check()
            .unwrap_or_else(|e| panic!("decoded `{ins}` fails its check: {e}"));
        let text = ins.to_string();
        let parsed: Instruction = text
            .parse()
            .unwrap_or_else(|e| panic!("`{text}` does not parse: {e}"));
        assert_eq!(parsed, ins, "`{text}` parses to another instruction");
        let _ = (
            ins.reads(),
            ins.writes(),
            ins.issue_cycles(),
            ins.occupancy(),
        );
        let _ = cycles(ins.info().latency, target);
        for i in 0..ins.operands().len() {
            if ins.is_address(i) {
                let _ = ins.offset_addresses(-1).map_err(|e| message(&e));
                let _ = ins
                    .offset_addresses(i64::from(u32::MAX))
                    .map_err(|e| message(&e));
            }
        }
    }
    any
}
