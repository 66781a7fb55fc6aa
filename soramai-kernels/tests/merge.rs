//! Merging an adapter into the base and exporting GGUF: the merged model alone computes what the
//! base computes with the adapter applied.

mod common;

use std::sync::Arc;

use common::{tiny_model_bytes, write_peft};
use soramai_kernels::gguf::Gguf;
use soramai_kernels::lora::{Adapter, Target};
use soramai_kernels::merge::{MergeType, merge};
use soramai_kernels::model::Model;
use soramai_kernels::quant::GgmlType;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Error, Precision};

fn engine(bytes: Vec<u8>) -> Engine {
    Engine::new(Model::from_gguf(Arc::new(Gguf::from_bytes(bytes).expect("gguf"))).expect("model")).expect("engine")
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let top = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / top
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    d / (n(a) * n(b))
}

fn argmax(v: &[f32]) -> Option<usize> {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
}

#[test]
fn a_merged_export_computes_what_base_plus_adapter_computes() {
    for arch in ["llama", "qwen2"] {
        let base = engine(tiny_model_bytes(arch, GgmlType::Q8_0, 5));
        let dir = tempfile::tempdir().expect("dir");
        write_peft(dir.path(), &base.model.config, 4, 8.0, &[Target::Q, Target::K, Target::O, Target::Down], 3);
        let adapter = Adapter::load(dir.path(), &base.model.config).expect("adapter");
        base.add_adapter("a", adapter.clone()).expect("add");
        let prompt = base.chat_tokens(&[Message::new("user", "hello world")]).expect("prompt");
        let with = base.logits(&prompt, Some("a"), Precision::Exact).expect("with");
        let without = base.logits(&prompt, None, Precision::Exact).expect("without");
        assert!(max_rel(&without, &with) > 0.05, "{arch}: the adapter must matter for this test to mean anything");
        let f32_base = engine(tiny_model_bytes(arch, GgmlType::F32, 5));
        let quant_noise = 1.0 - cosine(&f32_base.logits(&prompt, None, Precision::Exact).expect("f32"), &without);
        assert!(quant_noise > 0.0);

        // F16 keeps the merged weights to half precision: close to exact. Requantizing to the base
        // format (Q8_0 here) rounds the merged weights as the base's were: the logits keep their
        // direction and their best token.
        for ty in [MergeType::F16, MergeType::Base] {
            let merged = engine(merge(&base.model, &adapter, ty).expect("merge").to_bytes());
            // Metadata travels: same tokenizer and template.
            assert_eq!(merged.chat_tokens(&[Message::new("user", "hello world")]).expect("prompt"), prompt);
            let got = merged.logits(&prompt, None, Precision::Exact).expect("merged");
            if ty == MergeType::F16 {
                let err = max_rel(&got, &with);
                assert!(err < 5e-3, "{arch} {ty:?}: relative error {err}");
            }
            // Requantizing rounds the merged weights at the format's precision. This random
            // adapter's deltas are larger than the base weights (real ones are small), so the
            // Q8_0 blocks' scales grow and the rounding costs several times what quantizing the
            // base did; the direction of the logits and the best token hold.
            let cos = cosine(&got, &with);
            assert!(
                1.0 - cos < 25.0 * quant_noise.max(1e-5),
                "{arch} {ty:?}: 1 - cosine {} (quantization: {quant_noise})",
                1.0 - cos
            );
            assert_eq!(argmax(&got), argmax(&with), "{arch} {ty:?}");
            let q = &merged.model.layers[0].wq;
            let want = if ty == MergeType::F16 { GgmlType::F16 } else { GgmlType::Q8_0 };
            assert_eq!(q.ty, want);
            // Unadapted projections are untouched in `base` mode.
            if ty == MergeType::Base {
                assert_eq!(merged.model.layers[1].wv.bytes(), base.model.layers[1].wv.bytes());
            }
        }
    }
}

#[test]
fn merging_an_adapter_of_another_shape_is_refused() {
    let base = engine(tiny_model_bytes("llama", GgmlType::Q8_0, 5));
    let dir = tempfile::tempdir().expect("dir");
    write_peft(dir.path(), &base.model.config, 2, 4.0, &[Target::V], 1);
    let mut adapter = Adapter::load(dir.path(), &base.model.config).expect("adapter");
    adapter.layers.pop();
    assert!(matches!(merge(&base.model, &adapter, MergeType::F16), Err(Error::Adapter(_))));
    let mut adapter = Adapter::load(dir.path(), &base.model.config).expect("adapter");
    if let Some(p) = adapter.layers[0].get_mut(&Target::V) {
        p.a.pop();
    }
    assert!(matches!(merge(&base.model, &adapter, MergeType::Base), Err(Error::Adapter(_))));
    assert!("f32".parse::<MergeType>().is_err());
}

/// The effective weight change of every targeted projection, read back two ways, equals
/// `(alpha/r)·B·A` computed independently in the engine's (GGUF) row order: from the loaded
/// adapter's pairs, and from the weights of an F16 export merged from an F32 base. The PEFT files
/// hold Q/K rows in Hugging Face order; the expected deltas permute them per head as llama.cpp's
/// converter does.
#[test]
fn effective_weight_change_is_scaled_b_times_a_in_engine_row_order() {
    let targets = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];
    let base = engine(tiny_model_bytes("llama", GgmlType::F32, 9));
    let c = &base.model.config;
    let dir = tempfile::tempdir().expect("dir");
    let (rank, alpha) = (4, 12.0);
    let want = write_peft(dir.path(), c, rank, alpha, &targets, 4);
    let adapter = Adapter::load(dir.path(), c).expect("adapter");
    let merged = engine(merge(&base.model, &adapter, MergeType::F16).expect("merge").to_bytes());
    for l in 0..c.n_layer {
        for t in targets {
            let expected = &want[&(l, t)];
            let p = adapter.pair(l, t).expect("pair");
            assert_eq!(p.rank, rank);
            assert!((p.scale - alpha / rank as f32).abs() < 1e-6);
            let (out_f, in_f) = t.shape(c);
            let top = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
            let from_pairs: Vec<f64> = (0..out_f * in_f)
                .map(|k| {
                    let (o, i) = (k / in_f, k % in_f);
                    f64::from(p.scale)
                        * (0..rank).map(|r| f64::from(p.b[o * rank + r]) * f64::from(p.a[r * in_f + i])).sum::<f64>()
                })
                .collect();
            let err = from_pairs.iter().zip(expected).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
            assert!(err <= 1e-5 * top, "layer {l} {t:?}: pairs differ by {err} (largest {top})");
            let before = base.model.layers[l].weight(t).dequantize().expect("base");
            let after = merged.model.layers[l].weight(t).dequantize().expect("merged");
            let err = after
                .iter()
                .zip(&before)
                .zip(expected)
                .map(|((a, b), d)| (f64::from(a - b) - d).abs())
                .fold(0f64, f64::max);
            // F16 keeps 11 significant bits of each merged weight.
            let largest = after.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(err <= f64::from(largest) * 1e-3, "layer {l} {t:?}: merged delta off by {err}");
        }
    }
}

#[test]
fn an_adapter_exports_as_a_llama_cpp_lora_gguf() {
    use soramai_kernels::merge::to_llama_lora;
    for arch in ["llama", "qwen2"] {
        let base = engine(tiny_model_bytes(arch, GgmlType::Q8_0, 5));
        let c = &base.model.config;
        let dir = tempfile::tempdir().expect("dir");
        write_peft(dir.path(), c, 3, 12.0, &[Target::Q, Target::K, Target::V, Target::Down], 9);
        let adapter = Adapter::load(dir.path(), c).expect("adapter");
        let file = Gguf::from_bytes(to_llama_lora(c, &adapter).expect("export").to_bytes()).expect("reads back");
        assert_eq!(file.get_str("general.type").expect("str"), Some("adapter"));
        assert_eq!(file.get_str("adapter.type").expect("str"), Some("lora"));
        assert_eq!(file.get_str("general.architecture").expect("str"), Some(arch));
        let floats = |name: &str| {
            let t = file.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
            let v: Vec<f32> =
                file.tensor_bytes(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (t.dims.clone(), v)
        };
        let mut pairs = 0;
        for l in 0..c.n_layer {
            for (t, proj) in
                [(Target::Q, "attn_q"), (Target::K, "attn_k"), (Target::V, "attn_v"), (Target::Down, "ffn_down")]
            {
                let p = adapter.pair(l, t).expect("pair");
                let base_dims = &base.model.gguf.tensor(&format!("blk.{l}.{proj}.weight")).expect("base").dims;
                let (a_dims, a) = floats(&format!("blk.{l}.{proj}.weight.lora_a"));
                let (b_dims, b) = floats(&format!("blk.{l}.{proj}.weight.lora_b"));
                // llama.cpp's own checks: A's ne0 is the weight's ne0, B's ne1 its ne1, A's ne1 is B's ne0.
                assert_eq!((a_dims[0], b_dims[1], a_dims[1]), (base_dims[0], base_dims[1], b_dims[0]), "{arch} {proj}");
                assert_eq!(a, p.a);
                // The pair's scale is in B (the file's alpha 0 means scale 1 to llama.cpp).
                let scaled: Vec<f32> = p.b.iter().map(|v| v * p.scale).collect();
                assert_eq!(b, scaled);
                pairs += 1;
            }
        }
        assert_eq!(pairs, 4 * c.n_layer);
        assert_eq!(file.tensors.len(), 2 * pairs, "nothing but the pairs");
    }
}
