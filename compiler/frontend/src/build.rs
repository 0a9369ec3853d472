//! Builds the LLaMA decoder graph from a [`ModelSpec`] (or a [`GraphConfig`]).

use petgraph::graph::NodeIndex;
use q35_model::{
    Architecture, LinearSpec, MATRIX_KINDS, ModelSpec, QuantConfig, QuantScheme, Rotation,
};

use crate::error::FrontendError;
use crate::graph::{Graph, InputKind, Node, Op, Weight, WeightFormat, WeightId};
use crate::types::{DType, Dim, Shape};

/// What the graph is built from (taken from a [`ModelSpec`]): the
/// architecture plus the settings that are not part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Model name, for diagnostics.
    pub name: String,
    /// Hyperparameters and derived sizes.
    pub arch: Architecture,
    /// KV-cache length.
    pub max_seq_len: u32,
    /// Weight quantization scheme.
    pub scheme: QuantScheme,
    /// Weights per quantization group, for every matrix without a size of
    /// its own in `group_size_of`.
    pub group_size: u32,
    /// Group sizes of their own for some kinds of matrix, indexed like
    /// [`MATRIX_KINDS`] (model.toml's `[quantization] group_size_of`).
    pub group_size_of: [Option<u32>; MATRIX_KINDS.len()],
    /// The residual-stream rotation (model.toml's `[quantization]
    /// rotation`): with one, the final norm's output is mixed on line
    /// before the LM head (`q35.mix`).
    pub rotation: Rotation,
}

impl GraphConfig {
    /// Takes the graph's parameters from a loaded model description.
    pub fn from_spec(spec: &ModelSpec) -> Self {
        GraphConfig {
            name: spec.name.clone(),
            arch: spec.arch.clone(),
            max_seq_len: spec.limits.max_seq_len,
            scheme: spec.quant.scheme,
            group_size: spec.quant.group_size,
            group_size_of: spec.quant.group_size_of,
            rotation: spec.quant.rotation,
        }
    }

    /// The quantization settings the graph carries as model.toml's
    /// [`QuantConfig`]: the format and the rotation. How the quantizer
    /// calibrates (`sequential`, `asymmetric`) picks other weights of the
    /// same format and is not the graph's; it reads as the defaults here.
    pub fn quant(&self) -> QuantConfig {
        QuantConfig {
            rotation: self.rotation,
            group_size_of: self.group_size_of,
            ..QuantConfig::uniform(self.scheme, self.group_size)
        }
    }

    /// Checks what the builder relies on. `q35-model` guarantees all of it
    /// for a loaded spec; a hand-built config (tests) gets the same typed
    /// errors instead of a malformed graph.
    fn check(&self) -> Result<(), FrontendError> {
        let err = |field: &'static str, problem: String| FrontendError::Config {
            model: self.name.clone(),
            field,
            problem,
        };
        let a = &self.arch;
        for (field, v) in [
            ("arch.blocks", a.blocks),
            ("arch.hidden", a.hidden),
            ("arch.heads", a.heads),
            ("arch.kv_heads", a.kv_heads),
            ("arch.head_dim", a.head_dim),
            ("arch.ffn", a.ffn),
            ("arch.vocab", a.vocab),
            ("limits.max_seq_len", self.max_seq_len),
            ("quant.group_size", self.group_size),
        ] {
            if v == 0 {
                return Err(err(field, "must be positive".into()));
            }
        }
        if self.group_size_of.contains(&Some(0)) {
            return Err(err(
                "quant.group_size_of",
                "every group size must be positive".into(),
            ));
        }
        if !a.heads.is_multiple_of(a.kv_heads) {
            return Err(err(
                "arch.kv_heads",
                format!("({}) must divide arch.heads ({})", a.kv_heads, a.heads),
            ));
        }
        if !a.head_dim.is_multiple_of(2) {
            return Err(err(
                "arch.head_dim",
                format!("({}) must be even for RoPE", a.head_dim),
            ));
        }
        if !(a.rope_base.is_finite() && a.rope_base > 0.0) {
            return Err(err(
                "arch.rope_base",
                format!("({}) must be positive", a.rope_base),
            ));
        }
        if !(a.norm_eps.is_finite() && a.norm_eps > 0.0) {
            return Err(err(
                "arch.norm_eps",
                format!("({}) must be positive", a.norm_eps),
            ));
        }
        Ok(())
    }
}

/// Symbol and source of the rotated stream's head mix (`q35.mix`'s
/// matrix): made by the quantizer (`M = R diag(gamma_out) R^T`), not read
/// from the GGUF.
pub const OUTPUT_MIX: &str = "output_mix";

/// Builds and verifies the decoder graph of `spec`.
pub fn build(spec: &ModelSpec) -> Result<Graph, FrontendError> {
    build_from_config(&GraphConfig::from_spec(spec))
}

/// Builds and verifies the decoder graph for `config`.
pub fn build_from_config(config: &GraphConfig) -> Result<Graph, FrontendError> {
    config.check()?;
    let graph = Builder {
        c: config,
        g: Graph::new(),
    }
    .build();
    graph.verify().map_err(|source| FrontendError::Graph {
        model: config.name.clone(),
        source,
    })?;
    Ok(graph)
}

struct Builder<'a> {
    c: &'a GraphConfig,
    g: Graph,
}

impl Builder<'_> {
    fn quantized(&mut self, source: &str, out: u32, inp: u32) -> WeightId {
        self.g.add_weight(Weight {
            symbol: source.trim_end_matches(".weight").to_string(),
            source: source.to_string(),
            shape: vec![u64::from(out), u64::from(inp)],
            format: WeightFormat::Quantized {
                scheme: self.c.scheme,
                group_size: self.c.quant().group_size_of_tensor(source),
            },
        })
    }

    fn linear(&mut self, l: &LinearSpec) -> WeightId {
        self.quantized(&l.name, l.n, l.k)
    }

    fn vector(&mut self, source: &str, n: u32) -> WeightId {
        self.g.add_weight(Weight {
            symbol: source.trim_end_matches(".weight").to_string(),
            source: source.to_string(),
            shape: vec![u64::from(n)],
            format: WeightFormat::F32,
        })
    }

    fn node(&mut self, name: String, op: Op, width: u32, operands: &[NodeIndex]) -> NodeIndex {
        let node = Node {
            op,
            name,
            shape: Shape::tokens_by(u64::from(width)),
            dtype: DType::F32,
        };
        self.g.add_node(node, operands)
    }

    fn input(&mut self, name: &str, kind: InputKind, shape: Shape, dtype: DType) -> NodeIndex {
        let node = Node {
            op: Op::Input(kind),
            name: name.to_string(),
            shape,
            dtype,
        };
        self.g.add_node(node, &[])
    }

    fn build(mut self) -> Graph {
        let c = self.c;
        let a = &c.arch;
        let (h, f) = (a.hidden, a.ffn);
        let (q_width, kv_width) = (a.q_dim(), a.kv_dim());

        let tokens = self.input(
            "tokens",
            InputKind::Tokens,
            Shape(vec![Dim::Dynamic]),
            DType::I32,
        );
        let pos = self.input("pos", InputKind::Position, Shape::scalar(), DType::Index);
        let cache_shape = Shape::fixed(&[
            u64::from(a.blocks),
            2,
            u64::from(c.max_seq_len),
            u64::from(a.kv_heads),
            u64::from(a.head_dim),
        ]);
        let mut cache = self.input(
            "kv_cache",
            InputKind::KvCache,
            cache_shape.clone(),
            DType::F32,
        );

        let embd = self.quantized("token_embd.weight", a.vocab, h);
        let mut x = self.node("embed".into(), Op::Embedding { table: embd }, h, &[tokens]);

        for i in 0..a.blocks {
            let p = format!("blk.{i}");
            let attn_norm = self.vector(&format!("{p}.attn_norm.weight"), h);
            let linears = a.block_linears(i);
            let [lq, lk, lv, lo, lg, lu, ld] = &linears[..] else {
                unreachable!("a block has seven weight matrices")
            };
            // Declared in GGUF order: the attention weights, then ffn_norm.
            let [wq, wk, wv, wo] = [lq, lk, lv, lo].map(|l| self.linear(l));
            let ffn_norm = self.vector(&format!("{p}.ffn_norm.weight"), h);
            let [wg, wu, wd] = [lg, lu, ld].map(|l| self.linear(l));

            let eps = a.norm_eps;
            let n = self.node(
                format!("{p}.attn_norm"),
                Op::RmsNorm {
                    weight: attn_norm,
                    eps,
                },
                h,
                &[x],
            );
            let q = self.node(format!("{p}.q"), Op::MatMul { weight: wq }, q_width, &[n]);
            let k = self.node(format!("{p}.k"), Op::MatMul { weight: wk }, kv_width, &[n]);
            let v = self.node(format!("{p}.v"), Op::MatMul { weight: wv }, kv_width, &[n]);
            let rope = |heads| Op::Rope {
                heads,
                head_dim: a.head_dim,
                base: a.rope_base,
            };
            let qr = self.node(format!("{p}.q_rope"), rope(a.heads), q_width, &[q, pos]);
            let kr = self.node(format!("{p}.k_rope"), rope(a.kv_heads), kv_width, &[k, pos]);
            cache = self.g.add_node(
                Node {
                    op: Op::KvWrite { layer: i },
                    name: format!("{p}.kv_write"),
                    shape: cache_shape.clone(),
                    dtype: DType::F32,
                },
                &[cache, kr, v, pos],
            );
            let attn = Op::Attention {
                layer: i,
                heads: a.heads,
                kv_heads: a.kv_heads,
                head_dim: a.head_dim,
                causal: true,
            };
            let heads_out = self.node(format!("{p}.attn"), attn, q_width, &[qr, cache, pos]);
            let o = self.node(
                format!("{p}.attn_output"),
                Op::MatMul { weight: wo },
                h,
                &[heads_out],
            );
            x = self.node(format!("{p}.attn_residual"), Op::Add, h, &[x, o]);

            let n = self.node(
                format!("{p}.ffn_norm"),
                Op::RmsNorm {
                    weight: ffn_norm,
                    eps,
                },
                h,
                &[x],
            );
            let g = self.node(format!("{p}.ffn_gate"), Op::MatMul { weight: wg }, f, &[n]);
            let u = self.node(format!("{p}.ffn_up"), Op::MatMul { weight: wu }, f, &[n]);
            let s = self.node(format!("{p}.ffn_swiglu"), Op::SwiGlu, f, &[g, u]);
            let d = self.node(format!("{p}.ffn_down"), Op::MatMul { weight: wd }, h, &[s]);
            x = self.node(format!("{p}.ffn_residual"), Op::Add, h, &[x, d]);
        }

        let out_norm = self.vector("output_norm.weight", h);
        let n = self.node(
            "output_norm".into(),
            Op::RmsNorm {
                weight: out_norm,
                eps: a.norm_eps,
            },
            h,
            &[x],
        );
        // The rotated stream's head sees the unrotated stream through
        // M = R diag(gamma_out) R^T, mixed on line (docs/q35-format.md
        // 14.5); `output_mix` is the quantizer's, not a GGUF tensor.
        let n = match c.rotation {
            Rotation::None => n,
            Rotation::BlockHadamard => {
                let mix = self.g.add_weight(Weight {
                    symbol: OUTPUT_MIX.to_string(),
                    source: OUTPUT_MIX.to_string(),
                    shape: vec![u64::from(h), u64::from(h)],
                    format: WeightFormat::F32,
                });
                // R's blocks: the largest power of two dividing hidden, at
                // most 512 (q35_quant's StreamRotation::BlockHadamard).
                let block = (1u32 << h.trailing_zeros()).min(512);
                self.node("output_mix".into(), Op::Mix { matrix: mix, block }, h, &[n])
            }
        };
        let (head, tied) = if a.tied_embeddings {
            (embd, true)
        } else {
            (self.linear(&a.lm_head()), false)
        };
        let logits = self.node(
            "logits".into(),
            Op::LmHead { weight: head, tied },
            a.vocab,
            &[n],
        );
        self.g.add_output(logits);
        self.g.add_output(cache);
        self.g
    }
}
