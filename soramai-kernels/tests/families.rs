//! Model families against llama.cpp (`scripts/family_fixtures.py`): random-weight Llama 3.x,
//! Qwen3 and Gemma 3 files in their real structure, and the real Gemma 3 270M Q4_K_M file; and
//! the refusals: a tensor or `{arch}.*` key a family does not implement is an error naming it.

mod common;
#[path = "common/gemma_model.rs"]
mod gemma_model;

use std::path::PathBuf;
use std::sync::Arc;

use common::tiny_model_bytes;
use gemma_model::gemma_model;
use soramai_kernels::Engine;
use soramai_kernels::gguf::{Gguf, GgufWriter, Value};
use soramai_kernels::lora::{Adapter, Target};
use soramai_kernels::model::{Lane, Logits, Model, Precision};
use soramai_kernels::npy::read_f32_vector;
use soramai_kernels::quant::GgmlType;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::train::{Example, TrainConfig, Trainer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

fn fixture() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("llama_cpp.json")).expect("fixture")).expect("json")
}

fn npy(name: &str) -> Vec<f32> {
    read_f32_vector(&std::fs::read(fixtures().join(name)).expect("npy")).expect("npy parses")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// Every position's logits, the prompt's first 8 tokens in one step and the rest one at a time
/// (so the KV cache, and the sliding window over it, are exercised as in decoding).
fn stepwise_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let first = &tokens[..8];
    let all = model
        .forward(&mut [Lane { cache: &mut cache, tokens: first, adapter: None, logits: Logits::All }], Precision::Fast)
        .expect("prefill");
    out.extend(all[0].chunks(model.config.vocab).map(<[f32]>::to_vec));
    for t in &tokens[8..] {
        let step = model
            .forward(
                &mut [Lane { cache: &mut cache, tokens: std::slice::from_ref(t), adapter: None, logits: Logits::Last }],
                Precision::Fast,
            )
            .expect("decode");
        out.push(step[0].clone());
    }
    out
}

#[test]
fn random_weight_families_agree_with_llama_cpp_at_every_position() {
    let f = fixture();
    for name in ["llama3", "qwen3", "gemma3"] {
        let case = &f["random"][name];
        let model = Model::load(fixtures().join(case["file"].as_str().expect("file"))).expect(name);
        let tokens = ids(&case["tokens"]);
        let reference = npy(case["logits"].as_str().expect("logits"));
        let vocab = model.config.vocab;
        assert_eq!(reference.len(), tokens.len() * vocab, "{name}: fixture size");
        let (mut worst_cos, mut worst_diff) = (1f64, 0f32);
        for (pos, ours) in stepwise_logits(&model, &tokens).iter().enumerate() {
            let theirs = &reference[pos * vocab..(pos + 1) * vocab];
            let cos = cosine(ours, theirs);
            assert!(cos >= 0.999, "{name} position {pos}: cosine {cos:.6} against llama.cpp");
            // Where no logit differs by more than δ, the argmax can only change at a margin ≤ 2δ.
            let diff = max_abs_diff(ours, theirs);
            let (a, b) = (argmax(ours), argmax(theirs));
            let margin = theirs[b] - theirs[a];
            assert!(
                a == b || margin <= 2.0 * diff,
                "{name} position {pos}: argmax {a} vs {b} (margin {margin}, δ {diff})"
            );
            worst_cos = worst_cos.min(cos);
            worst_diff = worst_diff.max(diff);
        }
        eprintln!("{name}: lowest cosine {worst_cos:.6}, largest logit difference {worst_diff:.4}");
    }
}

#[test]
fn the_fixture_families_read_their_features_from_the_file() {
    let f = fixture();
    let load = |n: &str| Model::load(fixtures().join(f["random"][n]["file"].as_str().expect("file"))).expect(n);
    let llama = load("llama3");
    assert!(llama.rope_freqs.is_some() && llama.output.name == "output.weight");
    assert!(llama.config.block_features().is_empty(), "llama 3 is the plain block");
    let qwen = load("qwen3");
    assert_eq!((qwen.config.head_dim, qwen.config.q_dim(), qwen.config.n_embd), (48, 192, 128));
    assert!(qwen.layers.iter().all(|l| l.qk_norm.is_some() && l.post_norms.is_none()));
    let gemma = load("gemma3");
    assert_eq!(gemma.config.sliding_window, Some(4));
    assert_eq!((0..6).filter(|&l| gemma.config.is_local(l)).count(), 5);
    assert!(!gemma.config.is_local(5), "the sixth layer is global");
    assert_eq!(gemma.config.rope_base_of(0), 10_000.0);
    assert_eq!(gemma.config.rope_base_of(5), 1_000_000.0);
    assert_eq!(gemma.config.first_visible(0, 10), 7);
    assert_eq!(gemma.config.first_visible(5, 10), 0);
}

/// Mean weighted next-token loss of `examples` through the inference forward pass (the one
/// checked against llama.cpp above), with `adapter`.
fn inference_loss(model: &Model, examples: &[Example], adapter: &Adapter) -> f64 {
    let (mut sum, mut norm) = (0f64, 0f64);
    for e in examples {
        let mut cache = model.new_cache();
        let logits = model
            .forward(
                &mut [Lane { cache: &mut cache, tokens: &e.tokens, adapter: Some(adapter), logits: Logits::All }],
                Precision::Exact,
            )
            .expect("forward")
            .remove(0);
        for (i, z) in logits.chunks(model.config.vocab).enumerate().take(e.tokens.len() - 1) {
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = f64::from(max) + z.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln();
            let w = f64::from(e.weights[i + 1]);
            sum += w * (lse - f64::from(z[e.tokens[i + 1] as usize]));
            norm += w;
        }
    }
    sum / norm
}

#[test]
fn every_family_trains_with_gradients_that_match_its_forward_pass() {
    let f = fixture();
    for name in ["llama3", "qwen3", "gemma3"] {
        let model = Arc::new(Model::load(fixtures().join(f["random"][name]["file"].as_str().expect("f"))).expect(name));
        let cfg = TrainConfig {
            rank: 2,
            alpha: 4.0,
            targets: Target::ALL.to_vec(),
            precision: Precision::Exact,
            max_seq: 32,
            ..TrainConfig::default()
        };
        let mut tr = Trainer::new(Arc::clone(&model), cfg).expect(name);
        for (i, t) in Target::ALL.into_iter().enumerate() {
            for l in 0..model.config.n_layer {
                let (a, b) = tr.pair(l, t).map(|(a, b)| (a.to_vec(), b.len())).expect("pair");
                tr.set_pair(l, t, &a, &common::rand_vec(50 + i as u64 * 11 + l as u64, b, 0.2)).expect("set");
            }
        }
        // Two examples packed into one sequence, longer than Gemma's window of 4.
        let vocab = model.config.vocab as u32;
        let example = |seed: u32, n: usize| Example {
            tokens: (0..n as u32).map(|i| (seed * 37 + i * 101) % vocab).collect(),
            weights: (0..n).map(|i| if i < 2 { 0.0 } else { 1.0 }).collect(),
        };
        let batch = [example(3, 11), example(5, 9)];
        // The trainer's forward is the inference forward (same family maths).
        let (loss, grads) = tr.gradients(&batch).expect("gradients");
        let reference = inference_loss(&model, &batch, &tr.adapter());
        assert!((f64::from(loss) - reference).abs() < 1e-4 * reference.max(1.0), "{name}: {loss} vs {reference}");
        // Its gradients are the derivative of that loss (central differences of the inference
        // forward's loss, accumulated in f64).
        let (mut analytic, mut numeric) = (Vec::new(), Vec::new());
        for l in 0..model.config.n_layer {
            for t in [Target::Q, Target::K, Target::O, Target::Gate, Target::Down] {
                let (a, b) = tr.pair(l, t).map(|(a, b)| (a.to_vec(), b.to_vec())).expect("pair");
                let (ga, gb) = &grads[&(l, t)];
                for (is_a, idx) in [(true, 1usize), (false, b.len() / 3)] {
                    let h = 1e-2f32;
                    let mut at = |delta: f32| {
                        let (mut pa, mut pb) = (a.clone(), b.clone());
                        if is_a {
                            pa[idx] += delta
                        } else {
                            pb[idx] += delta
                        }
                        tr.set_pair(l, t, &pa, &pb).expect("set");
                        let v = inference_loss(&model, &batch, &tr.adapter());
                        tr.set_pair(l, t, &a, &b).expect("reset");
                        v
                    };
                    numeric.push((at(h) - at(-h)) / (2.0 * f64::from(h)));
                    analytic.push(f64::from(if is_a { ga[idx] } else { gb[idx] }));
                }
            }
        }
        let err: f64 = analytic.iter().zip(&numeric).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let size: f64 = numeric.iter().map(|y| y * y).sum::<f64>().sqrt();
        assert!(err <= 2e-2 * size, "{name}: gradient error {err:.3e} against |g| {size:.3e}");
        eprintln!("{name}: loss {loss:.5} (inference {reference:.5}), gradient error {:.2e} of |g|", err / size);
        // And a few steps lower the loss.
        let cfg = TrainConfig { rank: 4, learning_rate: 2e-2, total_steps: 6, max_seq: 32, ..TrainConfig::default() };
        let mut tr = Trainer::new(Arc::clone(&model), cfg).expect(name);
        let before = tr.loss(&batch).expect("loss");
        for _ in 0..6 {
            tr.step(&batch).expect("step");
        }
        let after = tr.loss(&batch).expect("loss");
        assert!(after < before, "{name}: loss {before} -> {after}");
    }
}

/// A tiny model's file with `edit` applied to a writer holding all its metadata and tensors.
fn edited(arch: &str, edit: impl FnOnce(&mut GgufWriter, &Gguf)) -> Vec<u8> {
    let g = Gguf::from_bytes(tiny_model_bytes(arch, GgmlType::F32, 3)).expect("tiny");
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &g.tensors {
        w.add_raw(t.name.clone(), &t.dims, t.ty, g.tensor_bytes(t).to_vec()).expect("copy");
    }
    edit(&mut w, &g);
    w.to_bytes()
}

fn refusal(bytes: Vec<u8>) -> String {
    let g = Gguf::from_bytes(bytes).expect("the file parses");
    let checked = Model::check_layout(&g).map(drop).map_err(|e| e.to_string());
    let loaded = Model::from_gguf(Arc::new(g)).map(drop).map_err(|e| e.to_string());
    assert_eq!(checked, loaded, "the header check and the load agree");
    loaded.expect_err("refused")
}

#[test]
fn a_tensor_or_key_that_changes_the_maths_is_refused_by_name() {
    // A made-up tensor in a block, and one beyond the last block.
    let e = refusal(edited("llama", |w, _| {
        w.add_f32("blk.0.attn_made_up.weight", &[64], GgmlType::F32, &[0.5; 64]).expect("t");
    }));
    assert!(e.contains("blk.0.attn_made_up.weight"), "{e}");
    let e = refusal(edited("llama", |w, _| {
        w.add_f32("blk.2.attn_norm.weight", &[64], GgmlType::F32, &[1.0; 64]).expect("t");
    }));
    assert!(e.contains("blk.2.attn_norm.weight"), "{e}");
    // Tensors real files carry for maths this engine does not do.
    for name in ["blk.0.attn_output.bias", "blk.1.ffn_down.bias", "blk.0.post_attention_norm.weight"] {
        let e = refusal(edited("qwen2", |w, _| {
            w.add_f32(name, &[64], GgmlType::F32, &[0.0; 64]).expect("t");
        }));
        assert!(e.contains(name), "{name}: {e}");
    }
    // Llama 3's RoPE frequency factors are llama's only.
    let e = refusal(edited("qwen2", |w, _| {
        w.add_f32("rope_freqs.weight", &[8], GgmlType::F32, &[1.0; 8]).expect("t");
    }));
    assert!(e.contains("rope_freqs.weight"), "{e}");
    // ...and of the right length.
    let e = refusal(edited("llama", |w, _| {
        w.add_f32("rope_freqs.weight", &[3], GgmlType::F32, &[1.0; 3]).expect("t");
    }));
    assert!(e.contains("rope_freqs.weight"), "{e}");
    // Keys: unknown, and known but at a value not implemented.
    for (key, value) in [
        ("llama.attention.logit_softcapping", Value::F32(30.0)),
        ("llama.embedding_scale", Value::F32(12.0)),
        ("llama.rope.scaling.type", Value::String("yarn".into())),
        ("llama.expert_count", Value::U32(8)),
        ("llama.attention.causal", Value::Bool(false)),
        ("llama.attention.value_length", Value::U32(8)),
        ("split.count", Value::U16(3)),
    ] {
        let e = refusal(edited("llama", |w, _| {
            w.set(key, value.clone());
        }));
        assert!(e.contains(key), "{key}: {e}");
    }
    // Q/K norms are required where the family has them: a llama file relabelled qwen3 lacks them.
    let e = refusal(relabelled("qwen3"));
    assert!(e.contains("blk.0.attn_q_norm.weight") && e.contains("missing"), "{e}");
}

/// The tiny llama file under another architecture's name (its keys renamed).
fn relabelled(arch: &str) -> Vec<u8> {
    edited("llama", |w, g| {
        w.set("general.architecture", Value::String(arch.into()));
        for (k, v) in &g.metadata {
            if let Some(rest) = k.strip_prefix("llama.") {
                w.set(format!("{arch}.{rest}"), v.clone());
            }
        }
    })
}

#[test]
fn architectures_not_implemented_are_refused_by_name() {
    for (arch, words) in [("granite", "multipliers"), ("phi3", "attn_qkv"), ("gemma2", "unsupported architecture")] {
        let bytes = relabelled(arch);
        let e = refusal(bytes);
        assert!(e.contains(arch) && e.contains(words), "{arch}: {e}");
    }
}

#[test]
fn linear_rope_scaling_stretches_positions() {
    // A factor of 2: position 2p rotates as position p did.
    let plain = Model::from_gguf(Arc::new(Gguf::from_bytes(tiny_model_bytes("llama", GgmlType::F32, 3)).expect("g")))
        .expect("plain");
    let scaled = Model::from_gguf(Arc::new(
        Gguf::from_bytes(edited("llama", |w, _| {
            w.set("llama.rope.scaling.type", Value::String("linear".into()));
            w.set("llama.rope.scaling.factor", Value::F32(2.0));
        }))
        .expect("g"),
    ))
    .expect("scaled");
    let h = plain.config.rope_dims / 2;
    let (mut c1, mut s1, mut c2, mut s2) = (vec![0.0; h], vec![0.0; h], vec![0.0; h], vec![0.0; h]);
    plain.rope_angles(false, 5, &mut c1, &mut s1);
    scaled.rope_angles(false, 10, &mut c2, &mut s2);
    for i in 0..h {
        assert!((c1[i] - c2[i]).abs() < 1e-5 && (s1[i] - s2[i]).abs() < 1e-5, "dim {i}");
    }
}

#[test]
fn gemma3_270m_tokenizes_renders_and_predicts_as_llama_cpp() {
    let Some(path) = gemma_model() else { return };
    let f = &fixture()["gemma3_270m"];
    let engine = Engine::load(&path).expect("gemma 3 loads");
    let tk = &engine.tokenizer;
    for case in f["tokenize"].as_array().expect("tokenize") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(tk.encode(text, true, true), ids(&case["special"]), "special: {text:?}");
        assert_eq!(tk.encode(text, true, false), ids(&case["no_special"]), "plain: {text:?}");
    }
    for chat in f["chat"].as_array().expect("chat") {
        let messages: Vec<Message> = chat["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| Message::new(m["role"].as_str().expect("role"), m["content"].as_str().expect("content")))
            .collect();
        assert_eq!(engine.render_chat(&messages).expect("render"), chat["prompt"].as_str().expect("prompt"));
        let prompt = engine.chat_tokens(&messages).expect("chat tokens");
        assert_eq!(prompt, ids(&chat["prompt_ids"]), "chat prompt tokens");
        // Greedy decoding equals llama.cpp's until the two part at a near-tie (llama.cpp's own
        // top-2 margin there under `TIE`), after which the continuations differ by construction.
        const TIE: f64 = 0.5;
        let expected = ids(&chat["output_ids"]);
        let margins: Vec<f64> = chat["margins"].as_array().expect("m").iter().map(|m| m.as_f64().expect("m")).collect();
        let model = &engine.model;
        let mut cache = model.new_cache();
        let mut next = prompt.clone();
        let mut agreed = 0;
        for (step, want) in expected.iter().enumerate() {
            let logits = model
                .forward(
                    &mut [Lane { cache: &mut cache, tokens: &next, adapter: None, logits: Logits::Last }],
                    Precision::Fast,
                )
                .expect("step");
            let got = argmax(&logits[0]) as u32;
            if got != *want {
                assert!(margins[step] < TIE, "step {step} of {:?}: {got} vs llama.cpp's {want}", chat["prompt"]);
                break;
            }
            agreed += 1;
            next = vec![got];
        }
        eprintln!("greedy: {agreed} of {} tokens as llama.cpp's", expected.len());
    }
    for case in f["logits"].as_array().expect("logits") {
        let tokens = ids(&case["prompt_ids"]);
        let ours = engine.logits(&tokens, None, Precision::Fast).expect("logits");
        let theirs = npy(case["file"].as_str().expect("file"));
        let cos = cosine(&ours, &theirs);
        eprintln!(
            "{:?}: cosine {cos:.5}, largest logit difference {:.3}",
            case["prompt"],
            max_abs_diff(&ours, &theirs)
        );
        assert!(cos >= 0.995, "{:?}: cosine {cos:.5}", case["prompt"]);
        let (a, b) = (argmax(&ours), argmax(&theirs));
        assert!(a == b || theirs[b] - theirs[a] < 0.1, "{:?}: argmax {a} vs {b}", case["prompt"]);
    }
}
