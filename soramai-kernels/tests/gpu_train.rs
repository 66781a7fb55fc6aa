//! The QLoRA trainer's step on each available GPU backend (`GpuTrainer`) against the CPU trainer
//! in `exact` precision (itself checked against finite differences in `train.rs`): the loss and
//! every pair's gradients over packed sequences of several examples, on tiny models of each
//! weight format (Qwen2's biases included); steps that follow the CPU's; checkpoints that move
//! between the two; activation checkpointing and repeated runs that change nothing; hostile
//! batches refused with nothing changed; and the reference model's step. Missing backends are
//! skipped with the reason printed (see `gpu_ops.rs` for `SORAMAI_REQUIRE_GPU`).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{reference_model, tiny_train_model, train_example};
use soramai_kernels::cube::GpuTrainer;
use soramai_kernels::gguf::Gguf;
use soramai_kernels::lora::Target;
use soramai_kernels::model::Model;
use soramai_kernels::quant::GgmlType;
use soramai_kernels::train::{Example, TrainConfig, Trainer};
use soramai_kernels::{Error, Precision};

type Grads = BTreeMap<(usize, Target), (Vec<f32>, Vec<f32>)>;

fn cfg(targets: &[Target]) -> TrainConfig {
    TrainConfig {
        rank: 4,
        alpha: 8.0,
        targets: targets.to_vec(),
        learning_rate: 1e-2,
        total_steps: 40,
        warmup_steps: 2,
        max_seq: 24,
        seed: 9,
        precision: Precision::Exact,
        ..TrainConfig::default()
    }
}

/// Relative L2 distance of `got` from `want`.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got.iter().zip(want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

fn assert_grads_close(what: &str, got: &Grads, want: &Grads, tol: f64) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: pairs");
    for (k, (wa, wb)) in want {
        let (ga, gb) = &got[k];
        for (name, g, w) in [("dA", ga, wa), ("dB", gb, wb)] {
            assert!(w.iter().any(|v| *v != 0.0), "{what} {k:?} {name}: the CPU gradient is zero");
            let e = rel_l2(g, w);
            assert!(e < tol, "{what} {k:?} {name}: relative error {e:.2e}");
        }
    }
}

/// A checkpoint's tensors by name (its metadata's key order is not fixed).
fn tensors(state: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let st = safetensors::SafeTensors::deserialize(state).expect("state");
    st.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect()
}

/// A CPU trainer one step in (so every `B` is non-zero) and its checkpoint.
fn stepped(model: &Arc<Model>, config: TrainConfig, batch: &[Example]) -> (Trainer, Vec<u8>) {
    let mut cpu = Trainer::new(Arc::clone(model), config).expect("trainer");
    cpu.step(batch).expect("first step");
    let state = cpu.save_state().expect("state");
    (cpu, state)
}

#[test]
fn gradients_and_loss_match_the_cpu_trainer_on_every_weight_format() {
    for gpu in common::gpu_devices() {
        for (arch, ty) in [
            ("llama", GgmlType::Q8_0),
            ("qwen2", GgmlType::Q4_0),
            ("llama", GgmlType::Q4_1),
            ("llama", GgmlType::Q5_0),
            ("llama", GgmlType::F16),
        ] {
            let model = tiny_train_model(arch, ty);
            let vocab = model.config.vocab;
            // Three packed sequences of max_seq 24: ragged lengths, several examples per sequence.
            let batch: Vec<Example> =
                [(71, 12), (72, 9), (73, 20), (74, 5), (75, 17)].map(|(s, n)| train_example(s, n, vocab)).into();
            let (cpu, state) = stepped(&model, cfg(&Target::ALL), &batch);
            let mut g = GpuTrainer::from_state(gpu.clone(), Arc::clone(&model), &state).expect("gpu trainer");
            assert_eq!(g.steps_done(), 1);
            let (cpu_loss, cpu_grads) = cpu.gradients(&batch).expect("cpu");
            let (gpu_loss, gpu_grads) = g.gradients(&batch).expect("gpu");
            let what = format!("{arch} {ty:?}");
            assert!((gpu_loss - cpu_loss).abs() <= 1e-4 * cpu_loss.abs(), "{what}: loss {gpu_loss} vs {cpu_loss}");
            assert_grads_close(&what, &gpu_grads, &cpu_grads, 2e-3);
            assert!((g.loss(&batch).expect("loss") - cpu_loss).abs() <= 1e-4 * cpu_loss.abs());
            // Gradients do not leak into the next call.
            let (_, again) = g.gradients(&batch).expect("gpu again");
            assert_eq!(again, gpu_grads, "{what}: a second call differs");
        }
    }
}

#[test]
fn steps_follow_the_cpu_and_checkpoints_move_both_ways() {
    for gpu in common::gpu_devices() {
        let model = tiny_train_model("llama", GgmlType::Q8_0);
        let vocab = model.config.vocab;
        let data: Vec<Example> = (0..6).map(|i| train_example(80 + i, 10 + i as usize, vocab)).collect();
        let config = cfg(&[Target::Q, Target::V, Target::O, Target::Down]);
        let mut cpu = Trainer::new(Arc::clone(&model), config.clone()).expect("cpu");
        let mut g = GpuTrainer::new(gpu.clone(), Arc::clone(&model), config).expect("gpu");
        assert_eq!(g.trainable_parameters(), cpu.trainable_parameters());
        // The same seed gives the same initial adapter.
        assert_eq!(g.adapter().expect("adapter").layers, cpu.adapter().layers);
        let mut losses = Vec::new();
        for step in 0..6 {
            let batch = [data[step % 6].clone(), data[(step + 1) % 6].clone(), data[(step + 3) % 6].clone()];
            let (c, s) = (cpu.step(&batch).expect("cpu step"), g.step(&batch).expect("gpu step"));
            assert_eq!((s.step, s.tokens, s.trained_tokens), (c.step, c.tokens, c.trained_tokens));
            assert_eq!(s.learning_rate, c.learning_rate);
            assert!((s.loss - c.loss).abs() <= 2e-3 * c.loss.abs(), "step {step}: loss {} vs {}", s.loss, c.loss);
            assert!(
                (s.grad_norm - c.grad_norm).abs() <= 1e-2 * c.grad_norm,
                "step {step}: grad norm {} vs {}",
                s.grad_norm,
                c.grad_norm
            );
            losses.push(s.loss);
        }
        let eval: Vec<Example> = data.clone();
        assert!(g.loss(&eval).expect("loss") < losses[0], "six steps lower the loss: {losses:?}");
        // The trained pairs agree with the CPU's.
        let (ga, ca) = (g.adapter().expect("adapter"), cpu.adapter());
        for (l, (gl, cl)) in ga.layers.iter().zip(&ca.layers).enumerate() {
            for (t, cp) in cl {
                let gp = &gl[t];
                let e = rel_l2(&gp.b, &cp.b);
                assert!(e < 5e-2, "layer {l} {t:?}: B differs by {e:.2e}");
            }
        }
        // The GPU's checkpoint resumes on the CPU, and the CPU's on the GPU, where they stopped.
        let gstate = g.save_state().expect("gpu state");
        let resumed = Trainer::load_state(Arc::clone(&model), &gstate).expect("cpu resumes");
        assert_eq!(resumed.steps_done(), 6);
        assert_eq!(resumed.adapter().layers, g.adapter().expect("adapter").layers);
        let cstate = cpu.save_state().expect("cpu state");
        let mut back = GpuTrainer::from_state(gpu.clone(), Arc::clone(&model), &cstate).expect("gpu resumes");
        assert_eq!(back.steps_done(), 6);
        assert_eq!(back.adapter().expect("adapter").layers, cpu.adapter().layers);
        let batch = [data[0].clone(), data[2].clone()];
        let (c, s) = (cpu.step(&batch).expect("cpu"), back.step(&batch).expect("gpu"));
        assert_eq!(s.step, 7);
        assert!((s.loss - c.loss).abs() <= 2e-3 * c.loss.abs());
    }
}

#[test]
fn runs_repeat_exactly_and_activation_checkpointing_changes_nothing() {
    for gpu in common::gpu_devices() {
        let model = tiny_train_model("qwen2", GgmlType::Q8_0);
        let vocab = model.config.vocab;
        let batch: Vec<Example> = (0..4).map(|i| train_example(90 + i, 8 + 3 * i as usize, vocab)).collect();
        let config = cfg(&[Target::K, Target::O, Target::Gate, Target::Up]);
        let run = |config: TrainConfig| {
            let mut g = GpuTrainer::new(gpu.clone(), Arc::clone(&model), config).expect("gpu");
            let losses: Vec<f32> = (0..3).map(|_| g.step(&batch).expect("step").loss).collect();
            (losses, g.save_state().expect("state"))
        };
        let (l1, s1) = run(config.clone());
        let (l2, s2) = run(config.clone());
        assert_eq!(l1, l2, "the same seed and data give the same losses");
        assert!(tensors(&s1) == tensors(&s2), "and the same state, bit for bit");
        let (l3, s3) = run(TrainConfig { checkpoint_activations: true, ..config.clone() });
        assert_eq!(l3, l1, "recomputed layers give the same numbers");
        assert!(tensors(&s3) == tensors(&s1), "and the same state");
    }
}

#[test]
fn hostile_batches_are_refused_and_change_nothing() {
    for gpu in common::gpu_devices() {
        let model = tiny_train_model("llama", GgmlType::Q4_0);
        let vocab = model.config.vocab;
        let good = train_example(100, 10, vocab);
        let mut g = GpuTrainer::new(gpu.clone(), Arc::clone(&model), cfg(&[Target::Q, Target::Up])).expect("gpu");
        g.step(std::slice::from_ref(&good)).expect("a good step");
        let before = g.save_state().expect("state");
        let bad_token = Example { tokens: vec![1, 2, vocab as u32, 3], weights: vec![1.0; 4] };
        let short = Example { tokens: vec![1], weights: vec![1.0] };
        let mismatched = Example { tokens: good.tokens.clone(), weights: vec![1.0; 3] };
        let no_loss = Example { tokens: good.tokens.clone(), weights: vec![0.0; good.tokens.len()] };
        let nan_weight = Example { tokens: good.tokens.clone(), weights: vec![f32::NAN; good.tokens.len()] };
        let too_long = train_example(101, 30, vocab);
        for batch in [
            vec![],
            vec![good.clone(), bad_token],
            vec![short],
            vec![mismatched],
            vec![no_loss],
            vec![nan_weight],
            vec![too_long],
        ] {
            assert!(matches!(g.step(&batch), Err(Error::Training(_))), "accepted {batch:?}");
            assert!(matches!(g.gradients(&batch), Err(Error::Training(_))));
            assert!(matches!(g.loss(&batch), Err(Error::Training(_))));
        }
        assert_eq!(g.steps_done(), 1);
        assert!(tensors(&g.save_state().expect("state")) == tensors(&before), "refused batches changed the state");
        assert!(
            GpuTrainer::new(gpu.clone(), Arc::clone(&model), TrainConfig { rank: 0, ..cfg(&[Target::Q]) }).is_err()
        );
        assert!(GpuTrainer::from_state(gpu.clone(), Arc::clone(&model), b"not a checkpoint").is_err());
    }
}

#[test]
fn the_reference_model_steps_as_on_the_cpu() {
    let Some(path) = reference_model() else { return };
    let devices = common::gpu_devices();
    if devices.is_empty() {
        return;
    }
    let model = Arc::new(Model::from_gguf(Arc::new(Gguf::open(&path).expect("gguf"))).expect("model"));
    let vocab = model.config.vocab;
    // Two packed sequences, few tokens: software Vulkan runs the model's products at well under a
    // GFLOP/s.
    let batch: Vec<Example> = [(110, 14), (111, 10)].map(|(s, n)| train_example(s, n, vocab)).into();
    let config = TrainConfig { max_seq: 16, ..cfg(&Target::ALL) };
    let (cpu, state) = stepped(&model, config, &batch);
    let (cpu_loss, cpu_grads) = cpu.gradients(&batch).expect("cpu");
    for gpu in devices {
        let mut g = GpuTrainer::from_state(gpu, Arc::clone(&model), &state).expect("gpu trainer");
        let (gpu_loss, gpu_grads) = g.gradients(&batch).expect("gpu");
        assert!((gpu_loss - cpu_loss).abs() <= 1e-3 * cpu_loss.abs(), "loss {gpu_loss} vs {cpu_loss}");
        assert_grads_close("reference model", &gpu_grads, &cpu_grads, 1e-2);
    }
}
