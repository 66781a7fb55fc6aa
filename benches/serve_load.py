"""Load benchmark of `soramai serve` from a second process on loopback: 32 concurrent streaming
chats across 8 tenants, each tenant with its own fine-tuned adapter, against the same load on one
adapter and on the base model, and against llama-cpp-python's OpenAI server on the same GGUF
(base model only: it serves no per-request adapters). Prints requests/s, time to first token and
per-stream tokens/s (p50/p99) side by side.

Usage: serve_load.py SORAMAI_BINARY MODEL.gguf [LLAMA_PYTHON]"""
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import httpx2 as httpx

MODEL = "smollm2-135m-instruct"
CONCURRENCY = 32
TENANTS = 8
MAX_TOKENS = 48
QUESTIONS = ["Where does the cloud council meet?", "Name a color.", "What is 2 + 2?", "Say hello politely.",
             "Name a fruit.", "What is the capital of France?", "Count to five.", "Describe the sea."]


def post(url, path, body, key):
    req = urllib.request.Request(url + path, method="POST", data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def get(url, path, key):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def upload(url, key, data):
    boundary = "soramai-bench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/files", method="POST", data=body, headers={
        "Authorization": "Bearer " + key, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def start_soramai(binary, model):
    d = tempfile.mkdtemp(prefix="soramai-load-")
    proc = subprocess.Popen([binary, "serve", "--data-dir", os.path.join(d, "data"), "--addr", "127.0.0.1:0",
                             "--model", model, "--max-batch", str(CONCURRENCY), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=open(os.path.join(d, "server.log"), "w"), text=True)
    print(f"server log: {os.path.join(d, 'server.log')}", flush=True)
    admin = url = None
    for line in proc.stdout:
        if line.startswith("bootstrap admin key"):
            admin = line.rsplit(" ", 1)[1].strip()
        if line.startswith("listening on "):
            url = line.split(" ", 2)[2].strip()
            break
    return proc, url, admin


def setup_adapters(url, admin):
    """Eight tenants, each with an adapter trained by a short fine-tuning job (basic tier runs jobs
    on the shared pool), then moved to the org tier for the load (32 concurrent requests)."""
    keys, models = [], []
    for i in range(TENANTS):
        name = f"load{i}"
        post(url, "/v1/tenants", {"id": name, "tier": "basic"}, admin)
        post(url, f"/v1/tenants/{name}/credits", {"amount": 100_000_000}, admin)
        key = post(url, "/v1/api_keys", {"name": "load", "scopes": ["inference", "train"], "tenant": name}, admin)["key"]
        lines = [json.dumps({"messages": [{"role": "user", "content": q},
                                          {"role": "assistant", "content": f"Answer {i}: {q.lower()}"}]})
                 for q in QUESTIONS[:4]]
        f = upload(url, key, ("\n".join(lines) + "\n").encode())
        job = post(url, "/v1/fine_tuning/jobs", {"model": MODEL, "training_file": f["id"], "suffix": f"t{i}", "seed": i,
                                                 "hyperparameters": {"n_epochs": 1, "batch_size": 4, "rank": 8,
                                                                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                                                     "max_seq": 64}}, key)
        keys.append(key)
        models.append(job["id"])
    for i, (key, job_id) in enumerate(zip(keys, models)):
        while True:
            job = get(url, f"/v1/fine_tuning/jobs/{job_id}", key)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        models[i] = job["fine_tuned_model"]
        post(url, f"/v1/tenants/load{i}/tier", {"tier": "org"}, admin)
    return keys, models


async def one(client, url, key, model, question):
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": "Bearer " + key} if key else {}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return first - start, tokens / max(end - first, 1e-9) if tokens > 1 else 0.0, tokens


async def load(url, jobs):
    """Runs the (key, model) jobs all at once; returns the figures."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[one(client, url, k, m, QUESTIONS[i % len(QUESTIONS)])
                                         for i, (k, m) in enumerate(jobs)])
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    rate = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    pct = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
    return {"requests/s": len(jobs) / wall, "tokens/s": tokens / wall, "ttft p50": pct(ttft, 0.5),
            "ttft p99": pct(ttft, 0.99), "stream tok/s p50": pct(rate, 0.5), "stream tok/s p99": pct(rate, 0.01)}


def start_llama(python, model):
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096", "--n_threads", "2",
                             # Queue concurrent requests instead of cutting the running stream off.
                             "--interrupt_requests", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/v1/models").read()
            return proc, url
        except Exception:
            time.sleep(0.5)
    raise RuntimeError("llama_cpp.server did not start")


def main():
    binary, model = sys.argv[1], sys.argv[2]
    llama_python = sys.argv[3] if len(sys.argv) > 3 else None
    proc, url, admin = start_soramai(binary, model)
    rows = {}
    try:
        t = time.perf_counter()
        keys, models = setup_adapters(url, admin)
        print(f"setup: 8 tenants, 8 adapters trained in {time.perf_counter() - t:.0f} s", flush=True)
        # Warm up (engine load, adapters loaded on first use).
        try:
            asyncio.run(load(url, [(keys[i], models[i]) for i in range(TENANTS)]))
        except Exception as e:
            raise RuntimeError(f"warm-up: {e!r}; server exit status {proc.poll()}") from None
        mixed = [(keys[i % TENANTS], models[i % TENANTS]) for i in range(CONCURRENCY)]
        single = [(keys[0], models[0])] * CONCURRENCY
        base = [(keys[i % TENANTS], MODEL) for i in range(CONCURRENCY)]
        for name, jobs in [("soramai, 8 adapters (8 tenants)", mixed), ("soramai, 1 adapter", single),
                           ("soramai, base model", base)]:
            try:
                rows[name] = asyncio.run(load(url, jobs))
            except Exception as e:
                raise RuntimeError(f"{name}: {e!r}; server exit status {proc.poll()}") from None
    finally:
        proc.terminate()
        proc.wait()
    if llama_python:
        lp, lurl = start_llama(llama_python, model)
        try:
            asyncio.run(load(lurl, [(None, MODEL)] * 2))
            rows["llama-cpp-python server, base model"] = asyncio.run(load(lurl, [(None, MODEL)] * CONCURRENCY))
        finally:
            lp.terminate()
            lp.wait()
    cols = ["requests/s", "tokens/s", "ttft p50", "ttft p99", "stream tok/s p50", "stream tok/s p99"]
    print(f"\n{CONCURRENCY} concurrent streaming chats, {MAX_TOKENS} tokens max, greedy, loopback\n")
    print("| server | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    m, s = rows["soramai, 8 adapters (8 tenants)"], rows["soramai, 1 adapter"]
    print(f"\nmixed-adapter throughput / single-adapter: {m['tokens/s'] / s['tokens/s']:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
