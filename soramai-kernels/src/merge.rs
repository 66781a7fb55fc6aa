//! Merging an adapter into its base model and exporting the result as a GGUF file that any
//! llama.cpp-compatible runtime loads without adapter support.

use crate::error::{Error, Result};
use crate::gguf::{GgufWriter, Value};
use crate::lora::{Adapter, Target};
use crate::model::Model;
use crate::quant::GgmlType;

/// The tensor type of the merged projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeType {
    /// Every 2-D weight as F16 (the merged ones exactly rounded, the others dequantized): the
    /// faithful export, about four times the size of a 4-bit base.
    F16,
    /// The merged projections requantized to their base format, every other tensor copied as is:
    /// the same size and speed as the base, with the format's rounding on the merged weights.
    Base,
}

impl std::str::FromStr for MergeType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(MergeType::F16),
            "base" => Ok(MergeType::Base),
            other => Err(Error::Request(format!("merge type {other:?} is not f16 or base"))),
        }
    }
}

/// The GGUF name of a target's weight in a block.
fn tensor_name(layer: usize, t: Target) -> String {
    let s = match t {
        Target::Q => "attn_q",
        Target::K => "attn_k",
        Target::V => "attn_v",
        Target::O => "attn_output",
        Target::Gate => "ffn_gate",
        Target::Up => "ffn_up",
        Target::Down => "ffn_down",
    };
    format!("blk.{layer}.{s}.weight")
}

/// The base model with `W + scale·B·A` in place of every adapted projection, all metadata kept
/// (the tokenizer and chat template included).
pub fn merge(model: &Model, adapter: &Adapter, ty: MergeType) -> Result<GgufWriter> {
    let c = &model.config;
    if adapter.layers.len() != c.n_layer {
        return Err(Error::Adapter("adapter was built for another model shape".into()));
    }
    let g = &model.gguf;
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        if k != "general.alignment" {
            w.set(k.clone(), v.clone());
        }
    }
    if let Some(base) = &adapter.config.base_model_name_or_path {
        w.set("soramai.merged_adapter.base", Value::String(base.clone()));
    }
    w.set("soramai.merged_adapter.rank", Value::U32(u32::try_from(adapter.config.r).unwrap_or(u32::MAX)));
    let mut merged: std::collections::HashMap<String, (usize, Target)> = std::collections::HashMap::new();
    for (l, layer) in adapter.layers.iter().enumerate() {
        for &t in layer.keys() {
            merged.insert(tensor_name(l, t), (l, t));
        }
    }
    for t in &g.tensors {
        let bytes = g.tensor_bytes(t).to_vec();
        let out_ty = |base: GgmlType| if ty == MergeType::F16 { GgmlType::F16 } else { base };
        match merged.get(&t.name) {
            Some(&(l, target)) => {
                let m = model.layers[l].weight(target);
                let p = adapter.pair(l, target).ok_or_else(|| Error::Adapter("pair vanished".into()))?;
                let mut values = m.dequantize()?;
                let (out_f, in_f) = (m.rows, m.cols);
                if p.a.len() != p.rank * in_f || p.b.len() != out_f * p.rank {
                    return Err(Error::Adapter(format!("{}: pair shape does not fit the weight", t.name)));
                }
                for o in 0..out_f {
                    let row = &mut values[o * in_f..(o + 1) * in_f];
                    for r in 0..p.rank {
                        let coef = p.scale * p.b[o * p.rank + r];
                        crate::cpu::axpy(coef, &p.a[r * in_f..(r + 1) * in_f], row);
                    }
                }
                w.add_f32(t.name.clone(), &t.dims, out_ty(t.ty), &values)?;
            }
            None if ty == MergeType::F16 && t.dims.len() == 2 && t.ty != GgmlType::F32 && t.ty != GgmlType::F16 => {
                let mut values = vec![0f32; t.elements() as usize];
                crate::quant::dequantize(t.ty, &bytes, &mut values)?;
                w.add_f32(t.name.clone(), &t.dims, GgmlType::F16, &values)?;
            }
            None => {
                w.add_raw(t.name.clone(), &t.dims, t.ty, bytes)?;
            }
        }
    }
    Ok(w)
}

/// The adapter as a llama.cpp LoRA GGUF (`general.type = adapter`), which `llama-server --lora`
/// and `llama-cli --lora` load: for each adapted projection `blk.N.<proj>.weight.lora_a`
/// (`in × rank` in GGUF dimension order, i.e. PEFT's `rank × in` rows) and `.lora_b` (`rank × out`,
/// in the base GGUF's row order, Q/K already permuted for interleaved RoPE). Each pair's own scale
/// (`alpha / r`, rsLoRA's `alpha / √r`, or a rank or alpha pattern) is folded into its `B` and the
/// file's `adapter.lora.alpha` is 0, which llama.cpp reads as "scale 1": the delta is exact for
/// every PEFT variant the engine loads.
pub fn to_llama_lora(config: &crate::config::Config, adapter: &Adapter) -> Result<GgufWriter> {
    if adapter.layers.len() != config.n_layer {
        return Err(Error::Adapter("adapter was built for another model shape".into()));
    }
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(config.arch.clone()));
    w.set("general.type", Value::String("adapter".into()));
    w.set("adapter.type", Value::String("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(0.0));
    if let Some(base) = &adapter.config.base_model_name_or_path {
        w.set("soramai.adapter.base", Value::String(base.clone()));
    }
    for (l, layer) in adapter.layers.iter().enumerate() {
        let mut targets: Vec<Target> = layer.keys().copied().collect();
        targets.sort();
        for t in targets {
            let p = adapter.pair(l, t).ok_or_else(|| Error::Adapter("pair vanished".into()))?;
            let (out_f, in_f) = t.shape(config);
            if p.rank == 0 || p.a.len() != p.rank * in_f || p.b.len() != out_f * p.rank {
                return Err(Error::Adapter(format!("layer {l} {}: pair shape does not fit", t.module())));
            }
            let name = tensor_name(l, t);
            let b: Vec<f32> = p.b.iter().map(|v| v * p.scale).collect();
            w.add_f32(format!("{name}.lora_a"), &[in_f as u64, p.rank as u64], GgmlType::F32, &p.a)?;
            w.add_f32(format!("{name}.lora_b"), &[p.rank as u64, out_f as u64], GgmlType::F32, &b)?;
        }
    }
    Ok(w)
}
