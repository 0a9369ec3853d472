//! Dequantization (and reference quantization) of ggml block formats.
//!
//! The dequantizers follow llama.cpp's `dequantize_row_*` reference kernels
//! in `ggml-quants.c`: the fp16 block scale is widened to f32 first, then each
//! value is `q * d` (Q8_0), `(q - 8) * d` (Q4_0) or `q * d + m` (Q4_1),
//! evaluated as an f32 multiply followed by an f32 add (no fused multiply-add).
//!
//! The quantizers are the `quantize_row_*_ref` kernels, used to build test and
//! synthetic files that llama.cpp would read back identically.

use half::f16;

use crate::GgmlType;

/// Elements per block of the quantized formats handled here.
pub const QK: usize = 32;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` of type `ty` into `out` (whose length fixes the element
/// count). Returns the type's name as the error for types not handled here.
///
/// # Panics
/// If `bytes` is not exactly the size of `out.len()` elements of `ty`; callers
/// inside this crate size both from a validated descriptor.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    match ty {
        GgmlType::F32 => {
            assert_eq!(bytes.len(), out.len() * 4);
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
        GgmlType::F16 => {
            assert_eq!(bytes.len(), out.len() * 2);
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            assert_eq!(bytes.len(), out.len() / QK * 34);
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..QK {
                    o[j] = f32::from(b[2 + j] as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            assert_eq!(bytes.len(), out.len() / QK * 18);
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..QK / 2 {
                    let q = b[2 + j];
                    o[j] = (i32::from(q & 0x0f) - 8) as f32 * d;
                    o[j + QK / 2] = (i32::from(q >> 4) - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            assert_eq!(bytes.len(), out.len() / QK * 20);
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for j in 0..QK / 2 {
                    let q = b[4 + j];
                    o[j] = f32::from(q & 0x0f) * d + m;
                    o[j + QK / 2] = f32::from(q >> 4) * d + m;
                }
            }
        }
        GgmlType::Other(_) => return Err(ty.name()),
    }
    Ok(())
}

/// llama.cpp's `quantize_row_q8_0_ref`. `x.len()` must be a multiple of 32.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "Q8_0 rows are whole blocks of 32");
    let mut out = Vec::with_capacity(x.len() / QK * 34);
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// llama.cpp's `quantize_row_q4_0_ref`. `x.len()` must be a multiple of 32.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "Q4_0 rows are whole blocks of 32");
    let mut out = Vec::with_capacity(x.len() / QK * 18);
    for blk in x.chunks_exact(QK) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in blk {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..QK / 2 {
            let q0 = ((blk[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((blk[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
    out
}

/// llama.cpp's `quantize_row_q4_1_ref`. `x.len()` must be a multiple of 32.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "Q4_1 rows are whole blocks of 32");
    let mut out = Vec::with_capacity(x.len() / QK * 20);
    for blk in x.chunks_exact(QK) {
        let min = blk.iter().copied().fold(f32::MAX, f32::min);
        let max = blk.iter().copied().fold(-f32::MAX, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        for j in 0..QK / 2 {
            let q0 = (((blk[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((blk[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
    out
}
