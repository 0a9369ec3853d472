// q35-quantize-activations rewrites each q35.matmul / q35.lm_head into a
// q35.quantize (f32 -> int8 codes + per-token scale) feeding a q35.qmatmul.
// share=true (the default) quantizes each value once, right after its
// definition, for all its matmuls; share=false quantizes before each matmul.
// The result passes q35-verify and stock mlir-opt with the IRDL dialect.
// RUN: %q35c opt %s --q35-quantize-activations --q35-verify | FileCheck %s --check-prefix=SHARE
// RUN: %q35c opt %s --pass-pipeline='builtin.module(q35-quantize-activations{share=true},q35-verify)' | FileCheck %s --check-prefix=SHARE
// RUN: %q35c opt %s --q35-quantize-activations=share=false --q35-verify | FileCheck %s --check-prefix=EACH
// RUN: %q35c opt %s --q35-quantize-activations | %mlir-opt --irdl-file=%irdl | FileCheck %s --check-prefix=SHARE

// SHARE:      %[[N:.*]] = "q35.rmsnorm"
// SHARE-NEXT: %[[Q:.*]]:2 = "q35.quantize"(%[[N]]) : (tensor<?x64xf32>) -> (tensor<?x64xi8>, tensor<?xf32>)
// SHARE-NEXT: "q35.qmatmul"(%[[Q]]#0, %[[Q]]#1) {acc_type = i32, weight = @wq} : (tensor<?x64xi8>, tensor<?xf32>) -> tensor<?x64xf32>
// SHARE-NEXT: "q35.qmatmul"(%[[Q]]#0, %[[Q]]#1) {acc_type = i32, weight = @wk}
// SHARE-NEXT: %[[S:.*]] = "q35.add"
// SHARE-NEXT: %[[H:.*]]:2 = "q35.quantize"(%[[S]])
// SHARE-NEXT: "q35.qmatmul"(%[[H]]#0, %[[H]]#1) {acc_type = i32, weight = @wq}
// SHARE-NOT:  "q35.matmul"
// SHARE-NOT:  "q35.lm_head"

// EACH:      %[[N:.*]] = "q35.rmsnorm"
// EACH-NEXT: %[[Q1:.*]]:2 = "q35.quantize"(%[[N]])
// EACH-NEXT: "q35.qmatmul"(%[[Q1]]#0, %[[Q1]]#1) {acc_type = i32, weight = @wq}
// EACH-NEXT: %[[Q2:.*]]:2 = "q35.quantize"(%[[N]])
// EACH-NEXT: "q35.qmatmul"(%[[Q2]]#0, %[[Q2]]#1) {acc_type = i32, weight = @wk}
// EACH-NEXT: %[[S:.*]] = "q35.add"
// EACH-NEXT: %[[Q3:.*]]:2 = "q35.quantize"(%[[S]])
// EACH-NEXT: "q35.qmatmul"(%[[Q3]]#0, %[[Q3]]#1) {acc_type = i32, weight = @wq}
module {
  "q35.weight"() {sym_name = "wq", source = "wq.weight", type = tensor<64x64x!q35.qweight<"q35", 32 : i32>>} : () -> ()
  "q35.weight"() {sym_name = "wk", source = "wk.weight", type = tensor<32x64x!q35.qweight<"int4", 32 : i32>>} : () -> ()
  "q35.weight"() {sym_name = "norm", source = "norm.weight", type = tensor<64xf32>} : () -> ()
  func.func @f(%x: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?x32xf32>, tensor<?x64xf32>) {
    %n = "q35.rmsnorm"(%x) {weight = @norm, eps = 1.0e-05 : f32} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %q = "q35.matmul"(%n) {weight = @wq, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    %k = "q35.matmul"(%n) {weight = @wk, act_type = i8, acc_type = i32} : (tensor<?x64xf32>) -> tensor<?x32xf32>
    %s = "q35.add"(%q, %q) : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %l = "q35.lm_head"(%s) {weight = @wq, act_type = i8, acc_type = i32, tied = false} : (tensor<?x64xf32>) -> tensor<?x64xf32>
    return %q, %k, %l : tensor<?x64xf32>, tensor<?x32xf32>, tensor<?x64xf32>
  }
}
