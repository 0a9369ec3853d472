//! The q35 MLIR dialect (IRDL) through melior: lowering from the graph and passes.
