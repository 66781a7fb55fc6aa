"""Serving benchmark: `soramai serve` against llama.cpp's own `llama-server` (continuous batching,
`--parallel`, per-request LoRA) on the same GGUF, from a second process on loopback. Each load is
1, 8 or 32 concurrent streaming chats sharing one system prompt, on one adapter or spread over
eight; every load runs against both servers in one run, alternating which goes first. Prints
tokens/s and time to first token (p50/p99) side by side, soramai's prefix-cache share, and the
issue's goals: at 32 streams >= 1.5x llama-server's tokens/s and a TTFT p99 no worse than its.
A second soramai server with its prefix cache off (`--prefix-cache-mib 0`) runs the same loads, to
show what the cache adds and what the batching alone does.

Adapters: soramai's eight tenants each train one through the fine-tuning API; llama-server gets
eight of the same shape (rank 8, all seven projections) trained by `soramai train` and written as
llama.cpp LoRA GGUFs by `soramai export-lora`, loaded with `--lora` and picked per request.

Usage: serve_load.py SORAMAI_BINARY MODEL.gguf LLAMA_SERVER_BINARY"""
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
STREAMS = [1, 8, 32]
ADAPTERS = [1, 8]
# Requests per load: each stream sends ceil(REQUESTS / streams) one after another.
REQUESTS = 16
SYSTEM = ("You are the help desk of the Cloud Council, a small body that looks after the weather "
          "stations on the northern islands. Answer the question in full sentences, kindly and plainly, "
          "and explain your answer with an example when you can.")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
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


def start_soramai(binary, model, extra=()):
    d = tempfile.mkdtemp(prefix="soramai-load-")
    proc = subprocess.Popen([binary, "serve", "--data-dir", os.path.join(d, "data"), "--addr", "127.0.0.1:0",
                             "--model", model, "--max-batch", str(CONCURRENCY), "--workers", "2", *extra],
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


def training_lines(i):
    return [json.dumps({"messages": [{"role": "user", "content": q},
                                     {"role": "assistant", "content": f"Answer {i}: {q.lower()}"}]})
            for q in QUESTIONS[:4]]


def setup_adapters(url, admin):
    """Eight tenants, each with an adapter trained by a short fine-tuning job (basic tier runs jobs
    on the shared pool), then moved to the org tier for the load (32 concurrent requests)."""
    keys, models = [], []
    for i in range(TENANTS):
        name = f"load{i}"
        post(url, "/v1/tenants", {"id": name, "tier": "basic"}, admin)
        post(url, f"/v1/tenants/{name}/credits", {"amount": 100_000_000}, admin)
        key = post(url, "/v1/api_keys", {"name": "load", "scopes": ["inference", "train"], "tenant": name}, admin)["key"]
        lines = training_lines(i)
        f = upload(url, key, ("\n".join(lines) + "\n").encode())
        job = post(url, "/v1/fine_tuning/jobs", {"model": MODEL, "training_file": f["id"], "suffix": f"t{i}", "seed": i,
                                                 "hyperparameters": {"n_epochs": 1, "batch_size": 4, "rank": 8,
                                                                     "target_modules": TARGETS,
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


async def one(client, url, key, model, question, lora):
    body = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
    if lora is not None:
        body["lora"] = [{"id": lora, "scale": 1.0}]
    headers = {"Authorization": "Bearer " + key} if key else {}
    start = time.perf_counter()
    first = None
    tokens = prompt = cached = 0
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
                u = chunk["usage"]
                tokens = u["completion_tokens"]
                prompt = u.get("prompt_tokens", 0)
                cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    end = time.perf_counter()
    return (first or end) - start, tokens, prompt, cached


async def stream(client, url, jobs):
    out = []
    for job in jobs:
        out.append(await one(client, url, *job))
    return out


async def load(url, streams):
    """Runs the streams at once, each its (key, model, question, lora) jobs in turn."""
    # A connection per request: llama-server's HTTP library closes kept-alive connections after a
    # few requests, which a pooled client only learns by a failed send.
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        start = time.perf_counter()
        per_stream = await asyncio.gather(*[stream(client, url, jobs) for jobs in streams])
        wall = time.perf_counter() - start
    results = [r for rs in per_stream for r in rs]
    ttft = sorted(r[0] for r in results)
    pct = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
    prompt = sum(r[2] for r in results)
    return {"requests": len(results), "tokens/s": sum(r[1] for r in results) / wall, "ttft p50": pct(ttft, 0.5),
            "ttft p99": pct(ttft, 0.99), "cached": sum(r[3] for r in results) / prompt if prompt else 0.0}


def plan(n_streams, n_adapters, job):
    """Each stream's jobs: stream i on adapter i mod n_adapters, questions in turn."""
    per = -(-REQUESTS // n_streams)
    return [[job(i % n_adapters, QUESTIONS[(i + k) % len(QUESTIONS)]) for k in range(per)] for i in range(n_streams)]


def llama_adapters(binary, model, work):
    """Eight LoRA GGUFs of the soramai adapters' shape, for llama-server."""
    paths = []
    for i in range(TENANTS):
        data = os.path.join(work, f"d{i}.jsonl")
        with open(data, "w") as f:
            f.write("\n".join(training_lines(i)) + "\n")
        peft = os.path.join(work, f"peft{i}")
        subprocess.run([binary, "train", "--model", model, "--data", data, "--out", peft, "--steps", "1",
                        "--rank", "8", "--targets", ",".join(TARGETS), "--max-seq", "64", "--seed", str(i)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = os.path.join(work, f"lora{i}.gguf")
        subprocess.run([binary, "export-lora", "--model", model, "--adapter", peft, "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        paths.append(out)
    return paths


def start_llama_server(binary, model, loras, work):
    port = 18000 + os.getpid() % 1000
    args = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "--parallel", str(CONCURRENCY),
            "--ctx-size", str(CONCURRENCY * 512), "--threads", str(os.cpu_count() or 2), "--lora-init-without-apply"]
    args += ["--lora", ",".join(loras)]
    log = os.path.join(work, "llama-server.log")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health").read()
            return proc, url
        except Exception:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    raise RuntimeError(f"llama-server did not start; see {log}")


SERVERS = ["soramai", "soramai, no prefix cache", "llama-server"]


def main():
    binary, model, llama_binary = sys.argv[1], sys.argv[2], sys.argv[3]
    work = tempfile.mkdtemp(prefix="soramai-serve-bench-")
    procs = []
    rows = []
    try:
        t = time.perf_counter()
        jobs = {}
        for name, extra in [("soramai", ()), ("soramai, no prefix cache", ("--prefix-cache-mib", "0"))]:
            proc, url, admin = start_soramai(binary, model, extra)
            procs.append(proc)
            keys, models = setup_adapters(url, admin)
            jobs[name] = (url, lambda a, q, keys=keys, models=models: (keys[a], models[a], q, None))
        loras = llama_adapters(binary, model, work)
        print(f"setup: 2 x 8 tenants with an adapter each, 8 llama.cpp LoRAs, in {time.perf_counter() - t:.0f} s",
              flush=True)
        lproc, lurl = start_llama_server(llama_binary, model, loras, work)
        procs.append(lproc)
        jobs["llama-server"] = (lurl, lambda a, q: (None, MODEL, q, a))
        # Warm-up: engines, adapters and caches loaded on first use.
        for url, job in jobs.values():
            asyncio.run(load(url, plan(TENANTS, TENANTS, job)))
        turn = 0
        for n_streams in STREAMS:
            for n_adapters in ADAPTERS:
                # Each load runs on every server, the order rotating from one load to the next.
                order = SERVERS[turn:] + SERVERS[:turn]
                turn = (turn + 1) % len(SERVERS)
                figures = {}
                for name in order:
                    url, job = jobs[name]
                    try:
                        figures[name] = asyncio.run(load(url, plan(n_streams, n_adapters, job)))
                    except Exception as e:
                        raise RuntimeError(f"{name}, {n_streams} streams, {n_adapters} adapters: {e!r}; "
                                           f"exit statuses {[p.poll() for p in procs]}") from None
                rows.append((n_streams, n_adapters, figures))
                print(f"  {n_streams} streams, {n_adapters} adapters: " +
                      ", ".join(f"{n} {figures[n]['tokens/s']:.1f} tok/s" for n in SERVERS), flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    print(f"\nstreaming chats with one system prompt, {MAX_TOKENS} tokens max, greedy, loopback, "
          f"{REQUESTS} or more requests per load, {os.cpu_count()} cores\n")
    print("| streams | adapters | soramai tok/s | no prefix cache tok/s | llama-server tok/s | ratio (no cache) "
          "| soramai TTFT p50 / p99 s | no prefix cache TTFT p50 / p99 s | llama-server TTFT p50 / p99 s "
          "| prompt tokens from prefix cache |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n_streams, n_adapters, f in rows:
        s, n, l = f["soramai"], f["soramai, no prefix cache"], f["llama-server"]
        print(f"| {n_streams} | {n_adapters} | {s['tokens/s']:.1f} | {n['tokens/s']:.1f} | {l['tokens/s']:.1f} | "
              f"{s['tokens/s'] / l['tokens/s']:.2f}x ({n['tokens/s'] / l['tokens/s']:.2f}x) | "
              f"{s['ttft p50']:.2f} / {s['ttft p99']:.2f} | {n['ttft p50']:.2f} / {n['ttft p99']:.2f} | "
              f"{l['ttft p50']:.2f} / {l['ttft p99']:.2f} | {100 * s['cached']:.0f}% |")
    print()
    for n_streams, n_adapters, f in rows:
        if n_streams != max(STREAMS):
            continue
        for name in SERVERS[:2]:
            s, l = f[name], f["llama-server"]
            ratio = s["tokens/s"] / l["tokens/s"]
            print(f"goal, {name}, {n_streams} streams, {n_adapters} adapter(s): tokens/s {ratio:.2f}x llama-server's "
                  f"(goal >= 1.5x: {'met' if ratio >= 1.5 else 'missed'}); TTFT p99 {s['ttft p99']:.2f} s vs "
                  f"{l['ttft p99']:.2f} s (goal <=: {'met' if s['ttft p99'] <= l['ttft p99'] else 'missed'})")


if __name__ == "__main__":
    main()
