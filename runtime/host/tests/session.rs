//! The host runtime against a fake device that runs the golden model
//! itself: the embedding lookup equals the golden model's bit for bit, the
//! token loop's inputs are what the program expects (the fake device checks
//! `x_in`, `pos_idx`, `kv_idx` and `attn_mask` every run), generation equals
//! the golden model's with `q35c run`'s sampler, stop tokens and the
//! context limit hold, and `--check` finds a corrupted KV value and names
//! its block, position and element.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use q35_contract::{GoldenModel, GoldenSession};
use q35_host::device::{f32_bytes, f32_values};
use q35_host::golden::{BuiltGolden, GoldenRecipe, build, weights_hash};
use q35_host::{
    Checker, Device, DeviceError, EmbeddingTable, HostError, HostMeta, Part, Session, StepStats,
};
use q35_lpubin::{Builder, ElemType, LpuBinary, MemRange, Symbol, SymbolKind};
use q35_reference::{GenerateOptions, Sampler, SamplingParams, StopReason};

const CTX: usize = 12;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny model's golden model, built as `q35c` builds it (calibrated).
fn tiny() -> &'static BuiltGolden {
    static G: OnceLock<BuiltGolden> = OnceLock::new();
    G.get_or_init(|| {
        build(&GoldenRecipe {
            model_toml: root().join("examples/tiny.toml"),
            calib: Some(root().join("tests/data/calib_en.txt")),
            calib_ctx: 128,
            calib_samples: 16,
            positions: CTX,
            threads: 2,
        })
        .expect("the tiny golden model builds")
    })
}

fn kv_dim(g: &GoldenModel) -> usize {
    (g.arch().kv_heads * g.arch().head_dim) as usize
}

fn meta(g: &GoldenModel) -> HostMeta {
    let a = g.arch();
    HostMeta {
        model: "tiny".into(),
        vocab: a.vocab,
        hidden: a.hidden,
        blocks: a.blocks,
        kv_dim: kv_dim(g) as u32,
        ctx: CTX as u32,
        bos: None,
        eos: None,
        add_bos: false,
        stop_tokens: None,
        chat_template: None,
        kv_junk_offset: 7,
        predicted_cycles_per_step: Some(1000),
        golden: None,
        weights_hash: Some(weights_hash(g)),
        prefill: None,
        system: None,
        timing_only: false,
        batch: 1,
        buckets: Vec::new(),
    }
}

fn sym(name: &str, kind: SymbolKind, elem: ElemType, shape: &[u64]) -> Symbol {
    let n: u64 = shape.iter().product();
    Symbol {
        name: name.into(),
        kind,
        elem,
        shape: shape.to_vec(),
        placement: vec![MemRange {
            slice: 0,
            first_word: 0,
            words: (n.div_ceil(320) * elem.size() as u64) as u32,
        }],
        layout: String::new(),
    }
}

/// A binary with the host's sections and symbols (no instructions: the
/// fake device does the work). `skip` leaves one symbol out.
fn binary(meta: &HostMeta, emb: &EmbeddingTable, skip: Option<&str>) -> LpuBinary {
    binary_with(meta, emb, skip, &[])
}

/// [`binary`] with further programs: per name, whether it has the first
/// program's symbols (else one symbol fewer).
fn binary_with(
    meta: &HostMeta,
    emb: &EmbeddingTable,
    skip: Option<&str>,
    programs: &[(&str, bool)],
) -> LpuBinary {
    let mut b = Builder::new("lpu-v1", [0; 32], "test");
    b.metadata(meta.to_json());
    let (enc, rows, cols, data) = emb.section();
    b.embedding(enc, rows, cols, data);
    let (v, h, c) = (
        u64::from(meta.vocab),
        u64::from(meta.hidden),
        u64::from(meta.ctx),
    );
    let symbols: Vec<Symbol> = [
        sym("x_in", SymbolKind::Input, ElemType::F32, &[h]),
        sym("pos_idx", SymbolKind::Position, ElemType::U16, &[320]),
        sym("kv_idx", SymbolKind::Position, ElemType::U16, &[320]),
        sym("attn_mask", SymbolKind::Input, ElemType::F32, &[c]),
        sym("logits", SymbolKind::Output, ElemType::F32, &[v]),
    ]
    .into_iter()
    .filter(|s| Some(s.name.as_str()) != skip)
    .collect();
    for s in &symbols {
        b.symbol(s.clone());
    }
    for &(name, same) in programs {
        let mut p = Builder::new("lpu-v1", [0; 32], "test");
        p.queue(0, vec![0u64]);
        for s in &symbols {
            if same || s.name != "attn_mask" {
                p.symbol(s.clone());
            }
        }
        b.program(name, p);
    }
    LpuBinary::from_bytes(b.to_bytes().expect("writes")).expect("opens")
}

/// A device that runs the golden model: it recovers the token from `x_in`,
/// checks the other inputs against its own position, steps, and publishes
/// the logits and the KV cache in the program's layout.
#[derive(Debug)]
struct FakeDevice {
    golden: GoldenModel,
    session: GoldenSession,
    symbols: BTreeMap<String, Vec<u8>>,
    ctx: usize,
    junk: u16,
    runs: usize,
    /// After run `.0`, add 1.0 to key `(c, t)` of block `b`.
    corrupt: Option<(usize, usize, usize, usize)>,
    /// The selected program (`None`: the first).
    program: Option<String>,
    /// Per run: its position and program.
    ran: Vec<(usize, Option<String>)>,
}

impl FakeDevice {
    fn new(golden: &GoldenModel, meta: &HostMeta) -> FakeDevice {
        let mut symbols = BTreeMap::new();
        let kvd = kv_dim(golden);
        let kcols = (CTX.div_ceil(320) + 1) * 320;
        let vcols = kvd.div_ceil(320) * 320;
        let sizes = [
            ("x_in".to_string(), meta.hidden as usize * 4),
            ("pos_idx".to_string(), 640),
            ("kv_idx".to_string(), 640),
            ("attn_mask".to_string(), CTX * 4),
            ("logits".to_string(), meta.vocab as usize * 4),
        ];
        for (n, s) in sizes {
            symbols.insert(n, vec![0; s]);
        }
        for b in 0..meta.blocks {
            symbols.insert(format!("kcache_{b}"), vec![0; kvd * kcols * 4]);
            symbols.insert(format!("vcache_{b}"), vec![0; CTX * vcols * 4]);
        }
        FakeDevice {
            session: golden.new_session(),
            golden: golden.clone(),
            symbols,
            ctx: CTX,
            junk: meta.kv_junk_offset,
            runs: 0,
            corrupt: None,
            program: None,
            ran: Vec::new(),
        }
    }

    fn u16s(&self, name: &str) -> Vec<u16> {
        self.symbols[name]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
}

impl Device for FakeDevice {
    fn select_program(&mut self, program: Option<&str>) -> Result<(), DeviceError> {
        self.program = program.map(str::to_string);
        Ok(())
    }

    fn write_symbol(&mut self, name: &str, bytes: &[u8]) -> Result<(), DeviceError> {
        let s = self
            .symbols
            .get_mut(name)
            .ok_or(DeviceError::NoSymbol { name: name.into() })?;
        if s.len() != bytes.len() {
            return Err(DeviceError::Size {
                name: name.into(),
                got: bytes.len(),
                expected: s.len(),
                what: "fake".into(),
            });
        }
        s.copy_from_slice(bytes);
        Ok(())
    }

    fn read_symbol(&mut self, name: &str) -> Result<Vec<u8>, DeviceError> {
        self.symbols
            .get(name)
            .cloned()
            .ok_or(DeviceError::NoSymbol { name: name.into() })
    }

    fn run(&mut self) -> Result<StepStats, DeviceError> {
        let bad = |m: String| Err(DeviceError::Run(m));
        let pos = self.session.position();
        self.ran.push((pos, self.program.clone()));
        let x: Vec<u32> = f32_values(&self.symbols["x_in"])
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let Some(token) = (0..self.golden.vocab()).find(|&t| {
            let row = self.golden.embedding_row(t).expect("a row");
            row.iter().map(|v| v.to_bits()).eq(x.iter().copied())
        }) else {
            return bad(format!("x_in at position {pos} is no embedding row"));
        };
        if self.u16s("pos_idx").iter().any(|&p| usize::from(p) != pos) {
            return bad(format!("pos_idx is not {pos} on every lane"));
        }
        let kv = self.u16s("kv_idx");
        for (l, &k) in kv.iter().enumerate() {
            let want = if l == pos % 320 {
                (pos / 320) as u16
            } else {
                self.junk
            };
            if k != want {
                return bad(format!("kv_idx lane {l} is {k}, expected {want}"));
            }
        }
        let mask = f32_values(&self.symbols["attn_mask"]);
        for (t, &m) in mask.iter().enumerate() {
            let want = if t <= pos { 0.0 } else { f32::NEG_INFINITY };
            if m.to_bits() != want.to_bits() {
                return bad(format!("attn_mask[{t}] is {m} at position {pos}"));
            }
        }
        let logits = self
            .golden
            .step(&mut self.session, token as u32)
            .map_err(|e| DeviceError::Run(e.to_string()))?;
        self.symbols.insert("logits".into(), f32_bytes(&logits));
        let kvd = kv_dim(&self.golden);
        let kcols = (self.ctx.div_ceil(320) + 1) * 320;
        let vcols = kvd.div_ceil(320) * 320;
        for b in 0..self.golden.blocks().len() {
            let keys = self.session.keys(b).expect("block");
            let values = self.session.values(b).expect("block");
            let mut k = f32_values(&self.symbols[&format!("kcache_{b}")]);
            let mut v = f32_values(&self.symbols[&format!("vcache_{b}")]);
            for c in 0..kvd {
                k[c * kcols + pos] = keys[pos * kvd + c];
                v[pos * vcols + c] = values[pos * kvd + c];
            }
            if let Some((run, cb, t, c)) = self.corrupt
                && run == self.runs
                && cb == b
            {
                k[c * kcols + t] += 1.0;
            }
            self.symbols.insert(format!("kcache_{b}"), f32_bytes(&k));
            self.symbols.insert(format!("vcache_{b}"), f32_bytes(&v));
        }
        self.runs += 1;
        Ok(StepStats {
            cycles: 1000 + pos as u64,
            instructions: 0,
        })
    }
}

fn setup(meta_edit: impl FnOnce(&mut HostMeta)) -> Session<FakeDevice> {
    let t = tiny();
    let mut m = meta(&t.golden);
    meta_edit(&mut m);
    let emb = EmbeddingTable::Q35(t.head.clone().expect("the tiny head is quantized"));
    let bin = binary(&m, &emb, None);
    Session::new(FakeDevice::new(&t.golden, &m), &bin).expect("binds")
}

/// Generation on the golden model alone, with the same sampler.
fn golden_generate(g: &GoldenModel, prompt: &[u32], options: &GenerateOptions) -> Vec<u32> {
    let mut s = g.new_session();
    let mut logits = Vec::new();
    for &t in prompt {
        logits = g.step(&mut s, t).expect("steps");
    }
    let mut sampler = Sampler::new(options.sampling.clone()).expect("valid");
    let mut out = Vec::new();
    loop {
        let t = sampler.sample(&logits);
        out.push(t);
        if options.stop_tokens.contains(&t) || out.len() >= options.max_tokens {
            return out;
        }
        logits = g.step(&mut s, t).expect("steps");
    }
}

#[test]
fn embedding_rows_equal_the_golden_model_bit_for_bit() {
    let t = tiny();
    // The tied, quantized head is what the binary stores.
    assert!(matches!(t.embedding_table(), EmbeddingTable::Q35(_)));
    // Through the section and back.
    let m = meta(&t.golden);
    let bin = binary(&m, &t.embedding_table(), None);
    let table = EmbeddingTable::from_binary(&bin).expect("reads");
    for tok in 0..t.golden.vocab() {
        let got = table.row(tok as u32).expect("a row");
        let want = t.golden.embedding_row(tok).expect("a row");
        assert!(
            got.iter()
                .map(|v| v.to_bits())
                .eq(want.iter().map(|v| v.to_bits())),
            "row {tok}"
        );
    }
    assert!(table.row(t.golden.vocab() as u32).is_err());
    // An f32 table round-trips as raw rows.
    let f = EmbeddingTable::F32 {
        cols: 2,
        data: vec![1.0, -0.0, 2.5, f32::MIN_POSITIVE],
    };
    let mut b = Builder::new("lpu-v1", [0; 32], "t");
    let (e, r, c, d) = f.section();
    b.embedding(e, r, c, d);
    let bin = LpuBinary::from_bytes(b.to_bytes().unwrap()).unwrap();
    let back = EmbeddingTable::from_binary(&bin).unwrap();
    assert_eq!(back.row(1).unwrap(), [2.5, f32::MIN_POSITIVE]);
    assert_eq!(back.row(0).unwrap()[1].to_bits(), (-0.0f32).to_bits());
}

#[test]
fn greedy_and_sampled_generation_equal_the_golden_model() {
    let prompt = [1u32, 17, 200];
    for sampling in [
        SamplingParams::greedy(),
        SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.9,
            seed: 3,
        },
    ] {
        let options = GenerateOptions {
            max_tokens: 6,
            sampling,
            stop_tokens: vec![],
        };
        let mut s = setup(|_| {});
        s.set_checker(Checker::new(tiny().golden.clone(), s.meta()).expect("same model"));
        let mut streamed = Vec::new();
        let g = s
            .generate(&prompt, &options, |t| {
                streamed.push(t);
                true
            })
            .expect("generates");
        let want = golden_generate(&tiny().golden, &prompt, &options);
        assert_eq!(g.tokens, want);
        assert_eq!(streamed, want);
        assert_eq!(g.stop, StopReason::MaxTokens);
        // 3 prefill runs, then one per generated token but the last.
        assert_eq!(g.steps.len(), 3 + 5);
        assert_eq!(g.steps.iter().filter(|r| r.prefill).count(), 3);
        let pos: Vec<usize> = g.steps.iter().map(|r| r.pos).collect();
        assert_eq!(pos, (0..8).collect::<Vec<_>>());
        assert_eq!(g.steps[4].stats.cycles, 1004);
        assert_eq!(s.device().runs, 8);
    }
}

#[test]
fn stop_tokens_and_the_context_limit() {
    let prompt = [5u32, 6];
    let greedy = GenerateOptions {
        max_tokens: 6,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
    };
    let want = golden_generate(&tiny().golden, &prompt, &greedy);
    // The metadata's stop tokens end generation at the second token (kept).
    let stop = want[1];
    let mut s = setup(|m| m.stop_tokens = Some(vec![stop]));
    let options = GenerateOptions {
        stop_tokens: s.meta().stop_tokens(),
        ..greedy.clone()
    };
    let g = s.generate(&prompt, &options, |_| true).expect("generates");
    let first_stop = want.iter().position(|&t| t == stop).expect("present");
    assert_eq!(g.tokens, want[..=first_stop]);
    assert_eq!(g.stop, StopReason::StopToken(stop));
    // The context fills: CTX positions, the last token is not run.
    let mut s = setup(|_| {});
    let g = s
        .generate(
            &[1; 10],
            &GenerateOptions {
                max_tokens: 100,
                ..greedy.clone()
            },
            |_| true,
        )
        .expect("generates");
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!((g.steps.len(), g.tokens.len()), (CTX, CTX - 10 + 1));
    assert!(matches!(
        s.step(1),
        Err(HostError::ContextFull { pos: 12, ctx: 12 })
    ));
    // A prompt longer than the context is refused before anything runs.
    let mut s = setup(|_| {});
    let e = s
        .generate(&[1; CTX + 1], &greedy, |_| true)
        .expect_err("too long");
    assert_eq!(
        e.to_string(),
        "the prompt is 13 tokens, longer than the compiled context of 12 tokens (recompile with a larger --context)"
    );
    assert_eq!(s.device().runs, 0);
    let e = s.generate(&[], &greedy, |_| true).expect_err("empty");
    assert!(matches!(e, HostError::EmptyPrompt));
    let e = s.generate(&[999], &greedy, |_| true).expect_err("vocab");
    assert_eq!(e.to_string(), "token 999 is outside the vocabulary of 256");
    assert_eq!(s.device().runs, 0);
}

#[test]
fn check_names_a_corrupted_kv_value() {
    let mut s = setup(|_| {});
    s.set_checker(Checker::new(tiny().golden.clone(), s.meta()).expect("same model"));
    // During run 3 (position 3), key channel 5 of block 1 at cached
    // position 1 goes wrong.
    s.device_mut().corrupt = Some((3, 1, 1, 5));
    let options = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
    };
    let e = s.generate(&[1, 2], &options, |_| true).expect_err("caught");
    let HostError::Check(m) = &e else {
        panic!("not a check failure: {e}");
    };
    assert_eq!(
        (m.part, m.step, m.pos, m.position, m.element),
        (Part::Keys(1), 3, 3, Some(1), 5)
    );
    assert_eq!(m.device, m.golden + 1.0);
    let text = e.to_string();
    assert!(
        text.contains("block 1 key at cached position 1, kv head 0 dim 5")
            && text.contains("step 3 (token"),
        "{text}"
    );
    // A golden model of another shape or other weights is refused.
    let mut other = meta(&tiny().golden);
    other.weights_hash = Some("sha256:00".into());
    let e = Checker::new(tiny().golden.clone(), &other).expect_err("hash");
    assert!(e.to_string().contains("weights hash"), "{e}");
    other.kv_dim += 1;
    let e = Checker::new(tiny().golden.clone(), &other).expect_err("shape");
    assert!(e.to_string().contains("`kv_dim`"), "{e}");
}

#[test]
fn bad_binaries_and_inputs_are_clear_errors() {
    let t = tiny();
    let m = meta(&t.golden);
    let emb = EmbeddingTable::Q35(t.head.clone().expect("quantized"));
    // No metadata: a bare program.
    let mut b = Builder::new("lpu-v1", [0; 32], "t");
    b.queue(3, vec![]);
    let bare = LpuBinary::from_bytes(b.to_bytes().unwrap()).unwrap();
    let e = Session::new(FakeDevice::new(&t.golden, &m), &bare).expect_err("bare");
    assert!(e.to_string().contains("no metadata section"), "{e}");
    // A missing symbol.
    let bin = binary(&m, &emb, Some("logits"));
    let e = Session::new(FakeDevice::new(&t.golden, &m), &bin).expect_err("no logits");
    assert!(
        e.to_string().starts_with("symbol `logits` is missing"),
        "{e}"
    );
    // Metadata without a key the host needs.
    let mut json = m.to_json();
    json.remove("ctx");
    let mut b = Builder::new("lpu-v1", [0; 32], "t");
    b.metadata(json);
    let bin = LpuBinary::from_bytes(b.to_bytes().unwrap()).unwrap();
    let e = Session::new(FakeDevice::new(&t.golden, &m), &bin).expect_err("no ctx");
    assert!(e.to_string().contains("missing field `ctx`"), "{e}");
    // A device refusing a value of the wrong size.
    let mut d = FakeDevice::new(&t.golden, &m);
    let e = d.write_symbol("x_in", &[0; 4]).expect_err("size");
    assert!(e.to_string().contains("256 bytes"), "{e}");
    // No tokenizer: text prompts are refused, token prompts work.
    let s = setup(|_| {});
    let e = s
        .prompt_tokens("hi", false, None)
        .expect_err("no tokenizer");
    assert!(e.to_string().contains("no tokenizer section"), "{e}");
}

/// The metadata's `prefill` must name a program of the binary whose
/// symbols have a row per token; anything else is refused before a run.
#[test]
fn prefill_metadata_is_checked() {
    let t = tiny();
    let emb = EmbeddingTable::Q35(t.head.clone().expect("the tiny head is quantized"));
    let with = |tokens: u32, program: Option<Builder>| -> String {
        let mut m = meta(&t.golden);
        m.prefill = Some(q35_host::PrefillMeta {
            program: "prefill".into(),
            tokens,
            predicted_cycles: None,
        });
        // The binary() file, with a programs section when given one.
        let plain = binary(&m, &emb, None);
        let mut b = Builder::new("lpu-v1", [0; 32], "test");
        b.metadata(m.to_json());
        let (enc, rows, cols, data) = emb.section();
        b.embedding(enc, rows, cols, data);
        for s in plain.symbols() {
            b.symbol(s.clone());
        }
        if let Some(p) = program {
            b.program("prefill", p);
        }
        let bin = LpuBinary::from_bytes(b.to_bytes().expect("writes")).expect("opens");
        match Session::new(FakeDevice::new(&t.golden, &m), &bin) {
            Ok(_) => "bound".into(),
            Err(e) => e.to_string(),
        }
    };
    let m = meta(&t.golden);
    let padded = |n: u32| u64::from(n).div_ceil(320) * 320;
    let program = |x_rows: u64| {
        let mut p = Builder::new("lpu-v1", [0; 32], "test");
        p.queue(1, vec![0u64]);
        for s in [
            sym(
                "x_in",
                SymbolKind::Input,
                ElemType::F32,
                &[x_rows, padded(m.hidden)],
            ),
            sym("pos_idx", SymbolKind::Position, ElemType::U16, &[4, 320]),
            sym("kv_idx", SymbolKind::Position, ElemType::U16, &[4, 320]),
            sym(
                "attn_mask",
                SymbolKind::Input,
                ElemType::F32,
                &[4, padded(m.ctx)],
            ),
            sym(
                "logits",
                SymbolKind::Output,
                ElemType::F32,
                &[4, padded(m.vocab)],
            ),
        ] {
            p.symbol(s);
        }
        p
    };
    assert_eq!(with(4, Some(program(4))), "bound");
    let e = with(4, Some(program(3)));
    assert!(e.contains("prefill:x_in") && e.contains("[3, "), "{e}");
    let e = with(4, None);
    assert!(e.contains("no such program"), "{e}");
    let e = with(1, Some(program(4)));
    assert!(e.contains("prefill.tokens"), "{e}");
}

#[test]
fn decode_steps_run_on_the_smallest_bucket_above_their_position() {
    let t = tiny();
    let mut m = meta(&t.golden);
    m.buckets = [("decode.2", 2), ("decode.5", 5)]
        .iter()
        .map(|&(p, n)| q35_host::BucketMeta {
            program: p.into(),
            positions: n,
            predicted_cycles: Some(1),
        })
        .collect();
    let emb = EmbeddingTable::Q35(t.head.clone().expect("the tiny head is quantized"));
    let bin = binary_with(&m, &emb, None, &[("decode.2", true), ("decode.5", true)]);
    let options = GenerateOptions {
        max_tokens: 6,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
    };
    let prompt = [1u32, 17];
    let want = golden_generate(&t.golden, &prompt, &options);
    for on in [true, false] {
        let mut s = Session::new(FakeDevice::new(&t.golden, &m), &bin).expect("binds");
        s.set_buckets(on);
        let g = s.generate(&prompt, &options, |_| true).expect("generates");
        assert_eq!(g.tokens, want, "the same tokens on any program");
        let expect = |pos: usize| match (on, pos) {
            (false, _) => None,
            (true, 0..2) => Some("decode.2".to_string()),
            (true, 2..5) => Some("decode.5".to_string()),
            (true, _) => None,
        };
        let ran = &s.device().ran;
        assert_eq!(ran.len(), 7);
        for (pos, program) in ran {
            assert_eq!(*program, expect(*pos), "position {pos}");
        }
        for step in &g.steps {
            assert_eq!(
                step.bucket.map(|b| format!("decode.{b}")),
                expect(step.pos),
                "the step record names the program it ran"
            );
        }
        // The first program is selected again after every run.
        assert_eq!(s.device().program, None);
    }
    // A bucket the binary lacks, or one whose symbols differ, is refused.
    let missing = binary_with(&m, &emb, None, &[("decode.2", true)]);
    let e = Session::new(FakeDevice::new(&t.golden, &m), &missing).unwrap_err();
    assert!(
        e.to_string().contains("decode.5") && e.to_string().contains("no such program"),
        "{e}"
    );
    let differs = binary_with(&m, &emb, None, &[("decode.2", true), ("decode.5", false)]);
    let e = Session::new(FakeDevice::new(&t.golden, &m), &differs).unwrap_err();
    assert!(
        e.to_string().contains("decode.5") && e.to_string().contains("symbols differ"),
        "{e}"
    );
}
