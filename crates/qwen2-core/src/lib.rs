//! qwen2-core: everything needed to run a Qwen2-family model on CPU — configuration, GGUF and
//! safetensors loading, the forward pass, KV cache, sampling and generation. Tokenization and
//! chat templates live in `qwen2-tokenizer`; quantized formats and matmul in `qwen2-kernels`.

pub mod config;
pub mod convert;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod moe;
pub mod ops;
pub mod perplexity;
pub mod quantize;
pub mod rows;
pub mod sampling;
pub mod weights;

pub use config::Config;
pub use error::{Error, Result};
pub use generate::{generate, FinishReason, GenerateParams, Generation};
pub use kv_cache::{KvCache, KvDtype};
pub use loader::{load, LoadedModel};
pub use model::{BatchSeq, Logits, Precision, Qwen2};
pub use rows::RowRole;
pub use sampling::{Sampler, SamplingParams};
pub use weights::{Tensor, WeightSource};

pub use qwen2_kernels;
pub use qwen2_tokenizer;
