//! Little-endian bit streams of fixed-width codes.
//!
//! Code `k` of a stream of `width`-bit codes occupies stream bits
//! `k * width .. (k + 1) * width`, least significant bit first; stream bit
//! `b` is bit `b % 8` of byte `b / 8`. For width 7 this is the same as
//! "8 pairs per 7 bytes, read as a little-endian 56-bit word"; for width 4
//! it puts code `2i` in the low nibble of byte `i`.

/// Writes `codes` (each using its low `width` bits) as a bit stream into
/// `out`, which must be exactly `ceil(codes.len() * width / 8)` bytes and is
/// overwritten.
pub(crate) fn pack_bits(codes: &[u8], width: u32, out: &mut [u8]) {
    debug_assert!((1..=8).contains(&width));
    debug_assert_eq!(out.len(), (codes.len() * width as usize).div_ceil(8));
    let mask = (1u32 << width) - 1;
    let mut acc: u32 = 0;
    let mut nbits: u32 = 0;
    let mut pos = 0;
    for &c in codes {
        acc |= (u32::from(c) & mask) << nbits;
        nbits += width;
        while nbits >= 8 {
            out[pos] = (acc & 0xFF) as u8;
            pos += 1;
            acc >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        out[pos] = (acc & 0xFF) as u8;
    }
}

/// Reads `out.len()` codes of `width` bits from the bit stream `bytes`.
pub(crate) fn unpack_bits(bytes: &[u8], width: u32, out: &mut [u8]) {
    debug_assert!((1..=8).contains(&width));
    debug_assert!(bytes.len() * 8 >= out.len() * width as usize);
    let mask = (1u32 << width) - 1;
    let mut acc: u32 = 0;
    let mut nbits: u32 = 0;
    let mut pos = 0;
    for o in out.iter_mut() {
        while nbits < width {
            acc |= u32::from(bytes[pos]) << nbits;
            pos += 1;
            nbits += 8;
        }
        *o = (acc & mask) as u8;
        acc >>= width;
        nbits -= width;
    }
}

/// Two's-complement value of the low `width` bits of `v`.
pub(crate) fn sign_extend(v: u8, width: u32) -> i8 {
    let shift = 8 - width;
    ((v << shift) as i8) >> shift
}

/// The 7-bit code of a Q35 pair: 4-bit code in bits 0..4, 3-bit code in
/// bits 4..7 (both two's complement).
pub fn pair_code(c4: i8, c3: i8) -> u8 {
    ((c4 as u8) & 0x0F) | (((c3 as u8) & 0x07) << 4)
}

/// The (4-bit, 3-bit) codes of a 7-bit pair code (what the machine's
/// `unpack35` decodes, docs/isa.md 3).
pub fn split_pair(code: u8) -> (i8, i8) {
    (
        sign_extend(code & 0x0F, 4),
        sign_extend((code >> 4) & 0x07, 3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width7_matches_eight_pairs_per_seven_bytes() {
        let codes: Vec<u8> = (0..8).map(|k| (k * 17 + 3) as u8 & 0x7F).collect();
        let mut out = [0u8; 7];
        pack_bits(&codes, 7, &mut out);
        let mut word = [0u8; 8];
        word[..7].copy_from_slice(&out);
        let w = u64::from_le_bytes(word);
        for (k, &c) in codes.iter().enumerate() {
            assert_eq!(((w >> (7 * k)) & 0x7F) as u8, c, "pair {k}");
        }
    }

    #[test]
    fn width4_is_low_nibble_first() {
        let mut out = [0u8; 1];
        pack_bits(&[0x3, 0xA], 4, &mut out);
        assert_eq!(out[0], 0xA3);
    }

    #[test]
    fn sign_extension() {
        assert_eq!(sign_extend(0x8, 4), -8);
        assert_eq!(sign_extend(0x7, 4), 7);
        assert_eq!(sign_extend(0x4, 3), -4);
        assert_eq!(sign_extend(0x3, 3), 3);
        assert_eq!(sign_extend(0x80, 8), -128);
        for c4 in -8..=7i8 {
            for c3 in -4..=3i8 {
                assert_eq!(split_pair(pair_code(c4, c3)), (c4, c3));
                assert!(pair_code(c4, c3) < 128);
            }
        }
    }
}
