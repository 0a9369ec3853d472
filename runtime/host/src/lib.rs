//! `q35-host`: the host runtime that runs a compiled `.lpubin` model on a
//! device -- as IREE's runtime and tt-mlir's ttrt stand apart from their
//! compilers, it never links MLIR.
//!
//! - [`bar`]: the terminal progress bar `q35c` and `q35sim` draw.
//! - [`device`]: the [`Device`] trait a simulator, a many-chip system or a
//!   real chip implements (write a symbol, run once on persistent state,
//!   read a symbol).
//! - [`layout`]: where a symbol's elements lie in the machine's MEM
//!   (q35-isa's lane-wise layout), for devices that hold MEM.
//! - [`meta`]: the metadata keys the host reads.
//! - [`pipe`]: quiet ends on a closed pipe for the command-line tools.
//! - [`embedding`]: the token embedding section (f32 or a Q35 matrix).
//! - [`session`]: the token loop: inputs per step, prefill, sampling with
//!   `q35c run`'s sampler, stop tokens, chat prompts, the context check.
//! - [`check`]: `--check`, the golden model beside the device, logits and
//!   KV cache bit for bit after every step.
//! - [`golden`]: builds the golden model from a model.toml (what `q35c`
//!   compiles from and `q35sim run --check` compares with) and its hash.
//! - [`quant_cache`]: the quantized matrices of a model kept on disk under
//!   a key of everything they are computed from, so a second compile (or
//!   `--check`) of the same model does not quantize again.

pub mod bar;
pub mod batch;
pub mod check;
pub mod device;
pub mod embedding;
pub mod golden;
pub mod layout;
pub mod meta;
pub mod pipe;
pub mod quant_cache;
pub mod session;

pub use batch::{BatchGeneration, BatchRun, BatchSession};
pub use check::{Checker, Mismatch, Part};
pub use device::{Device, DeviceError, StepStats};
pub use embedding::{EmbeddingError, EmbeddingTable};
pub use layout::{LayoutError, SymbolLayout};
pub use meta::{
    BucketMeta, ChipMeta, GoldenRecipeMeta, HostMeta, MetaError, PrefillMeta, SystemMeta,
};
pub use session::{HostError, HostGeneration, Session, StepRecord};
