"""QLoRA training throughput and peak memory: Soramai's trainer on the GGUF blocks against Hugging Face
PEFT + transformers (PyTorch, CPU) on the same GGUF dequantized by transformers, in one run.

    python benches/training_vs_peft.py MODEL.gguf TRAIN_SPEED_BIN [STEPS] [SEQ]

Both sides train rank-8 LoRA on all seven projections (alpha 16, AdamW) with batches of four
SEQ-token sequences of the same pseudo-random token ids, loss on the second half of each, on two
threads. Each side runs in its own child process so that its peak resident memory (ru_maxrss) is
its own. Tokens/s counts every token of the batch (forward + backward + optimizer step), after one
warm-up pass.

Run it through `./scripts/bench-training.sh`, which builds the trainer and the PEFT venv.
"""

import os
import subprocess
import sys
import time

THREADS = 2


def tokens(vocab, seq, rows=4):
    # The same generator as soramai-kernels/examples/train_speed.rs, so both sides see the same ids.
    s = 0x9E3779B97F4A7C15
    out = []
    for _ in range(rows):
        row = []
        for _ in range(seq):
            s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            row.append((s >> 33) % vocab)
        out.append(row)
    return out


def peft_child(model_path, steps, seq):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
    ids = torch.tensor(tokens(model.config.vocab_size, seq))
    labels = ids.clone()
    labels[:, : seq // 2] = -100

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t0
    print(f"{ids.numel() * steps} tokens in {secs:.2f}s: {ids.numel() * steps / secs:.1f} tokens/s")


def measure(cmd, env):
    """Runs a child; returns its tokens/s, its own peak RSS in MiB (wait4) and its wall time."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"{cmd[0]} failed with status {status}")
    line = [l for l in out.splitlines() if "tokens/s" in l][-1]
    rate = float(line.rsplit(":", 1)[1].split()[0])
    return rate, usage.ru_maxrss / 1024, wall


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--peft-child":
        return peft_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    model, ours = os.path.abspath(sys.argv[1]), sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    seq = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    rows = []
    for name, cmd in [
        ("soramai (Q4_1 blocks, fast)", [ours, model, str(steps), str(seq)]),
        ("PEFT + transformers (f32)", [sys.executable, "-W", "ignore", __file__, "--peft-child", model, str(steps), str(seq)]),
    ]:
        rows.append((name, *measure(cmd, env)))
    print(f"\nrank 8, alpha 16, all 7 projections, batch 4 x {seq} tokens, {steps} steps, {THREADS} threads\n")
    print("| trainer | tokens/s | peak RSS (MiB) | wall (s) |")
    print("| --- | --- | --- | --- |")
    for name, rate, mib, wall in rows:
        print(f"| {name} | {rate:.1f} | {mib:.0f} | {wall:.1f} |")
    (_, r0, m0, _), (_, r1, m1, _) = rows
    print(f"\nsoramai / PEFT: {r0 / r1:.2f}x tokens/s at {m0 / m1:.2f}x peak memory")


if __name__ == "__main__":
    main()
