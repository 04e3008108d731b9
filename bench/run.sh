#!/usr/bin/env bash
# Seconds per training step of bfx's networks with bfx's kernels ("after"),
# with Candle's own ops ("before") and in PyTorch, on the same network,
# batch and number of threads, measured one after the other in one run;
# prints the ratios and writes docs/performance.md. PyTorch comes from
# PyPI into .venv-bench (a large download the first time).
#
# Usage: bench/run.sh [THREADS] [ROUNDS]   (defaults 2 and 5; about 20 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-5}
torch_version=2.15.0
if [ ! -x .venv-bench/bin/python ]; then
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install --quiet "torch==$torch_version" numpy
fi
cargo build --release --locked -p bfx-bench
results=$(mktemp)
phases=$(mktemp)
host=$(mktemp)
trap 'rm -f "$results" "$phases" "$host"' EXIT
.venv-bench/bin/python bench/host.py > "$host"
steps=10
run() { # binary python-script args...
    local bin=$1 script=$2
    shift 2
    # Before: Candle's ops with Candle's own pool at its default size.
    CANDLE_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads "target/release/$bin" "$@" --candle-ops | tee -a "$results"
    RAYON_NUM_THREADS=$threads "target/release/$bin" "$@" | tee -a "$results"
    (cd bench && ../.venv-bench/bin/python "$script" "$@" "$threads") | tee -a "$results"
}
# This VM's speed drifts by tens of percent within minutes, so the three
# networks' before/after/PyTorch runs are repeated in rounds, interleaved,
# and each number is the median over the rounds.
for _ in $(seq "$rounds"); do
    # width batch channels size steps [norm]
    run training-step training_step.py 64 32 5 64 $steps bn
    run training-step training_step.py 32 32 5 64 $steps in
    run generator-step generator_step.py 32 32 5 64 $steps
done
# IST's phases as bfx-trainer runs them: the results' setting, then the generator row's.
RAYON_NUM_THREADS=$threads target/release/ist-phases 16 32 4 32 $steps | tee -a "$phases"
RAYON_NUM_THREADS=$threads target/release/ist-phases 32 32 5 64 $steps | tee -a "$phases"
.venv-bench/bin/python - "$results" "$threads" "$steps" "$phases" "$rounds" "$host" > docs/performance.md <<'PY'
import json, sys, statistics
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
phases = [json.loads(l) for l in open(sys.argv[4]) if l.strip()]
threads, steps, rounds = sys.argv[2], sys.argv[3], int(sys.argv[5])
# runs: rounds x networks x (before, after, PyTorch); each row keeps the
# first round's labels and the median over the rounds of every time.
per_round = len(runs) // rounds
def merged(i):
    same = [runs[r * per_round + i] for r in range(rounds)]
    row = dict(same[0])
    for key, value in row.items():
        if key.endswith("_s"):
            row[key] = statistics.median(s[key] for s in same)
    return row
rows = [merged(i) for i in range(per_round)]
print("# Performance\n")
print("Training speed; the daemon's throughput, latency and memory are in [performance-daemon.md](performance-daemon.md) (`bench/daemon.sh`).\n")
print(f"Made by `bench/run.sh`; do not edit by hand. Each time is the median over {rounds} rounds of the median")
print(f"of {steps} timed steps after 2 warm-up steps; in every round, for each network, Candle's own ops (before),")
host = json.load(open(sys.argv[6]))
cpu = f"{host['cpu']}, {host['arch']}, " + ("AVX-512" if host["avx512"] else "no AVX-512")
print(f"bfx's kernels (after) and PyTorch run one after the other, {threads} threads each, on {host['cpus']} CPUs ({cpu}).")
print("bfx runs as `bfx-trainer` does: mimalloc as allocator keeping freed memory, Candle's own thread pool at one thread")
print("(trainer/src/runtime.rs); \"before\" is the same binary with Candle's ops and Candle's pool at its default size.\n")
print("## Training step\n")
print("ResNet rows: ERM (forward in train mode, cross-entropy, backward, AdamW). Generator row: frozen encoder")
print("on content and style images, UNet-AdaIN decoder, L1 loss, backward, AdamW over the decoder.\n")
print("| network | input | batch | before (Candle ops) s | after (bfx kernels) s | PyTorch s | after / PyTorch | before / after |")
print("|---|---|---|---|---|---|---|---|")
for before, after, torch in zip(rows[0::3], rows[1::3], rows[2::3]):
    assert before["framework"] == "candle" and after["framework"] == "bfx", (before, after)
    print(f"| {after['network']} | {after['input']} | {after['batch']} | {before['median_s']:.3f} | "
          f"{after['median_s']:.3f} | {torch['median_s']:.3f} | {after['median_s'] / torch['median_s']:.2f}x | "
          f"{before['median_s'] / after['median_s']:.1f}x |")
print("\n## Inference forward (embedding, running statistics)\n")
print("| network | input | batch | before (Candle ops) s | after (bfx kernels) s | PyTorch s | after / PyTorch |")
print("|---|---|---|---|---|---|---|")
for before, after, torch in zip(rows[0::3], rows[1::3], rows[2::3]):
    if "inference_s" in after:
        print(f"| {after['network']} | {after['input']} | {after['batch']} | {before['inference_s']:.3f} | "
              f"{after['inference_s']:.3f} | {torch['inference_s']:.3f} | {after['inference_s'] / torch['inference_s']:.2f}x |")
print("\n## Where the ResNet training step goes (bfx kernels, medians, s)\n")
print("| network | forward | backward | optimizer |")
print("|---|---|---|---|")
for after in rows[1::3]:
    if "forward_s" in after:
        print(f"| {after['network']} | {after['forward_s']:.3f} | {after['backward_s']:.3f} | {after['optimizer_s']:.3f} |")
print("\n## IST: seconds per training step of each phase (bfx kernels, medians)\n")
print("`bench/src/ist_phases.rs` runs the registered `ist` method's steps as `bfx-trainer fit` does; each step")
print("draws `batch` content and `batch` style images. Encoder (on both): E's class and plate cross-entropy, backward, AdamW.")
print("Generator and critic: E on content and style, G, E on the generated images, G again for the cycle, D on")
print("generated images; backward and AdamW over G; then D on real and generated images, backward, AdamW over D.")
print("Predictor: E and G restyle the content (no gradient), predictor cross-entropy, backward, AdamW.\n")
print("| network | input | batch | encoder s | generator and critic s | predictor s |")
print("|---|---|---|---|---|---|")
for k in range(0, len(phases), 3):
    e, g, p = phases[k:k + 3]
    print(f"| {e['network']} | {e['input']} | {e['batch']} | {e['median_s']:.3f} | {g['median_s']:.3f} | {p['median_s']:.3f} |")
print(f"\nPyTorch: {rows[2]['framework']}. The networks are the same layer for layer "
      "(bench/training_step.py mirrors trainer/src/nn/resnet.rs, bench/generator_step.py mirrors bench/src/generator_step.rs).")
PY
cat docs/performance.md
