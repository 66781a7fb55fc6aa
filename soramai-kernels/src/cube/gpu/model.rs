//! [`GpuModel`]: the forward pass over a batch of lanes with a paged KV cache and mixed adapters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::super::DECODE_CHUNK;
use super::super::kernels::ROW_THREADS;
use super::{AttnShape, Buf, DeviceWeights, Gpu, GpuLayer, GpuMat, LoraBank};
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

/// One sequence of a decode loop on the device ([`GpuModel::decode_greedy`]).
#[derive(Debug)]
pub struct GpuDecode<'a> {
    /// Its cache; every token fed is appended (the last token chosen is not: feed it next).
    pub cache: &'a mut GpuCache,
    /// What to feed first: a prompt, or the last token chosen before; at least one token.
    pub tokens: &'a [TokenId],
    /// The name of a loaded adapter, if any.
    pub adapter: Option<&'a str>,
    /// At most this many tokens are chosen.
    pub max_tokens: usize,
}

/// A step's rows on the host, one per new token of every lane (the token ids go up apart, or
/// are on the device already).
struct StepRows {
    n: usize,
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
    /// The token embeddings when they are not the output projection (untied models).
    embeddings: Option<GpuMat>,
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
        c.require_plain_block("the GPU model").map_err(|e| Error::Backend(e.to_string()))?;
        let weights = DeviceWeights::upload(&gpu, &model)?;
        let pages = options.kv_tokens / options.page;
        let slots = pages * options.page * c.kv_dim();
        let k_cache = (0..c.n_layer).map(|_| gpu.zeros(slots)).collect();
        let v_cache = (0..c.n_layer).map(|_| gpu.zeros(slots)).collect();
        let free = Arc::new(Mutex::new((0..pages as u32).rev().collect()));
        // Tied models embed from the output matrix (its clone keeps the embeddings' name).
        let untied = model.output.name != model.tok_embd.name;
        let embeddings = if untied { Some(GpuMat::upload(&gpu, &model.tok_embd)?) } else { None };
        let adapters = Mutex::new(Adapters::default());
        Ok(GpuModel { gpu, weights, embeddings, k_cache, v_cache, free, options, adapters, model })
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
        let lane_slot = self.validate(lanes.iter().map(|l| (&*l.cache, l.tokens, l.adapter, 0)), &adapters)?;
        self.reserve_pages(lanes.iter_mut().map(|l| (&mut *l.cache, l.tokens.len())).collect())?;
        let rows = self.step_rows(lanes.iter().zip(&lane_slot).map(|(l, &slot)| (&*l.cache, l.tokens.len(), slot)));
        let ids: Vec<TokenId> = lanes.iter().flat_map(|l| l.tokens.iter().copied()).collect();
        let step = self.run_step(&rows, &self.gpu.upload_u32(&ids), 0, &adapters);
        drop(adapters);
        for lane in lanes.iter_mut() {
            lane.cache.len += lane.tokens.len();
        }
        self.outputs(lanes, &rows.spans, &step)
    }

    /// Greedy decoding with the loop on the device: each lane feeds its tokens, then every step
    /// the device picks each lane's next token (argmax of its logits) and embeds it for the step
    /// after, so the host only queues steps. It reads the chosen tokens back every `chunk` steps
    /// (one wait for the device per chunk, not per token), ends a lane at a `stop` token or at its
    /// `max_tokens`, and queues the next chunk for the lanes left. Returns per lane the tokens
    /// chosen, a stop token included. Lanes are checked (tokens, cache, adapter, the context for
    /// every position the decode can reach) and the KV pages for all of those positions taken,
    /// all or none, before anything runs.
    pub fn decode_greedy(
        &self,
        lanes: &mut [GpuDecode<'_>],
        stop: &[TokenId],
        chunk: usize,
    ) -> Result<Vec<Vec<TokenId>>> {
        if chunk == 0 {
            return Err(Error::Request("a decode chunk is at least one step".into()));
        }
        let adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let lane_slot = self.validate(
            lanes.iter().map(|l| (&*l.cache, l.tokens, l.adapter, l.max_tokens.saturating_sub(1))),
            &adapters,
        )?;
        // The pages of every position the decode can write, all or none, before anything runs.
        self.reserve_pages(
            lanes
                .iter_mut()
                .filter(|l| l.max_tokens > 0)
                .map(|l| {
                    let n = l.tokens.len() + l.max_tokens - 1;
                    (&mut *l.cache, n)
                })
                .collect(),
        )?;
        let mut chosen: Vec<Vec<TokenId>> = vec![Vec::new(); lanes.len()];
        // What each lane feeds next: its tokens first, then its last choice.
        let mut feed: Vec<Vec<TokenId>> = lanes.iter().map(|l| l.tokens.to_vec()).collect();
        let mut live: Vec<usize> = (0..lanes.len()).filter(|&i| lanes[i].max_tokens > 0).collect();
        while !live.is_empty() {
            // The lanes with the most steps left first: a step's lanes are then a prefix.
            let left = |i: usize| lanes[i].max_tokens - chosen[i].len();
            live.sort_by_key(|&i| std::cmp::Reverse(left(i)));
            let steps: Vec<usize> = live.iter().map(|&i| left(i).min(chunk)).collect();
            let start: Vec<usize> = live.iter().map(|&i| lanes[i].cache.len).collect();
            let m = live.len();
            // Step `s` writes the tokens it chooses at `ring[s·m ..]`; step `s + 1` embeds them.
            let ring = self.gpu.scratch(steps[0] * m);
            for s in 0..steps[0] {
                let lanes_s = steps.iter().take_while(|&&k| k > s).count();
                let step_lanes = &live[..lanes_s];
                let fed = |i: usize| if s == 0 { feed[i].len() } else { 1 };
                let rows = self.step_rows(step_lanes.iter().map(|&i| (&*lanes[i].cache, fed(i), lane_slot[i])));
                let step = if s == 0 {
                    let ids: Vec<TokenId> = step_lanes.iter().flat_map(|&i| feed[i].iter().copied()).collect();
                    self.run_step(&rows, &self.gpu.upload_u32(&ids), 0, &adapters)
                } else {
                    self.run_step(&rows, &ring, (s - 1) * m, &adapters)
                };
                for &i in step_lanes {
                    lanes[i].cache.len += fed(i);
                }
                self.choose(&step, &rows.spans, &ring, s * m);
            }
            let ring = self.gpu.read_u32(&ring)?;
            for (j, &i) in live.iter().enumerate() {
                let before = chosen[i].len();
                for s in 0..steps[j] {
                    let t = ring[s * m + j];
                    chosen[i].push(t);
                    if stop.contains(&t) {
                        break;
                    }
                }
                // The cache holds what was fed and every choice but the last; positions written
                // after a stop are past its length (overwritten when the sequence goes on).
                lanes[i].cache.len = start[j] + feed[i].len() + (chosen[i].len() - before) - 1;
                feed[i] = chosen[i].last().map(|&t| vec![t]).unwrap_or_default();
            }
            live.retain(|&i| {
                chosen[i].len() < lanes[i].max_tokens && !chosen[i].last().is_some_and(|t| stop.contains(t))
            });
        }
        Ok(chosen)
    }

    /// Each lane's next token from its last row of the step (the logits stay on the device):
    /// `ring[base + j]` for lane `j`.
    fn choose(&self, s: &Step, spans: &[std::ops::Range<usize>], ring: &Buf, base: usize) {
        let last: Vec<usize> = spans.iter().map(|r| r.end - 1).collect();
        let logits = self.project(s, &last);
        self.gpu.argmax(&logits, ring, last.len(), self.model.config.vocab, base);
    }

    /// The vocabulary logits of the step's normed rows `rows`, on the device: the projection
    /// reads the rows where they are when they are all of them (decode steps, full-sequence
    /// scoring), else gathered there first.
    fn project(&self, s: &Step, rows: &[usize]) -> Buf {
        let (g, c) = (&self.gpu, &self.model.config);
        let gathered;
        let src = if rows.len() == s.n {
            &s.xn
        } else {
            let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            gathered = g.scratch(rows.len() * c.n_embd);
            g.gather_rows(&s.xn, &g.upload_u32(&idx), &gathered, rows.len(), c.n_embd);
            &gathered
        };
        let logits = g.scratch(rows.len() * c.vocab);
        g.matmul(&self.weights.output, src, rows.len(), &logits, false);
        logits
    }

    /// Checks every lane (tokens, cache, the context its tokens and `extra` positions after them
    /// need, adapter); returns each lane's adapter slot (`u32::MAX` for none).
    fn validate<'c>(
        &self,
        lanes: impl Iterator<Item = (&'c GpuCache, &'c [TokenId], Option<&'c str>, usize)>,
        adapters: &Adapters,
    ) -> Result<Vec<u32>> {
        let c = &self.model.config;
        let mut lane_slot = Vec::new();
        for (cache, tokens, adapter, extra) in lanes {
            if tokens.is_empty() {
                return Err(Error::Request("a lane has no tokens".into()));
            }
            if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(Error::Request(format!("token id {t} is outside the {}-token vocabulary", c.vocab)));
            }
            if !Arc::ptr_eq(&cache.free, &self.free) {
                return Err(Error::Request("a KV cache from another model".into()));
            }
            let end = cache.len.saturating_add(tokens.len()).saturating_add(extra);
            if end > c.n_ctx {
                return Err(Error::Request(format!("{end} tokens exceed the {}-token context", c.n_ctx)));
            }
            lane_slot.push(match adapter {
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

    /// Takes from the pool the pages for each cache's next `n` positions, all or none.
    fn reserve_pages(&self, mut needs: Vec<(&mut GpuCache, usize)>) -> Result<()> {
        let page = self.options.page;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let need: usize =
            needs.iter().map(|(cache, n)| (cache.len + n).div_ceil(page).saturating_sub(cache.pages.len())).sum();
        if need > free.len() {
            return Err(Error::Request(format!("the GPU KV cache is full ({} free pages, {need} needed)", free.len())));
        }
        for (cache, n) in needs.iter_mut() {
            while cache.pages.len() * page < cache.len + *n {
                let p = free.pop().ok_or_else(|| Error::Request("the GPU KV cache is full".into()))?;
                cache.pages.push(p);
            }
        }
        Ok(())
    }

    /// The step's rows on the host for lanes of `(cache, new tokens, adapter slot)`: RoPE angles,
    /// cache slots, positions, page tables and adapter slots, one row per new token.
    fn step_rows<'c>(&self, lanes: impl Iterator<Item = (&'c GpuCache, usize, u32)> + Clone) -> StepRows {
        let c = &self.model.config;
        let page = self.options.page;
        let n: usize = lanes.clone().map(|(_, ntok, _)| ntok).sum();
        let h2 = c.rope_dims / 2;
        let mut rows = StepRows {
            n,
            cos: vec![0f32; n * h2],
            sin: vec![0f32; n * h2],
            slots: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            starts: Vec::with_capacity(n),
            table: Vec::new(),
            adapter: Vec::with_capacity(n),
            spans: Vec::new(),
        };
        let mut r = 0;
        for (cache, ntok, slot) in lanes {
            let start = rows.table.len() as u32;
            rows.table.extend_from_slice(&cache.pages);
            rows.spans.push(r..r + ntok);
            for k in 0..ntok {
                let p = cache.len + k;
                self.model.rope_angles(
                    false,
                    p,
                    &mut rows.cos[r * h2..(r + 1) * h2],
                    &mut rows.sin[r * h2..(r + 1) * h2],
                );
                rows.slots.push(cache.pages[p / page] * page as u32 + (p % page) as u32);
                rows.pos.push(p as u32);
                rows.starts.push(start);
                rows.adapter.push(slot);
                r += 1;
            }
        }
        rows
    }

    /// One pass of the model over a step: its rows go up, the token ids at `tokens[base..]` (on
    /// the device) are embedded there, every layer runs, and the final norm leaves the normed rows
    /// in the step's `xn`.
    fn run_step(&self, rows: &StepRows, tokens: &Buf, base: usize, adapters: &Adapters) -> Step {
        let c = &self.model.config;
        let step = self.upload_step(rows, adapters);
        let embeddings = self.embeddings.as_ref().unwrap_or(&self.weights.output);
        self.gpu.embed(embeddings, tokens, base, &step.x, rows.n);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.layer(l, layer, &step, adapters);
        }
        self.gpu.rms_norm(&step.x, &self.weights.output_norm, &step.xn, rows.n, c.eps);
        step
    }

    /// Uploads the step's rows and makes its buffers, each written in full by the kernel that
    /// produces it before anything reads it (`x` by the embedding).
    fn upload_step(&self, rows: &StepRows, adapters: &Adapters) -> Step {
        let c = &self.model.config;
        let (g, n) = (&self.gpu, rows.n);
        let (d, qd, kvd) = (c.n_embd, c.q_dim(), c.kv_dim());
        let max_rank = adapters.banks.values().map(|b| b.rank).max().unwrap_or(1);
        Step {
            n,
            x: g.scratch(n * d),
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

    /// Per lane what it asked for of the step's normed rows: the wanted rows' logits (projected
    /// on the device), mean hidden states, or nothing.
    fn outputs(&self, lanes: &[GpuLane<'_>], spans: &[std::ops::Range<usize>], s: &Step) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.config;
        let (g, d) = (&self.gpu, c.n_embd);
        let wanted: Vec<usize> = lanes
            .iter()
            .zip(spans)
            .flat_map(|(lane, span)| match lane.logits {
                Logits::None | Logits::MeanHidden => 0..0,
                Logits::Last => span.end - 1..span.end,
                Logits::All => span.clone(),
            })
            .collect();
        // Only mean hidden states bring the rows back; logits come back projected.
        let hidden = if lanes.iter().any(|l| l.logits == Logits::MeanHidden) { g.read(&s.xn)? } else { Vec::new() };
        let logits = if wanted.is_empty() { Vec::new() } else { g.read(&self.project(s, &wanted))? };
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

    /// Greedy decoding of `max_tokens` after `prompt`, the loop on the device
    /// ([`GpuModel::decode_greedy`], reading the tokens back every [`DECODE_CHUNK`] steps).
    pub fn greedy(&self, prompt: &[TokenId], max_tokens: usize, adapter: Option<&str>) -> Result<Vec<TokenId>> {
        let mut cache = self.new_cache();
        let lane = GpuDecode { cache: &mut cache, tokens: prompt, adapter, max_tokens };
        Ok(self.decode_greedy(&mut [lane], &[], DECODE_CHUNK)?.remove(0))
    }
}

/// Refuses models whose heads the attention kernels cannot hold.
pub(crate) fn check_head_dim(c: &crate::model::Config) -> Result<()> {
    if c.head_dim > (ROW_THREADS * 8) as usize {
        return Err(Error::Backend(format!("head dimension {} is too large for the GPU kernels", c.head_dim)));
    }
    Ok(())
}
