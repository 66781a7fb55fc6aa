//! The QLoRA trainer's step on the device: the same packed sequences, forward and backward ops,
//! gradient accumulation, clipping and AdamW as [`crate::train::Trainer`], with the frozen
//! weights uploaded once in their blocks and every activation, gradient, LoRA pair and optimizer
//! moment kept on the device. Per packed sequence the host uploads the token embeddings, the
//! rotary angles and the row tables, and reads back the per-row losses; per step it reads one
//! partial sum of squares per 4096 gradient values (the global norm, added in f64 in a fixed order
//! as the CPU does). Every kernel is deterministic, so a seed gives the same run twice.
//!
//! The arithmetic is that of the CPU trainer's `exact` precision (f32 activations on the exact
//! block values), summed in other orders.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::gpu::{AttnShape, Buf, DeviceWeights, Gpu, GpuLayer, LoraBank, row_ends};
use crate::error::{Error, Result};
use crate::lora::{Adapter, Target};
use crate::model::Model;
use crate::train::{Example, Packed, Param, StepStats, TrainConfig, Trainer};

/// Rows of the output head computed at once (each `vocab` logits wide).
const HEAD_ROWS: usize = 256;

/// One LoRA pair on the device: values, gradients and AdamW moments of `A` (`rank × in`) and `B`
/// (`out × rank`), and the pair as a one-slot bank for the forward kernels.
#[derive(Debug)]
struct DevicePair {
    bank: LoraBank,
    da: Buf,
    db: Buf,
    moments: [Buf; 4],
}

impl DevicePair {
    fn upload(gpu: &Gpu, a: &Param, b: &Param, (out_f, in_f): (usize, usize), rank: usize, scale: f32) -> Self {
        DevicePair {
            bank: LoraBank {
                a: gpu.upload(&a.value),
                b: gpu.upload(&b.value),
                scales: gpu.upload(&[scale]),
                rank,
                rows: out_f,
                cols: in_f,
            },
            da: gpu.upload(&a.grad),
            db: gpu.upload(&b.grad),
            moments: [gpu.upload(&a.m), gpu.upload(&a.v), gpu.upload(&b.m), gpu.upload(&b.v)],
        }
    }

    fn grads(&self) -> [&Buf; 2] {
        [&self.da, &self.db]
    }
}

/// What a layer's backward pass needs from its forward pass, on the device.
struct LayerCache {
    x: Buf,
    xn1: Buf,
    q: Buf,
    k: Buf,
    v: Buf,
    att: Buf,
    lse: Buf,
    xmid: Buf,
    xn2: Buf,
    g: Buf,
    u: Buf,
    h: Buf,
    /// `x·Aᵀ` of each LoRA pair of the layer.
    ax: HashMap<Target, Buf>,
}

/// A packed sequence's tables on the device.
struct SeqTables {
    n: usize,
    cos: Buf,
    sin: Buf,
    /// `-sin`: RoPE's backward is the rotation by the opposite angle.
    neg_sin: Buf,
    /// Row `i` attends rows `starts[i]..=i`; `pos[i] = i − starts[i]`; `table` is the identity
    /// (the attention kernel's pages of one position).
    starts: Buf,
    ends: Buf,
    pos: Buf,
    table: Buf,
    /// Slot 0 for every row: the forward LoRA kernels' one-pair bank.
    slots: Buf,
}

/// The QLoRA trainer with its step on a GPU (see the module documentation). Its state is a
/// [`Trainer`]'s: [`GpuTrainer::save_state`] writes what [`Trainer::load_state`] and
/// [`GpuTrainer::from_state`] read, and the adapter it trains is an ordinary [`Adapter`].
pub struct GpuTrainer {
    gpu: Gpu,
    model: Arc<Model>,
    /// Configuration, step count, and the pairs as of the last read back from the device.
    host: Trainer,
    /// Whether `host`'s pairs equal the device's.
    synced: bool,
    weights: DeviceWeights,
    pairs: BTreeMap<(usize, Target), DevicePair>,
}

impl Drop for GpuTrainer {
    fn drop(&mut self) {
        // As `GpuModel`: let queued launches finish before their buffers go (software Vulkan
        // answers a teardown under running work with a crash at exit).
        let _ = self.gpu.sync();
    }
}

impl std::fmt::Debug for GpuTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTrainer")
            .field("gpu", &self.gpu)
            .field("config", self.host.config())
            .field("step", &self.host.steps_done())
            .finish_non_exhaustive()
    }
}

impl GpuTrainer {
    /// A fresh trainer on `gpu`: the pairs initialised as [`Trainer::new`] initialises them (the
    /// same seed gives the same `A`), the model's frozen weights uploaded.
    pub fn new(gpu: Gpu, model: Arc<Model>, config: TrainConfig) -> Result<Self> {
        let host = Trainer::build(Arc::clone(&model), config, false)?;
        Self::on(gpu, model, host)
    }

    /// A trainer restored from [`Trainer::save_state`] or [`GpuTrainer::save_state`] bytes,
    /// continuing where it stopped (on the CPU's checkpoints too, and the other way round).
    pub fn from_state(gpu: Gpu, model: Arc<Model>, bytes: &[u8]) -> Result<Self> {
        let host = Trainer::restore(Arc::clone(&model), bytes, false)?;
        Self::on(gpu, model, host)
    }

    fn on(gpu: Gpu, model: Arc<Model>, host: Trainer) -> Result<Self> {
        super::gpu::check_head_dim(&model.config)?;
        model.config.require_plain_block("the GPU trainer").map_err(|e| Error::Training(e.to_string()))?;
        let weights = DeviceWeights::upload(&gpu, &model)?;
        let (rank, scale) = (host.config().rank, host.scale());
        let pairs = host
            .pairs
            .iter()
            .map(|(&key, p)| (key, DevicePair::upload(&gpu, &p.a, &p.b, (p.out_f, p.in_f), rank, scale)))
            .collect();
        Ok(GpuTrainer { gpu, model, host, synced: true, weights, pairs })
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        self.host.config()
    }

    /// Optimizer steps taken.
    pub fn steps_done(&self) -> usize {
        self.host.steps_done()
    }

    /// Number of trained values.
    pub fn trainable_parameters(&self) -> usize {
        self.host.trainable_parameters()
    }

    /// Bytes of frozen weight matrices on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes
    }

    /// Mean weighted loss of a batch under the current adapter (no update).
    pub fn loss(&self, batch: &[Example]) -> Result<f32> {
        let (packs, norm, _) = self.host.check_batch(batch)?;
        let mut sum = 0f64;
        for p in &packs {
            sum += self.run(p, norm, false)?;
        }
        Ok((sum / f64::from(norm)) as f32)
    }

    /// One optimizer step over a batch, as [`Trainer::step`].
    pub fn step(&mut self, batch: &[Example]) -> Result<StepStats> {
        let (packs, norm, trained) = self.host.check_batch(batch)?;
        let mut sum = 0f64;
        let mut tokens = 0;
        for p in &packs {
            match self.run(p, norm, true) {
                Ok(loss) => sum += loss,
                Err(e) => {
                    self.clear_grads();
                    return Err(e);
                }
            }
            tokens += p.tokens.len();
        }
        let grad_norm = self.grad_sq()?.sqrt();
        let (clip, lr) = match self.host.begin_update(grad_norm) {
            Ok(update) => update,
            Err(e) => {
                self.clear_grads();
                return Err(e);
            }
        };
        let (opt, t) = (self.host.config().adamw, self.host.steps_done());
        for p in self.pairs.values() {
            let [ma, va, mb, vb] = &p.moments;
            self.gpu.adamw(&p.bank.a, &p.da, ma, va, &opt, lr, t, clip);
            self.gpu.adamw(&p.bank.b, &p.db, mb, vb, &opt, lr, t, clip);
        }
        self.synced = false;
        Ok(StepStats {
            step: t,
            loss: (sum / f64::from(norm)) as f32,
            tokens,
            trained_tokens: trained,
            grad_norm: grad_norm as f32,
            learning_rate: lr,
        })
    }

    /// The analytic gradients of a batch's mean loss, as [`Trainer::gradients`] (nothing is
    /// updated).
    #[allow(clippy::type_complexity)]
    pub fn gradients(&mut self, batch: &[Example]) -> Result<(f32, BTreeMap<(usize, Target), (Vec<f32>, Vec<f32>)>)> {
        let (packs, norm, _) = self.host.check_batch(batch)?;
        let mut sum = 0f64;
        let result = (|| {
            for p in &packs {
                sum += self.run(p, norm, true)?;
            }
            let mut out = BTreeMap::new();
            for (&key, p) in &self.pairs {
                out.insert(key, (self.gpu.read(&p.da)?, self.gpu.read(&p.db)?));
            }
            Ok(out)
        })();
        self.clear_grads();
        Ok(((sum / f64::from(norm)) as f32, result?))
    }

    /// The adapter as trained so far.
    pub fn adapter(&mut self) -> Result<Adapter> {
        self.sync()?;
        Ok(self.host.adapter())
    }

    /// The whole training state as [`Trainer::save_state`] writes it.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        self.sync()?;
        self.host.save_state()
    }

    /// Reads the pairs and moments back into the host trainer.
    fn sync(&mut self) -> Result<()> {
        if self.synced {
            return Ok(());
        }
        for (key, dp) in &self.pairs {
            let p = self.host.pairs.get_mut(key).ok_or_else(|| Error::Training("pair sets differ".into()))?;
            let [ma, va, mb, vb] = &dp.moments;
            p.a.value = self.gpu.read(&dp.bank.a)?;
            p.b.value = self.gpu.read(&dp.bank.b)?;
            p.a.m = self.gpu.read(ma)?;
            p.a.v = self.gpu.read(va)?;
            p.b.m = self.gpu.read(mb)?;
            p.b.v = self.gpu.read(vb)?;
        }
        self.synced = true;
        Ok(())
    }

    fn clear_grads(&self) {
        for p in self.pairs.values() {
            for g in p.grads() {
                self.gpu.fill(g, 0.0);
            }
        }
    }

    /// The squared global norm of the accumulated gradients.
    fn grad_sq(&self) -> Result<f64> {
        let total: usize = self.pairs.values().flat_map(DevicePair::grads).map(|g| Gpu::sum_squares_len(g.len)).sum();
        let partial = self.gpu.scratch(total);
        let mut at = 0;
        for g in self.pairs.values().flat_map(DevicePair::grads) {
            self.gpu.sum_squares(g, &partial, at);
            at += Gpu::sum_squares_len(g.len);
        }
        Ok(self.gpu.read(&partial)?[..total].iter().map(|&v| f64::from(v)).sum())
    }

    fn tables(&self, p: &Packed) -> SeqTables {
        let c = &self.model.config;
        let n = p.tokens.len();
        let half = c.rope_dims / 2;
        let (mut cos, mut sin) = (vec![0f32; n * half], vec![0f32; n * half]);
        for (i, &pos) in p.pos.iter().enumerate() {
            self.model.rope_angles(false, pos, &mut cos[i * half..(i + 1) * half], &mut sin[i * half..(i + 1) * half]);
        }
        let neg: Vec<f32> = sin.iter().map(|s| -s).collect();
        let g = &self.gpu;
        SeqTables {
            n,
            cos: g.upload(&cos),
            sin: g.upload(&sin),
            neg_sin: g.upload(&neg),
            starts: g.upload_u32(&p.starts.iter().map(|&s| s as u32).collect::<Vec<_>>()),
            ends: g.upload_u32(&row_ends(&p.starts)),
            pos: g.upload_u32(&p.pos.iter().map(|&s| s as u32).collect::<Vec<_>>()),
            table: g.upload_u32(&(0..n as u32).collect::<Vec<_>>()),
            slots: g.upload_u32(&vec![0u32; n]),
        }
    }

    /// Forward (and with `backward`, backward, the pairs' gradients of `loss / norm` added to
    /// theirs) over one packed sequence: the summed weighted loss.
    fn run(&self, p: &Packed, norm: f32, backward: bool) -> Result<f64> {
        let m = &*self.model;
        let c = &m.config;
        let (d, n, g) = (c.n_embd, p.tokens.len(), &self.gpu);
        let mut x = vec![0f32; n * d];
        for (i, &t) in p.tokens.iter().enumerate() {
            m.tok_embd.dequantize_row(t as usize, &mut x[i * d..(i + 1) * d])?;
        }
        let tables = self.tables(p);
        let lowest = self.host.lowest_layer();
        let checkpoint = self.host.config().checkpoint_activations;
        let mut xb = g.upload(&x);
        let mut caches: Vec<Option<LayerCache>> = Vec::with_capacity(c.n_layer);
        let mut inputs: Vec<Option<Buf>> = vec![None; c.n_layer];
        for l in 0..c.n_layer {
            let keep = backward && l >= lowest;
            if keep && checkpoint {
                inputs[l] = Some(xb.clone());
            }
            let (out, cache) = self.layer_forward(l, xb, &tables)?;
            caches.push(if keep && !checkpoint { Some(cache) } else { None });
            xb = out;
        }
        // Head: logits only for rows that predict a weighted token.
        let rows: Vec<u32> = (0..n.saturating_sub(1)).filter(|&i| p.weights[i + 1] > 0.0).map(|i| i as u32).collect();
        let losses = g.scratch(rows.len());
        let dx = if backward { Some(g.zeros(n * d)) } else { None };
        for (k, chunk) in rows.chunks(HEAD_ROWS).enumerate() {
            let r = chunk.len();
            let targets: Vec<u32> = chunk.iter().map(|&i| p.tokens[i as usize + 1]).collect();
            let weights: Vec<f32> = chunk.iter().map(|&i| p.weights[i as usize + 1]).collect();
            let rowb = g.upload_u32(chunk);
            let (xg, hg, z) = (g.scratch(r * d), g.scratch(r * d), g.scratch(r * c.vocab));
            g.gather_rows(&xb, &rowb, &xg, r, d);
            g.rms_norm(&xg, &self.weights.output_norm, &hg, r, c.eps);
            g.matmul(&self.weights.output, &hg, r, &z, false);
            g.cross_entropy(
                &z,
                &g.upload_u32(&targets),
                &g.upload(&weights),
                &losses,
                (r, c.vocab),
                norm,
                k * HEAD_ROWS,
            );
            if let Some(dx) = &dx {
                let (dh, dxg) = (g.scratch(r * d), g.zeros(r * d));
                g.matmul_t(&self.weights.output, &z, r, &dh, false);
                g.rms_norm_backward(&xg, &self.weights.output_norm, &dh, &dxg, r, c.eps);
                g.scatter_rows(&dxg, &rowb, dx, r, d);
            }
        }
        let loss = if rows.is_empty() { 0.0 } else { g.read(&losses)?.iter().map(|&v| f64::from(v)).sum() };
        let Some(mut dx) = dx else { return Ok(loss) };
        for l in (lowest..c.n_layer).rev() {
            let cache = match (caches[l].take(), inputs[l].take()) {
                (Some(cache), _) => cache,
                (None, Some(input)) => self.layer_forward(l, input, &tables)?.1,
                (None, None) => return Err(Error::Training(format!("layer {l}: nothing kept for the backward pass"))),
            };
            dx = self.layer_backward(l, &cache, &tables, dx, l > lowest)?;
        }
        Ok(loss)
    }

    /// A base projection plus its pair (if any): `out (+)= input·Wᵀ (+ scale·B·A·input)`; the
    /// pair's `input·Aᵀ` is kept for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        l: usize,
        t: Target,
        input: &Buf,
        out: &Buf,
        accumulate: bool,
        tables: &SeqTables,
        ax: &mut HashMap<Target, Buf>,
    ) {
        let n = tables.n;
        self.gpu.matmul(self.layer(l).weight(t), input, n, out, accumulate);
        if let Some(p) = self.pairs.get(&(l, t)) {
            let tmp = self.gpu.scratch(n * p.bank.rank);
            self.gpu.lora(&p.bank, &tables.slots, input, &tmp, out, n);
            ax.insert(t, tmp);
        }
    }

    fn layer(&self, l: usize) -> &GpuLayer {
        &self.weights.layers[l]
    }

    fn layer_forward(&self, l: usize, x: Buf, s: &SeqTables) -> Result<(Buf, LayerCache)> {
        let c = &self.model.config;
        let (g, layer, n) = (&self.gpu, self.layer(l), s.n);
        let (d, qd, kvd, hd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim, c.n_ff);
        let mut ax = HashMap::new();
        let xn1 = g.scratch(n * d);
        g.rms_norm(&x, &layer.attn_norm, &xn1, n, c.eps);
        let (q, k, v) = (g.scratch(n * qd), g.scratch(n * kvd), g.scratch(n * kvd));
        self.project(l, Target::Q, &xn1, &q, false, s, &mut ax);
        self.project(l, Target::K, &xn1, &k, false, s, &mut ax);
        self.project(l, Target::V, &xn1, &v, false, s, &mut ax);
        if let Some([bq, bk, bv]) = &layer.bias {
            g.add_bias(&q, bq, n * qd);
            g.add_bias(&k, bk, n * kvd);
            g.add_bias(&v, bv, n * kvd);
        }
        g.rope(&q, &s.cos, &s.sin, n, c.n_head, hd, c.rope_dims, c.rope_layout);
        g.rope(&k, &s.cos, &s.sin, n, c.n_head_kv, hd, c.rope_dims, c.rope_layout);
        let (att, lse) = (g.scratch(n * qd), g.scratch(n * c.n_head));
        g.attention(&q, &k, &v, &s.table, &s.starts, &s.pos, &att, &lse, n, self.attn_shape());
        let xmid = g.copy(&x);
        self.project(l, Target::O, &att, &xmid, true, s, &mut ax);
        let xn2 = g.scratch(n * d);
        g.rms_norm(&xmid, &layer.ffn_norm, &xn2, n, c.eps);
        let (gb, ub) = (g.scratch(n * ff), g.scratch(n * ff));
        self.project(l, Target::Gate, &xn2, &gb, false, s, &mut ax);
        self.project(l, Target::Up, &xn2, &ub, false, s, &mut ax);
        let h = g.copy(&gb);
        g.swiglu(&h, &ub, n * ff);
        let out = g.copy(&xmid);
        self.project(l, Target::Down, &h, &out, true, s, &mut ax);
        Ok((out, LayerCache { x, xn1, q, k, v, att, lse, xmid, xn2, g: gb, u: ub, h, ax }))
    }

    fn attn_shape(&self) -> AttnShape {
        let c = &self.model.config;
        AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, page: 1 }
    }

    /// Backward of [`GpuTrainer::project`]: the pair's gradients added to its own, and (when `dx`
    /// is given) the input gradient through the frozen weight (written, or added with
    /// `accumulate`) and the pair (added).
    #[allow(clippy::too_many_arguments)]
    fn project_backward(
        &self,
        l: usize,
        t: Target,
        input: &Buf,
        cache: &LayerCache,
        dy: &Buf,
        dx: Option<(&Buf, bool)>,
        n: usize,
    ) {
        let g = &self.gpu;
        if let Some((dx, accumulate)) = dx {
            g.matmul_t(self.layer(l).weight(t), dy, n, dx, accumulate);
        }
        let (Some(p), Some(ax)) = (self.pairs.get(&(l, t)), cache.ax.get(&t)) else { return };
        let (r, out_f, in_f) = (p.bank.rank, p.bank.rows, p.bank.cols);
        let scale = self.host.scale();
        // dB += scale · dyᵀ·ax
        g.gemm_add(dy, ax, &p.db, (out_f, r, n), scale, true, false);
        // d(ax) = scale · dy·B
        let dax = g.zeros(n * r);
        g.gemm_add(dy, &p.bank.b, &dax, (n, r, out_f), scale, false, false);
        // dA += d(ax)ᵀ·x
        g.gemm_add(&dax, input, &p.da, (r, in_f, n), 1.0, true, false);
        if let Some((dx, _)) = dx {
            // dx += d(ax)·A
            g.gemm_add(&dax, &p.bank.a, dx, (n, in_f, r), 1.0, false, false);
        }
    }

    fn layer_backward(&self, l: usize, cache: &LayerCache, s: &SeqTables, dout: Buf, need_dx: bool) -> Result<Buf> {
        let c = &self.model.config;
        let (g, layer, n) = (&self.gpu, self.layer(l), s.n);
        let (d, qd, kvd, hd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim, c.n_ff);
        // Feed-forward.
        let dh = g.scratch(n * ff);
        self.project_backward(l, Target::Down, &cache.h, cache, &dout, Some((&dh, false)), n);
        let (dg, du) = (g.scratch(n * ff), g.scratch(n * ff));
        g.swiglu_backward(&cache.g, &cache.u, &dh, &dg, &du, n * ff);
        let dxn2 = g.scratch(n * d);
        self.project_backward(l, Target::Gate, &cache.xn2, cache, &dg, Some((&dxn2, false)), n);
        self.project_backward(l, Target::Up, &cache.xn2, cache, &du, Some((&dxn2, true)), n);
        // dout becomes d(xmid): the residual plus the norm's backward.
        g.rms_norm_backward(&cache.xmid, &layer.ffn_norm, &dxn2, &dout, n, c.eps);
        // Attention.
        let datt = g.scratch(n * qd);
        self.project_backward(l, Target::O, &cache.att, cache, &dout, Some((&datt, false)), n);
        let (dq, dk, dv) = (g.zeros(n * qd), g.zeros(n * kvd), g.zeros(n * kvd));
        g.attention_backward(
            [&cache.q, &cache.k, &cache.v, &cache.att, &datt, &cache.lse],
            &s.starts,
            &s.ends,
            [&dq, &dk, &dv],
            n,
            self.attn_shape(),
        );
        g.rope(&dq, &s.cos, &s.neg_sin, n, c.n_head, hd, c.rope_dims, c.rope_layout);
        g.rope(&dk, &s.cos, &s.neg_sin, n, c.n_head_kv, hd, c.rope_dims, c.rope_layout);
        let dxn1 = if need_dx { Some(g.scratch(n * d)) } else { None };
        for (i, (t, dy)) in [(Target::Q, &dq), (Target::K, &dk), (Target::V, &dv)].into_iter().enumerate() {
            self.project_backward(l, t, &cache.xn1, cache, dy, dxn1.as_ref().map(|b| (b, i > 0)), n);
        }
        if let Some(dxn1) = dxn1 {
            g.rms_norm_backward(&cache.x, &layer.attn_norm, &dxn1, &dout, n, c.eps);
        }
        Ok(dout)
    }
}
