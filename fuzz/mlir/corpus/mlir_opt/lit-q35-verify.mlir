// A well-formed fragment passes q35-verify unchanged, and stock mlir-opt
// accepts it with the dialect loaded from IRDL.
// RUN: %q35c opt %s --q35-verify | FileCheck %s
// RUN: %q35c opt %s --q35-verify | %mlir-opt --irdl-file=%irdl | FileCheck %s

// CHECK: "q35.weight"() {{.*}}sym_name = "w"
// CHECK: func.func @f
// CHECK: "q35.rmsnorm"
// CHECK: "q35.matmul"(%{{.*}}) {{.*}}weight = @w{{.*}} : (tensor<?x64xf32>) -> tensor<?x8xf32>
// CHECK: "q35.attention"
module {
  "q35.weight"() {sym_name = "w", source = "w.weight", type = tensor<8x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {sym_name = "wk", source = "wk.weight", type = tensor<32x64x!q35.qweight<"int4", 32 : i32>>} : () -> ()
  "q35.weight"() {sym_name = "norm", source = "norm.weight", type = tensor<64xf32>} : () -> ()
  func.func @f(%x: tensor<?x64xf32>, %pos: index, %kv: tensor<2x2x16x2x16xf32>) -> (tensor<?x8xf32>, tensor<?x64xf32>) {
    %n = "q35.rmsnorm"(%x) {weight = @norm, eps = 1.0e-05 : f32} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %y = "q35.matmul"(%n) {weight = @w, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x8xf32>
    %k = "q35.matmul"(%n) {weight = @wk, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x32xf32>
    %kv1 = "q35.kv_write"(%kv, %k, %k, %pos) {layer = 1 : i64} : (tensor<2x2x16x2x16xf32>, tensor<?x32xf32>, tensor<?x32xf32>, index) -> tensor<2x2x16x2x16xf32>
    %a = "q35.attention"(%n, %kv1, %pos) {layer = 1 : i64, heads = 4 : i64, kv_heads = 2 : i64, head_dim = 16 : i64, causal = true, scale = 0.25 : f32} : (tensor<?x64xf32>, tensor<2x2x16x2x16xf32>, index) -> tensor<?x64xf32>
    return %y, %a : tensor<?x8xf32>, tensor<?x64xf32>
  }
}
