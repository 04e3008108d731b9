#!/usr/bin/env bash
# Remakes docs/synthetic.md and docs/synthetic-grid-like.png: generates the
# grid-like synthetic screen (seed 0) in a temporary folder and runs the
# calibration probe on it. Takes about a minute after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bfx-trainer
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/bfx-trainer synth --preset grid-like --seed 0 --out "$work/grid-like"
target/release/bfx-trainer calibrate --root "$work/grid-like" \
    --report docs/synthetic.md --sheet docs/synthetic-grid-like.png \
    --made-by scripts/synthetic-report.sh
