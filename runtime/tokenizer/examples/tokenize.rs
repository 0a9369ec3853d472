//! Prints the token ids (and pieces) of a text: `tokenize <model.gguf> <text> [--special]`.

use q35_gguf::Gguf;
use q35_tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, text, rest @ ..] = args.as_slice() else {
        return Err("usage: tokenize <model.gguf> <text> [--special]".into());
    };
    let special = rest.iter().any(|a| a == "--special");
    let tok = Tokenizer::from_gguf(&Gguf::open(path)?)?;
    let ids = tok.encode(text, special);
    println!("{ids:?}");
    for id in ids {
        println!("{id:>6} {:?}", String::from_utf8_lossy(tok.token_bytes(id)));
    }
    Ok(())
}
