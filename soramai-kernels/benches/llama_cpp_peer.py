"""The llama.cpp side of benches/inference.rs: a long-lived process that loads the GGUF with
llama-cpp-python (n_threads = 2) and, for each JSON command on stdin, times a prefill of the given
token ids and a greedy decode, printing one JSON line per run (with the process's peak RSS)."""
import json, resource, sys, time

from llama_cpp import Llama

model = Llama(sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), n_ctx=512, n_batch=512, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    ids, n = cmd["ids"], cmd["decode"]
    model.reset()
    t0 = time.perf_counter()
    model.eval(ids)
    t1 = time.perf_counter()
    out = []
    for _ in range(n):
        tok = model.sample(top_k=1)
        out.append(tok)
        model.eval([tok])
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"prefill_s": t1 - t0, "decode_s": t2 - t1, "tokens": out, "peak_rss": peak}), flush=True)
