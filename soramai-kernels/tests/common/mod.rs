//! Shared test helpers: the reference model's location, tiny random models, and an independent f64
//! reference forward pass.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use soramai_kernels::cpu::ops::RopeLayout;
use soramai_kernels::gguf::{Gguf, GgufWriter, Value};
use soramai_kernels::lora::Target;
use soramai_kernels::model::Model;
use soramai_kernels::quant::GgmlType;
use soramai_kernels::train::{Example, TrainConfig};

mod reference_model;
// Not every test binary asks for the model.
#[allow(unused_imports)]
pub use reference_model::reference_model;

pub fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A byte-level BPE vocabulary: the 256 byte tokens, a few merges, and chat control tokens.
pub fn tiny_vocab(w: &mut GgufWriter) -> usize {
    // GPT-2 byte map, as in the tokenizer.
    let mut chars = Vec::new();
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        chars.push(if printable {
            char::from_u32(b).expect("char")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("char")
        });
    }
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    let mut types = vec![3i32, 3, 3];
    for c in &chars {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    let v = tokens.len();
    w.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.set("tokenizer.ggml.pre", Value::String("smollm".into()));
    w.set("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect()));
    w.set("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
    w.set("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| Value::String((*m).into())).collect()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    w.set(
        "tokenizer.chat_template",
        Value::String(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        ),
    );
    v
}

/// A tiny random llama-family model (2 layers, 64 wide, GQA 4/2 heads) with weights of type `ty`.
pub fn tiny_model_bytes(arch: &str, ty: GgmlType, seed: u64) -> Vec<u8> {
    tiny_model_bytes_with(arch, ty, seed, false)
}

/// As [`tiny_model_bytes`], with an output projection of its own when `untied`.
pub fn tiny_model_bytes_with(arch: &str, ty: GgmlType, seed: u64, untied: bool) -> Vec<u8> {
    let (d, nh, nkv, ff, layers) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let hd = d / nh;
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.into()));
    let vocab = tiny_vocab(&mut w);
    let k = |s: &str| format!("{arch}.{s}");
    w.set(k("block_count"), Value::U32(layers as u32));
    w.set(k("context_length"), Value::U32(256));
    w.set(k("embedding_length"), Value::U32(d as u32));
    w.set(k("feed_forward_length"), Value::U32(ff as u32));
    w.set(k("attention.head_count"), Value::U32(nh as u32));
    w.set(k("attention.head_count_kv"), Value::U32(nkv as u32));
    w.set(k("rope.freq_base"), Value::F32(10000.0));
    w.set(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    let mut s = seed;
    let mut next = |n: usize, scale: f32| {
        s += 1;
        rand_vec(s, n, scale)
    };
    let mat = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, v: Vec<f32>| {
        w.add_f32(name, &[cols as u64, rows as u64], ty, &v).expect("tensor");
    };
    mat(&mut w, "token_embd.weight", vocab, d, next(vocab * d, 1.0));
    for l in 0..layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let norm: Vec<f32> = next(d, 0.2).iter().map(|v| 1.0 + v).collect();
        w.add_f32(n("attn_norm.weight"), &[d as u64], GgmlType::F32, &norm).expect("t");
        mat(&mut w, &n("attn_q.weight"), nh * hd, d, next(nh * hd * d, 0.3));
        mat(&mut w, &n("attn_k.weight"), nkv * hd, d, next(nkv * hd * d, 0.3));
        mat(&mut w, &n("attn_v.weight"), nkv * hd, d, next(nkv * hd * d, 0.3));
        mat(&mut w, &n("attn_output.weight"), d, nh * hd, next(d * nh * hd, 0.3));
        if arch == "qwen2" {
            w.add_f32(n("attn_q.bias"), &[(nh * hd) as u64], GgmlType::F32, &next(nh * hd, 0.1)).expect("t");
            w.add_f32(n("attn_k.bias"), &[(nkv * hd) as u64], GgmlType::F32, &next(nkv * hd, 0.1)).expect("t");
            w.add_f32(n("attn_v.bias"), &[(nkv * hd) as u64], GgmlType::F32, &next(nkv * hd, 0.1)).expect("t");
        }
        let norm: Vec<f32> = next(d, 0.2).iter().map(|v| 1.0 + v).collect();
        w.add_f32(n("ffn_norm.weight"), &[d as u64], GgmlType::F32, &norm).expect("t");
        mat(&mut w, &n("ffn_gate.weight"), ff, d, next(ff * d, 0.3));
        mat(&mut w, &n("ffn_up.weight"), ff, d, next(ff * d, 0.3));
        mat(&mut w, &n("ffn_down.weight"), d, ff, next(d * ff, 0.3));
    }
    w.add_f32("output_norm.weight", &[d as u64], GgmlType::F32, &vec![1.0; d]).expect("t");
    if untied {
        mat(&mut w, "output.weight", vocab, d, next(vocab * d, 0.5));
    }
    w.to_bytes()
}

/// Dense LoRA deltas `scale · B·A` in GGUF row order, keyed by (layer, target).
pub type Deltas = HashMap<(usize, Target), Vec<f64>>;

fn matvec(w: &[f64], x: &[f64], rows: usize) -> Vec<f64> {
    let cols = x.len();
    (0..rows).map(|r| w[r * cols..(r + 1) * cols].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rms(x: &[f64], g: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v * s * *g as f64).collect()
}

/// An independent f64 forward pass over the model's dequantized weights (plus optional LoRA
/// deltas): last-position logits.
pub fn reference_logits(model: &Model, tokens: &[u32], deltas: Option<&Deltas>) -> Vec<f64> {
    let c = &model.config;
    let (d, hd) = (c.n_embd, c.head_dim);
    let dense = |m: &soramai_kernels::model::QMat, l: usize, t: Option<Target>| -> Vec<f64> {
        let mut w: Vec<f64> = m.dequantize().expect("dequantize").into_iter().map(f64::from).collect();
        if let (Some(ds), Some(t)) = (deltas, t)
            && let Some(dl) = ds.get(&(l, t))
        {
            for (a, b) in w.iter_mut().zip(dl) {
                *a += b;
            }
        }
        w
    };
    let embd = model.tok_embd.dequantize().expect("embeddings");
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| embd[t as usize * d..(t as usize + 1) * d].iter().map(|&v| v as f64).collect())
        .collect();
    let mut kc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); c.n_layer];
    let mut vc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); c.n_layer];
    for (l, layer) in model.layers.iter().enumerate() {
        let wq = dense(&layer.wq, l, Some(Target::Q));
        let wk = dense(&layer.wk, l, Some(Target::K));
        let wv = dense(&layer.wv, l, Some(Target::V));
        let wo = dense(&layer.wo, l, Some(Target::O));
        let wg = dense(&layer.gate, l, Some(Target::Gate));
        let wu = dense(&layer.up, l, Some(Target::Up));
        let wd = dense(&layer.down, l, Some(Target::Down));
        for (pos, xt) in x.iter_mut().enumerate() {
            let xn = rms(xt, &layer.attn_norm, c.eps as f64);
            let mut q = matvec(&wq, &xn, c.q_dim());
            let mut k = matvec(&wk, &xn, c.kv_dim());
            let mut v = matvec(&wv, &xn, c.kv_dim());
            if let Some([bq, bk, bv]) = &layer.bias {
                q.iter_mut().zip(bq).for_each(|(a, b)| *a += *b as f64);
                k.iter_mut().zip(bk).for_each(|(a, b)| *a += *b as f64);
                v.iter_mut().zip(bv).for_each(|(a, b)| *a += *b as f64);
            }
            let rot = |h: &mut [f64]| {
                let half = c.rope_dims / 2;
                for i in 0..half {
                    let theta = pos as f64 * (c.rope_base as f64).powf(-2.0 * i as f64 / c.rope_dims as f64);
                    let (a, b) = match c.rope_layout {
                        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                        RopeLayout::Neox => (i, i + half),
                    };
                    let (x0, x1) = (h[a], h[b]);
                    h[a] = x0 * theta.cos() - x1 * theta.sin();
                    h[b] = x0 * theta.sin() + x1 * theta.cos();
                }
            };
            q.chunks_mut(hd).for_each(rot);
            k.chunks_mut(hd).for_each(rot);
            kc[l].push(k);
            vc[l].push(v);
            let mut att = vec![0f64; c.q_dim()];
            let group = c.n_head / c.n_head_kv;
            for h in 0..c.n_head {
                let kvh = h / group;
                let qh = &q[h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        qh.iter().zip(&kc[l][p][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (p, ep) in e.iter().enumerate() {
                    for j in 0..hd {
                        att[h * hd + j] += ep / z * vc[l][p][kvh * hd + j];
                    }
                }
            }
            let o = matvec(&wo, &att, d);
            xt.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rms(xt, &layer.ffn_norm, c.eps as f64);
            let g = matvec(&wg, &xn, c.n_ff);
            let u = matvec(&wu, &xn, c.n_ff);
            let h: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = matvec(&wd, &h, d);
            xt.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
    }
    let last = x.last().expect("tokens");
    let h = rms(last, &model.output_norm, c.eps as f64);
    let wout: Vec<f64> = model.output.dequantize().expect("output").into_iter().map(f64::from).collect();
    matvec(&wout, &h, c.vocab)
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

/// Writes a random PEFT adapter (Hugging Face row order) to `dir` and returns its dense deltas in
/// GGUF row order, permuted here independently of the library (llama.cpp's conversion:
/// `reshape(heads, 2, d/2, cols).swapaxes(1, 2)` for Q and K of interleaved-RoPE models).
pub fn write_peft(
    dir: &std::path::Path,
    c: &soramai_kernels::model::Config,
    rank: usize,
    alpha: f32,
    targets: &[Target],
    seed: u64,
) -> Deltas {
    use safetensors::tensor::TensorView;
    std::fs::create_dir_all(dir).expect("dir");
    let mut deltas = Deltas::new();
    let mut store: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    let scale = alpha as f64 / rank as f64;
    let mut s = seed * 1000;
    for l in 0..c.n_layer {
        for &t in targets {
            let (out_f, in_f) = t.shape(c);
            s += 2;
            let a = rand_vec(s, rank * in_f, 0.5);
            let b = rand_vec(s + 1, out_f * rank, 0.5);
            let parent = if matches!(t, Target::Q | Target::K | Target::V | Target::O) { "self_attn" } else { "mlp" };
            let prefix = format!("base_model.model.model.layers.{l}.{parent}.{}", t.module());
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            store.push((format!("{prefix}.lora_A.weight"), bytes(&a), vec![rank, in_f]));
            store.push((format!("{prefix}.lora_B.weight"), bytes(&b), vec![out_f, rank]));
            let mut dense = vec![0f64; out_f * in_f];
            for o in 0..out_f {
                for i in 0..in_f {
                    dense[o * in_f + i] =
                        scale * (0..rank).map(|r| b[o * rank + r] as f64 * a[r * in_f + i] as f64).sum::<f64>();
                }
            }
            if c.rope_layout == RopeLayout::Interleaved && matches!(t, Target::Q | Target::K) {
                let heads = if t == Target::Q { c.n_head } else { c.n_head_kv };
                let hd = out_f / heads;
                let mut p = vec![0f64; dense.len()];
                for h in 0..heads {
                    for s2 in 0..2 {
                        for j in 0..hd / 2 {
                            let old = h * hd + s2 * (hd / 2) + j;
                            let new = h * hd + j * 2 + s2;
                            p[new * in_f..(new + 1) * in_f].copy_from_slice(&dense[old * in_f..(old + 1) * in_f]);
                        }
                    }
                }
                dense = p;
            }
            deltas.insert((l, t), dense);
        }
    }
    let views: Vec<(String, TensorView<'_>)> = store
        .iter()
        .map(|(n, d, sh)| (n.clone(), TensorView::new(safetensors::Dtype::F32, sh.clone(), d).expect("view")))
        .collect();
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors::serialize(views, None).expect("serialize"))
        .expect("write");
    let modules: Vec<&str> = targets.iter().map(|t| t.module()).collect();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": modules, "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "bias": "none"});
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
    deltas
}

/// The GPU devices this build and machine have, each announced; a missing backend is skipped with
/// the reason printed, unless `SORAMAI_REQUIRE_GPU` names it (the CI script sets `wgpu`).
pub fn gpu_devices() -> Vec<soramai_kernels::cube::Gpu> {
    use soramai_kernels::cube::{Backend, Gpu};
    let mut out = Vec::new();
    for b in [Backend::Wgpu, Backend::Cuda] {
        match Gpu::new(b) {
            Ok(g) => {
                eprintln!("testing on {b}: {}", g.name());
                out.push(g);
            }
            Err(e) => {
                let required =
                    std::env::var("SORAMAI_REQUIRE_GPU").is_ok_and(|v| v.split(',').any(|x| x == b.as_str()));
                assert!(!required, "{b} is required but unavailable: {e}");
                eprintln!("skipped {b}: {e}");
            }
        }
    }
    out
}

/// The tiny model the training tests use.
pub fn tiny_train_model(arch: &str, ty: GgmlType) -> Arc<Model> {
    let g = Gguf::from_bytes(tiny_model_bytes(arch, ty, 21)).expect("gguf");
    Arc::new(Model::from_gguf(Arc::new(g)).expect("model"))
}

/// A random training example: loss on its second half, one token at half weight.
pub fn train_example(seed: u64, len: usize, vocab: usize) -> Example {
    let tokens: Vec<u32> =
        rand_vec(seed, len, 1.0).iter().map(|v| ((v + 1.0) * 0.5 * (vocab - 1) as f32) as u32).collect();
    let mut weights: Vec<f32> = (0..len).map(|i| if i >= len / 2 { 1.0 } else { 0.0 }).collect();
    weights[len - 2] = 0.5;
    Example { tokens, weights }
}

/// The same checkpoint with another configuration (precision, checkpointing) in its metadata.
pub fn retarget(state: &[u8], cfg: &TrainConfig) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(state).expect("state");
    let (_, meta) = safetensors::SafeTensors::read_metadata(state).expect("meta");
    let mut m = meta.metadata().clone().expect("metadata");
    m.insert("config".into(), serde_json::to_string(cfg).expect("json"));
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    safetensors::serialize(tensors, Some(m)).expect("serialize")
}
