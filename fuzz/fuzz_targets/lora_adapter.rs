//! Hostile bytes as a PEFT adapter (the safetensors half; the first byte picks a config): a typed
//! error or an adapter that fits the model, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soramai_kernels::cpu::ops::RopeLayout;
use soramai_kernels::lora::Adapter;
use soramai_kernels::model::Config;

fuzz_target!(|data: &[u8]| {
    let config = Config {
        arch: "llama".into(),
        n_layer: 2,
        n_embd: 64,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
        n_ff: 128,
        vocab: 300,
        n_ctx: 256,
        rope_base: 10000.0,
        rope_dims: 16,
        rope_layout: RopeLayout::Interleaved,
        eps: 1e-5,
    };
    let Some((&pick, rest)) = data.split_first() else { return };
    let json: &[u8] = match pick % 3 {
        0 => br#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}"#,
        1 => br#"{"r": 2, "lora_alpha": 2, "target_modules": ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], "use_rslora": true}"#,
        _ => rest,
    };
    let _ = Adapter::from_bytes(json, rest, &config);
});
