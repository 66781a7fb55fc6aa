//! Soramai's compute engine (GGUF reader, quantized kernels, llama forward, LoRA, training).
//!
//! This crate depends on no other workspace crate and knows nothing of tenants. Its capabilities land
//! issue by issue; see `DESIGN.md` in the shared design folder for the layout it grows into.
