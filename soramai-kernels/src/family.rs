//! Model families: what a GGUF architecture's transformer block computes, stated once.
//!
//! A [`Family`] names every tensor its block reads, every `{arch}.*` metadata key it honours, its
//! norms (q/k norms, post norms), activation, RoPE layout and attention pattern. The CPU forward
//! pass ([`crate::model::Model`]), the QLoRA trainer and the GPU model read the same description
//! (through [`crate::config::Config`]); a consumer that does not implement one of a family's
//! features refuses the model by naming it ([`crate::config::Config::require_plain_block`]).
//!
//! Loading is strict: a tensor the family does not name, or an `{arch}.*` key it does not honour
//! (or honours only at its neutral value), is refused with its name. A file is never loaded and
//! run with part of its maths ignored.

use crate::cpu::ops::RopeLayout;
use crate::error::{Error, Result};

/// A supported architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `llama` and `mistral`: SwiGLU, RMSNorm, interleaved RoPE (GGUF's permuted Q/K rows),
    /// optional Q/K/V biases, optional `rope_freqs` (Llama 3.1+ RoPE scaling).
    Llama,
    /// `qwen2`: as llama with Q/K/V biases and NeoX RoPE.
    Qwen2,
    /// `qwen3`: NeoX RoPE, an RMSNorm over each query and key head before RoPE, no biases.
    Qwen3,
    /// `gemma3`: embeddings scaled by `sqrt(n_embd)`, q/k norms, post-attention and post-FFN
    /// norms, GeGLU (tanh GELU), NeoX RoPE, five sliding-window layers (their own RoPE base,
    /// 10 000) to each global one.
    Gemma3,
}

/// The gated feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) · up`.
    SwiGlu,
    /// `gelu_tanh(gate) · up`.
    GeGlu,
}

/// Whether a tensor must be present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Loading fails without it.
    Required,
    /// Used when present.
    Optional,
}

/// Gemma 3's sliding-window pattern: of every `period` layers, the last is global.
const GEMMA3_PERIOD: usize = 6;
/// RoPE base of Gemma 3's sliding-window layers (not in the GGUF; fixed by the architecture).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// The `{arch}.*` keys every family reads (their values are checked where they are read).
const COMMON_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "vocab_size",
    "rope.scaling.type",
    "rope.scaling.factor",
    // Informational: the context the scaling extends (read by YaRN, which is refused by name).
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
    // Accepted at their neutral values only (checked in `Config::from_gguf`).
    "expert_count",
    "expert_used_count",
    "attention.causal",
];

impl Family {
    /// The family of a `general.architecture`, or a refusal that says why.
    pub fn from_arch(arch: &str) -> Result<Self> {
        match arch {
            "llama" | "mistral" => Ok(Family::Llama),
            "qwen2" => Ok(Family::Qwen2),
            "qwen3" => Ok(Family::Qwen3),
            "gemma3" => Ok(Family::Gemma3),
            "granite" | "granitemoe" => Err(Error::Metadata(format!(
                "architecture {arch:?} is not implemented: its embedding, residual, attention and logit \
                 multipliers change the maths (refused rather than run as llama)"
            ))),
            "phi3" => Err(Error::Metadata(
                "architecture \"phi3\" is not implemented: its fused attn_qkv and gate+up tensors".into(),
            )),
            other => Err(Error::Metadata(format!(
                "unsupported architecture {other:?} (supported: llama, mistral, qwen2, qwen3, gemma3)"
            ))),
        }
    }

    /// The RoPE pair layout of the family's GGUF tensors.
    pub fn rope_layout(self) -> RopeLayout {
        match self {
            Family::Llama => RopeLayout::Interleaved,
            Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => RopeLayout::Neox,
        }
    }

    /// The feed-forward activation.
    pub fn activation(self) -> Activation {
        match self {
            Family::Gemma3 => Activation::GeGlu,
            _ => Activation::SwiGlu,
        }
    }

    /// Whether each query and key head is RMS-normed (its own weights) before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Gemma3)
    }

    /// Whether the attention and feed-forward outputs are RMS-normed before their residual adds.
    pub fn post_norms(self) -> bool {
        self == Family::Gemma3
    }

    /// Whether token embeddings are multiplied by `sqrt(n_embd)`.
    pub fn scales_embeddings(self) -> bool {
        self == Family::Gemma3
    }

    /// The sliding-window pattern: `Some((period, local_rope_base))` when, of every `period`
    /// layers, all but the last attend within a window and rotate with `local_rope_base`.
    pub fn sliding_pattern(self) -> Option<(usize, f32)> {
        match self {
            Family::Gemma3 => Some((GEMMA3_PERIOD, GEMMA3_LOCAL_ROPE_BASE)),
            _ => None,
        }
    }

    /// Whether a file may carry `rope_freqs.weight` (per-dimension RoPE frequency divisors).
    pub fn takes_rope_freqs(self) -> bool {
        self == Family::Llama
    }

    /// The tensors of one block (names after `blk.N.`), each with whether it must be present:
    /// the pre-norm attention and gated feed-forward every family has, then the family's own.
    pub fn layer_tensors(self) -> impl Iterator<Item = (&'static str, Need)> {
        use Need::{Optional, Required};
        const BASE: [(&str, Need); 9] = [
            ("attn_norm.weight", Required),
            ("attn_q.weight", Required),
            ("attn_k.weight", Required),
            ("attn_v.weight", Required),
            ("attn_output.weight", Required),
            ("ffn_norm.weight", Required),
            ("ffn_gate.weight", Required),
            ("ffn_up.weight", Required),
            ("ffn_down.weight", Required),
        ];
        const BIASES: [(&str, Need); 3] =
            [("attn_q.bias", Optional), ("attn_k.bias", Optional), ("attn_v.bias", Optional)];
        const QK_NORMS: [(&str, Need); 2] = [("attn_q_norm.weight", Required), ("attn_k_norm.weight", Required)];
        const POST_NORMS: [(&str, Need); 2] =
            [("post_attention_norm.weight", Required), ("post_ffw_norm.weight", Required)];
        let own: [&'static [(&'static str, Need)]; 2] = match self {
            Family::Llama | Family::Qwen2 => [&BIASES, &[]],
            Family::Qwen3 => [&QK_NORMS, &[]],
            Family::Gemma3 => [&QK_NORMS, &POST_NORMS],
        };
        BASE.into_iter().chain(own.into_iter().flatten().copied())
    }

    /// Whether `key` (after `{arch}.`) is a metadata key the family honours.
    pub fn reads_key(self, key: &str) -> bool {
        COMMON_KEYS.contains(&key) || (self == Family::Gemma3 && key == "attention.sliding_window")
    }

    /// The chat template used when the file carries none (`tokenizer.chat_template`), for
    /// families whose turn format is fixed: Gemma's `<start_of_turn>` turns (a system message
    /// opens the first user turn, as Gemma's own template does; `assistant` is `model`). BOS is
    /// not in the text: the tokenizer adds it where the metadata says so.
    pub fn default_chat_template(self) -> Option<&'static str> {
        match self {
            Family::Gemma3 => Some(GEMMA_TEMPLATE),
            _ => None,
        }
    }
}

const GEMMA_TEMPLATE: &str = "\
{% if messages and messages[0].role == 'system' %}\
{% set prefix = messages[0].content ~ '\\n\\n' %}{% set turns = messages[1:] %}\
{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}\
{% for m in turns %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n\
{{ (prefix if loop.first else '') ~ (m.content | trim) }}<end_of_turn>\n\
{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";
