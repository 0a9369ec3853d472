//! The `.lpubin` door: `LpuBinary::from_bytes`, every accessor, the
//! canonical re-encoding, and loading the program (disassembly).

use std::collections::BTreeSet;

use q35_isa::Program;
use q35_lpubin::{Builder, LpuBinary, SectionKind};

use crate::{isa, lpu_v1, message};

/// Loads `data` as an `.lpubin`. Errors must name what is wrong; an
/// accepted file answers every accessor consistently, is canonical (the
/// [`Builder`] given what was read writes the identical bytes), and, if its
/// target is lpu-v1, loads as a program that disassembles and assembles
/// back, and writes the identical binary again (once per distinct program:
/// [`program_is_new`]). Returns whether the file was accepted.
pub fn lpubin(data: &[u8]) -> bool {
    let bin = match LpuBinary::from_bytes(data.to_vec()) {
        Ok(b) => b,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    assert_eq!(bin.len(), data.len() as u64);
    let _ = (
        bin.version(),
        bin.flags(),
        bin.target_hash(),
        bin.producer(),
    );
    assert!(!bin.target_name().is_empty());
    for kind in SectionKind::ALL {
        let present = bin.sections().iter().any(|s| s.kind == kind);
        assert_eq!(bin.section_bytes(kind).is_some(), present, "{kind:?}");
    }
    let mut b = Builder::new(bin.target_name(), *bin.target_hash(), bin.producer());
    for q in bin.queues() {
        let words = q.words();
        assert_eq!(words.len(), q.len());
        assert_eq!(words.as_bytes().len(), 8 * q.len());
        let v = words.to_vec();
        assert!(words.iter().eq(v.iter().copied()));
        assert_eq!(words.get(v.len()), None);
        assert_eq!(bin.queue(q.id()).map(|x| x.len()), Some(q.len()));
        b.queue(q.id(), v);
    }
    if let Some(mem) = bin.mem() {
        b.mem_word_bytes(mem.word_bytes());
        assert_eq!(mem.len(), mem.extents().len());
        let mut total = 0u64;
        for e in mem.extents() {
            let wb = mem.word_bytes() as usize;
            assert_eq!(e.bytes.len(), e.range.words as usize * wb);
            total += u64::from(e.range.words);
            let last = e.range.first_word + (e.range.words - 1);
            for w in [e.range.first_word, last] {
                assert_eq!(
                    mem.extent_at(e.range.slice, w).map(|x| x.range),
                    Some(e.range)
                );
                assert!(mem.word(e.range.slice, w).is_some_and(|x| x.len() == wb));
            }
            b.mem_extent(e.range.slice, e.range.first_word, e.bytes.to_vec());
        }
        assert_eq!(mem.total_words(), total);
    }
    for s in bin.symbols() {
        assert_eq!(bin.symbol(&s.name), Some(s));
        b.symbol(s.clone());
    }
    if let Some(m) = bin.metadata() {
        assert!(bin.metadata_json().is_some());
        b.metadata(m.clone());
    }
    if let Some(t) = bin.tokenizer() {
        b.tokenizer(t.to_vec());
    }
    if let Some(d) = bin.debug() {
        assert_eq!(d.iter().len(), d.len());
        for (i, e) in d.iter().enumerate() {
            assert_eq!(d.get(i).map(|x| x.location), Some(e.location));
            assert_eq!(d.lookup(e.queue, e.index), Some(e.location));
            let _ = d.locate(e.queue, e.index);
            b.debug(e.queue, e.index, e.location);
        }
    }
    for (name, bytes) in bin.tables() {
        assert_eq!(bin.table(name), Some(bytes));
        b.table(name, bytes.to_vec());
    }
    if let Some(e) = bin.embedding() {
        b.embedding(e.encoding, e.rows, e.cols, e.data.to_vec());
    }
    let rewritten = b
        .to_bytes()
        .unwrap_or_else(|e| panic!("the builder refuses what the reader accepted: {e}"));
    assert!(rewritten == data, "an accepted file is not canonical");

    if !program_is_new(&bin) {
        return true;
    }
    match Program::from_lpubin(&bin, lpu_v1()) {
        Ok(p) => {
            let listing = p.to_lpuasm();
            let again = q35_isa::assemble("disassembly.lpuasm", &listing)
                .unwrap_or_else(|e| panic!("the disassembly does not assemble: {e}\n{listing}"));
            assert!(again == p, "disassembly changes the program:\n{listing}");
            isa::to_binary(&p);
        }
        Err(e) => {
            message(&e);
        }
    }
    true
}

/// Whether the program `bin` holds (the sections [`Program::from_lpubin`]
/// reads, and the target) has not been through the disassembly round trip
/// in this process yet. That round trip (the whole MEM image as assembly
/// text and back) is most of an input's cost, and most mutations leave the
/// program as it was (they touch the header, metadata, debug map or
/// embedding), so it runs once per distinct program. The check is a pure
/// function of those bytes, so skipping a repeat loses nothing; a hash
/// collision could only skip a check, never fail one.
fn program_is_new(bin: &LpuBinary) -> bool {
    use std::hash::{Hash, Hasher};
    static SEEN: std::sync::Mutex<BTreeSet<u64>> = std::sync::Mutex::new(BTreeSet::new());
    // Fixed keys: the same bytes hash the same in every run.
    let mut h = std::hash::DefaultHasher::new();
    bin.target_name().hash(&mut h);
    bin.target_hash().hash(&mut h);
    for kind in [
        SectionKind::Queues,
        SectionKind::Mem,
        SectionKind::Symbols,
        SectionKind::Tables,
    ] {
        bin.section_bytes(kind).hash(&mut h);
    }
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.len() >= 1 << 20 {
        seen.clear();
    }
    seen.insert(h.finish())
}

/// Recomputes, in place, every CRC-32 of an `.lpubin` image that its
/// header still locates: each section's (whose table entry points inside
/// the image) and the header's. Anything out of place is left alone. The
/// `lpubin` target's mutator calls it so mutations get past the checksums.
pub fn fix_lpubin_crcs(data: &mut [u8]) {
    let u16_at = |d: &[u8], at: usize| d.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |d: &[u8], at: usize| {
        d.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |d: &[u8], at: usize| {
        d.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(header_len), Some(count), Some(name_len), Some(producer_len)) = (
        u32_at(data, 12),
        u32_at(data, 16),
        u16_at(data, 20),
        u16_at(data, 22),
    ) else {
        return;
    };
    let table = (56 + usize::from(name_len) + usize::from(producer_len)).div_ceil(8) * 8;
    for i in 0..count.min(16) as usize {
        let entry = table + 32 * i;
        if entry + 32 > data.len() {
            break;
        }
        let (Some(offset), Some(length)) = (u64_at(data, entry + 8), u64_at(data, entry + 16))
        else {
            break;
        };
        let Some(end) = offset.checked_add(length) else {
            continue;
        };
        if end > data.len() as u64 {
            continue;
        }
        let crc = crc32fast::hash(&data[offset as usize..end as usize]);
        data[entry + 24..entry + 28].copy_from_slice(&crc.to_le_bytes());
    }
    let header_len = header_len as usize;
    if (4..=data.len()).contains(&header_len) {
        let crc = crc32fast::hash(&data[..header_len - 4]);
        data[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Loads `data` as a system file (docs/lpubin.md 8):
/// `LpuSystem::from_bytes`. Errors must name what is wrong; an accepted
/// file is canonical (the [`q35_lpubin::SystemBuilder`] given its chips'
/// images writes the identical bytes), every chip is an accepted `.lpubin`
/// ([`lpubin`]), and a system for lpu-v1 of a chip count the topology
/// allows builds as a `q35_sim::System` (every chip's program decoded and
/// placed; building it runs nothing). Returns whether the file was accepted.
pub fn lpubin_system(data: &[u8]) -> bool {
    let sys = match q35_lpubin::LpuSystem::from_bytes(data.to_vec()) {
        Ok(s) => s,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    assert!(!sys.chips().is_empty());
    let mut b = q35_lpubin::SystemBuilder::new(sys.target_name(), *sys.target_hash());
    assert_eq!(sys.chip_ranges().len(), sys.chips().len());
    for (chip, r) in sys.chips().iter().zip(sys.chip_ranges()) {
        assert_eq!(chip.target_hash(), sys.target_hash());
        assert_eq!(chip.len(), r.end - r.start);
        let bytes = data[r.start as usize..r.end as usize].to_vec();
        assert!(lpubin(&bytes), "a chip the system accepted is an .lpubin");
        b.chip(bytes);
    }
    assert_eq!(b.to_bytes().expect("re-encode"), data, "not canonical");
    if sys.target_hash() == &lpu_v1().hash().0 {
        let config = q35_sim::MachineConfig::from_target(lpu_v1()).expect("lpu-v1 runs");
        let chips: Vec<&LpuBinary> = sys.chips().iter().collect();
        if let Err(e) = q35_sim::System::new(&chips, config) {
            message(&e);
        }
    }
    true
}

/// The system container's counterpart of [`fix_lpubin_crcs`], for the
/// `lpubin_system` mutator: within each chip image the chip table locates
/// (in range of `data`), the image's own CRCs ([`fix_lpubin_crcs`]); then
/// each chip entry's CRC-32 of its image, and the header CRC-32 over the
/// fixed header and the chip table, wherever the (possibly damaged) fields
/// still locate them inside `data`.
pub fn fix_lpubin_system_crcs(data: &mut [u8]) {
    use q35_lpubin::{CHIP_ENTRY_LEN, SYSTEM_HEADER_LEN};
    let u64_at = |d: &[u8], at: usize| {
        d.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let Some(chips) = data
        .get(12..16)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    else {
        return;
    };
    let chips = chips.min(64) as usize;
    for i in 0..chips {
        let e = SYSTEM_HEADER_LEN + i * CHIP_ENTRY_LEN;
        if e + CHIP_ENTRY_LEN > data.len() {
            break;
        }
        let (Some(offset), Some(len)) = (u64_at(data, e), u64_at(data, e + 8)) else {
            break;
        };
        let Some(end) = offset.checked_add(len) else {
            continue;
        };
        if end > data.len() as u64 {
            continue;
        }
        let (start, end) = (offset as usize, end as usize);
        fix_lpubin_crcs(&mut data[start..end]);
        let crc = crc32fast::hash(&data[start..end]);
        data[e + 16..e + 20].copy_from_slice(&crc.to_le_bytes());
    }
    let table_end = (SYSTEM_HEADER_LEN + chips * CHIP_ENTRY_LEN).min(data.len());
    if table_end >= SYSTEM_HEADER_LEN {
        let mut h = crc32fast::Hasher::new();
        h.update(&data[..120]);
        h.update(&data[SYSTEM_HEADER_LEN..table_end]);
        let crc = h.finalize();
        data[120..124].copy_from_slice(&crc.to_le_bytes());
    }
}
