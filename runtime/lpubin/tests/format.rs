//! Round trips of every section through `Builder` and `LpuBinary`, the
//! builder's refusals, atomic writes, target checks, and the structural
//! errors a hand-edited (resealed) file gets.

mod common;

use common::{HASH, reseal, section, u32_at};
use q35_lpubin::{
    Builder, ElemType, EmbeddingEncoding, LpuBinError, LpuBinary, MAGIC, MemRange, PAGE,
    SectionKind, Symbol, SymbolKind,
};

#[test]
fn every_section_round_trips() {
    let mut rng = 7;
    let q1: Vec<u64> = (0..100).map(|_| common::splitmix(&mut rng)).collect();
    let q9 = vec![0, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef];
    let e0 = common::bytes(&mut rng, 3 * 320);
    let e1 = common::bytes(&mut rng, 320);
    let e2 = common::bytes(&mut rng, 5 * 320);
    let sym = Symbol {
        name: "kv_cache.k".into(),
        kind: SymbolKind::KvCache,
        elem: ElemType::I8,
        shape: vec![30, 3, 256, 64],
        placement: vec![
            MemRange {
                slice: 40,
                first_word: 0,
                words: 768,
            },
            MemRange {
                slice: 41,
                first_word: 0,
                words: 768,
            },
        ],
        layout: "position-major, head_dim split over 2 slices".into(),
    };
    let pos = Symbol {
        name: "position".into(),
        kind: SymbolKind::Position,
        elem: ElemType::I32,
        shape: vec![],
        placement: vec![],
        layout: String::new(),
    };
    let mut meta = serde_json::Map::new();
    meta.insert("model".into(), "tiny".into());
    meta.insert("layers".into(), 2.into());
    meta.insert("nested".into(), serde_json::json!({"a": [1, 2.5, null]}));
    let tok = common::tokenizer_gguf();
    let emb: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0, 0.0, -0.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();

    let mut b = Builder::new("lpu-v1", HASH, "q35c 0.1.0");
    // Added out of order: the builder sorts.
    b.queue(9, q9.clone())
        .queue(1, q1.clone())
        .queue(4, Vec::new())
        .mem_word_bytes(320)
        .mem_extent(7, 10, e1.clone())
        .mem_extent(2, 500, e0.clone())
        .mem_extent(7, 11, e2.clone())
        .symbol(sym.clone())
        .symbol(pos.clone())
        .metadata(meta.clone())
        .tokenizer(tok.clone())
        .debug(9, 3, "blk.1.ffn_down matmul")
        .debug(1, 0, "blk.0.attn_norm rms_norm")
        .debug(1, 50, "blk.0.attn_q matmul")
        .debug(9, 0, "blk.0.attn_norm rms_norm")
        .table("sxm.rot", vec![1, 2, 3])
        .table("a", vec![])
        .embedding(EmbeddingEncoding::F32, 2, 3, emb.clone());
    let bytes = b.to_bytes().unwrap();
    assert_eq!(b.to_bytes().unwrap(), bytes, "deterministic");
    let bin = LpuBinary::from_bytes(&bytes[..]).unwrap();

    assert_eq!(bin.version(), 1);
    assert_eq!(bin.flags(), 0);
    assert_eq!(bin.target_name(), "lpu-v1");
    assert_eq!(bin.target_hash(), &HASH);
    assert_eq!(bin.producer(), "q35c 0.1.0");
    assert_eq!(bin.len(), bytes.len() as u64);
    let kinds: Vec<SectionKind> = bin.sections().iter().map(|s| s.kind).collect();
    // Every kind but `programs` (further_programs_round_trip tests it).
    assert_eq!(kinds, SectionKind::ALL[..8]);

    // queues
    let ids: Vec<u16> = bin.queues().map(|q| q.id()).collect();
    assert_eq!(ids, [1, 4, 9]);
    assert_eq!(bin.queue(1).unwrap().words().to_vec(), q1);
    let w9 = bin.queue(9).unwrap().words();
    assert_eq!(w9.to_vec(), q9);
    assert_eq!(w9.get(1), Some(u64::MAX));
    assert_eq!(w9.get(4), None);
    assert_eq!(w9.iter().next_back(), Some(0x0123_4567_89ab_cdef));
    assert_eq!(w9.as_bytes().len(), 32);
    assert!(bin.queue(4).unwrap().is_empty());
    assert!(bin.queue(2).is_none());

    // mem
    let mem = bin.mem().unwrap();
    assert_eq!(mem.word_bytes(), 320);
    assert_eq!(mem.total_words(), 9);
    let ext: Vec<(MemRange, &[u8])> = mem.extents().map(|e| (e.range, e.bytes)).collect();
    let r = |slice, first_word, words| MemRange {
        slice,
        first_word,
        words,
    };
    assert_eq!(
        ext,
        [
            (r(2, 500, 3), &e0[..]),
            (r(7, 10, 1), &e1[..]),
            (r(7, 11, 5), &e2[..]),
        ]
    );
    assert_eq!(mem.word(2, 501).unwrap(), &e0[320..640]);
    assert_eq!(mem.word(7, 15).unwrap(), &e2[4 * 320..]);
    assert!(mem.word(7, 16).is_none());
    assert!(mem.word(7, 9).is_none());
    assert!(mem.word(3, 0).is_none());
    assert_eq!(mem.extent_at(7, 12).unwrap().range, r(7, 11, 5));
    // The data block is page-aligned in the file, so it maps page by page.
    let mem_sec = bin.sections()[1];
    assert_eq!(mem_sec.offset % PAGE, 0);
    assert_eq!(
        (ext[0].1.as_ptr() as usize
            - bin.section_bytes(SectionKind::Mem).unwrap().as_ptr() as usize) as u64
            % PAGE,
        0
    );

    // symbols
    assert_eq!(bin.symbols(), [sym.clone(), pos.clone()]);
    assert_eq!(bin.symbol("position"), Some(&pos));
    assert_eq!(bin.symbol("kv_cache.k"), Some(&sym));
    assert!(bin.symbol("nope").is_none());

    // metadata
    assert_eq!(bin.metadata(), Some(&meta));
    let reparsed: serde_json::Value = serde_json::from_str(bin.metadata_json().unwrap()).unwrap();
    assert_eq!(reparsed, serde_json::Value::Object(meta));

    // tokenizer: stored as is, and still a GGUF.
    assert_eq!(bin.tokenizer(), Some(&tok[..]));
    let g = q35_gguf::Gguf::from_bytes(bin.tokenizer().unwrap().to_vec()).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");

    // debug
    let d = bin.debug().unwrap();
    let all: Vec<(u16, u32, &str)> = d.iter().map(|e| (e.queue, e.index, e.location)).collect();
    assert_eq!(
        all,
        [
            (1, 0, "blk.0.attn_norm rms_norm"),
            (1, 50, "blk.0.attn_q matmul"),
            (9, 0, "blk.0.attn_norm rms_norm"),
            (9, 3, "blk.1.ffn_down matmul"),
        ]
    );
    assert_eq!(d.lookup(1, 50), Some("blk.0.attn_q matmul"));
    assert_eq!(d.lookup(1, 49), None);
    assert_eq!(
        d.locate(1, 49).unwrap().location,
        "blk.0.attn_norm rms_norm"
    );
    assert_eq!(d.locate(1, 99).unwrap().index, 50);
    assert_eq!(d.locate(9, 2).unwrap().index, 0);
    assert_eq!(d.locate(9, u32::MAX).unwrap().index, 3);
    assert!(d.locate(4, 0).is_none());
    assert!(d.locate(0, 0).is_none());
    assert!(d.get(4).is_none());
    // The shared string is stored once.
    let pool_len = u32_at(bin.section_bytes(SectionKind::Debug).unwrap(), 4);
    assert_eq!(
        pool_len as usize,
        "blk.0.attn_norm rms_norm".len()
            + "blk.0.attn_q matmul".len()
            + "blk.1.ffn_down matmul".len()
    );

    // tables
    let t: Vec<(&str, &[u8])> = bin.tables().collect();
    assert_eq!(t, [("a", &[][..]), ("sxm.rot", &[1, 2, 3][..])]);
    assert_eq!(bin.table("sxm.rot"), Some(&[1u8, 2, 3][..]));
    assert!(bin.table("b").is_none());

    // embedding
    let e = bin.embedding().unwrap();
    assert_eq!((e.encoding, e.rows, e.cols), (EmbeddingEncoding::F32, 2, 3));
    assert_eq!(e.data, &emb[..]);
}

#[test]
fn embedding_section_is_checked() {
    let with = |encoding, rows, cols, data: Vec<u8>| {
        let mut b = Builder::new("lpu-v1", HASH, "t");
        b.embedding(encoding, rows, cols, data);
        b.to_bytes()
    };
    // A Q35 matrix is opaque here: any non-empty bytes.
    let bytes = with(EmbeddingEncoding::Q35, 4, 8, b"Q35W....".to_vec()).unwrap();
    let bin = LpuBinary::from_bytes(bytes.clone()).unwrap();
    let e = bin.embedding().unwrap();
    assert_eq!(
        (e.encoding, e.rows, e.cols, e.data),
        (EmbeddingEncoding::Q35, 4, 8, &b"Q35W...."[..])
    );
    // The builder refuses what the reader would.
    for (enc, rows, cols, n) in [
        (EmbeddingEncoding::F32, 2, 3, 20),
        (EmbeddingEncoding::F32, 0, 3, 0),
        (EmbeddingEncoding::Q35, 2, 3, 0),
    ] {
        let err = with(enc, rows, cols, vec![0; n]).unwrap_err();
        assert!(
            matches!(
                &err,
                LpuBinError::Build {
                    section: "embedding",
                    ..
                }
            ),
            "{err}"
        );
    }
    // The reader: an unknown encoding, a shape that does not match the data.
    let edit = |rel: usize, new: &[u8]| {
        let mut b = bytes.clone();
        let s = section(&b, SectionKind::Embedding.id());
        b[s.offset + rel..s.offset + rel + new.len()].copy_from_slice(new);
        reseal(&mut b);
        LpuBinary::from_bytes(b).unwrap_err()
    };
    let e = edit(0, &9u32.to_le_bytes());
    assert!(malformed(&e, "embedding", "encoding"), "{e}");
    assert!(
        e.to_string().contains("unknown embedding encoding 9"),
        "{e}"
    );
    let e = edit(0, &1u32.to_le_bytes());
    assert!(e.to_string().contains("f32"), "{e}");
    let e = edit(8, &0u64.to_le_bytes());
    assert!(malformed(&e, "embedding", "rows"), "{e}");
    let e = edit(4, &[1]);
    assert!(malformed(&e, "embedding", "reserved"), "{e}");
}

#[test]
fn sixteen_bit_symbols_round_trip() {
    let mut b = Builder::new("lpu-v1", HASH, "t");
    b.symbol(common::symbol(
        "pos_idx",
        SymbolKind::Position,
        ElemType::U16,
        &[320],
    ))
    .symbol(common::symbol(
        "delta",
        SymbolKind::Input,
        ElemType::I16,
        &[320],
    ));
    let bin = LpuBinary::from_bytes(b.to_bytes().unwrap()).unwrap();
    assert_eq!(bin.symbol("pos_idx").unwrap().elem, ElemType::U16);
    assert_eq!(bin.symbol("delta").unwrap().elem, ElemType::I16);
    assert_eq!((ElemType::U16.size(), ElemType::I16.name()), (2, "i16"));
}

#[test]
fn minimal_binary_has_only_queues() {
    let bytes = Builder::new("t", [0; 32], "").to_bytes().unwrap();
    let bin = LpuBinary::from_bytes(bytes).unwrap();
    assert_eq!(bin.sections().len(), 1);
    assert_eq!(bin.queues().len(), 0);
    assert!(bin.mem().is_none() && bin.metadata().is_none() && bin.tokenizer().is_none());
    assert!(bin.debug().is_none() && bin.symbols().is_empty() && bin.tables().len() == 0);
    assert_eq!(bin.producer(), "");
}

#[test]
fn write_to_is_atomic_and_open_maps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prog.lpubin");
    let b = common::builder(3, 40, 3, 4);
    b.write_to(&path).unwrap();
    let bin = LpuBinary::open(&path).unwrap();
    assert_eq!(bin.path(), Some(path.as_path()));
    assert_eq!(std::fs::read(&path).unwrap(), b.to_bytes().unwrap());
    assert_eq!(bin.mem().unwrap().len(), 3);
    // Only the destination is left: no temporaries.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["prog.lpubin"]);
    // A failed build writes nothing, and leaves an existing file alone.
    let mut bad = b.clone();
    bad.queue(1, vec![0]);
    let e = bad.write_to(&path).unwrap_err().to_string();
    assert!(e.contains("queue 1 is added twice"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b.to_bytes().unwrap());
    // An unwritable destination is an I/O error naming it, with no leftovers.
    let missing = dir.path().join("no/such/dir/x.lpubin");
    let e = b.write_to(&missing).unwrap_err();
    assert!(matches!(e, LpuBinError::Io { .. }), "{e}");
    assert!(e.to_string().contains("no/such/dir/x.lpubin"), "{e}");
    // Errors from open name the file.
    let junk = dir.path().join("junk.lpubin");
    std::fs::write(&junk, b"hello, world").unwrap();
    let e = LpuBinary::open(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.lpubin") && e.contains("bad magic"), "{e}");
    let empty = dir.path().join("empty.lpubin");
    std::fs::write(&empty, b"").unwrap();
    let e = LpuBinary::open(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.lpubin") && e.contains("truncated"), "{e}");
    let e = LpuBinary::open(dir.path().join("absent")).unwrap_err();
    assert!(matches!(e, LpuBinError::Io { .. }), "{e}");
}

#[test]
fn check_target_refuses_another_target() {
    let bin = LpuBinary::from_bytes(common::small()).unwrap();
    bin.check_target(&HASH).unwrap();
    let mut other = HASH;
    other[31] ^= 0xff;
    let e = bin.check_target(&other).unwrap_err().to_string();
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(e.contains("`lpu-v1`"), "{e}");
    assert!(e.contains(&hex(&HASH)) && e.contains(&hex(&other)), "{e}");
}

#[test]
fn builder_refuses_what_the_format_cannot_hold() {
    let err = |b: &Builder| b.to_bytes().unwrap_err().to_string();
    let base = || Builder::new("lpu-v1", HASH, "t");

    assert!(err(&Builder::new("", HASH, "t")).contains("target name is empty"));
    assert!(err(&Builder::new("x".repeat(70_000), HASH, "t")).contains("at most 65535"));
    assert!(err(base().queue(3, vec![]).queue(3, vec![1])).contains("queue 3 is added twice"));
    assert!(err(base().mem_extent(0, 0, vec![0; 320])).contains("no word size"));
    assert!(err(base().mem_word_bytes(0)).contains("word size is zero"));
    let e = err(base().mem_word_bytes(320).mem_extent(1, 2, vec![0; 321]));
    assert!(
        e.contains("321 bytes") && e.contains("slice 1 word 2"),
        "{e}"
    );
    assert!(err(base().mem_word_bytes(320).mem_extent(1, 2, vec![])).contains("holds no words"));
    let e = err(base()
        .mem_word_bytes(320)
        .mem_extent(1, u32::MAX, vec![0; 640]));
    assert!(e.contains("past word 2^32"), "{e}");
    let e = err(base()
        .mem_word_bytes(320)
        .mem_extent(1, 10, vec![0; 640])
        .mem_extent(1, 11, vec![0; 320]));
    assert!(e.contains("overlap"), "{e}");
    let s = common::symbol("x", SymbolKind::Input, ElemType::I8, &[1]);
    assert!(err(base().symbol(s.clone()).symbol(s.clone())).contains("`x` is added twice"));
    let mut deep = s.clone();
    deep.shape = vec![1; 9];
    assert!(err(base().symbol(deep)).contains("9 dimensions"));
    let mut empty = s.clone();
    empty.name.clear();
    assert!(err(base().symbol(empty)).contains("empty name"));
    let mut no_words = s.clone();
    no_words.placement[0].words = 0;
    assert!(err(base().symbol(no_words)).contains("holds no words"));
    let e = err(base().queue(1, vec![0; 3]).debug(1, 3, "x"));
    assert!(e.contains("instruction 3 of queue 1, which has 3"), "{e}");
    assert!(err(base().debug(2, 0, "x")).contains("queue 2, which was not added"));
    let e = err(base().queue(1, vec![0]).debug(1, 0, "a").debug(1, 0, "b"));
    assert!(e.contains("two entries"), "{e}");
    assert!(err(base().table("t", vec![]).table("t", vec![1])).contains("`t` is added twice"));
    assert!(err(base().table("", vec![])).contains("empty name"));
}

#[test]
fn wrong_version_names_both_versions() {
    let mut b = common::small();
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::Version {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = e.to_string();
    assert!(
        e.contains("version 2") && e.contains("only version 1"),
        "{e}"
    );
}

#[test]
fn magic_variants_are_refused() {
    let good = common::small();
    let cases: [(&str, Vec<u8>, bool); 6] = [
        // CR LF -> LF (text-mode transfer on Windows, read back).
        (
            "crlf->lf",
            [&b"\x89LPU\n\x1a\n"[..], &good[8..]].concat(),
            true,
        ),
        // LF -> CR LF.
        (
            "lf->crlf",
            [&b"\x89LPU\r\n\x1a\r\n"[..], &good[8..]].concat(),
            true,
        ),
        // High bit stripped (7-bit channel).
        (
            "7-bit",
            [&b"\x09LPU\r\n\x1a\n"[..], &good[8..]].concat(),
            true,
        ),
        ("text", b"LPUBIN version 1\n".to_vec(), false),
        (
            "gguf",
            [&b"GGUF"[..], &3u32.to_le_bytes(), &good[8..]].concat(),
            false,
        ),
        (
            "elf",
            [&b"\x7fELF\x02\x01\x01\x00"[..], &good[8..]].concat(),
            false,
        ),
    ];
    for (what, bytes, looks_like) in cases {
        let e = LpuBinary::from_bytes(bytes).unwrap_err();
        assert!(matches!(e, LpuBinError::BadMagic { .. }), "{what}: {e}");
        let e = e.to_string();
        assert!(e.contains("not an .lpubin file"), "{what}: {e}");
        assert_eq!(e.contains("text-mode"), looks_like, "{what}: {e}");
    }
    // A prefix of the magic is a truncated file, anything else is bad magic.
    for n in 0..8 {
        let e = LpuBinary::from_bytes(&MAGIC[..n]).unwrap_err();
        assert!(matches!(e, LpuBinError::Truncated { .. }), "{n}: {e}");
    }
    let e = LpuBinary::from_bytes(&b"\x89LPX"[..]).unwrap_err();
    assert!(matches!(e, LpuBinError::BadMagic { .. }), "{e}");
}

/// Edits the section `kind` at `rel` (bytes within the section) and reseals
/// every CRC, so the structural check behind the checksum is what fails.
fn edited(kind: SectionKind, rel: usize, new: &[u8]) -> LpuBinError {
    let mut b = common::small();
    let s = section(&b, kind.id());
    b[s.offset + rel..s.offset + rel + new.len()].copy_from_slice(new);
    reseal(&mut b);
    LpuBinary::from_bytes(b).unwrap_err()
}

fn malformed(e: &LpuBinError, section: &str, field: &str) -> bool {
    matches!(e, LpuBinError::Malformed { section: s, field: f, .. } if *s == section && f.contains(field))
}

#[test]
fn hostile_declared_sizes_are_refused_before_allocating() {
    // A section claiming a terabyte.
    let mut b = common::small();
    let q = section(&b, SectionKind::Queues.id());
    b[q.at + 16..q.at + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::OutOfBounds {
                section: "queues",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1099511627776"), "{e}");
    // offset + length overflowing u64.
    let mut b = common::small();
    let q = section(&b, SectionKind::Tables.id());
    b[q.at + 8..q.at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::OutOfBounds {
                section: "tables",
                ..
            }
        ),
        "{e}"
    );
    // A header claiming 2^32-1 sections.
    let mut b = common::small();
    b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(malformed(&e, "header", "header_len"), "{e}");

    // Counts inside sections, against the bytes that hold them.
    let max = u32::MAX.to_le_bytes();
    for (kind, rel, field) in [
        (SectionKind::Queues, 0, "queue directory"),
        (SectionKind::Mem, 4, "extent table"),
        (SectionKind::Symbols, 0, "symbol records"),
        (SectionKind::Debug, 0, "debug entries"),
        (SectionKind::Tables, 0, "table records"),
    ] {
        let e = edited(kind, rel, &max);
        assert!(
            matches!(&e, LpuBinError::Truncated { section, field: f, within: "section", .. } if *section == kind.name() && f.contains(field)),
            "{kind}: {e}"
        );
    }
    // One queue claiming 2^32-1 instructions.
    let e = edited(SectionKind::Queues, 12, &max);
    assert!(
        matches!(&e, LpuBinError::Truncated { field, .. } if field == "instruction words"),
        "{e}"
    );
    // A debug string pool longer than the section.
    let e = edited(SectionKind::Debug, 4, &max);
    assert!(
        matches!(&e, LpuBinError::Truncated { field, .. } if field == "string pool"),
        "{e}"
    );
    // An extent with 2^32-1 words.
    let e = edited(SectionKind::Mem, 24, &max);
    assert!(
        matches!(&e, LpuBinError::Truncated { field, .. } if field == "extent data"),
        "{e}"
    );
    // A table of 2^64-1 bytes.
    let e = edited(
        SectionKind::Tables,
        8 + 2 + "empty".len(),
        &u64::MAX.to_le_bytes(),
    );
    assert!(
        matches!(&e, LpuBinError::Truncated { field, .. } if field.contains("table `empty` data")),
        "{e}"
    );
}

#[test]
fn structural_errors_name_section_field_and_offset() {
    // Unknown section kind.
    let mut b = common::small();
    let t = section(&b, SectionKind::Tables.id());
    b[t.at..t.at + 2].copy_from_slice(&99u16.to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::UnknownSection {
                kind: 99,
                index: 6,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("kind 99"), "{e}");
    // Duplicate section kind.
    let mut b = common::small();
    let t = section(&b, SectionKind::Tables.id());
    b[t.at..t.at + 2].copy_from_slice(&SectionKind::Debug.id().to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::DuplicateSection {
                kind: SectionKind::Debug,
                ..
            }
        ),
        "{e}"
    );
    // Out of order.
    let mut b = common::small();
    let tab = common::table(&b);
    let (a, c) = (tab[2].at, tab[3].at);
    b[a..a + 2].copy_from_slice(&4u16.to_le_bytes());
    b[c..c + 2].copy_from_slice(&3u16.to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(malformed(&e, "section table", "kind"), "{e}");
    // Wrong alignment.
    let mut b = common::small();
    let m = section(&b, SectionKind::Mem.id());
    b[m.at + 4..m.at + 8].copy_from_slice(&8u32.to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(malformed(&e, "section table", "alignment"), "{e}");
    // Overlap and misplacement.
    let mut b = common::small();
    let s = section(&b, SectionKind::Symbols.id());
    b[s.at + 8..s.at + 16].copy_from_slice(&((s.offset - 8) as u64).to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::Overlap {
                section: "symbols",
                previous: "mem",
                ..
            }
        ),
        "{e}"
    );
    let mut b = common::small();
    let tab = common::table(&b);
    let last = tab.last().unwrap();
    b[last.at + 8..last.at + 16].copy_from_slice(&((last.offset + 8) as u64).to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::Misplaced {
                section: "programs",
                ..
            }
        ),
        "{e}"
    );
    // Trailing bytes.
    let mut b = common::small();
    b.push(0);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(matches!(e, LpuBinError::TrailingBytes { .. }), "{e}");
    // Flags.
    let mut b = common::small();
    b[10] = 1;
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(malformed(&e, "header", "flags"), "{e}");
    // Malformed UTF-8 in the target name.
    let mut b = common::small();
    b[56] = 0xff;
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(malformed(&e, "header", "target_name"), "{e}");
    assert!(
        e.to_string().contains("UTF-8") && e.to_string().contains("byte 56"),
        "{e}"
    );
    // Kind 0 is not a section.
    let mut b = common::small();
    let q = section(&b, SectionKind::Queues.id());
    b[q.at..q.at + 2].copy_from_slice(&0u16.to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(e, LpuBinError::UnknownSection { kind: 0, .. }),
        "{e}"
    );
    // No queues section: the minimal binary's only section retagged as a
    // tokenizer (same alignment, any contents).
    let mut b = Builder::new("t", [0; 32], "").to_bytes().unwrap();
    let q = section(&b, SectionKind::Queues.id());
    b[q.at..q.at + 2].copy_from_slice(&SectionKind::Tokenizer.id().to_le_bytes());
    reseal(&mut b);
    let e = LpuBinary::from_bytes(b).unwrap_err();
    assert!(
        matches!(
            e,
            LpuBinError::MissingSection {
                kind: SectionKind::Queues,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn section_contents_are_validated() {
    // Queue ids out of order (queues 1 and 4 in small()).
    let e = edited(SectionKind::Queues, 8, &7u16.to_le_bytes());
    assert!(malformed(&e, "queues", "queue id"), "{e}");
    assert!(e.to_string().contains("queue 4 follows queue 7"), "{e}");
    // Reserved bytes.
    let e = edited(SectionKind::Queues, 4, &[1]);
    assert!(malformed(&e, "queues", "reserved"), "{e}");
    // Mem: zero word size, wrong data offset, unsorted/overlapping extents.
    let e = edited(SectionKind::Mem, 0, &0u32.to_le_bytes());
    assert!(malformed(&e, "mem", "word_bytes"), "{e}");
    let e = edited(SectionKind::Mem, 8, &8192u64.to_le_bytes());
    assert!(malformed(&e, "mem", "data_offset"), "{e}");
    // Extents in small(): (0, 0, 2 words), (1, 1000, 2 words).
    let e = edited(SectionKind::Mem, 16, &5u16.to_le_bytes());
    assert!(malformed(&e, "mem", "extent 1"), "{e}");
    assert!(
        e.to_string().contains("sorted by (slice, first word)"),
        "{e}"
    );
    let mut both = 0u16.to_le_bytes().to_vec();
    both.extend_from_slice(&[0, 0]);
    both.extend_from_slice(&1u32.to_le_bytes());
    let e = edited(SectionKind::Mem, 16 + 12, &both);
    assert!(e.to_string().contains("overlaps"), "{e}");
    let e = edited(SectionKind::Mem, 16 + 8, &0u32.to_le_bytes());
    assert!(e.to_string().contains("at least one word"), "{e}");
    // Mem padding before the data block.
    let e = edited(SectionKind::Mem, 100, &[5]);
    assert!(
        matches!(
            e,
            LpuBinError::Padding {
                value: 5,
                after: "mem extent table",
                ..
            }
        ),
        "{e}"
    );
    // Symbols: first is "blk.0.w" (7 bytes): kind, element type, rank.
    let e = edited(SectionKind::Symbols, 8 + 2 + 7, &[9]);
    assert!(malformed(&e, "symbols", "symbol `blk.0.w` kind"), "{e}");
    let e = edited(SectionKind::Symbols, 8 + 2 + 7 + 1, &[9]);
    assert!(malformed(&e, "symbols", "element type"), "{e}");
    let e = edited(SectionKind::Symbols, 8 + 2 + 7 + 2, &[9]);
    assert!(malformed(&e, "symbols", "rank"), "{e}");
    let e = edited(SectionKind::Symbols, 8 + 2, b"z");
    assert!(e.to_string().contains("sorted by name"), "{e}");
    let e = edited(SectionKind::Symbols, 8 + 2, &[0xc3]);
    assert!(malformed(&e, "symbols", "symbol 0 name"), "{e}");
    // Metadata: not JSON, not an object, not UTF-8.
    let m = section(&common::small(), SectionKind::Metadata.id());
    let e = edited(SectionKind::Metadata, m.length - 1, b"]");
    assert!(malformed(&e, "metadata", "JSON"), "{e}");
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let mut arr = vec![b' '; m.length];
    arr[0] = b'[';
    arr[m.length - 1] = b']';
    let e = edited(SectionKind::Metadata, 0, &arr);
    assert!(
        e.to_string()
            .contains("must be a JSON object, found an array"),
        "{e}"
    );
    let e = edited(SectionKind::Metadata, 2, &[0xff]);
    assert!(e.to_string().contains("UTF-8"), "{e}");
    // Debug map: unsorted, out-of-range instruction, unknown queue, bad
    // string range, bad UTF-8.
    let e = edited(SectionKind::Debug, 8 + 4, &5u32.to_le_bytes());
    assert!(malformed(&e, "debug", "debug entry 1"), "{e}");
    assert!(
        e.to_string().contains("sorted by (queue, instruction)"),
        "{e}"
    );
    let e = edited(SectionKind::Debug, 8 + 16 + 4, &6u32.to_le_bytes());
    assert!(e.to_string().contains("which has 6 instructions"), "{e}");
    let e = edited(SectionKind::Debug, 8, &0u16.to_le_bytes());
    assert!(
        e.to_string()
            .contains("queue 0, which the queues section does not have"),
        "{e}"
    );
    let e = edited(SectionKind::Debug, 8 + 16 + 2, &[1]);
    assert!(malformed(&e, "debug", "debug entry 1"), "{e}");
    assert!(e.to_string().contains("reserved bytes must be zero"), "{e}");
    let e = edited(SectionKind::Debug, 8 + 12, &1000u32.to_le_bytes());
    assert!(e.to_string().contains("ends past the pool"), "{e}");
    let d = section(&common::small(), SectionKind::Debug.id());
    let e = edited(SectionKind::Debug, d.length - 1, &[0xff]);
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    // Tables: unsorted names ("empty" < "sxm.perm.0").
    let e = edited(SectionKind::Tables, 8 + 2, b"z");
    assert!(e.to_string().contains("tables are sorted by name"), "{e}");
}

#[test]
fn layout_matches_the_documented_alignment() {
    let b = common::large();
    for e in common::table(&b) {
        let kind = SectionKind::from_id(e.kind).unwrap();
        assert_eq!(e.offset as u64 % kind.alignment(), 0, "{kind}");
    }
    let m = section(&b, SectionKind::Mem.id());
    assert_eq!(m.offset as u64 % PAGE, 0);
    let data_offset = common::u64_at(&b, m.offset + 8);
    assert_eq!(data_offset % PAGE, 0);
    // Queue words are 8-byte aligned in the file.
    let q = section(&b, SectionKind::Queues.id());
    let n = u32_at(&b, q.offset) as usize;
    assert_eq!((q.offset + 8 + 8 * n) % 8, 0);
}

/// Resident kilobytes of this process's mapping of `path` (Linux smaps).
#[cfg(target_os = "linux")]
fn mapped_rss_kb(path: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_str().unwrap();
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        if line.contains('-') && line.split_whitespace().count() >= 5 && !line.ends_with(" kB") {
            inside = line.ends_with(name);
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            total += kb.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
        }
    }
    total
}

#[test]
fn release_keeps_every_byte_and_drops_the_resident_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.lpubin");
    common::builder(16, 2000, 12, 50).write_to(&path).unwrap();
    let bin = LpuBinary::open(&path).unwrap();
    let whole = std::fs::read(&path).unwrap();
    let sections: Vec<(SectionKind, Vec<u8>)> = bin
        .sections()
        .iter()
        .map(|s| (s.kind, bin.section_bytes(s.kind).unwrap().to_vec()))
        .collect();
    let mem: Vec<Vec<u8>> = bin
        .mem()
        .unwrap()
        .extents()
        .map(|e| e.bytes.to_vec())
        .collect();
    // Opening released what validation read; reading brings pages back.
    let touched: u64 = sections
        .iter()
        .map(|(k, _)| {
            bin.section_bytes(*k)
                .unwrap()
                .iter()
                .map(|&b| u64::from(b))
                .sum::<u64>()
        })
        .sum();
    #[cfg(target_os = "linux")]
    {
        assert!(
            mapped_rss_kb(&path) * 1024 >= whole.len() as u64 / 2,
            "pages in after reading"
        );
    }
    // Odd sub-slices, whole sections, the file, and a slice from elsewhere.
    for e in bin.mem().unwrap().extents() {
        bin.release(&e.bytes[1..e.bytes.len() - 1]);
    }
    for (k, _) in &sections {
        bin.release_section(*k);
    }
    bin.release(&whole);
    bin.release_all();
    #[cfg(target_os = "linux")]
    {
        assert!(
            mapped_rss_kb(&path) <= 8,
            "released: {} kB",
            mapped_rss_kb(&path)
        );
    }
    for (k, bytes) in &sections {
        assert_eq!(bin.section_bytes(*k).unwrap(), bytes.as_slice(), "{k:?}");
    }
    let again: Vec<Vec<u8>> = bin
        .mem()
        .unwrap()
        .extents()
        .map(|e| e.bytes.to_vec())
        .collect();
    assert_eq!(again, mem);
    assert!(touched > 0);
    // A binary from memory: release is a no-op.
    let owned = LpuBinary::from_bytes(whole.clone()).unwrap();
    owned.release_all();
    assert_eq!(
        owned.section_bytes(SectionKind::Queues),
        bin.section_bytes(SectionKind::Queues)
    );
}

#[test]
fn further_programs_round_trip() {
    let b = common::small();
    let bin = LpuBinary::from_bytes(b).unwrap();
    let names: Vec<&str> = bin.programs().map(|p| p.name()).collect();
    assert_eq!(names, ["prefill4", "q"]);
    let p = bin.program("prefill4").unwrap();
    let ids: Vec<u16> = p.queues().map(|q| q.id()).collect();
    assert_eq!(ids, [2, 5]);
    assert!(p.queues().all(|q| q.len() == 7));
    assert_eq!(p.symbol("x_in").unwrap().shape, [4, 576]);
    assert!(
        p.symbol("kv").is_none(),
        "the main program's symbols are its own"
    );
    assert_eq!(p.tables().count(), 1);
    let d = p.debug().unwrap();
    assert_eq!(d.len(), 2);
    let q = bin.program("q").unwrap();
    assert_eq!(q.queues().len(), 1);
    assert!(q.symbols().is_empty() && q.tables().len() == 0 && q.debug().is_none());
    assert!(bin.program("decode").is_none());
}

#[test]
fn further_programs_are_checked_when_built() {
    let err = |b: &Builder| b.to_bytes().unwrap_err().to_string();
    let with = |name: &str, p: Builder| {
        let mut b = Builder::new("lpu-v1", HASH, "t");
        b.queue(1, vec![0u64]);
        b.program(name, p);
        b
    };
    let prog = || {
        let mut p = Builder::new("lpu-v1", HASH, "t");
        p.queue(1, vec![1u64]);
        p
    };
    assert!(err(&with("", prog())).contains("empty name"));
    let mut twice = with("a", prog());
    twice.program("a", prog());
    assert!(err(&twice).contains("added twice"));
    let mut own_mem = prog();
    own_mem.mem_word_bytes(320);
    assert!(err(&with("a", own_mem)).contains("belong to the file"));
}
