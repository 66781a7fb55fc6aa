//! LoRA adapters in Hugging Face PEFT layout (`adapter_config.json` + `adapter_model.safetensors`).
//!
//! An adapter adds `scale · B·A·x` to a projection, with `A: r × in`, `B: out × r` and
//! `scale = alpha / r` (`alpha / √r` with rsLoRA). GGUF llama files store Q and K with their rows
//! permuted for interleaved RoPE, so the `B` of `q_proj`/`k_proj` is permuted the same way on load
//! (and back on save): an adapter trained on the Hugging Face model applies exactly.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::cpu::ops::RopeLayout;
use crate::error::{Error, Result, io_err};

/// Largest rank accepted (bounds allocations from a hostile config).
pub const MAX_RANK: usize = 1024;
/// Largest adapter file read.
const MAX_FILE: u64 = 4 << 30;

/// A projection an adapter can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// `self_attn.q_proj`.
    #[serde(rename = "q_proj")]
    Q,
    /// `self_attn.k_proj`.
    #[serde(rename = "k_proj")]
    K,
    /// `self_attn.v_proj`.
    #[serde(rename = "v_proj")]
    V,
    /// `self_attn.o_proj`.
    #[serde(rename = "o_proj")]
    O,
    /// `mlp.gate_proj`.
    #[serde(rename = "gate_proj")]
    Gate,
    /// `mlp.up_proj`.
    #[serde(rename = "up_proj")]
    Up,
    /// `mlp.down_proj`.
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    /// All targets, in layer order.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The PEFT module name (`q_proj`...).
    pub const fn module(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    /// The target for a PEFT module name.
    pub fn from_module(m: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.module() == m)
    }

    /// `(out, in)` features of the projection.
    pub fn shape(self, c: &Config) -> (usize, usize) {
        match self {
            Target::Q => (c.q_dim(), c.n_embd),
            Target::K | Target::V => (c.kv_dim(), c.n_embd),
            Target::O => (c.n_embd, c.q_dim()),
            Target::Gate | Target::Up => (c.n_ff, c.n_embd),
            Target::Down => (c.n_embd, c.n_ff),
        }
    }
}

/// One low-rank pair.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    /// `rank × in`, row-major.
    pub a: Vec<f32>,
    /// `out × rank`, row-major, in the GGUF row order of the projection.
    pub b: Vec<f32>,
    /// Rank.
    pub rank: usize,
    /// `alpha / rank` (or `alpha / √rank`).
    pub scale: f32,
}

/// The subset of `adapter_config.json` that matters here.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    /// Rank.
    pub r: usize,
    /// Scaling numerator.
    pub lora_alpha: f32,
    /// Targeted modules.
    pub target_modules: Vec<String>,
    /// rsLoRA scaling (`alpha / √r`).
    #[serde(default)]
    pub use_rslora: bool,
    /// Must be false for llama projections.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Always `LORA`.
    #[serde(default = "lora")]
    pub peft_type: String,
    /// The base model this was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Always `CAUSAL_LM`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Per-module rank overrides.
    #[serde(default)]
    pub rank_pattern: HashMap<String, usize>,
    /// Per-module alpha overrides.
    #[serde(default)]
    pub alpha_pattern: HashMap<String, f32>,
}

fn lora() -> String {
    "LORA".into()
}

/// A LoRA adapter for one model shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// Its configuration.
    pub config: AdapterConfig,
    /// `layers[l][target]`.
    pub layers: Vec<HashMap<Target, LoraPair>>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Adapter(msg.into())
}

/// GGUF row order of Q/K from Hugging Face row order: within each head, `(2, d/2)` becomes `(d/2, 2)`.
fn rope_permute(rows: &[f32], width: usize, heads: usize, inverse: bool) -> Vec<f32> {
    let mut out = vec![0f32; rows.len()];
    let n_rows = rows.len() / width.max(1);
    let hd = n_rows / heads.max(1);
    let half = hd / 2;
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let hf = h * hd + s * half + j;
                let gg = h * hd + j * 2 + s;
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * width..(dst + 1) * width].copy_from_slice(&rows[src * width..(src + 1) * width]);
            }
        }
    }
    out
}

fn to_f32(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(bad(format!("tensor dtype {other:?} (F32, F16 or BF16 expected)"))),
    })
}

impl Adapter {
    /// Loads a PEFT adapter directory for a model.
    pub fn load(dir: impl AsRef<Path>, model: &Config) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("adapter_config.json");
        let st_path = dir.join("adapter_model.safetensors");
        let cfg_bytes = read_bounded(&cfg_path, 1 << 20)?;
        let st_bytes = read_bounded(&st_path, MAX_FILE)?;
        Self::from_bytes(&cfg_bytes, &st_bytes, model)
    }

    /// Parses an adapter from its config JSON and safetensors bytes.
    pub fn from_bytes(config_json: &[u8], safetensors: &[u8], model: &Config) -> Result<Self> {
        let config: AdapterConfig =
            serde_json::from_slice(config_json).map_err(|e| bad(format!("adapter_config.json: {e}")))?;
        if config.peft_type != "LORA" {
            return Err(bad(format!("peft_type {:?} is not LORA", config.peft_type)));
        }
        if config.fan_in_fan_out {
            return Err(bad("fan_in_fan_out adapters do not fit llama projections"));
        }
        if !(config.lora_alpha.is_finite() && config.lora_alpha > 0.0) {
            return Err(bad("lora_alpha must be a positive number"));
        }
        let mut targets = Vec::new();
        for m in &config.target_modules {
            targets.push(Target::from_module(m).ok_or_else(|| bad(format!("unsupported target module {m:?}")))?);
        }
        let st = SafeTensors::deserialize(safetensors).map_err(|e| bad(format!("safetensors: {e}")))?;
        let mut layers: Vec<HashMap<Target, LoraPair>> = vec![HashMap::new(); model.n_layer];
        let mut seen = 0usize;
        for (name, view) in st.tensors() {
            let key = name.strip_prefix("base_model.model.").unwrap_or(&name);
            let (layer, target, is_a) = parse_key(key).ok_or_else(|| bad(format!("unexpected tensor {name:?}")))?;
            if layer >= model.n_layer {
                return Err(bad(format!("{name}: layer {layer} of a {}-layer model", model.n_layer)));
            }
            if !targets.contains(&target) {
                return Err(bad(format!("{name}: {} is not in target_modules", target.module())));
            }
            let (out_f, in_f) = target.shape(model);
            let shape = view.shape();
            let rank = if is_a { shape.first() } else { shape.get(1) }.copied().unwrap_or(0);
            let want = if is_a { [rank, in_f] } else { [out_f, rank] };
            if shape.len() != 2 || shape != want || rank == 0 || rank > MAX_RANK {
                return Err(bad(format!("{name}: shape {shape:?}, expected {want:?} with rank 1..={MAX_RANK}")));
            }
            let values = to_f32(&view)?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("{name}: non-finite values")));
            }
            let pattern_key = format!("{}.{}", target.parent(), target.module());
            let alpha = lookup(&config.alpha_pattern, &pattern_key, layer).copied().unwrap_or(config.lora_alpha);
            let scale = if config.use_rslora { alpha / (rank as f32).sqrt() } else { alpha / rank as f32 };
            let entry = layers[layer].entry(target).or_insert(LoraPair { a: Vec::new(), b: Vec::new(), rank, scale });
            if entry.rank != rank {
                return Err(bad(format!("{name}: rank {rank} differs from its pair's {}", entry.rank)));
            }
            let slot = if is_a { &mut entry.a } else { &mut entry.b };
            if !slot.is_empty() {
                return Err(bad(format!("{name}: duplicate")));
            }
            *slot = if !is_a && model.rope_layout == RopeLayout::Interleaved && matches!(target, Target::Q | Target::K)
            {
                let heads = if target == Target::Q { model.n_head } else { model.n_head_kv };
                rope_permute(&values, rank, heads, false)
            } else {
                values
            };
            seen += 1;
        }
        for (l, layer) in layers.iter().enumerate() {
            for (t, p) in layer {
                if p.a.is_empty() || p.b.is_empty() {
                    return Err(bad(format!("layer {l} {}: lora_A or lora_B missing", t.module())));
                }
            }
        }
        if seen == 0 {
            return Err(bad("no LoRA tensors"));
        }
        Ok(Adapter { config, layers })
    }

    /// Writes the adapter in PEFT layout (F32 tensors).
    pub fn save(&self, dir: impl AsRef<Path>, model: &Config) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (json, st) = self.to_bytes(model)?;
        let p = dir.join("adapter_config.json");
        std::fs::write(&p, json).map_err(io_err(&p))?;
        let p = dir.join("adapter_model.safetensors");
        std::fs::write(&p, st).map_err(io_err(&p))
    }

    /// The adapter as `(adapter_config.json, adapter_model.safetensors)` bytes.
    pub fn to_bytes(&self, model: &Config) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let mut ts: Vec<_> = layer.iter().collect();
            ts.sort_by_key(|(t, _)| **t);
            for (t, p) in ts {
                let (out_f, in_f) = t.shape(model);
                let prefix = format!("base_model.model.model.layers.{l}.{}.{}", t.parent(), t.module());
                let b = if model.rope_layout == RopeLayout::Interleaved && matches!(t, Target::Q | Target::K) {
                    let heads = if *t == Target::Q { model.n_head } else { model.n_head_kv };
                    rope_permute(&p.b, p.rank, heads, true)
                } else {
                    p.b.clone()
                };
                tensors.push((format!("{prefix}.lora_A.weight"), f32_bytes(&p.a), vec![p.rank, in_f]));
                tensors.push((format!("{prefix}.lora_B.weight"), f32_bytes(&b), vec![out_f, p.rank]));
            }
        }
        let views = tensors
            .iter()
            .map(|(n, d, s)| {
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), d)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let st = safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))?;
        let json = serde_json::to_vec_pretty(&self.config).map_err(|e| bad(e.to_string()))?;
        Ok((json, st))
    }

    /// The pair for a layer and target, if the adapter has one.
    pub fn pair(&self, layer: usize, t: Target) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|m| m.get(&t))
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn lookup<'a, T>(pattern: &'a HashMap<String, T>, module: &str, layer: usize) -> Option<&'a T> {
    let full = format!("model.layers.{layer}.{module}");
    pattern.iter().find(|(k, _)| full.ends_with(k.as_str()) || module.ends_with(k.as_str())).map(|(_, v)| v)
}

/// `model.layers.{l}.{self_attn|mlp}.{module}.lora_{A|B}[.weight]`.
fn parse_key(key: &str) -> Option<(usize, Target, bool)> {
    let rest = key.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let layer: usize = l.parse().ok()?;
    let (parent, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let target = Target::from_module(module)?;
    if target.parent() != parent {
        return None;
    }
    let ab = rest.strip_suffix(".weight").unwrap_or(rest);
    match ab {
        "lora_A" => Some((layer, target, true)),
        "lora_B" => Some((layer, target, false)),
        _ => None,
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(io_err(path))?;
    if buf.len() as u64 > max {
        return Err(bad(format!("{} is larger than {max} bytes", path.display())));
    }
    Ok(buf)
}
