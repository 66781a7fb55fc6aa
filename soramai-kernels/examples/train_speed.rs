//! Training throughput on a model: `cargo run --release --example train_speed -- MODEL [STEPS] [SEQ]`
//! (random token sequences with loss on their second half; for profiling).

use std::sync::Arc;

use soramai_kernels::Model;
use soramai_kernels::lora::Target;
use soramai_kernels::train::{Example, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: train_speed MODEL [STEPS] [SEQ]")?;
    let steps: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let seq: usize = args.next().map_or(Ok(128), |s| s.parse())?;
    let model = Arc::new(Model::load(path)?);
    let vocab = model.config.vocab as u64;
    let cfg = TrainConfig { targets: Target::ALL.to_vec(), max_seq: seq, total_steps: steps, ..TrainConfig::default() };
    let t0 = std::time::Instant::now();
    let mut tr = Trainer::new(model, cfg)?;
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
    let secs = t0.elapsed().as_secs_f64();
    println!("{tokens} tokens in {secs:.2}s: {:.1} tokens/s", tokens as f64 / secs);
    Ok(())
}
