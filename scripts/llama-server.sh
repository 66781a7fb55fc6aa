#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (continuous batching, --parallel, per-request LoRA): the
# serving benchmark's peer. The source is the llama.cpp tree vendored in llama-cpp-python's source
# distribution on the Python registry (the same version the other benchmarks measure), checked
# against its published digest; nothing else is downloaded. Cached under .cache/llama-server; the
# first build takes several minutes on 2 cores. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz"
dir="$PWD/.cache/llama-server"
bin="$dir/build/bin/llama-server"
if [ -x "$bin" ] && [ "$(cat "$dir/version" 2>/dev/null)" = "$version" ]; then
  echo "$bin"
  exit 0
fi
command -v cmake >/dev/null || { apt-get install -y -q cmake >&2 || pip install --quiet cmake >&2; }
mkdir -p "$dir"
tarball="$dir/llama_cpp_python-$version.tar.gz"
if ! echo "$sha256  $tarball" | sha256sum -c --quiet 2>/dev/null; then
  curl -sSfL --retry 3 -o "$tarball.part" "$url"
  echo "$sha256  $tarball.part" | sha256sum -c --quiet
  mv "$tarball.part" "$tarball"
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
