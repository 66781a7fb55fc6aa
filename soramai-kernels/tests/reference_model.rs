//! The reference model (SmolLM2-135M-Instruct Q4_1) against llama.cpp fixtures
//! (`scripts/llama_fixtures.py`) and against the f64 reference forward.

mod common;

use common::{max_abs_diff, reference_logits, reference_model, write_peft};
use soramai_kernels::lora::Target;
use soramai_kernels::npy::read_f32_vector;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Precision, Request};

fn fixture() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama_cpp.json");
    serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn tokenization_matches_llama_cpp() {
    let Some(path) = reference_model() else { return };
    let engine = Engine::load(path).expect("load");
    let f = fixture();
    let cases = f["tokenize"].as_array().expect("cases");
    assert!(cases.len() >= 40);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(engine.tokenizer.encode(text, true, true), ids(&case["special"]), "special: {text:?}");
        assert_eq!(engine.tokenizer.encode(text, true, false), ids(&case["no_special"]), "no special: {text:?}");
        // Decoding gives the text back (special tokens included when asked for).
        let back = engine.tokenizer.decode(&ids(&case["special"]), true);
        assert_eq!(back, text, "round trip");
    }
}

#[test]
fn greedy_chat_generation_matches_llama_cpp() {
    let Some(path) = reference_model() else { return };
    let engine = Engine::load(path).expect("load");
    let f = fixture();
    let mut identical = 0;
    for chat in f["chat"].as_array().expect("chats") {
        let user = chat["user"].as_str().expect("user");
        let rendered = engine.render_chat(&[Message::new("user", user)]).expect("render");
        assert_eq!(rendered, chat["prompt"].as_str().expect("prompt"), "template rendering");
        let prompt = engine.chat_tokens(&[Message::new("user", user)]).expect("tokens");
        assert_eq!(prompt, ids(&chat["prompt_ids"]));
        let want = ids(&chat["output_ids"]);
        let g = engine.generate(&Request::new(prompt.clone(), 48), &mut |_, _| true).expect("generate");
        let common = g.output_ids.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if common == want.len().min(g.output_ids.len()) && g.output_ids.len() == want.len() {
            identical += 1;
            continue;
        }
        // A divergence is only allowed where the two best tokens nearly tie: check our own margin
        // between our pick and llama.cpp's at that step, and llama.cpp's margin.
        let mut ctx = prompt.clone();
        ctx.extend_from_slice(&want[..common]);
        let logits = engine.logits(&ctx, None, Precision::Fast).expect("logits");
        let theirs = want.get(common).map_or(engine.tokenizer.eos.unwrap_or(0), |&t| t) as usize;
        let ours = g.output_ids.get(common).map_or(engine.tokenizer.eos.unwrap_or(0), |&t| t) as usize;
        let our_margin = (logits[ours] - logits[theirs]).abs();
        let their_margin = chat["margins"][common].as_f64().expect("margin");
        println!("{user:?}: diverged at {common}: our margin {our_margin:.3}, llama.cpp's {their_margin:.3}");
        assert!(our_margin < 0.35 && their_margin < 0.35, "{user:?}: divergence at step {common} is not a near-tie");
    }
    println!("{identical} of {} chats identical", f["chat"].as_array().map_or(0, Vec::len));
}

#[test]
fn last_position_logits_agree_with_llama_cpp() {
    let Some(path) = reference_model() else { return };
    let engine = Engine::load(path).expect("load");
    let f = fixture();
    for case in f["logits"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let ids = engine.tokenizer.encode(prompt, true, true);
        assert_eq!(ids, self::ids(&case["prompt_ids"]));
        let theirs = read_f32_vector(
            &std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures")
                    .join(case["file"].as_str().expect("file")),
            )
            .expect("npy"),
        )
        .expect("decode");
        let ours = engine.logits(&ids, None, Precision::Fast).expect("logits");
        assert_eq!(ours.len(), theirs.len());
        let argmax =
            |v: &[f32]| v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
        let dot: f64 = ours.iter().zip(&theirs).map(|(a, b)| *a as f64 * *b as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / norm(&ours) / norm(&theirs);
        let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{prompt:?}: cos {cos:.6}, max |diff| {max:.3}");
        assert_eq!(argmax(&ours), argmax(&theirs), "{prompt:?}: top-1");
        assert!(cos >= 0.995, "{prompt:?}: cosine {cos}");
        assert!(max <= 1.5, "{prompt:?}: max abs difference {max}");
    }
}

#[test]
fn exact_mode_matches_f64_reference_with_and_without_adapter() {
    let Some(path) = reference_model() else { return };
    let engine = Engine::load(path).expect("load");
    let ids = engine.tokenizer.encode("<|im_start|>user\nName a color.<|im_end|>\n", true, true);
    let ours = engine.logits(&ids, None, Precision::Exact).expect("logits");
    let reference = reference_logits(&engine.model, &ids, None);
    let d = max_abs_diff(&ours, &reference);
    println!("exact vs f64: max |diff| {d:.5}");
    assert!(d <= 0.01, "exact mode differs from the f64 reference by {d}");

    // A PEFT adapter on every target, Q/K rows in Hugging Face order: applied exactly.
    let dir = tempfile::tempdir().expect("tmp");
    let deltas = write_peft(dir.path(), &engine.model.config, 4, 8.0, &Target::ALL, 7);
    engine.load_adapter("a", dir.path()).expect("adapter");
    let with = engine.logits(&ids, Some("a"), Precision::Exact).expect("logits");
    let reference = reference_logits(&engine.model, &ids, Some(&deltas));
    let moved = max_abs_diff(&with, &reference_logits(&engine.model, &ids, None));
    let d = max_abs_diff(&with, &reference);
    println!("adapter moves logits by up to {moved:.3}; exact+adapter vs f64 merged: {d:.5}");
    assert!(moved > 0.5, "the adapter should change the logits");
    assert!(d <= 0.01, "exact mode with adapter differs from the merged f64 reference by {d}");
}

#[test]
fn batch_of_four_with_different_adapters_equals_each_alone() {
    let Some(path) = reference_model() else { return };
    let engine = Engine::load(path).expect("load");
    let dir = tempfile::tempdir().expect("tmp");
    for (i, targets) in [&Target::ALL[..], &[Target::Q, Target::V], &[Target::Gate, Target::Down]].iter().enumerate() {
        let d = dir.path().join(format!("a{i}"));
        write_peft(&d, &engine.model.config, 8, 16.0, targets, i as u64 + 1);
        engine.load_adapter(format!("a{i}"), &d).expect("adapter");
    }
    let prompts = ["Tell me a joke.", "What is rust?", "Count to five.", "Name a planet."];
    let reqs: Vec<Request> = prompts
        .iter()
        .zip([Some("a0"), Some("a1"), None, Some("a2")])
        .map(|(p, a)| {
            let mut r = Request::new(engine.chat_tokens(&[Message::new("user", *p)]).expect("chat"), 16);
            r.adapter = a.map(str::to_owned);
            r
        })
        .collect();
    let batch = engine.generate_batch(&reqs, &mut |_, _, _| true).expect("batch");
    for (r, b) in reqs.iter().zip(&batch) {
        let alone = engine.generate(r, &mut |_, _| true).expect("alone");
        assert_eq!(alone.output_ids, b.output_ids, "adapter {:?}", r.adapter);
        assert_eq!(alone.text, b.text);
    }
    // The adapters matter: the same prompt under each gives different logits.
    let base = engine.logits(&reqs[0].prompt, None, Precision::Fast).expect("logits");
    let with = engine.logits(&reqs[0].prompt, Some("a0"), Precision::Fast).expect("logits");
    assert!(base.iter().zip(&with).any(|(a, b)| (a - b).abs() > 0.1));
}
