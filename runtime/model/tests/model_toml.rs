//! model.toml: the examples load, and every kind of bad input gets a
//! diagnostic naming the file, the key and what was expected.

use std::path::{Path, PathBuf};

use q35_gguf::write::GgufWriter;
use q35_gguf::{Array, Value};
use q35_model::{ModelError, QuantScheme, Target, WeightSource};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

const TINY: &str = r#"
[model]
name = "t"
[architecture]
blocks = 2
hidden = 64
heads = 4
kv_heads = 2
ffn = 128
vocab = 256
rope_base = 10000.0
norm_eps = 1e-5
context = 128
[weights]
source = "synthetic"
seed = 3
"#;

/// Parses and resolves model.toml text.
fn spec(text: &str, path: &str) -> Result<q35_model::ModelSpec, ModelError> {
    q35_model::parse(text, Path::new(path)).and_then(q35_model::ModelToml::resolve)
}

fn err(text: &str) -> String {
    spec(text, "bad.toml")
        .expect_err("should be rejected")
        .to_string()
}

#[test]
fn tiny_and_70b_examples_load() {
    let t = q35_model::load(examples().join("tiny.toml")).unwrap();
    assert_eq!(t.arch.blocks, 2);
    assert_eq!(t.arch.head_dim, 16);
    assert_eq!(t.weights, WeightSource::Synthetic { seed: 7 });
    assert_eq!(t.quant.group_size, 32);
    assert_eq!(t.target.mxm.rows, 320);
    let l = q35_model::load(examples().join("llama-70b.toml")).unwrap();
    assert_eq!(
        (l.arch.hidden, l.arch.heads, l.arch.kv_heads),
        (8192, 64, 8)
    );
    assert_eq!(l.arch.ffn, 28672);
    assert_eq!(l.weights, WeightSource::None);
    assert!(!l.arch.tied_embeddings);
    // 70B-class: about 69 billion parameters.
    let p = l.arch.parameters();
    assert!((68_000_000_000..70_000_000_000).contains(&p), "{p}");
}

#[test]
fn defaults() {
    let m = spec(TINY, "x/t.toml").unwrap();
    assert_eq!(m.arch.head_dim, 16);
    assert_eq!(m.quant.scheme, QuantScheme::Q35);
    assert_eq!(m.quant.group_size, 128);
    assert_eq!(m.limits.max_seq_len, 128);
    assert_eq!(m.limits.batch, 1);
    assert_eq!(m.target.name, "lpu-v1");
    assert!(!m.arch.tied_embeddings);
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err(&TINY.replace("ffn = 128", "ffn = 128\nfnn = 3"));
    assert!(e.starts_with("bad.toml:"), "{e}");
    assert!(e.contains("unknown field `fnn`"), "{e}");
}

#[test]
fn missing_and_wrong_type() {
    let e = err(&TINY.replace("hidden = 64\n", ""));
    assert!(e.contains("`architecture.hidden`: is required"), "{e}");
    let e = err(&TINY.replace("hidden = 64", "hidden = \"64\""));
    assert!(
        e.contains("bad.toml:6:10: `architecture.hidden`: invalid type"),
        "{e}"
    );
    let e = err(&TINY.replace("name = \"t\"", ""));
    assert!(e.contains("missing field `name`"), "{e}");
}

#[test]
fn impossible_shapes() {
    let e = err(&TINY.replace("heads = 4", "heads = 5"));
    assert!(
        e.contains("`architecture.heads`") && e.contains("do not divide hidden = 64"),
        "{e}"
    );
    let e = err(&TINY.replace("kv_heads = 2", "kv_heads = 3"));
    assert!(
        e.contains("`architecture.kv_heads`") && e.contains("do not divide heads = 4"),
        "{e}"
    );
    let e = err(&TINY.replace("blocks = 2", "blocks = 0"));
    assert!(
        e.contains("`architecture.blocks`: must be at least 1"),
        "{e}"
    );
    let e = err(&TINY.replace("blocks = 2", "blocks = -1"));
    assert!(e.contains("invalid value"), "{e}");
}

#[test]
fn bad_options() {
    let e = err(&format!("{TINY}[quantization]\nscheme = \"q36\"\n"));
    assert!(e.contains("unknown variant `q36`"), "{e}");
    let e = err(&format!("{TINY}[quantization]\ngroup_size = 100\n"));
    assert!(e.contains("`quantization.group_size`"), "{e}");
    let e = err(&format!("{TINY}[quantization]\ngroup_size = 24\n"));
    assert!(e.contains("24 must be a multiple of 16"), "{e}");
    spec(
        &format!("{TINY}[quantization]\ngroup_size = 48\n"),
        "t.toml",
    )
    .unwrap();
    let e = err(&format!("{TINY}[quantization]\nactivations = \"fp16\"\n"));
    assert!(e.contains("unknown variant `fp16`"), "{e}");
    let e = err(&format!("{TINY}[target]\nname = \"tpu\"\n"));
    assert!(e.contains("unknown target `tpu`"), "{e}");
    let e = err(&format!("{TINY}[runtime]\nmax_seq_len = 4096\n"));
    assert!(
        e.contains("`runtime.max_seq_len`") && e.contains("context length 128"),
        "{e}"
    );
    let e = err(&TINY.replace("source = \"synthetic\"", "source = \"gguf\""));
    assert!(
        e.contains("`weights.seed`: only allowed with source = \"synthetic\""),
        "{e}"
    );
    let e = err(&TINY.replace("source = \"synthetic\"\nseed = 3", "source = \"gguf\""));
    assert!(e.contains("`weights.path`: is required"), "{e}");
    let e = err(&format!("{}\n[model]\n", TINY));
    assert!(e.contains("bad.toml:"), "{e}");
}

/// A miniature GGUF of the tiny shape with F32 tensors.
fn tiny_gguf(dir: &Path, hidden: u32, drop: Option<&str>) -> PathBuf {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()));
    w.metadata("llama.block_count", Value::U32(2));
    w.metadata("llama.embedding_length", Value::U32(hidden));
    w.metadata("llama.attention.head_count", Value::U32(4));
    w.metadata("llama.attention.head_count_kv", Value::U32(2));
    w.metadata("llama.feed_forward_length", Value::U32(128));
    w.metadata("llama.context_length", Value::U32(128));
    w.metadata("llama.rope.freq_base", Value::F32(10000.0));
    w.metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.metadata(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String((0..256).map(|i| format!("t{i}")).collect())),
    );
    let arch = spec(TINY, "t.toml").unwrap().arch;
    let arch = q35_model::Architecture {
        hidden,
        tied_embeddings: true,
        ..arch
    };
    for (name, dims) in arch.expected_tensors() {
        if Some(name.as_str()) == drop {
            continue;
        }
        let n = dims.iter().product::<u64>() as usize;
        w.tensor_f32(&name, &dims, &vec![0.0; n]);
    }
    let p = dir.join("m.gguf");
    w.write(&p).unwrap();
    p
}

#[test]
fn gguf_source_and_cross_check() {
    let dir = tempfile::tempdir().unwrap();
    tiny_gguf(dir.path(), 64, None);
    let toml = |arch: &str| {
        format!(
            "[model]\nname = \"g\"\n[architecture]\n{arch}\n[weights]\nsource = \"gguf\"\npath = \"m.gguf\"\n"
        )
    };
    let p = dir.path().join("m.toml");
    std::fs::write(&p, toml("hidden = 64")).unwrap();
    let m = q35_model::load(&p).unwrap();
    assert_eq!(m.arch.vocab, 256);
    assert!(m.arch.tied_embeddings);

    std::fs::write(&p, toml("hidden = 96")).unwrap();
    let e = q35_model::load(&p).unwrap_err();
    assert!(matches!(e, ModelError::Mismatch { .. }));
    let e = e.to_string();
    assert!(
        e.contains("`architecture.hidden` = 96 disagrees with")
            && e.contains("`llama.embedding_length` = 64"),
        "{e}"
    );

    // Missing file, truncated file, missing tensor.
    std::fs::write(&p, toml("").replace("m.gguf", "nope.gguf")).unwrap();
    let e = q35_model::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("`weights.path`") && e.contains("nope.gguf"),
        "{e}"
    );
    let g = dir.path().join("m.gguf");
    let bytes = std::fs::read(&g).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(&p, toml("")).unwrap();
    let e = q35_model::load(&p).unwrap_err().to_string();
    assert!(e.contains("truncated GGUF"), "{e}");
    tiny_gguf(dir.path(), 64, Some("blk.1.ffn_up.weight"));
    let e = q35_model::load(&p).unwrap_err().to_string();
    assert!(e.contains("tensor `blk.1.ffn_up.weight` is missing"), "{e}");
}

#[test]
fn non_llama_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("gpt2".into()));
    w.write(dir.path().join("m.gguf")).unwrap();
    let p = dir.path().join("m.toml");
    std::fs::write(
        &p,
        "[model]\nname = \"g\"\n[weights]\nsource = \"gguf\"\npath = \"m.gguf\"\n",
    )
    .unwrap();
    let e = q35_model::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("`general.architecture` is `gpt2`") && e.contains("LLaMA-family"),
        "{e}"
    );
}

#[test]
fn builtin_target_is_valid() {
    let t = Target::builtin("lpu-v1").unwrap();
    assert_eq!(
        (t.mxm.rows, t.mxm.cols, t.mxm.planes, t.vector.lanes),
        (320, 320, 4, 320)
    );
    // 409,600 MACs x 900 MHz: the published ~750 TOPS (2 ops per MAC) peak.
    let tops = 2.0 * t.peak_macs_per_second() / 1e12;
    assert!((730.0..=740.0).contains(&tops), "{tops}");
}

#[test]
fn real_smollm2_example() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() && std::env::var("Q35_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        return;
    }
    let m = q35_model::load(examples().join("smollm2-135m.toml")).unwrap();
    assert_eq!(m.arch.blocks, 30);
    assert_eq!(m.arch.vocab, 49152);
    assert_eq!(m.arch.rope_base, 100_000.0);
    assert!(m.arch.tied_embeddings);
    assert_eq!(m.arch.parameters(), 134_515_008);
}

#[test]
fn parse_opens_nothing_resolve_opens_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[model]\nname = \"g\"\n[architecture]\nhidden = 64\n[weights]\nsource = \"gguf\"\npath = \"absent.gguf\"\n[target]\npath = \"absent-target.toml\"\n";
    let p = dir.path().join("m.toml");
    let described = q35_model::parse(toml, &p).unwrap();
    assert_eq!(described.name, "g");
    assert_eq!(
        described.weights,
        WeightSource::Gguf {
            path: dir.path().join("absent.gguf")
        }
    );
    let e = described.resolve().unwrap_err().to_string();
    assert!(
        e.contains("`weights.path`") && e.contains("absent.gguf"),
        "{e}"
    );
}

#[test]
fn target_file_resolves_through_q35_target() {
    let dir = tempfile::tempdir().unwrap();
    let lpu = q35_target::BUILTIN[0].1;
    std::fs::write(
        dir.path().join("fast.toml"),
        lpu.replace("clock_mhz = 900.0", "clock_mhz = 1250.0"),
    )
    .unwrap();
    let m = spec(
        &format!("{TINY}[target]\npath = \"fast.toml\"\n"),
        dir.path().join("m.toml").to_str().unwrap(),
    )
    .unwrap();
    assert_eq!(m.target.clock_mhz, 1250.0);
    assert_eq!(m.target.source, dir.path().join("fast.toml"));
    assert_ne!(m.target.hash(), Target::builtin("lpu-v1").unwrap().hash());

    // A bad target file is reported at its own line and key.
    std::fs::write(
        dir.path().join("fast.toml"),
        lpu.replace("planes = 4 ", "planes = 0 "),
    )
    .unwrap();
    let e = spec(
        &format!("{TINY}[target]\npath = \"fast.toml\"\n"),
        dir.path().join("m.toml").to_str().unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, ModelError::Target(_)), "{e:?}");
    let line = lpu
        .lines()
        .position(|l| l.starts_with("planes = 4"))
        .unwrap()
        + 1;
    assert!(
        e.to_string().ends_with(&format!(
            "fast.toml:{line}:10: `mxm.planes`: must be at least 1"
        )),
        "{e}"
    );
    let e = err(&format!(
        "{TINY}[target]\nname = \"lpu-v1\"\npath = \"fast.toml\"\n"
    ));
    assert!(e.contains("`target`: give exactly one of"), "{e}");
}

/// Hostile sizes (issue 12): a billion blocks, or widths whose products
/// overflow, are refused with a located error before anything is built per
/// block or multiplied.
#[test]
fn hostile_sizes_are_refused_before_anything_is_built() {
    let e = err(&TINY.replace("blocks = 2", "blocks = 1000000000"));
    assert!(
        e.contains("bad.toml:5:10")
            && e.contains("`architecture.blocks`")
            && e.contains("1000000000 decoder blocks; q35 takes at most 1024"),
        "{e}"
    );
    let e = err(&TINY.replace("vocab = 256", "vocab = 4000000000"));
    assert!(
        e.contains("`architecture.vocab`") && e.contains("wider than 1048576"),
        "{e}"
    );
    // heads x head_dim overflows a u32 (65536 x 65536): refused, not wrapped.
    let e = err(&TINY
        .replace("heads = 4\n", "heads = 65536\nhead_dim = 65536\n")
        .replace("hidden = 64", "hidden = 65536"));
    assert!(
        e.contains("`architecture.heads`") && e.contains("65536 x 65536"),
        "{e}"
    );
    // The largest model q35 takes still loads.
    assert_eq!(
        spec(&TINY.replace("blocks = 2", "blocks = 1024"), "t.toml")
            .unwrap()
            .arch
            .blocks,
        1024
    );
}

/// A GGUF file declaring a billion blocks (and no tensors for them) is
/// refused on its metadata, before the tensor list it implies is built.
#[test]
fn gguf_declaring_a_billion_blocks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_gguf(dir.path(), 64, None);
    let gguf = q35_gguf::Gguf::open(&g).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in gguf.metadata() {
        let v = if k == "llama.block_count" {
            Value::U32(1_000_000_000)
        } else {
            v.clone()
        };
        w.metadata(k, v);
    }
    w.write(&g).unwrap();
    let hostile = q35_gguf::Gguf::open(&g).unwrap();
    let e = q35_model::architecture_from_gguf(&hostile, &g)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`llama.block_count`: 1000000000 decoder blocks; q35 takes at most 1024"),
        "{e}"
    );
}

#[test]
fn group_sizes_per_kind() {
    let m = spec(
        &format!(
            "{TINY}[quantization]\ngroup_size = 32\ngroup_size_of = {{ attn_k = 64, output = 16 }}\n"
        ),
        "t.toml",
    )
    .unwrap();
    let q = m.quant;
    assert_eq!(q.group_size, 32);
    assert_eq!(q.group_size_of_kind("attn_k"), 64);
    assert_eq!(q.group_size_of_kind("attn_v"), 32);
    assert_eq!(q.group_size_of_tensor("blk.1.attn_k.weight"), 64);
    assert_eq!(q.group_size_of_tensor("blk.1.attn_q.weight"), 32);
    assert_eq!(q.group_size_of_tensor("output.weight"), 16);
    assert_eq!(q.group_size_of_tensor("token_embd.weight"), 16);
    assert_eq!(q.max_group_size(), 64);
    assert_eq!(q.groups_text(), "32 (attn_k 64, output 16)");
    assert_eq!(q.group_size_of_pairs(), [("attn_k", 64), ("output", 16)]);
    assert!(!q.is_uniform());
    assert!(
        spec(
            &format!("{TINY}[quantization]\ngroup_size = 32\n"),
            "t.toml"
        )
        .unwrap()
        .quant
        .is_uniform()
    );
}

#[test]
fn bad_group_size_of_unknown_kind() {
    let e = err(&format!(
        "{TINY}[quantization]\ngroup_size_of = {{ attn_kv = 64 }}\n"
    ));
    assert!(
        e.contains("bad.toml:") && e.contains("`quantization.group_size_of.attn_kv`"),
        "{e}"
    );
    assert!(
        e.contains("unknown kind of matrix `attn_kv`") && e.contains("attn_k, attn_v"),
        "{e}"
    );
}

#[test]
fn bad_group_size_of_size() {
    let e = err(&format!(
        "{TINY}[quantization]\ngroup_size_of = {{ ffn_down = 40 }}\n"
    ));
    assert!(
        e.contains("`quantization.group_size_of.ffn_down`")
            && e.contains("40 must be a multiple of 16"),
        "{e}"
    );
    let e = err(&format!(
        "{TINY}[quantization]\ngroup_size_of = {{ ffn_down = 8192 }}\n"
    ));
    assert!(e.contains("between 16 and 4096"), "{e}");
    let e = err(&format!(
        "{TINY}[quantization]\ngroup_size_of = {{ ffn_down = \"big\" }}\n"
    ));
    assert!(e.contains("bad.toml:") && e.contains("invalid type"), "{e}");
}

#[test]
fn bad_group_size_of_not_dividing() {
    // 48 does not divide 64: the quantizer's covariance group is the largest.
    let e = err(&format!(
        "{TINY}[quantization]\ngroup_size = 48\ngroup_size_of = {{ attn_v = 64 }}\n"
    ));
    assert!(
        e.contains("`quantization.group_size`")
            && e.contains("48 does not divide the largest group size, 64"),
        "{e}"
    );
    let e = err(&format!(
        "{TINY}[quantization]\ngroup_size = 64\ngroup_size_of = {{ attn_v = 128, output = 96 }}\n"
    ));
    assert!(
        e.contains("`quantization.group_size_of.output`")
            && e.contains("96 does not divide the largest group size, 128"),
        "{e}"
    );
}

/// `[quantization] rotation`: "none" unless given; "block-hadamard" needs
/// a tied LM head; anything else names the file, line and key.
#[test]
fn rotation_setting() {
    let m = spec(TINY, "t.toml").unwrap();
    assert_eq!(m.quant.rotation, q35_model::Rotation::None);
    let tied = TINY.replace("context = 128", "context = 128\ntied_embeddings = true");
    for (text, want) in [
        ("none", q35_model::Rotation::None),
        ("block-hadamard", q35_model::Rotation::BlockHadamard),
    ] {
        let m = spec(
            &format!("{tied}[quantization]\nrotation = \"{text}\"\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(m.quant.rotation, want);
        assert_eq!(want.as_str(), text);
    }
    let e = err(&format!("{tied}[quantization]\nrotation = \"hadamard\"\n"));
    let line = tied.lines().count() + 2;
    assert!(
        e.contains(&format!("bad.toml:{line}:12: `quantization.rotation`"))
            && e.contains("unknown rotation `hadamard`; expected one of: none, block-hadamard"),
        "{e}"
    );
    let e = err(&format!("{tied}[quantization]\nrotation = 1\n"));
    assert!(e.contains("bad.toml:") && e.contains("invalid type"), "{e}");
    // The rotated table serves the embedding and the head: a head of its
    // own is refused, at the key.
    let e = err(&format!(
        "{TINY}[quantization]\nrotation = \"block-hadamard\"\n"
    ));
    assert!(
        e.contains("`quantization.rotation`") && e.contains("needs a tied LM head"),
        "{e}"
    );
}

/// `[quantization] sequential` and `asymmetric`: off unless given; the
/// modes by name, a strength in (0, 1] that needs a sequential mode, and a
/// sequential mode that needs a calibration text; anything else names the
/// file, line and key.
#[test]
fn sequential_calibration_setting() {
    use q35_model::SequentialCalibration as S;
    let m = spec(TINY, "t.toml").unwrap();
    assert_eq!((m.quant.sequential, m.quant.asymmetric), (S::None, None));
    let calib = "calibration = \"calib.txt\"\n";
    for (text, want) in [
        ("none", S::None),
        ("int8", S::Int8),
        ("dequant", S::Dequant),
    ] {
        let m = spec(
            &format!("{TINY}[quantization]\n{calib}sequential = \"{text}\"\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!((m.quant.sequential, want.as_str()), (want, text));
    }
    let m = spec(
        &format!("{TINY}[quantization]\n{calib}sequential = \"dequant\"\nasymmetric = 0.25\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(m.quant.asymmetric, Some(0.25));
    let line = TINY.lines().count() + 3;
    let e = err(&format!(
        "{TINY}[quantization]\n{calib}sequential = \"fp8\"\n"
    ));
    assert!(
        e.contains(&format!("bad.toml:{line}:14: `quantization.sequential`"))
            && e.contains(
                "unknown sequential calibration `fp8`; expected one of: none, int8, dequant"
            ),
        "{e}"
    );
    // Block by block needs a text to calibrate on.
    let e = err(&format!("{TINY}[quantization]\nsequential = \"int8\"\n"));
    assert!(
        e.contains("`quantization.sequential`") && e.contains("it needs `calibration`"),
        "{e}"
    );
    // The asymmetric target needs a sequential mode and a strength in (0, 1].
    let e = err(&format!("{TINY}[quantization]\n{calib}asymmetric = 0.25\n"));
    assert!(
        e.contains(&format!("bad.toml:{line}:14: `quantization.asymmetric`"))
            && e.contains("needs `sequential"),
        "{e}"
    );
    for bad in ["0.0", "1.5", "-0.25", "nan"] {
        let e = err(&format!(
            "{TINY}[quantization]\n{calib}sequential = \"int8\"\nasymmetric = {bad}\n"
        ));
        assert!(
            e.contains("`quantization.asymmetric`") && e.contains("is not a strength in (0, 1]"),
            "{bad}: {e}"
        );
    }
    let e = err(&format!(
        "{TINY}[quantization]\n{calib}sequential = \"int8\"\nasymmetric = \"high\"\n"
    ));
    assert!(e.contains("bad.toml:") && e.contains("invalid type"), "{e}");
}

/// `[target] chips`: the system a model is split over (1 unless given; a
/// count of at least 1 or "auto"; anything else is refused at its key;
/// alone it keeps the default target).
#[test]
fn target_chips() {
    use q35_model::Chips;
    assert_eq!(spec(TINY, "t.toml").unwrap().chips, Chips::Count(1));
    let s = spec(&format!("{TINY}[target]\nchips = 4\n"), "t.toml").unwrap();
    assert_eq!(
        (s.chips, s.target.name.as_str()),
        (Chips::Count(4), "lpu-v1")
    );
    let s = spec(
        &format!("{TINY}[target]\nname = \"lpu-v1\"\nchips = 2\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(s.chips, Chips::Count(2));
    let s = spec(&format!("{TINY}[target]\nchips = \"auto\"\n"), "t.toml").unwrap();
    assert_eq!(s.chips, Chips::Auto);
    for (bad, found) in [
        ("0", "found 0"),
        ("-3", "found -3"),
        ("\"many\"", "found \"many\""),
        ("2.5", "found a float"),
        ("true", "found a boolean"),
    ] {
        let e = err(&format!("{TINY}[target]\nchips = {bad}\n"));
        assert!(
            e.contains("`target.chips`")
                && e.contains("at least 1")
                && e.contains("\"auto\"")
                && e.contains(found),
            "{bad}: {e}"
        );
    }
}
