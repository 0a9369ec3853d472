//! GPT-2 style byte-level BPE tokenizer built from GGUF metadata, matching llama.cpp.
