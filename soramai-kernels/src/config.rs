//! Hyper-parameters of a llama-family model, read from GGUF metadata.

use crate::cpu::ops::RopeLayout;
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `general.architecture` (`llama`, `mistral`, `qwen2`...).
    pub arch: String,
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
}

/// Upper bounds that keep a hostile header from sizing huge buffers.
const MAX_DIM: u64 = 1 << 20;

impl Config {
    /// Reads the hyper-parameters of a llama-family architecture.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch =
            g.get_str("general.architecture")?.ok_or_else(|| Error::Metadata("no general.architecture".into()))?;
        let rope_layout = match arch {
            "llama" | "mistral" | "granite" => RopeLayout::Interleaved,
            "qwen2" | "qwen3" => RopeLayout::Neox,
            other => return Err(Error::Metadata(format!("unsupported architecture {other:?}"))),
        };
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
        Ok(Config {
            arch: arch.to_owned(),
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
        })
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
