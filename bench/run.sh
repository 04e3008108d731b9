#!/usr/bin/env bash
# Seconds per training step, bfx (Candle) beside PyTorch on the same
# ResNet18, same batch and the same number of threads, measured in one run;
# writes docs/performance.md. PyTorch comes from PyPI into .venv-bench
# (a large download the first time).
#
# Usage: bench/run.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
torch_version=2.15.0
if [ ! -x .venv-bench/bin/python ]; then
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install --quiet "torch==$torch_version" numpy
fi
cargo build --release --locked -p bfx-bench
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# width batch channels size steps: the issue's setting, then a narrow model.
for config in "64 32 5 64 10" "32 32 5 64 10" "16 32 4 64 10"; do
    RAYON_NUM_THREADS=$threads target/release/training-step $config | tee -a "$results"
    .venv-bench/bin/python bench/training_step.py $config "$threads" | tee -a "$results"
done
.venv-bench/bin/python - "$results" "$threads" > docs/performance.md <<'PY'
import json, sys, platform, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
threads = sys.argv[2]
print("# Performance\n")
print("Made by `bench/run.sh`; do not edit by hand. Medians of 10 timed steps after 2 warm-up steps,")
print(f"bfx and PyTorch run one after the other in the same invocation, {threads} threads each, on {os.cpu_count()} CPUs ({platform.machine()}).\n")
print("## Training step (ERM: forward in train mode, cross-entropy, backward, AdamW)\n")
print("| network | input | batch | bfx (Candle) s/step | PyTorch s/step | bfx / PyTorch |")
print("|---|---|---|---|---|---|")
for c, t in zip(rows[0::2], rows[1::2]):
    print(f"| ResNet18 width {c['width']} | {c['channels']}x{c['size']}x{c['size']} | {c['batch']} | "
          f"{c['median_s']:.3f} | {t['median_s']:.3f} | {c['median_s'] / t['median_s']:.1f}x |")
print(f"\nPyTorch: {rows[1]['framework']}. The network is the same layer for layer (bench/training_step.py mirrors trainer/src/nn/resnet.rs).")
PY
cat docs/performance.md
