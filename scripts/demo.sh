#!/usr/bin/env bash
# bfx's main job, end to end, on a fresh machine with the Rust toolchain,
# python3 and pip. It grows with the project: today it fetches ONNX Runtime,
# builds the release binaries, and checks a trainer configuration and a daemon
# configuration (ONNX Runtime loaded, acquisition folder readable). Training,
# export and the daemon's pipeline join as they land (see README, Status).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.bfx-demo

echo "==> ONNX Runtime"
scripts/fetch-onnxruntime.sh
echo "==> Build (release)"
cargo build --release --locked --bins
bin=target/release

echo "==> Trainer configuration"
"$bin/bfx-trainer" check-config config/examples/trainer.toml

echo "==> Daemon configuration"
mkdir -p "$demo/acquisition"
cat > "$demo/daemon.toml" <<TOML
# Written by scripts/demo.sh.
[daemon]
bundle = "bundle"
store = "embeddings.zarr"
[daemon.naming]
preset = "imagexpress"
[daemon.watch]
roots = ["acquisition"]
TOML
# The bundle check is skipped until bfx-trainer can export one.
"$bin/bfx-daemon" check-config "$demo/daemon.toml" --skip-bundle
echo "Demo finished: binaries in $bin/, demo files in $demo/."
