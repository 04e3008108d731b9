#!/usr/bin/env bash
# bfx's main job, end to end, on a fresh machine with the Rust toolchain,
# python3 and pip. It grows with the project: today it fetches ONNX Runtime,
# builds the release binaries, generates a synthetic screen with known ground
# truth, checks a trainer configuration against it (manifest, files, folds),
# measures its batch effects with the calibration probe, draws a contact
# sheet, trains and evaluates a small model on the leave-plate-out split, and
# exports it as a bundle, and runs the daemon on an empty folder while the
# held-out plates are replayed into it as a microscope would write them.
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

echo "==> Daemon: embed the held-out plates while they are replayed as a microscope writes them"
rm -rf "$demo/incoming" "$demo/embeddings.zarr" "$demo/embeddings.zarr.events.jsonl"
mkdir -p "$demo/incoming"
held_out=$(python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["held_out"]))' "$demo/run/last.json")
# Every synthetic plate has the same number of sites: a plate is complete
# (AdaBN statistics final) once they are all in.
per_plate=$(find "$demo/screen/$(echo "$held_out" | cut -d' ' -f1)" -name '*_w1.tif' | wc -l)
cat > "$demo/daemon.toml" <<TOML
# Written by scripts/demo.sh.
[daemon]
bundle = "bundle"
store = "embeddings.zarr"
channels = ["w1", "w2", "w3", "w4"]
[daemon.naming]
preset = "imagexpress"
[daemon.watch]
roots = ["incoming"]
poll_interval = "1s"
settle = "300ms"
[daemon.correction]
mode = "adabn"
adabn_min_sites = 32
[daemon.plate]
expected_sites = $per_plate
[daemon.commit]
max_interval = "1s"
TOML
"$bin/bfx-daemon" check-config "$demo/daemon.toml"
"$bin/bfx-daemon" run --config "$demo/daemon.toml" 2> "$demo/daemon.log" &
daemon_pid=$!
trap 'kill "$daemon_pid" 2>/dev/null || true' EXIT
expected=0
for plate in $held_out; do
  "$bin/bfx-daemon" replay "$demo/screen/$plate" "$demo/incoming/$plate" --rate 500
  expected=$((expected + $(find "$demo/screen/$plate" -name '*_w1.tif' | wc -l)))
done
stored() {
  python3 - "$demo/embeddings.zarr" "$@" <<'PY'
import json, os, sys
total = 0
for plate in sys.argv[2:]:
    try:
        meta = json.load(open(os.path.join(sys.argv[1], plate, "zarr.json")))
        total += meta["consolidated_metadata"]["metadata"]["X"]["shape"][0]
    except (OSError, KeyError, ValueError):
        pass
print(total)
PY
}
closed() { grep -c '"event":"plate-closed"' "$demo/embeddings.zarr.events.jsonl" 2>/dev/null || true; }
for _ in $(seq 300); do
  [ "$(stored $held_out)" -ge "$expected" ] && [ "$(closed)" -ge "$(echo $held_out | wc -w)" ] && break
  sleep 1
done
# SIGTERM drains the pipeline: the plates' final statistics are committed before it exits.
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
trap - EXIT
echo "    $(stored $held_out) of $expected sites of the held-out plates ($held_out) are in $demo/embeddings.zarr"
echo "    open one plate in Python:"
echo "      import anndata"
echo "      adata = anndata.read_zarr(\"$demo/embeddings.zarr/$(echo $held_out | cut -d' ' -f1)\")"
echo "Demo finished: binaries in $bin/; synthetic screen, contact sheet, the trained run (report in run/report/), its bundle and the daemon's store in $demo/."
