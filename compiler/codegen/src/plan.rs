//! [`Plan`]: a decode step as the `lpu` dialect states it (buffers,
//! weights, one op per model op, in program order), in plain data, and its
//! compilation into a scheduled program ([`compile`]).
//!
//! The compiler's `lpu` MLIR module translates one to one into a `Plan`
//! (`q35_mlir::lpu`); [`decode_plan`] builds the same plan directly from an
//! architecture, which the code generator's own end-to-end tests use.

use std::collections::BTreeMap;
use std::ops::Range;

use q35_contract::{Architecture, QuantizedMatrix};
use q35_isa::{DType, Hemisphere, SymbolKind};
use q35_target::Target;

use crate::alloc::{AllocError, Buffer};
use crate::machine::Cycle;
use crate::program::{Built, LANES, ProgramBuilder};
use crate::sched::SchedError;

/// What a buffer is to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BufferKind {
    /// Written by the host before each step.
    Input,
    /// Read by the host after each step.
    Output,
    /// The KV cache, kept across steps.
    Kv,
    /// Constant contents from the binary (norm weights, RoPE tables).
    Const,
    /// Intermediate values.
    Scratch,
}

impl BufferKind {
    /// The spelling in the `lpu` dialect.
    pub fn name(self) -> &'static str {
        match self {
            BufferKind::Input => "input",
            BufferKind::Output => "output",
            BufferKind::Kv => "kv",
            BufferKind::Const => "const",
            BufferKind::Scratch => "scratch",
        }
    }

    /// From the `lpu` dialect spelling.
    pub fn from_name(s: &str) -> Option<BufferKind> {
        [
            BufferKind::Input,
            BufferKind::Output,
            BufferKind::Kv,
            BufferKind::Const,
            BufferKind::Scratch,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// A buffer of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferDecl {
    /// Symbol name.
    pub name: String,
    /// Kind.
    pub kind: BufferKind,
    /// Element type.
    pub dtype: DType,
    /// Shape (elements = product), outermost first.
    pub dims: Vec<u32>,
    /// Initial contents (element bits) for constants.
    pub init: Option<Vec<u32>>,
}

impl BufferDecl {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().map(|&d| u64::from(d)).product()
    }
}

/// One op of the plan; operands name buffers (or, for `weight`, a weight).
#[derive(Clone, Debug, PartialEq)]
pub enum PlanOp {
    /// `y = rmsnorm(x) * weight` over `n` elements.
    RmsNorm {
        /// Input.
        x: String,
        /// Norm weight (const).
        weight: String,
        /// Output.
        y: String,
        /// Elements.
        n: u32,
        /// Epsilon.
        eps: f32,
    },
    /// Activation quantization (docs/q35-format.md 8.1): `xs = x * (127 /
    /// amax)`, `scale = amax / 127` broadcast.
    Quantize {
        /// Input.
        x: String,
        /// Scaled activations (f32).
        xs: String,
        /// Scale (one word, every lane).
        scale: String,
        /// Elements.
        n: u32,
    },
    /// `y = W x` with the int8 activation of `xs`/`scale`.
    MatMul {
        /// Scaled activations.
        xs: String,
        /// Activation scale.
        scale: String,
        /// The weight.
        weight: String,
        /// Output (f32, `rows`).
        y: String,
        /// The output row the weight's row 0 writes (a multiple of 320: one
        /// piece of a matmul split by rows, whose pieces write their rows
        /// of the same output; 0 for a whole matmul).
        row0: u32,
    },
    /// RoPE on `heads` heads of `head_dim` at the step's position.
    Rope {
        /// Input.
        x: String,
        /// Output.
        y: String,
        /// Heads.
        heads: u32,
        /// Head dimension.
        head_dim: u32,
    },
    /// Stores the step's key and value into the cache.
    KvWrite {
        /// Key (after RoPE).
        k: String,
        /// Value.
        v: String,
        /// Key cache (transposed).
        kcache: String,
        /// Value cache.
        vcache: String,
        /// In a batched plan, the users it serves (`None`: every user):
        /// a system's split gives each user its own KV write and attention
        /// so that a batch's caches can spread over chips
        /// ([`crate::partition`]).
        users: Option<Range<u32>>,
    },
    /// Whole-context masked attention.
    Attention {
        /// Queries (after RoPE).
        q: String,
        /// Key cache.
        kcache: String,
        /// Value cache.
        vcache: String,
        /// Output.
        y: String,
        /// Query heads.
        heads: u32,
        /// Key/value heads.
        kv_heads: u32,
        /// Head dimension.
        head_dim: u32,
        /// Score scale, `1/sqrt(head_dim)`.
        scale: f32,
        /// The users it serves (`None`: every user), as
        /// [`PlanOp::KvWrite`]'s.
        users: Option<Range<u32>>,
    },
    /// `y = silu(gate) * up`.
    SwiGlu {
        /// Gate.
        gate: String,
        /// Up.
        up: String,
        /// Output.
        y: String,
        /// Elements.
        n: u32,
    },
    /// `y = a + b`.
    Add {
        /// Left.
        a: String,
        /// Right.
        b: String,
        /// Output.
        y: String,
        /// Elements.
        n: u32,
    },
    /// `y = M x` along lanes for a block-diagonal `M` (blocks of `block`
    /// channels, dividing the lanes) given as
    /// [`crate::kernels::mix::block_columns`] in the const `matrix`: the
    /// rotated stream's mix before the LM head (docs/q35-format.md 14.5).
    Mix {
        /// Input.
        x: String,
        /// The matrix, `block x words` lane words (const).
        matrix: String,
        /// Output.
        y: String,
        /// Elements.
        n: u32,
        /// The diagonal blocks' size.
        block: u32,
    },
    /// Sends the `n` f32 elements of `x` to chip `to` of the system (a
    /// pipeline stage's residual stream, docs/backend.md 8), or only the
    /// words of `words` (a tensor-parallel slice's rows of a matmul's
    /// output, in word ranges of the buffer).
    Send {
        /// The buffer sent.
        x: String,
        /// Elements.
        n: u32,
        /// The receiving chip.
        to: u32,
        /// The word ranges sent, in order (empty: every word).
        words: Vec<Range<u32>>,
    },
    /// Receives `n` f32 elements into `y` from chip `from` of the system
    /// (what its [`PlanOp::Send`] sent, vector for vector, into the same
    /// word ranges).
    Recv {
        /// The buffer written.
        y: String,
        /// Elements.
        n: u32,
        /// The sending chip.
        from: u32,
        /// The word ranges written, in order (empty: every word).
        words: Vec<Range<u32>>,
    },
}

impl PlanOp {
    /// Every buffer the op reads or writes, the implicit ones (the step's
    /// index vectors, mask and RoPE tables) included.
    pub fn buffers(&self) -> Vec<&str> {
        match self {
            PlanOp::RmsNorm { x, weight, y, .. } => vec![x, weight, y],
            PlanOp::Quantize { x, xs, scale, .. } => vec![x, xs, scale],
            PlanOp::MatMul { xs, scale, y, .. } => vec![xs, scale, y],
            PlanOp::Rope { x, y, .. } => vec![x, y, "pos_idx", "rope_cos", "rope_sin"],
            PlanOp::KvWrite {
                k,
                v,
                kcache,
                vcache,
                ..
            } => {
                vec![k, v, kcache, vcache, "kv_idx", "pos_idx"]
            }
            PlanOp::Attention {
                q,
                kcache,
                vcache,
                y,
                ..
            } => vec![q, kcache, vcache, y, "attn_mask"],
            PlanOp::SwiGlu { gate, up, y, .. } => vec![gate, up, y],
            PlanOp::Add { a, b, y, .. } => vec![a, b, y],
            PlanOp::Mix { x, matrix, y, .. } => vec![x, matrix, y],
            PlanOp::Send { x, .. } => vec![x],
            PlanOp::Recv { y, .. } => vec![y],
        }
    }

    /// The users of a batch it serves: `None` for every user (any op but a
    /// per-user [`PlanOp::KvWrite`] or [`PlanOp::Attention`]).
    pub fn users(&self) -> Option<&Range<u32>> {
        match self {
            PlanOp::KvWrite { users, .. } | PlanOp::Attention { users, .. } => users.as_ref(),
            _ => None,
        }
    }

    /// The op's name in the `lpu` dialect.
    pub fn name(&self) -> &'static str {
        match self {
            PlanOp::RmsNorm { .. } => "lpu.rmsnorm",
            PlanOp::Quantize { .. } => "lpu.quantize",
            PlanOp::MatMul { .. } => "lpu.matmul",
            PlanOp::Rope { .. } => "lpu.rope",
            PlanOp::KvWrite { .. } => "lpu.kv_write",
            PlanOp::Attention { .. } => "lpu.attention",
            PlanOp::SwiGlu { .. } => "lpu.swiglu",
            PlanOp::Add { .. } => "lpu.add",
            PlanOp::Mix { .. } => "lpu.mix",
            PlanOp::Send { .. } => "lpu.send",
            PlanOp::Recv { .. } => "lpu.recv",
        }
    }
}

/// A decode step.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Compiled context (positions the cache and tables hold).
    pub ctx: u32,
    /// Buffers, in declaration order.
    pub buffers: Vec<BufferDecl>,
    /// Weights by name.
    pub weights: BTreeMap<String, QuantizedMatrix>,
    /// Ops in program order, each with its source label.
    pub ops: Vec<(String, PlanOp)>,
    /// Users one step serves (1: one sequence). A batched plan
    /// ([`Plan::batched`]) has every per-token buffer widened to a row per
    /// user and every KV cache once per user ([`user_cache`]); its ops are
    /// one user's, naming the caches without a user.
    pub users: u32,
    /// Positions the attention ops read: the first `attend` of the cache
    /// (`None`: all `ctx`). A program compiled with `Some(n)` is a context
    /// bucket ([`compile_bucket`]): right for positions below `n` only,
    /// cheaper, and placed exactly as the whole-context program.
    pub attend: Option<u32>,
}

/// The name of user `k`'s copy of KV cache `cache` in a batched plan
/// (`kcache_3.u1`): a buffer of its own, so every user's cache has the
/// slices one user's has (a 70B block's K cache at context 2048 fills
/// whole slices).
pub fn user_cache(cache: &str, k: u32) -> String {
    format!("{cache}.u{k}")
}

/// A KV cache name without its user, and the user (`None`: one user's).
pub fn split_user(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once(".u") {
        Some((base, k)) => match k.parse() {
            Ok(k) => (base, Some(k)),
            Err(_) => (name, None),
        },
        None => (name, None),
    }
}

impl Plan {
    /// The declarations of buffer `name` as the ops name it: its own, or in
    /// a batch every user's copy of a KV cache ([`user_cache`]).
    pub fn decls<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a BufferDecl> + 'a {
        self.buffers
            .iter()
            .filter(move |b| split_user(&b.name).0 == name)
    }

    /// This one-user plan for a batch of `users`: every input, output and
    /// intermediate buffer a row of whole words per user (dims `[users,
    /// words * 320]`), every KV cache a buffer per user ([`user_cache`],
    /// one user's shape), so a system's cut balances the batch's caches
    /// and each stage compiles as a batch ([`compile_batch`]).
    pub fn batched(&self, users: u32) -> Result<Plan, CodegenError> {
        if self.users != 1 || users == 0 {
            return Err(CodegenError::Plan {
                op: "program".into(),
                message: format!(
                    "a batch of {users} users from a plan of {} users",
                    self.users
                ),
            });
        }
        if users == 1 {
            return Ok(self.clone());
        }
        let mut wide = widen(self, users);
        wide.buffers = wide
            .buffers
            .into_iter()
            .flat_map(|b| {
                let copies = if b.kind == BufferKind::Kv { users } else { 1 };
                (0..copies).map(move |k| BufferDecl {
                    name: if copies == 1 {
                        b.name.clone()
                    } else {
                        user_cache(&b.name, k)
                    },
                    ..b.clone()
                })
            })
            .collect();
        wide.users = users;
        Ok(wide)
    }
}

/// Compilation failed.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The model does not fit in MEM.
    #[error("the model does not fit on one chip: {0}")]
    Alloc(#[from] AllocError),
    /// A kernel could not be scheduled.
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// The plan is inconsistent (an unknown buffer, a shape the backend
    /// does not handle).
    #[error("{op}: {message}")]
    Plan {
        /// The op (or buffer).
        op: String,
        /// What is wrong.
        message: String,
    },
    /// A transfer waited for a chip of its tensor-parallel group whose
    /// compile failed ([`Mailbox::wait`]): that chip's error is the one to
    /// report.
    #[error("{op}: chip {chip} of the tensor-parallel group failed to compile")]
    PeerFailed {
        /// The transfer.
        op: String,
        /// The chip that failed.
        chip: u32,
    },
}

/// Words a vector of `n` elements takes in each of its slices.
pub fn words(n: u64) -> u32 {
    u32::try_from(n.div_ceil(u64::from(LANES)).max(1)).unwrap_or(u32::MAX)
}

/// The name of a rotated model's head mix in [`decode_plan`]'s `norms`.
pub const OUTPUT_MIX: &str = "output_mix";

/// The standard decode plan of a LLaMA-family architecture with the
/// quantized matrices `weights` (named `blk.<b>.attn_q` ..., `output`) and
/// norm vectors (`blk.<b>.attn_norm`, `blk.<b>.ffn_norm`, `output_norm`);
/// with [`OUTPUT_MIX`] in `norms` (a rotated model's `hidden x hidden`
/// head mix, row-major) the final norm's output is mixed by it
/// ([`PlanOp::Mix`]) before the LM head.
pub fn decode_plan(
    arch: &Architecture,
    ctx: u32,
    weights: BTreeMap<String, QuantizedMatrix>,
    norms: &BTreeMap<String, Vec<f32>>,
    rope: &q35_contract::rope::RopeTable,
) -> Result<Plan, CodegenError> {
    let (d, hd) = (arch.hidden, arch.head_dim);
    let (qd, kvd) = (arch.heads * hd, arch.kv_heads * hd);
    let w = words(u64::from(ctx));
    let wv = words(u64::from(kvd));
    let mut buffers = Vec::new();
    let mut buf = |name: &str, kind: BufferKind, dtype: DType, dims: Vec<u32>, init| {
        buffers.push(BufferDecl {
            name: name.to_string(),
            kind,
            dtype,
            dims,
            init,
        });
    };
    use BufferKind::{Const, Input, Kv, Output, Scratch};
    buf("x_in", Input, DType::F32, vec![d], None);
    buf("pos_idx", Input, DType::U16, vec![LANES], None);
    buf("kv_idx", Input, DType::U16, vec![LANES], None);
    buf("attn_mask", Input, DType::F32, vec![ctx], None);
    buf("logits", Output, DType::F32, vec![arch.vocab], None);
    let tables =
        crate::kernels::rope::rope_tables(rope, hd as usize, ctx as usize).map_err(|e| {
            CodegenError::Plan {
                op: "rope tables".into(),
                message: e.to_string(),
            }
        })?;
    // One row per (table word, position), word-major (kernels::rope).
    let rows = tables.words as u32 * ctx;
    buf(
        "rope_cos",
        Const,
        DType::F32,
        vec![rows, LANES],
        Some(tables.cos),
    );
    buf(
        "rope_sin",
        Const,
        DType::F32,
        vec![rows, LANES],
        Some(tables.sin),
    );
    let norm = |name: &str| {
        norms.get(name).cloned().ok_or_else(|| CodegenError::Plan {
            op: name.to_string(),
            message: "no norm weight given".into(),
        })
    };
    let bits = |v: Vec<f32>| Some(v.into_iter().map(f32::to_bits).collect::<Vec<_>>());
    for b in 0..arch.blocks {
        buf(
            &format!("kcache_{b}"),
            Kv,
            DType::F32,
            vec![kvd, (w + 1) * LANES],
            None,
        );
        buf(
            &format!("vcache_{b}"),
            Kv,
            DType::F32,
            vec![ctx, wv * LANES],
            None,
        );
        buf(
            &format!("blk.{b}.attn_norm"),
            Const,
            DType::F32,
            vec![d],
            bits(norm(&format!("blk.{b}.attn_norm"))?),
        );
        buf(
            &format!("blk.{b}.ffn_norm"),
            Const,
            DType::F32,
            vec![d],
            bits(norm(&format!("blk.{b}.ffn_norm"))?),
        );
    }
    buf(
        "output_norm",
        Const,
        DType::F32,
        vec![d],
        bits(norm("output_norm")?),
    );
    for (name, n) in [
        ("x", d),
        ("h", d),
        ("xs", d.max(qd).max(arch.ffn)),
        ("scale", LANES),
        ("q", qd),
        ("k", kvd),
        ("v", kvd),
        ("qr", qd),
        ("kr", kvd),
        ("att", qd),
        ("o", d),
        ("gate", arch.ffn),
        ("up", arch.ffn),
        ("act", arch.ffn),
    ] {
        buf(name, Scratch, DType::F32, vec![n], None);
    }
    let mut ops = Vec::new();
    let s = |x: &str| x.to_string();
    let mut residual = s("x_in");
    for b in 0..arch.blocks {
        let l = |x: &str| format!("blk.{b}.{x}");
        let mm = |ops: &mut Vec<(String, PlanOp)>, w: &str, y: &str| {
            ops.push((
                l(w),
                PlanOp::MatMul {
                    xs: s("xs"),
                    scale: s("scale"),
                    weight: l(w),
                    y: s(y),
                    row0: 0,
                },
            ));
        };
        ops.push((
            l("attn_norm"),
            PlanOp::RmsNorm {
                x: residual.clone(),
                weight: l("attn_norm"),
                y: s("h"),
                n: d,
                eps: arch.norm_eps,
            },
        ));
        ops.push((
            l("attn_quantize"),
            PlanOp::Quantize {
                x: s("h"),
                xs: s("xs"),
                scale: s("scale"),
                n: d,
            },
        ));
        mm(&mut ops, "attn_q", "q");
        mm(&mut ops, "attn_k", "k");
        mm(&mut ops, "attn_v", "v");
        ops.push((
            l("rope_q"),
            PlanOp::Rope {
                x: s("q"),
                y: s("qr"),
                heads: arch.heads,
                head_dim: hd,
            },
        ));
        ops.push((
            l("rope_k"),
            PlanOp::Rope {
                x: s("k"),
                y: s("kr"),
                heads: arch.kv_heads,
                head_dim: hd,
            },
        ));
        ops.push((
            l("kv_write"),
            PlanOp::KvWrite {
                k: s("kr"),
                v: s("v"),
                kcache: format!("kcache_{b}"),
                vcache: format!("vcache_{b}"),
                users: None,
            },
        ));
        ops.push((
            l("attention"),
            PlanOp::Attention {
                q: s("qr"),
                kcache: format!("kcache_{b}"),
                vcache: format!("vcache_{b}"),
                y: s("att"),
                heads: arch.heads,
                kv_heads: arch.kv_heads,
                head_dim: hd,
                scale: 1.0f32 / (hd as f32).sqrt(),
                users: None,
            },
        ));
        ops.push((
            l("attn_output_quantize"),
            PlanOp::Quantize {
                x: s("att"),
                xs: s("xs"),
                scale: s("scale"),
                n: qd,
            },
        ));
        mm(&mut ops, "attn_output", "o");
        ops.push((
            l("attn_residual"),
            PlanOp::Add {
                a: residual.clone(),
                b: s("o"),
                y: s("x"),
                n: d,
            },
        ));
        residual = s("x");
        ops.push((
            l("ffn_norm"),
            PlanOp::RmsNorm {
                x: s("x"),
                weight: l("ffn_norm"),
                y: s("h"),
                n: d,
                eps: arch.norm_eps,
            },
        ));
        ops.push((
            l("ffn_quantize"),
            PlanOp::Quantize {
                x: s("h"),
                xs: s("xs"),
                scale: s("scale"),
                n: d,
            },
        ));
        mm(&mut ops, "ffn_gate", "gate");
        mm(&mut ops, "ffn_up", "up");
        ops.push((
            l("ffn_swiglu"),
            PlanOp::SwiGlu {
                gate: s("gate"),
                up: s("up"),
                y: s("act"),
                n: arch.ffn,
            },
        ));
        ops.push((
            l("ffn_down_quantize"),
            PlanOp::Quantize {
                x: s("act"),
                xs: s("xs"),
                scale: s("scale"),
                n: arch.ffn,
            },
        ));
        mm(&mut ops, "ffn_down", "o");
        ops.push((
            l("ffn_residual"),
            PlanOp::Add {
                a: s("x"),
                b: s("o"),
                y: s("x"),
                n: d,
            },
        ));
    }
    ops.push((
        s("output_norm"),
        PlanOp::RmsNorm {
            x: residual,
            weight: s("output_norm"),
            y: s("h"),
            n: d,
            eps: arch.norm_eps,
        },
    ));
    // A rotated model's head mix (norms["output_mix"], `d x d`): the final
    // norm's output mixed into `hm` in blocks of the rotation's size.
    let head_in = match norms.get(OUTPUT_MIX) {
        Some(mix) => {
            let block = (1u32 << d.trailing_zeros()).min(512);
            let table =
                crate::kernels::mix::block_columns(mix, d as usize, block as usize, LANES as usize)
                    .map_err(|message| CodegenError::Plan {
                        op: OUTPUT_MIX.into(),
                        message,
                    })?;
            buffers.push(BufferDecl {
                name: OUTPUT_MIX.into(),
                kind: Const,
                dtype: DType::F32,
                dims: vec![block, words(u64::from(d)), LANES],
                init: bits(table),
            });
            buffers.push(BufferDecl {
                name: "hm".into(),
                kind: Scratch,
                dtype: DType::F32,
                dims: vec![d],
                init: None,
            });
            ops.push((
                s(OUTPUT_MIX),
                PlanOp::Mix {
                    x: s("h"),
                    matrix: s(OUTPUT_MIX),
                    y: s("hm"),
                    n: d,
                    block,
                },
            ));
            s("hm")
        }
        None => s("h"),
    };
    ops.push((
        s("output_quantize"),
        PlanOp::Quantize {
            x: head_in,
            xs: s("xs"),
            scale: s("scale"),
            n: d,
        },
    ));
    ops.push((
        s("output"),
        PlanOp::MatMul {
            xs: s("xs"),
            scale: s("scale"),
            weight: s("output"),
            y: s("logits"),
            row0: 0,
        },
    ));
    Ok(Plan {
        ctx,
        buffers,
        weights,
        ops,
        users: 1,
        attend: None,
    })
}

/// A compiled plan.
#[derive(Debug)]
pub struct Compiled {
    /// The program, predicted cycles, debug map.
    pub built: Built,
    /// Where every buffer went.
    pub placement: BTreeMap<String, Buffer>,
    /// Each op's first and last cycle, in program order (an RMSNorm and
    /// the quantize of its output run as one fused kernel: both get its
    /// span).
    pub op_cycles: Vec<(String, Cycle, Cycle)>,
    /// Bytes of MEM used (by this program and those compiled before it).
    pub mem_bytes: u64,
    /// What later programs of the same binary share ([`compile_after`]).
    pub shared: Shared,
    /// A stage of a system ([`crate::partition`]): per receiving chip, the
    /// issue cycle of every vector sent to it, in order (empty for one
    /// chip).
    pub sent: BTreeMap<u32, Vec<Cycle>>,
    /// Per sending chip, the issue cycle of every `recv` of its vectors,
    /// in order.
    pub received: BTreeMap<u32, Vec<Cycle>>,
    /// Kernel scratch is shared between kernel calls
    /// ([`ProgramBuilder::set_reuse`]): always in a later program, and in a
    /// batched program whose users' own scratch did not fit
    /// ([`compile_batch`]).
    pub scratch_shared: bool,
}

/// Where a stage's program sits in a system (docs/backend.md 8): its chip,
/// the links, and when the vectors it receives arrive.
#[derive(Clone, Debug)]
pub struct Links {
    /// This program's chip.
    pub chip: u32,
    /// The system's links (`Target::system`).
    pub topology: q35_target::SystemTopology,
    /// Per sending chip, the cycle each of its vectors arrives here (the
    /// sender's `send` cycles plus the route's latency), in order.
    pub arrivals: BTreeMap<u32, Vec<Cycle>>,
    /// Vectors of other chips' routes this chip forwards: `(cycle, link
    /// it arrives on, link it leaves on)`, each `fwd` on its arrival cycle
    /// (scheduled before the chip's own work, which fits around them).
    pub forwards: Vec<(Cycle, u16, u16)>,
    /// The chips compiled beside this one (a tensor-parallel group,
    /// [`crate::partition`]), whose vectors' arrivals are learnt from it as
    /// they are scheduled rather than from `arrivals`.
    pub mailbox: Option<std::sync::Arc<Mailbox>>,
}

/// Where the chips of a tensor-parallel group, compiled at the same time
/// on threads of their own, post the arrival cycles of the vectors they
/// send each other (docs/backend.md 10). A chip's `recv` waits until the
/// sender has scheduled the vectors it takes; the group's transfers follow
/// the order of the unsplit plan's ops, so every wait ends. A chip whose
/// compile fails wakes every waiter with an error.
#[derive(Debug, Default)]
pub struct Mailbox {
    members: std::collections::BTreeSet<u32>,
    state: std::sync::Mutex<MailState>,
    ready: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct MailState {
    /// `(from, to)` -> arrival cycle of every vector sent so far.
    sent: BTreeMap<(u32, u32), Vec<Cycle>>,
    /// Chips whose compile ended (`true`: with an error).
    ended: BTreeMap<u32, bool>,
}

impl Mailbox {
    /// A mailbox of the chips `members`.
    pub fn new(members: impl IntoIterator<Item = u32>) -> Mailbox {
        Mailbox {
            members: members.into_iter().collect(),
            ..Mailbox::default()
        }
    }

    /// Whether `chip` is compiled beside the others.
    pub fn member(&self, chip: u32) -> bool {
        self.members.contains(&chip)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailState> {
        // A poisoned lock means a compiling thread panicked; its data
        // (append-only lists) is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chip `from` scheduled vectors to `to` arriving on `arrivals`.
    pub fn post(&self, from: u32, to: u32, arrivals: &[Cycle]) {
        self.lock()
            .sent
            .entry((from, to))
            .or_default()
            .extend_from_slice(arrivals);
        self.ready.notify_all();
    }

    /// Chip `chip`'s compile ended, with an error if `failed`.
    pub fn end(&self, chip: u32, failed: bool) {
        self.lock().ended.insert(chip, failed);
        self.ready.notify_all();
    }

    /// The arrivals of the first `need` vectors `from` sends `to` (all it
    /// sent when it ends with fewer), waiting for them to be scheduled;
    /// `Err(chip)` when a chip of the group failed first.
    pub fn wait(&self, from: u32, to: u32, need: usize) -> Result<Vec<Cycle>, u32> {
        let mut st = self.lock();
        loop {
            let have = st.sent.get(&(from, to)).map_or(0, Vec::len);
            if have >= need || st.ended.get(&from) == Some(&false) {
                return Ok(st.sent.get(&(from, to)).cloned().unwrap_or_default());
            }
            if let Some((&chip, _)) = st.ended.iter().find(|(_, failed)| **failed) {
                return Err(chip);
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every vector `from` sent `to`.
    pub fn sent(&self, from: u32, to: u32) -> Vec<Cycle> {
        self.lock()
            .sent
            .get(&(from, to))
            .cloned()
            .unwrap_or_default()
    }
}

impl Links {
    /// The route from chip `from` to chip `to`: one link hop inside a
    /// node, up to three between nodes (`SystemTopology::route`; the
    /// chips between forward, [`crate::partition::compile_system_with`]).
    pub fn route(
        &self,
        from: u32,
        to: u32,
        op: &str,
    ) -> Result<Vec<q35_target::Hop>, CodegenError> {
        let route = self
            .topology
            .route(from, to)
            .map_err(|e| CodegenError::Plan {
                op: op.to_string(),
                message: e.to_string(),
            })?;
        if route.is_empty() {
            return Err(CodegenError::Plan {
                op: op.to_string(),
                message: format!("a transfer from chip {from} to itself"),
            });
        }
        Ok(route)
    }
}

/// What a compiled program leaves for the programs compiled after it in the
/// same binary ([`compile_after`]): the allocator's state (they allocate
/// past everything it placed, so no program's scratch or constants
/// overlap another's), the shared buffers (KV caches, constants) and
/// weight images where they lie, and the tables those weights refer to.
#[derive(Debug, Clone)]
pub struct Shared {
    alloc: crate::alloc::Alloc,
    buffers: BTreeMap<String, Buffer>,
    weights: BTreeMap<String, crate::kernels::matmul::PlacedWeight>,
    tables: Vec<q35_isa::Table>,
}

/// The hemisphere of a buffer: the KV caches alternate by block
/// ([`kv_hemisphere`]), the RoPE tables west, the step's index vectors and
/// mask east (the KV-write and RoPE kernels read an index on the other side
/// of the words it addresses), a rotated model's head mix matrix east
/// (placed last, in the west it took the room a prefill chunk's attention
/// scratch needs: docs/q35-format.md 14.5), the rest alternating to spread
/// stream traffic.
fn hemisphere(b: &BufferDecl, i: usize) -> Hemisphere {
    match (b.kind, b.name.as_str()) {
        (BufferKind::Kv, name) => kv_hemisphere(name),
        (_, "rope_cos" | "rope_sin") => Hemisphere::West,
        (_, "pos_idx" | "kv_idx" | "attn_mask") => Hemisphere::East,
        (BufferKind::Const, OUTPUT_MIX) => Hemisphere::East,
        _ if i.is_multiple_of(2) => Hemisphere::West,
        _ => Hemisphere::East,
    }
}

/// The hemisphere of a KV cache buffer: block `b`'s caches (`kcache_<b>`,
/// `vcache_<b>`) go west for even `b` and east for odd `b`, so the caches,
/// which grow with the context, fill both halves of MEM beside the planes'
/// weights (each half holds the weights of its two planes). A cache on the
/// east side is written through west copies of the step's index vectors
/// ([`compile`] makes them).
fn kv_hemisphere(name: &str) -> Hemisphere {
    // A batch's users alternate too (user `k` of block `b` by `b + k`).
    let (base, user) = split_user(name);
    let block = base
        .rsplit('_')
        .next()
        .and_then(|b| b.parse::<u32>().ok())
        .unwrap_or(0);
    if (block + user.unwrap_or(0)).is_multiple_of(2) {
        Hemisphere::West
    } else {
        Hemisphere::East
    }
}

/// Where every buffer of `plan` goes (what `--lpu-place` records): the
/// first thing [`compile`] does, so the two always agree.
pub fn placement(plan: &Plan, target: &Target) -> Result<BTreeMap<String, Buffer>, CodegenError> {
    place_buffers(plan, &mut ProgramBuilder::new(target), None)
}

/// Places the plan's buffers (an op's operands never share a slice; the
/// hemisphere rule of [`hemisphere`]), sets their initial contents and
/// declares the host's symbols.
///
/// With `shared` (a later program of the same binary) the buffers that are
/// not per token ([`per_token`]) are where `shared` has them, their
/// contents already set; only their symbols are declared again.
fn place_buffers(
    plan: &Plan,
    p: &mut ProgramBuilder,
    shared: Option<&BTreeMap<String, Buffer>>,
) -> Result<BTreeMap<String, Buffer>, CodegenError> {
    let mut placement: BTreeMap<String, Buffer> = BTreeMap::new();
    // Buffers one op uses together never share a slice.
    let mut partners: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, (_, op)) in plan.ops.iter().enumerate() {
        let mut bufs = op.buffers();
        // An RMSNorm and the quantize of its output run as one kernel.
        if let (PlanOp::RmsNorm { y, .. }, Some((_, next @ PlanOp::Quantize { x, .. }))) =
            (op, plan.ops.get(i + 1))
            && x == y
        {
            bufs.extend(next.buffers());
        }
        for &a in &bufs {
            partners
                .entry(a)
                .or_default()
                .extend(bufs.iter().copied().filter(|&b| b != a));
        }
    }
    // A later program's shared buffers are where they are: known from the
    // start, so every new buffer avoids its shared partners too.
    if let Some(sh) = shared {
        for b in plan.buffers.iter().filter(|b| !per_token(b)) {
            if let Some(buf) = sh.get(&b.name) {
                placement.insert(b.name.clone(), buf.clone());
            }
        }
    }
    for (i, b) in plan.buffers.iter().enumerate() {
        let h = hemisphere(b, i);
        // In a batch a user's cache avoids its own user's partner caches;
        // any other buffer every user's.
        let (base, user) = split_user(&b.name);
        let avoid: Vec<&Buffer> = partners
            .get(base)
            .into_iter()
            .flatten()
            .flat_map(|n| match placement.get(*n) {
                Some(x) => vec![x],
                None => match user {
                    Some(k) => placement.get(&user_cache(n, k)).into_iter().collect(),
                    None => (0..plan.users)
                        .filter_map(|k| placement.get(&user_cache(n, k)))
                        .collect(),
                },
            })
            .collect();
        p.set_avoid(&avoid);
        let buf = match shared.and_then(|s| s.get(&b.name)) {
            Some(buf) if !per_token(b) => buf.clone(),
            _ => {
                let buf = p.buffer(&b.name, b.dtype, b.elements(), h)?;
                if let Some(init) = &b.init {
                    p.init(&buf, b.dtype, init.clone());
                }
                buf
            }
        };
        let kind = match b.kind {
            BufferKind::Input if b.name == "pos_idx" => Some(SymbolKind::Position),
            BufferKind::Input => Some(SymbolKind::Input),
            BufferKind::Output => Some(SymbolKind::Output),
            BufferKind::Kv => Some(SymbolKind::KvCache),
            BufferKind::Const | BufferKind::Scratch => None,
        };
        if let Some(kind) = kind {
            p.symbol(&b.name, kind, b.dtype, b.dims.clone(), &buf);
        }
        placement.insert(b.name.clone(), buf);
    }
    Ok(placement)
}

/// Places the images of `plan`'s weights (with their scratch), after its
/// buffers (`placement`): each avoids the slices of the operands of the
/// matmuls that read it. A later program (`base`) takes the images where
/// `base` has them and only places scratch, the products in `pools` but
/// the LM head's.
fn place_weights(
    plan: &Plan,
    p: &mut ProgramBuilder,
    placement: &BTreeMap<String, Buffer>,
    tokens: u32,
    base: Option<&Shared>,
    pools: &[Buffer],
) -> Result<BTreeMap<String, crate::kernels::matmul::PlacedWeight>, CodegenError> {
    let mut weights = BTreeMap::new();
    for (name, m) in &plan.weights {
        // The operands of the matmuls that read this weight.
        let mm_bufs: Vec<&Buffer> = plan
            .ops
            .iter()
            .filter(|(_, op)| matches!(op, PlanOp::MatMul { weight, .. } if weight == name))
            .flat_map(|(_, op)| op.buffers())
            .filter_map(|n| placement.get(n))
            .collect();
        p.set_avoid(&mm_bufs);
        // In rotation: weight i tries pool i % POOLS first.
        let pool: Vec<&Buffer> = if is_head(name) {
            Vec::new()
        } else {
            (0..pools.len())
                .map(|j| &pools[(weights.len() + j) % pools.len()])
                .collect()
        };
        let placed = match base.and_then(|b| b.weights.get(name)) {
            Some(w) => crate::kernels::matmul::with_scratch(p, w, tokens, &pool),
            None => crate::kernels::matmul::place_weight_tokens(p, name, m, &[0, 1, 2, 3], tokens),
        }
        .map_err(|e| match e {
            crate::kernels::matmul::PlaceError::Alloc(a) => CodegenError::Alloc(a),
            other => CodegenError::Plan {
                op: name.clone(),
                message: other.to_string(),
            },
        })?;
        weights.insert(name.clone(), placed);
    }
    Ok(weights)
}

/// Places the west copies of the step's index vectors a plan with a KV
/// cache in the east needs (a scatter's index must come from the other
/// side of the cache): per copy the index's name, its buffer and the copy.
fn place_index_mirrors(
    plan: &Plan,
    p: &mut ProgramBuilder,
    placement: &BTreeMap<String, Buffer>,
) -> Result<Vec<(&'static str, Buffer, Buffer)>, CodegenError> {
    let east_cache = plan.buffers.iter().any(|b| {
        b.kind == BufferKind::Kv
            && placement.get(&b.name).and_then(Buffer::hemisphere) == Some(Hemisphere::East)
    });
    let mut out = Vec::new();
    if !east_cache {
        return Ok(out);
    }
    for name in ["pos_idx", "kv_idx"] {
        let unknown = || CodegenError::Plan {
            op: "index copies".into(),
            message: format!("unknown buffer `{name}`"),
        };
        let src = placement.get(name).cloned().ok_or_else(unknown)?;
        if src.hemisphere() != Some(Hemisphere::East) {
            continue;
        }
        let decl = plan
            .buffers
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(unknown)?;
        let dst = p.buffer(
            &format!("{name}.west"),
            decl.dtype,
            decl.elements(),
            Hemisphere::West,
        )?;
        out.push((name, src, dst));
    }
    Ok(out)
}

/// MEM bytes one chip's program of `plan` places before its first kernel
/// runs, by the same code [`compile`] starts with: every buffer, every
/// weight's image with its scratch, the index copies; or the
/// [`CodegenError::Alloc`] placement meets. It does not schedule anything,
/// so it costs a small part of a compile (the pipeline split's feasibility
/// check, [`crate::partition::fit`]); the kernels' own scratch (attention,
/// reductions), placed while they are scheduled, is not in it, so a plan
/// this accepts can still fail to compile when MEM is nearly full.
pub fn placed_bytes(plan: &Plan, target: &Target) -> Result<u64, CodegenError> {
    let mut p = ProgramBuilder::new(target);
    p.set_weight_images(false);
    let placement = place_buffers(plan, &mut p, None)?;
    place_weights(plan, &mut p, &placement, plan.users.max(1), None, &[])?;
    place_index_mirrors(plan, &mut p, &placement)?;
    Ok(p.alloc.used_bytes())
}

/// Places every buffer and weight, runs every op's kernel in program
/// order, and returns the program.
pub fn compile(plan: &Plan, target: &Target) -> Result<Compiled, CodegenError> {
    compile_tokens(plan, target, 1)
}

/// [`compile_tokens`] for a further program of the binary `before` belongs
/// to (docs/lpubin.md 3.9): it reads the same weight images, KV caches and
/// constants where `before` placed them, and places its own buffers,
/// weight scratch and kernel constants past everything `before` (and the
/// programs before it) placed, so the programs never overwrite each
/// other's MEM. Its `built.program.mem` holds only its own initial
/// contents.
pub fn compile_after(
    plan: &Plan,
    target: &Target,
    tokens: u32,
    before: &Compiled,
) -> Result<Compiled, CodegenError> {
    compile_program(plan, target, tokens, Some(&before.shared), None)
}

/// A context bucket of `plan`'s decode program: the same step with the
/// attention ops reading the first `attend` positions of the caches only
/// (docs/backend.md 1.2), right for steps at positions below `attend`.
/// Attention's cost grows with the positions it reads, so a step early in
/// a sequence runs in fewer cycles on it.
///
/// The bucket is compiled from scratch like `main` (the whole-context
/// program of the same plan) and places every buffer, weight image,
/// constant and kernel scratch where `main` does (the attention kernel
/// sizes its buffers for the whole context whatever it reads), so the
/// binary's one MEM image serves both and the host switches programs
/// between steps with nothing to move. That is checked here: an
/// initial-MEM entry, symbol or placement that differs from `main`'s is an
/// error, not a second image.
pub fn compile_bucket(
    plan: &Plan,
    target: &Target,
    attend: u32,
    main: &Compiled,
) -> Result<Compiled, CodegenError> {
    let bucket_err = |message: String| CodegenError::Plan {
        op: format!("the decode program for positions below {attend}"),
        message,
    };
    if attend == 0 || attend >= plan.ctx {
        return Err(bucket_err(format!(
            "a context bucket must be 1..{} (below the compiled context)",
            plan.ctx
        )));
    }
    let mut bucket_plan = plan.clone();
    bucket_plan.attend = Some(attend);
    let c = compile(&bucket_plan, target)?;
    drop(bucket_plan);
    let (a, b) = (&main.built.program, &c.built.program);
    let what = if a.mem != b.mem {
        Some("its initial MEM contents")
    } else if a.symbols != b.symbols {
        Some("its symbols")
    } else if main.placement != c.placement {
        Some("its buffers' placement")
    } else if main.mem_bytes != c.mem_bytes {
        Some("the MEM it uses")
    } else {
        None
    };
    match what {
        Some(what) => Err(bucket_err(format!(
            "{what} differ from the whole-context program's, so the two cannot share one MEM image (a code generator bug)"
        ))),
        None => Ok(c),
    }
}

/// Products pools of a later program ([`compile_after`]).
const POOLS: usize = 8;

/// Whether weight `name` is the LM head (its products scratch, the largest
/// by far, is its own).
fn is_head(name: &str) -> bool {
    name == "output" || name == "token_embd"
}

/// Whether buffer `b` has one copy per token in a many-token program (the
/// step's inputs, outputs and intermediates do; the KV caches and the
/// constants are shared).
fn per_token(b: &BufferDecl) -> bool {
    matches!(
        b.kind,
        BufferKind::Input | BufferKind::Output | BufferKind::Scratch
    )
}

/// `plan` with every per-token buffer ([`per_token`]) made `tokens` rows of
/// whole words: dims `[tokens, words(n) * 320]`, row `k` token `k`'s.
fn widen(plan: &Plan, tokens: u32) -> Plan {
    let mut wide = plan.clone();
    for b in &mut wide.buffers {
        if per_token(b) {
            b.dims = vec![tokens, words(b.elements()) * LANES];
        }
    }
    wide
}

/// [`compile`] for `tokens` consecutive tokens of one sequence at once (a
/// prefill chunk): token `k` is at position `pos + k`; every input, output
/// and intermediate buffer has a row per token (dims `[tokens, words *
/// 320]`: `x_in`, `pos_idx`, `kv_idx`, `attn_mask` and `logits` row `k` are
/// token `k`'s, filled by the host as for one token at its position), the
/// KV caches and constants are shared. Ops run in program order, each over
/// every token: the matmuls stream all tokens through each installed tile
/// ([`crate::kernels::matmul::matmul_tokens`]), the other kernels run once
/// per token and the scheduler interleaves the tokens' independent chains.
/// Every key and value is written before any attention reads the cache,
/// and token `k`'s mask admits positions up to `pos + k`, so each token's
/// attention is exactly its own decode step's. `tokens = 1` is [`compile`].
pub fn compile_tokens(plan: &Plan, target: &Target, tokens: u32) -> Result<Compiled, CodegenError> {
    compile_program(plan, target, tokens, None, None)
}

/// [`compile`] for a decode step of `users` sequences at once (batched
/// decode): row `k` of every input, output and intermediate buffer is user
/// `k`'s token, and every KV cache has a buffer per user ([`user_cache`]:
/// `kcache_<b>.u<k>`, one user's layout), so user `k`'s step reads and
/// writes its own caches only, at its own position (the host fills its
/// `pos_idx`, `kv_idx` and `attn_mask` rows as for one token). The
/// matmuls stream every user's activations through each installed tile,
/// as a prefill chunk's tokens ([`compile_tokens`]); every other kernel
/// runs once per user. `users = 1` is [`compile`].
pub fn compile_batch(plan: &Plan, target: &Target, users: u32) -> Result<Compiled, CodegenError> {
    compile(&plan.batched(users)?, target)
}

/// [`compile`] for one stage of a system (a plan with [`PlanOp::Send`] and
/// [`PlanOp::Recv`], [`crate::partition`]): its transfers go over the links
/// of `links`, each `recv` placed on or after its vector's arrival.
pub fn compile_stage(
    plan: &Plan,
    target: &Target,
    links: &Links,
) -> Result<Compiled, CodegenError> {
    compile_stage_with(plan, target, links, true)
}

/// [`compile_stage`], with the weights' images in the program's MEM
/// contents or (`weight_images` false: a timing-only program of
/// placeholder weights) without.
pub fn compile_stage_with(
    plan: &Plan,
    target: &Target,
    links: &Links,
    weight_images: bool,
) -> Result<Compiled, CodegenError> {
    compile_program_with(plan, target, 1, None, Some(links), weight_images)
}

fn compile_program(
    plan: &Plan,
    target: &Target,
    tokens: u32,
    base: Option<&Shared>,
    links: Option<&Links>,
) -> Result<Compiled, CodegenError> {
    compile_program_with(plan, target, tokens, base, links, true)
}

/// The program of `tokens` consecutive tokens of one sequence (a prefill
/// chunk when more than one), or of a batched plan's users (one token
/// each; `tokens` 1).
///
/// A batched program whose MEM does not hold every user's own kernel
/// scratch (each user's attention scratch, block by block) is compiled
/// again with that scratch shared between calls, as a later program's is
/// ([`ProgramBuilder::set_reuse`]): less MEM, for some overlap between the
/// users' kernels. SmolLM2 at context 64 with 4 users fits only so.
fn compile_program_with(
    plan: &Plan,
    target: &Target,
    tokens: u32,
    base: Option<&Shared>,
    links: Option<&Links>,
    weight_images: bool,
) -> Result<Compiled, CodegenError> {
    // A tensor-parallel group's chips post their sends to each other as
    // they are scheduled, so a chip cannot compile twice: a batch there
    // shares its kernel scratch from the start.
    if plan.users > 1 && links.is_some_and(|l| l.mailbox.is_some()) {
        return compile_program_reusing(plan, target, tokens, base, links, weight_images, true);
    }
    let first = compile_program_reusing(plan, target, tokens, base, links, weight_images, false);
    match first {
        // Only kernel scratch is shared: a buffer or weight that did not
        // fit would not fit again.
        Err(CodegenError::Sched(SchedError::Mem { .. })) if plan.users > 1 && base.is_none() => {
            compile_program_reusing(plan, target, tokens, base, links, weight_images, true)
        }
        other => other,
    }
}

/// [`compile_program_with`], the kernels' scratch shared between calls
/// when `reuse` (always for a later program).
fn compile_program_reusing(
    plan: &Plan,
    target: &Target,
    tokens: u32,
    base: Option<&Shared>,
    links: Option<&Links>,
    weight_images: bool,
    reuse: bool,
) -> Result<Compiled, CodegenError> {
    // A batched plan is already wide: it runs as a batch of its users.
    let users = plan.users;
    let tokens = match (users, tokens) {
        (1, tokens) => tokens,
        (users, 1) => users,
        (users, tokens) => {
            return Err(CodegenError::Plan {
                op: "program".into(),
                message: format!(
                    "a plan for a batch of {users} users runs one token of each, not {tokens} tokens"
                ),
            });
        }
    };
    if tokens == 0 {
        return Err(CodegenError::Plan {
            op: "program".into(),
            message: "a program of zero tokens".into(),
        });
    }
    let wide;
    let plan = if tokens == 1 || users > 1 {
        plan
    } else {
        wide = widen(plan, tokens);
        &wide
    };
    let mut p = match base {
        None => ProgramBuilder::new(target),
        Some(b) => {
            let mut p = ProgramBuilder::after(target, b.alloc.clone(), b.tables.clone());
            // A later program shares kernel scratch between calls: it must
            // fit the MEM the first program left.
            p.set_reuse(true);
            p
        }
    };
    if reuse {
        p.set_reuse(true);
    }
    p.set_weight_images(weight_images);
    let placement = place_buffers(plan, &mut p, base.map(|b| &b.buffers))?;
    let kinds: BTreeMap<String, &BufferDecl> =
        plan.buffers.iter().map(|b| (b.name.clone(), b)).collect();
    // Token `k`'s view of a buffer (the buffer itself when it is shared).
    let view = |buf: &Buffer, k: u32| -> Buffer {
        let shared = kinds.get(buf.name.as_str()).is_some_and(|d| !per_token(d));
        if tokens == 1 || shared {
            return buf.clone();
        }
        let w = buf.words / tokens;
        Buffer {
            name: format!("{}[{k}]", buf.name),
            slices: buf.slices.clone(),
            addr: buf.addr + k * w,
            words: w,
        }
    };
    let get = |name: &str, op: &str| {
        placement
            .get(name)
            .cloned()
            .ok_or_else(|| CodegenError::Plan {
                op: op.to_string(),
                message: format!("unknown buffer `{name}`"),
            })
    };
    // A later program shares products scratch between weights: eight small
    // pools, four a hemisphere (a weight takes the first, in rotation,
    // clear of its own image's slices), sized for the largest weight but
    // the LM head, which keeps its own. The scheduler orders each write of
    // a pool word after the earlier reads of it.
    let mut pools: Vec<Buffer> = Vec::new();
    if let Some(b) = base {
        let need = b
            .weights
            .iter()
            .filter(|(n, _)| !is_head(n))
            .map(|(_, w)| crate::kernels::matmul::products_words(w, tokens))
            .max()
            .unwrap_or(0);
        if need > 0 {
            for i in 0..POOLS {
                let h = if i % 2 == 0 {
                    Hemisphere::West
                } else {
                    Hemisphere::East
                };
                p.set_avoid(&pools.iter().collect::<Vec<_>>());
                pools.push(p.buffer_either(
                    &format!("products.pool{i}"),
                    q35_isa::DType::F32,
                    u64::from(need) * u64::from(LANES),
                    h,
                )?);
            }
        }
    }
    let weights = place_weights(plan, &mut p, &placement, tokens, base, &pools)?;
    let mut op_cycles = Vec::new();
    // West copies of the step's index vectors for the caches that share
    // their (east) hemisphere: a scatter's index must meet the value on
    // every slice of the cache, so it must come from the other side.
    let mut mirrors: BTreeMap<String, Buffer> = BTreeMap::new();
    // (Their instructions carry the label `index_copies` in the debug map;
    // `op_cycles` lists the plan's ops only, one entry each.)
    for (name, src, dst) in place_index_mirrors(plan, &mut p, &placement)? {
        crate::kernels::vector::copy(&mut p, "index_copies", &src, &dst, src.words, 0)?;
        mirrors.insert(name.to_string(), dst);
    }
    // The index buffer `name` as a kernel writing `cache` must read it.
    let index_for = |name: &str, cache: &Buffer, op: &str| -> Result<Buffer, CodegenError> {
        let b = get(name, op)?;
        match mirrors.get(name) {
            Some(m) if b.hemisphere() == cache.hemisphere() => Ok(m.clone()),
            _ => Ok(b),
        }
    };
    let mut sent_to: BTreeMap<u32, Vec<Cycle>> = BTreeMap::new();
    // Per sending chip, the issue cycle of every `recv` of its vectors so
    // far (they take the vectors in the order they were sent).
    let mut taken_from: BTreeMap<u32, Vec<Cycle>> = BTreeMap::new();
    let v_cycles = target.c2c_vector_cycles() as Cycle;
    if let Some(links) = links {
        fixed_forwards(&mut p, &links.forwards)?;
    }
    let mut ops = plan.ops.iter().peekable();
    while let Some((label, op)) = ops.next() {
        let first_bundle = p.sched.bundles;
        let operands: Vec<&Buffer> = op
            .buffers()
            .iter()
            .filter_map(|n| placement.get(*n))
            .collect();
        p.set_avoid(&operands);
        // Token `k`'s view of buffer `n` (in a batch, user `k`'s KV cache).
        let g = |n: &str, k: u32| match placement.get(&user_cache(n, k)) {
            Some(b) if users > 1 => Ok(b.clone()),
            _ => get(n, label).map(|b| view(&b, k)),
        };
        // Token `k`'s operands: in a batch its own KV caches too.
        let operands_of = |k: u32| -> Vec<&Buffer> {
            let mut v = operands.clone();
            if users > 1 {
                v.extend(
                    op.buffers()
                        .iter()
                        .filter_map(|n| placement.get(&user_cache(n, k))),
                );
            }
            v
        };
        // An RMSNorm whose output the next op quantizes: one fused kernel
        // (no MEM round trip between them); both ops get its span.
        if let (
            PlanOp::RmsNorm {
                x,
                weight,
                y,
                n,
                eps,
            },
            Some((
                qlabel,
                PlanOp::Quantize {
                    x: qx,
                    xs,
                    scale,
                    n: qn,
                },
            )),
        ) = (op, ops.peek())
            && qx == y
            && qn == n
        {
            for k in 0..tokens {
                // Each token's kernel scratch avoids the op's operands only
                // (not the scratch of the tokens before: the hemisphere
                // would run out of slices to avoid).
                p.set_avoid(&operands);
                crate::kernels::norm::rmsnorm_quantize(
                    &mut p,
                    label,
                    &g(x, k)?,
                    &g(weight, k)?,
                    &g(y, k)?,
                    *n,
                    *eps,
                    &g(xs, k)?,
                    &g(scale, k)?,
                    0,
                )?;
            }
            let (first, last) = p.sched.span_since(first_bundle);
            op_cycles.push((label.clone(), first, last));
            op_cycles.push((qlabel.clone(), first, last));
            ops.next();
            continue;
        }
        if let PlanOp::Send {
            x: name,
            n,
            to: peer,
            words: segments,
        }
        | PlanOp::Recv {
            y: name,
            n,
            from: peer,
            words: segments,
        } = op
        {
            let (Some(links), true) = (links, tokens == 1 || users > 1) else {
                return Err(CodegenError::Plan {
                    op: label.clone(),
                    message: "a transfer between chips belongs to a system stage's program of one token or one batch (compile_stage)".into(),
                });
            };
            // (In a batch `n` counts every user's row: the cut takes it
            // from the batched plan's buffer.)
            let buf = get(name, label)?;
            let every = 0..words(u64::from(*n));
            let all_words = std::slice::from_ref(&every);
            let segments: &[Range<u32>] = if segments.is_empty() {
                all_words
            } else {
                segments
            };
            if let Some(bad) = segments
                .iter()
                .find(|r| r.end > buf.words || r.start >= r.end)
            {
                return Err(CodegenError::Plan {
                    op: label.clone(),
                    message: format!(
                        "words {}..{} of `{name}`, which has {}",
                        bad.start, bad.end, buf.words
                    ),
                });
            }
            let w: u32 = segments.iter().map(|r| r.end - r.start).sum();
            if let PlanOp::Send { .. } = op {
                // A chip's transfers to one peer go in program order, one
                // after another (the peer takes them in that order).
                let route = links.route(links.chip, *peer, label)?;
                let after = sent_to
                    .get(peer)
                    .and_then(|v| v.last())
                    .map_or(0, |t| t + v_cycles);
                let sent = crate::kernels::c2c::send(
                    &mut p,
                    label,
                    &buf,
                    segments,
                    route[0].from.link as u16,
                    after,
                )?;
                // A peer compiled beside this chip (a tensor-parallel
                // group) learns the arrivals as they are scheduled.
                if let Some(mb) = &links.mailbox
                    && mb.member(*peer)
                {
                    let hops = route.len() as Cycle * Cycle::from(target.c2c.link_latency_cycles);
                    let arrive: Vec<Cycle> = sent.iter().map(|t| t + hops).collect();
                    mb.post(links.chip, *peer, &arrive);
                }
                sent_to.entry(*peer).or_default().extend(sent);
            } else {
                let route = links.route(*peer, links.chip, label)?;
                let link = route[route.len() - 1].to.link as u16;
                let taken = taken_from.entry(*peer).or_default();
                let done = taken.len();
                let count = w as usize * buf.slices.len();
                let waited;
                let all: &[Cycle] = match (links.arrivals.get(peer), &links.mailbox) {
                    (Some(a), _) => a,
                    (None, Some(mb)) if mb.member(*peer) => {
                        waited = mb.wait(*peer, links.chip, done + count).map_err(|chip| {
                            CodegenError::PeerFailed {
                                op: label.clone(),
                                chip,
                            }
                        })?;
                        &waited
                    }
                    _ => &[],
                };
                let Some(arrivals) = all.get(done..done + count) else {
                    return Err(CodegenError::Plan {
                        op: label.clone(),
                        message: format!(
                            "chip {peer} sends {} vectors; this chip takes {} more after {done}",
                            all.len(),
                            count
                        ),
                    });
                };
                // In a tensor-parallel system: vector by vector, around the
                // lead's own slice of the matmuls.
                let placing = if links.mailbox.is_some() {
                    crate::kernels::c2c::Placing::EachVector
                } else {
                    crate::kernels::c2c::Placing::Rigid
                };
                let after = taken.last().map_or(0, |&t| placing.next_after(t, v_cycles));
                let got = crate::kernels::c2c::recv(
                    &mut p,
                    label,
                    &buf,
                    segments,
                    link,
                    arrivals,
                    target.c2c.receive_buffer_vectors,
                    after,
                    placing,
                )?;
                taken.extend(got);
            }
            let (first, last) = p.sched.span_since(first_bundle);
            op_cycles.push((label.clone(), first, last));
            continue;
        }
        if let PlanOp::MatMul {
            xs,
            scale,
            weight,
            y,
            row0,
        } = op
        {
            let w = weights.get(weight).ok_or_else(|| CodegenError::Plan {
                op: label.clone(),
                message: format!("unknown weight `{weight}`"),
            })?;
            let all = |n: &str| (0..tokens).map(|k| g(n, k)).collect::<Result<Vec<_>, _>>();
            if row0 % LANES != 0 {
                return Err(CodegenError::Plan {
                    op: label.clone(),
                    message: format!(
                        "a matmul piece starts on row {row0}, not a multiple of {LANES}"
                    ),
                });
            }
            // A piece of a matmul split by rows writes its words of `y`.
            let skip = row0 / LANES;
            let outs: Vec<Buffer> = all(y)?
                .into_iter()
                .map(|b| {
                    if skip >= b.words {
                        return Err(CodegenError::Plan {
                            op: label.clone(),
                            message: format!("row {row0} is past `{}`", b.name),
                        });
                    }
                    Ok(Buffer {
                        addr: b.addr + skip,
                        words: b.words - skip,
                        ..b
                    })
                })
                .collect::<Result<_, _>>()?;
            crate::kernels::matmul::matmul_tokens(
                &mut p,
                label,
                &all(xs)?,
                &all(scale)?,
                w,
                &outs,
                0,
            )?;
            let (first, last) = p.sched.span_since(first_bundle);
            op_cycles.push((label.clone(), first, last));
            continue;
        }
        for k in 0..tokens {
            // A per-user op runs for its users only.
            if op.users().is_some_and(|r| !r.contains(&k)) {
                continue;
            }
            p.set_avoid(&operands_of(k));
            match op {
                PlanOp::RmsNorm {
                    x,
                    weight,
                    y,
                    n,
                    eps,
                } => {
                    crate::kernels::norm::rmsnorm(
                        &mut p,
                        label,
                        &g(x, k)?,
                        &g(weight, k)?,
                        &g(y, k)?,
                        *n,
                        *eps,
                        0,
                    )?;
                }
                PlanOp::Quantize { x, xs, scale, n } => {
                    crate::kernels::quantize::quantize(
                        &mut p,
                        label,
                        &g(x, k)?,
                        *n,
                        &g(xs, k)?,
                        &g(scale, k)?,
                        0,
                    )?;
                }
                PlanOp::MatMul { .. } => unreachable!("matmuls run over every token above"),
                PlanOp::Send { .. } | PlanOp::Recv { .. } => {
                    unreachable!("transfers run once above")
                }
                PlanOp::Rope {
                    x,
                    y,
                    heads,
                    head_dim,
                } => {
                    crate::kernels::rope::rope(
                        &mut p,
                        label,
                        &g(x, k)?,
                        &g(y, k)?,
                        *heads,
                        *head_dim,
                        &g("pos_idx", k)?,
                        &g("rope_cos", k)?,
                        &g("rope_sin", k)?,
                        0,
                    )?;
                }
                PlanOp::KvWrite {
                    k: key,
                    v,
                    kcache,
                    vcache,
                    ..
                } => {
                    // Elements of one token's key: the K cache's rows
                    // (dims `[kv_dim, words]`; in a batch every user's
                    // cache has them).
                    let kvd = plan
                        .buffers
                        .iter()
                        .find(|b| split_user(&b.name).0 == kcache)
                        .and_then(|b| b.dims.len().checked_sub(2).map(|i| b.dims[i]))
                        .unwrap_or(0);
                    let (kc, vc) = (g(kcache, k)?, g(vcache, k)?);
                    crate::kernels::attention::kv_write(
                        &mut p,
                        label,
                        &g(key, k)?,
                        &g(v, k)?,
                        &kc,
                        &vc,
                        &view(&index_for("kv_idx", &kc, label)?, k),
                        &view(&index_for("pos_idx", &vc, label)?, k),
                        kvd,
                        plan.ctx,
                        0,
                    )?;
                }
                PlanOp::Attention {
                    q,
                    kcache,
                    vcache,
                    y,
                    heads,
                    kv_heads,
                    head_dim,
                    scale,
                    ..
                } => {
                    crate::kernels::attention::attention(
                        &mut p,
                        label,
                        &g(q, k)?,
                        &g(kcache, k)?,
                        &g(vcache, k)?,
                        &g("attn_mask", k)?,
                        &g(y, k)?,
                        *heads,
                        *kv_heads,
                        *head_dim,
                        plan.ctx,
                        plan.attend.unwrap_or(plan.ctx),
                        *scale,
                        0,
                    )?;
                }
                PlanOp::SwiGlu { gate, up, y, n } => {
                    crate::kernels::swiglu::swiglu(
                        &mut p,
                        label,
                        &g(gate, k)?,
                        &g(up, k)?,
                        &g(y, k)?,
                        *n,
                        0,
                    )?;
                }
                PlanOp::Mix {
                    x,
                    matrix,
                    y,
                    n,
                    block,
                } => {
                    crate::kernels::mix::mix(
                        &mut p,
                        label,
                        &g(x, k)?,
                        &g(matrix, k)?,
                        &g(y, k)?,
                        *n,
                        *block,
                        0,
                    )?;
                }
                PlanOp::Add { a, b, y, n } => {
                    crate::kernels::vector::add(
                        &mut p,
                        label,
                        &g(a, k)?,
                        &g(b, k)?,
                        &g(y, k)?,
                        words(u64::from(*n)),
                        0,
                    )?;
                }
            }
        }
        let (first, last) = p.sched.span_since(first_bundle);
        op_cycles.push((label.clone(), first, last));
    }
    // Every vector sent to this chip is taken, none before its arrival and
    // never more than the link's end holds waiting.
    if let Some(links) = links {
        for (peer, all) in &links.arrivals {
            let taken = taken_from.get(peer).map(Vec::as_slice).unwrap_or(&[]);
            if taken.len() != all.len() {
                return Err(CodegenError::Plan {
                    op: "c2c.recv".into(),
                    message: format!(
                        "chip {peer} sends {} vectors, this chip receives {}",
                        all.len(),
                        taken.len()
                    ),
                });
            }
            crate::kernels::c2c::check_arrivals(all, taken, target.c2c.receive_buffer_vectors)
                .map_err(|message| CodegenError::Plan {
                    op: format!("c2c.recv from chip {peer}"),
                    message,
                })?;
        }
    }
    let mem_bytes = p.alloc.used_bytes();
    let shared = Shared {
        alloc: p.alloc.clone(),
        buffers: placement
            .iter()
            .filter(|(n, _)| kinds.get(n.as_str()).is_some_and(|d| !per_token(d)))
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect(),
        weights,
        tables: p.tables().to_vec(),
    };
    Ok(Compiled {
        built: p.finish(),
        placement,
        op_cycles,
        mem_bytes,
        shared,
        sent: sent_to,
        received: taken_from,
        scratch_shared: reuse || base.is_some(),
    })
}

/// Schedules `forwards` (`(cycle, in link, out link)`, a route's hops
/// through this chip) first, each `fwd` exactly on its cycle: per outgoing
/// link one bundle, placed where its first vector arrives.
fn fixed_forwards(
    p: &mut ProgramBuilder,
    forwards: &[(Cycle, u16, u16)],
) -> Result<(), CodegenError> {
    let mut by_out: BTreeMap<u16, Vec<(Cycle, u16)>> = BTreeMap::new();
    for &(t, from, out) in forwards {
        by_out.entry(out).or_default().push((t, from));
    }
    let m = p.mach().clone();
    for (out, mut list) in by_out {
        list.sort();
        let q = crate::kernels::c2c::link_queue(out)?;
        let t0 = list[0].0;
        let mut b = crate::sched::Bundle::new("c2c.fwd");
        for &(t, from) in &list {
            b.unit(
                &m,
                crate::sched::QSel::Fixed(q),
                t - t0,
                q35_isa::Instruction::Fwd {
                    link: u32::from(from),
                },
                &[],
                None,
            )?;
        }
        let placed = p.sched.place(b, t0)?;
        if placed.shift != t0 {
            return Err(CodegenError::Plan {
                op: "c2c.fwd".into(),
                message: format!(
                    "the forwards on link {out} must start on cycle {t0}, their first vector's arrival; the schedule put them on {}",
                    placed.shift
                ),
            });
        }
    }
    Ok(())
}

/// The machine's lower bound on one decode step (issue 9's yardstick): the
/// largest of the weight bytes at 3.5 bits over the MEM read bandwidth, the
/// weights over the install rate of all planes, the MACs over the planes'
/// MAC rate and the vector element operations over the VXM's, none counting
/// padding as work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// Real weights (rows x cols of every matrix).
    pub weights: u64,
    /// Cycles to read the packed weights (3.5 bits each) from MEM.
    pub mem_cycles: f64,
    /// Cycles to install every weight into the planes.
    pub install_cycles: f64,
    /// Cycles of MACs at full plane rate (one token: one MAC per weight).
    pub mac_cycles: f64,
    /// Cycles of VXM element operations.
    pub vxm_cycles: f64,
}

impl Bound {
    /// The bound: the largest term.
    pub fn cycles(&self) -> f64 {
        self.mem_cycles
            .max(self.install_cycles)
            .max(self.mac_cycles)
            .max(self.vxm_cycles)
    }
}

/// [`Bound`] of one decode step of `plan` on `target`.
pub fn bound(plan: &Plan, target: &Target) -> Bound {
    let shapes: BTreeMap<String, (u64, u64, u64)> = plan
        .weights
        .iter()
        .map(|(n, m)| {
            (
                n.clone(),
                (m.rows() as u64, m.cols() as u64, m.group_size() as u64),
            )
        })
        .collect();
    bound_with(plan, target, &shapes)
}

/// [`bound`] with the weights given by shape: per name, rows, columns and
/// group size (a plan whose weights are not bound, a timing-only compile).
pub fn bound_with(
    plan: &Plan,
    target: &Target,
    shapes: &BTreeMap<String, (u64, u64, u64)>,
) -> Bound {
    let weights: u64 = shapes.values().map(|(r, c, _)| r * c).sum();
    let mem_bw = f64::from(target.mem.slices) * f64::from(target.mem.word_bytes);
    let install = f64::from(target.mxm.planes)
        * f64::from(target.mxm.install_rows_per_cycle)
        * f64::from(target.mxm.cols);
    let macs =
        f64::from(target.mxm.planes) * f64::from(target.mxm.rows) * f64::from(target.mxm.cols);
    let vxm = f64::from(target.vxm.alus_per_lane) * f64::from(target.vector.lanes);
    // Element operations per op (the contract's f32 work: each multiply,
    // add, compare, conversion counted once).
    let ctx = u64::from(plan.ctx);
    let mut elem_ops = 0u64;
    for (_, op) in &plan.ops {
        elem_ops += match op {
            PlanOp::RmsNorm { n, .. } => 4 * u64::from(*n),
            PlanOp::Quantize { n, .. } => 3 * u64::from(*n),
            PlanOp::MatMul { weight, .. } => shapes
                .get(weight)
                .map(|&(rows, cols, group)| {
                    let groups = cols.div_ceil(group.max(1));
                    // i32->f32, scale multiply and add per group and row,
                    // the per-group int8 conversion of the activation.
                    3 * groups * rows + cols
                })
                .unwrap_or(0),
            PlanOp::Rope {
                heads, head_dim, ..
            } => 3 * u64::from(heads * head_dim),
            PlanOp::KvWrite { .. } => 0,
            PlanOp::Attention {
                heads, head_dim, ..
            } => {
                let (h, d) = (u64::from(*heads), u64::from(*head_dim));
                // Scores (mul+add per d), scale, mask, max, exp, sum,
                // normalise, then the weighted sum of values.
                h * ctx * (2 * d + 6) + 2 * h * ctx * d
            }
            PlanOp::SwiGlu { n, .. } => 5 * u64::from(*n),
            PlanOp::Add { n, .. } => u64::from(*n),
            // A multiply and an add per channel of its block.
            PlanOp::Mix { n, block, .. } => 2 * u64::from(*n) * u64::from(*block),
            PlanOp::Send { .. } | PlanOp::Recv { .. } => 0,
        };
    }
    // A batch reads and installs each weight once for all its users; the
    // MACs and the vector work are per user.
    let users = f64::from(plan.users.max(1));
    let w = weights as f64;
    Bound {
        weights,
        mem_cycles: w * 3.5 / 8.0 / mem_bw,
        install_cycles: w / install,
        mac_cycles: users * w / macs,
        vxm_cycles: users * elem_ops as f64 / vxm,
    }
}

/// A zero matrix of the shape with a valid slot mask (for schedules and
/// measurements without weights: placement and timing depend on shapes
/// only).
pub fn placeholder_matrix(
    scheme: q35_contract::QuantScheme,
    rows: usize,
    cols: usize,
    group: usize,
) -> Result<QuantizedMatrix, String> {
    let layout = q35_contract::format::Layout::new(rows, cols, group).map_err(|e| e.to_string())?;
    let kp = layout.cols_padded();
    let codes = vec![0i8; rows * kp];
    let scales = vec![half::f16::ZERO; rows * layout.n_groups()];
    let mask: Option<Vec<bool>> = scheme
        .is_q35()
        .then(|| (0..kp).map(|j| j % 2 == 0).collect());
    QuantizedMatrix::from_codes(layout, scheme, (1, 1), &codes, &scales, mask.as_deref())
        .map_err(|e| e.to_string())
}

/// The standard decode plan of `arch` with placeholder weights and zero
/// norms (see [`placeholder_matrix`]).
pub fn placeholder_plan(
    arch: &Architecture,
    ctx: u32,
    scheme: q35_contract::QuantScheme,
    group: usize,
) -> Result<Plan, CodegenError> {
    let (d, hd) = (arch.hidden as usize, arch.head_dim as usize);
    let (qd, kvd, ffn) = (
        arch.heads as usize * hd,
        arch.kv_heads as usize * hd,
        arch.ffn as usize,
    );
    let mut weights = BTreeMap::new();
    let mut norms = BTreeMap::new();
    let mut add = |name: String, rows: usize, cols: usize| -> Result<(), CodegenError> {
        let m = placeholder_matrix(scheme, rows, cols, group).map_err(|message| {
            CodegenError::Plan {
                op: name.clone(),
                message,
            }
        })?;
        weights.insert(name, m);
        Ok(())
    };
    for b in 0..arch.blocks {
        for (w, r, c) in [
            ("attn_q", qd, d),
            ("attn_k", kvd, d),
            ("attn_v", kvd, d),
            ("attn_output", d, qd),
            ("ffn_gate", ffn, d),
            ("ffn_up", ffn, d),
            ("ffn_down", d, ffn),
        ] {
            add(format!("blk.{b}.{w}"), r, c)?;
        }
        norms.insert(format!("blk.{b}.attn_norm"), vec![0.0; d]);
        norms.insert(format!("blk.{b}.ffn_norm"), vec![0.0; d]);
    }
    add("output".into(), arch.vocab as usize, d)?;
    norms.insert("output_norm".into(), vec![0.0; d]);
    let rope = q35_contract::rope::RopeTable::new(hd, arch.rope_base, ctx as usize);
    decode_plan(arch, ctx, weights, &norms, &rope)
}
