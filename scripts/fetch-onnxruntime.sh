#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library from PyPI into the git-ignored folder
# .ort/<cpu|gpu>/ of this repository. ort's own download (a CDN) is unreachable
# on the machines bfx is built on; PyPI is not.
#
#   scripts/fetch-onnxruntime.sh          # CPU build  -> .ort/cpu/libonnxruntime.so
#   scripts/fetch-onnxruntime.sh --gpu    # CUDA 13 build with its provider libraries -> .ort/gpu/
#
# Idempotent: a library already present with the expected sha256 is kept.
set -euo pipefail

version=1.31.1
flavour=cpu
package=onnxruntime
case "${1:-}" in
  "") ;;
  --gpu) flavour=gpu; package=onnxruntime-gpu ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "fetch-onnxruntime: unknown option '$1' (expected --gpu or nothing)" >&2; exit 2 ;;
esac

# sha256 of libonnxruntime.so.$version inside the wheels, per machine and flavour.
# The same bytes ship in every CPython version's wheel.
case "$(uname -m)-$flavour" in
  x86_64-cpu) expected=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3 ;;
  x86_64-gpu) expected=5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303 ;;
  *) echo "fetch-onnxruntime: no recorded sha256 for $(uname -m) ($flavour); add it to $0 after checking the wheel by hand" >&2; exit 1 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/.ort/$flavour"
lib="$dest/libonnxruntime.so.$version"

sha_of() { python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

if [ -f "$lib" ] && [ "$(sha_of "$lib")" = "$expected" ]; then
  echo "ONNX Runtime $version ($flavour) already in $dest"
else
  command -v python3 >/dev/null || { echo "fetch-onnxruntime: python3 is required (it runs pip)" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "Fetching $package==$version from PyPI ..."
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "$package==$version" -d "$tmp"
  wheel=$(ls "$tmp"/*.whl)
  mkdir -p "$dest"
  # Extract the runtime (and for the GPU build its provider libraries) flat into $dest.
  python3 - "$wheel" "$dest" "$flavour" <<'PY'
import os, sys, zipfile
wheel, dest, flavour = sys.argv[1:4]
wanted = ["libonnxruntime.so."]
if flavour == "gpu":
    wanted += ["libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so"]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and any(base.startswith(w) for w in wanted):
            with z.open(name) as src, open(os.path.join(dest, base + ".part"), "wb") as out:
                out.write(src.read())
            os.replace(os.path.join(dest, base + ".part"), os.path.join(dest, base))
PY
  [ -f "$lib" ] || { echo "fetch-onnxruntime: $wheel holds no libonnxruntime.so.$version" >&2; exit 1; }
  actual=$(sha_of "$lib")
  if [ "$actual" != "$expected" ]; then
    rm -f "$lib"
    echo "fetch-onnxruntime: sha256 mismatch for libonnxruntime.so.$version: expected $expected, got $actual" >&2
    exit 1
  fi
fi

# The library's SONAME is libonnxruntime.so.1 and its RUNPATH is $ORIGIN.
ln -sfn "libonnxruntime.so.$version" "$dest/libonnxruntime.so.1"
ln -sfn libonnxruntime.so.1 "$dest/libonnxruntime.so"
echo "ONNX Runtime $version ($flavour): $dest/libonnxruntime.so"
