//! Property tests of the format and the integer semantics: pack/unpack
//! round trips over every code, the half-step dequantization bound, the
//! bits-per-weight formula, the overflow bound, agreement of the two matvec
//! implementations, serialisation and thread-count independence.

mod common;

use common::SplitMix64;
use half::f16;
use proptest::prelude::*;
use q35_quant::quantize::{QuantOptions, quantize_with};
use q35_quant::semantics::{accumulator_bound, check_no_overflow, group_dot};
use q35_quant::{
    ActivationI8, Layout, QuantError, QuantScheme, QuantizedMatrix, SchemeExt, quantize,
};

/// Code range of a channel.
fn range(scheme: QuantScheme, four_bit: bool) -> (i8, i8) {
    match scheme {
        QuantScheme::Int8 => (-128, 127),
        QuantScheme::Int4 => (-8, 7),
        QuantScheme::Int3 => (-4, 3),
        _ if four_bit => (-8, 7),
        _ => (-4, 3),
    }
}

/// A random balanced slot mask (half of every padded group 4-bit).
fn random_mask(layout: Layout, rng: &mut SplitMix64) -> Vec<bool> {
    let mut mask = vec![false; layout.cols_padded()];
    for g in 0..layout.n_groups() {
        let start = layout.group_start(g);
        let plen = layout.group_padded_len(g);
        let mut idx: Vec<usize> = (0..plen).collect();
        for i in (1..plen).rev() {
            idx.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for &o in &idx[..plen / 2] {
            mask[start + o] = true;
        }
    }
    mask
}

/// Random codes, scales and mask for a layout.
fn random_codes(
    layout: Layout,
    scheme: QuantScheme,
    rng: &mut SplitMix64,
) -> (Vec<i8>, Vec<f16>, Vec<bool>) {
    let mask = if scheme == QuantScheme::Q35Alternating {
        (0..layout.cols_padded()).map(|j| j % 2 == 0).collect()
    } else {
        random_mask(layout, rng)
    };
    let cp = layout.cols_padded();
    let mut codes = vec![0i8; layout.rows * cp];
    for r in 0..layout.rows {
        for j in 0..layout.cols {
            let (lo, hi) = range(scheme, mask[j]);
            let span = (i32::from(hi) - i32::from(lo) + 1) as u64;
            codes[r * cp + j] = (i32::from(lo) + (rng.next_u64() % span) as i32) as i8;
        }
    }
    let scales = (0..layout.rows * layout.n_groups())
        .map(|_| f16::from_f32((rng.uniform() as f32 - 0.5) * 0.01))
        .collect();
    (codes, scales, mask)
}

fn mults_for(scheme: QuantScheme, pick: u64) -> (u8, u8) {
    if scheme.is_q35() {
        [(1, 1), (4, 7), (16, 32), (3, 5), (1, 2)][(pick % 5) as usize]
    } else {
        (1, 1)
    }
}

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
            let (lo, hi) = range(scheme, false);
            for (j, c) in codes.iter_mut().enumerate() {
                *c = (i32::from(lo) + (j as i32 % (i32::from(hi) - i32::from(lo) + 1))) as i8;
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
    assert!(matches!(err, QuantError::Corrupt(ref m) if m.contains("channel 12")));
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
    assert_eq!(Layout::new(1, 16, 24), Err(QuantError::BadGroupSize(24)));
    assert_eq!(
        Layout::new(0, 16, 16),
        Err(QuantError::EmptyMatrix { rows: 0, cols: 16 })
    );
}

#[test]
fn quantize_rejects_bad_input() {
    let w = vec![0.5f32; 32];
    assert_eq!(
        quantize(&w, 2, 16, QuantScheme::Q35, 16, None).unwrap_err(),
        QuantError::ImportanceRequired(QuantScheme::Q35)
    );
    assert!(matches!(
        quantize(&w, 2, 15, QuantScheme::Int4, 16, None),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let mut bad = w.clone();
    bad[7] = f32::NAN;
    assert_eq!(
        quantize(&bad, 2, 16, QuantScheme::Int4, 16, None).unwrap_err(),
        QuantError::NonFinite {
            what: "weights",
            index: 7
        }
    );
    let mut imp = vec![1.0f32; 16];
    imp[3] = -1.0;
    assert_eq!(
        quantize(&w, 2, 16, QuantScheme::Q35, 16, Some(&imp)).unwrap_err(),
        QuantError::NegativeImportance { index: 3 }
    );
    assert!(matches!(
        quantize(&w, 2, 16, QuantScheme::Q35, 16, Some(&imp[..8])),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!("q36".parse::<QuantScheme>().is_err());
    for s in QuantScheme::ALL {
        assert_eq!(s.as_str().parse::<QuantScheme>().unwrap(), s);
        assert_eq!(QuantScheme::from_tag(s.tag()), Some(s));
    }
}

#[test]
fn zero_matrix_quantizes_to_zero() {
    let w = vec![0f32; 3 * 40];
    for s in QuantScheme::ALL {
        let q = quantize(&w, 3, 40, s, 16, Some(&[1.0; 40])).unwrap();
        assert!(q.dequantize().iter().all(|&v| v == 0.0), "{s}");
    }
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn codes_round_trip(
        rows in 1usize..5,
        cols in 1usize..300,
        group_quanta in 1usize..10,
        scheme_i in 0usize..6,
        seed in any::<u64>(),
    ) {
        let scheme = QuantScheme::ALL[scheme_i];
        let layout = Layout::new(rows, cols, 16 * group_quanta).unwrap();
        let mut rng = SplitMix64(seed);
        let (codes, scales, mask) = random_codes(layout, scheme, &mut rng);
        let mults = mults_for(scheme, seed);
        let m = QuantizedMatrix::from_codes(layout, scheme, mults, &codes, &scales, Some(&mask)).unwrap();
        let cp = layout.cols_padded();
        for g in 0..layout.n_groups() {
            let start = layout.group_start(g);
            let plen = layout.group_padded_len(g);
            let mut out = vec![0i8; plen];
            for r in 0..rows {
                m.decode_block(g, r, &mut out);
                for (o, &got) in out.iter().enumerate() {
                    let j = start + o;
                    let mult = if !scheme.is_q35() || mask[j] { mults.0 } else { mults.1 };
                    prop_assert_eq!(i32::from(got), i32::from(codes[r * cp + j]) * i32::from(mult));
                }
                prop_assert_eq!(m.scale(g, r), scales[r * layout.n_groups() + g].to_f32());
            }
        }
        // Serialisation round trip, and truncation is an error.
        let bytes = m.to_bytes();
        prop_assert_eq!(&QuantizedMatrix::from_bytes(&bytes).unwrap(), &m);
        prop_assert!(QuantizedMatrix::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn bits_per_weight_as_specified(
        rows in 1usize..40,
        cols in 1usize..700,
        group_quanta in 1usize..17,
        scheme_i in 0usize..6,
    ) {
        let scheme = QuantScheme::ALL[scheme_i];
        let g = 16 * group_quanta;
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let imp = vec![1.0f32; cols];
        let m = quantize(&w, rows, cols, scheme, g, Some(&imp)).unwrap();
        // docs/q35-format.md, "Bits per weight".
        let n_groups = cols.div_ceil(g);
        let last = cols - (n_groups - 1) * g;
        let cp = (n_groups - 1) * g + last.div_ceil(16) * 16;
        let code_bits = match scheme {
            QuantScheme::Int8 => 8.0,
            QuantScheme::Int4 => 4.0,
            QuantScheme::Int3 => 3.0,
            _ => 3.5,
        };
        let mask_bits = if scheme.stores_slot_mask() { 8 * cp.div_ceil(8) } else { 0 };
        let bits = code_bits * (rows * cp) as f64 + 16.0 * (rows * n_groups) as f64 + mask_bits as f64;
        prop_assert_eq!(m.storage_bits() as f64, bits);
        prop_assert!((m.bits_per_weight() - bits / (rows * cols) as f64).abs() < 1e-12);
    }

    #[test]
    fn dequantization_within_half_step(
        rows in 1usize..6,
        cols in 1usize..400,
        group_quanta in 1usize..9,
        scheme_i in 0usize..6,
        seed in any::<u64>(),
    ) {
        let scheme = QuantScheme::ALL[scheme_i];
        let mut rng = SplitMix64(seed);
        let w = rng.gaussians(rows * cols, 0.05);
        let imp: Vec<f32> = (0..cols).map(|_| rng.uniform() as f32 * 4.0).collect();
        let g = 16 * group_quanta;
        let m = quantize(&w, rows, cols, scheme, g, Some(&imp)).unwrap();
        let q = m.unpack();
        let d = m.dequantize();
        let (m4, m3) = m.multipliers();
        for r in 0..rows {
            for j in 0..cols {
                let scale = q.row_scales(r)[j / g];
                let four = m.is_four_bit(j);
                let (lo, hi) = range(scheme, four);
                let mult = if !scheme.is_q35() || four { m4 } else { m3 };
                let step = scale * f32::from(mult);
                let (a, b) = (step * f32::from(lo), step * f32::from(hi));
                let x = w[r * cols + j];
                if x >= a.min(b) && x <= a.max(b) {
                    let err = (x - d[r * cols + j]).abs();
                    prop_assert!(
                        err <= step.abs() * 0.5 * (1.0 + 1e-5),
                        "{} r{} j{}: |{} - {}| > step {} / 2", scheme, r, j, x, d[r * cols + j], step
                    );
                }
            }
        }
    }

    #[test]
    fn matvec_implementations_agree(
        rows in 1usize..9,
        cols in 1usize..300,
        group_quanta in 1usize..9,
        scheme_i in 0usize..6,
        seed in any::<u64>(),
    ) {
        let scheme = QuantScheme::ALL[scheme_i];
        let mut rng = SplitMix64(seed);
        let w = rng.gaussians(rows * cols, 0.05);
        let imp = vec![1.0f32; cols];
        let m = quantize(&w, rows, cols, scheme, 16 * group_quanta, Some(&imp)).unwrap();
        let x = ActivationI8::quantize(&rng.gaussians(cols, 1.0)).unwrap();
        let packed = m.matvec(&x).unwrap();
        let unpacked = m.unpack();
        let int = unpacked.matvec(&x).unwrap();
        let batch = unpacked.matmul(std::slice::from_ref(&x), 3).unwrap();
        prop_assert_eq!(packed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        int.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        prop_assert_eq!(&batch[0], &int);
        // And it is the dequantized product up to f32 rounding.
        let d = m.dequantize();
        let xd = x.dequantize();
        for r in 0..rows {
            let exact: f64 = (0..cols).map(|j| f64::from(d[r * cols + j]) * f64::from(xd[j])).sum();
            let norm: f64 = (0..cols).map(|j| (f64::from(d[r * cols + j]) * f64::from(xd[j])).abs()).sum();
            prop_assert!((f64::from(int[r]) - exact).abs() <= 1e-5 * norm + 1e-30);
        }
    }

    #[test]
    fn overflow_check_matches_bound(k in 1u64..10_000_000, code_max in 1u64..129) {
        let bound = k * 127 * code_max;
        prop_assert_eq!(accumulator_bound(k, 127, code_max), bound);
        prop_assert_eq!(check_no_overflow("op", k, 127, code_max).is_ok(), bound <= i32::MAX as u64);
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let mut rng = SplitMix64(7);
    let (rows, cols) = (100, 200);
    let w = rng.gaussians(rows * cols, 0.1);
    let imp: Vec<f32> = (0..cols).map(|_| rng.uniform() as f32).collect();
    for s in QuantScheme::ALL {
        let a = quantize_with(
            &w,
            rows,
            cols,
            s,
            64,
            Some(&imp),
            QuantOptions { threads: 1 },
        )
        .unwrap();
        let b = quantize_with(
            &w,
            rows,
            cols,
            s,
            64,
            Some(&imp),
            QuantOptions { threads: 3 },
        )
        .unwrap();
        assert_eq!(a, b, "{s}");
    }
}

#[test]
fn corrupt_serialisations_are_rejected() {
    let mut rng = SplitMix64(9);
    let w = rng.gaussians(4 * 64, 0.1);
    let m = quantize(&w, 4, 64, QuantScheme::Q35Rtn, 32, None).unwrap();
    let good = m.to_bytes();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(QuantizedMatrix::from_bytes(&bad_magic).is_err());
    let mut bad_tag = good.clone();
    bad_tag[5] = 99;
    assert!(QuantizedMatrix::from_bytes(&bad_tag).is_err());
    let mut bad_mask = good.clone();
    bad_mask[20] ^= 1; // first mask byte: unbalances group 0
    let err = QuantizedMatrix::from_bytes(&bad_mask).unwrap_err();
    assert!(err.to_string().contains("group 0"), "{err}");
    let mut bad_mult = good;
    bad_mult[6] = 0;
    assert!(QuantizedMatrix::from_bytes(&bad_mult).is_err());
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
