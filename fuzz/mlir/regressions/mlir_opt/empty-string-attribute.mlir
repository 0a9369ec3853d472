module attributes {q35.arch = {blocks = 2 : i64, context = 128 : i64, family = "llama", ffn = 128 : i64, head_dim = 16 : i64, heads = 4 : i64, hidden = 64 : i64, kv_heads = 2 : i64, norm_eps = 9.99999974E-6 : f32, rope_base = 1.000000e+04 : f32, tied_embeddings = true, vocab = 256 : i64}, q35.limits = {batch = 1 : i64, max_seq_len = 128 : i64}, q35.model = "tiny", q35.quant = {acc_type = i32, act_type = i8, group_size = 32 : i64, scheme = "q35"}, q35.target = {c2c = {chips_per_node = 8 : i64, gbps_per_lane = 3.000000e+01 : f64, global_links_per_chip = 9 : i64, lanes_per_link = 4 : i64, link_latency_cycles = 500 : i64, links_per_chip = 16 : i64, nodes_per_rack = 9 : i64, receive_buffer_vectors = 2 : i64, receive_latency_cycles = 1 : i64, topology = "dragonfly"}, clock_mhz = 9.000000e+02 : f64, description = "LPU-style TSP, 14 nm first generation (published figures, assumed where noted)", floorplan = {outward = ["mem", "sxm", "mxm"]}, icu = {instruction_bytes = 8 : i64, notify_latency_cycles = 4 : i64}, mem = {banks_per_slice = 2 : i64, bytes = 230686720 : i64, read_latency_cycles = 1 : i64, read_ports = 1 : i64, slices = 88 : i64, word_bytes = 320 : i64, words_per_slice = 8192 : i64, write_latency_cycles = 1 : i64, write_ports = 1 : i64}, mxm = {acc_bits = 32 : i64, cols = 320 : i64, install_rows_per_cycle = 32 : i64, pe_block = 16 : i64, pe_hopmcycles = 1 : i64, planes = 4 : i64, queues_per_plane = 1 : i64, rows = 320 : i64, swap_cycles = 1 : i64, weight_buffers = 2 : i64}, name = "lpu-v1", streams = {hop_cycles = 1 : i64, r_epdirection = 32 : i64}, sxm = {permute_latency = 20 : i64, queues_per_unit = 1 : i64, shift_latency = 21 : i64, transpose_latency = 16 : i64, units = 2 : i64}, vector = {lanes = 320 : i64, lanes_per_suralpnee = 16 : i64, superlane_skew_cycles = 1 : i64, superlanes = 20 : i64}, vxm = {alu_latency = 4 : i64, alus_per_lane = 16 : i64, convert_latency = 4 : i64, special_latency = 16 : i64}}, q35.weights = "synthetic:7"} {
  "q35.weight"() {source = "token_embd.weight", sym_name = "token_embd", type = tensor<256x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.attn_norm.weight", sym_name = "blk.0.attn_norm", type = tensor<64xf32>} : () -> ()
  "q35.weight"() {source = "blk.0.attn_q.weight", sym_name = "blk.0.attn_q", type = tensor<64x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.attn_k.weight", sym_name = "blk.0.attn_k", type = tensor<32x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.attn_v.weight", sym_name = "blk.0.attn_v", type = tensor<32x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.attn_output.weight", sym_name = "blk.0.attn_output", type = tensor<64x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.ffn_norm.weight", sym_name = "blk.0.ffn_norm", type = tensor<64xf32>} : () -> ()
  "q35.weight"() {source = "blk.0.ffn_gate.weight", sym_name = "blk.0.ffn_gate", type = tensor<128x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.ffn_up.weight", sym_name = "blk.0.ffn_up", type = tensor<128x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.0.ffn_down.weight", sym_name = "blk.0.ffn_down", type = tensor<64x128x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.1.attn_norm.weight", sym_name = "blk.1.attn_norm", type = tensor<64xf32>} : () -> ()
  "q35.weight"() {source = "blk.1.attn_q.weight", sym_name = "blk.1.attn_q", type = tensor<64x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.1.attn_k.weight", sym_name = "blk.1.attn_k", type = tensor<32x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.1.attn_v.weight", sym_name = "blk.1.attn_v", type = tensor<32x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "", sym_name = "blk.1.attn_output", type = tensor<64x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.1.ffn_norm.weight", sym_name = "blk.1.ffn_norm", type = tensor<64xf32>} : () -> ()
  "q35.weight"() {source = "blk.1.ffn_gate.weight", sym_name = "blk.1.ffn_gate", type = tensor<128x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.1.ffn_up.weight", sym_name = "blk.1.ffn_up", type = tensor<128x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "blk.1.ffn_down.weight", sym_name = "blk.1.ffn_down", type = tensor<64x128x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {source = "output_norm.weight", sym_name = "output_norm", type = tensor<64xf32>} : () -> ()
  func.func @decode(%arg0: tensor<?xi32>, %arg1: index, %arg2: tensor<2x2x128x2x16xf32>) -> (tensor<?x256xf32>, tensor<2x2x128x2x16xf32>) {
    %0 = "q35.embed"(%arg0) {table = @token_embd} : (tensor<?xi32>) -> tensor<?x64xf32>
    %1 = "q35.rmsnorm"(%0) {eps = 9.99999974E-6 : f32, weight = @blk.0.attn_norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %2 = "q35.matmul"(%1) {acc_type = i32, act_type = i8, weight = @blk.0.attn_q} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %3 = "q35.matmul"(%1) {acc_type = i32, act_type = i8, weight = @blk.0.attn_k} : (tensor<?x64xf32>) -> tensor<?x32xf32>
    %4 = "q35.matmul"(%1) {acc_type = i32, act_type = i8, weight = @blk.0.attn_v} : (tensor<?x64xf32>) -> tensor<?x32xf32>
    %5 = "q35.rope"(%2, %arg1) {base = 1.000000e+04 : f32, head_dim = 16 : i64, heads = 4 : i64, pairing = "adjacent"} : (tensor<?x64xf32>, index) -> tensor<?x64xf32>
    %6 = "q35.rope"(%3, %arg1) {base = 1.000000e+04 : f32, head_dim = 16 : i64, heads = 2 : i64, pairing = "adjacent"} : (tensor<?x32xf32>, index) -> tensor<?x32xf32>
    %7 = "q35.kv_write"(%arg2, %6, %4, %arg1) {layer = 0 : i64} : (tensor<2x2x128x2x16xf32>, tensor<?x32xf32>, tensor<?x32xf32>, index) -> tensor<2x2x128x2x16xf32>
    %8 = "q35.attention"(%5, %7, %arg1) {causal = true, head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 0 : i64, scale = 2.500000e-01 : f32} : (tensor<?x64xf32>, tensor<2x2x128x2x16xf32>, index) -> tensor<?x64xf32>
    %9 = "q35.matmul"(%8) {acc_type = i32, act_type = i8, weight = @blk.0.attn_output} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %10 = "q35.add"(%0, %9) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %11 = "q35.rmsnorm"(%10) {eps = 9.99999974E-6 : f32, weight = @blk.0.ffn_norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %12 = "q35.matmul"(%11) {acc_type = i32, act_type = i8, weight = @blk.0.ffn_gate} : (tensor<?x64xf32>) -> tensor<?x128xf32>
    %13 = "q35.matmul"(%11) {acc_type = i32, act_type = i8, weight = @blk.0.ffn_up} : (tensor<?x64xf32>) -> tensor<?x128xf32>
    %14 = "q35.swiglu"(%12, %13) : (tensor<?x128xf32>, tensor<?x128xf32>) -> tensor<?x128xf32>
    %15 = "q35.matmul"(%14) {acc_type = i32, act_type = i8, weight = @blk.0.ffn_down} : (tensor<?x128xf32>) -> tensor<?x64xf32>
    %16 = "q35.add"(%10, %15) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %17 = "q35.rmsnorm"(%16) {eps = 9.99999974E-6 : f32, weight = @blk.1.attn_norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %18 = "q35.matmul"(%17) {acc_type = i32, act_type = i8, weight = @blk.1.attn_q} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %19 = "q35.matmul"(%17) {acc_type = i32, act_type = i8, weight = @blk.1.attn_k} : (tensor<?x64xf32>) -> tensor<?x32xf32>
    %20 = "q35.matmul"(%17) {acc_type = i32, act_type = i8, weight = @blk.1.attn_v} : (tensor<?x64xf32>) -> tensor<?x32xf32>
    %21 = "q35.rope"(%18, %arg1) {base = 1.000000e+04 : f32, head_dim = 16 : i64, heads = 4 : i64, pairing = "adjacent"} : (tensor<?x64xf32>, index) -> tensor<?x64xf32>
    %22 = "q35.rope"(%19, %arg1) {base = 1.000000e+04 : f32, head_dim = 16 : i64, heads = 2 : i64, pairing = "adjacent"} : (tensor<?x32xf32>, index) -> tensor<?x32xf32>
    %23 = "q35.kv_write"(%7, %22, %20, %arg1) {layer = 1 : i64} : (tensor<2x2x128x2x16xf32>, tensor<?x32xf32>, tensor<?x32xf32>, index) -> tensor<2x2x128x2x16xf32>
    %24 = "q35.attention"(%21, %23, %arg1) {causal = true, head_dim = 16 : i64, heads = 4 : i64, kv_heads = 2 : i64, layer = 1 : i64, scale = 2.500000e-01 : f32} : (tensor<?x64xf32>, tensor<2x2x128x2x16xf32>, index) -> tensor<?x64xf32>
    %25 = "q35.matmul"(%24) {acc_type = i32, act_type = i8, weight = @blk.1.attn_output} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %26 = "q35.add"(%16, %25) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %27 = "q35.rmsnorm"(%26) {eps = 9.99999974E-6 : f32, weight = @blk.1.ffn_norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %28 = "q35.matmul"(%27) {acc_type = i32, act_type = i8, weight = @blk.1.ffn_gate} : (tensor<?x64xf32>) -> tensor<?x128xf32>
    %29 = "q35.matmul"(%27) {acc_type = i32, act_type = i8, weight = @blk.1.ffn_up} : (tensor<?x64xf32>) -> tensor<?x128xf32>
    %30 = "q35.swiglu"(%28, %29) : (tensor<?x128xf32>, tensor<?x128xf32>) -> tensor<?x128xf32>
    %31 = "q35.matmul"(%30) {acc_type = i32, act_type = i8, weight = @blk.1.ffn_down} : (tensor<?x128xf32>) -> tensor<?x64xf32>
    %32 = "q35.add"(%26, %31) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %33 = "q35.rmsnorm"(%32) {eps = 9.99999974E-6 : f32, weight = @output_norm} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %34 = "q35.lm_head"(%33) {acc_type = i32, act_type = i8, tied = true, weight = @token_embd} : (tensor<?x64xf32>) -> tensor<?x256xf32>
    return %34, %23 : tensor<?x256xf32>, tensor<2x2x128x2x16xf32>
  }
}
