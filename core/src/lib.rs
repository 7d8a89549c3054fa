//! rllr-core: the engine every other rllr crate stands on.
//!
//! A Llama-family decoder written on candle so that the same code serves inference (batched, KV cache)
//! and training (gradients reach every trainable tensor), plus the nouns the trainers and the server
//! share: checkpoints, LoRA adapters, heads, chat templates, the CoT response format and sampling.

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod response;
pub mod sampling;
mod skinny;
pub mod task;
pub mod template;

pub use config::Config;
pub use error::{Error, Result};
pub use skinny::{isa, Isa};
pub mod batch;
pub mod kv_cache;
pub mod lora;
pub mod loss;
pub mod manifest;
pub mod model;
pub mod numerics;
pub mod ops;
pub mod rope;

pub use batch::{Batch, PaddingSide};
pub use decode::{Admission, DecodeEvents, Decoder, Rejected, Retired};
pub use generate::{generate, Generation, GenerationRequest};
pub use kv_cache::KvCache;
pub use lora::{ForwardCtx, LoraConfig};
pub use model::{Llama, ScoreHead};
pub use sampling::{FinishReason, SamplingParams, StopCriteria};
