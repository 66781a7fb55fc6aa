//! The cubecl kernels. Activations are f32; weights stay in 4- or 8-bit blocks of 32 with an f32
//! scale and offset per block (`w = d·q + m`), unpacked in registers.
//!
//! Reductions use shared memory and `sync_cube` only (no plane intrinsics), so every kernel runs
//! the same on CUDA and on any Vulkan device, software ones included.

/// Threads per output row in the matrix products (one plane on NVIDIA).
pub const LANES: u32 = 32;
/// Output rows per cube in the matrix products.
pub const ROWS_PER_CUBE: u32 = 8;
/// Threads per cube of the row-wise kernels (norms, attention).
pub const ROW_THREADS: u32 = 128;
/// Key positions scored per pass of the attention kernel (shared memory).
pub const ATTN_CHUNK: u32 = 1024;

mod backward;
mod decode;
mod fused;
mod layer;
mod matmul;
mod step;

pub use backward::*;
pub use decode::*;
pub use fused::*;
pub use layer::*;
pub use matmul::*;
pub use step::*;

// Inside the kernels the shared-memory sizes, thread counts and the reductions' first strides are
// literals: a mutable kernel variable initialised from a folded constant expression (`128u32 / 2`)
// failed cubecl 0.11's verifier ("expected cube.ptr, found builtin.integer"). These consts are the
// host's copy of the same numbers.
const _: () = assert!(LANES * ROWS_PER_CUBE == 256 && ROW_THREADS == 128 && ATTN_CHUNK == 1024);
