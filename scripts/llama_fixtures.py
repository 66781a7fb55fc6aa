"""Writes the llama.cpp reference fixtures that soramai-kernels' tests compare against.

Run: `$(scripts/llama-cpp-venv.sh) scripts/llama_fixtures.py $(scripts/fetch-model.sh)`.
Outputs soramai-kernels/tests/fixtures/llama_cpp.json and logits_*.npy: token ids for a set of
texts (with and without special-token parsing), greedy chat generations (ids and the top-2 logit
margin at each step), and last-position logits for a few prompts.
"""
import hashlib, json, os, sys

import jinja2
import llama_cpp
import numpy as np
from llama_cpp import Llama

model_path = sys.argv[1]
out_dir = os.path.join(os.path.dirname(__file__), "..", "soramai-kernels", "tests", "fixtures")

TEXTS = [
    "Hello world", "hello", " leading space", "trailing space ", "  two leading", "a  b   c    d",
    "line\nbreak", "\n\nblank lines\n\n\n", "\ttab\tseparated\t", "mixed \t\n whitespace \n\t ",
    "12345", "3.14159 and 2,718", "year 2026-11-22", "1 22 333 4444 55555", "x=10000000000",
    "Hello, world! How's it going?", "(parens) [brackets] {braces} <angles>", "!!!???...---", "don't won't I'm you're they'll we'd",
    "café naïve résumé façade", "Ünïcödé çhäräctërs", "Zürich Straße", "ελληνικά κείμενο", "русский текст",
    "日本語のテキスト", "中文文本测试", "한국어 텍스트", "emoji 😀🎉👍🏽", "flags 🇯🇵🇫🇷", "zero\u200bwidth",
    "def f(x):\n    return x**2\n", "fn main() { println!(\"hi\"); }", "<html><body class=\"x\">text</body></html>", "SELECT * FROM t WHERE a >= 1;",
    "https://example.com/path?q=1&r=2#frag", "user@example.com", "C:\\Windows\\System32", "~/.bashrc && echo $HOME",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>assistant\n", "text<|endoftext|>more", "<|im_end|><|im_end|>", "<repo_name>x<file_sep>",
    "<|im_start", "im_start|>", "<|IM_START|>", "a<|im_start|>b", "",
]

CHATS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain what a hash function is in one sentence.",
    "List three primary colors.",
    "How do I reverse a list in Python?",
    "Translate 'good morning' into Spanish.",
]

LOGIT_PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
]

m = Llama(model_path, n_threads=2, n_ctx=1024, logits_all=True, verbose=False)
template = jinja2.Environment().from_string(m.metadata["tokenizer.chat_template"])
eos = m.token_eos()
stops = {eos, *(t for t in m.tokenize(b"<|im_end|>", add_bos=False, special=True))}


def tok(text, special):
    return m.tokenize(text.encode(), add_bos=True, special=special)


fixture = {
    "llama_cpp_python": llama_cpp.__version__,
    "model_sha256": hashlib.sha256(open(model_path, "rb").read()).hexdigest(),
    "tokenize": [{"text": t, "special": tok(t, True), "no_special": tok(t, False)} for t in TEXTS],
    "chat": [],
    "logits": [],
}

for user in CHATS:
    prompt = template.render(messages=[{"role": "user", "content": user}], add_generation_prompt=True)
    ids = tok(prompt, True)
    m.reset()
    m.eval(ids)
    out, margins = [], []
    for _ in range(48):
        scores = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
        top2 = np.sort(scores)[-2:]
        nxt = int(scores.argmax())
        margins.append(float(top2[1] - top2[0]))
        if nxt in stops:
            break
        out.append(nxt)
        m.eval([nxt])
    fixture["chat"].append({"user": user, "prompt": prompt, "prompt_ids": ids, "output_ids": out, "margins": margins})

for i, p in enumerate(LOGIT_PROMPTS):
    ids = tok(p, True)
    m.reset()
    m.eval(ids)
    logits = np.array(m.scores[len(ids) - 1], dtype=np.float32)
    name = f"logits_{i}.npy"
    np.save(os.path.join(out_dir, name), logits)
    fixture["logits"].append({"prompt": p, "prompt_ids": ids, "file": name})

with open(os.path.join(out_dir, "llama_cpp.json"), "w") as f:
    json.dump(fixture, f, ensure_ascii=False, indent=1)
print("wrote", len(fixture["tokenize"]), "tokenizations,", len(fixture["chat"]), "chats,", len(fixture["logits"]), "logit vectors")
