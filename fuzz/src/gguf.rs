//! The GGUF door: `Gguf::from_bytes`, every accessor, dequantization of
//! every tensor, and the readers built on a GGUF (architecture, tokenizer).

use std::path::Path;

use q35_gguf::write::GgufWriter;
use q35_gguf::{GgmlType, Gguf, GgufError, Value};

use crate::message;

/// Opens `data` as a GGUF image. An error must name what is wrong; an
/// accepted file must answer every accessor without panicking, dequantize
/// every tensor of a supported type (row ranges agreeing with the whole
/// tensor), and survive a rewrite: writing what was read with
/// [`GgufWriter`] and reading it back gives the same file again. Returns
/// whether the file was accepted.
pub fn gguf(data: &[u8]) -> bool {
    let g = match Gguf::from_bytes(data.to_vec()) {
        Ok(g) => g,
        Err(e) => {
            message(&e);
            return false;
        }
    };
    assert!((2..=3).contains(&g.version()));
    assert!(g.alignment().is_power_of_two());
    for (key, value) in g.metadata() {
        assert_eq!(g.get(key).map(Value::type_name), Some(value.type_name()));
        // Each typed getter answers or names the key and the type found.
        let _ = g.get_str(key).map_err(|e| message(&e));
        let _ = g.get_u64(key).map_err(|e| message(&e));
        let _ = g.get_f64(key).map_err(|e| message(&e));
        let _ = g.get_bool(key).map_err(|e| message(&e));
        let _ = g.get_array(key).map_err(|e| message(&e));
    }
    let absent = "\u{0}no such key";
    if g.get(absent).is_none() {
        assert!(g.get_str(absent).is_err());
    }
    let mut total_bytes = 0u64;
    for t in g.tensors() {
        assert!(g.tensor(&t.name).is_ok_and(|x| std::ptr::eq(x, t)));
        let bytes = g.tensor_bytes(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        total_bytes += t.n_bytes;
        dequantize(&g, t);
    }
    assert!(
        total_bytes <= data.len() as u64,
        "tensors overlap or overrun"
    );
    // The readers built on GGUF metadata: errors or consistent results.
    match q35_model::architecture_from_gguf(&g, Path::new("fuzz.gguf")) {
        Ok(a) => {
            assert!(a.heads > 0 && a.hidden % a.heads == 0);
            let expected = a.expected_tensors();
            assert!(expected.len() <= g.tensors().len());
        }
        Err(e) => {
            message(&e);
        }
    }
    match q35_tokenizer::Tokenizer::from_gguf(&g) {
        Ok(t) => {
            assert!(t.vocab_size() > 0);
            assert!((t.bos() as usize) < t.vocab_size());
            assert!((t.eos() as usize) < t.vocab_size());
            let ids = t.encode("fuzz <|im_start|> text", true);
            assert!(ids.iter().all(|&id| (id as usize) < t.vocab_size()));
            let _ = t.decode(&ids);
        }
        Err(e) => {
            message(&e);
        }
    }
    rewrite(&g);
    true
}

/// Dequantizes tensor `t` whole and by row ranges, which must agree.
fn dequantize(g: &Gguf, t: &q35_gguf::TensorInfo) {
    let whole = match g.tensor_f32(&t.name) {
        Ok(v) => v,
        Err(e) => {
            assert!(
                matches!(e, GgufError::Unsupported { .. }),
                "tensor `{}`: {e}",
                t.name
            );
            assert!(matches!(t.ggml_type, GgmlType::Other(_)));
            message(&e);
            return;
        }
    };
    assert_eq!(whole.len() as u64, t.n_elements);
    let rows = t.rows();
    let cols = t.cols() as usize;
    // The first row, the last row, and all rows (bounded: n_elements is).
    for range in [0..rows.min(1), rows.saturating_sub(1)..rows, 0..rows] {
        let n = (range.end - range.start) as usize * cols;
        if n > whole.len() {
            continue;
        }
        let mut out = vec![0.0f32; n];
        g.tensor_rows_f32(t, range.clone(), &mut out)
            .unwrap_or_else(|e| panic!("rows {range:?} of `{}`: {e}", t.name));
        let start = range.start as usize * cols;
        let same = out
            .iter()
            .zip(&whole[start..start + n])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "rows {range:?} of `{}` differ from the whole", t.name);
    }
    // A range past the end and a wrong-sized buffer are errors.
    if let Some(past) = rows.checked_add(1) {
        assert!(g.tensor_rows_f32(t, rows..past, &mut []).is_err());
    }
    if cols > 0 && rows > 0 {
        assert!(
            g.tensor_rows_f32(t, 0..1, &mut vec![0.0; cols + 1])
                .is_err()
        );
    }
}

/// Writes what was read and reads it back: the second writing must equal
/// the first (only for the writer's alignment, 32).
fn rewrite(g: &Gguf) {
    if g.alignment() != q35_gguf::DEFAULT_ALIGNMENT {
        return;
    }
    let write = |g: &Gguf| {
        let mut w = GgufWriter::new();
        for (k, v) in g.metadata() {
            w.metadata(k, v.clone());
        }
        for t in g.tensors() {
            w.tensor_raw(&t.name, &t.dims, t.ggml_type, g.tensor_bytes(t).to_vec());
        }
        w.to_bytes()
    };
    let first = write(g);
    let again = Gguf::from_bytes(first.clone())
        .unwrap_or_else(|e| panic!("the writer's rewrite of an accepted file is refused: {e}"));
    assert_eq!(again.metadata().len(), g.metadata().len());
    assert_eq!(again.tensors().len(), g.tensors().len());
    assert!(write(&again) == first, "rewriting is not a fixed point");
}
