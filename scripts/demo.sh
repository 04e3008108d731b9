#!/usr/bin/env bash
# bfx's main job, end to end, on a fresh machine with the Rust toolchain,
# python3 and pip. It grows with the project: today it fetches ONNX Runtime,
# builds the release binaries, generates a synthetic screen with known ground
# truth, checks a trainer configuration against it (manifest, files, folds),
# measures its batch effects with the calibration probe, draws a contact
# sheet, trains and evaluates a small model on the leave-plate-out split, and
# checks a daemon configuration (ONNX Runtime loaded, acquisition folder
# readable). Export and the daemon's pipeline join as they land (see README,
# Status).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.bfx-demo
preset=${BFX_DEMO_PRESET:-grid-like}

echo "==> ONNX Runtime"
scripts/fetch-onnxruntime.sh
echo "==> Build (release)"
# The commit is recorded in exported bundles (provenance).
BFX_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)" cargo build --release --locked --bins
bin=target/release

echo "==> Synthetic screen ($preset)"
rm -rf "$demo/screen"
mkdir -p "$demo"
"$bin/bfx-trainer" synth --preset "$preset" --seed 0 --out "$demo/screen"

echo "==> Trainer configuration and data"
cat > "$demo/trainer.toml" <<TOML
# Written by scripts/demo.sh.
[trainer]
out = "run"
[trainer.data]
root = "screen"
manifest = "screen/manifest.csv"
[trainer.preprocess]
channels = ["w1", "w2", "w3", "w4"]
# Fixed percentiles keep the intensity differences between plates: the
# batch effects the methods have to cope with.
normalization = { kind = "percentile", low = [100.0, 100.0, 100.0, 100.0], high = [5000.0, 2500.0, 5000.0, 3000.0], clip = false }
geometry = { kind = "resize", height = 64, width = 64 }
[trainer.model]
width = 16
embedding_dim = 64
[trainer.optim]
lr = 1e-3
batch_size = 32
steps = ${BFX_DEMO_STEPS:-200}
[trainer.split]
level = "plate"
fold = 0
TOML
"$bin/bfx-trainer" check-config "$demo/trainer.toml"

echo "==> Batch effects in the screen (linear probe on intensity features)"
"$bin/bfx-trainer" calibrate --root "$demo/screen"
"$bin/bfx-trainer" contact-sheet --root "$demo/screen" --out "$demo/contact-sheet.png" --zoom 2

echo "==> Train ERM on the leave-plate-out split and evaluate it"
rm -rf "$demo/run"
"$bin/bfx-trainer" fit --config "$demo/trainer.toml"
"$bin/bfx-trainer" eval --run "$demo/run"

echo "==> Export the model as a bundle for the daemon"
"$bin/bfx-trainer" export "$demo/run" --out "$demo/bundle" --replace

echo "==> Daemon configuration"
cat > "$demo/daemon.toml" <<TOML
# Written by scripts/demo.sh.
[daemon]
bundle = "bundle"
store = "embeddings.zarr"
channels = ["w1", "w2", "w3", "w4"]
[daemon.naming]
preset = "imagexpress"
[daemon.watch]
roots = ["screen"]
TOML
"$bin/bfx-daemon" check-config "$demo/daemon.toml"
echo "Demo finished: binaries in $bin/; synthetic screen, contact sheet, the trained run (report in run/report/) and its bundle in $demo/."
