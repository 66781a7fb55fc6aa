//! Training throughput on a model:
//! `cargo run --release --example train_speed -- MODEL [STEPS] [SEQ] [BACKEND]` (random token
//! sequences with loss on their second half; for profiling). `BACKEND` is `cpu` (the default) or a
//! GPU backend this build includes (`--features wgpu` or `cuda`): then the step runs on the device
//! (`GpuTrainer`, f32 on the exact block values).

use std::sync::Arc;

use soramai_kernels::cube::{Backend, Gpu, GpuTrainer};
use soramai_kernels::lora::Target;
use soramai_kernels::train::{Example, StepStats, TrainConfig, Trainer};
use soramai_kernels::{Model, Result};

/// The trainer on the chosen backend.
enum Either {
    Cpu(Box<Trainer>),
    Gpu(Box<GpuTrainer>),
}

impl Either {
    fn loss(&self, batch: &[Example]) -> Result<f32> {
        match self {
            Either::Cpu(t) => t.loss(batch),
            Either::Gpu(t) => t.loss(batch),
        }
    }
    fn step(&mut self, batch: &[Example]) -> Result<StepStats> {
        match self {
            Either::Cpu(t) => t.step(batch),
            Either::Gpu(t) => t.step(batch),
        }
    }
    /// Waits for the device (a step's last updates are queued when it returns).
    fn finish(&mut self) -> Result<()> {
        match self {
            Either::Cpu(_) => Ok(()),
            Either::Gpu(t) => t.gpu().sync(),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: train_speed MODEL [STEPS] [SEQ]")?;
    let steps: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let seq: usize = args.next().map_or(Ok(128), |s| s.parse())?;
    let backend: Backend = args.next().as_deref().unwrap_or("cpu").parse()?;
    let model = Arc::new(Model::load(path)?);
    let vocab = model.config.vocab as u64;
    let cfg = TrainConfig { targets: Target::ALL.to_vec(), max_seq: seq, total_steps: steps, ..TrainConfig::default() };
    let t0 = std::time::Instant::now();
    let mut tr = match backend {
        Backend::Cpu => Either::Cpu(Box::new(Trainer::new(model, cfg)?)),
        gpu => {
            let gpu = Gpu::new(gpu)?;
            eprintln!("device: {} ({backend})", gpu.name());
            Either::Gpu(Box::new(GpuTrainer::new(gpu, model, cfg)?))
        }
    };
    eprintln!("setup {:.2}s", t0.elapsed().as_secs_f64());
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let batch: Vec<Example> = (0..4)
        .map(|_| {
            let tokens = (0..seq)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab) as u32
                })
                .collect();
            let weights = (0..seq).map(|i| if i >= seq / 2 { 1.0 } else { 0.0 }).collect();
            Example { tokens, weights }
        })
        .collect();
    let t0 = std::time::Instant::now();
    let loss = tr.loss(&batch)?;
    eprintln!("forward only (loss {loss:.3}): {:.1} tokens/s", (4 * seq) as f64 / t0.elapsed().as_secs_f64());
    let t0 = std::time::Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        let st = tr.step(&batch)?;
        tokens += st.tokens;
        eprintln!("loss {:.3}", st.loss);
    }
    tr.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    println!("{backend}: {tokens} tokens in {secs:.2}s: {:.1} tokens/s", tokens as f64 / secs);
    Ok(())
}
