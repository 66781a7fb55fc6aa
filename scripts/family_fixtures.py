"""Writes the model-family fixtures that soramai-kernels/tests/families.rs compares against llama.cpp.

Run: `$(scripts/llama-cpp-venv.sh) scripts/family_fixtures.py $(scripts/fetch-gemma.sh)`
(the venv gets gguf-py from PyPI here when it lacks it).

1. Small random-weight GGUFs written with gguf-py in each family's real structure — Llama 3.x
   (GQA, `rope_freqs`, untied output), Qwen3 (q/k norms, head width unlike n_embd / n_head, GQA,
   untied output) and Gemma 3 (embedding scale, q/k norms, post norms, GeGLU, five sliding-window
   layers with a window of 4 to one global layer) — into soramai-kernels/tests/fixtures/families/,
   with llama.cpp's logits at every position of a token sequence.
2. For the real Gemma 3 270M Q4_K_M file: llama.cpp's tokenization of a few texts and chat
   prompts (Gemma's turn format), last-position logits of some prompts, and greedy generations
   with the top-2 margin at each step.
"""
import hashlib, json, os, subprocess, sys

try:
    import gguf
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "gguf==0.19.0"])
    import gguf
import llama_cpp
import numpy as np
from llama_cpp import Llama

out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "soramai-kernels", "tests", "fixtures", "families")
os.makedirs(out_dir, exist_ok=True)
VOCAB = 384
SEQ = [1, 17, 300, 42, 99, 5, 260, 383, 7, 150, 151, 152, 64, 3, 200, 201, 77, 88, 301, 12]


def spm_vocab(w):
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < VOCAB:
        tokens.append("\u2581" + letters[i % 26] + letters[(i // 26) % 26])
        scores.append(-float(i))
        types.append(1)
        i += 1
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)


def q8(w, name, rows, cols, rng, scale):
    data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def vec(w, name, n, rng, around=1.0, scale=0.2):
    w.add_tensor(name, (around + rng.standard_normal(n) * scale).astype(np.float32))


def write(name, arch, d, nh, nkv, hd, ff, layers, extra):
    path = os.path.join(out_dir, f"{name}.gguf")
    rng = np.random.default_rng(sum(map(ord, name)))
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(extra.get("rope_base", 10000.0))
    w.add_layer_norm_rms_eps(1e-6)
    if "window" in extra:
        w.add_sliding_window(extra["window"])
    spm_vocab(w)
    q8(w, "token_embd.weight", VOCAB, d, rng, 1.0)
    if extra.get("untied"):
        q8(w, "output.weight", VOCAB, d, rng, 0.5)
    if "rope_freqs" in extra:
        w.add_tensor("rope_freqs.weight", np.array(extra["rope_freqs"], dtype=np.float32))
    for l in range(layers):
        n = lambda s: f"blk.{l}.{s}"
        vec(w, n("attn_norm.weight"), d, rng)
        q8(w, n("attn_q.weight"), nh * hd, d, rng, 0.15)
        q8(w, n("attn_k.weight"), nkv * hd, d, rng, 0.15)
        q8(w, n("attn_v.weight"), nkv * hd, d, rng, 0.15)
        q8(w, n("attn_output.weight"), d, nh * hd, rng, 0.15)
        if extra.get("qk_norm"):
            vec(w, n("attn_q_norm.weight"), hd, rng)
            vec(w, n("attn_k_norm.weight"), hd, rng)
        if extra.get("post_norms"):
            vec(w, n("post_attention_norm.weight"), d, rng)
            vec(w, n("post_ffw_norm.weight"), d, rng)
        vec(w, n("ffn_norm.weight"), d, rng)
        q8(w, n("ffn_gate.weight"), ff, d, rng, 0.15)
        q8(w, n("ffn_up.weight"), ff, d, rng, 0.15)
        q8(w, n("ffn_down.weight"), d, ff, rng, 0.15)
    vec(w, "output_norm.weight", d, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = Llama(path, n_threads=2, n_ctx=64, logits_all=True, verbose=False)
    m.eval(SEQ)
    logits = np.array(m.scores[: len(SEQ)], dtype=np.float32)
    np.save(os.path.join(out_dir, f"{name}.logits.npy"), logits.ravel())
    return {"file": f"{name}.gguf", "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
            "logits": f"{name}.logits.npy", "tokens": SEQ}


families = {
    "llama3": write("llama3", "llama", 128, 4, 2, 32, 256, 2,
                    {"untied": True, "rope_base": 500000.0,
                     "rope_freqs": [1.0 + (i % 5) * 1.5 for i in range(16)]}),
    "qwen3": write("qwen3", "qwen3", 128, 4, 2, 48, 256, 2,
                   {"untied": True, "qk_norm": True, "rope_base": 1000000.0}),
    "gemma3": write("gemma3", "gemma3", 128, 4, 1, 32, 256, 6,
                    {"qk_norm": True, "post_norms": True, "window": 4, "rope_base": 1000000.0}),
}

# The real Gemma 3 270M file.
gemma_path = sys.argv[1]
m = Llama(gemma_path, n_threads=2, n_ctx=512, logits_all=True, verbose=False)


def turns(messages):
    text, prefix = "", ""
    if messages[0]["role"] == "system":
        prefix, messages = messages[0]["content"] + "\n\n", messages[1:]
    for i, msg in enumerate(messages):
        role = "model" if msg["role"] == "assistant" else msg["role"]
        text += f"<start_of_turn>{role}\n{(prefix if i == 0 else '')}{msg['content'].strip()}<end_of_turn>\n"
    return text + "<start_of_turn>model\n"


TEXTS = ["Hello world", " leading space", "a  b   c", "line\nbreak", "café naïve", "日本語のテキスト",
         "emoji 😀🎉", "def f(x):\n    return x**2\n", "<start_of_turn>user\nhi<end_of_turn>", ""]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a primary color."}],
]
LOGIT_PROMPTS = ["The capital of France is", turns([{"role": "user", "content": "What is 2+2?"}])]
end_of_turn = m.tokenize(b"<end_of_turn>", add_bos=False, special=True)
stops = {m.token_eos(), *end_of_turn}

gemma = {
    "llama_cpp_python": llama_cpp.__version__,
    "model_sha256": hashlib.sha256(open(gemma_path, "rb").read()).hexdigest(),
    "tokenize": [{"text": t, "special": m.tokenize(t.encode(), add_bos=True, special=True),
                  "no_special": m.tokenize(t.encode(), add_bos=True, special=False)} for t in TEXTS],
    "chat": [],
    "logits": [],
}
for msgs in CHATS:
    prompt = turns(msgs)
    ids = m.tokenize(prompt.encode(), add_bos=True, special=True)
    m.reset()
    m.eval(ids)
    out, margins = [], []
    for _ in range(16):
        scores = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
        top2 = np.sort(scores)[-2:]
        nxt = int(scores.argmax())
        margins.append(float(top2[1] - top2[0]))
        if nxt in stops:
            break
        out.append(nxt)
        m.eval([nxt])
    gemma["chat"].append({"messages": msgs, "prompt": prompt, "prompt_ids": ids, "output_ids": out, "margins": margins})
for i, p in enumerate(LOGIT_PROMPTS):
    ids = m.tokenize(p.encode(), add_bos=True, special=True)
    m.reset()
    m.eval(ids)
    name = f"gemma3_270m.logits_{i}.npy"
    np.save(os.path.join(out_dir, name), np.array(m.scores[len(ids) - 1], dtype=np.float32))
    gemma["logits"].append({"prompt": p, "prompt_ids": ids, "file": name})

with open(os.path.join(out_dir, "llama_cpp.json"), "w") as f:
    json.dump({"llama_cpp_python": llama_cpp.__version__, "random": families, "gemma3_270m": gemma}, f,
              ensure_ascii=False, indent=1)
print("wrote", len(families), "random-weight families and the Gemma 3 270M fixtures")
