//! GPU throughput of the cubecl backend on models written by the project's GGUF writer with
//! random weights (speed does not depend on the values):
//!
//! `cargo run --release --features wgpu -p soramai-kernels --example gpu_bench -- [wgpu|cuda] [MODEL...]`
//!
//! MODEL is `smollm2-q4_1` (the reference model's shape and formats: Q4_1 blocks, tied Q8_0
//! embeddings), `llama1b-q4_0` or `llama1b-q4_1` (Llama 3.2 1B's shape). For each: prefill of 512
//! tokens, decode at batch 1 (the host in the loop, then the loop on the device), and batch 32
//! (prefill of 32 × 128 tokens, then decode on the device) without adapters and with 8 rank-16
//! adapters on all seven projections, one per four sequences. Prints JSON lines (batch 1 first,
//! with the launches per decode step and layer, the host's waits for the device per token, and the
//! bytes-moved floor at the device's copy bandwidth; then the whole shape); `benches/gpu.py` runs
//! it next to PyTorch.

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn main() {
    eprintln!("gpu_bench needs a GPU backend: build with --features wgpu (or cuda)");
    std::process::exit(2);
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    bench::main()
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod bench {
    use std::sync::Arc;
    use std::time::Instant;

    use soramai_kernels::cube::{Backend, DECODE_CHUNK, Gpu, GpuDecode, GpuLane, GpuModel, GpuOptions};
    use soramai_kernels::gguf::{Gguf, GgufWriter, Value};
    use soramai_kernels::lora::{Adapter, AdapterConfig, LoraPair, Target};
    use soramai_kernels::model::{Logits, Model};
    use soramai_kernels::quant::GgmlType;
    use soramai_kernels::tokenizer::TokenId;

    struct Shape {
        name: &'static str,
        d: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        ff: usize,
        vocab: usize,
        ty: GgmlType,
        embd_ty: GgmlType,
    }

    const SHAPES: [Shape; 3] = [
        Shape {
            name: "smollm2-q4_1",
            d: 576,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            ff: 1536,
            vocab: 49152,
            ty: GgmlType::Q4_1,
            embd_ty: GgmlType::Q8_0,
        },
        Shape {
            name: "llama1b-q4_0",
            d: 2048,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            ff: 8192,
            vocab: 128_256,
            ty: GgmlType::Q4_0,
            embd_ty: GgmlType::Q4_0,
        },
        Shape {
            name: "llama1b-q4_1",
            d: 2048,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            ff: 8192,
            vocab: 128_256,
            ty: GgmlType::Q4_1,
            embd_ty: GgmlType::Q4_1,
        },
    ];

    fn random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn write_model(s: &Shape) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let hd = s.d / s.heads;
        let mut w = GgufWriter::new();
        let k = |x: &str| format!("llama.{x}");
        w.set("general.architecture", Value::String("llama".into()));
        w.set(k("block_count"), Value::U32(s.layers as u32));
        w.set(k("context_length"), Value::U32(8192));
        w.set(k("embedding_length"), Value::U32(s.d as u32));
        w.set(k("feed_forward_length"), Value::U32(s.ff as u32));
        w.set(k("attention.head_count"), Value::U32(s.heads as u32));
        w.set(k("attention.head_count_kv"), Value::U32(s.kv_heads as u32));
        w.set(k("rope.freq_base"), Value::F32(10000.0));
        w.set(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
        let mut seed = 0;
        let mut mat = |w: &mut GgufWriter, name: String, rows: usize, cols: usize, ty: GgmlType| {
            seed += 1;
            let scale = 1.0 / (cols as f32).sqrt();
            w.add_f32(name, &[cols as u64, rows as u64], ty, &random(seed, rows * cols, scale)).map(|_| ())
        };
        mat(&mut w, "token_embd.weight".into(), s.vocab, s.d, s.embd_ty)?;
        for l in 0..s.layers {
            let n = |x: &str| format!("blk.{l}.{x}");
            w.add_f32(n("attn_norm.weight"), &[s.d as u64], GgmlType::F32, &vec![1.0; s.d])?;
            w.add_f32(n("ffn_norm.weight"), &[s.d as u64], GgmlType::F32, &vec![1.0; s.d])?;
            mat(&mut w, n("attn_q.weight"), s.heads * hd, s.d, s.ty)?;
            mat(&mut w, n("attn_k.weight"), s.kv_heads * hd, s.d, s.ty)?;
            mat(&mut w, n("attn_v.weight"), s.kv_heads * hd, s.d, s.ty)?;
            mat(&mut w, n("attn_output.weight"), s.d, s.heads * hd, s.ty)?;
            mat(&mut w, n("ffn_gate.weight"), s.ff, s.d, s.ty)?;
            mat(&mut w, n("ffn_up.weight"), s.ff, s.d, s.ty)?;
            mat(&mut w, n("ffn_down.weight"), s.d, s.ff, s.ty)?;
        }
        w.add_f32("output_norm.weight", &[s.d as u64], GgmlType::F32, &vec![1.0; s.d])?;
        Ok(w.to_bytes())
    }

    fn adapter(model: &Model, seed: u64, rank: usize) -> Adapter {
        let c = &model.config;
        let layers = (0..c.n_layer)
            .map(|l| {
                Target::ALL
                    .iter()
                    .map(|&t| {
                        let (rows, cols) = t.shape(c);
                        let s = seed * 1000 + l as u64 * 10 + t as u64;
                        let pair = LoraPair {
                            a: random(s, rank * cols, 0.02),
                            b: random(s + 7, rows * rank, 0.02),
                            rank,
                            scale: 2.0,
                        };
                        (t, pair)
                    })
                    .collect()
            })
            .collect();
        let config = AdapterConfig {
            r: rank,
            lora_alpha: 2.0 * rank as f32,
            target_modules: Target::ALL.iter().map(|t| t.module().to_owned()).collect(),
            use_rslora: false,
            fan_in_fan_out: false,
            peft_type: "LORA".into(),
            base_model_name_or_path: None,
            task_type: None,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
        };
        Adapter { config, layers }
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn run(gpu: &Gpu, s: &Shape) -> Result<(), Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        let bytes = write_model(s)?;
        let model = Arc::new(Model::from_gguf(Arc::new(Gguf::from_bytes(bytes)?))?);
        let written = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let g = GpuModel::new(gpu.clone(), Arc::clone(&model), GpuOptions { kv_tokens: 32 * 256 + 1024, page: 16 })?;
        let upload = t0.elapsed().as_secs_f64();
        for i in 0..8 {
            g.add_adapter(format!("a{i}"), adapter(&model, i + 1, 16))?;
        }
        let vocab = model.config.vocab as u64;
        let tokens = |seed: u64, n: usize| -> Vec<TokenId> {
            random(seed, n, 1.0).iter().map(|v| ((v.abs() * 1e6) as u64 % vocab) as TokenId).collect()
        };
        // Warm-up: compile every kernel variant.
        {
            let mut c = g.new_cache();
            g.forward(&mut [GpuLane {
                cache: &mut c,
                tokens: &tokens(1, 16),
                adapter: Some("a0"),
                logits: Logits::Last,
            }])?;
            g.forward(&mut [GpuLane {
                cache: &mut c,
                tokens: &tokens(2, 1),
                adapter: Some("a0"),
                logits: Logits::Last,
            }])?;
            g.forward(&mut [GpuLane { cache: &mut c, tokens: &tokens(3, 1), adapter: None, logits: Logits::Last }])?;
            for adapter in [None, Some("a0")] {
                let lane = GpuDecode { cache: &mut c, tokens: &tokens(5, 1), adapter, max_tokens: 2 };
                g.decode_greedy(&mut [lane], &[], 2)?;
            }
        }
        // `GPU_BENCH_QUICK`: batch 1 only, short (for software Vulkan, where a 512-token prefill
        // takes minutes).
        let quick = std::env::var_os("GPU_BENCH_QUICK").is_some();
        let (prefill_len, reps, steps, context) = if quick { (64, 1, 16, 32) } else { (512, 3, 64, 128) };
        // Prefill of 512 tokens, batch 1.
        let prompt = tokens(4, prefill_len.max(context + steps));
        let mut times = Vec::new();
        for _ in 0..reps {
            let mut c = g.new_cache();
            let t = Instant::now();
            let p = &prompt[..prefill_len];
            g.forward(&mut [GpuLane { cache: &mut c, tokens: p, adapter: None, logits: Logits::Last }])?;
            times.push(t.elapsed().as_secs_f64());
        }
        let prefill = prefill_len as f64 / median(times);
        // Decode, batch 1, after a 128-token prompt: first with the host in the loop (logits read
        // back and the next token picked there, one wait for the device a token), then the loop on
        // the device (argmax and embedding there, the tokens read back every DECODE_CHUNK steps).
        let mut c = g.new_cache();
        g.forward(&mut [GpuLane { cache: &mut c, tokens: &prompt[..context], adapter: None, logits: Logits::Last }])?;
        let t = Instant::now();
        for i in 0..steps {
            let tok = [prompt[context + i]];
            g.forward(&mut [GpuLane { cache: &mut c, tokens: &tok, adapter: None, logits: Logits::Last }])?;
        }
        let decode1_host = steps as f64 / t.elapsed().as_secs_f64();
        drop(c);
        let mut c = g.new_cache();
        g.forward(&mut [GpuLane { cache: &mut c, tokens: &prompt[..context], adapter: None, logits: Logits::None }])?;
        // Nothing read the prompt's pass back: let it finish before the clock starts.
        gpu.sync()?;
        let (launches0, waits0) = (gpu.launches(), gpu.waits());
        let t = Instant::now();
        let lane = GpuDecode { cache: &mut c, tokens: &prompt[context..context + 1], adapter: None, max_tokens: steps };
        g.decode_greedy(&mut [lane], &[], DECODE_CHUNK)?;
        let decode1 = steps as f64 / t.elapsed().as_secs_f64();
        // Launches of one decode step: per layer, and the four outside the layers (embedding,
        // final norm, vocabulary projection, argmax).
        let per_step = (gpu.launches() - launches0) as f64 / steps as f64;
        let launches_per_layer = (per_step - 4.0) / model.config.n_layer as f64;
        let waits_per_token = (gpu.waits() - waits0) as f64 / steps as f64;
        // The bytes-moved floor: a decode step reads every weight once, so at the device's copy
        // bandwidth batch 1 cannot pass `bandwidth / weight bytes` tokens/s and batch 32 (one
        // read of the weights for 32 tokens) 32 times that, before KV-cache reads.
        let bandwidth = soramai_kernels::cube::op::copy_bandwidth(gpu, 64 << 20)?;
        let floor1 = bandwidth / g.weight_bytes() as f64;
        // The figures of both lines.
        let mut record = serde_json::json!({
            "model": s.name,
            "backend": gpu.backend().as_str(),
            "device": gpu.name(),
            "weight_bytes": g.weight_bytes(),
            "decode_b1_tok_s": decode1,
            "decode_b1_host_loop_tok_s": decode1_host,
            "launches_per_decode_step": per_step,
            "launches_per_layer_decode": launches_per_layer,
            "host_waits_per_token": waits_per_token,
            "copy_bandwidth_gb_s": bandwidth / 1e9,
            "floor_b1_tok_s": floor1,
            "decode_b1_of_floor": decode1 / floor1,
        });
        // Batch 1 first, on its own line: on a slow device (lavapipe) the batch-32 runs take long.
        let mut batch1 = record.clone();
        batch1["stage"] = "batch1".into();
        batch1["prefill_tokens"] = prefill_len.into();
        batch1["prefill_b1_tok_s"] = prefill.into();
        println!("{batch1}");
        std::io::Write::flush(&mut std::io::stdout())?;
        if quick {
            return Ok(());
        }
        drop(c);
        // Batch 32: prefill 32 × 128, then decode; without and with 8 adapters.
        let batch = |with_adapters: bool| -> Result<(f64, f64), Box<dyn std::error::Error>> {
            let names: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
            let prompts: Vec<Vec<TokenId>> = (0..32).map(|i| tokens(100 + i, 128)).collect();
            let mut caches: Vec<_> = (0..32).map(|_| g.new_cache()).collect();
            let adapter_of = |i: usize| with_adapters.then(|| names[i % 8].as_str());
            let t = Instant::now();
            {
                let mut lanes: Vec<GpuLane<'_>> = caches
                    .iter_mut()
                    .enumerate()
                    .map(|(i, cache)| GpuLane {
                        cache,
                        tokens: &prompts[i],
                        adapter: adapter_of(i),
                        logits: Logits::Last,
                    })
                    .collect();
                g.forward(&mut lanes)?;
            }
            let prefill = 32.0 * 128.0 / t.elapsed().as_secs_f64();
            // 32 steps of the 32 sequences, the loop on the device.
            let steps = 32;
            let t = Instant::now();
            let mut lanes: Vec<GpuDecode<'_>> = caches
                .iter_mut()
                .enumerate()
                .map(|(i, cache)| GpuDecode {
                    cache,
                    tokens: &prompts[i][..1],
                    adapter: adapter_of(i),
                    max_tokens: steps,
                })
                .collect();
            g.decode_greedy(&mut lanes, &[], DECODE_CHUNK)?;
            Ok((prefill, 32.0 * steps as f64 / t.elapsed().as_secs_f64()))
        };
        let (prefill32, decode32) = batch(false)?;
        let (prefill32_lora, decode32_lora) = batch(true)?;
        let whole = [
            ("write_seconds", written),
            ("upload_seconds", upload),
            ("prefill512_tok_s", prefill),
            ("prefill_b32_tok_s", prefill32),
            ("decode_b32_tok_s", decode32),
            ("prefill_b32_8lora_tok_s", prefill32_lora),
            ("decode_b32_8lora_tok_s", decode32_lora),
            ("floor_b32_tok_s", 32.0 * floor1),
            ("decode_b32_of_floor", decode32 / (32.0 * floor1)),
        ];
        for (key, value) in whole {
            record[key] = value.into();
        }
        println!("{record}");
        Ok(())
    }

    pub fn main() -> Result<(), Box<dyn std::error::Error>> {
        let mut args = std::env::args().skip(1);
        let backend: Backend = args.next().as_deref().unwrap_or("wgpu").parse()?;
        let wanted: Vec<String> = args.collect();
        let gpu = Gpu::new(backend)?;
        eprintln!("device: {} ({backend})", gpu.name());
        for s in SHAPES.iter().filter(|s| wanted.is_empty() || wanted.iter().any(|w| w == s.name)) {
            run(&gpu, s)?;
        }
        Ok(())
    }
}
