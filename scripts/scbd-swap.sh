#!/usr/bin/env bash
# Draws docs/scbd-swap.png, SCBD's qualitative check: generates the grid-like
# synthetic screen (seed 0), trains SCBD with its decoder on the IID split
# (alpha 8 unless given as the first argument; 1000 steps, 32x32, width 16, as
# scripts/results.sh but longer so the decoder converges) and writes the swap
# grid: rows give z_c (phenotype), columns z_e (plate look). A few minutes on
# 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
alpha=${1:-8}
cargo build --release --locked -p bfx-trainer
bin=target/release
work=.bfx-swap
if [ ! -f "$work/screen/manifest.csv" ]; then
    rm -rf "$work/screen"
    "$bin/bfx-trainer" synth --preset grid-like --seed 0 --out "$work/screen"
fi
rm -rf "$work/run"
cat > "$work/fit.toml" <<TOML
# Written by scripts/scbd-swap.sh.
[trainer]
out = "run"
[trainer.data]
root = "screen"
manifest = "screen/manifest.csv"
cache_dir = "cache"
[trainer.preprocess]
channels = ["w1", "w2", "w3", "w4"]
normalization = { kind = "percentile", low = [100.0, 100.0, 100.0, 100.0], high = [5000.0, 2500.0, 5000.0, 3000.0], clip = false }
geometry = { kind = "resize", height = 32, width = 32 }
[trainer.model]
width = 16
embedding_dim = 64
[trainer.method]
name = "scbd"
params = { alpha = $alpha, decoder = true }
[trainer.optim]
lr = 1e-3
batch_size = 32
steps = 1000
TOML
"$bin/bfx-trainer" fit --config "$work/fit.toml"
"$bin/bfx-trainer" swap --run "$work/run" --out docs/scbd-swap.png --images 6 --zoom 3
