//! Quick prefill/decode speed probe (the comparison with llama.cpp lives in benches/inference.rs).
//! `SPEED_DECODE_ONLY=1` spends nearly all time decoding (the benchmark's 64 tokens after a
//! 128-token prompt, repeated), for profiling.
use soramai_kernels::model::{Lane, Logits};
use soramai_kernels::{Engine, Precision};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: speed MODEL.gguf")?;
    let e = Engine::load(path)?;
    let text = "The quick brown fox ".repeat(40);
    let ids: Vec<u32> = e.tokenizer.encode(&text, false, false).into_iter().take(128).collect();
    // Decode-only mode: 64 tokens after the prompt, then back to the prompt, many times over.
    let repeats = if std::env::var_os("SPEED_DECODE_ONLY").is_some() { 20 } else { 1 };
    let n_decode = 64 * repeats;
    for _ in 0..3 {
        let mut cache = e.model.new_cache();
        let t = Instant::now();
        let mut lanes = [Lane { cache: &mut cache, tokens: &ids, adapter: None, logits: Logits::Last }];
        let mut l = e.model.forward(&mut lanes, Precision::Fast)?;
        let pre = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let first = l.clone();
        for i in 0..n_decode {
            if i > 0 && i % 64 == 0 {
                cache.truncate(ids.len());
                l = first.clone();
            }
            let lg = l.pop().ok_or("no logits")?;
            let tok = lg.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
            let toks = [tok];
            let mut lanes = [Lane { cache: &mut cache, tokens: &toks, adapter: None, logits: Logits::Last }];
            l = e.model.forward(&mut lanes, Precision::Fast)?;
        }
        let dec = t.elapsed().as_secs_f64();
        println!("prefill {:.1} tok/s, decode {:.1} tok/s", 128.0 / pre, n_decode as f64 / dec);
    }
    Ok(())
}
