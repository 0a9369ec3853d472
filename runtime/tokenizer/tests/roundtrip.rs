//! Property: decoding the encoding of any string gives the string back
//! (byte-level BPE is lossless), with and without special-token parsing.

mod common;

use proptest::prelude::*;

/// Strings built from pieces that stress the pre-tokenizer and the
/// special-token splitter.
fn tricky() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        "Z",
        "é",
        "日本",
        "🤖",
        "\u{301}",
        "\u{200d}",
        "7",
        "²",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "'s",
        "'ll",
        "'",
        "!",
        "...",
        "<|im_start|>",
        "<|im_end|>",
        "<|im_",
        "|>",
        "<repo_name>",
        "\0",
    ]);
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_encode_is_identity(s in any::<String>()) {
        if let Some(tok) = common::smollm2() {
            prop_assert_eq!(tok.decode(&tok.encode(&s, false)), s.clone());
            prop_assert_eq!(tok.decode(&tok.encode(&s, true)), s);
        }
    }

    #[test]
    fn decode_encode_is_identity_tricky(s in tricky()) {
        if let Some(tok) = common::smollm2() {
            prop_assert_eq!(tok.decode(&tok.encode(&s, false)), s.clone());
            prop_assert_eq!(tok.decode(&tok.encode(&s, true)), s);
        }
    }

    /// Concatenated token pieces are the UTF-8 bytes of the text, token by
    /// token (the streaming view of `decode`).
    #[test]
    fn pieces_concatenate_to_bytes(s in tricky()) {
        if let Some(tok) = common::smollm2() {
            let bytes: Vec<u8> = tok
                .encode(&s, true)
                .iter()
                .flat_map(|&id| tok.token_bytes(id).iter().copied())
                .collect();
            prop_assert_eq!(bytes, s.as_bytes());
        }
    }
}

#[test]
fn decode_is_lossy_on_split_characters() {
    let Some(tok) = common::smollm2() else { return };
    let ids = tok.encode("🤖", false);
    assert!(
        ids.len() > 1,
        "emoji should be several byte tokens: {ids:?}"
    );
    assert_eq!(tok.decode(&ids[..1]), "\u{fffd}");
    assert_eq!(tok.decode(&ids), "🤖");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Streaming token by token yields exactly `decode`, for any token
    /// sequence (including ones that cut characters apart).
    #[test]
    fn stream_decoder_equals_decode(ids in prop::collection::vec(0u32..49_152, 0..40)) {
        if let Some(tok) = common::smollm2() {
            let mut d = q35_tokenizer::StreamDecoder::new();
            let mut text = String::new();
            for &id in &ids {
                text += &d.push(tok, id);
            }
            text += &d.finish();
            prop_assert_eq!(text, tok.decode(&ids));
        }
    }
}
