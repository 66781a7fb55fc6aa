//! The compute engine on the caller's own files, outside any tenant: load a GGUF model, tokenize,
//! generate, read logits, train a LoRA adapter, merge it or export it for llama.cpp. Nothing here
//! touches the platform's storage, keys or audit log, so no policy applies; the command line's model
//! tools are built on it. Serving and fine-tuning for tenants go through [`Session`](crate::Session).

pub use soramai_kernels::engine::{Engine, Generation, Request};
pub use soramai_kernels::gguf::Gguf;
pub use soramai_kernels::lora::{Adapter, Target};
pub use soramai_kernels::merge::{MergeType, merge, to_llama_lora};
pub use soramai_kernels::model::{Model, Precision};
pub use soramai_kernels::npy::f32_vector as npy_f32_vector;
pub use soramai_kernels::sample::SamplingParams;
pub use soramai_kernels::tokenizer::Tokenizer;
pub use soramai_kernels::tokenizer::template::Message;
pub use soramai_kernels::train::{AdamW, Schedule, TrainConfig, Trainer, batch_plan};
pub use soramai_kernels::{Backend, Error};
