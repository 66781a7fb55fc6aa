//! Soramai's compute engine: GGUF files, quantized CPU kernels, the llama-family forward pass with
//! batched multi-LoRA, tokenizers, sampling, and QLoRA training on the quantized base.
//!
//! This crate depends on no other workspace crate and knows nothing of tenants.
//!
//! `unsafe` is denied crate-wide; the places allowed to hold it, each block with its `// SAFETY:`
//! comment, are: the per-ISA kernels under [`cpu`] (`avx2`, `qdot`, `gemm`, and the dispatch in
//! `cpu/mod.rs` that calls them after detecting the CPU's features), the memory map in
//! [`gguf::Gguf::open`], one SIMD block in the trainer's ops (`train/ops.rs`), and the device
//! buffer views of the GPU backend (`cube/gpu/device.rs`).

#![deny(unsafe_code)]
// Kernels index several arrays by one counter; iterator chains would hide the block layouts.
#![allow(clippy::needless_range_loop)]

pub mod config;
pub mod cpu;
pub mod cube;
pub mod engine;
pub mod error;
pub mod family;
pub mod gguf;
pub mod grammar;
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
