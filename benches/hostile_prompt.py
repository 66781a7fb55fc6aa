"""Times hostile prompts that are one huge pre-token (the merge loop's worst case): soramai through
the Python bindings (the whole request until its context-length error, so tokenizing plus the
request's checks) beside llama.cpp's tokenizer alone on the same GGUF (llama-cpp-python, from
`scripts/llama-cpp-venv.sh`, when installed).

    SORAMAI_TEST_MODEL=… "$(./scripts/python-bindings.sh)" benches/hostile_prompt.py
"""

import json
import os
import pathlib
import subprocess
import tempfile
import time

import soramai

MODEL = os.environ["SORAMAI_TEST_MODEL"]
PROMPTS = {"50,000 x": "x" * 50_000, "9,000 'hello '": "hello " * 9000}
LLAMA_PYTHON = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "llama-venv" / "bin" / "python"
LLAMA_SNIPPET = """
import json, sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
out = {}
for label, text in json.loads(sys.stdin.read()).items():
    started = time.monotonic()
    n = len(llm.tokenize(text.encode(), add_bos=True, special=False))
    out[label] = [(time.monotonic() - started) * 1000, n]
print(json.dumps(out))
"""


def soramai_times() -> dict[str, float]:
    platform = soramai.Platform(tempfile.mkdtemp(), model=MODEL)
    admin = platform.session(platform.bootstrap())
    admin.create_tenant("acme", "basic")
    admin.grant_credits("acme", 10**6, "bench")
    session = platform.session(admin.create_api_key("bench", ["inference"], tenant="acme")["key"])
    session.complete(soramai.DEFAULT_MODEL_ID, "warm", max_tokens=1)
    times = {}
    for label, text in PROMPTS.items():
        started = time.monotonic()
        try:
            session.complete(soramai.DEFAULT_MODEL_ID, text, max_tokens=1)
        except soramai.ContextLengthError:
            pass
        times[label] = (time.monotonic() - started) * 1000
    platform.close()
    return times


def llama_times() -> dict[str, list[float]] | None:
    if not LLAMA_PYTHON.exists():
        return None
    out = subprocess.run(
        [str(LLAMA_PYTHON), "-c", LLAMA_SNIPPET, MODEL], input=json.dumps(PROMPTS), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


ours = soramai_times()
peer = llama_times()
print(f"{'prompt':>16} | {'soramai request':>16} | {'llama.cpp tokenize':>18}")
for label in PROMPTS:
    theirs = f"{peer[label][0]:15.1f} ms" if peer else "(not installed)"
    print(f"{label:>16} | {ours[label]:13.1f} ms | {theirs:>18}")
