//! The GPU types in a build without `wgpu` or `cuda`: the same API, refusing with
//! [`Error::Backend`] at the first call (no value of these types can exist).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use super::{Backend, not_compiled};
use crate::error::{Error, Result};
use crate::lora::{Adapter, Target};
use crate::model::{Logits, Model};
use crate::tokenizer::TokenId;
use crate::train::{Example, StepStats, TrainConfig};

/// A device and its compute client (none in this build).
#[derive(Clone, Debug)]
pub struct Gpu(Infallible);

impl Gpu {
    /// Refuses: this build has no GPU backend.
    pub fn new(backend: Backend) -> Result<Self> {
        match backend {
            Backend::Cpu => Err(Error::Backend("the cpu backend has no GPU device".into())),
            other => Err(not_compiled(other)),
        }
    }
    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.0 {}
    }
    /// The device's name.
    pub fn name(&self) -> &'static str {
        match self.0 {}
    }
    /// Waits for the device.
    pub fn sync(&self) -> Result<()> {
        match self.0 {}
    }
    /// Kernel launches.
    pub fn launches(&self) -> u64 {
        match self.0 {}
    }
    /// Times the host waited for the device.
    pub fn waits(&self) -> u64 {
        match self.0 {}
    }
}

/// Options of a [`GpuModel`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Token positions the paged KV cache holds, over all sequences together.
    pub kv_tokens: usize,
    /// Positions per page.
    pub page: usize,
}

/// A sequence's place in the paged KV cache.
#[derive(Debug)]
pub struct GpuCache(Infallible);

impl GpuCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        match self.0 {}
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        match self.0 {}
    }
}

/// One sequence's part of a batch on the GPU.
#[derive(Debug)]
pub struct GpuLane<'a> {
    /// Its cache.
    pub cache: &'a mut GpuCache,
    /// New tokens.
    pub tokens: &'a [TokenId],
    /// The name of a loaded adapter, if any.
    pub adapter: Option<&'a str>,
    /// Which logits to return.
    pub logits: Logits,
}

/// One sequence of a decode loop on the device.
#[derive(Debug)]
pub struct GpuDecode<'a> {
    /// Its cache.
    pub cache: &'a mut GpuCache,
    /// What to feed first.
    pub tokens: &'a [TokenId],
    /// The name of a loaded adapter, if any.
    pub adapter: Option<&'a str>,
    /// At most this many tokens are chosen.
    pub max_tokens: usize,
}

/// A model on a GPU (none in this build).
#[derive(Debug)]
pub struct GpuModel(Infallible);

impl GpuModel {
    /// Unreachable without a [`Gpu`].
    pub fn new(gpu: Gpu, _model: Arc<Model>, _options: GpuOptions) -> Result<Self> {
        match gpu.0 {}
    }
    /// The device.
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    /// The model on the host.
    pub fn model(&self) -> &Arc<Model> {
        match self.0 {}
    }
    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        match self.0 {}
    }
    /// A fresh cache.
    pub fn new_cache(&self) -> GpuCache {
        match self.0 {}
    }
    /// Loads an adapter.
    pub fn add_adapter(&self, _name: impl Into<String>, _adapter: Adapter) -> Result<()> {
        match self.0 {}
    }
    /// Unloads an adapter.
    pub fn remove_adapter(&self, _name: &str) -> Result<bool> {
        match self.0 {}
    }
    /// One pass over the lanes.
    pub fn forward(&self, _lanes: &mut [GpuLane<'_>]) -> Result<Vec<Vec<f32>>> {
        match self.0 {}
    }
    /// Greedy decoding with the loop on the device.
    pub fn decode_greedy(
        &self,
        _lanes: &mut [GpuDecode<'_>],
        _stop: &[TokenId],
        _chunk: usize,
    ) -> Result<Vec<Vec<TokenId>>> {
        match self.0 {}
    }
    /// Greedy decoding.
    pub fn greedy(&self, _prompt: &[TokenId], _max_tokens: usize, _adapter: Option<&str>) -> Result<Vec<TokenId>> {
        match self.0 {}
    }
}

/// The QLoRA trainer's step on a GPU (none in this build).
#[derive(Debug)]
pub struct GpuTrainer(Infallible);

#[allow(clippy::type_complexity)]
impl GpuTrainer {
    /// Unreachable without a [`Gpu`].
    pub fn new(gpu: Gpu, _model: Arc<Model>, _config: TrainConfig) -> Result<Self> {
        match gpu.0 {}
    }
    /// Unreachable without a [`Gpu`].
    pub fn from_state(gpu: Gpu, _model: Arc<Model>, _bytes: &[u8]) -> Result<Self> {
        match gpu.0 {}
    }
    /// The device.
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        match self.0 {}
    }
    /// Optimizer steps taken.
    pub fn steps_done(&self) -> usize {
        match self.0 {}
    }
    /// Number of trained values.
    pub fn trainable_parameters(&self) -> usize {
        match self.0 {}
    }
    /// Bytes of frozen weight matrices on the device.
    pub fn weight_bytes(&self) -> usize {
        match self.0 {}
    }
    /// Mean weighted loss of a batch.
    pub fn loss(&self, _batch: &[Example]) -> Result<f32> {
        match self.0 {}
    }
    /// One optimizer step.
    pub fn step(&mut self, _batch: &[Example]) -> Result<StepStats> {
        match self.0 {}
    }
    /// The analytic gradients of a batch's mean loss.
    pub fn gradients(&mut self, _batch: &[Example]) -> Result<(f32, BTreeMap<(usize, Target), (Vec<f32>, Vec<f32>)>)> {
        match self.0 {}
    }
    /// The adapter as trained so far.
    pub fn adapter(&mut self) -> Result<Adapter> {
        match self.0 {}
    }
    /// The whole training state.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        match self.0 {}
    }
}
