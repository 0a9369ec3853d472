//! Shared test fixtures: synthetic binaries with every section, and helpers
//! that edit a file's bytes through the layout docs/lpubin.md documents
//! (written independently of the crate's parser).

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use q35_gguf::Value;
use q35_gguf::write::GgufWriter;
use q35_lpubin::{Builder, ElemType, MemRange, Symbol, SymbolKind};

pub const HASH: [u8; 32] = [
    0x3b, 0x1f, 0x00, 0x9a, 0x42, 0x17, 0xe0, 0x55, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
];

/// A deterministic pseudo-random stream.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn bytes(state: &mut u64, n: usize) -> Vec<u8> {
    (0..n).map(|_| splitmix(state) as u8).collect()
}

/// A tokenizer-only GGUF, as the compiler will embed.
pub fn tokenizer_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.metadata(
        "tokenizer.ggml.tokens",
        Value::Array(q35_gguf::Array::String(vec![
            "a".into(),
            "b".into(),
            "ab".into(),
        ])),
    );
    w.to_bytes()
}

pub fn symbol(name: &str, kind: SymbolKind, elem: ElemType, shape: &[u64]) -> Symbol {
    Symbol {
        name: name.into(),
        kind,
        elem,
        shape: shape.to_vec(),
        placement: vec![MemRange {
            slice: 3,
            first_word: 100,
            words: 2,
        }],
        layout: "row-major, 320 lanes per word".into(),
    }
}

/// A binary with every section; `queues` queues of `per_queue` instructions
/// and `extents` MEM extents of `words` words each.
pub fn builder(queues: u16, per_queue: usize, extents: u16, words: usize) -> Builder {
    let mut rng = 42;
    let mut b = Builder::new("lpu-v1", HASH, "q35-lpubin tests 0.1.0");
    for q in 0..queues {
        let ws: Vec<u64> = (0..per_queue).map(|_| splitmix(&mut rng)).collect();
        b.queue(q * 3 + 1, ws);
        for i in (0..per_queue as u32).step_by(5) {
            b.debug(q * 3 + 1, i, format!("blk.{}.attn_q matmul", i % 4));
        }
    }
    b.mem_word_bytes(320);
    for e in 0..extents {
        b.mem_extent(e % 4, u32::from(e) * 1000, bytes(&mut rng, words * 320));
    }
    b.symbol(symbol("tokens", SymbolKind::Input, ElemType::I32, &[1]));
    b.symbol(symbol(
        "logits",
        SymbolKind::Output,
        ElemType::F32,
        &[49152],
    ));
    b.symbol(symbol(
        "kv",
        SymbolKind::KvCache,
        ElemType::I8,
        &[30, 2, 256, 192],
    ));
    b.symbol(symbol("pos", SymbolKind::Position, ElemType::I32, &[]));
    b.symbol(symbol(
        "rope",
        SymbolKind::Constant,
        ElemType::F16,
        &[256, 64],
    ));
    b.symbol(symbol(
        "blk.0.w",
        SymbolKind::Weight,
        ElemType::U8,
        &[576, 252],
    ));
    let mut meta = serde_json::Map::new();
    meta.insert("model".into(), "SmolLM2-135M-Instruct".into());
    meta.insert("quantization".into(), "q35".into());
    meta.insert("context".into(), 256.into());
    meta.insert("predicted_cycles".into(), 123_456_789u64.into());
    b.metadata(meta);
    b.tokenizer(tokenizer_gguf());
    b.table(
        "sxm.perm.0",
        (0..320u16).map(|i| (319 - i) as u8).collect::<Vec<_>>(),
    );
    b.table("sxm.perm.1", bytes(&mut rng, 320));
    b.table("empty", Vec::new());
    // A further program (a prefill chunk): its own queues, symbols, tables
    // and debug map; and one with queues only.
    let mut p = Builder::new("lpu-v1", HASH, "q35-lpubin tests 0.1.0");
    for q in 0..queues.min(3) {
        let ws: Vec<u64> = (0..per_queue + 1).map(|_| splitmix(&mut rng)).collect();
        p.queue(q * 3 + 2, ws);
        p.debug(q * 3 + 2, 0, format!("blk.{q}.ffn_up matmul"));
    }
    p.symbol(symbol("x_in", SymbolKind::Input, ElemType::F32, &[4, 576]));
    p.symbol(symbol(
        "logits",
        SymbolKind::Output,
        ElemType::F32,
        &[4, 49152],
    ));
    p.table("sxm.perm.0", bytes(&mut rng, 320));
    b.program("prefill4", p);
    let mut bare = Builder::new("lpu-v1", HASH, "q35-lpubin tests 0.1.0");
    bare.queue(7, vec![splitmix(&mut rng)]);
    b.program("q", bare);
    b
}

/// A small binary with every section (about 10 KB).
pub fn small() -> Vec<u8> {
    builder(2, 6, 2, 2).to_bytes().expect("valid builder")
}

/// A real-sized binary with every section (about 450 KB).
pub fn large() -> Vec<u8> {
    builder(16, 2000, 12, 50).to_bytes().expect("valid builder")
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A section table entry, read per the documented layout.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub at: usize,
    pub kind: u16,
    pub offset: usize,
    pub length: usize,
}

pub fn header_len(b: &[u8]) -> usize {
    u32_at(b, 12) as usize
}

pub fn table(b: &[u8]) -> Vec<Entry> {
    let n = u32_at(b, 16) as usize;
    let strings = 56 + u16_at(b, 20) as usize + u16_at(b, 22) as usize;
    let start = strings.div_ceil(8) * 8;
    (0..n)
        .map(|i| start + 32 * i)
        .take_while(|at| at + 32 <= b.len())
        .map(|at| Entry {
            at,
            kind: u16_at(b, at),
            offset: u64_at(b, at + 8) as usize,
            length: u64_at(b, at + 16) as usize,
        })
        .collect()
}

pub fn section(b: &[u8], kind: u16) -> Entry {
    *table(b)
        .iter()
        .find(|e| e.kind == kind)
        .expect("section present")
}

/// Recomputes every section CRC (where it fits in the file) and the header
/// CRC, so a test can reach the checks behind them. A header too damaged
/// to locate its CRC is left as it is.
pub fn reseal(b: &mut [u8]) {
    if b.len() < 56 {
        return;
    }
    let h = header_len(b);
    if h < 60 || h > b.len() {
        return;
    }
    for e in table(b) {
        if e.at + 32 > h - 4 {
            break;
        }
        if let Some(end) = e.offset.checked_add(e.length)
            && end <= b.len()
        {
            let crc = crc32fast::hash(&b[e.offset..end]);
            b[e.at + 24..e.at + 28].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&b[..h - 4]);
    b[h - 4..h].copy_from_slice(&crc.to_le_bytes());
}
