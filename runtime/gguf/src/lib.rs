//! Validated, memory-mapped reader (and test writer) for GGUF v3 model files.
