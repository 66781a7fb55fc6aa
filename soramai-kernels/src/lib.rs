//! Soramai's compute engine: GGUF files, quantized CPU kernels, the llama-family forward pass with
//! batched multi-LoRA, tokenizers, sampling, and QLoRA training on the quantized base.
//!
//! This crate depends on no other workspace crate and knows nothing of tenants. `unsafe` lives only
//! in the per-ISA kernel modules under [`cpu`] and the memory map in [`gguf`].

// Kernels index several arrays by one counter; iterator chains would hide the block layouts.
#![allow(clippy::needless_range_loop)]

pub mod config;
pub mod cpu;
pub mod cube;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod lora;
pub mod merge;
pub mod model;
pub mod npy;
pub mod prefix;
pub mod quant;
pub mod sample;
pub mod tokenizer;
pub mod train;

pub use cube::Backend;
pub use error::{Error, Result};

pub use engine::{Batch, Engine, Finish, Generation, ModelHeader, Request, TokenEvent, TokenLogprobs};
pub use model::{Model, Precision};
pub use prefix::{PrefixCache, PrefixStats};
pub use tokenizer::Tokenizer;
