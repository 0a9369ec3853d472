//! q35-tokenizer against llama.cpp on the real SmolLM2 vocabulary.
//!
//! Expected ids come from `tests/fixtures/llamacpp_tokenize.json`, recorded
//! from llama.cpp by `scripts/reference/tokenize_ref.py` (re-run it to
//! refresh). Tests need the model GGUF; see `common::smollm2`.

mod common;

use std::sync::OnceLock;

use serde_json::Value;

struct Case {
    text: String,
    plain: Vec<u32>,
    special: Vec<u32>,
}

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let raw = include_str!("fixtures/llamacpp_tokenize.json");
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("fixture: {e}"))
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("fixture: expected an id array, got {v}"))
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(u32::MAX)
        })
        .collect()
}

fn cases() -> Vec<Case> {
    fixture()["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("fixture: no cases"))
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap_or_default().to_owned(),
            plain: ids(&c["plain"]),
            special: ids(&c["special"]),
        })
        .collect()
}

/// Asserts the recorded llama.cpp ids for the fixture case with this text.
fn check(text: &str) {
    let Some(tok) = common::smollm2() else { return };
    let case = cases()
        .into_iter()
        .find(|c| c.text == text)
        .unwrap_or_else(|| panic!("no fixture case for {text:?}; re-run tokenize_ref.py"));
    assert_eq!(
        tok.encode(text, false),
        case.plain,
        "parse_special=false: {text:?}"
    );
    assert_eq!(
        tok.encode(text, true),
        case.special,
        "parse_special=true: {text:?}"
    );
}

#[test]
fn quantization_md_test_vector() {
    let Some(tok) = common::smollm2() else { return };
    let text = "Once upon a time, there was a little robot who";
    let expect = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 617];
    assert_eq!(tok.encode(text, false), expect);
    assert_eq!(tok.encode(text, true), expect);
    check(text);
}

#[test]
fn model_facts() {
    let Some(tok) = common::smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(
        tok.vocab_size() as u64,
        fixture()["n_vocab"].as_u64().unwrap_or(0)
    );
    assert_eq!((tok.bos(), tok.eos()), (1, 2));
    assert_eq!(u64::from(tok.bos()), fixture()["bos"].as_u64().unwrap_or(0));
    assert_eq!(u64::from(tok.eos()), fixture()["eos"].as_u64().unwrap_or(0));
    assert_eq!((tok.unk(), tok.pad()), (Some(0), Some(2)));
    assert!(!tok.add_bos_token());
    assert!(tok.is_control(1) && tok.is_control(2) && tok.is_control(16));
    assert!(!tok.is_control(17) && !tok.is_control(6403));
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert!(
        tok.chat_template()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
}

#[test]
fn digits() {
    check("12345 and 3.14159");
    check("In 2024, 1,000,000 people paid $3.50 (or 4.99€) at 10:30pm.");
    check("x² + y³ = z½; ٣ ① Ⅻ");
}

#[test]
fn punctuation_and_contractions() {
    check("Hello, world! How's it going? I'm fine; you're great, we've won, they'll see, he'd go.");
    check("I'M DON'T 'tis 'Quoted' ''s");
    check("!!!???...,,,;;;:::---___***");
    check("https://example.com/path?query=1&b=two#frag");
}

#[test]
fn unicode() {
    check("naïve café 日本語 🤖");
    check("Crème brûlée, Straße, Ελληνικά, русский, עברית, العربية, हिन्दी, 한국어");
    check("emoji: 👍🏽 👨‍👩‍👧 🇫🇷 ✔️");
    check("e\u{301} combining vs é precomposed");
    check("\u{200b}\u{200d}\u{feff} zero-width");
}

#[test]
fn whitespace() {
    check(" ");
    check(" leading space");
    check("   three leading spaces");
    check("trailing spaces   ");
    check("multiple   spaces    inside");
    check("line one\nline two\n\nline four\n");
    check("tabs\tand\t\tmore tabs\t");
    check("windows\r\nline\r\nendings");
    check("mixed \t \n whitespace\u{b}\u{c}\u{85} runs\u{a0}nbsp\u{3000}ideographic");
    check("\n\n\n");
    check("    def f(x):\n        return x * 2  # comment\n");
}

#[test]
fn special_tokens() {
    check("<|im_start|>user\nhi<|im_end|>");
    check("text<|endoftext|>more");
    check("<|im_start|><|im_start|><|im_end|>");
    check("<|im_start");
    check("a<repo_name>b<file_sep>c<jupyter_code>d<empty_output>");
    let Some(tok) = common::smollm2() else { return };
    assert_eq!(
        tok.encode("<|im_start|>user\nhi<|im_end|>", true),
        [1, 4093, 198, 6004, 2]
    );
}

#[test]
fn empty_string() {
    check("");
    let Some(tok) = common::smollm2() else { return };
    assert!(tok.encode("", true).is_empty());
    assert_eq!(tok.decode(&[]), "");
}

/// Every recorded case (hand-picked, a 2.8 KB English text and 400
/// pseudo-random strings), both parse_special settings, with all
/// mismatches listed at once.
#[test]
fn all_fixture_cases() {
    let Some(tok) = common::smollm2() else { return };
    let cases = cases();
    assert!(cases.len() >= 400, "fixture has {} cases", cases.len());
    let mut bad = Vec::new();
    for c in &cases {
        for (special, want) in [(false, &c.plain), (true, &c.special)] {
            let got = tok.encode(&c.text, special);
            if &got != want {
                bad.push(format!(
                    "{:?} special={special}\n   got {got:?}\n  want {want:?}",
                    c.text
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Decoding llama.cpp's ids gives back the text.
#[test]
fn decode_recorded_ids() {
    let Some(tok) = common::smollm2() else { return };
    for c in cases() {
        assert_eq!(tok.decode(&c.plain), c.text);
        assert_eq!(tok.decode(&c.special), c.text);
    }
}

fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Every token's bytes equal llama.cpp's `token_to_piece(special = true)`.
#[test]
fn every_token_piece() {
    let Some(tok) = common::smollm2() else { return };
    let p = &fixture()["pieces"];
    let block = p["block"].as_u64().unwrap_or(0) as usize;
    let want: Vec<&str> = p["fnv1a64"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(block > 0 && want.len() == tok.vocab_size().div_ceil(block));
    for (bi, w) in want.iter().enumerate() {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for id in bi * block..((bi + 1) * block).min(tok.vocab_size()) {
            let piece = tok.token_bytes(id as u32);
            h = fnv1a64(h, &(piece.len() as u32).to_le_bytes());
            h = fnv1a64(h, piece);
        }
        assert_eq!(
            format!("{h:016x}"),
            *w,
            "token pieces {}..{}",
            bi * block,
            (bi + 1) * block
        );
    }
}

/// Chat template renderings equal llama-cpp-python's Jinja2 formatter, and
/// the rendered prompts tokenize as llama.cpp does.
#[test]
fn chat_template() {
    let Some(tok) = common::smollm2() else { return };
    let chats = fixture()["chat"].as_array().cloned().unwrap_or_default();
    assert!(chats.len() >= 8);
    for c in chats {
        let msgs: Vec<(String, String)> = c["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m[0].as_str().unwrap_or_default().to_owned(),
                            m[1].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let pairs: Vec<(&str, &str)> = msgs.iter().map(|(r, t)| (r.as_str(), t.as_str())).collect();
        let agp = c["add_generation_prompt"].as_bool().unwrap_or(false);
        let prompt = tok
            .apply_chat_template(&pairs, agp)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            prompt,
            c["prompt"].as_str().unwrap_or_default(),
            "{pairs:?} agp={agp}"
        );
        assert_eq!(tok.encode(&prompt, true), ids(&c["ids"]));
    }
}

/// Keep in sync with `codepoint_probe` in scripts/reference/tokenize_ref.py.
fn codepoint_probe(c: char) -> String {
    format!("a{c}a !{c}! 1{c}1  {c}\t{c}{c}")
}

/// Every Unicode scalar value, in a probe string that exposes its class
/// (letter, number, whitespace, other), tokenizes as in llama.cpp: the
/// Unicode tables agree wherever a difference could change tokens.
#[test]
fn every_codepoint_class() {
    let Some(tok) = common::smollm2() else { return };
    let p = &fixture()["codepoints"];
    let block = p["block"].as_u64().unwrap_or(0) as u32;
    let want: Vec<&str> = p["fnv1a64"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(block > 0 && want.len() as u32 == 0x11_0000 / block);
    let mut bad = Vec::new();
    for (bi, w) in want.iter().enumerate() {
        let start = bi as u32 * block;
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for c in (start..start + block).filter_map(char::from_u32) {
            let ids = tok.encode(&codepoint_probe(c), false);
            for t in ids.into_iter().chain([u32::MAX]) {
                h ^= u64::from(t);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        if format!("{h:016x}") != *w {
            bad.push(format!("U+{start:04X}..U+{:04X}", start + block));
        }
    }
    assert!(
        bad.is_empty(),
        "code point blocks differing from llama.cpp: {bad:?}"
    );
}
