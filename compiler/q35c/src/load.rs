//! Loading shared by the commands that run a model (`run`, `eval`,
//! `quant-report`): the model description, its reference model and
//! tokenizer, text files, text turned into tokens, and progress reports.

use std::path::Path;

use anyhow::Context;
use q35_reference::Model;
use q35_tokenizer::Tokenizer;

/// A model loaded from a model.toml for the reference, with its tokenizer
/// when the weights come from a GGUF.
pub(crate) struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    pub name: String,
    pub quant: q35_model::QuantConfig,
}

impl Loaded {
    /// Tokens of `text` for scoring or calibration: with a tokenizer, as
    /// llama.cpp's perplexity tokenizes (BOS first when the model adds BOS);
    /// without one (synthetic weights), the text's bytes folded into the
    /// vocabulary.
    pub fn text_tokens(&self, text: &str) -> Vec<u32> {
        match &self.tokenizer {
            Some(t) => t.encode_with_bos(text),
            None => {
                let vocab = self.model.config().vocab as u32;
                text.bytes().map(|b| u32::from(b) % vocab).collect()
            }
        }
    }

    /// The BOS token llama-perplexity puts at the start of every window
    /// (`None` when the model adds no BOS or has no tokenizer).
    pub fn window_bos(&self) -> Option<u32> {
        let t = self.tokenizer.as_ref()?;
        t.add_bos_token().then(|| t.bos())
    }
}

/// Loads the model description, its weights and tokenizer.
pub(crate) fn load(path: &Path, threads: usize) -> anyhow::Result<Loaded> {
    let spec = q35_model::load(path)
        .with_context(|| format!("cannot load model description {}", path.display()))?;
    let gguf = spec
        .open_gguf()
        .with_context(|| format!("cannot open the weights of {}", path.display()))?;
    let mut model = Model::from_spec(&spec, gguf.as_ref())
        .with_context(|| format!("cannot build the reference model of {}", path.display()))?;
    model.set_threads(threads)?;
    let tokenizer = match &gguf {
        Some(g) => Some(
            Tokenizer::from_gguf(g)
                .with_context(|| format!("cannot read the tokenizer of {}", path.display()))?,
        ),
        None => None,
    };
    Ok(Loaded {
        model,
        tokenizer,
        name: spec.name,
        quant: spec.quant,
    })
}

/// Reads a UTF-8 text file, naming the file and the first bad byte on error.
pub(crate) fn read_utf8(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reports a stage of long work on stderr, when stderr is a terminal (so
/// progress never mixes into redirected output or test transcripts).
pub fn progress(message: impl std::fmt::Display) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!("{message}");
    }
}
