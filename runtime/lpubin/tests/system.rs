//! The system container: canonical bytes round-trip, chips map without
//! copying from one file, and every corrupted, truncated or inconsistent
//! file is an error naming the chip or field (never a panic).

use q35_lpubin::{Builder, CHIP_ENTRY_LEN, LpuSystem, SYSTEM_HEADER_LEN, SystemBuilder, is_system};

const HASH: [u8; 32] = [7; 32];

fn chip(words: &[u64], hash: [u8; 32]) -> Vec<u8> {
    let mut b = Builder::new("lpu-v1", hash, "system test");
    b.queue(110, words.to_vec());
    b.to_bytes().expect("a chip image")
}

fn system(n: u64) -> (SystemBuilder, Vec<Vec<u8>>) {
    let mut s = SystemBuilder::new("lpu-v1", HASH);
    let images: Vec<Vec<u8>> = (0..n).map(|i| chip(&[0x60 + i, 5], HASH)).collect();
    for img in &images {
        s.chip(img.clone());
    }
    (s, images)
}

#[test]
fn round_trip_from_bytes_and_from_a_mapped_file() {
    let (s, images) = system(3);
    let bytes = s.to_bytes().expect("bytes");
    assert!(is_system(&bytes));
    assert!(!is_system(&images[0]));
    // Images start on page boundaries after the header and chip table.
    let table = SYSTEM_HEADER_LEN + 3 * CHIP_ENTRY_LEN;
    assert_eq!(&bytes[4096..4096 + images[0].len()], &images[0][..]);
    assert!(bytes[table..4096].iter().all(|&b| b == 0));
    let sys = LpuSystem::from_bytes(bytes.clone()).expect("valid");
    assert_eq!(sys.chips().len(), 3);
    assert_eq!(sys.target_name(), "lpu-v1");
    assert_eq!(sys.target_hash(), &HASH);
    for (i, c) in sys.chips().iter().enumerate() {
        let words: Vec<u64> = c.queue(110).expect("queue").words().to_vec();
        assert_eq!(words, [0x60 + i as u64, 5]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sys.lpubin");
    s.write_to(&path).expect("write");
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    let sys = LpuSystem::open(&path).expect("valid");
    assert_eq!(
        sys.chips()[2].queue(110).expect("queue").words().to_vec(),
        [0x62, 5]
    );
    assert!(
        sys.chips()[1]
            .path()
            .is_some_and(|p| p.display().to_string().ends_with("sys.lpubin#chip1"))
    );
}

#[test]
fn every_corrupted_byte_of_the_header_and_table_is_refused() {
    let (s, _) = system(2);
    let bytes = s.to_bytes().expect("bytes");
    let table = SYSTEM_HEADER_LEN + 2 * CHIP_ENTRY_LEN;
    for at in 0..table {
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        let e = LpuSystem::from_bytes(b).expect_err("corrupted");
        assert!(e.to_string().starts_with("<memory>: "), "byte {at}: {e}");
    }
    // A byte of a chip's image: its CRC-32 names the chip.
    let mut b = bytes.clone();
    b[4096 + 20] ^= 1;
    let e = LpuSystem::from_bytes(b).unwrap_err().to_string();
    assert!(e.contains("chip 0 CRC-32 (byte 144)"), "{e}");
    // Padding between images.
    let mut b = bytes.clone();
    b[4000] = 1;
    let e = LpuSystem::from_bytes(b).unwrap_err().to_string();
    assert!(
        e.contains("padding (byte 4000): a non-zero byte before chip 0's image"),
        "{e}"
    );
    // Every truncation.
    for len in [0, 10, 127, 128, 191, 192, 4096, 4200, bytes.len() - 1] {
        assert!(
            LpuSystem::from_bytes(bytes[..len].to_vec()).is_err(),
            "{len}"
        );
    }
    // Trailing bytes.
    let mut b = bytes.clone();
    b.push(0);
    let e = LpuSystem::from_bytes(b).unwrap_err().to_string();
    assert!(e.contains("1 bytes after the last chip's image"), "{e}");
}

#[test]
fn a_chip_for_another_target_is_refused_by_number() {
    let mut s = SystemBuilder::new("lpu-v1", HASH);
    s.chip(chip(&[1], HASH));
    s.chip(chip(&[1], [9; 32]));
    let e = LpuSystem::from_bytes(s.to_bytes().expect("bytes"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("<memory>: chip 1: "), "{e}");
    assert!(e.contains("0909"), "{e}");
    // A chip image that is not an .lpubin.
    let mut s = SystemBuilder::new("lpu-v1", HASH);
    s.chip(vec![1, 2, 3]);
    let e = LpuSystem::from_bytes(s.to_bytes().expect("bytes"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("<memory>: chip 0: <memory>#chip0: "), "{e}");
}

#[test]
fn the_builder_refuses_what_it_cannot_write() {
    let s = SystemBuilder::new("lpu-v1", HASH);
    assert!(s.to_bytes().unwrap_err().to_string().contains("0 chips"));
    let mut s = SystemBuilder::new("", HASH);
    s.chip(chip(&[1], HASH));
    assert!(s.to_bytes().is_err());
    let mut s = SystemBuilder::new("lpu-v1", HASH);
    s.chip(Vec::new());
    assert!(
        s.to_bytes()
            .unwrap_err()
            .to_string()
            .contains("chip 0: an empty image")
    );
}
