//! GPT-2's reversible byte <-> Unicode mapping.
//!
//! Byte-level BPE vocabularies store every token as a string of "printable"
//! code points, one per raw byte: bytes that are already visible Latin-1
//! characters (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves and the
//! remaining 68 bytes (controls, space, DEL, NBSP, soft hyphen...) are moved,
//! in byte order, to U+0100 and up. So the byte 0x20 (space) is `Ġ` (U+0120)
//! and 0x0A (newline) is `Ċ` (U+010A). This is the table of llama.cpp's
//! `unicode_byte_to_utf8_map` and of OpenAI's `bytes_to_unicode`.

/// The code point that stands for each byte.
#[derive(Debug, Clone)]
pub(crate) struct ByteMap {
    to_char: [char; 256],
    /// Inverse: indexed by code point (all mapped code points are < 324).
    from_cp: [Option<u8>; 324],
}

/// Whether `b` is one of the bytes that map to themselves.
fn is_direct(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

impl ByteMap {
    pub(crate) fn new() -> ByteMap {
        let mut to_char = ['\0'; 256];
        let mut from_cp = [None; 324];
        let mut next = 256u32;
        for b in 0..=255u8 {
            let cp = if is_direct(b) {
                u32::from(b)
            } else {
                let cp = next;
                next += 1;
                cp
            };
            // Every value is below U+0144, so always a valid scalar value.
            to_char[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
            from_cp[cp as usize] = Some(b);
        }
        ByteMap { to_char, from_cp }
    }

    /// The code point standing for byte `b`.
    pub(crate) fn char_of(&self, b: u8) -> char {
        self.to_char[usize::from(b)]
    }

    /// The byte a code point stands for, if it is one of the 256.
    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        self.from_cp.get(c as usize).copied().flatten()
    }

    /// Decodes a vocabulary string back to raw bytes. A code point outside
    /// the table (not produced by the mapping) is kept as its own UTF-8.
    pub(crate) fn decode_token(&self, text: &str, out: &mut Vec<u8>) {
        let mut buf = [0u8; 4];
        for c in text.chars() {
            match self.byte_of(c) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_anchors() {
        let m = ByteMap::new();
        assert_eq!(m.char_of(b' '), 'Ġ');
        assert_eq!(m.char_of(b'\n'), 'Ċ');
        assert_eq!(m.char_of(b'\t'), 'ĉ');
        assert_eq!(m.char_of(b'a'), 'a');
        assert_eq!(m.char_of(0xAD), 'Ń');
        assert_eq!(m.char_of(0x00), 'Ā');
        assert_eq!(m.char_of(0xFF), 'ÿ');
    }

    #[test]
    fn mapping_is_a_bijection() {
        let m = ByteMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for b in 0..=255u8 {
            let c = m.char_of(b);
            assert!(seen.insert(c), "duplicate char for byte {b}");
            assert_eq!(m.byte_of(c), Some(b));
        }
        assert_eq!(m.byte_of('\u{144}'), None);
        assert_eq!(m.byte_of(' '), None);
        let mut out = Vec::new();
        m.decode_token("ĠhiĊ日", &mut out);
        assert_eq!(out, " hi\n日".as_bytes());
    }
}
