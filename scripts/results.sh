#!/usr/bin/env bash
# Remakes docs/results.md and docs/results-f1.png: generates the grid-like
# synthetic screen (seed 0), then runs `bfx-trainer bench` for ERM, ABRA,
# DANN and MixStyle (AdaBN rows come from the same runs) at every level,
# fold 0, seeds 0, 1 and 2. About an hour on 2 CPU cores; the work folder
# .bfx-results/ keeps finished runs, so running it again continues.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bfx-trainer
bin=target/release
work=.bfx-results
if [ ! -f "$work/screen/manifest.csv" ]; then
    rm -rf "$work/screen"
    "$bin/bfx-trainer" synth --preset grid-like --seed 0 --out "$work/screen"
fi
cat > "$work/bench.toml" <<TOML
# Written by scripts/results.sh.
[trainer]
out = "unused"
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
[trainer.optim]
lr = 1e-3
batch_size = 32
steps = 200
TOML
"$bin/bfx-trainer" bench --config "$work/bench.toml" --out "$work/bench" \
    --methods erm,abra,dann,mixstyle --levels iid,section,plate,series --folds 0 --seeds 0,1,2 \
    --made-by scripts/results.sh
sed 's/(f1_by_level.png)/(results-f1.png)/' "$work/bench/results.md" > docs/results.md
cp "$work/bench/f1_by_level.png" docs/results-f1.png
echo "wrote docs/results.md and docs/results-f1.png"
