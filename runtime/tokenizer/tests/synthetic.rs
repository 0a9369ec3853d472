//! q35-tokenizer on small synthetic GGUF images: the metadata contract (each
//! bad input is a typed error naming its key) and the encode pipeline on a
//! vocabulary small enough to reason about by hand. No model file needed.

use q35_gguf::write::GgufWriter;
use q35_gguf::{Array, Gguf, GgufError, Value};
use q35_tokenizer::{TokenType, Tokenizer, TokenizerError};

/// GPT-2 code point of a byte (space -> 'Ġ', newline -> 'Ċ').
fn byte_char(b: u8) -> char {
    let direct = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if direct(b) {
        return char::from(b);
    }
    let idx = (0..b).filter(|&x| !direct(x)).count() as u32;
    char::from_u32(256 + idx).unwrap_or('?')
}

/// A tiny vocabulary: two control tokens, one user-defined token, all 256
/// byte tokens and a few merges.
fn tiny() -> GgufWriter {
    let mut tokens: Vec<String> = vec!["<|ctl|>".into(), "<|end|>".into(), "<ud>".into()];
    let mut types = vec![3i32, 3, 4];
    for b in 0..=255u8 {
        tokens.push(byte_char(b).to_string());
        types.push(1);
    }
    for t in [
        "he", "ll", "hell", "hello", "Ġw", "Ġwo", "Ġworld", "or", "ld",
    ] {
        tokens.push(t.into());
        types.push(1);
    }
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "o r", "l d", "Ġwo rld",
    ];
    let mut w = GgufWriter::new();
    w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .metadata("tokenizer.ggml.pre", Value::String("smollm".into()))
        .metadata("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .metadata("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .metadata(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(merges.iter().map(|s| (*s).into()).collect())),
        )
        .metadata("tokenizer.ggml.bos_token_id", Value::U32(0))
        .metadata("tokenizer.ggml.eos_token_id", Value::U32(1));
    w
}

fn build(w: &GgufWriter) -> Result<Tokenizer, TokenizerError> {
    let g = Gguf::from_bytes(w.to_bytes()).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&g)
}

/// `tiny()` with one metadata key replaced (or removed when `value` is None).
fn with(key: &str, value: Option<Value>) -> GgufWriter {
    let g = Gguf::from_bytes(tiny().to_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != key {
            w.metadata(k, v.clone());
        }
    }
    if let Some(v) = value {
        w.metadata(key, v);
    }
    w
}

fn id(tok: &Tokenizer, text: &str) -> u32 {
    tok.token_id(text)
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

#[test]
fn encodes_with_merges_and_bytes() {
    let tok = build(&tiny()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.vocab_size(), 3 + 256 + 9);
    let got = tok.encode("hello world!", false);
    // "Ġwo" + "rld" has no token, so "Ġwo rld" is never reached: " world"
    // becomes Ġwo, r, ld.
    assert_eq!(
        got,
        [
            id(&tok, "hello"),
            id(&tok, "Ġwo"),
            id(&tok, "r"),
            id(&tok, "ld"),
            id(&tok, "!")
        ]
    );
    assert_eq!(tok.decode(&got), "hello world!");
    // Non-ASCII text falls to byte tokens and decodes back.
    let ids = tok.encode("é 日", false);
    assert_eq!(ids.len(), 2 + 1 + 3);
    assert_eq!(tok.decode(&ids), "é 日");
    assert_eq!(tok.token_bytes(id(&tok, "Ġw")), b" w");
    assert_eq!(tok.token_bytes(u32::MAX), b"");
}

#[test]
fn special_and_user_defined_tokens() {
    let tok = build(&tiny()).unwrap_or_else(|e| panic!("{e}"));
    let text = "<|ctl|>he<ud>";
    assert_eq!(tok.encode(text, true), [0, id(&tok, "he"), 2]);
    // Without parse_special the control token is text; <ud> still splits.
    let plain = tok.encode(text, false);
    assert_eq!(plain.last(), Some(&2));
    assert!(!plain.contains(&0));
    assert_eq!(tok.decode(&plain), text);
    assert!(tok.is_control(0) && tok.is_control(1) && !tok.is_control(2));
    assert_eq!(tok.token_type(2), Some(TokenType::UserDefined));
    assert_eq!(tok.token_bytes(0), b"<|ctl|>");
    assert_eq!(
        (tok.bos(), tok.eos(), tok.unk(), tok.pad()),
        (0, 1, None, None)
    );
    assert!(!tok.add_bos_token());
}

#[test]
fn rejects_other_models_and_pre_tokenizers() {
    let e = build(&with(
        "tokenizer.ggml.model",
        Some(Value::String("llama".into())),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::UnsupportedModel { key, value })
            if *key == "tokenizer.ggml.model" && value == "llama"),
        "{e:?}"
    );
    let e = build(&with(
        "tokenizer.ggml.pre",
        Some(Value::String("llama-bpe".into())),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::UnsupportedPre { key, value })
            if *key == "tokenizer.ggml.pre" && value == "llama-bpe"),
        "{e:?}"
    );
    let msg = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("tokenizer.ggml.pre") && msg.contains("llama-bpe"),
        "{msg}"
    );
}

#[test]
fn missing_and_mistyped_keys_are_named() {
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        let e = build(&with(key, None)).err();
        assert!(
            matches!(&e, Some(TokenizerError::Gguf(GgufError::MissingKey { key: k, .. })) if k == key),
            "{key}: {e:?}"
        );
    }
    let e = build(&with(
        "tokenizer.ggml.tokens",
        Some(Value::Array(Array::U32(vec![1]))),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::ArrayType { key, found: "u32", .. }) if *key == "tokenizer.ggml.tokens"),
        "{e:?}"
    );
    let e = build(&with(
        "tokenizer.ggml.tokens",
        Some(Value::String("x".into())),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::Gguf(GgufError::WrongType { .. }))),
        "{e:?}"
    );
    let e = build(&with(
        "tokenizer.ggml.tokens",
        Some(Value::Array(Array::String(vec![]))),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::EmptyVocab { .. })),
        "{e:?}"
    );
    let e = build(&with(
        "tokenizer.ggml.token_type",
        Some(Value::Array(Array::I32(vec![1; 5]))),
    ))
    .err();
    assert!(
        matches!(
            &e,
            Some(TokenizerError::Length {
                len: 5,
                vocab_size: 268,
                ..
            })
        ),
        "{e:?}"
    );
    let e = build(&with(
        "tokenizer.ggml.bos_token_id",
        Some(Value::U32(100_000)),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::IdOutOfRange { key, id: 100_000, .. }) if *key == "tokenizer.ggml.bos_token_id"),
        "{e:?}"
    );
    let e = build(&with(
        "tokenizer.ggml.padding_token_id",
        Some(Value::I32(-1)),
    ))
    .err();
    assert!(
        matches!(&e, Some(TokenizerError::Gguf(GgufError::WrongType { .. }))),
        "{e:?}"
    );
    let e = build(&with("tokenizer.chat_template", Some(Value::U8(1)))).err();
    assert!(
        matches!(&e, Some(TokenizerError::Gguf(GgufError::WrongType { .. }))),
        "{e:?}"
    );
}

#[test]
fn token_types_default_to_normal() {
    let tok = build(&with("tokenizer.ggml.token_type", None)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!tok.is_control(0));
    // No special tokens: the control text is ordinary text now.
    assert_ne!(tok.encode("<|ctl|>", true), [0]);
}

#[test]
fn chat_template_errors() {
    let tok = build(&tiny()).unwrap_or_else(|e| panic!("{e}"));
    assert!(tok.chat_template().is_none());
    assert!(matches!(
        tok.apply_chat_template(&[("user", "hi")], true),
        Err(TokenizerError::NoChatTemplate)
    ));
    // Python string methods are not part of the supported Jinja subset.
    let w = with(
        "tokenizer.chat_template",
        Some(Value::String("{{ messages[0]['content'].strip() }}".into())),
    );
    let tok = build(&w).unwrap_or_else(|e| panic!("{e}"));
    let e = tok.apply_chat_template(&[("user", " hi ")], false).err();
    assert!(matches!(&e, Some(TokenizerError::ChatTemplate(_))), "{e:?}");
    assert!(e.is_some_and(|e| e.to_string().contains("tokenizer.chat_template")));
    // A template that raises.
    let w = with(
        "tokenizer.chat_template",
        Some(Value::String(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok".into(),
        )),
    );
    let tok = build(&w).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tok.apply_chat_template(&[("user", "x")], false)
            .ok()
            .as_deref(),
        Some("ok")
    );
    let e = tok.apply_chat_template(&[("system", "x")], false).err();
    assert!(e.is_some_and(|e| e.to_string().contains("first must be user")));
}

#[test]
fn debug_is_a_summary() {
    let tok = build(&tiny()).unwrap_or_else(|e| panic!("{e}"));
    let d = format!("{tok:?}");
    assert!(d.contains("vocab_size: 268") && d.len() < 300, "{d}");
}

#[test]
fn tokenizer_gguf_keeps_only_the_tokenizer_and_prompts_are_shared() {
    let mut w = with(
        "tokenizer.chat_template",
        Some(Value::String(
            "{% for m in messages %}<|ctl|>{{ m.role }}:{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|ctl|>assistant:{% endif %}"
                .into(),
        )),
    );
    w.metadata("general.name", Value::String("tiny".into()))
        .metadata("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .tensor_f32("token_embd.weight", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let full = Gguf::from_bytes(w.to_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let small =
        Gguf::from_bytes(Tokenizer::tokenizer_gguf(&full)).unwrap_or_else(|e| panic!("{e}"));
    assert!(small.tensors().is_empty());
    assert!(small.get("general.name").is_none());
    assert!(
        small
            .metadata()
            .iter()
            .all(|(k, _)| k.starts_with("tokenizer."))
    );
    let a = Tokenizer::from_gguf(&full).unwrap_or_else(|e| panic!("{e}"));
    let mut b = Tokenizer::from_gguf(&small).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        a.encode_with_bos("hello world"),
        b.encode_with_bos("hello world")
    );
    assert_eq!(a.encode_with_bos("hello")[0], 0, "BOS first");
    let (text, ids) = b
        .chat_prompt(Some("be brief"), "hello")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        text,
        "<|ctl|>system:be brief<|end|><|ctl|>user:hello<|end|><|ctl|>assistant:"
    );
    assert_eq!(ids[0], 0, "<|ctl|> parsed as a special token");
    assert_eq!(
        a.chat_prompt(Some("be brief"), "hello").ok(),
        Some((text, ids))
    );
    b.set_chat_template(None);
    assert!(matches!(
        b.chat_prompt(None, "x"),
        Err(TokenizerError::NoChatTemplate)
    ));
}
