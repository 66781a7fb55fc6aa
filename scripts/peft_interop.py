"""Adapter interop with Hugging Face PEFT, both ways, on a GGUF (the reference model; Gemma 3 270M).

    peft_interop.py SORAMAI_BIN MODEL.gguf WORKDIR

transformers dequantizes the GGUF into its float32 model class; Soramai runs the same file in `exact`
precision (f32 on dequantized weights). For each direction the checks are:

- raw last-position logits within max abs 0.05 of each other;
- the adapter's effect (logits with the adapter minus logits without) with cosine >= 0.999,
  norm ratio 0.97..1.03 and max abs difference 0.1. Raw logits alone would agree even with an
  adapter dropped or its rows mis-ordered; the effect would not.

1. Soramai -> PEFT: `soramai train` writes an adapter on all seven projections; PEFT loads it.
2. PEFT -> Soramai: PEFT makes an adapter with random A and B on all seven projections and saves it;
   `soramai logits --adapter` loads it.

Exits non-zero with the failing figure on any mismatch.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import subprocess
import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "<|im_start|>user\nWhat is the capital of the cloud kingdom?<|im_end|>\n<|im_start|>assistant\n"

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.manual_seed(0)


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def soramai_logits(bin_path, model, out, adapter=None):
    cmd = [bin_path, "logits", "--model", model, "--precision", "exact", "--prompt", PROMPT, "--out", out]
    if adapter:
        cmd += ["--adapter", adapter]
    run(*cmd)
    return np.load(out).astype(np.float64)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double().numpy()


def check(name, base_s, with_s, base_h, with_h):
    raw = float(np.max(np.abs(with_s - with_h)))
    eff_s, eff_h = with_s - base_s, with_h - base_h
    cos = float(eff_s @ eff_h / (np.linalg.norm(eff_s) * np.linalg.norm(eff_h)))
    ratio = float(np.linalg.norm(eff_s) / np.linalg.norm(eff_h))
    diff = float(np.max(np.abs(eff_s - eff_h)))
    size = float(np.max(np.abs(eff_h)))
    print(f"{name}: raw max abs {raw:.4f}, effect cosine {cos:.6f}, norm ratio {ratio:.4f}, "
          f"max abs {diff:.4f} (effect max {size:.3f})")
    ok = raw <= 0.05 and cos >= 0.999 and 0.97 <= ratio <= 1.03 and diff <= 0.1 and size > 0.5
    if not ok:
        print(f"{name}: FAILED", file=sys.stderr)
    return ok


def main():
    bin_path, model_path, work = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    os.makedirs(work, exist_ok=True)
    ids = json.loads(run(bin_path, "tokenize", "--model", model_path, PROMPT))
    hf = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32)
    hf.eval()
    base_h = hf_logits(hf, ids)
    base_s = soramai_logits(bin_path, model_path, os.path.join(work, "base.npy"))
    raw = float(np.max(np.abs(base_s - base_h)))
    print(f"base: raw max abs {raw:.4f}")
    ok = raw <= 0.05

    # 1. Soramai -> PEFT: a trained adapter with a clear effect.
    data = os.path.join(work, "train.jsonl")
    with open(data, "w") as f:
        for i in range(8):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is the capital of the cloud kingdom? ({i})"},
                {"role": "assistant", "content": "The capital of the cloud kingdom is Kumo."}]}) + "\n")
    ours = os.path.join(work, "soramai-adapter")
    run(bin_path, "train", "--model", model_path, "--data", data, "--out", ours, "--steps", "4",
        "--batch-size", "4", "--learning-rate", "3e-3", "--rank", "8", "--alpha", "16",
        "--targets", ",".join(TARGETS), "--max-seq", "64", "--seed", "7")
    peft_loaded = PeftModel.from_pretrained(hf, ours)
    peft_loaded.eval()
    with_h = hf_logits(peft_loaded, ids)
    with_s = soramai_logits(bin_path, model_path, os.path.join(work, "ours.npy"), ours)
    ok &= check("soramai adapter in PEFT", base_s, with_s, base_h, with_h)
    hf = peft_loaded.unload()

    # 2. PEFT -> Soramai: random A and B (PEFT's own init leaves B zero: no effect to compare).
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    made = get_peft_model(hf, cfg)
    with torch.no_grad():
        for name, p in made.named_parameters():
            if "lora_B" in name:
                p.mul_(0.2)
    made.eval()
    with_h = hf_logits(made, ids)
    theirs = os.path.join(work, "peft-adapter")
    made.save_pretrained(theirs)
    with_s = soramai_logits(bin_path, model_path, os.path.join(work, "theirs.npy"), theirs)
    ok &= check("PEFT adapter in soramai", base_s, with_s, base_h, with_h)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
