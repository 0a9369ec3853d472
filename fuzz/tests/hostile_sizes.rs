//! Hostile sizes (issue 12): files that declare terabytes are refused with
//! an error naming what they declare, before anything of that size is
//! allocated; a prompt of a million tokens encodes in linear time and
//! memory. (The model.toml with a billion blocks is q35-model's test
//! `hostile_sizes_are_refused_before_anything_is_built`; `q35c run` refuses
//! a million-token prompt as longer than the context before running the
//! model, checked by tests/lit/run/smollm2-errors.test.)

use std::path::Path;

use q35_gguf::write::GgufWriter;
use q35_gguf::{GgmlType, Gguf, GgufError};
use q35_lpubin::LpuBinary;

const TIB: u64 = 1 << 40;

#[test]
fn gguf_tensor_of_four_terabytes() {
    let mut w = GgufWriter::new();
    w.tensor_raw("huge", &[1 << 20, 1 << 20], GgmlType::F32, Vec::new());
    let e = Gguf::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(e, GgufError::Truncated { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("data of tensor `huge` (F32) needs bytes 96..4398046511200"),
        "{e}"
    );
}

/// A GGUF header whose counts claim `n_kv` pairs (followed by `rest`).
fn header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

#[test]
fn gguf_counts_and_arrays_of_terabytes() {
    // 2^60 metadata pairs, 2^60 tensors: refused on the count.
    let e = Gguf::from_bytes(header(0, 1 << 60, &[0; 64]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("metadata (1152921504606846976 elements)"), "{e}");
    let e = Gguf::from_bytes(header(1 << 60, 0, &[0; 64]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor table (1152921504606846976 elements)"),
        "{e}"
    );
    // One pair: key `a`, an array of 2^40 u8 (a terabyte).
    let mut kv = Vec::new();
    kv.extend_from_slice(&1u64.to_le_bytes());
    kv.push(b'a');
    kv.extend_from_slice(&9u32.to_le_bytes()); // array
    kv.extend_from_slice(&0u32.to_le_bytes()); // of u8
    kv.extend_from_slice(&TIB.to_le_bytes());
    kv.extend_from_slice(&[0; 16]);
    let e = Gguf::from_bytes(header(0, 1, &kv)).unwrap_err().to_string();
    assert!(e.contains("array `a` (1099511627776 elements)"), "{e}");
    // A string of 2^40 bytes.
    let mut kv = Vec::new();
    kv.extend_from_slice(&1u64.to_le_bytes());
    kv.push(b'a');
    kv.extend_from_slice(&8u32.to_le_bytes()); // string
    kv.extend_from_slice(&TIB.to_le_bytes());
    kv.extend_from_slice(&[0; 16]);
    let e = Gguf::from_bytes(header(0, 1, &kv)).unwrap_err().to_string();
    assert!(
        e.contains("value of `a` needs bytes 45..1099511627821"),
        "{e}"
    );
}

/// A real binary from the seed corpus.
fn seed_lpubin() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/lpubin/vxm-fadd.lpubin");
    std::fs::read(p).expect("seed binary")
}

/// Byte offset of section table entry `i` of an .lpubin image.
fn entry(b: &[u8], i: usize) -> usize {
    let name = usize::from(u16::from_le_bytes([b[20], b[21]]));
    let producer = usize::from(u16::from_le_bytes([b[22], b[23]]));
    (56 + name + producer).div_ceil(8) * 8 + 32 * i
}

#[test]
fn lpubin_section_of_a_terabyte() {
    let mut b = seed_lpubin();
    assert!(LpuBinary::from_bytes(b.clone()).is_ok());
    let at = entry(&b, 0) + 16;
    b[at..at + 8].copy_from_slice(&TIB.to_le_bytes());
    q35_fuzz::fix_lpubin_crcs(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err().to_string();
    assert!(
        e.contains("1099511627776"),
        "the error names the declared length: {e}"
    );
}

#[test]
fn lpubin_queue_directory_of_four_billion_queues() {
    let mut b = seed_lpubin();
    let at = entry(&b, 0) + 8;
    let queues = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    b[queues..queues + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    q35_fuzz::fix_lpubin_crcs(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err().to_string();
    assert!(
        e.contains("4294967295"),
        "the error names the declared count: {e}"
    );
}

/// A million-token prompt encodes in time and memory linear in its length
/// (about a second in a debug build), one id per word.
#[test]
fn million_token_prompt_encodes() {
    let Some(tok) = q35_fuzz::smollm2() else {
        return;
    };
    let text = " hi".repeat(1_000_000);
    let start = std::time::Instant::now();
    let ids = tok.encode(&text, false);
    assert_eq!(ids.len(), 1_000_000);
    assert_eq!(tok.decode(&ids), text);
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

/// The `lpubin_model` seed (the tiny model compiled at context 1) with its
/// metadata's `ctx` and its `attn_mask` symbol declaring `ctx` positions.
fn model_with_ctx(ctx: u32) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/lpubin_model/tiny-c1.lpubin");
    let bin = LpuBinary::open(&path).expect("the lpubin_model seed");
    let mut b = q35_lpubin::Builder::new(bin.target_name(), *bin.target_hash(), bin.producer());
    for q in bin.queues() {
        b.queue(q.id(), q.words().to_vec());
    }
    if let Some(mem) = bin.mem() {
        b.mem_word_bytes(mem.word_bytes());
        for e in mem.extents() {
            b.mem_extent(e.range.slice, e.range.first_word, e.bytes.to_vec());
        }
    }
    for s in bin.symbols() {
        let mut s = s.clone();
        if s.name == "attn_mask" {
            s.shape = vec![u64::from(ctx)];
        }
        b.symbol(s);
    }
    let mut meta = bin.metadata().cloned().expect("metadata");
    meta.insert("ctx".into(), ctx.into());
    b.metadata(meta);
    if let Some(t) = bin.tokenizer() {
        b.tokenizer(t.to_vec());
    }
    for (name, bytes) in bin.tables() {
        b.table(name, bytes.to_vec());
    }
    if let Some(e) = bin.embedding() {
        b.embedding(e.encoding, e.rows, e.cols, e.data.to_vec());
    }
    b.to_bytes().expect("encode")
}

/// A compiled model whose metadata claims four billion positions (and whose
/// `attn_mask` symbol agrees): the host sized its attention mask by `ctx`
/// (16 GB of f32) when it opened the session. Positions are u16 on the
/// device, so the metadata reader refuses more than 2^16.
#[test]
fn compiled_model_of_four_billion_positions() {
    let bytes = model_with_ctx(u32::MAX);
    let bin = LpuBinary::from_bytes(bytes.clone()).expect("a well-formed binary");
    let e = q35_host::HostMeta::from_binary(&bin)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`ctx` = 4294967295 is past the 65536 positions"),
        "{e}"
    );
    assert!(!q35_fuzz::lpubin_model(&bytes));
    // The largest context a u16 index reaches is still a model.
    let bin = LpuBinary::from_bytes(model_with_ctx(1 << 16)).expect("well-formed");
    assert_eq!(
        q35_host::HostMeta::from_binary(&bin).map(|m| m.ctx).ok(),
        Some(1 << 16)
    );
}

/// A system file whose chip 0 declares an image of a terabyte (its CRCs
/// recomputed, as the `lpubin_system` mutator does): refused by the chip
/// table's length check, naming the chip, without reading past the file;
/// and four billion chips: refused by the count check.
#[test]
fn system_file_of_a_terabyte_chip_and_four_billion_chips() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/lpubin_system/two-chips.lpubin");
    let seed = std::fs::read(&path).expect("the lpubin_system seed");
    assert!(q35_lpubin::LpuSystem::from_bytes(seed.clone()).is_ok());
    let mut b = seed.clone();
    let len_at = q35_lpubin::SYSTEM_HEADER_LEN + 8;
    b[len_at..len_at + 8].copy_from_slice(&TIB.to_le_bytes());
    q35_fuzz::fix_lpubin_system_crcs(&mut b);
    let e = q35_lpubin::LpuSystem::from_bytes(b)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chip 0 length") && e.contains("past the end of the file"),
        "{e}"
    );
    // A length at the top of u64: no overflow computing where images go.
    for (chip, len) in [(0, u64::MAX), (1, u64::MAX - 4096)] {
        let mut b = seed.clone();
        let at = q35_lpubin::SYSTEM_HEADER_LEN + chip * q35_lpubin::CHIP_ENTRY_LEN + 8;
        b[at..at + 8].copy_from_slice(&len.to_le_bytes());
        q35_fuzz::fix_lpubin_system_crcs(&mut b);
        let e = q35_lpubin::LpuSystem::from_bytes(b)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("chip {chip}")), "{e}");
        assert!(!q35_fuzz::lpubin_system(
            &std::fs::read(&path)
                .map(|mut s| {
                    s[at..at + 8].copy_from_slice(&len.to_le_bytes());
                    q35_fuzz::fix_lpubin_system_crcs(&mut s);
                    s
                })
                .expect("seed")
        ));
    }
    let mut b = seed;
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    q35_fuzz::fix_lpubin_system_crcs(&mut b);
    let e = q35_lpubin::LpuSystem::from_bytes(b)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chips (byte 12): 4294967295"), "{e}");
}
