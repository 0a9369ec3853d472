//! Open + validate time of a ~100 MB .lpubin (the size SmolLM2-135M's will
//! be): `cargo bench -p q35-lpubin`. Prints MB/s; validation (every CRC, every
//! padding byte, every table) must not be what limits loading a program.
//!
//! The file is written first, so it is in the page cache: this measures
//! validation, not the disk. `LPUBIN_BENCH_MB` changes the size.

use std::time::Instant;

use q35_lpubin::{Builder, ElemType, LpuBinary, MemRange, Symbol, SymbolKind};

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() {
    let mb: usize = std::env::var("LPUBIN_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let word_bytes = 320usize;
    let slices = 88u16;
    let mut rng = 1u64;

    let mut b = Builder::new("lpu-v1", [0x5a; 32], "q35-lpubin bench");
    // About 5% instructions: 144 queues.
    let per_queue = mb * 1_000_000 / 20 / 8 / 144;
    for q in 0..144u16 {
        let words: Vec<u64> = (0..per_queue).map(|_| splitmix(&mut rng)).collect();
        for i in (0..per_queue as u32).step_by(64) {
            b.debug(q, i, format!("layer {} op matmul", i / 4096));
        }
        b.queue(q, words);
    }
    // The rest is the MEM image, spread over the slices.
    let mem_words = mb * 1_000_000 * 19 / 20 / word_bytes;
    let per_slice = mem_words / slices as usize;
    b.mem_word_bytes(word_bytes as u32);
    for s in 0..slices {
        let bytes: Vec<u8> = (0..per_slice * word_bytes / 8)
            .flat_map(|_| splitmix(&mut rng).to_le_bytes())
            .collect();
        b.mem_extent(s, 0, bytes);
        b.symbol(Symbol {
            name: format!("weights.slice{s}"),
            kind: SymbolKind::Weight,
            elem: ElemType::U8,
            shape: vec![(per_slice * word_bytes) as u64],
            placement: vec![MemRange {
                slice: s,
                first_word: 0,
                words: per_slice as u32,
            }],
            layout: "q35 packed".into(),
        });
    }
    let mut meta = serde_json::Map::new();
    meta.insert("model".into(), "bench".into());
    b.metadata(meta);
    b.tokenizer(vec![7u8; 2_000_000]);

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.lpubin");
    let t = Instant::now();
    b.write_to(&path).expect("write");
    let write_s = t.elapsed().as_secs_f64();
    drop(b);
    let len = std::fs::metadata(&path).expect("written file").len();
    let mbytes = len as f64 / 1e6;
    println!(
        "wrote {mbytes:.1} MB in {:.0} ms ({:.0} MB/s)",
        write_s * 1e3,
        mbytes / write_s
    );

    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let bin = LpuBinary::open(&path).expect("open");
        let s = t.elapsed().as_secs_f64();
        assert_eq!(bin.len(), len);
        times.push(s);
    }
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[times.len() / 2]);
    println!(
        "open + validate {mbytes:.1} MB: best {:.1} ms ({:.0} MB/s), median {:.1} ms ({:.0} MB/s)",
        best * 1e3,
        mbytes / best,
        median * 1e3,
        mbytes / median
    );
    let t = Instant::now();
    let crc = crc32fast::hash(&std::fs::read(&path).expect("read"));
    let raw = t.elapsed().as_secs_f64();
    println!(
        "for scale: read + CRC-32 of the whole file {:.1} ms ({:.0} MB/s, crc {crc:08x})",
        raw * 1e3,
        mbytes / raw
    );
}
