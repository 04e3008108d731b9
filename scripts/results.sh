#!/usr/bin/env bash
# Remakes docs/results.md, docs/results-f1.png, docs/results-scbd-alpha.md,
# docs/results-ist-lambdas.md and docs/ist-grid.png: generates the grid-like
# synthetic screen (seed 0); sweeps SCBD's alpha over 0, 8, 64, 128 and 192 at
# the IID and plate-out levels; sweeps IST's loss weights one at a time (each
# x10, content x0.1) at plate-out, seed 0, checking each run's generator with
# `bfx-trainer ist-grid`; then runs `bfx-trainer bench` for ERM, ABRA, DANN,
# MixStyle, SCBD with alpha 0, SCBD with the alpha of the best plate-out
# macro-F1 in its sweep and IST with the best plate-out weights of its sweep
# (AdaBN and IST test-time correction rows come from the same runs) at every
# level, fold 0, seeds 0, 1 and 2. The benches share one run folder, so the
# sweeps' runs are reused. Hours on 2 CPU cores; the work folder
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
ist_variants=ist,ist:lambda_style=10,ist:lambda_content=0.1,ist:lambda_cycle=10,ist:lambda_class=10
"$bin/bfx-trainer" bench --config "$work/bench.toml" --out "$work/bench" \
    --methods "$ist_variants" --levels plate --folds 0 --seeds 0 \
    --made-by scripts/results.sh
grep -v '^!\[' "$work/bench/results.md" > docs/results-ist-lambdas.md
checks=()
for variant in ${ist_variants//,/ }; do
    dir=$(echo "$variant" | sed -e 's/:/-/g' -e 's/=//g')
    run="$work/bench/runs/$dir/plate-fold0-seed0"
    "$bin/bfx-trainer" ist-grid --run "$run" --out "$run/ist-grid.png"
    checks+=("$variant=$run/ist-grid.json")
done
# The weights with the best plate-out macro-F1, and the generator checks' table.
ist=$(python3 - "$work/bench/results.json" docs/results-ist-lambdas.md "${checks[@]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
col = r["levels"].index("plate")
plain = [x for x in r["rows"] if not x["adabn"] and x.get("test_time_styles") is None and x["f1"][col]]
best = max(plain, key=lambda x: x["f1"][col][0])["variant"]
with open(sys.argv[2], "a") as doc:
    doc.write("\n## The generators, checked by `bfx-trainer ist-grid`\n\n"
              "Over 256 training images, each restyled with the style of an image of another plate. Content kept: "
              "IoU of the nucleus masks (channel 0 above its mean plus one standard deviation) of content and restyled "
              "image, and the mean per-channel pixel correlation; unrelated image pairs give the level of no content kept. "
              "Plate moved: a logistic regression on per-channel intensity statistics, fitted on the real training "
              "images, reads each restyled image's plate.\n\n"
              "| variant | nucleus IoU (unrelated) | pixel correlation (unrelated) | nucleus area change | to the style's plate | to the content's plate |\n"
              "|---|---|---|---|---|---|\n")
    for arg in sys.argv[3:]:
        variant, path = arg.split("=", 1) if arg.count("=") == 1 else arg.rsplit("=", 1)
        c = json.load(open(path))
        doc.write(f"| {variant} | {c['nucleus_iou']:.3f} ({c['nucleus_iou_unrelated']:.3f}) | "
                  f"{c['pixel_correlation']:.3f} ({c['pixel_correlation_unrelated']:.3f}) | {c['nucleus_area_change']:.3f} | "
                  f"{c['assigned_to_style_env']:.3f} | {c['assigned_to_content_env']:.3f} |\n")
    doc.write(f"\nBest plate-out macro-F1: `{best}`, used for the IST rows of docs/results.md.\n")
print(best)
PY
)
echo "best IST weights at leave-plate-out: $ist"
cp "$work/bench/runs/$(echo "$ist" | sed -e 's/:/-/g' -e 's/=//g')/plate-fold0-seed0/ist-grid.png" docs/ist-grid.png
"$bin/bfx-trainer" bench --config "$work/bench.toml" --out "$work/bench" \
    --methods "erm,abra,dann,mixstyle,$scbd,$ist" --levels iid,section,plate,series --folds 0 --seeds 0,1,2 \
    --made-by scripts/results.sh
sed 's/(f1_by_level.png)/(results-f1.png)/' "$work/bench/results.md" > docs/results.md
cp "$work/bench/f1_by_level.png" docs/results-f1.png
echo "wrote docs/results.md, docs/results-f1.png, docs/results-scbd-alpha.md, docs/results-ist-lambdas.md and docs/ist-grid.png"
