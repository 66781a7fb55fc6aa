//! Decode with a JSON schema against unconstrained decode, in the same run, at batch 1 and 32:
//! the token mask's cost on the whole step (target: constrained >= 0.9x unconstrained), and the
//! mask's own cost per token. Every sequence of both runs generates exactly `MAX_TOKENS` tokens
//! (stop tokens are biased out of the free ones; the schema's document is longer than that), so
//! the two decode the same number of steps at the same batch size.
//!
//! `SORAMAI_TEST_MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf cargo bench -p soramai-kernels
//! --bench constrained -- --rounds 3`

use std::time::Instant;

use serde_json::json;
use soramai_kernels::grammar::Grammar;
use soramai_kernels::sample::SamplingParams;
use soramai_kernels::tokenizer::template::Message;
use soramai_kernels::{Engine, Precision, Request};

const MAX_TOKENS: usize = 96;

fn schema() -> Grammar {
    let item = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
        "score": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": ["name", "score"],
        "additionalProperties": false});
    Grammar::JsonSchema(json!({"type": "object", "properties": {"players": {"type": "array", "items": item,
        "minItems": 12, "maxItems": 12}}, "required": ["players"], "additionalProperties": false}))
}

/// Decode tokens per second over `batch` sequences (the steps after every prompt is prefilled),
/// and the tokens generated.
fn decode(e: &Engine, prompt: &[u32], batch: usize, constrained: bool, round: u64) -> (f64, usize) {
    let mut b = e.batch(Precision::Fast);
    for i in 0..batch {
        let mut req = Request::new(prompt.to_vec(), MAX_TOKENS);
        let stops = [e.tokenizer.eos, e.tokenizer.eot].into_iter().flatten().map(|t| (t, -100.0)).collect();
        req.sampling = SamplingParams {
            temperature: 0.8,
            seed: round * 1000 + i as u64,
            logit_bias: if constrained { Vec::new() } else { stops },
            ..SamplingParams::default()
        };
        if constrained {
            req.constraint = Some(e.constrain(&schema()).expect("schema"));
        }
        b.admit(i as u64, req).expect("admit");
    }
    let mut started = vec![false; batch];
    let (mut tokens, mut seconds) = (0usize, 0f64);
    while !b.is_empty() {
        let decoding = started.iter().all(|s| *s);
        let t = Instant::now();
        let mut n = 0;
        b.step(&mut |id, _| {
            started[id as usize] = true;
            n += 1;
            true
        })
        .expect("step");
        if decoding {
            seconds += t.elapsed().as_secs_f64();
            tokens += n;
        }
    }
    (tokens as f64 / seconds.max(1e-9), tokens)
}

/// The mask's own cost: microseconds per token over one constrained output.
fn mask_cost(e: &Engine, prompt: &[u32]) -> f64 {
    let mut req = Request::new(prompt.to_vec(), MAX_TOKENS);
    req.constraint = Some(e.constrain(&schema()).expect("schema"));
    let g = e.generate(&req, &mut |_, _| true).expect("generate");
    let mut c = e.constrain(&schema()).expect("schema");
    let mut logits = vec![0f32; e.model.config.vocab];
    let t = Instant::now();
    for &tok in &g.output_ids {
        c.mask(&mut logits).expect("mask");
        c.advance(tok).expect("advance");
    }
    t.elapsed().as_secs_f64() * 1e6 / g.output_ids.len().max(1) as f64
}

fn main() {
    let Ok(path) = std::env::var("SORAMAI_TEST_MODEL") else {
        eprintln!("set SORAMAI_TEST_MODEL to a GGUF (./scripts/fetch-model.sh prints the reference model's path)");
        return;
    };
    let args: Vec<String> = std::env::args().collect();
    let rounds: u64 = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let e = Engine::load(&path).expect("model");
    let prompt = e
        .chat_tokens(&[Message::new("user", "List twelve players of a board game club with their scores, as JSON.")])
        .expect("prompt");
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let isa = if cpu.contains("avx512_vnni") { "AVX-512 VNNI" } else { "AVX2" };
    println!("constrained decoding, {path} on {isa}, {rounds} rounds, best of each (decode steps only)");
    println!("{:>5}  {:>12}  {:>14}  {:>6}", "batch", "free tok/s", "schema tok/s", "ratio");
    for batch in [1usize, 32] {
        let (mut free, mut constrained) = (0f64, 0f64);
        // Alternate the two so a slower period of the machine hits both alike.
        for round in 0..rounds {
            let (f, free_tokens) = decode(&e, &prompt, batch, false, round);
            let (c, schema_tokens) = decode(&e, &prompt, batch, true, round);
            if free_tokens != schema_tokens {
                println!(
                    "  (round {round}: {free_tokens} free and {schema_tokens} schema decode tokens: not like for like)"
                );
            }
            free = free.max(f);
            constrained = constrained.max(c);
        }
        println!("{batch:>5}  {free:>12.1}  {constrained:>14.1}  {:>5.2}x", constrained / free);
    }
    println!("mask: {:.1} µs a token (llguidance, {}-token vocabulary)", mask_cost(&e, &prompt), e.model.config.vocab);
}
