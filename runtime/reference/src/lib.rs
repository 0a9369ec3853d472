//! f32 reference LLaMA forward pass, generation and evaluation (matches llama.cpp).
//!
//! This is the project's golden model: the quantized integer path
//! (q35-contract's golden forward pass) and the simulator are held against
//! it, and it is held against llama.cpp (recorded fixtures,
//! `scripts/reference/record_llamacpp.py`). Its RoPE angles come from the
//! contract (`q35_contract::rope::rope_thetas`), so both rotate alike.
//!
//! - [`Model`]: weights from a GGUF ([`Model::from_gguf`]) or an in-memory
//!   [`WeightMap`] ([`Model::from_weights`], [`synthetic_weights`]), the
//!   forward pass over a [`Session`] (KV cache), generation
//!   ([`Model::generate`]) and evaluation ([`Model::perplexity`],
//!   [`Model::compare`]).
//! - [`Linear`]: the matrix layers behind a trait, so a quantized model is the
//!   same [`Model`] with its layers replaced ([`Model::replace_linear`]).
//! - [`kernels`]: the numeric kernels, following ggml's CPU ops.

mod config;
mod error;
mod eval;
mod generate;
pub mod kernels;
mod linear;
mod model;
mod sampling;
mod session;
#[cfg(target_arch = "x86_64")]
mod simd;
mod weights;

pub use config::Config;
pub use error::ReferenceError;
pub use eval::{
    ComparisonReport, PerplexityOptions, PerplexityReport, WindowScore, kl_divergence, log_prob,
};
pub use generate::{GenerateOptions, Generation, StopReason};
pub use linear::{DenseLinear, DequantLinear, Linear, LinearId, LinearKind};
pub use model::{Block, Logits, Model, Observer, WeightFormat};
pub use sampling::{Rng, Sampler, SamplingParams, splitmix64};
pub use session::Session;
pub use weights::{Tensor, WeightMap, synthetic_weights};
