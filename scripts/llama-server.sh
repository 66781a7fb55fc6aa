#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (continuous batching, --parallel, per-request LoRA): the
# serving benchmark's peer. The source is the llama.cpp tree vendored in llama-cpp-python's source
# distribution on the Python registry (fetched with pip, the registry's own client; the same
# version the other benchmarks measure), checked against its published digest; nothing else is
# downloaded. Prints only the binary's path on stdout (build output goes to stderr). Cached under .cache/llama-server; the
# first build takes several minutes on 2 cores. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dir="$PWD/.cache/llama-server"
bin="$dir/build/bin/llama-server"
if [ -x "$bin" ] && [ "$(cat "$dir/version" 2>/dev/null)" = "$version" ]; then
  echo "$bin"
  exit 0
fi
command -v cmake >/dev/null || { apt-get install -y -q cmake >&2 || pip install --quiet cmake >&2; }
mkdir -p "$dir"
tarball="$dir/llama_cpp_python-$version.tar.gz"
if ! sha256sum --check --status <<<"$sha256  $tarball" 2>/dev/null; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --disable-pip-version-check \
    -d "$tmp" "llama-cpp-python==$version" >&2
  sha256sum --check --status <<<"$sha256  $tmp/llama_cpp_python-$version.tar.gz" \
    || { echo "llama-cpp-python $version source: checksum mismatch" >&2; rm -rf "$tmp"; exit 1; }
  mv "$tmp/llama_cpp_python-$version.tar.gz" "$tarball"
  rm -rf "$tmp"
fi
rm -rf "$dir/src"
mkdir -p "$dir/src"
tar -xzf "$tarball" -C "$dir/src" --strip-components=1
src="$dir/src/vendor/llama.cpp"
# The server without its web UI (no prebuilt bundle to fetch) and without HTTPS (loopback only).
cmake -S "$src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$dir/build" --target llama-server -j "$(nproc)" >&2
echo "$version" > "$dir/version"
echo "$bin"
