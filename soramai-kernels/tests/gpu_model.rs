//! The model end to end on each available GPU backend against the CPU in `exact` precision (the
//! GPU computes in f32 on the exact block values, as `exact` does): logits of prefill and decode,
//! the reference model's greedy tokens, and a batch that mixes adapters equal to per-sequence runs.
//! Missing backends are skipped with the reason printed (see `gpu_ops.rs` for
//! `SORAMAI_REQUIRE_GPU`).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use std::sync::Arc;

use common::{reference_model, tiny_model_bytes, tiny_model_bytes_with, write_peft};
use soramai_kernels::cube::{Backend, Gpu, GpuDecode, GpuLane, GpuModel, GpuOptions};
use soramai_kernels::gguf::Gguf;
use soramai_kernels::lora::{Adapter, Target};
use soramai_kernels::model::{Lane, Logits, Model};
use soramai_kernels::quant::GgmlType;
use soramai_kernels::tokenizer::TokenId;
use soramai_kernels::{Engine, Error, Precision};

fn tiny(arch: &str, ty: GgmlType, seed: u64) -> Arc<Model> {
    Arc::new(
        Model::from_gguf(Arc::new(Gguf::from_bytes(tiny_model_bytes(arch, ty, seed)).expect("gguf"))).expect("model"),
    )
}

fn cpu_logits(model: &Model, tokens: &[TokenId], adapter: Option<&Adapter>, logits: Logits) -> Vec<f32> {
    let mut cache = model.new_cache();
    model
        .forward(&mut [Lane { cache: &mut cache, tokens, adapter, logits }], Precision::Exact)
        .expect("cpu forward")
        .remove(0)
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let top = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) })
        / top
}

#[test]
fn prefill_and_decode_logits_match_the_cpu_on_tiny_models() {
    for gpu in common::gpu_devices() {
        for (arch, ty) in
            [("llama", GgmlType::Q8_0), ("qwen2", GgmlType::Q4_0), ("llama", GgmlType::Q4_1), ("llama", GgmlType::F16)]
        {
            let model = tiny(arch, ty, 3);
            let g =
                GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 256, page: 4 }).expect("upload");
            let prompt: Vec<TokenId> = vec![1, 7, 3, 9, 12, 5, 8];
            let mut cache = g.new_cache();
            let got = g
                .forward(&mut [GpuLane { cache: &mut cache, tokens: &prompt, adapter: None, logits: Logits::All }])
                .expect("gpu")
                .remove(0);
            let want = cpu_logits(&model, &prompt, None, Logits::All);
            assert!(
                max_rel(&got, &want) < 1e-4,
                "{} {arch} {ty}: prefill off by {}",
                gpu.backend(),
                max_rel(&got, &want)
            );
            // Decode steps continue from the paged cache (pages of 4: crossing page boundaries).
            let mut seq = prompt.clone();
            for t in [4u32, 11, 2] {
                seq.push(t);
                let got = g
                    .forward(&mut [GpuLane { cache: &mut cache, tokens: &[t], adapter: None, logits: Logits::Last }])
                    .expect("gpu")
                    .remove(0);
                let want = cpu_logits(&model, &seq, None, Logits::Last);
                assert!(max_rel(&got, &want) < 1e-4, "{arch} {ty}: decode off by {}", max_rel(&got, &want));
            }
            assert_eq!(cache.len(), seq.len());
            // Mean hidden states (embeddings) agree too.
            let mut c2 = g.new_cache();
            let got = g
                .forward(&mut [GpuLane { cache: &mut c2, tokens: &prompt, adapter: None, logits: Logits::MeanHidden }])
                .expect("gpu")
                .remove(0);
            assert!(max_rel(&got, &cpu_logits(&model, &prompt, None, Logits::MeanHidden)) < 1e-4);
        }
    }
}

/// A decode step without adapters is 8 launches a layer (norm, Q/K/V, bias + RoPE + cache write,
/// attention, output projection, norm, gate/up + SwiGLU, down) plus the embedding, the final norm
/// and the vocabulary projection (and, in the loop on the device, the choice of the next token); a
/// format the fused products do not take (F16) or an adapter on gate/up runs them apart. Counted
/// by the device, so a regression in fusion fails here, not only in a benchmark.
#[test]
fn a_decode_step_is_eight_launches_a_layer() {
    for gpu in common::gpu_devices() {
        for (arch, ty) in [("llama", GgmlType::Q4_0), ("qwen2", GgmlType::Q8_0), ("llama", GgmlType::F16)] {
            let model = tiny(arch, ty, 5);
            let layers = model.config.n_layer as u64;
            let g =
                GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 64, page: 4 }).expect("upload");
            let mut cache = g.new_cache();
            let mut step = |tokens: &[TokenId]| {
                g.forward(&mut [GpuLane { cache: &mut cache, tokens, adapter: None, logits: Logits::Last }])
                    .expect("forward")
            };
            step(&[1, 7, 3]);
            let before = gpu.launches();
            step(&[4]);
            let per_layer = (gpu.launches() - before - 3) as f64 / layers as f64;
            // F16 weights are uploaded as f32: Q, K, V and gate, up, SwiGLU run apart (+2 and +2).
            let want = if ty == GgmlType::F16 { 12.0 } else { 8.0 };
            assert_eq!(per_layer, want, "{} {arch} {ty}: launches per layer of a decode step", gpu.backend());
            // The loop on the device: one more launch a step (the argmax), none for reading.
            let before = gpu.launches();
            let lane = GpuDecode { cache: &mut cache, tokens: &[5], adapter: None, max_tokens: 3 };
            g.decode_greedy(&mut [lane], &[], 3).expect("decode");
            let per_layer = ((gpu.launches() - before) as f64 / 3.0 - 4.0) / layers as f64;
            assert_eq!(per_layer, want, "{} {arch} {ty}: launches per layer of a device decode step", gpu.backend());
        }
    }
}

#[test]
fn a_batch_mixing_adapters_equals_per_sequence_runs_and_the_cpu() {
    for gpu in common::gpu_devices() {
        let model = tiny("llama", GgmlType::Q4_1, 5);
        let c = &model.config;
        let dir = tempfile::tempdir().expect("dir");
        write_peft(&dir.path().join("a"), c, 4, 8.0, &[Target::Q, Target::V, Target::Down], 1);
        write_peft(&dir.path().join("b"), c, 8, 4.0, Target::ALL.as_slice(), 2);
        let a = Adapter::load(dir.path().join("a"), c).expect("a");
        let b = Adapter::load(dir.path().join("b"), c).expect("b");
        let g = GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions::default()).expect("upload");
        g.add_adapter("a", a.clone()).expect("add a");
        g.add_adapter("b", b.clone()).expect("add b");
        let prompts: [(&[TokenId], Option<&str>); 4] = [
            (&[1, 2, 3, 4, 5], Some("a")),
            (&[9, 8, 7], None),
            (&[3, 3, 14, 2, 6, 1, 10], Some("b")),
            (&[5], Some("a")),
        ];
        let mut caches: Vec<_> = prompts.iter().map(|_| g.new_cache()).collect();
        let mut lanes: Vec<GpuLane<'_>> = caches
            .iter_mut()
            .zip(&prompts)
            .map(|(cache, (tokens, adapter))| GpuLane { cache, tokens, adapter: *adapter, logits: Logits::All })
            .collect();
        let batched = g.forward(&mut lanes).expect("batch");
        for (i, (tokens, adapter)) in prompts.iter().enumerate() {
            let mut cache = g.new_cache();
            let alone = g
                .forward(&mut [GpuLane { cache: &mut cache, tokens, adapter: *adapter, logits: Logits::All }])
                .expect("alone")
                .remove(0);
            // Each row's arithmetic is its own, but the batch's size picks the product kernel (the
            // tiled one from 16 tokens), which sums in another order: equal to f32 rounding.
            let diff = max_rel(&batched[i], &alone);
            assert!(diff <= 2e-5, "{}: lane {i} differs from its own run by {diff} (relative)", gpu.backend());
            let host = adapter.map(|n| if n == "a" { &a } else { &b });
            let want = cpu_logits(&model, tokens, host, Logits::All);
            assert!(max_rel(&alone, &want) < 1e-4, "lane {i}: {} off the cpu", max_rel(&alone, &want));
        }
        // The adapters matter (else the test would prove nothing).
        let none = cpu_logits(&model, prompts[0].0, None, Logits::All);
        assert!(max_rel(&batched[0], &none) > 1e-2);
        // Unloading one leaves the other serving.
        assert!(g.remove_adapter("a").expect("remove"));
        let mut cache = g.new_cache();
        let err =
            g.forward(&mut [GpuLane { cache: &mut cache, tokens: &[1], adapter: Some("a"), logits: Logits::Last }]);
        assert!(matches!(err, Err(Error::Adapter(_))));
        let again = g
            .forward(&mut [GpuLane {
                cache: &mut cache,
                tokens: prompts[2].0,
                adapter: Some("b"),
                logits: Logits::All,
            }])
            .expect("b still loaded")
            .remove(0);
        assert!(max_rel(&again, &batched[2]) < 2e-5);
    }
}

#[test]
fn bad_requests_are_refused_and_cache_pages_come_back() {
    for gpu in common::gpu_devices() {
        let model = tiny("llama", GgmlType::Q8_0, 7);
        let g = GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 8, page: 4 }).expect("upload");
        let mut cache = g.new_cache();
        let vocab = model.config.vocab as TokenId;
        for (tokens, what) in [(vec![], "empty"), (vec![vocab], "out of vocabulary")] {
            let r =
                g.forward(&mut [GpuLane { cache: &mut cache, tokens: &tokens, adapter: None, logits: Logits::Last }]);
            assert!(matches!(r, Err(Error::Request(_))), "{what}");
        }
        assert!(cache.is_empty(), "a refused request leaves the cache as it was");
        // The decode loop refuses the same, a zero chunk, and a decode past the context or the
        // pages, before anything runs.
        let n_ctx = model.config.n_ctx;
        for (tokens, max_tokens, chunk, what) in [
            (vec![], 2, 4, "empty"),
            (vec![vocab], 2, 4, "out of vocabulary"),
            (vec![1], 2, 0, "zero chunk"),
            (vec![1], n_ctx + 1, 4, "past the context"),
            (vec![1], 9, 4, "more positions than the pages"),
        ] {
            let lane = GpuDecode { cache: &mut cache, tokens: &tokens, adapter: None, max_tokens };
            let r = g.decode_greedy(&mut [lane], &[], chunk);
            assert!(matches!(r, Err(Error::Request(_))), "decode: {what}");
            assert!(cache.is_empty(), "decode: {what} leaves the cache as it was");
        }
        let lane = GpuDecode { cache: &mut cache, tokens: &[1], adapter: Some("none"), max_tokens: 2 };
        assert!(matches!(g.decode_greedy(&mut [lane], &[], 4), Err(Error::Adapter(_))));
        let lane = GpuDecode { cache: &mut cache, tokens: &[1], adapter: None, max_tokens: 0 };
        assert_eq!(g.decode_greedy(&mut [lane], &[], 4).expect("nothing to choose"), vec![Vec::<TokenId>::new()]);
        assert!(cache.is_empty());
        // Two pages of four positions: nine tokens do not fit, eight do, and then only after a drop.
        let r = g.forward(&mut [GpuLane { cache: &mut cache, tokens: &[1; 9], adapter: None, logits: Logits::None }]);
        assert!(matches!(r, Err(Error::Request(_))));
        g.forward(&mut [GpuLane { cache: &mut cache, tokens: &[1; 8], adapter: None, logits: Logits::None }])
            .expect("fits");
        let mut other = g.new_cache();
        let r = g.forward(&mut [GpuLane { cache: &mut other, tokens: &[1], adapter: None, logits: Logits::None }]);
        assert!(matches!(r, Err(Error::Request(_))), "the cache is full");
        drop(cache);
        g.forward(&mut [GpuLane { cache: &mut other, tokens: &[1], adapter: None, logits: Logits::None }])
            .expect("pages came back");
        // A cache of another model is refused.
        let g2 = GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 8, page: 4 }).expect("upload");
        let r = g2.forward(&mut [GpuLane { cache: &mut other, tokens: &[1], adapter: None, logits: Logits::None }]);
        assert!(matches!(r, Err(Error::Request(_))));
        // An adapter for another shape is refused.
        let dir = tempfile::tempdir().expect("dir");
        write_peft(dir.path(), &model.config, 2, 4.0, &[Target::V], 1);
        let mut bad = Adapter::load(dir.path(), &model.config).expect("adapter");
        bad.layers.pop();
        assert!(matches!(g.add_adapter("bad", bad), Err(Error::Adapter(_))));
    }
    assert!(matches!("tpu".parse::<Backend>(), Err(Error::Backend(_))));
    assert!(matches!(Gpu::new(Backend::Cpu), Err(Error::Backend(_))));
}

#[test]
fn the_reference_model_gives_the_same_greedy_tokens_as_the_cpu() {
    let Some(path) = reference_model() else { return };
    let devices = common::gpu_devices();
    if devices.is_empty() {
        return;
    }
    let engine = Engine::load(&path).expect("engine");
    let prompt = engine
        .chat_tokens(&[soramai_kernels::tokenizer::template::Message::new("user", "What is the capital of France?")])
        .expect("prompt");
    let steps = 12;
    let mut want = Vec::new();
    let mut cache = engine.model.new_cache();
    let mut next = prompt.clone();
    for _ in 0..steps {
        let l = engine
            .model
            .forward(
                &mut [Lane { cache: &mut cache, tokens: &next, adapter: None, logits: Logits::Last }],
                Precision::Exact,
            )
            .expect("cpu")
            .remove(0);
        let t = l.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
            as TokenId;
        want.push(t);
        next = vec![t];
    }
    for gpu in devices {
        let g = GpuModel::new(gpu.clone(), Arc::clone(&engine.model), GpuOptions { kv_tokens: 1024, page: 16 })
            .expect("upload");
        let got = g.greedy(&prompt, steps, None).expect("gpu greedy");
        assert_eq!(
            got,
            want,
            "{}: {:?} vs {:?}",
            gpu.backend(),
            engine.tokenizer.decode(&got, false),
            engine.tokenizer.decode(&want, false)
        );
    }
}

fn argmax(v: &[f32]) -> TokenId {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as TokenId
}

/// Greedy decoding through [`GpuModel::forward`], the host picking each token: what the loop on
/// the device must reproduce.
fn host_greedy(g: &GpuModel, prompt: &[TokenId], adapter: Option<&str>, n: usize) -> Vec<TokenId> {
    let mut cache = g.new_cache();
    let mut next = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let lane = GpuLane { cache: &mut cache, tokens: &next, adapter, logits: Logits::Last };
        let t = argmax(&g.forward(&mut [lane]).expect("forward").remove(0));
        out.push(t);
        next = vec![t];
    }
    out
}

/// A decode lane per cache and (tokens, adapter, max_tokens).
fn decode_lanes<'a>(
    caches: &'a mut [soramai_kernels::cube::GpuCache],
    prompts: &[(&'a [TokenId], Option<&'a str>, usize)],
) -> Vec<GpuDecode<'a>> {
    caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, &(tokens, adapter, max_tokens))| GpuDecode { cache, tokens, adapter, max_tokens })
        .collect()
}

/// The decode loop on the device (argmax and embedding there, tokens read back once a chunk)
/// chooses the tokens the host would, for a batch mixing prompt lengths, adapters and lengths,
/// on tied and untied models; stops mid-chunk and goes on from the cache it leaves; waits for the
/// device once per chunk.
#[test]
fn the_decode_loop_on_the_device_chooses_what_the_host_would() {
    for gpu in common::gpu_devices() {
        for (ty, untied) in [(GgmlType::Q4_1, false), (GgmlType::Q8_0, true), (GgmlType::F16, false)] {
            let bytes = tiny_model_bytes_with("llama", ty, 11, untied);
            let model = Arc::new(Model::from_gguf(Arc::new(Gguf::from_bytes(bytes).expect("gguf"))).expect("model"));
            assert_eq!(model.output.name != model.tok_embd.name, untied);
            let g =
                GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 256, page: 4 }).expect("upload");
            let dir = tempfile::tempdir().expect("dir");
            write_peft(dir.path(), &model.config, 4, 8.0, Target::ALL.as_slice(), 3);
            g.add_adapter("a", Adapter::load(dir.path(), &model.config).expect("adapter")).expect("add");
            let prompts: [(&[TokenId], Option<&str>, usize); 3] =
                [(&[1, 2, 3, 4, 5], Some("a"), 9), (&[9], None, 4), (&[3, 14, 2, 6], None, 7)];
            // The embeddings and the output projection are read on the device as the CPU reads them.
            let mut cache = g.new_cache();
            let lane = GpuLane { cache: &mut cache, tokens: prompts[2].0, adapter: None, logits: Logits::All };
            let logits = g.forward(&mut [lane]).expect("forward").remove(0);
            let cpu = cpu_logits(&model, prompts[2].0, None, Logits::All);
            assert!(max_rel(&logits, &cpu) < 1e-4, "{ty} untied={untied}: {}", max_rel(&logits, &cpu));
            let want: Vec<Vec<TokenId>> = prompts.iter().map(|&(p, a, n)| host_greedy(&g, p, a, n)).collect();
            // One batch in chunks of 3: the lanes end at different steps, chunks cross their ends.
            let mut caches: Vec<_> = prompts.iter().map(|_| g.new_cache()).collect();
            let mut lanes = decode_lanes(&mut caches, &prompts);
            let waits = gpu.waits();
            let got = g.decode_greedy(&mut lanes, &[], 3).expect("decode");
            assert_eq!(got, want, "{} {ty} untied={untied}", gpu.backend());
            assert_eq!(gpu.waits() - waits, 3, "one read per chunk of 3 steps, 9 steps");
            // Each cache holds the prompt and every choice but the last.
            for (cache, &(p, _, n)) in caches.iter().zip(&prompts) {
                assert_eq!(cache.len(), p.len() + n - 1);
            }
            // Stopping at lane 0's fourth token: each lane ends at its first stop token (mid-chunk).
            let stop = want[0][3];
            let cut: Vec<Vec<TokenId>> = want
                .iter()
                .map(|w| w.iter().position(|&t| t == stop).map_or(w.clone(), |k| w[..=k].to_vec()))
                .collect();
            let mut caches: Vec<_> = prompts.iter().map(|_| g.new_cache()).collect();
            let mut lanes = decode_lanes(&mut caches, &prompts);
            assert_eq!(g.decode_greedy(&mut lanes, &[stop], 3).expect("decode"), cut);
            // A stopped lane goes on from its cache (the positions written after the stop are
            // overwritten) to the same tokens as a run that never stopped.
            for (i, cache) in caches.iter_mut().enumerate() {
                let (_, adapter, n) = prompts[i];
                assert_eq!(cache.len(), prompts[i].0.len() + cut[i].len() - 1);
                if cut[i].len() == n {
                    continue;
                }
                let last = [*cut[i].last().expect("a token")];
                let lane = GpuDecode { cache, tokens: &last, adapter, max_tokens: n - cut[i].len() };
                let rest = g.decode_greedy(&mut [lane], &[], 2).expect("go on").remove(0);
                assert_eq!([cut[i].as_slice(), &rest].concat(), want[i], "lane {i} after its stop");
            }
        }
    }
}

fn family_fixture(name: &str) -> Arc<Model> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    Arc::new(Model::load(dir.join(format!("{name}.gguf"))).expect(name))
}

#[test]
fn model_families_run_on_the_device_or_are_refused_by_name() {
    for gpu in common::gpu_devices() {
        // Llama 3.x: rope_freqs and an untied output, read through the same family description.
        let model = family_fixture("llama3");
        let g = GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 64, page: 4 }).expect("llama 3");
        let prompt: Vec<TokenId> = vec![1, 17, 300, 42, 99, 5, 260, 383];
        let mut cache = g.new_cache();
        let got = g
            .forward(&mut [GpuLane { cache: &mut cache, tokens: &prompt, adapter: None, logits: Logits::All }])
            .expect("gpu")
            .remove(0);
        let err = max_rel(&got, &cpu_logits(&model, &prompt, None, Logits::All));
        assert!(err < 1e-4, "{:?}: llama 3 logits off by {err}", gpu.backend());
        // The features the device path does not implement yet are refused, naming them.
        for (name, feature) in [("qwen3", "q/k norms"), ("gemma3", "post norms")] {
            let Err(e) = GpuModel::new(gpu.clone(), family_fixture(name), GpuOptions { kv_tokens: 64, page: 4 }) else {
                panic!("{name}: the GPU model accepted a block it does not implement");
            };
            assert!(matches!(e, Error::Backend(_)) && e.to_string().contains(feature), "{name}: {e}");
            let cfg = soramai_kernels::train::TrainConfig { max_seq: 32, ..Default::default() };
            let Err(e) = soramai_kernels::cube::GpuTrainer::new(gpu.clone(), family_fixture(name), cfg) else {
                panic!("{name}: the GPU trainer accepted a block it does not implement");
            };
            assert!(matches!(e, Error::Training(_)) && e.to_string().contains(feature), "{name}: {e}");
        }
    }
}
