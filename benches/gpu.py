"""GPU benchmark: Soramai's cubecl backend against PyTorch on the same GPU, in one run.

    python3 benches/gpu.py GPU_BENCH_BIN [wgpu|cuda] [MODEL...]

For each model shape (see soramai-kernels/examples/gpu_bench.rs: the reference model's shape in
Q4_1 and Llama 3.2 1B's in Q4_0 and Q4_1, random weights), the Soramai side reports prefill and
decode tokens/s at batch 1 and batch 32 (with and without 8 LoRA adapters, one per four
sequences). The PyTorch side runs transformers' LlamaForCausalLM of the same shape with fp16
weights (what dequantized GGUF blocks become), the same batches, and for the adapter case PEFT's
mixed-adapter batch (`adapter_names`) with 8 rank-16 adapters on all seven projections. The
floor is the decode step's bytes (the model's weights as stored on the device) over the device's
measured copy bandwidth.

Prints JSON lines and a Markdown table. Needs torch, transformers and peft (the device image has
them).
"""

import json
import os
import subprocess
import sys
import time

import torch

SHAPES = {
    "smollm2-q4_1": dict(d=576, layers=30, heads=9, kv=3, ff=1536, vocab=49152, tied=True),
    "llama1b-q4_0": dict(d=2048, layers=16, heads=32, kv=8, ff=8192, vocab=128256, tied=True),
    "llama1b-q4_1": dict(d=2048, layers=16, heads=32, kv=8, ff=8192, vocab=128256, tied=True),
}


def bandwidth():
    """Device copy bandwidth in bytes/s, counting bytes read and written."""
    n = 1 << 30
    x = torch.empty(n, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * n * reps / (time.perf_counter() - t)


def timed(f, reps=3):
    best = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        best.append(time.perf_counter() - t)
    best.sort()
    return best[len(best) // 2]


def torch_side(name):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicCache

    s = SHAPES[name]
    cfg = LlamaConfig(hidden_size=s["d"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["kv"], intermediate_size=s["ff"], vocab_size=s["vocab"],
                      tie_word_embeddings=s["tied"], max_position_embeddings=8192)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = lambda b, n: torch.randint(0, s["vocab"], (b, n), device="cuda", generator=g)

    @torch.no_grad()
    def prefill(m, b, n, **kw):
        x = ids(b, n)
        return timed(lambda: m(x, use_cache=False, logits_to_keep=1, **kw))

    @torch.no_grad()
    def decode(m, b, steps, warm=True, **kw):
        if warm:
            decode(m, b, 4, warm=False, **kw)
        cache = DynamicCache()
        out = m(ids(b, 128), past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
        nxt = ids(b, 1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            out = m(nxt, past_key_values=cache, use_cache=True, **kw)
            nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        return b * steps / (time.perf_counter() - t)

    r = {"model": name, "backend": "pytorch", "weight_bytes": weight_bytes}
    prefill(model, 1, 16)
    r["prefill512_tok_s"] = 512 / prefill(model, 1, 512)
    r["decode_b1_tok_s"] = decode(model, 1, 64)
    r["prefill_b32_tok_s"] = 32 * 128 / prefill(model, 32, 128)
    r["decode_b32_tok_s"] = decode(model, 32, 32)
    try:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                              init_lora_weights=False), adapter_name="a0")
        for i in range(1, 8):
            pm.add_adapter(f"a{i}", LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False))
        pm = pm.to(torch.float16).eval()
        names = [f"a{i % 8}" for i in range(32)]
        r["prefill_b32_8lora_tok_s"] = 32 * 128 / prefill(pm, 32, 128, adapter_names=names)
        r["decode_b32_8lora_tok_s"] = decode(pm, 32, 32, adapter_names=names)
    except Exception as e:  # PEFT missing or its mixed batch unsupported: report, keep going
        r["lora_error"] = str(e)[:200]
    del model
    torch.cuda.empty_cache()
    return r


def main():
    exe = sys.argv[1]
    backend = sys.argv[2] if len(sys.argv) > 2 else "wgpu"
    names = sys.argv[3:] or list(SHAPES)
    bw = bandwidth()
    print(json.dumps({"device": torch.cuda.get_device_name(), "copy_bandwidth_bytes_s": bw}), flush=True)
    rows = []
    for name in names:
        out = subprocess.run([exe, backend, name], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            ours = {"model": name, "error": out.stderr.strip().splitlines()[-1:] }
        else:
            ours = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(ours), flush=True)
        theirs = torch_side(name)
        print(json.dumps(theirs), flush=True)
        rows.append((name, ours, theirs))
    keys = ["prefill512_tok_s", "decode_b1_tok_s", "prefill_b32_tok_s", "decode_b32_tok_s",
            "prefill_b32_8lora_tok_s", "decode_b32_8lora_tok_s"]
    print(f"\ndevice: {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s\n")
    print("| model | side | weight bytes | decode floor b1 (tok/s) | " + " | ".join(keys) + " |")
    print("| --- " * (4 + len(keys)) + "|")
    for name, ours, theirs in rows:
        for side, r in (("soramai " + backend, ours), ("pytorch fp16", theirs)):
            wb = r.get("weight_bytes")
            floor = f"{bw / wb:.0f}" if wb else "-"
            vals = " | ".join(f"{r[k]:.0f}" if isinstance(r.get(k), (int, float)) else "-" for k in keys)
            print(f"| {name} | {side} | {wb or '-'} | {floor} | {vals} |")


if __name__ == "__main__":
    main()
