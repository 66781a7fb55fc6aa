//! Prefill and decode speed of a GGUF against llama.cpp (llama-cpp-python) on the same file, in the
//! same run, alternating engines run by run; both processes' peak RSS against the file's weight
//! bytes plus the KV cache; and this machine's memory bandwidth.
//!
//! `./scripts/bench-inference.sh` runs it on the reference model, `./scripts/bench-families.sh` on
//! K-quant files (Llama 3.2 1B's shape, Gemma 3 270M). By hand:
//! `SORAMAI_TEST_MODEL=M.gguf LLAMA_PYTHON=.cache/llama-venv/bin/python cargo bench -p
//! soramai-kernels --bench inference -- --rounds 7`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use soramai_kernels::model::{Lane, Logits};
use soramai_kernels::{Engine, Precision};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 64;
const THREADS: usize = 2;

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

/// This process's peak resident set (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// One run of ours: (prefill seconds, decode seconds, tokens, KV-cache bytes).
fn ours(e: &Engine, ids: &[u32]) -> (f64, f64, Vec<u32>, usize) {
    let mut cache = e.model.new_cache();
    let t0 = Instant::now();
    let mut lanes = [Lane { cache: &mut cache, tokens: ids, adapter: None, logits: Logits::Last }];
    let mut logits = e.model.forward(&mut lanes, Precision::Fast).expect("prefill").remove(0);
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out = Vec::with_capacity(DECODE_TOKENS);
    for _ in 0..DECODE_TOKENS {
        let tok = argmax(&logits);
        out.push(tok);
        let toks = [tok];
        let mut lanes = [Lane { cache: &mut cache, tokens: &toks, adapter: None, logits: Logits::Last }];
        logits = e.model.forward(&mut lanes, Precision::Fast).expect("decode").remove(0);
    }
    (prefill, t1.elapsed().as_secs_f64(), out, cache.bytes())
}

/// Read bandwidth with `THREADS` threads summing a 1 GiB buffer (best of 3), in GB/s.
fn memory_bandwidth() -> f64 {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(words / THREADS)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let Ok(model) = std::env::var("SORAMAI_TEST_MODEL") else {
        eprintln!("set SORAMAI_TEST_MODEL (scripts/fetch-model.sh) — or run scripts/bench-inference.sh");
        return;
    };
    let _ = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global();
    let e = Engine::load(&model).expect("model");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../soramai-rag/tests/data/handbook.md"))
        .expect("prompt text");
    let ids: Vec<u32> = e.tokenizer.encode(&text, false, false).into_iter().take(PROMPT_TOKENS).collect();
    let weight_bytes: usize = e
        .model
        .layers
        .iter()
        .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|m| m.bytes().len()).sum::<usize>())
        .sum::<usize>()
        + e.model.output.bytes().len();

    let python = std::env::var("LLAMA_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut peer = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/llama_cpp_peer.py"))
        .arg(&model)
        .arg(THREADS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the llama.cpp peer (LLAMA_PYTHON with llama-cpp-python)");
    let mut to_peer = peer.stdin.take().expect("stdin");
    let mut from_peer = BufReader::new(peer.stdout.take().expect("stdout"));
    let mut line = String::new();
    from_peer.read_line(&mut line).expect("peer ready");
    assert!(line.contains("ready"), "peer failed to start: {line}");
    let peer_rss = std::cell::Cell::new(0u64);
    let mut theirs = |ids: &[u32]| -> (f64, f64, Vec<u32>) {
        writeln!(to_peer, "{}", serde_json::json!({"ids": ids, "decode": DECODE_TOKENS})).expect("send");
        let mut l = String::new();
        from_peer.read_line(&mut l).expect("read");
        let v: serde_json::Value = serde_json::from_str(&l).expect("peer json");
        peer_rss.set(peer_rss.get().max(v["peak_rss"].as_u64().unwrap_or(0)));
        let toks = v["tokens"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_u64()).map(|t| t as u32).collect())
            .unwrap_or_default();
        (v["prefill_s"].as_f64().unwrap_or(f64::NAN), v["decode_s"].as_f64().unwrap_or(f64::NAN), toks)
    };

    // Warm-up of both, then alternate (ours first on even rounds, theirs first on odd).
    let _ = ours(&e, &ids);
    let _ = theirs(&ids);
    let (mut pre, mut dec, mut pre_ratio, mut dec_ratio) = (vec![[0f64; 2]; 0], vec![[0f64; 2]; 0], vec![], vec![]);
    let mut same_tokens = 0;
    let mut kv_bytes = 0;
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            let a = ours(&e, &ids);
            (a, theirs(&ids))
        } else {
            let b = theirs(&ids);
            (ours(&e, &ids), b)
        };
        let p = [PROMPT_TOKENS as f64 / a.0, PROMPT_TOKENS as f64 / b.0];
        let d = [DECODE_TOKENS as f64 / a.1, DECODE_TOKENS as f64 / b.1];
        println!(
            "round {r}: prefill {:.1} vs {:.1} tok/s ({:.2}x), decode {:.1} vs {:.1} tok/s ({:.2}x)",
            p[0],
            p[1],
            p[0] / p[1],
            d[0],
            d[1],
            d[0] / d[1]
        );
        pre_ratio.push(p[0] / p[1]);
        dec_ratio.push(d[0] / d[1]);
        pre.push(p);
        dec.push(d);
        same_tokens += usize::from(a.2 == b.2);
        kv_bytes = kv_bytes.max(a.3);
    }
    let _ = peer.kill();
    let _ = peer.wait();
    // Before the bandwidth probe, whose 1 GiB buffer would count.
    let our_rss = peak_rss();
    let file_bytes = std::fs::metadata(&model).map_or(0, |m| m.len());
    let bw = memory_bandwidth();
    let m = |v: &[[f64; 2]], i: usize| median(v.iter().map(|x| x[i]).collect());
    println!();
    println!("model: {model}");
    println!(
        "threads: {THREADS}; prompt {PROMPT_TOKENS} tokens; decode {DECODE_TOKENS} tokens; {rounds} rounds (medians)"
    );
    println!("| | soramai | llama.cpp | ratio (median of per-round ratios) |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| prefill tok/s | {:.1} | {:.1} | {:.2}x |", m(&pre, 0), m(&pre, 1), median(pre_ratio));
    println!("| decode tok/s | {:.1} | {:.1} | {:.2}x |", m(&dec, 0), m(&dec, 1), median(dec_ratio));
    println!();
    println!("greedy decode identical to llama.cpp's in {same_tokens} of {rounds} rounds");
    let floor = file_bytes as f64 + kv_bytes as f64;
    println!(
        "peak RSS: soramai {:.0} MB, llama.cpp {:.0} MB; file {:.0} MB + our KV cache {:.1} MB = {:.0} MB \
         (soramai at {:.2}x of that)",
        our_rss as f64 / 1e6,
        peer_rss.get() as f64 / 1e6,
        file_bytes as f64 / 1e6,
        kv_bytes as f64 / 1e6,
        floor / 1e6,
        our_rss as f64 / floor
    );
    println!(
        "memory read bandwidth ({THREADS} threads): {bw:.1} GB/s; weights read per decoded token: {:.1} MB",
        weight_bytes as f64 / 1e6
    );
    println!(
        "bandwidth bound on decode: {:.0} tok/s (ours reaches {:.0}%)",
        bw * 1e9 / weight_bytes as f64,
        100.0 * m(&dec, 0) / (bw * 1e9 / weight_bytes as f64)
    );
}
