//! Writes the seed corpora under `fuzz/corpus/<target>/` from real files:
//! `cargo run -p q35-fuzz --example make_corpus -- [LPUASM_DIR...] [--model FILE.lpubin]`.
//!
//! - `gguf`: GGUF images written by q35-gguf's writer (the tiny model of the
//!   `model_toml` harness; one tensor of every type the
//!   reader dequantizes and one it only validates; a tokenizer-only file),
//!   and the first 16 KiB of the real SmolLM2 file (its header and the start
//!   of its vocabulary, truncated).
//! - `model_toml`: `examples/*.toml`, and descriptions naming the harness's
//!   `tiny.gguf` (matching and mismatching `[architecture]`).
//! - `tokenizer_encode`: every text of the llama.cpp tokenizer fixture;
//!   `tokenizer_decode`: llama.cpp's ids for a sample of them (u32 LE);
//!   `chat_template`: the fixture's chat conversations.
//! - `lpuasm`: the `.lpuasm` files in the directories given (the simulator's
//!   lit tests) and the example of docs/isa.md; `lpubin`: each of those that
//!   assembles for lpu-v1, written by `Program::to_lpubin`; `isa_decode`: the
//!   instruction words of those binaries; `isa_program` and `sim_program`:
//!   their first 2 KiB.
//! - `lpubin_system`: system files (docs/lpubin.md 8): two chips with a
//!   link transfer (chip 0 sends on its link 0, chip 1 receives on link 6),
//!   and the first eight `lpubin` seeds as the chips of one node.
//! - `lpubin_model` (with `--model FILE.lpubin`, a compiled model such as
//!   `q35c compile examples/tiny.toml --context 1`): that model without its
//!   debug map and most of its MEM image, with a tokenizer section.
//!
//! Existing files are overwritten; nothing else is removed.

use std::path::{Path, PathBuf};

use q35_gguf::write::GgufWriter;
use q35_gguf::{Array, GgmlType, Value, dequant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write corpus file");
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - n as f32 / 2.0) / 7.0).collect()
}

fn gguf_seeds() -> Vec<u8> {
    // Every dequantized type, and one (Q6_K) only validated.
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()));
    w.metadata("general.name", Value::String("fuzz".into()));
    w.metadata("general.flag", Value::Bool(true));
    w.metadata("general.i8", Value::I8(-3));
    w.metadata("general.f64", Value::F64(0.5));
    w.metadata(
        "general.nested",
        Value::Array(Array::Array(vec![Array::U16(vec![1, 2])])),
    );
    w.tensor_f32("f32", &[32, 2], &ramp(64));
    let f16: Vec<u8> = ramp(32)
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    w.tensor_raw("f16", &[32], GgmlType::F16, f16);
    w.tensor_raw(
        "q8_0",
        &[32, 2],
        GgmlType::Q8_0,
        dequant::quantize_q8_0(&ramp(64)),
    );
    w.tensor_raw(
        "q4_0",
        &[64],
        GgmlType::Q4_0,
        dequant::quantize_q4_0(&ramp(64)),
    );
    w.tensor_raw(
        "q4_1",
        &[32],
        GgmlType::Q4_1,
        dequant::quantize_q4_1(&ramp(32)),
    );
    w.tensor_raw("q6_k", &[256], GgmlType::Other(14), vec![0; 210]);
    put("gguf", "types.gguf", &w.to_bytes());

    // A tokenizer-only file: byte tokens for "ab", a merge, ChatML controls.
    let mut w = GgufWriter::new();
    let tokens = ["a", "b", "ab", "<|im_start|>", "<|im_end|>", "Ġ"];
    w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.metadata("tokenizer.ggml.pre", Value::String("smollm".into()));
    w.metadata(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(
            tokens.iter().map(|s| s.to_string()).collect(),
        )),
    );
    w.metadata(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(vec![1, 1, 1, 3, 3, 1])),
    );
    w.metadata(
        "tokenizer.ggml.merges",
        Value::Array(Array::String(vec!["a b".into()])),
    );
    w.metadata("tokenizer.ggml.bos_token_id", Value::U32(3));
    w.metadata("tokenizer.ggml.eos_token_id", Value::U32(4));
    w.metadata(
        "tokenizer.chat_template",
        Value::String("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
    );
    let tokenizer = w.to_bytes();
    put("gguf", "tokenizer.gguf", &tokenizer);

    // The tiny model (architecture keys and every tensor).
    let full = q35_fuzz::tiny_gguf_bytes();
    put("gguf", "tiny-model.gguf", &full);

    let smollm2 = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    match std::fs::read(&smollm2) {
        Ok(bytes) => put("gguf", "smollm2-prefix16k.gguf", &bytes[..16 << 10]),
        Err(e) => eprintln!("skipping the SmolLM2 prefix: {}: {e}", smollm2.display()),
    }
    tokenizer
}

fn model_toml_seeds() {
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let p = entry.expect("examples entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            put(
                "model_toml",
                &name,
                &std::fs::read(&p).expect("read example"),
            );
        }
    }
    let gguf = |arch: &str| {
        format!(
            "[model]\nname = \"tiny\"\nfamily = \"llama\"\n\n[architecture]\n{arch}\n\n\
             [weights]\nsource = \"gguf\"\npath = \"tiny.gguf\"\n\n\
             [quantization]\nscheme = \"q35\"\ngroup_size = 64\n\n\
             [runtime]\nmax_seq_len = 64\nbatch = 1\n"
        )
    };
    put(
        "model_toml",
        "gguf-match.toml",
        gguf("blocks = 2\nhidden = 16\nheads = 4\nkv_heads = 2\nffn = 32\nvocab = 32\ncontext = 128\nrope_base = 10000.0\nnorm_eps = 1e-5\ntied_embeddings = true").as_bytes(),
    );
    put(
        "model_toml",
        "gguf-mismatch.toml",
        gguf("blocks = 3\nhidden = 16").as_bytes(),
    );
    put("model_toml", "gguf-bare.toml", gguf("").as_bytes());
}

fn tokenizer_seeds() {
    let path = root().join("runtime/tokenizer/tests/fixtures/llamacpp_tokenize.json");
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("tokenizer fixture")).expect("JSON");
    let cases = fixture["cases"].as_array().expect("cases");
    for (i, case) in cases.iter().enumerate() {
        let text = case["text"].as_str().expect("text");
        put(
            "tokenizer_encode",
            &format!("fixture-{i:03}.txt"),
            text.as_bytes(),
        );
        if i % 8 == 0 {
            let ids: Vec<u8> = case["special"]
                .as_array()
                .expect("ids")
                .iter()
                .flat_map(|id| (id.as_u64().expect("id") as u32).to_le_bytes())
                .collect();
            put("tokenizer_decode", &format!("fixture-{i:03}.ids"), &ids);
        }
    }
    // Ids past the vocabulary and cut UTF-8 sequences.
    let odd: Vec<u8> = [49151u32, 49152, u32::MAX, 0, 1, 2]
        .iter()
        .flat_map(|id| id.to_le_bytes())
        .collect();
    put("tokenizer_decode", "out-of-vocab.ids", &odd);
    for (i, chat) in fixture["chat"].as_array().expect("chat").iter().enumerate() {
        let mut bytes = vec![u8::from(
            chat["add_generation_prompt"].as_bool() == Some(true),
        )];
        let fields: Vec<&str> = chat["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .flat_map(|m| {
                m.as_array()
                    .expect("pair")
                    .iter()
                    .map(|x| x.as_str().expect("str"))
            })
            .collect();
        bytes.extend_from_slice(fields.join("\0").as_bytes());
        put("chat_template", &format!("fixture-{i:02}.chat"), &bytes);
    }
    put(
        "chat_template",
        "hostile.chat",
        b"\x01system\0<|im_end|>{{ 7*7 }}{% raw %}\0user\0<|im_start|>assistant\n\xff\xfe\0tool\0",
    );
}

/// The ```lpuasm blocks of docs/isa.md.
fn doc_programs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("docs/isa.md")).expect("docs/isa.md");
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match &mut block {
            None if line.trim() == "```lpuasm" => block = Some(String::new()),
            None => {}
            Some(b) if line.trim() == "```" => {
                out.push((format!("isa-md-{}.lpuasm", out.len()), std::mem::take(b)));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    out
}

/// Two chips: chip 0 sends a vector on link 0 on cycle 2, chip 1 receives
/// it on link 6 on cycle 502 and writes it to `mem.e0`.
const TWO_CHIPS: [&str; 2] = [
    ".target lpu-v1\n.mem mem.w0 @0 u8 [10, 11, 12]\n.queue mem.w0\n    read 0, s0.e\n    halt\n.queue c2c.0\n    nop 2\n    send s0.e\n    halt\n",
    ".target lpu-v1\n.symbol got u8 [4] at mem.e0 @8\n.queue c2c.6\n    nop 502\n    recv s1.e\n    halt\n.queue mem.e0\n    nop 504\n    write 8, s1.e\n    halt\n",
];

/// The `lpubin_system` seeds (module doc).
fn system_seeds(target: &q35_target::Target, bins: &[Vec<u8>]) {
    let hash = target.hash().0;
    let mut two = q35_lpubin::SystemBuilder::new(&target.name, hash);
    for (i, text) in TWO_CHIPS.iter().enumerate() {
        let p = q35_isa::assemble(&format!("chip{i}.lpuasm"), text).expect("assembles");
        two.chip(
            p.to_lpubin(target, "q35-fuzz seeds")
                .expect("encodes")
                .to_bytes()
                .expect("bytes"),
        );
    }
    put(
        "lpubin_system",
        "two-chips.lpubin",
        &two.to_bytes().expect("a system"),
    );
    if bins.len() >= 8 {
        let mut node = q35_lpubin::SystemBuilder::new(&target.name, hash);
        for b in &bins[..8] {
            node.chip(b.clone());
        }
        put(
            "lpubin_system",
            "node-of-seeds.lpubin",
            &node.to_bytes().expect("a system"),
        );
    }
}

fn isa_seeds(dirs: &[String]) {
    let mut bins = Vec::new();
    let mut programs = doc_programs();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            eprintln!("skipping {dir}: not a directory");
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "lpuasm") {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                programs.push((name, std::fs::read_to_string(&p).expect("read .lpuasm")));
            }
        }
    }
    let target = q35_target::Target::builtin("lpu-v1").expect("lpu-v1");
    for (name, text) in programs {
        put("lpuasm", &name, text.as_bytes());
        let program = match q35_isa::assemble(&name, &text) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{name}: kept as an lpuasm seed only: {e}");
                continue;
            }
        };
        let bytes = match program.to_lpubin(&target, "q35-fuzz seeds") {
            Ok(b) => b.to_bytes().expect("encode"),
            Err(e) => {
                eprintln!("{name}: no binary: {e}");
                continue;
            }
        };
        let stem = Path::new(&name).with_extension("");
        let stem = stem.to_string_lossy();
        put("lpubin", &format!("{stem}.lpubin"), &bytes);
        bins.push(bytes.clone());
        let words: Vec<u8> = program
            .queues
            .values()
            .flatten()
            .flat_map(|i| i.encode().expect("encodes").to_le_bytes())
            .collect();
        if !words.is_empty() {
            put("isa_decode", &format!("{stem}.words"), &words);
            // The generator reads any bytes; real words are a start.
            for target in ["isa_program", "sim_program"] {
                put(
                    target,
                    &format!("{stem}.bytes"),
                    &words[..words.len().min(2048)],
                );
            }
        }
    }
    system_seeds(&target, &bins);
}

/// The `lpubin_model` seed from a compiled model (`q35c compile
/// examples/tiny.toml --context 1`): without its debug map and with only its
/// first MEM extents ([`q35_fuzz::trim_model`]), so it stays small enough to
/// commit, plus a tokenizer section (the tokenizer-only GGUF above) and its
/// chat template in the metadata, so the host's tokenizer and template
/// readers are reached too.
fn model_seeds(model: &Path, tokenizer: &[u8]) {
    let bin = q35_lpubin::LpuBinary::open(model).expect("read the compiled model");
    let trimmed = q35_fuzz::trim_model(&bin, 8);
    let trimmed = q35_lpubin::LpuBinary::from_bytes(trimmed).expect("trimmed model reads");
    let mut meta = trimmed
        .metadata()
        .cloned()
        .expect("a compiled model has metadata");
    meta.insert(
        "chat_template".into(),
        serde_json::Value::String(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                .into(),
        ),
    );
    let mut b = q35_lpubin::Builder::new(
        trimmed.target_name(),
        *trimmed.target_hash(),
        trimmed.producer(),
    );
    for q in trimmed.queues() {
        b.queue(q.id(), q.words().to_vec());
    }
    if let Some(mem) = trimmed.mem() {
        b.mem_word_bytes(mem.word_bytes());
        for e in mem.extents() {
            b.mem_extent(e.range.slice, e.range.first_word, e.bytes.to_vec());
        }
    }
    for s in trimmed.symbols() {
        b.symbol(s.clone());
    }
    b.metadata(meta);
    b.tokenizer(tokenizer.to_vec());
    for (name, bytes) in trimmed.tables() {
        b.table(name, bytes.to_vec());
    }
    if let Some(e) = trimmed.embedding() {
        b.embedding(e.encoding, e.rows, e.cols, e.data.to_vec());
    }
    let name = model
        .file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    put(
        "lpubin_model",
        &format!("{name}.lpubin"),
        &b.to_bytes().expect("encode"),
    );
}

fn main() {
    let mut dirs = Vec::new();
    let mut model = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--model" {
            model = Some(PathBuf::from(args.next().expect("--model FILE.lpubin")));
        } else {
            dirs.push(a);
        }
    }
    let tokenizer = gguf_seeds();
    model_toml_seeds();
    tokenizer_seeds();
    isa_seeds(&dirs);
    if let Some(m) = model {
        model_seeds(&m, &tokenizer);
    }
}
