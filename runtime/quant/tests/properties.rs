//! Property tests of the quantizers against the format and the integer
//! semantics (q35-contract): pack/unpack round trips of random codes, the
//! half-step dequantization bound, the bits-per-weight formula, the overflow
//! bound, agreement of the two matvec implementations, serialisation and
//! thread-count independence. The spec's worked example and the exhaustive
//! code tests are in `runtime/contract/tests/spec.rs`.

mod common;

use common::SplitMix64;
use half::f16;
use proptest::prelude::*;
use q35_contract::semantics::{accumulator_bound, check_no_overflow};
use q35_contract::{ActivationI8, Layout, QuantScheme, QuantizedMatrix};
use q35_quant::quantize::{QuantOptions, quantize_with};
use q35_quant::{QuantError, quantize};

/// Code range of a channel, as i8.
fn range(scheme: QuantScheme, four_bit: bool) -> (i8, i8) {
    let (lo, hi) = scheme.code_range(four_bit);
    (lo as i8, hi as i8)
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
