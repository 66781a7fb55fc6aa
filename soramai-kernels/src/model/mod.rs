//! The forward pass of every [`crate::family::Family`]: a batch of sequences, each with its own KV cache and its own LoRA
//! adapter (or none), in one pass. Base projections run once over every token of the batch; LoRA
//! deltas are gathered per adapter (as in Punica / S-LoRA) and added to the rows of the sequences
//! that use it. Every row's arithmetic is independent of its batch-mates, so a sequence gives the
//! same result alone as in any batch.

mod weights;

pub use crate::config::Config;
pub use weights::{Precision, QMat, check_vector, vector};

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::cpu::{self, ops};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::lora::{Adapter, Target};
use crate::tokenizer::TokenId;

/// One transformer block's weights.
#[derive(Debug)]
pub struct Layer {
    /// Pre-attention RMSNorm.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub wq: QMat,
    /// Key projection.
    pub wk: QMat,
    /// Value projection.
    pub wv: QMat,
    /// Output projection.
    pub wo: QMat,
    /// Q/K/V biases (Qwen2).
    pub bias: Option<[Vec<f32>; 3]>,
    /// Pre-MLP RMSNorm.
    pub ffn_norm: Vec<f32>,
    /// Gate projection.
    pub gate: QMat,
    /// Up projection.
    pub up: QMat,
    /// Down projection.
    pub down: QMat,
    /// Per-head RMSNorm weights of queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// RMSNorms of the attention and feed-forward outputs before their residual adds (Gemma 3).
    pub post_norms: Option<[Vec<f32>; 2]>,
}

impl Layer {
    /// The base weight of a LoRA target.
    pub fn weight(&self, t: Target) -> &QMat {
        match t {
            Target::Q => &self.wq,
            Target::K => &self.wk,
            Target::V => &self.wv,
            Target::O => &self.wo,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
}

/// A loaded model.
#[derive(Debug)]
pub struct Model {
    /// Hyper-parameters.
    pub config: Config,
    /// Token embeddings (`vocab × n_embd`).
    pub tok_embd: QMat,
    /// Blocks.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub output_norm: Vec<f32>,
    /// Output projection (the embeddings when tied).
    pub output: QMat,
    /// RoPE frequency divisors (`rope_freqs.weight`, `rope_dims / 2` values) where the file has them.
    pub rope_freqs: Option<Vec<f32>>,
    /// The parsed file.
    pub gguf: Arc<Gguf>,
}

/// A sequence's key/value cache. Never shared between sequences (or tenants).
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    kv_dim: usize,
}

impl KvCache {
    /// An empty cache for a model.
    pub fn new(c: &Config) -> Self {
        KvCache { k: vec![Vec::new(); c.n_layer], v: vec![Vec::new(); c.n_layer], len: 0, kv_dim: c.kv_dim() }
    }
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes of key/value state held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.capacity() * std::mem::size_of::<f32>()).sum()
    }
    /// Appends `n` positions of made-up state (unit tests of cache bookkeeping).
    #[cfg(test)]
    pub(crate) fn fill_for_tests(&mut self, n: usize) {
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.extend((0..n * self.kv_dim).map(|i| i as f32));
        }
        self.len += n;
    }
    /// Drops everything after the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len {
            for l in 0..self.k.len() {
                self.k[l].truncate(n * self.kv_dim);
                self.v[l].truncate(n * self.kv_dim);
            }
            self.len = n;
        }
    }
}

/// Which positions' logits a lane wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill of a prefix).
    None,
    /// The last position only.
    Last,
    /// Every position.
    All,
    /// No logits: the mean over the lane's new positions of the final (normed) hidden states,
    /// `n_embd` values — a text embedding. The vocabulary projection is skipped.
    MeanHidden,
}

/// One sequence's part of a batch.
#[derive(Debug)]
pub struct Lane<'a> {
    /// Its cache; the tokens are appended.
    pub cache: &'a mut KvCache,
    /// New tokens.
    pub tokens: &'a [TokenId],
    /// Its adapter, if any.
    pub adapter: Option<&'a Adapter>,
    /// Which logits to return.
    pub logits: Logits,
}

impl Model {
    /// Loads a GGUF model (memory-mapped).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(Arc::new(Gguf::open(path)?))
    }

    /// Checks that `g` holds every tensor [`Model::from_gguf`] loads, each with its shape and a
    /// weight format, reading the header only (no tensor data): a file that passes loads.
    pub fn check_layout(g: &Gguf) -> Result<Config> {
        let c = Config::from_gguf(g)?;
        check_tensor_names(g, &c)?;
        let mat = |name: &str, rows: usize, cols: usize| QMat::check(g, name, rows, cols).map(drop);
        mat("token_embd.weight", c.vocab, c.n_embd)?;
        if g.tensor("output.weight").is_some() {
            mat("output.weight", c.vocab, c.n_embd)?;
        }
        for l in 0..c.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}");
            if g.tensor(&n("attn_q.bias")).is_some() {
                check_vector(g, &n("attn_q.bias"), c.q_dim())?;
                check_vector(g, &n("attn_k.bias"), c.kv_dim())?;
                check_vector(g, &n("attn_v.bias"), c.kv_dim())?;
            }
            check_vector(g, &n("attn_norm.weight"), c.n_embd)?;
            check_vector(g, &n("ffn_norm.weight"), c.n_embd)?;
            if c.family.qk_norm() {
                check_vector(g, &n("attn_q_norm.weight"), c.head_dim)?;
                check_vector(g, &n("attn_k_norm.weight"), c.head_dim)?;
            }
            if c.family.post_norms() {
                check_vector(g, &n("post_attention_norm.weight"), c.n_embd)?;
                check_vector(g, &n("post_ffw_norm.weight"), c.n_embd)?;
            }
            for (t, rows, cols) in [
                ("attn_q", c.q_dim(), c.n_embd),
                ("attn_k", c.kv_dim(), c.n_embd),
                ("attn_v", c.kv_dim(), c.n_embd),
                ("attn_output", c.n_embd, c.q_dim()),
                ("ffn_gate", c.n_ff, c.n_embd),
                ("ffn_up", c.n_ff, c.n_embd),
                ("ffn_down", c.n_embd, c.n_ff),
            ] {
                mat(&n(&format!("{t}.weight")), rows, cols)?;
            }
        }
        check_vector(g, "output_norm.weight", c.n_embd)?;
        Ok(c)
    }

    /// Builds the model from a parsed file.
    pub fn from_gguf(g: Arc<Gguf>) -> Result<Self> {
        let c = Self::check_layout(&g)?;
        let tok_embd = QMat::load(&g, "token_embd.weight", c.vocab, c.n_embd)?;
        let output = if g.tensor("output.weight").is_some() {
            QMat::load(&g, "output.weight", c.vocab, c.n_embd)?
        } else {
            tok_embd.clone()
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}");
            let bias = if g.tensor(&n("attn_q.bias")).is_some() {
                Some([
                    vector(&g, &n("attn_q.bias"), c.q_dim())?,
                    vector(&g, &n("attn_k.bias"), c.kv_dim())?,
                    vector(&g, &n("attn_v.bias"), c.kv_dim())?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(&g, &n("attn_norm.weight"), c.n_embd)?,
                wq: QMat::load(&g, &n("attn_q.weight"), c.q_dim(), c.n_embd)?,
                wk: QMat::load(&g, &n("attn_k.weight"), c.kv_dim(), c.n_embd)?,
                wv: QMat::load(&g, &n("attn_v.weight"), c.kv_dim(), c.n_embd)?,
                wo: QMat::load(&g, &n("attn_output.weight"), c.n_embd, c.q_dim())?,
                bias,
                ffn_norm: vector(&g, &n("ffn_norm.weight"), c.n_embd)?,
                gate: QMat::load(&g, &n("ffn_gate.weight"), c.n_ff, c.n_embd)?,
                up: QMat::load(&g, &n("ffn_up.weight"), c.n_ff, c.n_embd)?,
                down: QMat::load(&g, &n("ffn_down.weight"), c.n_embd, c.n_ff)?,
                qk_norm: if c.family.qk_norm() {
                    Some([
                        vector(&g, &n("attn_q_norm.weight"), c.head_dim)?,
                        vector(&g, &n("attn_k_norm.weight"), c.head_dim)?,
                    ])
                } else {
                    None
                },
                post_norms: if c.family.post_norms() {
                    Some([
                        vector(&g, &n("post_attention_norm.weight"), c.n_embd)?,
                        vector(&g, &n("post_ffw_norm.weight"), c.n_embd)?,
                    ])
                } else {
                    None
                },
            });
        }
        let output_norm = vector(&g, "output_norm.weight", c.n_embd)?;
        let rope_freqs = if c.rope_freqs { Some(vector(&g, "rope_freqs.weight", c.rope_dims / 2)?) } else { None };
        Ok(Model { config: c, tok_embd, layers, output_norm, output, rope_freqs, gguf: g })
    }

    /// The RoPE angles of position `pos` (`rope_dims / 2` each), for the local (sliding-window)
    /// layers' base or the global one: the file's linear scaling and frequency factors applied.
    pub fn rope_angles(&self, local: bool, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let c = &self.config;
        match c.family.sliding_pattern() {
            Some((_, base)) if local => ops::rope_angles_scaled(pos, c.rope_dims, base, 1.0, None, cos, sin),
            _ => ops::rope_angles_scaled(
                pos,
                c.rope_dims,
                c.rope_base,
                c.rope_scale,
                self.rope_freqs.as_deref(),
                cos,
                sin,
            ),
        }
    }

    /// The RoPE angles of `positions`, `rope_dims / 2` cosines and sines each, row after row: one
    /// table for the global layers and, where the family has sliding-window layers, a second for
    /// theirs (layer `l` uses table `usize::from(config.is_local(l))`).
    pub fn rope_tables(&self, positions: &[usize]) -> Vec<(Vec<f32>, Vec<f32>)> {
        let (c, h2, n) = (&self.config, self.config.rope_dims / 2, positions.len());
        let locals = (0..c.n_layer).any(|l| c.is_local(l));
        [false, true]
            .into_iter()
            .filter(|&local| !local || locals)
            .map(|local| {
                let (mut cos, mut sin) = (vec![0f32; n * h2], vec![0f32; n * h2]);
                for (k, &pos) in positions.iter().enumerate() {
                    self.rope_angles(local, pos, &mut cos[k * h2..(k + 1) * h2], &mut sin[k * h2..(k + 1) * h2]);
                }
                (cos, sin)
            })
            .collect()
    }

    /// Token embeddings of `tokens` into `x` (`n_embd` values each), scaled where the family says.
    pub fn embed(&self, tokens: &[TokenId], x: &mut [f32]) -> Result<()> {
        let d = self.config.n_embd;
        for (k, &t) in tokens.iter().enumerate() {
            self.tok_embd.dequantize_row(t as usize, &mut x[k * d..(k + 1) * d])?;
        }
        if self.config.family.scales_embeddings() {
            let s = (d as f32).sqrt();
            x[..tokens.len() * d].iter_mut().for_each(|v| *v *= s);
        }
        Ok(())
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config)
    }

    /// Runs the lanes' new tokens through the model in one pass. Returns, per lane, the logits it
    /// asked for (`vocab` values per position, concatenated).
    pub fn forward(&self, lanes: &mut [Lane<'_>], precision: Precision) -> Result<Vec<Vec<f32>>> {
        // The whole pass runs on a worker of the thread pool, so the sequential steps between
        // parallel products use a pool thread instead of a third thread competing for the cores
        // with the pool's idle workers (on 2 cores that contention costs a fifth of decode time).
        if rayon::current_thread_index().is_some() {
            self.forward_on_pool(lanes, precision)
        } else {
            rayon::scope(|_| self.forward_on_pool(lanes, precision))
        }
    }

    fn forward_on_pool(&self, lanes: &mut [Lane<'_>], precision: Precision) -> Result<Vec<Vec<f32>>> {
        let rows = self.check_lanes(lanes)?;
        let (n, d) = (rows.len(), self.config.n_embd);
        let mut x = vec![0f32; n * d];
        let spans = lane_spans(lanes);
        for (lane, span) in lanes.iter().zip(&spans) {
            self.embed(lane.tokens, &mut x[span.start * d..span.end * d])?;
        }
        let groups = adapter_groups(lanes, &spans);
        let tables = self.rope_tables(&rows.iter().map(|&(_, pos)| pos).collect::<Vec<_>>());
        let pass = Pass { rows: &rows, spans: &spans, groups: &groups, tables: &tables, precision };
        let mut buf = Buffers::new(&self.config, n);
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(&pass, l, layer, lanes, &mut x, &mut buf)?;
            self.ffn_block(&pass, l, layer, &mut x, &mut buf)?;
        }
        for lane in lanes.iter_mut() {
            lane.cache.len += lane.tokens.len();
        }
        self.outputs(lanes, &spans, &x, precision)
    }

    /// Checks every lane against the model (tokens in the vocabulary, its own KV cache, room in
    /// the context, an adapter of this shape) and lists the batch's rows as (lane, position).
    fn check_lanes(&self, lanes: &[Lane<'_>]) -> Result<Vec<(usize, usize)>> {
        let c = &self.config;
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (i, lane) in lanes.iter().enumerate() {
            if lane.tokens.is_empty() {
                return Err(Error::Request("a lane has no tokens".into()));
            }
            if let Some(&t) = lane.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(Error::Request(format!("token id {t} is outside the {}-token vocabulary", c.vocab)));
            }
            if lane.cache.kv_dim != c.kv_dim() || lane.cache.k.len() != c.n_layer {
                return Err(Error::Request("a KV cache from another model".into()));
            }
            let end = lane.cache.len + lane.tokens.len();
            if end > c.n_ctx {
                return Err(Error::Request(format!("{end} tokens exceed the {}-token context", c.n_ctx)));
            }
            if let Some(a) = lane.adapter
                && a.layers.len() != c.n_layer
            {
                return Err(Error::Adapter("adapter was built for another model shape".into()));
            }
            rows.extend((0..lane.tokens.len()).map(|k| (i, lane.cache.len + k)));
        }
        Ok(rows)
    }

    /// One layer's attention half: the Q/K/V projections (with their adapters, biases and norms),
    /// RoPE, the new keys and values appended to each lane's cache, attention, the output
    /// projection and the residual.
    fn attention_block(
        &self,
        pass: &Pass<'_>,
        l: usize,
        layer: &Layer,
        lanes: &mut [Lane<'_>],
        x: &mut [f32],
        buf: &mut Buffers,
    ) -> Result<()> {
        let c = &self.config;
        let (n, qd, kvd, hd, h2) = (pass.rows.len(), c.q_dim(), c.kv_dim(), c.head_dim, c.rope_dims / 2);
        let Buffers { xn, q, kk, vv, att, o, .. } = buf;
        norm_rows(x, &layer.attn_norm, c.eps, xn);
        QMat::matmul_group(&[&layer.wq, &layer.wk, &layer.wv], xn, &mut [q, kk, vv], pass.precision)?;
        apply_lora(pass.groups, l, Target::Q, xn, q);
        apply_lora(pass.groups, l, Target::K, xn, kk);
        apply_lora(pass.groups, l, Target::V, xn, vv);
        if let Some([bq, bk, bv]) = &layer.bias {
            add_bias(q, bq);
            add_bias(kk, bk);
            add_bias(vv, bv);
        }
        if let Some([qn, kn]) = &layer.qk_norm {
            // Each head is a row of `head_dim` values.
            post_norm(Some(qn), c.eps, q);
            post_norm(Some(kn), c.eps, kk);
        }
        let (cos, sin) = &pass.tables[usize::from(c.is_local(l))];
        for k in 0..n {
            let (cs, sn) = (&cos[k * h2..(k + 1) * h2], &sin[k * h2..(k + 1) * h2]);
            for h in 0..c.n_head {
                ops::rope(&mut q[k * qd + h * hd..k * qd + h * hd + c.rope_dims], cs, sn, c.rope_layout);
            }
            for h in 0..c.n_head_kv {
                ops::rope(&mut kk[k * kvd + h * hd..k * kvd + h * hd + c.rope_dims], cs, sn, c.rope_layout);
            }
        }
        for (lane, span) in lanes.iter_mut().zip(pass.spans) {
            lane.cache.k[l].extend_from_slice(&kk[span.start * kvd..span.end * kvd]);
            lane.cache.v[l].extend_from_slice(&vv[span.start * kvd..span.end * kvd]);
        }
        let caches: Vec<&KvCache> = lanes.iter().map(|ln| &*ln.cache).collect();
        attention(c, l, pass.rows, &caches, q, att);
        layer.weight(Target::O).matmul(att, o, pass.precision)?;
        apply_lora(pass.groups, l, Target::O, att, o);
        add_residual(x, o, layer.post_norms.as_ref().map(|[a, _]| a), c.eps);
        Ok(())
    }

    /// One layer's feed-forward half: gate and up (with their adapters), the family's gated
    /// activation, down, and the residual.
    fn ffn_block(&self, pass: &Pass<'_>, l: usize, layer: &Layer, x: &mut [f32], buf: &mut Buffers) -> Result<()> {
        let c = &self.config;
        let Buffers { xn, o, g, u, .. } = buf;
        norm_rows(x, &layer.ffn_norm, c.eps, xn);
        QMat::matmul_group(&[&layer.gate, &layer.up], xn, &mut [g, u], pass.precision)?;
        apply_lora(pass.groups, l, Target::Gate, xn, g);
        apply_lora(pass.groups, l, Target::Up, xn, u);
        let act = match c.family.activation() {
            crate::family::Activation::SwiGlu => ops::swiglu,
            crate::family::Activation::GeGlu => ops::geglu,
        };
        if pass.rows.len() == 1 {
            act(g, u);
        } else {
            g.par_chunks_mut(c.n_ff).zip(u.par_chunks(c.n_ff)).for_each(|(gr, ur)| act(gr, ur));
        }
        layer.weight(Target::Down).matmul(g, o, pass.precision)?;
        apply_lora(pass.groups, l, Target::Down, g, o);
        add_residual(x, o, layer.post_norms.as_ref().map(|[_, f]| f), c.eps);
        Ok(())
    }

    /// What each lane asked for from the final hidden states: logits of its last row, of every
    /// row, none, or its mean normalized hidden state. Every lane's wanted rows go through the
    /// vocabulary projection together: its weights (the largest matrix) are read once per step,
    /// not once per sequence.
    fn outputs(
        &self,
        lanes: &[Lane<'_>],
        spans: &[std::ops::Range<usize>],
        x: &[f32],
        precision: Precision,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let d = c.n_embd;
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(lanes.len());
        let mut wanted_rows: Vec<usize> = Vec::new();
        let mut counts = Vec::with_capacity(lanes.len());
        for (lane, span) in lanes.iter().zip(spans) {
            let span = span.clone();
            let wanted = match lane.logits {
                Logits::None => span.end..span.end,
                Logits::Last => span.end - 1..span.end,
                Logits::All => span,
                Logits::MeanHidden => {
                    let mut mean = vec![0f32; d];
                    let mut h = vec![0f32; d];
                    for row in span.clone() {
                        ops::rms_norm(&x[row * d..(row + 1) * d], &self.output_norm, c.eps, &mut h);
                        for (m, v) in mean.iter_mut().zip(&h) {
                            *m += v;
                        }
                    }
                    let inv = 1.0 / span.len() as f32;
                    mean.iter_mut().for_each(|m| *m *= inv);
                    out.push(mean);
                    counts.push(None);
                    continue;
                }
            };
            counts.push(Some(wanted.len()));
            wanted_rows.extend(wanted);
            out.push(Vec::new());
        }
        let m = wanted_rows.len();
        let mut h = vec![0f32; m * d];
        for (k, &row) in wanted_rows.iter().enumerate() {
            ops::rms_norm(&x[row * d..(row + 1) * d], &self.output_norm, c.eps, &mut h[k * d..(k + 1) * d]);
        }
        let mut logits = vec![0f32; m * c.vocab];
        if m > 0 {
            self.output.matmul(&h, &mut logits, precision)?;
        }
        let mut at = 0;
        for (o, count) in out.iter_mut().zip(counts) {
            if let Some(k) = count {
                *o = logits[at * c.vocab..(at + k) * c.vocab].to_vec();
                at += k;
            }
        }
        Ok(out)
    }
}

/// What every layer of one forward pass shares: the rows (lane, position), each lane's row range,
/// the adapters' row groups, the RoPE tables and the arithmetic.
struct Pass<'a> {
    rows: &'a [(usize, usize)],
    spans: &'a [std::ops::Range<usize>],
    groups: &'a [(&'a Adapter, Vec<usize>)],
    tables: &'a [(Vec<f32>, Vec<f32>)],
    precision: Precision,
}

/// One forward pass's activations, allocated once for all its layers.
struct Buffers {
    xn: Vec<f32>,
    q: Vec<f32>,
    kk: Vec<f32>,
    vv: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
}

impl Buffers {
    fn new(c: &Config, n: usize) -> Self {
        Self {
            xn: vec![0f32; n * c.n_embd],
            q: vec![0f32; n * c.q_dim()],
            kk: vec![0f32; n * c.kv_dim()],
            vv: vec![0f32; n * c.kv_dim()],
            att: vec![0f32; n * c.q_dim()],
            o: vec![0f32; n * c.n_embd],
            g: vec![0f32; n * c.n_ff],
            u: vec![0f32; n * c.n_ff],
        }
    }
}

/// Each lane's range of rows in the batch.
fn lane_spans(lanes: &[Lane<'_>]) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    lanes
        .iter()
        .map(|lane| {
            start += lane.tokens.len();
            start - lane.tokens.len()..start
        })
        .collect()
}

/// The rows of each adapter in the batch (lanes sharing an adapter share its group), for the
/// LoRA gather.
fn adapter_groups<'a>(lanes: &[Lane<'a>], spans: &[std::ops::Range<usize>]) -> Vec<(&'a Adapter, Vec<usize>)> {
    let mut groups: Vec<(&'a Adapter, Vec<usize>)> = Vec::new();
    for (lane, span) in lanes.iter().zip(spans) {
        if let Some(a) = lane.adapter {
            match groups.iter_mut().find(|(g, _)| std::ptr::eq(*g, a)) {
                Some((_, rs)) => rs.extend(span.clone()),
                None => groups.push((a, span.clone().collect())),
            }
        }
    }
    groups
}

pub(crate) fn norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    if x.len() == d {
        return ops::rms_norm(x, w, eps, out);
    }
    out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, xr)| ops::rms_norm(xr, w, eps, o));
}

/// Applies a post norm (rows of `w.len()`) to `y` in place where the family has one, returning
/// `y` as it was (the trainer's backward pass needs it); an empty vector where there is none.
pub(crate) fn post_norm(w: Option<&Vec<f32>>, eps: f32, y: &mut [f32]) -> Vec<f32> {
    let Some(w) = w else { return Vec::new() };
    let pre = y.to_vec();
    norm_rows(&pre, w, eps, y);
    pre
}

/// `x += o`, with `o` RMS-normed first where the family has a post norm (`o` is scratch).
fn add_residual(x: &mut [f32], o: &mut [f32], w: Option<&Vec<f32>>, eps: f32) {
    post_norm(w, eps, o);
    for (xv, ov) in x.iter_mut().zip(o.iter()) {
        *xv += ov;
    }
}

/// Refuses every tensor the family does not name (or names only for other layers): a file is
/// never run with part of its maths ignored.
fn check_tensor_names(g: &Gguf, c: &Config) -> Result<()> {
    for t in &g.tensors {
        let known = match t.name.as_str() {
            "token_embd.weight" | "output_norm.weight" | "output.weight" => true,
            "rope_freqs.weight" => c.rope_freqs,
            name => name.strip_prefix("blk.").and_then(|rest| rest.split_once('.')).is_some_and(|(l, suffix)| {
                l.parse::<usize>().is_ok_and(|i| i < c.n_layer && i.to_string() == l)
                    && c.family.layer_tensors().any(|(s, _)| s == suffix)
            }),
        };
        if !known {
            return Err(Error::Tensor {
                name: t.name.clone(),
                reason: format!("not part of the {} family as implemented here: refused rather than ignored", c.arch),
            });
        }
    }
    Ok(())
}

pub(crate) fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        for (v, bv) in row.iter_mut().zip(b) {
            *v += bv;
        }
    }
}

/// Adds `scale · B·A·x` for each adapter group's rows (gather, compute, scatter-add).
fn apply_lora(groups: &[(&Adapter, Vec<usize>)], layer: usize, t: Target, input: &[f32], out: &mut [f32]) {
    let n_rows = groups.iter().map(|(_, r)| r.len()).sum::<usize>();
    if n_rows == 0 {
        return;
    }
    for (adapter, rows) in groups {
        let Some(p) = adapter.pair(layer, t) else { continue };
        let in_f = p.a.len() / p.rank;
        let out_f = p.b.len() / p.rank;
        // tmp = A·x for each gathered row.
        let mut tmp = vec![0f32; rows.len() * p.rank];
        tmp.par_chunks_mut(p.rank).zip(rows.par_iter()).for_each(|(tr, &row)| {
            let xr = &input[row * in_f..(row + 1) * in_f];
            for (j, tv) in tr.iter_mut().enumerate() {
                *tv = cpu::dot_f32(&p.a[j * in_f..(j + 1) * in_f], xr);
            }
        });
        let mut delta = vec![0f32; rows.len() * out_f];
        delta.par_chunks_mut(out_f).zip(tmp.par_chunks(p.rank)).for_each(|(dr, tr)| {
            for (o, dv) in dr.iter_mut().enumerate() {
                *dv = p.scale * cpu::dot_f32(&p.b[o * p.rank..(o + 1) * p.rank], tr);
            }
        });
        for (k, &row) in rows.iter().enumerate() {
            for (ov, dv) in out[row * out_f..(row + 1) * out_f].iter_mut().zip(&delta[k * out_f..(k + 1) * out_f]) {
                *ov += dv;
            }
        }
    }
}

/// Causal attention with grouped KV heads, each row against its own lane's cache.
fn attention(c: &Config, l: usize, rows: &[(usize, usize)], caches: &[&KvCache], q: &[f32], out: &mut [f32]) {
    let (hd, kvd, nh) = (c.head_dim, c.kv_dim(), c.n_head);
    let group = c.n_head / c.n_head_kv;
    let scale = c.attn_scale;
    // One task per (row, query head): a decode step has few rows, and whole KV groups (three here)
    // would split unevenly over two cores. The group's keys stay in cache between its heads.
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (idx, o)| {
        let (row, h) = (idx / nh, idx % nh);
        let (lane, pos) = rows[row];
        let cache = caches[lane];
        let qh = &q[row * nh * hd + h * hd..row * nh * hd + (h + 1) * hd];
        let first = c.first_visible(l, pos);
        let (ks, vs) = (&cache.k[l][first * kvd..], &cache.v[l][first * kvd..]);
        cpu::attend(qh, ks, vs, kvd, (h / group) * hd, pos + 1 - first, hd, scale, scores, o);
    });
}
