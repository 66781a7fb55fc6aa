//! The cubecl backend's host side: the device, buffers, one launcher per op, and [`GpuModel`].

pub(crate) mod device;
mod launch;
mod model;
pub mod op;
mod weights;

pub(crate) use device::Buf;
pub use device::Gpu;
use launch::SUM_BLOCK;
pub(crate) use launch::{AttnShape, row_ends};
pub(crate) use model::check_head_dim;
pub use model::{GpuCache, GpuDecode, GpuLane, GpuModel, GpuOptions};
use weights::GpuWeights;
pub(crate) use weights::{DeviceWeights, GpuLayer, GpuMat, LoraBank};
