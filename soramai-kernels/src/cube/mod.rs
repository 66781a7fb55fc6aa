//! The GPU backend, written once in cubecl: the same ops as [`crate::cpu`] as cubecl kernels, and
//! the llama-family forward pass on them ([`GpuModel`]) with weights uploaded once, a paged KV
//! cache and batched multi-LoRA (each row of a batch with its own adapter, BGMV-style); and the
//! QLoRA trainer's step ([`GpuTrainer`]: forward, backward and AdamW with everything kept on the
//! device; `op` exposes every kernel on host slices for the tests that hold them to the CPU's).
//!
//! | runtime | feature | devices |
//! | --- | --- | --- |
//! | wgpu | `wgpu` | any Vulkan, Metal or DX12 GPU, and Mesa lavapipe (software Vulkan) |
//! | cuda | `cuda` | NVIDIA GPUs through cubecl's CUDA runtime |
//!
//! The API is the same in every build: [`Backend`] names every backend, and asking for one this
//! build left out, or that the machine lacks, is an [`Error::Backend`].
//!
//! Weights keep their blocks of 32: 4-bit formats (Q4_0, Q4_1, Q4_K) as 4-bit codes and 8-bit ones
//! (Q8_0) as 8-bit codes, each block with an f32 scale and offset (`w = d·q + m`), unpacked in
//! registers; other formats (F16, BF16, Q5/Q6/Q2/Q3) are uploaded dequantized to f32.
//! Activations are f32, so the GPU computes what the CPU's `exact` precision does, summed in
//! another order.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) mod gpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod kernels;
pub mod pack;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod train;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use gpu::{Gpu, GpuCache, GpuDecode, GpuLane, GpuModel, GpuOptions, op};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use train::GpuTrainer;

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
mod stub;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub use stub::{Gpu, GpuCache, GpuDecode, GpuLane, GpuModel, GpuOptions, GpuTrainer};

/// Steps a decode loop on the device queues between two reads of the chosen tokens
/// (`GpuModel::greedy`).
pub const DECODE_CHUNK: usize = 16;

/// Where the kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// The CPU kernels (rayon + SIMD); always built, the default.
    #[default]
    Cpu,
    /// cubecl on wgpu: Vulkan, Metal, DX12, or software Vulkan (lavapipe).
    Wgpu,
    /// cubecl on CUDA.
    Cuda,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Wgpu, Backend::Cuda];

    /// The name used on command lines and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this build includes the backend.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Cpu => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(Error::Backend(format!("unknown backend {other:?} (cpu, wgpu, cuda)"))),
        }
    }
}

/// The error for a backend this build does not include.
pub(crate) fn not_compiled(b: Backend) -> Error {
    Error::Backend(format!("this build does not include the {b} backend (build with `--features {b}`)"))
}
