//! f32 reference LLaMA forward pass, generation and evaluation (matches llama.cpp).
