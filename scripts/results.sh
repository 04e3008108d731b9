#!/usr/bin/env bash
# Remakes docs/results.md, docs/results-f1.png and docs/results-scbd-alpha.md:
# generates the grid-like synthetic screen (seed 0); sweeps SCBD's alpha over
# 0, 8, 64, 128 and 192 at the IID and plate-out levels; then runs `bfx-trainer
# bench` for ERM, ABRA, DANN, MixStyle, SCBD with alpha 0 and SCBD with the
# alpha of the best plate-out macro-F1 in the sweep (AdaBN rows come from the
# same runs) at every level, fold 0, seeds 0, 1 and 2. Both benches share one
# run folder, so the sweep's runs are reused. Hours on 2 CPU cores; the work
# folder .bfx-results/ keeps finished runs, so running it again continues.
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
alphas=0,8,64,128,192
"$bin/bfx-trainer" bench --config "$work/bench.toml" --out "$work/bench" \
    --methods "scbd:alpha=${alphas//,/,scbd:alpha=}" --levels iid,plate --folds 0 --seeds 0,1,2 \
    --made-by scripts/results.sh
grep -v '^!\[' "$work/bench/results.md" > docs/results-scbd-alpha.md
# The alpha with the best plate-out macro-F1 (training statistics).
best=$(python3 - "$work/bench/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
col = r["levels"].index("plate")
rows = [x for x in r["rows"] if not x["adabn"] and x["f1"][col]]
print(max(rows, key=lambda x: x["f1"][col][0])["variant"].split("=")[1])
PY
)
echo "best SCBD alpha at leave-plate-out: $best"
scbd=scbd:alpha=0
[ "$best" = 0 ] || scbd="$scbd,scbd:alpha=$best"
"$bin/bfx-trainer" bench --config "$work/bench.toml" --out "$work/bench" \
    --methods "erm,abra,dann,mixstyle,$scbd" --levels iid,section,plate,series --folds 0 --seeds 0,1,2 \
    --made-by scripts/results.sh
sed 's/(f1_by_level.png)/(results-f1.png)/' "$work/bench/results.md" > docs/results.md
cp "$work/bench/f1_by_level.png" docs/results-f1.png
echo "wrote docs/results.md, docs/results-f1.png and docs/results-scbd-alpha.md"
