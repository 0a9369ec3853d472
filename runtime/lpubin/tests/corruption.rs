//! Damaged files: every truncation and every single changed byte is an
//! error, of the kind the damaged region calls for, and never a panic.

mod common;

use std::sync::OnceLock;

use proptest::prelude::*;
use q35_lpubin::{LpuBinError, LpuBinary, MAGIC, SectionKind};

/// What a byte of a valid file is, per the documented layout.
#[derive(Debug, PartialEq)]
enum Region {
    Header,
    Section(&'static str),
    Padding,
}

fn region(b: &[u8], pos: usize) -> Region {
    if pos < common::header_len(b) {
        return Region::Header;
    }
    for e in common::table(b) {
        if (e.offset..e.offset + e.length).contains(&pos) {
            return Region::Section(SectionKind::from_id(e.kind).unwrap().name());
        }
    }
    Region::Padding
}

/// Flips `b[pos]` by `xor` (non-zero) and checks the damage is reported as
/// the region calls for.
fn check_flip(b: &mut [u8], pos: usize, xor: u8) -> Result<(), String> {
    let want = region(b, pos);
    b[pos] ^= xor;
    let r = LpuBinary::from_bytes(&b[..]);
    b[pos] ^= xor;
    let e = match r {
        Ok(_) => {
            return Err(format!(
                "byte {pos} ^ {xor:#04x} ({want:?}) was not detected"
            ));
        }
        Err(e) => e,
    };
    let ok = match (&want, &e) {
        // Magic, version, lengths, counts, CRC: any refusal will do.
        (Region::Header, _) => true,
        (Region::Section(s), LpuBinError::Checksum { section, .. }) => s == section,
        (Region::Padding, LpuBinError::Padding { offset, .. }) => *offset == pos as u64,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("byte {pos} ^ {xor:#04x} ({want:?}) gave: {e}"))
    }
}

#[test]
fn every_truncation_is_an_error() {
    let full = common::small();
    LpuBinary::from_bytes(&full[..]).unwrap();
    for cut in 0..full.len() {
        let e = LpuBinary::from_bytes(&full[..cut]);
        assert!(e.is_err(), "truncated at {cut} of {} opened", full.len());
    }
}

#[test]
fn every_flipped_byte_of_a_small_binary_is_detected() {
    let mut b = common::small();
    assert!(
        b.len() > 8000,
        "small() has every section: {} bytes",
        b.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for pos in 0..b.len() {
        seen.insert(format!("{:?}", region(&b, pos)));
        for xor in [0x01, 0x80, 0xff] {
            check_flip(&mut b, pos, xor).unwrap();
        }
    }
    // The loop covered the header, padding and all eight sections.
    assert_eq!(seen.len(), 10, "{seen:?}");
}

fn large() -> &'static [u8] {
    static LARGE: OnceLock<Vec<u8>> = OnceLock::new();
    LARGE.get_or_init(common::large)
}

#[test]
fn the_large_binary_is_real_sized() {
    let b = large();
    assert!(b.len() > 400_000, "{} bytes", b.len());
    let bin = LpuBinary::from_bytes(b).unwrap();
    assert_eq!(bin.sections().len(), 8);
    assert_eq!(bin.queues().map(|q| q.len()).sum::<usize>(), 32_000);
    assert_eq!(bin.mem().unwrap().total_words(), 600);
    assert_eq!(bin.debug().unwrap().len(), 16 * 400);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any single changed byte of a ~450 KB binary is detected.
    #[test]
    fn any_flipped_byte_of_a_large_binary_is_detected(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut b = large().to_vec();
        let pos = pos.index(b.len());
        if let Err(e) = check_flip(&mut b, pos, xor) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Any truncation of the large binary is an error.
    #[test]
    fn any_truncation_of_a_large_binary_is_an_error(cut in any::<prop::sample::Index>()) {
        let b = large();
        let cut = cut.index(b.len());
        prop_assert!(LpuBinary::from_bytes(&b[..cut]).is_err());
    }

    /// Random bytes behind a valid signature never panic the reader.
    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if bytes.len() >= 10 {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        }
        prop_assert!(LpuBinary::from_bytes(bytes).is_err());
    }

    /// Several random edits to a small binary, with every checksum then
    /// recomputed so the structural checks are what stands in the way:
    /// never a panic, and whatever opens is fully readable.
    #[test]
    fn resealed_random_edits_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut b = common::small();
        for (pos, val) in edits {
            let p = pos.index(b.len());
            b[p] = val;
        }
        common::reseal(&mut b);
        if let Ok(bin) = LpuBinary::from_bytes(b) {
            for q in bin.queues() {
                let _ = q.words().iter().fold(0u64, u64::wrapping_add);
            }
            if let Some(m) = bin.mem() {
                for e in m.extents() {
                    let _ = m.word(e.range.slice, e.range.first_word);
                }
            }
            if let Some(d) = bin.debug() {
                for e in d.iter() {
                    prop_assert_eq!(d.lookup(e.queue, e.index), Some(e.location));
                }
            }
            let _ = bin.tables().count();
        }
    }
}
