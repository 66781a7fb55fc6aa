//! [`GpuModel`]: the forward pass over a batch of lanes with a paged KV cache and mixed adapters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::super::kernels::ROW_THREADS;
use super::{AttnShape, Buf, DeviceWeights, Gpu, GpuLayer, LoraBank};
use crate::cpu::ops::{self};
use crate::error::{Error, Result};
use crate::lora::{Adapter, Target};
use crate::model::{Logits, Model};
use crate::tokenizer::TokenId;

/// Options of a [`GpuModel`].
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Token positions the paged KV cache holds, over all sequences together.
    pub kv_tokens: usize,
    /// Positions per page.
    pub page: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { kv_tokens: 16_384, page: 16 }
    }
}

#[derive(Debug, Default)]
struct Adapters {
    names: Vec<String>,
    hosts: Vec<Arc<Adapter>>,
    banks: HashMap<(usize, Target), LoraBank>,
}

/// A sequence's place in the paged KV cache. Its pages go back to the pool when it is dropped.
#[derive(Debug)]
pub struct GpuCache {
    pages: Vec<u32>,
    len: usize,
    free: Arc<Mutex<Vec<u32>>>,
}

impl GpuCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for GpuCache {
    fn drop(&mut self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.append(&mut self.pages);
    }
}

/// One sequence's part of a batch on the GPU (as [`crate::model::Lane`]).
#[derive(Debug)]
pub struct GpuLane<'a> {
    /// Its cache; the tokens are appended.
    pub cache: &'a mut GpuCache,
    /// New tokens.
    pub tokens: &'a [TokenId],
    /// The name of a loaded adapter, if any.
    pub adapter: Option<&'a str>,
    /// Which logits to return.
    pub logits: Logits,
}

/// A step's rows on the host, one per new token of every lane.
struct StepRows {
    n: usize,
    x: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    slots: Vec<u32>,
    pos: Vec<u32>,
    starts: Vec<u32>,
    table: Vec<u32>,
    adapter: Vec<u32>,
    spans: Vec<std::ops::Range<usize>>,
}

/// A step's buffers on the device: its rows (`x` is the residual stream) and the scratch the
/// layers share.
struct Step {
    n: usize,
    x: Buf,
    cos: Buf,
    sin: Buf,
    slots: Buf,
    pos: Buf,
    starts: Buf,
    table: Buf,
    any_adapter: bool,
    adapter: Buf,
    xn: Buf,
    q: Buf,
    qr: Buf,
    k: Buf,
    v: Buf,
    att: Buf,
    gate: Buf,
    up: Buf,
    lora_tmp: Buf,
    lse: Buf,
}

/// A model on a GPU: every weight uploaded once, a paged KV cache shared by all sequences, and
/// LoRA adapters stacked per projection so a batch mixes adapters in one pass.
pub struct GpuModel {
    gpu: Gpu,
    model: Arc<Model>,
    weights: DeviceWeights,
    k_cache: Vec<Buf>,
    v_cache: Vec<Buf>,
    free: Arc<Mutex<Vec<u32>>>,
    options: GpuOptions,
    adapters: Mutex<Adapters>,
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        // Let queued work finish before its buffers go: a process that ends right after (a test,
        // a CLI call) then never tears the driver down under running launches, which software
        // Vulkan answers with a crash at exit.
        let _ = self.gpu.sync();
    }
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel").field("gpu", &self.gpu).field("weight_bytes", &self.weights.bytes).finish()
    }
}

impl GpuModel {
    /// Uploads a model's weights to `gpu` and allocates its KV cache.
    pub fn new(gpu: Gpu, model: Arc<Model>, options: GpuOptions) -> Result<Self> {
        let c = &model.config;
        if options.page == 0 || options.kv_tokens < options.page {
            return Err(Error::Backend("the KV cache needs at least one page".into()));
        }
        check_head_dim(c)?;
        let weights = DeviceWeights::upload(&gpu, &model)?;
        let pages = options.kv_tokens / options.page;
        let slots = pages * options.page * c.kv_dim();
        let k_cache = (0..c.n_layer).map(|_| gpu.zeros(slots)).collect();
        let v_cache = (0..c.n_layer).map(|_| gpu.zeros(slots)).collect();
        let free = Arc::new(Mutex::new((0..pages as u32).rev().collect()));
        Ok(GpuModel { gpu, weights, k_cache, v_cache, free, options, adapters: Mutex::new(Adapters::default()), model })
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The model on the host (configuration, embeddings, tokenizer data).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Bytes of weights on the device (the bytes a decode step reads at least).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> GpuCache {
        GpuCache { pages: Vec::new(), len: 0, free: Arc::clone(&self.free) }
    }

    /// Loads (or replaces) an adapter under `name`; the stacked banks are rebuilt.
    pub fn add_adapter(&self, name: impl Into<String>, adapter: Adapter) -> Result<()> {
        let c = &self.model.config;
        if adapter.layers.len() != c.n_layer {
            return Err(Error::Adapter("adapter was built for another model shape".into()));
        }
        let name = name.into();
        let mut a = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        match a.names.iter().position(|n| *n == name) {
            Some(i) => a.hosts[i] = Arc::new(adapter),
            None => {
                a.names.push(name);
                a.hosts.push(Arc::new(adapter));
            }
        }
        self.rebuild_banks(&mut a)
    }

    /// Unloads an adapter; returns whether it was loaded.
    pub fn remove_adapter(&self, name: &str) -> Result<bool> {
        let mut a = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = a.names.iter().position(|n| n == name) else { return Ok(false) };
        a.names.remove(i);
        a.hosts.remove(i);
        self.rebuild_banks(&mut a)?;
        Ok(true)
    }

    fn rebuild_banks(&self, a: &mut Adapters) -> Result<()> {
        let c = &self.model.config;
        a.banks.clear();
        for l in 0..c.n_layer {
            for t in Target::ALL {
                let pairs: Vec<_> = a.hosts.iter().map(|h| h.pair(l, t)).collect();
                let Some(rank) = pairs.iter().flatten().map(|p| p.rank).max() else { continue };
                let (rows, cols) = t.shape(c);
                let slots = pairs.len();
                let mut am = vec![0f32; slots * rank * cols];
                let mut bm = vec![0f32; slots * rows * rank];
                let mut scales = vec![0f32; slots];
                for (s, p) in pairs.iter().enumerate() {
                    let Some(p) = p else { continue };
                    if p.a.len() != p.rank * cols || p.b.len() != rows * p.rank {
                        return Err(Error::Adapter(format!("layer {l} {}: wrong pair shape", t.module())));
                    }
                    scales[s] = p.scale;
                    for j in 0..p.rank {
                        am[(s * rank + j) * cols..(s * rank + j + 1) * cols]
                            .copy_from_slice(&p.a[j * cols..(j + 1) * cols]);
                    }
                    for o in 0..rows {
                        bm[(s * rows + o) * rank..(s * rows + o) * rank + p.rank]
                            .copy_from_slice(&p.b[o * p.rank..(o + 1) * p.rank]);
                    }
                }
                let bank = LoraBank {
                    a: self.gpu.upload(&am),
                    b: self.gpu.upload(&bm),
                    scales: self.gpu.upload(&scales),
                    rank,
                    rows,
                    cols,
                };
                a.banks.insert((l, t), bank);
            }
        }
        Ok(())
    }

    /// Runs the lanes' new tokens through the model in one pass; returns per lane the logits it
    /// asked for (as [`Model::forward`]).
    pub fn forward(&self, lanes: &mut [GpuLane<'_>]) -> Result<Vec<Vec<f32>>> {
        let adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        // Everything is validated before the cache is touched.
        let lane_slot = self.validate(lanes, &adapters)?;
        self.reserve_pages(lanes)?;
        let rows = self.step_rows(lanes, &lane_slot)?;
        let step = self.upload_step(&rows, &adapters);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.layer(l, layer, &step, &adapters);
        }
        drop(adapters);
        for lane in lanes.iter_mut() {
            lane.cache.len += lane.tokens.len();
        }
        self.outputs(lanes, &rows.spans, &step)
    }

    /// Checks every lane (tokens, cache, context, adapter); returns each lane's adapter slot
    /// (`u32::MAX` for none).
    fn validate(&self, lanes: &[GpuLane<'_>], adapters: &Adapters) -> Result<Vec<u32>> {
        let c = &self.model.config;
        let mut lane_slot = Vec::with_capacity(lanes.len());
        for lane in lanes {
            if lane.tokens.is_empty() {
                return Err(Error::Request("a lane has no tokens".into()));
            }
            if let Some(&t) = lane.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(Error::Request(format!("token id {t} is outside the {}-token vocabulary", c.vocab)));
            }
            if !Arc::ptr_eq(&lane.cache.free, &self.free) {
                return Err(Error::Request("a KV cache from another model".into()));
            }
            let end = lane.cache.len + lane.tokens.len();
            if end > c.n_ctx {
                return Err(Error::Request(format!("{end} tokens exceed the {}-token context", c.n_ctx)));
            }
            lane_slot.push(match lane.adapter {
                None => u32::MAX,
                Some(name) => adapters
                    .names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| Error::Adapter(format!("no adapter named {name:?} is loaded")))?
                    as u32,
            });
        }
        Ok(lane_slot)
    }

    /// Takes the pages the lanes' new positions need from the pool, all or none.
    fn reserve_pages(&self, lanes: &mut [GpuLane<'_>]) -> Result<()> {
        let page = self.options.page;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let need: usize = lanes
            .iter()
            .map(|l| (l.cache.len + l.tokens.len()).div_ceil(page).saturating_sub(l.cache.pages.len()))
            .sum();
        if need > free.len() {
            return Err(Error::Request(format!("the GPU KV cache is full ({} free pages, {need} needed)", free.len())));
        }
        for lane in lanes.iter_mut() {
            while lane.cache.pages.len() * page < lane.cache.len + lane.tokens.len() {
                let p = free.pop().ok_or_else(|| Error::Request("the GPU KV cache is full".into()))?;
                lane.cache.pages.push(p);
            }
        }
        Ok(())
    }

    /// The step's rows on the host: embeddings, RoPE angles, cache slots, positions, page tables
    /// and adapter slots, one row per new token.
    fn step_rows(&self, lanes: &[GpuLane<'_>], lane_slot: &[u32]) -> Result<StepRows> {
        let c = &self.model.config;
        let (d, page) = (c.n_embd, self.options.page);
        let n: usize = lanes.iter().map(|l| l.tokens.len()).sum();
        let h2 = c.rope_dims / 2;
        let mut rows = StepRows {
            n,
            x: vec![0f32; n * d],
            cos: vec![0f32; n * h2],
            sin: vec![0f32; n * h2],
            slots: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            starts: Vec::with_capacity(n),
            table: Vec::new(),
            adapter: Vec::with_capacity(n),
            spans: Vec::with_capacity(lanes.len()),
        };
        let mut r = 0;
        for (lane, &slot) in lanes.iter().zip(lane_slot) {
            let start = rows.table.len() as u32;
            rows.table.extend_from_slice(&lane.cache.pages);
            rows.spans.push(r..r + lane.tokens.len());
            for (k, &t) in lane.tokens.iter().enumerate() {
                let p = lane.cache.len + k;
                self.model.tok_embd.dequantize_row(t as usize, &mut rows.x[r * d..(r + 1) * d])?;
                ops::rope_angles(
                    p,
                    c.rope_dims,
                    c.rope_base,
                    &mut rows.cos[r * h2..(r + 1) * h2],
                    &mut rows.sin[r * h2..(r + 1) * h2],
                );
                rows.slots.push(lane.cache.pages[p / page] * page as u32 + (p % page) as u32);
                rows.pos.push(p as u32);
                rows.starts.push(start);
                rows.adapter.push(slot);
                r += 1;
            }
        }
        Ok(rows)
    }

    /// Uploads the step's rows and makes its scratch buffers, each written in full by the kernel
    /// that produces it before anything reads it.
    fn upload_step(&self, rows: &StepRows, adapters: &Adapters) -> Step {
        let c = &self.model.config;
        let (g, n) = (&self.gpu, rows.n);
        let (d, qd, kvd) = (c.n_embd, c.q_dim(), c.kv_dim());
        let max_rank = adapters.banks.values().map(|b| b.rank).max().unwrap_or(1);
        Step {
            n,
            x: g.upload(&rows.x),
            cos: g.upload(&rows.cos),
            sin: g.upload(&rows.sin),
            slots: g.upload_u32(&rows.slots),
            pos: g.upload_u32(&rows.pos),
            starts: g.upload_u32(&rows.starts),
            table: g.upload_u32(&rows.table),
            any_adapter: rows.adapter.iter().any(|&s| s != u32::MAX),
            adapter: g.upload_u32(&rows.adapter),
            xn: g.scratch(n * d),
            q: g.scratch(n * qd),
            qr: g.scratch(n * qd),
            k: g.scratch(n * kvd),
            v: g.scratch(n * kvd),
            att: g.scratch(n * qd),
            gate: g.scratch(n * c.n_ff),
            up: g.scratch(n * c.n_ff),
            lora_tmp: g.scratch(n * max_rank),
            lse: g.scratch(n * c.n_head),
        }
    }

    /// One transformer layer over the step's rows: attention (norm, Q/K/V with their adapters;
    /// biases, RoPE and the KV cache write in one launch; paged attention; output projection into
    /// the residual), then the feed-forward block (norm; gate/up and SwiGLU, in one launch when no
    /// row's adapter touches them; down into the residual). A decode step without adapters is 8
    /// launches a layer.
    fn layer(&self, l: usize, layer: &GpuLayer, s: &Step, adapters: &Adapters) {
        let c = &self.model.config;
        let (g, n) = (&self.gpu, s.n);
        let shape =
            AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, page: self.options.page };
        let has = |t: Target| s.any_adapter && adapters.banks.contains_key(&(l, t));
        let lora = |t: Target, input: &Buf, out: &Buf| {
            if s.any_adapter
                && let Some(bank) = adapters.banks.get(&(l, t))
            {
                g.lora(bank, &s.adapter, input, &s.lora_tmp, out, n);
            }
        };
        g.rms_norm(&s.x, &layer.attn_norm, &s.xn, n, c.eps);
        let qkv = [(Target::Q, &s.q), (Target::K, &s.k), (Target::V, &s.v)];
        if !g.matmul_qkv([&layer.wq, &layer.wk, &layer.wv], &s.xn, n, &s.q, &s.k, &s.v) {
            for (t, out) in qkv {
                g.matmul(layer.weight(t), &s.xn, n, out, false);
            }
        }
        for (t, out) in qkv {
            lora(t, &s.xn, out);
        }
        let cache = [&self.k_cache[l], &self.v_cache[l]];
        let rope = (c.rope_dims, c.rope_layout);
        g.qkv_rope_scatter(
            [&s.q, &s.k, &s.v],
            layer.bias.as_ref(),
            &s.cos,
            &s.sin,
            &s.slots,
            &s.qr,
            cache,
            n,
            shape,
            rope.0,
            rope.1,
        );
        g.attention(&s.qr, cache[0], cache[1], &s.table, &s.starts, &s.pos, &s.att, &s.lse, n, shape);
        g.matmul(&layer.wo, &s.att, n, &s.x, true);
        lora(Target::O, &s.att, &s.x);
        g.rms_norm(&s.x, &layer.ffn_norm, &s.xn, n, c.eps);
        // Adapters on gate or up add before SwiGLU: then the three steps run apart.
        let ffn_adapters = has(Target::Gate) || has(Target::Up);
        if ffn_adapters || !g.matmul_swiglu(&layer.gate, &layer.up, &s.xn, n, &s.gate) {
            g.matmul(&layer.gate, &s.xn, n, &s.gate, false);
            lora(Target::Gate, &s.xn, &s.gate);
            g.matmul(&layer.up, &s.xn, n, &s.up, false);
            lora(Target::Up, &s.xn, &s.up);
            g.swiglu(&s.gate, &s.up, n * c.n_ff);
        }
        g.matmul(&layer.down, &s.gate, n, &s.x, true);
        lora(Target::Down, &s.gate, &s.x);
    }

    /// The final norm on the device, then per lane what it asked for: the wanted rows' logits
    /// (projected on the device), mean hidden states, or nothing.
    fn outputs(&self, lanes: &[GpuLane<'_>], spans: &[std::ops::Range<usize>], s: &Step) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.config;
        let (g, n, d) = (&self.gpu, s.n, c.n_embd);
        g.rms_norm(&s.x, &self.weights.output_norm, &s.xn, n, c.eps);
        let wanted: Vec<usize> = lanes
            .iter()
            .zip(spans)
            .flat_map(|(lane, span)| match lane.logits {
                Logits::None | Logits::MeanHidden => 0..0,
                Logits::Last => span.end - 1..span.end,
                Logits::All => span.clone(),
            })
            .collect();
        // When every row wants logits (decode steps, full-sequence scoring) the projection reads
        // the normed rows where they are; otherwise the wanted rows come back and go up again.
        let every_row = wanted.len() == n;
        let need_hidden = lanes.iter().any(|l| l.logits == Logits::MeanHidden) || (!wanted.is_empty() && !every_row);
        let hidden = if need_hidden { g.read(&s.xn)? } else { Vec::new() };
        let logits = if wanted.is_empty() {
            Vec::new()
        } else if every_row {
            let out = g.scratch(n * c.vocab);
            g.matmul(&self.weights.output, &s.xn, n, &out, false);
            g.read(&out)?
        } else {
            let mut h = vec![0f32; wanted.len() * d];
            for (k, &row) in wanted.iter().enumerate() {
                h[k * d..(k + 1) * d].copy_from_slice(&hidden[row * d..(row + 1) * d]);
            }
            let out = g.scratch(wanted.len() * c.vocab);
            g.matmul(&self.weights.output, &g.upload(&h), wanted.len(), &out, false);
            g.read(&out)?
        };
        let mut result = Vec::with_capacity(lanes.len());
        let mut at = 0;
        for (lane, span) in lanes.iter().zip(spans) {
            match lane.logits {
                Logits::None => result.push(Vec::new()),
                Logits::MeanHidden => {
                    let mut mean = vec![0f32; d];
                    for row in span.clone() {
                        for (m, v) in mean.iter_mut().zip(&hidden[row * d..(row + 1) * d]) {
                            *m += v;
                        }
                    }
                    let inv = 1.0 / span.len() as f32;
                    mean.iter_mut().for_each(|m| *m *= inv);
                    result.push(mean);
                }
                Logits::Last | Logits::All => {
                    let m = if lane.logits == Logits::Last { 1 } else { span.len() };
                    result.push(logits[at * c.vocab..(at + m) * c.vocab].to_vec());
                    at += m;
                }
            }
        }
        Ok(result)
    }

    /// Greedy decoding of `max_tokens` after `prompt` (for tests and benchmarks).
    pub fn greedy(&self, prompt: &[TokenId], max_tokens: usize, adapter: Option<&str>) -> Result<Vec<TokenId>> {
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(max_tokens);
        let mut next = prompt.to_vec();
        for _ in 0..max_tokens {
            let logits =
                self.forward(&mut [GpuLane { cache: &mut cache, tokens: &next, adapter, logits: Logits::Last }])?;
            let t = argmax(&logits[0]);
            out.push(t);
            next = vec![t];
        }
        Ok(out)
    }
}

/// Refuses models whose heads the attention kernels cannot hold.
pub(crate) fn check_head_dim(c: &crate::model::Config) -> Result<()> {
    if c.head_dim > (ROW_THREADS * 8) as usize {
        return Err(Error::Backend(format!("head dimension {} is too large for the GPU kernels", c.head_dim)));
    }
    Ok(())
}

fn argmax(v: &[f32]) -> TokenId {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
        as TokenId
}
