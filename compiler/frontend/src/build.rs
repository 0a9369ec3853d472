//! Builds the LLaMA decoder graph from a [`ModelSpec`] (or a [`GraphConfig`]).

use petgraph::graph::NodeIndex;
use q35_model::{ModelSpec, QuantScheme};

use crate::error::FrontendError;
use crate::graph::{Graph, InputKind, Node, Op, Weight, WeightFormat, WeightId};
use crate::types::{DType, Dim, Shape};

/// The hyperparameters the graph is built from (taken from a [`ModelSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Model name, for diagnostics.
    pub name: String,
    /// Decoder blocks.
    pub blocks: u32,
    /// Residual stream width.
    pub hidden: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Dimensions per head.
    pub head_dim: u32,
    /// Feed-forward width.
    pub ffn: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Whether the LM head reuses the token embedding.
    pub tied_embeddings: bool,
    /// KV-cache length.
    pub max_seq_len: u32,
    /// Weight quantization scheme.
    pub scheme: QuantScheme,
    /// Weights per quantization group.
    pub group_size: u32,
}

impl GraphConfig {
    /// Takes the graph's parameters from a loaded model description.
    pub fn from_spec(spec: &ModelSpec) -> Self {
        let a = &spec.arch;
        GraphConfig {
            name: spec.name.clone(),
            blocks: a.blocks,
            hidden: a.hidden,
            heads: a.heads,
            kv_heads: a.kv_heads,
            head_dim: a.head_dim,
            ffn: a.ffn,
            vocab: a.vocab,
            rope_base: a.rope_base,
            norm_eps: a.norm_eps,
            tied_embeddings: a.tied_embeddings,
            max_seq_len: spec.limits.max_seq_len,
            scheme: spec.quant.scheme,
            group_size: spec.quant.group_size,
        }
    }

    fn check(&self) -> Result<(), FrontendError> {
        let err = |field: &'static str, problem: String| FrontendError::Config {
            model: self.name.clone(),
            field,
            problem,
        };
        for (field, v) in [
            ("arch.blocks", self.blocks),
            ("arch.hidden", self.hidden),
            ("arch.heads", self.heads),
            ("arch.kv_heads", self.kv_heads),
            ("arch.head_dim", self.head_dim),
            ("arch.ffn", self.ffn),
            ("arch.vocab", self.vocab),
            ("limits.max_seq_len", self.max_seq_len),
            ("quant.group_size", self.group_size),
        ] {
            if v == 0 {
                return Err(err(field, "must be positive".into()));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(err(
                "arch.kv_heads",
                format!(
                    "({}) must divide arch.heads ({})",
                    self.kv_heads, self.heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(err(
                "arch.head_dim",
                format!("({}) must be even for RoPE", self.head_dim),
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(err(
                "arch.rope_base",
                format!("({}) must be positive", self.rope_base),
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(err(
                "arch.norm_eps",
                format!("({}) must be positive", self.norm_eps),
            ));
        }
        Ok(())
    }
}

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
                group_size: self.c.group_size,
            },
        })
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
        let (h, f) = (c.hidden, c.ffn);
        let q_width = c.heads * c.head_dim;
        let kv_width = c.kv_heads * c.head_dim;

        let tokens = self.input(
            "tokens",
            InputKind::Tokens,
            Shape(vec![Dim::Dynamic]),
            DType::I32,
        );
        let pos = self.input("pos", InputKind::Position, Shape::scalar(), DType::Index);
        let cache_shape = Shape::fixed(&[
            u64::from(c.blocks),
            2,
            u64::from(c.max_seq_len),
            u64::from(c.kv_heads),
            u64::from(c.head_dim),
        ]);
        let mut cache = self.input(
            "kv_cache",
            InputKind::KvCache,
            cache_shape.clone(),
            DType::F16,
        );

        let embd = self.quantized("token_embd.weight", c.vocab, h);
        let mut x = self.node("embed".into(), Op::Embedding { table: embd }, h, &[tokens]);

        for i in 0..c.blocks {
            let p = format!("blk.{i}");
            let attn_norm = self.vector(&format!("{p}.attn_norm.weight"), h);
            let wq = self.quantized(&format!("{p}.attn_q.weight"), q_width, h);
            let wk = self.quantized(&format!("{p}.attn_k.weight"), kv_width, h);
            let wv = self.quantized(&format!("{p}.attn_v.weight"), kv_width, h);
            let wo = self.quantized(&format!("{p}.attn_output.weight"), h, q_width);
            let ffn_norm = self.vector(&format!("{p}.ffn_norm.weight"), h);
            let wg = self.quantized(&format!("{p}.ffn_gate.weight"), f, h);
            let wu = self.quantized(&format!("{p}.ffn_up.weight"), f, h);
            let wd = self.quantized(&format!("{p}.ffn_down.weight"), h, f);

            let eps = c.norm_eps;
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
                head_dim: c.head_dim,
                base: c.rope_base,
            };
            let qr = self.node(format!("{p}.q_rope"), rope(c.heads), q_width, &[q, pos]);
            let kr = self.node(format!("{p}.k_rope"), rope(c.kv_heads), kv_width, &[k, pos]);
            cache = self.g.add_node(
                Node {
                    op: Op::KvWrite { layer: i },
                    name: format!("{p}.kv_write"),
                    shape: cache_shape.clone(),
                    dtype: DType::F16,
                },
                &[cache, kr, v, pos],
            );
            let attn = Op::Attention {
                layer: i,
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                causal: true,
            };
            let a = self.node(format!("{p}.attn"), attn, q_width, &[qr, cache, pos]);
            let o = self.node(
                format!("{p}.attn_output"),
                Op::MatMul { weight: wo },
                h,
                &[a],
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
                eps: c.norm_eps,
            },
            h,
            &[x],
        );
        let (head, tied) = if c.tied_embeddings {
            (embd, true)
        } else {
            (self.quantized("output.weight", c.vocab, h), false)
        };
        let logits = self.node(
            "logits".into(),
            Op::LmHead { weight: head, tied },
            c.vocab,
            &[n],
        );
        self.g.add_output(logits);
        self.g.add_output(cache);
        self.g
    }
}
