//! Reader tests: hand-computed blocks of each type, metadata round trips,
//! truncated and corrupted files, and the real SmolLM2 file.

use half::f16;
use proptest::prelude::*;
use q35_gguf::dequant::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
use q35_gguf::write::GgufWriter;
use q35_gguf::{Array, GgmlType, Gguf, GgufError, Value};

fn one_tensor(ty: GgmlType, dims: &[u64], bytes: Vec<u8>) -> Gguf {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()));
    w.tensor_raw("t", dims, ty, bytes);
    Gguf::from_bytes(w.to_bytes()).expect("valid file")
}

#[test]
fn q4_1_block_by_hand() {
    // d = 0.5, m = -1.0; byte j = (j low, 15-j high).
    let mut b = Vec::new();
    b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
    for j in 0..16u8 {
        b.push(j | ((15 - j) << 4));
    }
    let g = one_tensor(GgmlType::Q4_1, &[32], b);
    let x = g.tensor_f32("t").unwrap();
    for j in 0..16 {
        assert_eq!(x[j], j as f32 * 0.5 - 1.0, "low nibble {j}");
        assert_eq!(x[j + 16], (15 - j) as f32 * 0.5 - 1.0, "high nibble {j}");
    }
}

#[test]
fn q4_0_block_by_hand() {
    // d = 0.25; byte j = (j low, j high): value = (q - 8) * d.
    let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
    for j in 0..16u8 {
        b.push(j | (j << 4));
    }
    let g = one_tensor(GgmlType::Q4_0, &[32], b);
    let x = g.tensor_f32("t").unwrap();
    for j in 0..16 {
        assert_eq!(x[j], (j as f32 - 8.0) * 0.25);
        assert_eq!(x[j + 16], (j as f32 - 8.0) * 0.25);
    }
}

#[test]
fn q8_0_block_by_hand() {
    let mut b = f16::from_f32(0.125).to_le_bytes().to_vec();
    let qs: Vec<i8> = (0..32).map(|j| (j * 8 - 128) as i8).collect();
    b.extend(qs.iter().map(|&q| q as u8));
    let g = one_tensor(GgmlType::Q8_0, &[32], b);
    let x = g.tensor_f32("t").unwrap();
    for j in 0..32 {
        assert_eq!(x[j], f32::from(qs[j]) * 0.125);
    }
}

#[test]
fn f16_and_f32_tensors() {
    let vals = [1.0f32, -2.5, 0.0, 65504.0];
    let b: Vec<u8> = vals
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    let g = one_tensor(GgmlType::F16, &[2, 2], b);
    assert_eq!(g.tensor_f32("t").unwrap(), vals);
    let mut w = GgufWriter::new();
    w.tensor_f32("a", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let g = Gguf::from_bytes(w.to_bytes()).unwrap();
    let t = g.tensor("a").unwrap();
    assert_eq!((t.cols(), t.rows()), (3, 2));
    let mut row = [0.0f32; 3];
    g.tensor_rows_f32(t, 1..2, &mut row).unwrap();
    assert_eq!(row, [4.0, 5.0, 6.0]);
}

#[test]
fn metadata_of_every_type_round_trips() {
    let values = vec![
        ("u8", Value::U8(7)),
        ("i8", Value::I8(-7)),
        ("u16", Value::U16(700)),
        ("i16", Value::I16(-700)),
        ("u32", Value::U32(70_000)),
        ("i32", Value::I32(-70_000)),
        ("u64", Value::U64(1 << 40)),
        ("i64", Value::I64(-(1 << 40))),
        ("f32", Value::F32(1.5)),
        ("f64", Value::F64(-2.25)),
        ("bool", Value::Bool(true)),
        ("str", Value::String("héllo".into())),
        (
            "arr.str",
            Value::Array(Array::String(vec!["a".into(), "".into()])),
        ),
        ("arr.i32", Value::Array(Array::I32(vec![1, -2, 3]))),
        ("arr.f32", Value::Array(Array::F32(vec![0.5]))),
        ("arr.bool", Value::Array(Array::Bool(vec![true, false]))),
        (
            "arr.nested",
            Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::U64(vec![]),
            ])),
        ),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w.metadata(k, v.clone());
    }
    let g = Gguf::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(g.version(), 3);
    for (k, v) in &values {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    assert_eq!(g.get_u64("u32").unwrap(), 70_000);
    assert_eq!(g.get_f64("f32").unwrap(), 1.5);
    assert_eq!(g.get_str("str").unwrap(), "héllo");
    assert!(matches!(g.get_u64("i32"), Err(GgufError::WrongType { .. })));
    assert!(matches!(g.get_str("u8"), Err(GgufError::WrongType { .. })));
    let e = g.get_str("nope").unwrap_err().to_string();
    assert!(e.contains("`nope` is missing"), "{e}");
}

fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()));
    w.metadata("tokens", Value::Array(Array::String(vec!["ab".into(); 10])));
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
    w.tensor_raw("q", &[64], GgmlType::Q4_1, quantize_q4_1(&x));
    w.tensor_f32("f", &[8], &x[..8]);
    w.to_bytes()
}

#[test]
fn every_truncation_is_an_error() {
    let full = sample_file();
    Gguf::from_bytes(full.clone()).unwrap();
    // Cutting anywhere inside the header, metadata, tensor table or data
    // must fail; only the final alignment padding may go.
    let last_data = full.len() - 32 + 8 * 4;
    for cut in 0..last_data {
        let r = Gguf::from_bytes(full[..cut].to_vec());
        assert!(r.is_err(), "truncated at {cut} of {} parsed", full.len());
    }
}

#[test]
fn corrupted_headers_are_errors() {
    let full = sample_file();
    let mut bad = full.clone();
    bad[0] = b'X';
    let e = Gguf::from_bytes(bad).unwrap_err().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let mut bad = full.clone();
    bad[4] = 9;
    let e = Gguf::from_bytes(bad).unwrap_err().to_string();
    assert!(e.contains("version 9"), "{e}");
    // A huge metadata count must not allocate: it is checked against the size.
    let mut bad = full.clone();
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(Gguf::from_bytes(bad).is_err());
}

#[test]
fn unsupported_type_is_named() {
    // Q6_K: 256 values in 210 bytes.
    let g = one_tensor(GgmlType::from_id(14).unwrap(), &[256], vec![0; 210]);
    let e = g.tensor_f32("t").unwrap_err().to_string();
    assert!(e.contains("`t`") && e.contains("Q6_K"), "{e}");
    let e = g.tensor_f32("missing").unwrap_err().to_string();
    assert!(e.contains("`missing` is missing"), "{e}");
}

proptest! {
    /// Quantize with llama.cpp's reference kernels, read back, and compare
    /// with a dequantization written independently from the block layout.
    #[test]
    fn quantized_tensors_round_trip(vals in prop::collection::vec(-4.0f32..4.0, 32..=96)) {
        let n = vals.len() / 32 * 32;
        let x = &vals[..n];
        for (ty, bytes) in [
            (GgmlType::Q8_0, quantize_q8_0(x)),
            (GgmlType::Q4_0, quantize_q4_0(x)),
            (GgmlType::Q4_1, quantize_q4_1(x)),
        ] {
            let g = one_tensor(ty, &[n as u64], bytes.clone());
            let got = g.tensor_f32("t").unwrap();
            let bs = bytes.len() / (n / 32);
            for (b, blk) in bytes.chunks(bs).zip(got.chunks(32)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..32 {
                    let want = match ty {
                        GgmlType::Q8_0 => (b[2 + j] as i8) as f32 * d,
                        GgmlType::Q4_0 => (((b[2 + j % 16] >> (4 * (j / 16))) & 15) as f32 - 8.0) * d,
                        _ => {
                            let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                            ((b[4 + j % 16] >> (4 * (j / 16))) & 15) as f32 * d + m
                        }
                    };
                    prop_assert_eq!(blk[j], want);
                }
            }
            // And the quantization error is bounded by the step size.
            let step = match ty { GgmlType::Q8_0 => 4.0 / 127.0, _ => 8.0 / 7.0 };
            for (a, b) in x.iter().zip(&got) {
                prop_assert!((a - b).abs() <= step * 1.01 + 1e-3, "{a} vs {b}");
            }
        }
    }

    /// Random bytes never panic the parser.
    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"GGUF");
            bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        let _ = Gguf::from_bytes(bytes);
    }

    /// Flipping any byte of a valid file never panics (it may still parse).
    #[test]
    fn flipped_bytes_never_panic(pos in 0usize..400, val in any::<u8>()) {
        let mut f = sample_file();
        let p = pos % f.len();
        f[p] = val;
        if let Ok(g) = Gguf::from_bytes(f) {
            for t in g.tensors().to_vec() {
                let _ = g.tensor_f32(&t.name);
            }
        }
    }
}

fn smollm2_path() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("Q35_SMOLLM2_GGUF") {
        return Some(p.into());
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        return None;
    }
    panic!(
        "SmolLM2 GGUF not found at {}: run scripts/setup (or set Q35_SKIP_MODEL_TESTS=1)",
        p.display()
    );
}

#[test]
fn real_smollm2_file() {
    let Some(path) = smollm2_path() else { return };
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u64("llama.embedding_length").unwrap(), 576);
    let count = |ty| g.tensors().iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![576, 49152]);
    assert_eq!(g.get_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    let q = g.tensor_f32("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.len(), 576 * 576);
    assert!(q.iter().all(|v| v.is_finite()));
    let norm = g.tensor_f32("output_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
}
