"""Writes random-weight GGUFs in Llama 3.2 1B's shape (16 layers, 2048 wide, 32/8 heads, 8192 FFN,
128256-token vocabulary, tied embeddings, rope_freqs) as F16 with gguf-py, then quantizes them with
llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize) to Q4_K_M and Q5_K_M.

Run: `$(scripts/llama-cpp-venv.sh) scripts/make_kquant_models.py OUT_DIR` (scripts/bench-families.sh
does). Prints the two quantized files' paths, one a line; skips files already there.
"""
import ctypes, os, subprocess, sys

try:
    import gguf
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "gguf==0.19.0"])
    import gguf
import llama_cpp
import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
D, LAYERS, NH, NKV, HD, FF, VOCAB = 2048, 16, 32, 8, 64, 8192, 128256
f16_path = os.path.join(out, "llama-3.2-1b-shape.f16.gguf")
targets = {"Q4_K_M": 15, "Q5_K_M": 17}
paths = {k: os.path.join(out, f"llama-3.2-1b-shape.{k}.gguf") for k in targets}

if not all(os.path.exists(p) for p in paths.values()):
    if not os.path.exists(f16_path):
        rng = np.random.default_rng(1)
        w = gguf.GGUFWriter(f16_path + ".part", "llama")
        w.add_block_count(LAYERS)
        w.add_context_length(8192)
        w.add_embedding_length(D)
        w.add_feed_forward_length(FF)
        w.add_head_count(NH)
        w.add_head_count_kv(NKV)
        w.add_rope_freq_base(500000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(HD)
        # A SentencePiece-style vocabulary: control tokens, the 256 byte tokens, filler pieces.
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens += [f"\u2581t{i}" for i in range(VOCAB - len(tokens))]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([-float(i) for i in range(VOCAB)])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)

        def mat(name, rows, cols, scale=0.02):
            w.add_tensor(name, (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float16))

        def vec(name, n):
            w.add_tensor(name, (1.0 + rng.standard_normal(n, dtype=np.float32) * 0.1).astype(np.float32))

        mat("token_embd.weight", VOCAB, D, 0.5)
        w.add_tensor("rope_freqs.weight", np.array([1.0 + (i % 8) for i in range(HD // 2)], dtype=np.float32))
        for l in range(LAYERS):
            vec(f"blk.{l}.attn_norm.weight", D)
            mat(f"blk.{l}.attn_q.weight", NH * HD, D)
            mat(f"blk.{l}.attn_k.weight", NKV * HD, D)
            mat(f"blk.{l}.attn_v.weight", NKV * HD, D)
            mat(f"blk.{l}.attn_output.weight", D, NH * HD)
            vec(f"blk.{l}.ffn_norm.weight", D)
            mat(f"blk.{l}.ffn_gate.weight", FF, D)
            mat(f"blk.{l}.ffn_up.weight", FF, D)
            mat(f"blk.{l}.ffn_down.weight", D, FF)
        vec("output_norm.weight", D)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(f16_path + ".part", f16_path)
    for name, ftype in targets.items():
        if os.path.exists(paths[name]):
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = os.cpu_count() or 2
        rc = llama_cpp.llama_model_quantize(f16_path.encode(), (paths[name] + ".part").encode(), ctypes.byref(params))
        if rc != 0:
            sys.exit(f"llama_model_quantize {name} failed: {rc}")
        os.replace(paths[name] + ".part", paths[name])
    os.remove(f16_path)
for p in paths.values():
    print(p)
