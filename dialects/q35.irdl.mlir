// The `q35` dialect: a LLaMA-family decoder step at graph level.
//
// GENERATED from the op table `q35_frontend::ops::OPS`
// (compiler/frontend/src/ops/mod.rs): do not edit. Regenerate with
// `Q35_BLESS=1 cargo test -p q35-frontend --test irdl`. `q35c` embeds this
// file and loads it through melior; stock tools load it with
// `mlir-opt --irdl-file=dialects/q35.irdl.mlir`.
//
// What IRDL checks here: operand/result counts and that they are tensors (or
// `index`), required attributes and their kinds, and type equality where one
// constraint value is used twice (for example `q35.add` needs lhs, rhs and
// result of one type). What it cannot check (element types and dimensions of
// builtin tensors, that a symbol names a `q35.weight`, that K matches the
// weight) is checked by the `q35-verify` pass with the table's shape rules
// (`q35_frontend::ops::rules`).
//
// Conventions:
// - Activations are `tensor<?xDxf32>`: `?` tokens decoded in one step, starting
//   at position `%pos : index`.
// - Weights live in module-level `q35.weight` declarations and are referenced
//   by symbol (`@blk.0.attn_q`); their values are never inlined. A weight's
//   type is a tensor in [rows, columns] = [out, in] order; quantized weights
//   have element type `!q35.qweight<"scheme", group_size>`.
// - Matmuls quantize their input per token to int8 (`act_type = i8`) and
//   accumulate in int32 (`acc_type = i32`) on the systolic array; the result is
//   dequantized to f32 with the activation and weight scales.
//   `q35-quantize-activations` makes the quantization explicit
//   (`q35.quantize` feeding `q35.qmatmul`).
// - The KV cache is one tensor<blocks x 2 x max_seq x kv_heads x head_dim x f32>
//   threaded through the function: `q35.kv_write` returns the updated cache.
irdl.dialect @q35 {
  // Element type of a quantized weight tensor: the quantization scheme
  // (q35, q35-rtn, q35-alternating, int8, int4, int3) and its group size.
  irdl.type @qweight {
    %scheme = irdl.base "#builtin.string"
    %group = irdl.base "#builtin.integer"
    irdl.parameters(scheme: %scheme, group_size: %group)
  }

  // A model weight, declared once at module level. `sym_name` is the symbol
  // the ops refer to, `type` its tensor type, `source` the GGUF tensor name.
  irdl.operation @weight {
    %sym_name = irdl.base "#builtin.string"
    %type = irdl.base "#builtin.type"
    %source = irdl.base "#builtin.string"
    irdl.attributes { "sym_name" = %sym_name, "type" = %type, "source" = %source }
  }

  // Token embedding lookup: tokens tensor<?xi32> -> tensor<?xhidden x f32>,
  // rows of the weight `table` (dequantized).
  irdl.operation @embed {
    %tokens = irdl.base "!builtin.tensor"
    %out = irdl.base "!builtin.tensor"
    %table = irdl.base "#builtin.symbol_ref"
    irdl.attributes { "table" = %table }
    irdl.operands(tokens: %tokens)
    irdl.results(out: %out)
  }

  // RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
  irdl.operation @rmsnorm {
    %x = irdl.base "!builtin.tensor"
    %weight = irdl.base "#builtin.symbol_ref"
    %eps = irdl.base "#builtin.float"
    irdl.attributes { "weight" = %weight, "eps" = %eps }
    irdl.operands(x: %x)
    irdl.results(y: %x)
  }

  // y = x W^T with W = @weight [out, in]: int8 activations (quantized per
  // token), int32 accumulation, f32 result.
  irdl.operation @matmul {
    %x = irdl.base "!builtin.tensor"
    %y = irdl.base "!builtin.tensor"
    %weight = irdl.base "#builtin.symbol_ref"
    %act_type = irdl.is i8
    %acc_type = irdl.is i32
    irdl.attributes { "weight" = %weight, "act_type" = %act_type, "acc_type" = %acc_type }
    irdl.operands(x: %x)
    irdl.results(y: %y)
  }

  // Rotary position embedding on each of `heads` heads of `head_dim`, token t
  // at position pos + t, frequencies base^(-2i/head_dim). `pairing =
  // "adjacent"` rotates (x[2i], x[2i+1]) as llama.cpp's LLAMA_ROPE_TYPE_NORM
  // does on GGUF's permuted Q/K rows.
  irdl.operation @rope {
    %x = irdl.base "!builtin.tensor"
    %pos = irdl.is index
    %heads = irdl.base "#builtin.integer"
    %head_dim = irdl.base "#builtin.integer"
    %base = irdl.base "#builtin.float"
    %pairing = irdl.is "adjacent"
    irdl.attributes { "heads" = %heads, "head_dim" = %head_dim, "base" = %base, "pairing" = %pairing }
    irdl.operands(x: %x, pos: %pos)
    irdl.results(y: %x)
  }

  // Writes k and v (tensor<?x kv_heads*head_dim x f32>) of block `layer` into
  // the cache at positions pos .. pos+?-1; returns the updated cache.
  irdl.operation @kv_write {
    %cache = irdl.base "!builtin.tensor"
    %k = irdl.base "!builtin.tensor"
    %pos = irdl.is index
    %layer = irdl.base "#builtin.integer"
    irdl.attributes { "layer" = %layer }
    irdl.operands(cache: %cache, k: %k, v: %k, pos: %pos)
    irdl.results(updated: %cache)
  }

  // Grouped-query attention of block `layer`: `heads` query heads share
  // `kv_heads` key/value heads read from the cache; with `causal`, token t sees
  // positions 0 .. pos+t. Scores are scaled by `scale` (1/sqrt(head_dim)).
  irdl.operation @attention {
    %q = irdl.base "!builtin.tensor"
    %cache = irdl.base "!builtin.tensor"
    %pos = irdl.is index
    %layer = irdl.base "#builtin.integer"
    %heads = irdl.base "#builtin.integer"
    %kv_heads = irdl.base "#builtin.integer"
    %head_dim = irdl.base "#builtin.integer"
    %causal = irdl.base "#builtin.integer"
    %scale = irdl.base "#builtin.float"
    irdl.attributes { "layer" = %layer, "heads" = %heads, "kv_heads" = %kv_heads, "head_dim" = %head_dim, "causal" = %causal, "scale" = %scale }
    irdl.operands(q: %q, cache: %cache, pos: %pos)
    irdl.results(out: %q)
  }

  // Element-wise sum (the residual connections).
  irdl.operation @add {
    %lhs = irdl.base "!builtin.tensor"
    irdl.operands(lhs: %lhs, rhs: %lhs)
    irdl.results(sum: %lhs)
  }

  // SwiGLU gate: silu(gate) * up, element-wise.
  irdl.operation @swiglu {
    %gate = irdl.base "!builtin.tensor"
    irdl.operands(gate: %gate, up: %gate)
    irdl.results(out: %gate)
  }

  // Logits: x W^T with W = @weight [vocab, hidden], quantized like
  // `q35.matmul`; `tied` says W is the token embedding table.
  irdl.operation @lm_head {
    %x = irdl.base "!builtin.tensor"
    %logits = irdl.base "!builtin.tensor"
    %weight = irdl.base "#builtin.symbol_ref"
    %act_type = irdl.is i8
    %acc_type = irdl.is i32
    %tied = irdl.base "#builtin.integer"
    irdl.attributes { "weight" = %weight, "act_type" = %act_type, "acc_type" = %acc_type, "tied" = %tied }
    irdl.operands(x: %x)
    irdl.results(logits: %logits)
  }

  // Per-token int8 quantization of activations (docs/q35-format.md 8.1):
  // x tensor<?xKxf32> -> codes tensor<?xKxi8> in -127..127 and one f32 scale
  // per token (amax / 127; 0 for an all-zero token).
  irdl.operation @quantize {
    %x = irdl.base "!builtin.tensor"
    %codes = irdl.base "!builtin.tensor"
    %scale = irdl.base "!builtin.tensor"
    irdl.operands(x: %x)
    irdl.results(codes: %codes, scale: %scale)
  }

  // y = dequant(codes W^T) with W = @weight [out, in]: int8 codes from
  // `q35.quantize`, int32 accumulation per group, f32 result scaled by the
  // weight's group scales and the token's `scale` (docs/q35-format.md 8.2).
  irdl.operation @qmatmul {
    %codes = irdl.base "!builtin.tensor"
    %scale = irdl.base "!builtin.tensor"
    %y = irdl.base "!builtin.tensor"
    %weight = irdl.base "#builtin.symbol_ref"
    %acc_type = irdl.is i32
    irdl.attributes { "weight" = %weight, "acc_type" = %acc_type }
    irdl.operands(codes: %codes, scale: %scale)
    irdl.results(y: %y)
  }

  // f32 mix of each token's features by the square f32 matrix @matrix [N, N]:
  // y_r = sum_i M[r, i] * x_i, each product rounded, summed along lanes in
  // ascending i from +0.0 (docs/q35-format.md 8.4, `mix_along_lanes`). The
  // rotated residual stream's final-norm output is mixed by
  // M = R diag(gamma_out) R^T before the LM head (14.5). M is zero outside
  // its diagonal blocks of `block` consecutive features.
  irdl.operation @mix {
    %x = irdl.base "!builtin.tensor"
    %matrix = irdl.base "#builtin.symbol_ref"
    %block = irdl.base "#builtin.integer"
    irdl.attributes { "matrix" = %matrix, "block" = %block }
    irdl.operands(x: %x)
    irdl.results(y: %x)
  }
}
