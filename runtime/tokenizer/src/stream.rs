//! Incremental detokenization for printing tokens as they are generated.
//!
//! A byte-level BPE token can end in the middle of a UTF-8 character (an
//! emoji is often three tokens). [`StreamDecoder`] buffers such a tail until
//! the character completes, so each call returns only whole characters. The
//! text it returns over a whole sequence, plus [`StreamDecoder::finish`], is
//! exactly [`crate::Tokenizer::decode`] of that sequence: invalid bytes
//! become U+FFFD by the same rule as `String::from_utf8_lossy`.

use crate::Tokenizer;

/// Turns a stream of tokens (or raw bytes) into text, a whole character at a
/// time.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Appends token `id`'s bytes and returns the text completed by them
    /// (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.push_bytes(tokenizer.token_bytes(id))
    }

    /// Appends raw bytes and returns the text completed by them.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for more.
                        None => {
                            start += valid;
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whether bytes of an unfinished character are waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flushes the decoder: an unfinished character becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut d = StreamDecoder::new();
        let parts = chunks.iter().map(|c| d.push_bytes(c)).collect();
        (parts, d.finish())
    }

    #[test]
    fn holds_back_partial_characters() {
        let robot = "🤖".as_bytes();
        let (parts, rest) = stream(&[b"hi ", &robot[..2], &robot[2..3], &robot[3..], b"!"]);
        assert_eq!(parts, ["hi ", "", "", "🤖", "!"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn matches_lossy_decoding() {
        let inputs: [&[&[u8]]; 4] = [
            &[b"a\xff", b"b"],
            &[b"\xf0\x9f", b"x"],
            &[b"\xe6\x97", b"\xa5\xe6"],
            &[b"\xc3", b"\xa9\xc3\xa9\x80"],
        ];
        for chunks in inputs {
            let (parts, rest) = stream(chunks);
            let all: Vec<u8> = chunks.concat();
            assert_eq!(
                parts.concat() + &rest,
                String::from_utf8_lossy(&all),
                "{chunks:?}"
            );
        }
    }
}
