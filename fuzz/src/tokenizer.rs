//! The prompt door: SmolLM2's real tokenizer encoding arbitrary text,
//! decoding arbitrary ids, and rendering its chat template around hostile
//! messages.

use std::path::PathBuf;
use std::sync::OnceLock;

use q35_gguf::Gguf;
use q35_tokenizer::{StreamDecoder, Tokenizer};

use crate::message;

/// SmolLM2's tokenizer, from `$Q35_SMOLLM2_GGUF` or the workspace cache
/// (`.cache/models/`, fetched by scripts/setup). `None` when the file is
/// missing and `Q35_SKIP_MODEL_TESTS=1`; a missing file otherwise panics,
/// as every test that needs the model does (CI always has it).
pub fn smollm2() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = std::env::var_os("Q35_SMOLLM2_GGUF").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            },
            PathBuf::from,
        );
        if !path.exists() && std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
            return None;
        }
        let gguf = Gguf::open(&path).unwrap_or_else(|e| {
            panic!("{e} (run scripts/setup, set Q35_SMOLLM2_GGUF, or Q35_SKIP_MODEL_TESTS=1)")
        });
        Some(Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}")))
    })
    .as_ref()
}

/// Whether byte `b` has a token of its own in SmolLM2's vocabulary. Like
/// llama.cpp, the tokenizer drops a byte it cannot tokenize (SmolLM2 lacks
/// tokens for a few control bytes, such as 0x04).
fn byte_has_token(tok: &Tokenizer, b: u8) -> bool {
    static BYTES: OnceLock<[bool; 256]> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut has = [false; 256];
        for id in 0..tok.vocab_size() as u32 {
            if let [b] = tok.token_bytes(id) {
                has[usize::from(*b)] = true;
            }
        }
        has
    })[usize::from(b)]
}

/// Asserts the bytes of `ids`' pieces are `text`'s, except for bytes
/// without a token of their own, which may be missing; nothing may be added
/// or moved. (Compared as bytes: a dropped byte can leave invalid UTF-8,
/// which `decode` shows as U+FFFD.)
fn round_trips(tok: &Tokenizer, text: &str, ids: &[u32], parse_special: bool) {
    let pieces: Vec<u8> = ids
        .iter()
        .flat_map(|&id| tok.token_bytes(id))
        .copied()
        .collect();
    if pieces == text.as_bytes() {
        assert_eq!(tok.decode(ids), text);
        return;
    }
    let mut rest = pieces.iter().peekable();
    for &b in text.as_bytes() {
        if rest.peek() == Some(&&b) {
            rest.next();
        } else {
            assert!(
                !byte_has_token(tok, b),
                "byte {b:#04x} lost (parse_special = {parse_special}): {text:?} -> {pieces:?}"
            );
        }
    }
    assert!(
        rest.next().is_none(),
        "bytes added (parse_special = {parse_special}): {text:?} -> {pieces:?}"
    );
}

/// Encodes `data` (as UTF-8, invalid sequences replaced) with and without
/// special-token parsing. Every id is in the vocabulary, no token is empty
/// (at most one id per byte), and decoding gives the text back: exactly,
/// except for bytes without a token of their own, which llama.cpp (and so
/// q35) drops. Returns whether the tokenizer was there to run.
pub fn tokenizer_encode(data: &[u8]) -> bool {
    let Some(tok) = smollm2() else {
        return false;
    };
    let text = String::from_utf8_lossy(data);
    for parse_special in [false, true] {
        let ids = tok.encode(&text, parse_special);
        assert!(ids.len() <= text.len(), "more tokens than bytes");
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        round_trips(tok, &text, &ids, parse_special);
    }
    true
}

/// Decodes `data` as little-endian u32 ids (any value, in the vocabulary or
/// not). Streaming the ids one at a time gives exactly the text `decode`
/// gives; ids outside the vocabulary have empty pieces. Returns whether the
/// tokenizer was there to run.
pub fn tokenizer_decode(data: &[u8]) -> bool {
    let Some(tok) = smollm2() else {
        return false;
    };
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let whole = tok.decode(&ids);
    let mut stream = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        if id as usize >= tok.vocab_size() {
            assert!(tok.token_bytes(id).is_empty());
            assert!(tok.token_text(id).is_none());
        }
        streamed.push_str(&stream.push(tok, id));
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, whole, "streamed decoding differs from decode");
    true
}

/// Renders SmolLM2's chat template around messages taken from `data`:
/// NUL-separated fields, alternately role and content, any bytes (invalid
/// UTF-8 replaced); the first byte's low bit asks for the generation
/// prompt. The template renders every message's content verbatim or fails
/// with a typed error; the result encodes with special tokens parsed and
/// decodes back (untokenizable bytes aside).
/// Returns whether the template rendered.
pub fn chat_template(data: &[u8]) -> bool {
    let Some(tok) = smollm2() else {
        return false;
    };
    let Some((&flags, rest)) = data.split_first() else {
        return false;
    };
    let text = String::from_utf8_lossy(rest);
    let fields: Vec<&str> = text.split('\0').collect();
    let messages: Vec<(&str, &str)> = fields
        .chunks(2)
        .map(|m| (m[0], m.get(1).copied().unwrap_or("")))
        .collect();
    match tok.apply_chat_template(&messages, flags & 1 == 1) {
        Ok(rendered) => {
            for (role, content) in &messages {
                assert!(
                    rendered.contains(content),
                    "content of a `{role}` message lost"
                );
            }
            let ids = tok.encode(&rendered, true);
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            round_trips(tok, &rendered, &ids, true);
            true
        }
        Err(e) => {
            message(&e);
            false
        }
    }
}
