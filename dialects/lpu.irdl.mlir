// The `lpu` dialect: one decode step (one token) at the hardware level of
// lpu-v1 (docs/lpu-dialect.md), as `--lpu-lower` produces it.
//
// GENERATED from the op table `q35_frontend::lpu_ops::OPS`
// (compiler/frontend/src/lpu_ops/mod.rs): do not edit. Regenerate with
// `Q35_BLESS=1 cargo test -p q35-frontend --test irdl`. `q35c` embeds this
// file and loads it through melior; stock tools load it with
// `mlir-opt --irdl-file=dialects/q35.irdl.mlir --irdl-file=dialects/lpu.irdl.mlir`
// (an lpu module keeps its `q35.*` module attributes, not q35 ops).
//
// Conventions:
// - Ops have no operands or results: every value is a module-level
//   `lpu.buffer` in MEM (host inputs, the output, KV caches, constants,
//   scratch), and matrices are `lpu.weight`s, named by flat symbol
//   references (`x = @blk.0.attn_norm.out`).
// - One op per model op; tiles are attributes (`col_tiles`, `groups`, the
//   ragged `last_tile_rows` / `last_group_cols`), never ops.
// - Later passes add attributes IRDL does not require: `slices` and `addr`
//   on buffers and weights (placement), `lpu.cycles = [first, last]` on ops
//   and `lpu.total_cycles` on `@decode` (schedule).
// - What IRDL checks here: required attributes and their kinds, and the
//   spelling of a buffer's `kind`. That symbols name buffers of the right
//   type and that shapes agree is the lowering's and the interpreter's job.
irdl.dialect @lpu {

  // A buffer in MEM, declared at module level: `kind` says who writes it
  // (input/output: the host, kv: kept across steps, const: loaded with the
  // program, scratch: an intermediate), `type` its tensor type. Const buffers
  // name their data in `source` (a GGUF tensor, or rope.cos / rope.sin).
  //   sym_name: the symbol ops name it by
  //   kind: who writes it
  //   type: its tensor type (one token)
  irdl.operation @buffer {
    %sym_name = irdl.base "#builtin.string"
    %kind_0 = irdl.is "input"
    %kind_1 = irdl.is "output"
    %kind_2 = irdl.is "kv"
    %kind_3 = irdl.is "const"
    %kind_4 = irdl.is "scratch"
    %kind = irdl.any_of(%kind_0, %kind_1, %kind_2, %kind_3, %kind_4)
    %type = irdl.base "#builtin.type"
    irdl.attributes { "sym_name" = %sym_name, "kind" = %kind, "type" = %type }
  }

  // A quantized weight matrix W (rows N = outputs x cols K = inputs), stored
  // 3.5-bit packed and cut into plane tiles: col_tiles = ceil(N / tile_rows)
  // output tiles times groups = ceil(K / group) quantization groups; ragged
  // edges are last_tile_rows and last_group_cols.
  //   sym_name: the symbol ops name it by
  //   source: the GGUF tensor it is packed from
  //   rows: N, output features
  //   cols: K, input features
  //   group: G, channels per quantization group
  //   col_tiles: ceil(N / tile_rows)
  //   groups: ceil(K / G)
  //   tile_rows: output rows of one plane tile (mxm.cols)
  //   last_tile_rows: N - tile_rows * (col_tiles - 1)
  //   last_group_cols: K - G * (groups - 1)
  //   scheme: the quantization scheme (q35, int4, ...)
  irdl.operation @weight {
    %sym_name = irdl.base "#builtin.string"
    %source = irdl.base "#builtin.string"
    %rows = irdl.base "#builtin.integer"
    %cols = irdl.base "#builtin.integer"
    %group = irdl.base "#builtin.integer"
    %col_tiles = irdl.base "#builtin.integer"
    %groups = irdl.base "#builtin.integer"
    %tile_rows = irdl.base "#builtin.integer"
    %last_tile_rows = irdl.base "#builtin.integer"
    %last_group_cols = irdl.base "#builtin.integer"
    %scheme = irdl.base "#builtin.string"
    irdl.attributes { "sym_name" = %sym_name, "source" = %source, "rows" = %rows, "cols" = %cols, "group" = %group, "col_tiles" = %col_tiles, "groups" = %groups, "tile_rows" = %tile_rows, "last_tile_rows" = %last_tile_rows, "last_group_cols" = %last_group_cols, "scheme" = %scheme }
  }

  // y = x / sqrt(lane_sum(x * x) / n + eps) * weight (docs/q35-format.md 8.4).
  //   x: input, f32[n]
  //   weight: const norm vector, f32[n]
  //   y: output, f32[n]
  //   n: features
  //   eps: epsilon
  irdl.operation @rmsnorm {
    %x = irdl.base "#builtin.symbol_ref"
    %weight = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %n = irdl.base "#builtin.integer"
    %eps = irdl.base "#builtin.float"
    irdl.attributes { "x" = %x, "weight" = %weight, "y" = %y, "n" = %n, "eps" = %eps }
  }

  // The f32 half of int8 activation quantization (8.1): amax = max |x|,
  // scale = amax / 127 on every lane of a word, xs = x * (127 / amax);
  // all zeros when amax < 2^-120. lpu.matmul rounds xs to int8 (f32toi8).
  //   x: input, f32[n]
  //   xs: x * (127 / amax), f32[n]
  //   scale: amax / 127 on every lane, f32[lanes]
  //   n: features
  irdl.operation @quantize {
    %x = irdl.base "#builtin.symbol_ref"
    %xs = irdl.base "#builtin.symbol_ref"
    %scale = irdl.base "#builtin.symbol_ref"
    %n = irdl.base "#builtin.integer"
    irdl.attributes { "x" = %x, "xs" = %xs, "scale" = %scale, "n" = %n }
  }

  // y = W x (8.2): codes = f32toi8(xs); per (col tile, group) one plane tile
  // gives the group's exact int32 partial sums acc_g for the tile's rows;
  // y = +0.0, y = y + f32(acc_g) * d[g, r] for ascending g, then y * scale.
  //   xs: prescaled input from lpu.quantize, f32[cols]
  //   scale: the activation scale word, f32[lanes]
  //   weight: the lpu.weight
  //   y: output, f32[rows]
  //   rows: N
  //   cols: K
  //   group: G
  //   col_tiles: output tiles
  //   groups: quantization groups
  irdl.operation @matmul {
    %xs = irdl.base "#builtin.symbol_ref"
    %scale = irdl.base "#builtin.symbol_ref"
    %weight = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %rows = irdl.base "#builtin.integer"
    %cols = irdl.base "#builtin.integer"
    %group = irdl.base "#builtin.integer"
    %col_tiles = irdl.base "#builtin.integer"
    %groups = irdl.base "#builtin.integer"
    irdl.attributes { "xs" = %xs, "scale" = %scale, "weight" = %weight, "y" = %y, "rows" = %rows, "cols" = %cols, "group" = %group, "col_tiles" = %col_tiles, "groups" = %groups }
  }

  // Rotary embedding at the position on @pos_idx: y = x * C + swap(x) * S with
  // C, S the rows of @rope_cos / @rope_sin for that position (S holds -sin on
  // even lanes, +sin on odd ones; swap exchanges lanes 2i and 2i+1).
  //   x: input, f32[heads * head_dim]
  //   y: output, f32[heads * head_dim]
  //   heads: heads
  //   head_dim: head width
  irdl.operation @rope {
    %x = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %heads = irdl.base "#builtin.integer"
    %head_dim = irdl.base "#builtin.integer"
    irdl.attributes { "x" = %x, "y" = %y, "heads" = %heads, "head_dim" = %head_dim }
  }

  // Writes the token's k into column pos of K^T (a scatter by @kv_idx: lane
  // pos % lanes to word pos / lanes, every other lane to the row's junk word)
  // and v into row pos of the V cache (@pos_idx).
  //   k: keys, f32[kv_dim]
  //   v: values, f32[kv_dim]
  //   kcache: the block's K cache
  //   vcache: the block's V cache
  irdl.operation @kv_write {
    %k = irdl.base "#builtin.symbol_ref"
    %v = irdl.base "#builtin.symbol_ref"
    %kcache = irdl.base "#builtin.symbol_ref"
    %vcache = irdl.base "#builtin.symbol_ref"
    irdl.attributes { "k" = %k, "v" = %v, "kcache" = %kcache, "vcache" = %vcache }
  }

  // Grouped-query attention over the whole context: per head, scores over all
  // ctx positions (dot over head_dim ascending, times scale) plus @attn_mask,
  // softmax (max, exp, lane_sum), output summed over positions ascending.
  // Masked positions weigh exactly zero.
  //   q: queries, f32[heads * head_dim]
  //   kcache: the block's K cache
  //   vcache: the block's V cache
  //   y: output, f32[heads * head_dim]
  //   heads: query heads
  //   kv_heads: key/value heads
  //   head_dim: head width
  //   scale: score scale, 1 / sqrt(head_dim)
  irdl.operation @attention {
    %q = irdl.base "#builtin.symbol_ref"
    %kcache = irdl.base "#builtin.symbol_ref"
    %vcache = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %heads = irdl.base "#builtin.integer"
    %kv_heads = irdl.base "#builtin.integer"
    %head_dim = irdl.base "#builtin.integer"
    %scale = irdl.base "#builtin.float"
    irdl.attributes { "q" = %q, "kcache" = %kcache, "vcache" = %vcache, "y" = %y, "heads" = %heads, "kv_heads" = %kv_heads, "head_dim" = %head_dim, "scale" = %scale }
  }

  // y = silu(gate) * up, silu(x) = x / (1 + exp(-x)), element-wise.
  //   gate: f32[n]
  //   up: f32[n]
  //   y: f32[n]
  //   n: features
  irdl.operation @swiglu {
    %gate = irdl.base "#builtin.symbol_ref"
    %up = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %n = irdl.base "#builtin.integer"
    irdl.attributes { "gate" = %gate, "up" = %up, "y" = %y, "n" = %n }
  }

  // y = a + b, element-wise (the residual connections).
  //   a: f32[n]
  //   b: f32[n]
  //   y: f32[n]
  //   n: features
  irdl.operation @add {
    %a = irdl.base "#builtin.symbol_ref"
    %b = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %n = irdl.base "#builtin.integer"
    irdl.attributes { "a" = %a, "b" = %b, "y" = %y, "n" = %n }
  }

  // y_r = sum_i M[r, i] * x_i along lanes (docs/q35-format.md 8.4 and 14.5) for a
  // block-diagonal M (blocks of `block` features, dividing the lanes): for
  // i = 0 .. block-1, y_r = y_r + m[i][r] * x[block * floor(r / block) + i] from
  // +0.0, m[i][r] = M[r, block * floor(r / block) + i] (the const `matrix`).
  //   x: input, f32[n]
  //   matrix: const, f32[block x words x lanes]: M's block columns, step by step
  //   y: output, f32[n]
  //   n: features
  //   block: the diagonal blocks' size (divides n and the lanes)
  irdl.operation @mix {
    %x = irdl.base "#builtin.symbol_ref"
    %matrix = irdl.base "#builtin.symbol_ref"
    %y = irdl.base "#builtin.symbol_ref"
    %n = irdl.base "#builtin.integer"
    %block = irdl.base "#builtin.integer"
    irdl.attributes { "x" = %x, "matrix" = %matrix, "y" = %y, "n" = %n, "block" = %block }
  }
}
