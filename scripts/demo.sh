#!/usr/bin/env bash
# bfx's main job, end to end, on a fresh machine with the Rust toolchain,
# python3 and pip. It grows with the project: today it fetches ONNX Runtime,
# builds the release binaries, generates a synthetic screen with known ground
# truth, checks a trainer configuration against it (manifest, files, folds),
# measures its batch effects with the calibration probe, draws a contact
# sheet, and checks a daemon configuration (ONNX Runtime loaded, acquisition
# folder readable). Training, export and the daemon's pipeline join as they
# land (see README, Status).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.bfx-demo
preset=${BFX_DEMO_PRESET:-grid-like}

echo "==> ONNX Runtime"
scripts/fetch-onnxruntime.sh
echo "==> Build (release)"
cargo build --release --locked --bins
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
normalization = { kind = "self-standardize", eps = 1e-6 }
geometry = { kind = "resize", height = 64, width = 64 }
[trainer.split]
level = "plate"
fold = 0
TOML
"$bin/bfx-trainer" check-config "$demo/trainer.toml"

echo "==> Batch effects in the screen (linear probe on intensity features)"
"$bin/bfx-trainer" calibrate --root "$demo/screen"
"$bin/bfx-trainer" contact-sheet --root "$demo/screen" --out "$demo/contact-sheet.png" --zoom 2

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
# The bundle check is skipped until bfx-trainer can export one.
"$bin/bfx-daemon" check-config "$demo/daemon.toml" --skip-bundle
echo "Demo finished: binaries in $bin/, synthetic screen and contact sheet in $demo/."
