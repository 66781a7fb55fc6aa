//! Hyper-parameters of a model, read from GGUF metadata through its [`Family`].

use crate::cpu::ops::RopeLayout;
use crate::error::{Error, Result};
pub use crate::family::{Activation, Family};
use crate::gguf::Gguf;

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `general.architecture` (`llama`, `mistral`, `qwen2`...).
    pub arch: String,
    /// What the architecture's block computes.
    pub family: Family,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Feed-forward hidden size.
    pub n_ff: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Trained context length.
    pub n_ctx: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Dimensions rotated per head.
    pub rope_dims: usize,
    /// RoPE pair layout.
    pub rope_layout: RopeLayout,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Linear RoPE scaling: positions are multiplied by this (`1 / rope.scaling.factor`; 1 when
    /// the file asks for none).
    pub rope_scale: f32,
    /// Whether the file carries `rope_freqs.weight` (per-dimension frequency divisors, Llama
    /// 3.1+); the values are the model's ([`crate::model::Model::rope_angles`]).
    pub rope_freqs: bool,
    /// The sliding window of the family's local layers (`{arch}.attention.sliding_window`):
    /// a query attends to itself and the `window - 1` positions before it.
    pub sliding_window: Option<usize>,
    /// Attention logit scale (`1/sqrt(head_dim)` but where the family says otherwise).
    pub attn_scale: f32,
}

/// Upper bounds that keep a hostile header from sizing huge buffers.
const MAX_DIM: u64 = 1 << 20;

impl Config {
    /// Reads the hyper-parameters of a llama-family architecture.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch =
            g.get_str("general.architecture")?.ok_or_else(|| Error::Metadata("no general.architecture".into()))?;
        let family = Family::from_arch(arch)?;
        let rope_layout = family.rope_layout();
        check_keys(g, arch, family)?;
        let req = |k: &str| -> Result<usize> {
            let key = format!("{arch}.{k}");
            match g.get_u64(&key)? {
                Some(v) if (1..=MAX_DIM).contains(&v) => Ok(v as usize),
                Some(v) => Err(Error::Metadata(format!("{key} = {v} is out of range"))),
                None => Err(Error::Metadata(format!("missing {key}"))),
            }
        };
        let n_layer = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = if g.get(&format!("{arch}.attention.head_count_kv")).is_some() {
            req("attention.head_count_kv")?
        } else {
            n_head
        };
        let head_dim = if g.get(&format!("{arch}.attention.key_length")).is_some() {
            req("attention.key_length")?
        } else {
            n_embd / n_head
        };
        if n_head % n_head_kv != 0 || head_dim % 2 != 0 || n_layer > 1024 {
            return Err(Error::Metadata(format!("heads {n_head}/{n_head_kv}, head dim {head_dim}, layers {n_layer}")));
        }
        let rope_dims = if g.get(&format!("{arch}.rope.dimension_count")).is_some() {
            req("rope.dimension_count")?
        } else {
            head_dim
        };
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(Error::Metadata(format!("rope dimension {rope_dims} with head dim {head_dim}")));
        }
        let num = |k: &str, default: f64| -> Result<f32> {
            match g.get(&format!("{arch}.{k}")) {
                None => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(|x| x as f32)
                    .ok_or_else(|| Error::Metadata(format!("{arch}.{k} is not a positive number"))),
            }
        };
        let vocab = match g.get_u64(&format!("{arch}.vocab_size"))? {
            Some(v) if (1..=MAX_DIM * 4).contains(&v) => v as usize,
            Some(v) => return Err(Error::Metadata(format!("vocab_size {v} is out of range"))),
            None => g.tensor("token_embd.weight").and_then(|t| t.dims.get(1)).map_or(0, |&v| v as usize),
        };
        let value_length = if g.get(&format!("{arch}.attention.value_length")).is_some() {
            req("attention.value_length")?
        } else {
            head_dim
        };
        if value_length != head_dim {
            return Err(Error::Metadata(format!(
                "{arch}.attention.value_length = {value_length} differs from the key length {head_dim}"
            )));
        }
        let rope_scale = rope_scaling(g, arch)?;
        let rope_freqs = match g.tensor("rope_freqs.weight") {
            None => false,
            Some(_) if !family.takes_rope_freqs() => {
                return Err(Error::Tensor {
                    name: "rope_freqs.weight".into(),
                    reason: format!("the {arch} family does not implement RoPE frequency factors"),
                });
            }
            Some(t) if t.ty != crate::quant::GgmlType::F32 || t.elements() != (rope_dims / 2) as u64 => {
                return Err(Error::Tensor {
                    name: "rope_freqs.weight".into(),
                    reason: format!("{} {} values, expected {} F32 values", t.elements(), t.ty, rope_dims / 2),
                });
            }
            Some(_) => true,
        };
        let sliding_window = match family.sliding_pattern() {
            Some(_) => Some(req("attention.sliding_window")?),
            None => None,
        };
        // Gemma 3 27B (62 layers) scales queries by the model width per head, as llama.cpp does.
        let attn_scale = if family == Family::Gemma3 && n_layer == 62 {
            1.0 / ((n_embd / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        Ok(Config {
            arch: arch.to_owned(),
            family,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: req("feed_forward_length")?,
            vocab,
            n_ctx: req("context_length")?,
            rope_base: num("rope.freq_base", 10000.0)?,
            rope_dims,
            rope_layout,
            eps: num("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_scale,
            rope_freqs,
            sliding_window,
            attn_scale,
        })
    }

    /// Whether layer `l` attends within the sliding window (and rotates with the local base).
    pub fn is_local(&self, l: usize) -> bool {
        match (self.family.sliding_pattern(), self.sliding_window) {
            (Some((period, _)), Some(_)) => l % period < period - 1,
            _ => false,
        }
    }

    /// The RoPE base of layer `l`.
    pub fn rope_base_of(&self, l: usize) -> f32 {
        match self.family.sliding_pattern() {
            Some((_, local)) if self.is_local(l) => local,
            _ => self.rope_base,
        }
    }

    /// The first position a query at `pos` attends to in layer `l`.
    pub fn first_visible(&self, l: usize, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) if self.is_local(l) => (pos + 1).saturating_sub(w),
            _ => 0,
        }
    }

    /// The family features beyond the plain pre-norm SwiGLU block with one RoPE for all layers,
    /// each named by what the file carries.
    pub fn block_features(&self) -> Vec<&'static str> {
        let f = self.family;
        let mut out = Vec::new();
        if f.qk_norm() {
            out.push("q/k norms (attn_q_norm, attn_k_norm)");
        }
        if f.post_norms() {
            out.push("post norms (post_attention_norm, post_ffw_norm)");
        }
        if f.activation() == Activation::GeGlu {
            out.push("the GeGLU activation");
        }
        if f.scales_embeddings() {
            out.push("embedding scaling");
        }
        if self.sliding_window.is_some() {
            out.push("sliding-window layers (attention.sliding_window)");
        }
        out
    }

    /// Refuses, naming them, the family features that `who` does not implement yet: a consumer
    /// that runs only the plain block calls this before it touches the model.
    pub fn require_plain_block(&self, who: &str) -> Result<()> {
        let missing = self.block_features();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Metadata(format!(
            "{who} does not implement the {} architecture's {} yet",
            self.arch,
            missing.join(", ")
        )))
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// Refuses every `{arch}.*` key the family does not honour and every neutral-only key at another
/// value; a split file's first part is refused too (its other parts' tensors are elsewhere).
fn check_keys(g: &Gguf, arch: &str, family: Family) -> Result<()> {
    let prefix = format!("{arch}.");
    for (key, value) in &g.metadata {
        if let Some(rest) = key.strip_prefix(&prefix) {
            if !family.reads_key(rest) {
                return Err(Error::Metadata(format!(
                    "{key} is not implemented for {arch}: refused rather than ignored"
                )));
            }
            let neutral = match rest {
                "expert_count" | "expert_used_count" => value.as_u64() == Some(0),
                "attention.causal" => value.as_bool() == Some(true),
                _ => true,
            };
            if !neutral {
                return Err(Error::Metadata(format!(
                    "{key} = {value:?} is not implemented (dense causal models only)"
                )));
            }
        }
    }
    if let Some(n) = g.get("split.count")
        && n.as_u64() != Some(1)
    {
        return Err(Error::Metadata(format!("split.count = {n:?}: a split GGUF; merge its parts into one file first")));
    }
    Ok(())
}

/// The linear RoPE position scale: `1 / rope.scaling.factor` for `linear` scaling (or a factor
/// with no type, as llama.cpp reads it), 1 for `none`; any other scaling is refused by name.
fn rope_scaling(g: &Gguf, arch: &str) -> Result<f32> {
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let kind = match g.get(&type_key) {
        None => "linear",
        Some(v) => v.as_str().ok_or_else(|| Error::Metadata(format!("{type_key} is not a string")))?,
    };
    let factor = match g.get(&factor_key) {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .ok_or_else(|| Error::Metadata(format!("{factor_key} is not a non-negative number")))?,
    };
    match kind {
        "none" => Ok(1.0),
        "linear" if factor == 0.0 => Ok(1.0),
        "linear" => Ok((1.0 / factor) as f32),
        other => Err(Error::Metadata(format!("{type_key} = {other:?} is not implemented (none and linear are)"))),
    }
}
