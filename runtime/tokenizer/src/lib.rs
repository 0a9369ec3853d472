//! GPT-2 style byte-level BPE tokenizer built from GGUF metadata, matching llama.cpp.
//!
//! [`Tokenizer::from_gguf`] reads the vocabulary, token types, merges,
//! special-token ids and chat template that llama.cpp's converter stores in a
//! GGUF file, and [`Tokenizer::encode`] reproduces `llama_tokenize` token for
//! token. The pipeline, each stage a transcription of llama.cpp's
//! (`src/llama-vocab.cpp`, `src/unicode.cpp`):
//!
//! 1. `special`: cut the text at special-token texts (control tokens only
//!    when `parse_special`, user-defined tokens always), longest first.
//! 2. `pretokenize`: split each remaining fragment into words with the
//!    pre-tokenizer named by `tokenizer.ggml.pre` (only `smollm` is
//!    supported: digits isolated, then GPT-2's pattern).
//! 3. `bpe`: map each word's bytes to GPT-2's byte code points (`bytes`)
//!    and merge pairs by rank, lowest first, leftmost on ties.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gguf = q35_gguf::Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tok = q35_tokenizer::Tokenizer::from_gguf(&gguf)?;
//! let prompt = tok.apply_chat_template(&[("user", "Hi!")], true)?;
//! let ids = tok.encode(&prompt, true); // parse <|im_start|> etc.
//! assert_eq!(tok.decode(&ids), prompt);
//! # Ok(())
//! # }
//! ```
//!
//! # Why hand-written and not the `tokenizers` crate
//!
//! Hugging Face's `tokenizers` crate was considered first. It was not chosen
//! because the reference is llama.cpp, not Hugging Face, and what must be
//! exact is llama.cpp's behaviour: its sequential application of the
//! pre-tokenizer regexes, its hand-written GPT-2 matcher (not a regex engine),
//! its special-token partition (user-defined tokens split even without
//! `parse_special`; control tokens tokenized as plain text otherwise, where
//! `tokenizers` always splits added tokens unless told otherwise), its
//! byte fallback for symbols missing from the vocabulary and its GGUF
//! token-type semantics. Reproducing those on top of `tokenizers` would mean
//! building its BPE model and pre-tokenizer pipeline from GGUF arrays and
//! then overriding its added-token handling, while pulling in its dependency
//! tree (rayon, serde_json, onig or fancy-regex, esaxx, spm_precompiled,
//! derive_builder, ...). The algorithm itself is a few hundred lines; written
//! out, each stage can be read against llama.cpp line by line, and it needs
//! no regex engine at all (the look-ahead `(?!\S)` is part of the transcribed
//! matcher). Unicode classes come from `regex-syntax`'s tables. The recorded
//! llama.cpp outputs in `tests/fixtures/` hold the result to it.

mod bpe;
mod bytes;
mod chat;
mod pretokenize;
mod special;
mod stream;
mod unicode;

use std::collections::HashMap;

use q35_gguf::{Array, Gguf, GgufError};

use crate::bpe::{Bpe, Scratch};
use crate::bytes::ByteMap;
use crate::special::{Fragment, SpecialToken, partition, sort_special};
pub use crate::stream::StreamDecoder;

/// Metadata key: the tokenizer model (must be `gpt2`).
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
/// Metadata key: the pre-tokenizer (must be `smollm`).
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
/// Metadata key: the vocabulary strings.
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
/// Metadata key: the token types (llama.cpp's `llama_token_type`).
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// Metadata key: the BPE merges, highest priority first.
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
/// Metadata key: beginning-of-sequence token id.
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
/// Metadata key: end-of-sequence token id.
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
/// Metadata key: unknown token id (optional).
pub const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
/// Metadata key: padding token id (optional).
pub const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
/// Metadata key: whether a BOS token is added when encoding (optional).
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// Metadata key: the Jinja chat template (optional).
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// Everything that can go wrong building a tokenizer or applying a chat
/// template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or has the wrong type (the GGUF reader's
    /// error names file and key).
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer model is not a GPT-2 byte-level BPE.
    #[error("metadata key `{key}` is `{value}`: only `gpt2` (byte-level BPE) is supported")]
    UnsupportedModel { key: &'static str, value: String },
    /// The pre-tokenizer is not one this crate reproduces.
    #[error("metadata key `{key}` is `{value}`: only the `smollm` pre-tokenizer is supported")]
    UnsupportedPre { key: &'static str, value: String },
    /// An array of the wrong element type.
    #[error("metadata key `{key}` should be an array of {expected}, found an array of {found}")]
    ArrayType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// The vocabulary is empty.
    #[error("metadata key `{key}` holds no tokens")]
    EmptyVocab { key: &'static str },
    /// An array whose length disagrees with the vocabulary.
    #[error("metadata key `{key}` has {len} entries but the vocabulary has {vocab_size} tokens")]
    Length {
        key: &'static str,
        len: usize,
        vocab_size: usize,
    },
    /// A token id (or token type value) out of range.
    #[error("metadata key `{key}` is {id}, outside the vocabulary of {vocab_size} tokens")]
    IdOutOfRange {
        key: &'static str,
        id: u64,
        vocab_size: usize,
    },
    /// [`Tokenizer::apply_chat_template`] on a model without a template.
    #[error("the model has no chat template (metadata key `{KEY_CHAT_TEMPLATE}` is absent)")]
    NoChatTemplate,
    /// The chat template failed to parse or render (unsupported syntax or
    /// functions, or the template rejected the messages).
    #[error("chat template (`{KEY_CHAT_TEMPLATE}`) failed: {0}")]
    ChatTemplate(String),
}

/// llama.cpp's token types (`llama_token_type`, stored in
/// `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// 1: an ordinary vocabulary entry, text in GPT-2 byte code points.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token such as `<|im_start|>`.
    Control,
    /// 4: a user-defined token, always matched literally in text.
    UserDefined,
    /// 5: an unused slot.
    Unused,
    /// 6: a raw byte token.
    Byte,
    /// 0 or any other value: undefined.
    Undefined,
}

impl TokenType {
    fn from_raw(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// A byte-level BPE tokenizer equal to llama.cpp's for the supported
/// pre-tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    token_to_id: HashMap<String, u32>,
    /// Decoded bytes of every token, concatenated; token `i` is
    /// `piece_bytes[piece_start[i]..piece_start[i + 1]]`.
    piece_bytes: Vec<u8>,
    piece_start: Vec<usize>,
    bpe: Bpe,
    specials: Vec<SpecialToken>,
    bos: u32,
    eos: u32,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    // A summary: the derived form would print the whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("special_tokens", &self.specials.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("unk", &self.unk)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

/// The elements of a string array, or a typed error naming the key.
fn string_array<'a>(gguf: &'a Gguf, key: &'static str) -> Result<&'a [String], TokenizerError> {
    match gguf.get_array(key)? {
        Array::String(v) => Ok(v),
        other => Err(TokenizerError::ArrayType {
            key,
            expected: "strings",
            found: other.element_type_name(),
        }),
    }
}

/// The elements of an integer array, widened to i64.
fn int_array(gguf: &Gguf, key: &'static str) -> Result<Vec<i64>, TokenizerError> {
    let a = gguf.get_array(key)?;
    let v: Vec<i64> = match a {
        Array::I8(v) => v.iter().map(|&x| x.into()).collect(),
        Array::U8(v) => v.iter().map(|&x| x.into()).collect(),
        Array::I16(v) => v.iter().map(|&x| x.into()).collect(),
        Array::U16(v) => v.iter().map(|&x| x.into()).collect(),
        Array::I32(v) => v.iter().map(|&x| x.into()).collect(),
        Array::U32(v) => v.iter().map(|&x| x.into()).collect(),
        Array::I64(v) => v.clone(),
        Array::U64(v) => v.iter().map(|&x| i64::try_from(x).unwrap_or(-1)).collect(),
        other => {
            return Err(TokenizerError::ArrayType {
                key,
                expected: "integers",
                found: other.element_type_name(),
            });
        }
    };
    Ok(v)
}

/// A token id stored under `key`, checked against the vocabulary size.
fn token_id(gguf: &Gguf, key: &'static str, vocab_size: usize) -> Result<u32, TokenizerError> {
    let id = gguf.get_u64(key)?;
    match u32::try_from(id) {
        Ok(v) if (v as usize) < vocab_size => Ok(v),
        _ => Err(TokenizerError::IdOutOfRange {
            key,
            id,
            vocab_size,
        }),
    }
}

/// An optional token id: absent is `None`, present must be valid.
fn optional_token_id(
    gguf: &Gguf,
    key: &'static str,
    vocab_size: usize,
) -> Result<Option<u32>, TokenizerError> {
    if gguf.get(key).is_none() {
        return Ok(None);
    }
    token_id(gguf, key, vocab_size).map(Some)
}

/// llama.cpp's `token_to_piece` (with `special = true`) for one token:
/// normal tokens are decoded from GPT-2 byte code points; control, unknown
/// and user-defined tokens render their text; byte tokens their byte; unused
/// and undefined tokens nothing.
fn piece(byte_map: &ByteMap, text: &str, ty: TokenType, out: &mut Vec<u8>) {
    match ty {
        TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
            out.extend_from_slice(text.as_bytes());
        }
        TokenType::Normal => {
            // llama.cpp's `llama_decode_text`, including its marker for a
            // code point outside the byte map (never present in a
            // well-formed vocabulary).
            let mut buf = [0u8; 4];
            for c in text.chars() {
                match byte_map.byte_of(c) {
                    Some(b) => out.push(b),
                    None => {
                        out.extend_from_slice(b"[UNK_BYTE_0x");
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                        out.extend_from_slice(text.as_bytes());
                        out.push(b']');
                    }
                }
            }
        }
        TokenType::Byte => byte_map.decode_token(text, out),
        TokenType::Unused | TokenType::Undefined => {}
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.*` metadata.
    ///
    /// Requires `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.pre =
    /// "smollm"`, the token and merge arrays and the BOS/EOS ids; the token
    /// types (default: all normal, as llama.cpp), unknown/padding ids,
    /// `add_bos_token` and the chat template are optional.
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = gguf.get_str(KEY_MODEL)?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                key: KEY_MODEL,
                value: model.to_owned(),
            });
        }
        let pre = gguf.get_str(KEY_PRE)?;
        if pre != "smollm" {
            return Err(TokenizerError::UnsupportedPre {
                key: KEY_PRE,
                value: pre.to_owned(),
            });
        }

        let raw_tokens = string_array(gguf, KEY_TOKENS)?;
        let n = raw_tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab { key: KEY_TOKENS });
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::IdOutOfRange {
                key: KEY_TOKENS,
                id: n as u64,
                vocab_size: u32::MAX as usize,
            });
        }
        // llama.cpp renames empty entries so they can never match text.
        let tokens: Vec<String> = raw_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();

        let types = if gguf.get(KEY_TOKEN_TYPE).is_some() {
            let raw = int_array(gguf, KEY_TOKEN_TYPE)?;
            if raw.len() != n {
                return Err(TokenizerError::Length {
                    key: KEY_TOKEN_TYPE,
                    len: raw.len(),
                    vocab_size: n,
                });
            }
            raw.into_iter().map(TokenType::from_raw).collect()
        } else {
            vec![TokenType::Normal; n]
        };

        // Later duplicates win, as in llama.cpp's `token_to_id[word] = i`.
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        let byte_map = ByteMap::new();
        let merges = string_array(gguf, KEY_MERGES)?;
        let bpe = Bpe::new(merges.iter().map(String::as_str), &byte_map, |s| {
            token_to_id.get(s).copied()
        });

        let mut piece_bytes = Vec::new();
        let mut piece_start = Vec::with_capacity(n + 1);
        for (t, &ty) in tokens.iter().zip(&types) {
            piece_start.push(piece_bytes.len());
            piece(&byte_map, t, ty, &mut piece_bytes);
        }
        piece_start.push(piece_bytes.len());

        let mut specials: Vec<SpecialToken> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, ty))| {
                matches!(
                    ty,
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                )
            })
            .map(|(i, (t, ty))| SpecialToken {
                id: i as u32,
                text: t.clone(),
                always: *ty == TokenType::UserDefined,
            })
            .collect();
        sort_special(&mut specials);

        let bos = token_id(gguf, KEY_BOS, n)?;
        let eos = token_id(gguf, KEY_EOS, n)?;
        let unk = optional_token_id(gguf, KEY_UNK, n)?;
        let pad = optional_token_id(gguf, KEY_PAD, n)?;
        let add_bos = match gguf.get(KEY_ADD_BOS) {
            None => false,
            Some(_) => gguf.get_bool(KEY_ADD_BOS)?,
        };
        let chat_template = match gguf.get(KEY_CHAT_TEMPLATE) {
            None => None,
            Some(_) => Some(gguf.get_str(KEY_CHAT_TEMPLATE)?.to_owned()),
        };

        Ok(Tokenizer {
            tokens,
            types,
            token_to_id,
            piece_bytes,
            piece_start,
            bpe,
            specials,
            bos,
            eos,
            unk,
            pad,
            add_bos,
            chat_template,
        })
    }

    /// Tokenizes `text` exactly as llama.cpp's `llama_tokenize(...,
    /// add_special = false, parse_special)`. No BOS is added (see
    /// [`Tokenizer::add_bos_token`]). With `parse_special`, control tokens
    /// such as `<|im_start|>` written in the text become their ids;
    /// without it they are tokenized as ordinary text. User-defined tokens
    /// are recognised either way.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut words = Vec::new();
        let mut scratch = Scratch::default();
        let token_of = |s: &str| self.token_to_id.get(s).copied();
        for frag in partition(text, &self.specials, parse_special) {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(r) => {
                    let t = &text[r];
                    words.clear();
                    pretokenize::split_smollm(t, &mut words);
                    for w in &words {
                        self.bpe.encode_word(
                            t[w.clone()].as_bytes(),
                            token_of,
                            &mut scratch,
                            &mut out,
                        );
                    }
                }
            }
        }
        out
    }

    /// The bytes token `id` stands for: llama.cpp's `token_to_piece` with
    /// `special = true` (control tokens render as their text). Concatenating
    /// pieces of consecutive tokens gives the text's bytes; one token's
    /// piece can be part of a multi-byte UTF-8 character, so a streaming
    /// printer should buffer until the bytes are valid UTF-8 (see
    /// [`StreamDecoder`]). An id outside
    /// the vocabulary has an empty piece.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.piece_start.get(i), self.piece_start.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.piece_bytes[a..b],
            _ => &[],
        }
    }

    /// Decodes tokens to text (llama.cpp's `detokenize` with
    /// `unparse_special = true`, no special-token removal). Invalid UTF-8,
    /// as from a sequence cut inside a character, becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The beginning-of-sequence token id.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// The end-of-sequence token id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The unknown token id, if the model names one.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// The padding token id, if the model names one.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the model asks for a BOS token before a prompt
    /// (`tokenizer.ggml.add_bos_token`, default false). [`Tokenizer::encode`]
    /// never adds one; a caller that wants it prepends [`Tokenizer::bos`].
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The chat template string, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether `id` is a control token (`<|im_start|>`, `<|endoftext|>`...).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The vocabulary string of token `id` (GPT-2 byte code points for
    /// normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary string is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// `text` encoded as a plain prompt: BOS first when the model adds BOS
    /// ([`Self::add_bos_token`]), then the text without special-token
    /// parsing (what `q35c run` and llama.cpp's perplexity feed).
    pub fn encode_with_bos(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.push(self.bos);
        }
        ids.extend(self.encode(text, false));
        ids
    }

    /// A chat prompt: `user` as the user's message (after an optional
    /// `system` message) rendered with the chat template and the
    /// assistant's turn header, then encoded with special tokens parsed.
    /// Returns the rendered text and its tokens (what `q35c run --chat`
    /// and `q35sim run --chat` feed).
    pub fn chat_prompt(
        &self,
        system: Option<&str>,
        user: &str,
    ) -> Result<(String, Vec<u32>), TokenizerError> {
        let mut messages: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = system {
            messages.push(("system", s));
        }
        messages.push(("user", user));
        let rendered = self.apply_chat_template(&messages, true)?;
        let ids = self.encode(&rendered, true);
        Ok((rendered, ids))
    }

    /// Replaces the chat template (`None` removes it), e.g. with the one a
    /// compiled program's metadata records.
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// A GGUF holding only `gguf`'s tokenizer metadata (every `tokenizer.*`
    /// key, in the file's order, and no tensors): what a compiled program
    /// carries so that [`Tokenizer::from_gguf`] rebuilds this tokenizer.
    pub fn tokenizer_gguf(gguf: &Gguf) -> Vec<u8> {
        let mut w = q35_gguf::write::GgufWriter::new();
        for (key, value) in gguf.metadata() {
            if key.starts_with("tokenizer.") {
                w.metadata(key, value.clone());
            }
        }
        w.to_bytes()
    }

    /// Renders the model's chat template for `messages` (role, content),
    /// optionally ending with the assistant's turn header. For SmolLM2 this
    /// is ChatML, `<|im_start|>{role}\n{content}<|im_end|>\n` per message,
    /// preceded by the template's default system message when the first
    /// message is not a system message. See the `chat` module docs for the
    /// template engine and what it supports; the result is meant to be
    /// encoded with `parse_special = true`.
    pub fn apply_chat_template(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let text_of = |id: u32| self.token_text(id).unwrap_or("");
        chat::render(
            template,
            messages,
            add_generation_prompt,
            text_of(self.bos),
            text_of(self.eos),
        )
        .map_err(|e| TokenizerError::ChatTemplate(format!("{e:#}")))
    }
}
