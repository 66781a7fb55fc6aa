//! The forward pass, batching, adapters, sampling and tokenizers on tiny random models (no download).

mod common;

use std::sync::Arc;

use common::{max_abs_diff, reference_logits, tiny_model_bytes, write_peft};
use soramai_kernels::engine::choice_seed;
use soramai_kernels::gguf::{Gguf, GgufWriter, Value};
use soramai_kernels::lora::Target;
use soramai_kernels::model::{Lane, Logits, Model};
use soramai_kernels::quant::GgmlType;
use soramai_kernels::sample::SamplingParams;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Error, Finish, Precision, Request, Tokenizer};

fn tiny(arch: &str, ty: GgmlType) -> Engine {
    let g = Gguf::from_bytes(tiny_model_bytes(arch, ty, 11)).expect("gguf");
    Engine::new(Model::from_gguf(Arc::new(g)).expect("model")).expect("engine")
}

#[test]
fn exact_mode_matches_f64_reference_on_each_architecture() {
    for (arch, ty) in
        [("llama", GgmlType::Q8_0), ("llama", GgmlType::Q4_1), ("qwen2", GgmlType::Q4_0), ("llama", GgmlType::F16)]
    {
        let e = tiny(arch, ty);
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % e.model.config.vocab as u32).collect();
        let exact = e.logits(&ids, None, Precision::Exact).expect("exact");
        let reference = reference_logits(&e.model, &ids, None);
        let d = max_abs_diff(&exact, &reference);
        assert!(d < 1e-3, "{arch}/{ty}: exact vs f64 {d}");
        // The fast path (8-bit activations) stays close.
        let fast = e.logits(&ids, None, Precision::Fast).expect("fast");
        let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(&fast, &reference) < 0.05 * scale.max(1.0), "{arch}/{ty}: fast path drifted");
        // With an adapter on every target (Q/K permuted for interleaved RoPE; none for qwen2).
        let dir = tempfile::tempdir().expect("tmp");
        let deltas = write_peft(dir.path(), &e.model.config, 3, 6.0, &Target::ALL, 2);
        e.load_adapter("a", dir.path()).expect("adapter");
        let with = e.logits(&ids, Some("a"), Precision::Exact).expect("logits");
        let d = max_abs_diff(&with, &reference_logits(&e.model, &ids, Some(&deltas)));
        assert!(d < 1e-3, "{arch}/{ty}: exact+adapter vs merged f64 {d}");
    }
}

#[test]
fn batching_and_chunked_prefill_change_nothing() {
    let e = tiny("llama", GgmlType::Q4_1);
    let dir = tempfile::tempdir().expect("tmp");
    write_peft(&dir.path().join("a"), &e.model.config, 4, 8.0, &[Target::Q, Target::Down], 1);
    write_peft(&dir.path().join("b"), &e.model.config, 2, 2.0, &Target::ALL, 2);
    e.load_adapter("a", dir.path().join("a")).expect("a");
    e.load_adapter("b", dir.path().join("b")).expect("b");
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5, 6, 7], vec![100], vec![9, 8, 7, 6, 5, 4, 3, 2, 1], vec![42, 43]];
    let names = [Some("a"), None, Some("b"), Some("a")];
    for precision in [Precision::Fast, Precision::Exact] {
        let alone: Vec<Vec<f32>> =
            prompts.iter().zip(names).map(|(p, n)| e.logits(p, n, precision).expect("alone")).collect();
        let adapters: Vec<_> = names
            .iter()
            .map(|n| {
                n.map(|n| soramai_kernels::lora::Adapter::load(dir.path().join(n), &e.model.config).expect("load"))
            })
            .collect();
        let mut caches: Vec<_> = prompts.iter().map(|_| e.model.new_cache()).collect();
        let mut lanes: Vec<Lane<'_>> = caches
            .iter_mut()
            .zip(&prompts)
            .zip(&adapters)
            .map(|((c, p), a)| Lane { cache: c, tokens: p, adapter: a.as_ref(), logits: Logits::Last })
            .collect();
        let batched = e.model.forward(&mut lanes, precision).expect("batch");
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a, b, "{precision:?}: lane {i} differs in a batch");
        }
        // Prefill in two chunks through the KV cache equals one pass.
        let p = &prompts[2];
        let mut cache = e.model.new_cache();
        let mut l1 = [Lane { cache: &mut cache, tokens: &p[..4], adapter: None, logits: Logits::None }];
        assert!(e.model.forward(&mut l1, precision).expect("chunk 1")[0].is_empty());
        let mut l2 = [Lane { cache: &mut cache, tokens: &p[4..], adapter: None, logits: Logits::All }];
        let all = e.model.forward(&mut l2, precision).expect("chunk 2").remove(0);
        let vocab = e.model.config.vocab;
        assert_eq!(all.len(), 5 * vocab);
        assert_eq!(&all[4 * vocab..], &e.logits(p, None, precision).expect("whole")[..]);
        assert_eq!(cache.len(), p.len());
    }
}

#[test]
fn sampling_is_seeded_and_filters_apply() {
    let e = tiny("llama", GgmlType::Q8_0);
    let prompt = vec![5, 6, 7];
    let run = |s: SamplingParams| {
        let mut r = Request::new(prompt.clone(), 24);
        r.sampling = s;
        e.generate(&r, &mut |_, _| true).expect("generate").output_ids
    };
    let hot =
        SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..SamplingParams::default() };
    assert_eq!(run(hot.clone()), run(hot.clone()), "same seed, same output");
    let others: Vec<_> = (8..12).map(|seed| run(SamplingParams { seed, ..hot.clone() })).collect();
    assert!(others.iter().any(|o| *o != run(hot.clone())), "different seeds give different samples");
    let greedy = run(SamplingParams::greedy());
    assert_eq!(run(SamplingParams { top_k: 1, ..hot.clone() }), greedy, "top-k 1 is greedy");
    assert_eq!(run(SamplingParams { min_p: 1.0, ..hot.clone() }), greedy, "min-p 1 is greedy");
    assert_eq!(run(SamplingParams { top_p: 0.0, ..hot.clone() }), greedy, "top-p 0 is greedy");
    let penalized = run(SamplingParams { repeat_penalty: 5.0, ..SamplingParams::greedy() });
    assert_eq!(penalized.len(), 24);
    for bad in [
        SamplingParams { temperature: f32::NAN, ..SamplingParams::default() },
        SamplingParams { top_p: 2.0, ..SamplingParams::default() },
        SamplingParams { repeat_penalty: 0.0, ..SamplingParams::default() },
    ] {
        let mut r = Request::new(prompt.clone(), 4);
        r.sampling = bad;
        assert!(matches!(e.generate(&r, &mut |_, _| true), Err(Error::Request(_))));
    }
}

#[test]
fn streaming_stop_strings_and_limits() {
    let e = tiny("llama", GgmlType::Q8_0);
    let base = e.generate(&Request::new(vec![10, 11], 40), &mut |_, _| true).expect("generate");
    assert!(base.finish == Finish::Length && base.output_ids.len() == 40 || base.finish == Finish::Stop, "{base:?}");
    // Streamed pieces add up to the text.
    let mut streamed = String::new();
    let g = e
        .generate(&Request::new(vec![10, 11], 40), &mut |_, s| {
            streamed.push_str(s);
            true
        })
        .expect("generate");
    assert_eq!(streamed, g.text);
    // A stop string taken from the middle of the text ends generation before it.
    let chars: Vec<char> = base.text.chars().collect();
    if let Some(stop) = chars.windows(3).skip(4).map(|w| w.iter().collect::<String>()).find(|s| !s.contains('\u{fffd}'))
    {
        let mut r = Request::new(vec![10, 11], 40);
        r.stop = vec![stop.clone()];
        let mut streamed = String::new();
        let g = e
            .generate(&r, &mut |_, s| {
                streamed.push_str(s);
                true
            })
            .expect("generate");
        assert_eq!(g.finish, Finish::StopString);
        assert!(!g.text.contains(&stop));
        assert!(base.text.starts_with(&g.text));
        assert_eq!(streamed, g.text, "held-back text is never streamed past a stop");
    }
    // The callback can cancel.
    let g = e.generate(&Request::new(vec![10, 11], 40), &mut |_, _| false).expect("generate");
    assert_eq!(g.finish, Finish::Cancelled);
    // Bad requests.
    assert!(matches!(e.generate(&Request::new(vec![], 4), &mut |_, _| true), Err(Error::Request(_))));
    assert!(matches!(e.generate(&Request::new(vec![1; 300], 4), &mut |_, _| true), Err(Error::Request(_))));
    assert!(matches!(e.generate(&Request::new(vec![9999], 4), &mut |_, _| true), Err(Error::Request(_))));
    let mut r = Request::new(vec![1], 4);
    r.adapter = Some("nope".into());
    assert!(matches!(e.generate(&r, &mut |_, _| true), Err(Error::Request(_))));
    // The context fills up: generation stops there.
    let g = e.generate(&Request::new(vec![3; 250], 100), &mut |_, _| true).expect("generate");
    assert_eq!(g.finish, Finish::Context);
    assert_eq!(g.prompt_ids.len() + g.output_ids.len(), 256);
}

#[test]
fn adapters_come_and_go_while_others_run() {
    let e = Arc::new(tiny("llama", GgmlType::Q8_0));
    let dir = tempfile::tempdir().expect("tmp");
    write_peft(&dir.path().join("a"), &e.model.config, 4, 8.0, &Target::ALL, 1);
    write_peft(&dir.path().join("b"), &e.model.config, 4, 8.0, &Target::ALL, 2);
    e.load_adapter("a", dir.path().join("a")).expect("a");
    let mut r = Request::new(vec![7, 8, 9], 120);
    r.adapter = Some("a".into());
    let solo = e.generate(&r, &mut |_, _| true).expect("solo");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let worker = {
        let (e, r) = (e.clone(), r.clone());
        std::thread::spawn(move || {
            let mut first = true;
            e.generate(&r, &mut |_, _| {
                if first {
                    let _ = started_tx.send(());
                    first = false;
                }
                true
            })
        })
    };
    started_rx.recv().expect("started");
    assert!(e.remove_adapter("a"));
    e.load_adapter("b", dir.path().join("b")).expect("b");
    e.load_adapter("a", dir.path().join("b")).expect("replace a");
    let g = worker.join().expect("join").expect("generate");
    assert_eq!(g.output_ids, solo.output_ids, "a running generation keeps the adapter it began with");
    assert_eq!(e.adapter_names(), vec!["a".to_string(), "b".to_string()]);
    let mut r2 = r.clone();
    r2.adapter = Some("b".into());
    assert_ne!(e.generate(&r2, &mut |_, _| true).expect("b").output_ids, solo.output_ids);
}

#[test]
fn adapters_round_trip_through_peft_files() {
    let e = tiny("llama", GgmlType::Q8_0);
    let dir = tempfile::tempdir().expect("tmp");
    write_peft(&dir.path().join("a"), &e.model.config, 4, 8.0, &[Target::Q, Target::K, Target::Up], 1);
    let a = soramai_kernels::lora::Adapter::load(dir.path().join("a"), &e.model.config).expect("load");
    a.save(dir.path().join("copy"), &e.model.config).expect("save");
    let b = soramai_kernels::lora::Adapter::load(dir.path().join("copy"), &e.model.config).expect("reload");
    assert_eq!(a, b);
    // The saved B of q_proj is back in Hugging Face row order: byte-identical to the original.
    let st = |p: &std::path::Path| std::fs::read(p.join("adapter_model.safetensors")).expect("read");
    let (x, y) = (st(&dir.path().join("a")), st(&dir.path().join("copy")));
    let (x, y) =
        (safetensors::SafeTensors::deserialize(&x).expect("x"), safetensors::SafeTensors::deserialize(&y).expect("y"));
    let name = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
    assert_eq!(x.tensor(name).expect("x").data(), y.tensor(name).expect("y").data());
}

#[test]
fn bpe_tokenizer_on_a_tiny_vocabulary() {
    let e = tiny("llama", GgmlType::Q8_0);
    let t = &e.tokenizer;
    let hello = t.token_id("hello").expect("merged token");
    let world = t.token_id("Ġworld").expect("merged token");
    assert_eq!(t.encode("hello world", true, true), vec![hello, world]);
    let start = t.token_id("<|im_start|>").expect("control");
    assert_eq!(t.encode("<|im_start|>hello", true, true), vec![start, hello]);
    assert_ne!(t.encode("<|im_start|>hello", true, false)[0], start, "control text is plain text without special");
    assert_eq!(t.decode(&t.encode("héllo wörld 123 🎉", true, true), false), "héllo wörld 123 🎉");
    assert_eq!(t.decode(&[start, hello], false), "hello");
    assert_eq!(t.decode(&[start, hello], true), "<|im_start|>hello");
    let chat = e.render_chat(&[Message::new("user", "hi")]).expect("render");
    assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn sentencepiece_tokenizer_merges_by_score_with_byte_fallback() {
    let mut w = GgufWriter::new();
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "h", "e", "l", "o", "▁h", "he", "ll", "▁he", "llo", "▁hello", "<0x21>", "<0xC3>",
        "<0xA9>",
    ];
    let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -2.0, -3.0, -1.5, -1.0, -1.2, -0.5, -0.1, 0.0, 0.0, 0.0];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 6, 6];
    w.set("tokenizer.ggml.model", Value::String("llama".into()));
    w.set("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| Value::String((*t).into())).collect()));
    w.set("tokenizer.ggml.scores", Value::Array(scores.iter().map(|s| Value::F32(*s)).collect()));
    w.set("tokenizer.ggml.token_type", Value::Array(types.iter().map(|t| Value::I32(*t)).collect()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    let g = Gguf::from_bytes(w.to_bytes()).expect("gguf");
    let t = Tokenizer::from_gguf(&g).expect("spm");
    assert!(t.add_bos, "SentencePiece adds BOS by default");
    // "▁hello" wins through its merges; "!" and "é" fall back to byte tokens.
    assert_eq!(t.encode("hello!é", true, true), vec![1, 13, 14, 15, 16]);
    assert_eq!(t.decode(&[1, 13, 14, 15, 16], false), " hello!é");
    assert_eq!(t.encode("</s>", false, true), vec![2]);
}

#[test]
fn requests_joining_a_running_batch_generate_what_they_would_alone() {
    let e = tiny("llama", GgmlType::Q4_1);
    let dir = tempfile::tempdir().expect("tmp");
    write_peft(&dir.path().join("a"), &e.model.config, 4, 8.0, &Target::ALL, 1);
    e.load_adapter("a", dir.path().join("a")).expect("a");
    let mut reqs = [Request::new(vec![3, 4, 5], 24), Request::new(vec![9, 8, 7, 6, 5], 16), Request::new(vec![42], 20)];
    reqs[1].adapter = Some("a".into());
    reqs[2].sampling = SamplingParams { temperature: 0.9, seed: 5, ..SamplingParams::default() };
    let alone: Vec<_> = reqs.iter().map(|r| e.generate(r, &mut |_, _| true).expect("alone")).collect();

    // Request 0 starts alone; 1 joins after 3 steps, 2 after 7; each finishes on its own.
    let mut batch = e.batch(Precision::Fast);
    batch.admit(0, reqs[0].clone()).expect("admit");
    let mut streamed: Vec<String> = vec![String::new(); 3];
    let mut done = Vec::new();
    let mut steps = 0;
    while !batch.is_empty() || done.len() < 3 {
        if steps == 3 {
            batch.admit(1, reqs[1].clone()).expect("admit 1");
        }
        if steps == 7 {
            batch.admit(2, reqs[2].clone()).expect("admit 2");
        }
        done.extend(
            batch
                .step(&mut |id, ev| {
                    streamed[id as usize].push_str(&ev.text);
                    true
                })
                .expect("step"),
        );
        steps += 1;
        assert!(steps < 200, "the batch never drained");
    }
    done.sort_by_key(|(id, _)| *id);
    for (id, g) in &done {
        let a = &alone[*id as usize];
        assert_eq!(g.output_ids, a.output_ids, "request {id} differs when it joins a running batch");
        assert_eq!(streamed[*id as usize], a.text, "request {id}: streamed text");
    }

    // Invalid requests are refused and leave the batch as it was; a cancelled one leaves at the next step.
    let mut batch = e.batch(Precision::Fast);
    batch.admit(1, reqs[0].clone()).expect("admit");
    let vocab = e.model.config.vocab as u32;
    let bad = [
        Request::new(vec![], 4),
        Request::new(vec![vocab], 4),
        Request { stop: vec![String::new()], ..reqs[0].clone() },
        Request { adapter: Some("nope".into()), ..reqs[0].clone() },
        Request { logprobs: Some(21), ..reqs[0].clone() },
        Request { precision: Precision::Exact, ..reqs[0].clone() },
        reqs[0].clone(),
    ];
    for r in bad {
        let id = if r.prompt == reqs[0].prompt && r.logprobs.is_none() && r.adapter.is_none() { 1 } else { 2 };
        assert!(matches!(batch.admit(id, r), Err(Error::Request(_))));
    }
    assert_eq!(batch.len(), 1);
    batch.cancel(1);
    let out = batch.step(&mut |_, _| panic!("a cancelled request generates nothing")).expect("step");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.finish, Finish::Cancelled);
    assert!(batch.is_empty());
}

#[test]
fn log_probabilities_are_normalized_and_rank_the_alternatives() {
    let e = tiny("llama", GgmlType::Q8_0);
    let r = Request { logprobs: Some(5), ..Request::new(vec![3, 4, 5], 6) };
    let mut batch = e.batch(Precision::Fast);
    batch.admit(0, r.clone()).expect("admit");
    let mut events = Vec::new();
    while !batch.is_empty() {
        batch
            .step(&mut |_, ev| {
                events.push(ev);
                true
            })
            .expect("step");
    }
    assert!(!events.is_empty());
    let mut history = r.prompt.clone();
    for ev in &events {
        let lp = ev.logprobs.as_ref().expect("logprobs asked for");
        assert_eq!(lp.top.len(), 5);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first");
        let mass: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!(mass <= 1.0 + 1e-4 && lp.top.iter().all(|t| t.1 <= 0.0));
        // Greedy: the sampled token is the most likely one.
        assert_eq!(lp.top[0].0, ev.token);
        assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6);
        // And the figure is the log-softmax of the model's logits.
        let logits = e.logits(&history, None, Precision::Fast).expect("logits");
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        assert!((logits[ev.token as usize] - lse - lp.logprob).abs() < 1e-3);
        history.push(ev.token);
    }
}

/// A prompt of `n` token ids inside the tiny vocabulary.
fn long_prompt(e: &Engine, n: usize, salt: u32) -> Vec<u32> {
    let vocab = e.model.config.vocab as u32;
    (0..n as u32).map(|i| (i * 31 + salt * 7 + 3) % vocab).collect()
}

#[test]
fn a_long_prompt_prefills_in_chunks_while_others_keep_decoding() {
    let e = tiny("llama", GgmlType::Q4_1);
    let dir = tempfile::tempdir().expect("tmp");
    write_peft(&dir.path().join("a"), &e.model.config, 4, 8.0, &Target::ALL, 1);
    e.load_adapter("a", dir.path().join("a")).expect("a");
    let running = Request::new(vec![3, 4, 5], 40);
    let mut long = Request::new(long_prompt(&e, 150, 1), 12);
    long.adapter = Some("a".into());
    let alone = [&running, &long].map(|r| e.generate(r, &mut |_, _| true).expect("alone"));

    let mut batch = e.batch(Precision::Fast);
    batch.set_prefill_chunk(16);
    batch.admit(0, running.clone()).expect("admit");
    let mut tokens = [Vec::new(), Vec::new()];
    let mut done = Vec::new();
    let step = |batch: &mut soramai_kernels::Batch<'_>, tokens: &mut [Vec<u32>; 2]| {
        batch
            .step(&mut |id, ev| {
                tokens[id as usize].push(ev.token);
                true
            })
            .expect("step")
    };
    for _ in 0..3 {
        done.extend(step(&mut batch, &mut tokens));
    }
    batch.admit(1, long.clone()).expect("admit long");
    // 150 prompt tokens in chunks of 16 take 10 steps; the running request gets a token in each.
    for k in 0..10 {
        let before = tokens[0].len();
        done.extend(step(&mut batch, &mut tokens));
        assert_eq!(tokens[0].len(), before + 1, "step {k}: the running request stalled behind the prefill");
        assert_eq!(tokens[1].len(), usize::from(k == 9), "step {k}: the long prompt's first token comes last");
    }
    while !batch.is_empty() {
        done.extend(step(&mut batch, &mut tokens));
    }
    done.sort_by_key(|(id, _)| *id);
    for (id, g) in &done {
        assert_eq!(g.output_ids, alone[*id as usize].output_ids, "request {id}: chunked prefill changed the output");
    }
}

#[test]
fn prompt_prefixes_are_reused_within_a_scope_only() {
    let e = tiny("llama", GgmlType::Q4_1);
    let dir = tempfile::tempdir().expect("tmp");
    write_peft(&dir.path().join("a"), &e.model.config, 4, 8.0, &Target::ALL, 1);
    e.load_adapter("a", dir.path().join("a")).expect("a");
    let system = long_prompt(&e, 60, 2);
    let ask = |tail: &[u32], scope: Option<&str>, adapter: Option<&str>| {
        let mut prompt = system.clone();
        prompt.extend_from_slice(tail);
        let mut r = Request::new(prompt, 10);
        r.prefix_scope = scope.map(str::to_owned);
        r.adapter = adapter.map(str::to_owned);
        e.generate(&r, &mut |_, _| true).expect("generate")
    };
    let plain = ask(&[7, 8, 9], None, None);
    assert_eq!(plain.cached_tokens, 0);
    assert_eq!(e.prefix_cache().stats().lookups, 0, "an unscoped request does not touch the cache");

    let first = ask(&[7, 8, 9], Some("tenant-a"), None);
    assert_eq!(first.cached_tokens, 0);
    // The same system prompt with another question: the 60 shared tokens come from the cache, and
    // the output is what a full prefill gives.
    let second = ask(&[11, 12], Some("tenant-a"), None);
    assert_eq!(second.cached_tokens, 60);
    assert_eq!(second.output_ids, ask(&[11, 12], None, None).output_ids);
    // The very same prompt reuses all but its last token.
    assert_eq!(ask(&[7, 8, 9], Some("tenant-a"), None).cached_tokens, 62);

    // Another tenant with the same prompt, and the same tenant under an adapter, start cold.
    let other = ask(&[7, 8, 9], Some("tenant-b"), None);
    assert_eq!(other.cached_tokens, 0, "tenant B reused tenant A's prompt");
    assert_eq!(other.output_ids, plain.output_ids);
    assert_eq!(ask(&[7, 8, 9], Some("tenant-a"), Some("a")).cached_tokens, 0);
    assert_eq!(ask(&[11, 12], Some("tenant-a"), Some("a")).cached_tokens, 60);

    // Removing the adapter drops its entries; forgetting a scope drops the tenant's.
    let before = e.prefix_cache().stats().entries;
    assert!(e.remove_adapter("a"));
    assert!(e.prefix_cache().stats().entries < before);
    e.prefix_cache().forget_scope("tenant-a");
    assert_eq!(ask(&[11, 12], Some("tenant-a"), None).cached_tokens, 0);
}

#[test]
fn choices_share_one_prefill_and_each_generates_what_its_seed_would_alone() {
    let e = tiny("llama", GgmlType::Q4_1);
    let mut req = Request::new(long_prompt(&e, 150, 2), 12);
    req.sampling = SamplingParams { temperature: 0.9, seed: 7, ..SamplingParams::default() };
    let with_seed = |i: usize| Request {
        sampling: SamplingParams { seed: choice_seed(7, i), ..req.sampling.clone() },
        ..req.clone()
    };
    assert_eq!(choice_seed(7, 0), 7, "the first choice keeps the request's seed");
    let alone: Vec<_> = (0..3).map(|i| e.generate(&with_seed(i), &mut |_, _| true).expect("alone")).collect();
    assert!(alone.windows(2).any(|w| w[0].output_ids != w[1].output_ids), "each choice has its own seed");

    let mut batch = e.batch(Precision::Fast);
    batch.set_prefill_chunk(16);
    batch.admit_choices(&[10, 11, 12], req.clone()).expect("admit");
    assert_eq!(batch.len(), 3);
    let mut first_step = [None; 3];
    let mut done = Vec::new();
    let mut step = 0;
    while !batch.is_empty() {
        done.extend(
            batch
                .step(&mut |id, _| {
                    first_step[(id - 10) as usize].get_or_insert(step);
                    true
                })
                .expect("step"),
        );
        step += 1;
        assert!(step < 100, "the batch never drained");
    }
    assert_eq!(batch.prefilled_tokens(), 150, "three choices, one prefill of the prompt");
    assert_eq!(done.len(), 3);
    for (id, g) in &done {
        let i = (id - 10) as usize;
        assert_eq!(g.output_ids, alone[i].output_ids, "choice {i} differs from its seed alone");
        if !g.output_ids.is_empty() {
            // 150 prompt tokens in chunks of 16: every choice's first token comes in the 10th step.
            assert_eq!(first_step[i], Some(9), "choice {i}");
        }
    }

    // A repeated id is refused and changes nothing.
    let mut batch = e.batch(Precision::Fast);
    assert!(matches!(batch.admit_choices(&[1, 1], req.clone()), Err(Error::Request(_))));
    assert!(matches!(batch.admit_choices(&[], req.clone()), Err(Error::Request(_))));
    assert!(batch.is_empty());

    // When the first choice is cancelled mid-prefill, the others prefill the prompt themselves.
    batch.set_prefill_chunk(16);
    batch.admit_choices(&[0, 1, 2], req.clone()).expect("admit");
    let mut done = Vec::new();
    for _ in 0..2 {
        done.extend(batch.step(&mut |_, _| true).expect("step"));
    }
    batch.cancel(0);
    while !batch.is_empty() {
        done.extend(batch.step(&mut |_, _| true).expect("step"));
    }
    done.sort_by_key(|(id, _)| *id);
    assert_eq!(done[0].1.finish, Finish::Cancelled);
    for (id, g) in &done[1..] {
        assert_eq!(g.output_ids, alone[*id as usize].output_ids, "choice {id} after its first was cancelled");
    }
}

#[test]
fn a_grammar_holds_every_sampled_output_to_it_in_a_mixed_batch() {
    use serde_json::{Value, json};
    use soramai_kernels::grammar::Grammar;

    // A random model samples garbage; only the mask can make its output match.
    let e = tiny("llama", GgmlType::Q4_1);
    let schema = json!({
        "type": "object",
        "properties": {
            "kind": {"enum": ["cat", "dog"]},
            "age": {"type": "integer", "minimum": 1, "maximum": 20},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
            "owner": {"$ref": "#/$defs/person"},
            "id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]}
        },
        "required": ["kind", "age", "owner", "id"],
        "additionalProperties": false,
        "$defs": {"person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6}},
                             "required": ["name"], "additionalProperties": false}}
    });
    let grammar = Grammar::JsonSchema(schema);
    let year = Grammar::Regex("(19|20)[0-9]{2}-[a-c]{3}".into());
    let mut batch = e.batch(Precision::Fast);
    let sampled = |seed: u64| SamplingParams { temperature: 1.0, seed, ..SamplingParams::default() };
    for seed in 0..3u64 {
        let mut r = Request::new(vec![3, 4, 5], 300);
        r.sampling = sampled(seed);
        r.constraint = Some(e.constrain(&grammar).expect("schema compiles"));
        // Two choices of one constrained request, each held to the grammar on its own.
        batch.admit_choices(&[seed * 10, seed * 10 + 1], r).expect("admit");
        let mut rx = Request::new(vec![7, 8], 40);
        rx.sampling = sampled(seed);
        rx.constraint = Some(e.constrain(&year).expect("regex compiles"));
        batch.admit(seed * 10 + 2, rx).expect("admit");
        let mut free = Request::new(vec![3, 4, 5], 12);
        free.sampling = sampled(seed);
        batch.admit(100 + seed, free).expect("admit");
    }
    let mut done = Vec::new();
    while !batch.is_empty() {
        done.extend(batch.step(&mut |_, _| true).expect("step"));
    }
    assert_eq!(done.len(), 12);
    for (id, g) in &done {
        if *id >= 100 {
            continue;
        }
        assert_eq!(g.finish, Finish::Stop, "request {id} ended at its grammar's end: {:?}", g.text);
        if id % 10 == 2 {
            let (y, rest) = g.text.split_at(4);
            assert!(y.starts_with("19") || y.starts_with("20"), "{:?}", g.text);
            assert!(y.bytes().all(|b| b.is_ascii_digit()), "{:?}", g.text);
            assert!(rest.len() == 4 && rest.starts_with('-') && rest[1..].bytes().all(|b| (b'a'..=b'c').contains(&b)));
            continue;
        }
        let v: Value = serde_json::from_str(&g.text).unwrap_or_else(|err| panic!("{:?}: {err}", g.text));
        let o = v.as_object().expect("an object");
        assert!(["cat", "dog"].contains(&o["kind"].as_str().unwrap_or_default()), "{v}");
        assert!((1..=20).contains(&o["age"].as_i64().unwrap_or_default()), "{v}");
        assert!(o["owner"]["name"].as_str().is_some_and(|n| n.chars().count() <= 6), "{v}");
        assert!(o["id"].is_boolean() || (0..=9).contains(&o["id"].as_i64().unwrap_or(-1)), "{v}");
        if let Some(tags) = o.get("tags") {
            let tags = tags.as_array().expect("tags");
            assert!(tags.len() <= 2 && tags.iter().all(|t| t.as_str().is_some_and(|t| t.chars().count() <= 4)));
        }
        assert!(o.keys().all(|k| ["kind", "age", "tags", "owner", "id"].contains(&k.as_str())), "{v}");
    }

    // What does not compile is refused, naming why.
    for (bad, says) in [
        (Grammar::Regex("(unclosed".into()), "grammar"),
        (Grammar::JsonSchema(json!({"type": "array", "uniqueItems": true})), "uniqueItems"),
        (Grammar::JsonSchema(json!(5)), "object"),
        (Grammar::JsonSchema(json!({"type": "object", "x-guidance": {}})), "x-guidance"),
        (Grammar::Lark("start: ".repeat(60_000)), "bytes"),
    ] {
        match e.constrain(&bad) {
            Err(Error::Request(m)) => assert!(m.contains(says), "{bad:?}: {m}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
}
