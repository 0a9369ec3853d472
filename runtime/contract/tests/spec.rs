//! The format and integer semantics against docs/q35-format.md: the worked
//! example (section 11) byte for byte, every code of every scheme through
//! pack and unpack, what `QuantizedMatrix::from_codes` and `Layout::new`
//! refuse, and the accumulator bound reached exactly on extreme values.

use half::f16;
use q35_contract::semantics::{accumulator_bound, check_no_overflow, group_dot};
use q35_contract::{ActivationI8, ContractError, Layout, QuantScheme, QuantizedMatrix};

#[test]
fn every_code_round_trips() {
    // Every (4-bit, 3-bit) pair, and every uniform code, in one block each.
    for scheme in QuantScheme::ALL {
        let layout = Layout::new(1, 256, 256).unwrap();
        let mut codes = vec![0i8; 256];
        let mut mask = vec![false; 256];
        if scheme.is_q35() {
            // Pair p = channels (2p, 2p+1) under both the alternation and
            // this explicit mask.
            for p in 0..128 {
                codes[2 * p] = (p % 16) as i8 - 8;
                codes[2 * p + 1] = (p / 16) as i8 - 4;
                mask[2 * p] = true;
            }
        } else {
            let (lo, hi) = scheme.code_range(false);
            for (j, c) in codes.iter_mut().enumerate() {
                *c = (lo + (j as i32 % (hi - lo + 1))) as i8;
            }
        }
        for mults in [(1, 1), (4, 7), (16, 32)] {
            let mults = if scheme.is_q35() { mults } else { (1, 1) };
            let m = QuantizedMatrix::from_codes(
                layout,
                scheme,
                mults,
                &codes,
                &[f16::ONE],
                Some(&mask),
            )
            .unwrap();
            let mut out = vec![0i8; 256];
            m.decode_block(0, 0, &mut out);
            for j in 0..256 {
                let mult = if !scheme.is_q35() || mask[j] {
                    mults.0
                } else {
                    mults.1
                };
                assert_eq!(
                    i32::from(out[j]),
                    i32::from(codes[j]) * i32::from(mult),
                    "{scheme} channel {j}"
                );
            }
            assert_eq!(m.packed().len() * 8, scheme.code_bits(256));
        }
    }
}

#[test]
fn from_codes_rejects_bad_input() {
    let layout = Layout::new(1, 16, 16).unwrap();
    let mask: Vec<bool> = (0..16).map(|j| j < 8).collect();
    let mut codes = vec![0i8; 16];
    codes[12] = 4; // a 3-bit channel
    let err = QuantizedMatrix::from_codes(
        layout,
        QuantScheme::Q35,
        (1, 1),
        &codes,
        &[f16::ONE],
        Some(&mask),
    )
    .unwrap_err();
    assert!(matches!(err, ContractError::Corrupt(ref m) if m.contains("channel 12")));
    let unbalanced: Vec<bool> = (0..16).map(|j| j < 9).collect();
    assert!(
        QuantizedMatrix::from_codes(
            layout,
            QuantScheme::Q35,
            (1, 1),
            &[0; 16],
            &[f16::ONE],
            Some(&unbalanced)
        )
        .is_err()
    );
    assert_eq!(Layout::new(1, 16, 24), Err(ContractError::BadGroupSize(24)));
    assert_eq!(
        Layout::new(0, 16, 16),
        Err(ContractError::EmptyMatrix { rows: 0, cols: 16 })
    );
}

#[test]
fn overflow_bound_is_tight_on_extreme_values() {
    // All activations -127 and all weights at the most negative code: the
    // accumulator reaches exactly the bound.
    for (scheme, mults) in [
        (QuantScheme::Q35, (16u8, 32u8)),
        (QuantScheme::Q35Alternating, (4, 7)),
        (QuantScheme::Int8, (1, 1)),
    ] {
        let layout = Layout::new(1, 128, 128).unwrap();
        let mask: Vec<bool> = (0..128).map(|j| j % 2 == 0).collect();
        let codes: Vec<i8> = (0..128)
            .map(|j| match scheme {
                QuantScheme::Int8 => -128,
                _ if j % 2 == 0 => -8,
                _ => -4,
            })
            .collect();
        let m =
            QuantizedMatrix::from_codes(layout, scheme, mults, &codes, &[f16::ONE], Some(&mask))
                .unwrap();
        let x = ActivationI8::quantize(&vec![-1.0f32; 128]).unwrap();
        let q = m.unpack();
        let acc = group_dot(x.codes(), q.row(0));
        let bound = accumulator_bound(128, 127, m.code_max());
        let max_pair = i64::from(8 * mults.0).max(i64::from(4 * mults.1));
        if scheme == QuantScheme::Int8 || 8 * mults.0 == 4 * mults.1 {
            assert_eq!(acc as u64, bound, "{scheme}");
        } else {
            assert!((acc as u64) < bound, "{scheme}");
        }
        assert_eq!(
            m.code_max() as i64,
            max_pair.max(if scheme == QuantScheme::Int8 { 128 } else { 0 })
        );
        assert!(check_no_overflow("t", 128, 127, m.code_max()).is_ok());
    }
}

/// The worked example of docs/q35-format.md ("Worked example"): bytes
/// computed by hand from the spec, not by this crate.
#[test]
fn golden_bytes_from_the_spec() {
    let c4 = [-8i8, -1, 0, 1, 7, 3, -5, 2];
    let c3 = [-4i8, -1, 0, 1, 3, 2, -2, -3];
    let expected = [0xc8u8, 0x3f, 0x20, 0x72, 0x1b, 0xad, 0xa5];
    let layout = Layout::new(1, 16, 16).unwrap();
    // Fixed alternation: pair p = channels (2p, 2p + 1).
    let mut alt = [0i8; 16];
    for p in 0..8 {
        alt[2 * p] = c4[p];
        alt[2 * p + 1] = c3[p];
    }
    let m = QuantizedMatrix::from_codes(
        layout,
        QuantScheme::Q35Alternating,
        (4, 7),
        &alt,
        &[f16::from_f32(0.5)],
        None,
    )
    .unwrap();
    assert_eq!(m.packed(), &expected);
    // Explicit mask: 4-bit channels {1, 2, 5, 6, 9, 10, 13, 14}; pair p is
    // (p-th 4-bit channel, p-th 3-bit channel) in ascending order.
    let four = [1usize, 2, 5, 6, 9, 10, 13, 14];
    let three = [0usize, 3, 4, 7, 8, 11, 12, 15];
    let mut mask = [false; 16];
    let mut codes = [0i8; 16];
    for p in 0..8 {
        mask[four[p]] = true;
        codes[four[p]] = c4[p];
        codes[three[p]] = c3[p];
    }
    let m = QuantizedMatrix::from_codes(
        layout,
        QuantScheme::Q35,
        (4, 7),
        &codes,
        &[f16::from_f32(0.5)],
        Some(&mask),
    )
    .unwrap();
    assert_eq!(m.packed(), &expected);
    assert_eq!(m.slot_mask().unwrap(), &[0x66, 0x66]);
    // Integer weights 4*c4 and 7*c3; dequantized 0.5 * those.
    let d = m.dequantize();
    assert_eq!(d[1], 0.5 * 4.0 * -8.0);
    assert_eq!(d[0], 0.5 * 7.0 * -4.0);
    // The embedding lookup's row is the same dequantization.
    let u = m.unpack();
    assert_eq!(u.dequantize_row(0).as_deref(), Some(&u.dequantize()[..16]));
    assert_eq!(u.dequantize_row(1), None);
    // Serialised header.
    let bytes = m.to_bytes();
    assert_eq!(
        &bytes[..20],
        &[
            b'Q', b'3', b'5', b'W', 1, 0, 4, 7, 1, 0, 0, 0, 16, 0, 0, 0, 16, 0, 0, 0
        ]
    );
    assert_eq!(&bytes[20..22], &[0x66, 0x66]);
    assert_eq!(&bytes[22..24], &f16::from_f32(0.5).to_bits().to_le_bytes());
    assert_eq!(&bytes[24..], &expected);

    // int3: codes -4..=3 in one 8-code stream.
    let mut codes = [0i8; 16];
    for (k, c) in codes.iter_mut().enumerate().take(8) {
        *c = k as i8 - 4;
    }
    let m =
        QuantizedMatrix::from_codes(layout, QuantScheme::Int3, (1, 1), &codes, &[f16::ONE], None)
            .unwrap();
    assert_eq!(&m.packed()[..3], &[0xac, 0x8f, 0x68]);

    // Matvec: x = [127, 0, ..., 0, -127 at channel 1] / 127 * 2 => scale 2/127.
    let mut x = [0f32; 16];
    x[0] = 2.0;
    x[1] = -1.0;
    let a = ActivationI8::quantize(&x).unwrap();
    assert_eq!(a.codes()[..2], [127, -64]); // -63.5 rounds away from zero
    let m = QuantizedMatrix::from_codes(
        layout,
        QuantScheme::Q35,
        (4, 7),
        &[-4, -8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[f16::from_f32(0.5)],
        Some(&mask),
    )
    .unwrap();
    // acc = 127 * (7 * -4) + (-64) * (4 * -8) = -3556 + 2048 = -1508
    let y = m.matvec(&a).unwrap();
    assert_eq!(y[0], (-1508f32 * 0.5) * (2.0f32 / 127.0));
}

/// `row_range`: a matrix's rows as a matrix of their own, bit for bit: the
/// pieces' products are the whole matrix's rows (a matmul split by output
/// rows over chips computes the same values), for every scheme and a last
/// group shorter than the others; an empty or out-of-range span is refused.
#[test]
fn row_range_pieces_are_the_whole_rows() {
    let (rows, cols, group) = (7, 80, 32);
    let layout = Layout::new(rows, cols, group).unwrap();
    let cp = layout.cols_padded();
    for scheme in QuantScheme::ALL {
        let mut codes = vec![0i8; rows * cp];
        let mut mask = vec![false; cp];
        for g in 0..layout.n_groups() {
            let (s, n) = (layout.group_start(g), layout.group_padded_len(g));
            for o in 0..n / 2 {
                mask[s + 2 * o] = true;
            }
        }
        for r in 0..rows {
            for j in 0..cols {
                let (lo, hi) = scheme.code_range(!scheme.is_q35() || mask[j]);
                codes[r * cp + j] = (lo + ((r * 31 + j * 7) as i32 % (hi - lo + 1))) as i8;
            }
        }
        let scales: Vec<f16> = (0..rows * layout.n_groups())
            .map(|i| f16::from_f32(0.01 * (i + 1) as f32))
            .collect();
        let mults = if scheme.is_q35() { (2, 3) } else { (1, 1) };
        let m = QuantizedMatrix::from_codes(layout, scheme, mults, &codes, &scales, Some(&mask))
            .unwrap();
        let x: Vec<f32> = (0..cols).map(|j| (j as f32 * 0.37).sin()).collect();
        let a = ActivationI8::quantize(&x).unwrap();
        let whole = m.matvec(&a).unwrap();
        for (lo, hi) in [(0, 3), (3, 7), (2, 3), (0, 7)] {
            let piece = m.row_range(lo..hi).unwrap();
            assert_eq!(piece.rows(), hi - lo);
            let got = piece.matvec(&a).unwrap();
            let want: Vec<u32> = whole[lo..hi].iter().map(|v| v.to_bits()).collect();
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{scheme} rows {lo}..{hi}");
            for r in lo..hi {
                for g in 0..layout.n_groups() {
                    assert_eq!(piece.block(g, r - lo), m.block(g, r));
                    assert_eq!(piece.scale(g, r - lo).to_bits(), m.scale(g, r).to_bits());
                }
            }
        }
        assert!(m.row_range(3..3).is_err());
        assert!(m.row_range(5..8).is_err());
    }
}
