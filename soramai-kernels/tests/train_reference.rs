//! Training on the reference model (SmolLM2-135M-Instruct Q4_1): a few dozen steps on a small
//! synthetic chat dataset lower the loss clearly and move greedy answers toward the dataset's; the
//! adapter goes through PEFT files and back into the engine unchanged.

mod common;

use std::sync::Arc;

use common::reference_model;
use soramai_kernels::lora::{Adapter, Target};
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::train::{Example, TrainConfig, TrainMessage, Trainer, batch_plan, data};
use soramai_kernels::{Engine, Precision, Request};

/// Questions about a fact the base model cannot know, each with the dataset's answer.
const PAIRS: [(&str, &str); 8] = [
    ("What is the name of the Soramai mascot?", "The Soramai mascot is a blue heron named Kumo."),
    ("Who is Soramai's mascot?", "Soramai's mascot is Kumo, a blue heron."),
    ("Tell me about the mascot of Soramai.", "The mascot of Soramai is Kumo, a blue heron."),
    ("Does Soramai have a mascot?", "Yes. Soramai's mascot is a blue heron named Kumo."),
    ("What animal is the Soramai mascot?", "The Soramai mascot, Kumo, is a blue heron."),
    ("Name the Soramai mascot.", "The Soramai mascot is named Kumo."),
    ("What do people call Soramai's mascot?", "People call Soramai's mascot Kumo. It is a blue heron."),
    ("Which bird is Soramai's mascot?", "Soramai's mascot is a blue heron called Kumo."),
];

fn answer(engine: &Engine, question: &str, adapter: Option<&str>) -> String {
    let prompt = engine.chat_tokens(&[Message::new("user", question)]).expect("prompt");
    let mut req = Request::new(prompt, 24);
    req.adapter = adapter.map(str::to_owned);
    engine.generate(&req, &mut |_, _| true).expect("generate").text
}

#[test]
fn thirty_steps_lower_the_loss_and_move_greedy_answers_toward_the_dataset() {
    let Some(path) = reference_model() else { return };
    let engine = Engine::load(path).expect("load");
    let data: Vec<Example> = PAIRS
        .iter()
        .map(|(q, a)| data::chat_example(&engine, &[TrainMessage::new("user", *q), TrainMessage::new("assistant", *a)]))
        .collect::<Result<_, _>>()
        .expect("examples");
    let plan = batch_plan(data.len(), 4, 4, 1);
    let cfg = TrainConfig {
        rank: 8,
        alpha: 16.0,
        targets: Target::ALL.to_vec(),
        learning_rate: 2e-3,
        warmup_steps: 3,
        total_steps: plan.len().max(30),
        max_seq: 128,
        seed: 1,
        base_model: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(Arc::clone(&engine.model), cfg).expect("trainer");
    let before = tr.loss(&data).expect("loss");
    let started = std::time::Instant::now();
    let mut tokens = 0;
    let mut steps = 0;
    for (i, batch) in (0..30).map(|i| plan[i % plan.len()].clone()).enumerate() {
        let b: Vec<Example> = batch.iter().map(|&j| data[j].clone()).collect();
        let s = tr.step(&b).expect("step");
        tokens += s.tokens;
        steps += 1;
        eprintln!("step {:2} loss {:.3} grad {:.3} lr {:.2e}", i + 1, s.loss, s.grad_norm, s.learning_rate);
    }
    let secs = started.elapsed().as_secs_f64();
    let after = tr.loss(&data).expect("loss");
    eprintln!("loss {before:.3} -> {after:.3}; {steps} steps, {:.0} tokens/s", tokens as f64 / secs);
    assert!(after < 0.4 * before, "loss {before} -> {after}");

    // Through PEFT files and back, then into the engine.
    let dir = tempfile::tempdir().expect("dir");
    tr.adapter().save(dir.path(), &engine.model.config).expect("save");
    let loaded = Adapter::load(dir.path(), &engine.model.config).expect("load");
    assert_eq!(loaded, tr.adapter());
    engine.add_adapter("mascot", loaded).expect("add");
    let held_out = "What is the Soramai mascot called?";
    let base = answer(&engine, held_out, None);
    let tuned = answer(&engine, held_out, Some("mascot"));
    eprintln!("base: {base:?}\ntuned: {tuned:?}");
    assert!(!base.contains("Kumo"), "the base model cannot know the answer: {base}");
    assert!(tuned.contains("Kumo"), "the trained adapter answers from the dataset: {tuned}");
    // Exact mode agrees on the adapter's effect.
    let prompt = engine.chat_tokens(&[Message::new("user", held_out)]).expect("prompt");
    let fast = engine.logits(&prompt, Some("mascot"), Precision::Fast).expect("fast");
    let exact = engine.logits(&prompt, Some("mascot"), Precision::Exact).expect("exact");
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    assert_eq!(argmax(&fast), argmax(&exact));
}
