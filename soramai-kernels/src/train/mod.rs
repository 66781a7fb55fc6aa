//! QLoRA training on the frozen quantized base: LoRA pairs on chosen projections learn while every
//! base weight stays in its GGUF blocks.
//!
//! A step packs its examples into sequences of at most `max_seq` tokens (attention never crosses
//! from one example into the next, positions restart per example), runs each sequence forward
//! keeping what the backward pass needs (or only each layer's input, with activation
//! checkpointing), then backward through every op of the block — the loss on weighted target
//! tokens only, the final and per-block RMSNorms, SwiGLU, attention with its causal mask and
//! grouped KV heads, RoPE, and the frozen matmuls, whose input gradient goes through the
//! transposed quantized weight (an 8-bit copy of `Wᵀ` built once, so the backward product runs on
//! the same integer kernels as the forward one: both are [`PackedMat`]s, the forward one holding
//! the GGUF blocks' own codes; `Precision::Exact` uses dequantized f32 instead).
//! Gradients of the step's sequences accumulate; the global norm is clipped, and AdamW updates
//! the pairs at the scheduled learning rate. Everything is ordered: the same seed, data and
//! configuration give bit-identical runs.

mod checkpoint;
pub mod data;
pub mod ops;
pub mod optim;
mod pass;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cpu::gemm::{PackedMat, QuantRows, packable};
use crate::cpu::ops as fwd;
use crate::cpu::ops::RopeLayout;
use crate::error::{Error, Result};
use crate::family::Activation;
use crate::lora::{Adapter, AdapterConfig, LoraPair, MAX_RANK, Target};
use crate::model::{Model, Precision, QMat, add_bias, norm_rows, post_norm};
use crate::tokenizer::TokenId;

pub use data::{Example, TrainMessage};
use ops::{Heads, LoraGrads, Mask};
pub use optim::{AdamW, Param, Schedule};

/// What to train and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha (the update is scaled by `alpha / rank`).
    pub alpha: f32,
    /// Projections that get a pair, in every layer.
    pub targets: Vec<Target>,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Optimizer.
    pub adamw: AdamW,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f32,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decay after warmup.
    pub schedule: Schedule,
    /// Steps the schedule spans.
    pub total_steps: usize,
    /// Longest packed sequence (and so longest example).
    pub max_seq: usize,
    /// Seed for the `A` initialisation.
    pub seed: u64,
    /// Keep only each layer's input during the forward pass and recompute the layer in backward.
    pub checkpoint_activations: bool,
    /// Arithmetic path.
    pub precision: Precision,
    /// Recorded in `adapter_config.json`.
    pub base_model: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec![Target::Q, Target::K, Target::V, Target::O],
            learning_rate: 2e-4,
            adamw: AdamW::default(),
            max_grad_norm: 1.0,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            total_steps: 100,
            max_seq: 512,
            seed: 0,
            checkpoint_activations: false,
            precision: Precision::Fast,
            base_model: None,
        }
    }
}

impl TrainConfig {
    fn validate(&self, model: &Model) -> Result<()> {
        let bad = |m: String| Err(Error::Training(m));
        if self.rank == 0 || self.rank > MAX_RANK {
            return bad(format!("rank {} is outside 1..={MAX_RANK}", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad("alpha must be a positive number".into());
        }
        if self.targets.is_empty() {
            return bad("no target modules".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad(format!("learning rate {} is outside (0, 1)", self.learning_rate));
        }
        let a = &self.adamw;
        if !(0.0..1.0).contains(&a.beta1)
            || !(0.0..1.0).contains(&a.beta2)
            || a.eps.is_nan()
            || a.eps <= 0.0
            || a.weight_decay.is_nan()
            || a.weight_decay < 0.0
        {
            return bad("AdamW needs betas in [0, 1), eps > 0 and weight decay >= 0".into());
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return bad("max_grad_norm must be >= 0".into());
        }
        if self.max_seq < 2 || self.max_seq > model.config.n_ctx {
            return bad(format!("max_seq {} is outside 2..={}", self.max_seq, model.config.n_ctx));
        }
        if self.total_steps == 0 {
            return bad("total_steps must be at least 1".into());
        }
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The step just taken (from 1).
    pub step: usize,
    /// Mean weighted cross-entropy over the trained tokens, before the update.
    pub loss: f32,
    /// Tokens run forward and backward.
    pub tokens: usize,
    /// Tokens that carried loss.
    pub trained_tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub learning_rate: f32,
}

/// One trained LoRA pair.
#[derive(Clone, Debug)]
pub(crate) struct Pair {
    pub(crate) a: Param,
    pub(crate) b: Param,
    pub(crate) in_f: usize,
    pub(crate) out_f: usize,
}

/// A packed training sequence: several examples back to back.
#[derive(Debug, Default)]
pub(crate) struct Packed {
    pub(crate) tokens: Vec<TokenId>,
    /// `weights[i]`: the loss weight of predicting `tokens[i]` (from row `i − 1`).
    pub(crate) weights: Vec<f32>,
    /// First row each row may attend to.
    pub(crate) starts: Vec<usize>,
    /// Position of each row within its example.
    pub(crate) pos: Vec<usize>,
}

/// Packs examples first-fit, in order, into sequences of at most `max_seq` tokens.
fn pack(batch: &[Example], max_seq: usize) -> Vec<Packed> {
    let mut packs: Vec<Packed> = Vec::new();
    for e in batch {
        let slot = match packs.iter().position(|p| p.tokens.len() + e.tokens.len() <= max_seq) {
            Some(i) => i,
            None => {
                packs.push(Packed::default());
                packs.len() - 1
            }
        };
        let p = &mut packs[slot];
        let start = p.tokens.len();
        p.tokens.extend_from_slice(&e.tokens);
        p.weights.push(0.0);
        p.weights.extend_from_slice(&e.weights[1..]);
        p.starts.extend(std::iter::repeat_n(start, e.tokens.len()));
        p.pos.extend(0..e.tokens.len());
    }
    packs
}

type Grads = BTreeMap<(usize, Target), (Vec<f32>, Vec<f32>)>;

/// A LoRA trainer over a loaded model.
pub struct Trainer {
    model: Arc<Model>,
    config: TrainConfig,
    pub(crate) pairs: BTreeMap<(usize, Target), Pair>,
    /// Packed copies of the frozen weights of the trained layers (fast path).
    frozen: HashMap<(usize, Target), Frozen>,
    output: Frozen,
    pub(crate) step: usize,
}

/// A frozen weight packed for the batched integer products: `W` for the forward product and `Wᵀ`
/// for the input gradient (each absent where the shape does not pack, or on the exact path).
#[derive(Default)]
struct Frozen {
    fwd: Option<PackedMat>,
    bwd: Option<PackedMat>,
}

impl Frozen {
    fn new(m: &QMat) -> Result<Self> {
        let fwd = if packable(m.rows, m.cols) {
            Some(PackedMat::from_blocks(m.ty, m.bytes(), m.rows, m.cols)?)
        } else {
            None
        };
        let bwd = if packable(m.cols, m.rows) {
            Some(PackedMat::transposed_from_f32(&m.dequantize()?, m.rows, m.cols)?)
        } else {
            None
        };
        Ok(Frozen { fwd, bwd })
    }
}

/// Activations quantized for the packed products, when their width allows it.
fn quantized(x: &[f32], cols: usize) -> Result<Option<QuantRows>> {
    if cols.is_multiple_of(crate::cpu::gemm::BLOCK) { QuantRows::new(x, cols).map(Some) } else { Ok(None) }
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("config", &self.config).field("step", &self.step).finish_non_exhaustive()
    }
}

impl Trainer {
    /// A fresh trainer: every pair's `A` drawn uniformly in `±1/√in` from the seed (as PEFT's
    /// Kaiming-uniform initialisation), `B` zero, so the untrained adapter changes nothing.
    pub fn new(model: Arc<Model>, config: TrainConfig) -> Result<Self> {
        Self::build(model, config, true)
    }

    /// As [`Trainer::new`]; `pack` false skips the CPU's packed copies of the frozen weights (a
    /// trainer whose products run elsewhere: the GPU trainer keeps its state in one).
    pub(crate) fn build(model: Arc<Model>, config: TrainConfig, pack: bool) -> Result<Self> {
        config.validate(&model)?;
        let c = &model.config;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut pairs = BTreeMap::new();
        let mut targets = config.targets.clone();
        targets.sort();
        targets.dedup();
        for l in 0..c.n_layer {
            for &t in &targets {
                let (out_f, in_f) = t.shape(c);
                let bound = 1.0 / (in_f as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * in_f)
                    .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * bound)
                    .collect();
                let pair = Pair { a: Param::new(a), b: Param::new(vec![0.0; out_f * config.rank]), in_f, out_f };
                pairs.insert((l, t), pair);
            }
        }
        let mut trainer = Trainer { model, config, pairs, frozen: HashMap::new(), output: Frozen::default(), step: 0 };
        if pack {
            trainer.pack_frozen()?;
        }
        Ok(trainer)
    }

    fn pack_frozen(&mut self) -> Result<()> {
        if self.config.precision != Precision::Fast {
            return Ok(());
        }
        let lowest = self.lowest_layer();
        let jobs: Vec<(usize, Target)> =
            (lowest..self.model.config.n_layer).flat_map(|l| Target::ALL.map(|t| (l, t))).collect();
        let model = &self.model;
        self.frozen = jobs
            .par_iter()
            .map(|&(l, t)| Frozen::new(model.layers[l].weight(t)).map(|f| ((l, t), f)))
            .collect::<Result<_>>()?;
        self.output = Frozen::new(&self.model.output)?;
        Ok(())
    }

    pub(crate) fn lowest_layer(&self) -> usize {
        self.pairs.keys().map(|(l, _)| *l).min().unwrap_or(0)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps taken.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Number of trained values.
    pub fn trainable_parameters(&self) -> usize {
        self.pairs.values().map(|p| p.a.value.len() + p.b.value.len()).sum()
    }

    pub(crate) fn check_batch(&self, batch: &[Example]) -> Result<(Vec<Packed>, f32, usize)> {
        if batch.is_empty() {
            return Err(Error::Training("an empty batch".into()));
        }
        let vocab = self.model.config.vocab;
        let mut norm = 0f32;
        let mut trained = 0;
        for (i, e) in batch.iter().enumerate() {
            e.check(vocab).map_err(|m| Error::Training(format!("example {i}: {m}")))?;
            if e.tokens.len() > self.config.max_seq {
                return Err(Error::Training(format!(
                    "example {i} has {} tokens, more than max_seq {}",
                    e.tokens.len(),
                    self.config.max_seq
                )));
            }
            norm += e.weights[1..].iter().sum::<f32>();
            trained += e.weights[1..].iter().filter(|&&w| w > 0.0).count();
        }
        if norm <= 0.0 {
            return Err(Error::Training("the batch has no tokens with loss weight".into()));
        }
        Ok((pack(batch, self.config.max_seq), norm, trained))
    }

    /// Mean weighted loss of a batch under the current adapter (no update).
    pub fn loss(&self, batch: &[Example]) -> Result<f32> {
        let (packs, norm, _) = self.check_batch(batch)?;
        let mut sum = 0f64;
        for p in &packs {
            sum += self.run(p, norm, false)?.0;
        }
        Ok((sum / f64::from(norm)) as f32)
    }

    /// One optimizer step over a batch: forward and backward over its packed sequences with the
    /// gradients accumulated, clipping, then AdamW at the scheduled rate.
    pub fn step(&mut self, batch: &[Example]) -> Result<StepStats> {
        let (packs, norm, trained) = self.check_batch(batch)?;
        let mut sum = 0f64;
        let mut tokens = 0;
        for p in &packs {
            let (loss, grads) = self.run(p, norm, true)?;
            sum += loss;
            tokens += p.tokens.len();
            for (key, (da, db)) in grads {
                if let Some(pair) = self.pairs.get_mut(&key) {
                    pair.a.grad.iter_mut().zip(&da).for_each(|(g, d)| *g += d);
                    pair.b.grad.iter_mut().zip(&db).for_each(|(g, d)| *g += d);
                }
            }
        }
        let gsq: f64 = self.pairs.values().map(|p| p.a.grad_sq() + p.b.grad_sq()).sum();
        let grad_norm = gsq.sqrt();
        let (clip, lr) = match self.begin_update(grad_norm) {
            Ok(update) => update,
            Err(e) => {
                self.pairs.values_mut().for_each(|p| {
                    p.a.grad.fill(0.0);
                    p.b.grad.fill(0.0);
                });
                return Err(e);
            }
        };
        let (opt, t) = (self.config.adamw, self.step);
        self.pairs.values_mut().for_each(|p| {
            p.a.update(&opt, lr, t, clip);
            p.b.update(&opt, lr, t, clip);
        });
        Ok(StepStats {
            step: self.step,
            loss: (sum / f64::from(norm)) as f32,
            tokens,
            trained_tokens: trained,
            grad_norm: grad_norm as f32,
            learning_rate: lr,
        })
    }

    /// Once a step's gradients are in: the update's clip factor and learning rate, with the step
    /// counted (the update is step `self.step` from 1). A non-finite gradient norm is refused and
    /// nothing is counted; the caller then clears the gradients.
    pub(crate) fn begin_update(&mut self, grad_norm: f64) -> Result<(f32, f32)> {
        if !grad_norm.is_finite() {
            return Err(Error::Training("the gradient is not finite (learning rate too high?)".into()));
        }
        let clip = optim::clip_factor(grad_norm, self.config.max_grad_norm);
        let lr = optim::learning_rate(
            self.config.learning_rate,
            self.step,
            self.config.total_steps,
            self.config.warmup_steps,
            self.config.schedule,
        );
        self.step += 1;
        Ok((clip, lr))
    }

    /// The analytic gradients of a batch's mean loss (for gradient checks): `(layer, target) →
    /// (dA, dB)`, with `B` in the engine's (GGUF) row order.
    pub fn gradients(&self, batch: &[Example]) -> Result<(f32, Grads)> {
        let (packs, norm, _) = self.check_batch(batch)?;
        let mut total: Grads = BTreeMap::new();
        let mut sum = 0f64;
        for p in &packs {
            let (loss, grads) = self.run(p, norm, true)?;
            sum += loss;
            for (k, (da, db)) in grads {
                let e = total.entry(k).or_insert_with(|| (vec![0.0; da.len()], vec![0.0; db.len()]));
                e.0.iter_mut().zip(&da).for_each(|(g, d)| *g += d);
                e.1.iter_mut().zip(&db).for_each(|(g, d)| *g += d);
            }
        }
        Ok(((sum / f64::from(norm)) as f32, total))
    }

    /// Sets a pair's values (tests; resuming goes through [`Trainer::load_state`]).
    pub fn set_pair(&mut self, layer: usize, t: Target, a: &[f32], b: &[f32]) -> Result<()> {
        let p = self.pairs.get_mut(&(layer, t)).ok_or_else(|| Error::Training(format!("no pair at {layer} {t:?}")))?;
        if a.len() != p.a.value.len() || b.len() != p.b.value.len() {
            return Err(Error::Training("pair values of the wrong size".into()));
        }
        p.a.value.copy_from_slice(a);
        p.b.value.copy_from_slice(b);
        Ok(())
    }

    /// The current values of a pair: `(A, B)`, `B` in the engine's row order.
    pub fn pair(&self, layer: usize, t: Target) -> Option<(&[f32], &[f32])> {
        self.pairs.get(&(layer, t)).map(|p| (&p.a.value[..], &p.b.value[..]))
    }

    /// The adapter as trained so far, ready for the engine and for PEFT ([`Adapter::save`]).
    pub fn adapter(&self) -> Adapter {
        let c = &self.model.config;
        let mut targets: Vec<Target> = self.config.targets.clone();
        targets.sort();
        targets.dedup();
        let config = AdapterConfig {
            r: self.config.rank,
            lora_alpha: self.config.alpha,
            target_modules: targets.iter().map(|t| t.module().to_owned()).collect(),
            use_rslora: false,
            fan_in_fan_out: false,
            peft_type: "LORA".into(),
            base_model_name_or_path: self.config.base_model.clone(),
            task_type: Some("CAUSAL_LM".into()),
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
        };
        let mut layers = vec![HashMap::new(); c.n_layer];
        for (&(l, t), p) in &self.pairs {
            layers[l].insert(
                t,
                LoraPair { a: p.a.value.clone(), b: p.b.value.clone(), rank: self.config.rank, scale: self.scale() },
            );
        }
        Adapter { config, layers }
    }

    pub(crate) fn scale(&self) -> f32 {
        self.config.alpha / self.config.rank as f32
    }

    /// As [`Trainer::load_state`], with `pack` as in [`Trainer::build`].
    pub(crate) fn restore(model: Arc<Model>, bytes: &[u8], pack: bool) -> Result<Self> {
        let bad = |m: String| Error::Training(format!("checkpoint: {m}"));
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().ok_or_else(|| bad("no metadata".into()))?;
        let config: TrainConfig = serde_json::from_str(meta.get("config").ok_or_else(|| bad("no config".into()))?)
            .map_err(|e| bad(e.to_string()))?;
        let step: usize = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no step count".into()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut t = Trainer::build(model, config, pack)?;
        t.step = step;
        let rank = t.config.rank;
        for (&(l, tg), p) in t.pairs.iter_mut() {
            for (name, param) in [("A", &mut p.a), ("B", &mut p.b)] {
                for part in ["value", "m", "v"] {
                    let key = format!("{l}.{}.{name}.{part}", tg.module());
                    let view = st.tensor(&key).map_err(|_| bad(format!("{key} missing")))?;
                    let want = param.value.len();
                    if view.dtype() != safetensors::Dtype::F32 || view.data().len() != want * 4 {
                        return Err(bad(format!("{key}: wrong type or size for rank {rank}")));
                    }
                    let vals: Vec<f32> =
                        view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    if vals.iter().any(|v| !v.is_finite()) {
                        return Err(bad(format!("{key}: non-finite values")));
                    }
                    match part {
                        "value" => param.value = vals,
                        "m" => param.m = vals,
                        _ => param.v = vals,
                    }
                }
            }
        }
        Ok(t)
    }
}

/// A deterministic plan of batches: `epochs` passes over `n` examples, each pass shuffled from the
/// seed, cut into batches of `batch_size` (the last batch of a pass may be smaller).
pub fn batch_plan(n: usize, batch_size: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A);
    let mut plan = Vec::new();
    for _ in 0..epochs {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        plan.extend(order.chunks(batch_size.max(1)).map(<[usize]>::to_vec));
    }
    plan
}
