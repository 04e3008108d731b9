#!/usr/bin/env bash
# bfx's main job, end to end, on a fresh machine with the Rust toolchain,
# python3 and pip: fetch ONNX Runtime, build the release binaries, create
# the Python venv that reads the store, generate a synthetic screen with
# known ground truth, check a trainer configuration against it, measure its
# batch effects, train a model (ABRA unless --method says otherwise) on the
# leave-plate-out split, evaluate and export it, run the daemon on an empty
# folder while the plates are replayed into it as a microscope writes them
# (training plates first, then the held-out ones), once with batch
# correction and once without, and print a summary: sites per plate, a kNN
# probe on the held-out plates with and without correction, where the store
# is and how to open it.
#
# usage: scripts/demo.sh [--method erm|abra|dann|mixstyle|scbd|ist]
# BFX_DEMO_PRESET (default grid-like) and BFX_DEMO_STEPS change the screen
# and the training length. IST trains three networks and restyles every
# batch: it takes far longer than the others.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.bfx-demo
preset=${BFX_DEMO_PRESET:-grid-like}
method=abra
while [ $# -gt 0 ]; do
  case "$1" in
    --method) method=${2:?--method needs a value}; shift 2 ;;
    --method=*) method=${1#--method=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$method" in
  erm|abra|dann|mixstyle|scbd) params="{}" ;;
  # IST's three phases, shortened so the demo stays within its time.
  ist) params="{ encoder_steps = 150, generator_steps = 300 }" ;;
  *) echo "demo.sh: unknown method $method (erm, abra, dann, mixstyle, scbd, ist)" >&2; exit 2 ;;
esac
started=$(date +%s)
stage() { echo "==> [$(( $(date +%s) - started )) s] $*"; }

stage "ONNX Runtime"
scripts/fetch-onnxruntime.sh
stage "Build (release)"
# The commit is recorded in exported bundles (provenance).
BFX_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)" cargo build --release --locked -p bfx-trainer -p bfx-daemon --bins
bin=target/release
stage "Python venv (anndata reads the stores for the summary)"
python=$(scripts/setup-venv.sh | tail -n 1)

stage "Synthetic screen ($preset)"
rm -rf "$demo/screen"
mkdir -p "$demo"
"$bin/bfx-trainer" synth --preset "$preset" --seed 0 --out "$demo/screen"

stage "Trainer configuration and data"
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
[trainer.method]
name = "$method"
params = $params
[trainer.model]
width = 16
embedding_dim = 64
[trainer.optim]
lr = 1e-3
batch_size = 32
steps = ${BFX_DEMO_STEPS:-1000}
[trainer.split]
level = "plate"
fold = 0
TOML
"$bin/bfx-trainer" check-config "$demo/trainer.toml"

stage "Batch effects in the screen (linear probe on intensity features)"
"$bin/bfx-trainer" calibrate --root "$demo/screen"
"$bin/bfx-trainer" contact-sheet --root "$demo/screen" --out "$demo/contact-sheet.png" --zoom 2

stage "Train $method on the leave-plate-out split and evaluate it"
rm -rf "$demo/run"
"$bin/bfx-trainer" fit --config "$demo/trainer.toml"
"$bin/bfx-trainer" eval --run "$demo/run"

stage "Export the model as a bundle for the daemon"
"$bin/bfx-trainer" export "$demo/run" --out "$demo/bundle" --replace

stage "Daemon: embed the plates as a microscope writes them (training plates, then the held-out ones)"
held_out=$(python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["held_out"]))' "$demo/run/last.json")
training=$(for d in "$demo"/screen/*/; do p=$(basename "$d"); case " $held_out " in *" $p "*) ;; *) echo "$p" ;; esac; done)
# Every synthetic plate has the same number of sites: a plate is complete
# (AdaBN statistics final) once they are all in.
per_plate=$(find "$demo/screen/$(echo "$held_out" | cut -d' ' -f1)" -name '*_w1.tif' | wc -l)
n_plates=$(echo $training $held_out | wc -w)
expected=$((per_plate * n_plates))
modes=$(python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["correction_modes"]))' "$demo/bundle/manifest.json")
corrected=none
for m in ist adabn; do
  case " $modes " in *" $m "*) corrected=$m; break ;; esac
done
rm -rf "$demo/incoming"
mkdir -p "$demo/incoming"

stored() {
  python3 - "$1" <<'PY'
import json, os, sys
total = 0
for group in os.listdir(sys.argv[1]) if os.path.isdir(sys.argv[1]) else []:
    try:
        meta = json.load(open(os.path.join(sys.argv[1], group, "zarr.json")))
        total += meta["consolidated_metadata"]["metadata"]["X"]["shape"][0]
    except (OSError, KeyError, ValueError):
        pass
print(total)
PY
}
closed() { grep -c '"event":"plate-closed"' "$1.events.jsonl" 2>/dev/null || true; }

# embed MODE STORE [replay]: run the daemon with correction MODE into STORE
# (under $demo) until every site is stored and every plate closed; with
# `replay`, copy the plates into the empty watched folder while it runs.
embed() {
  local mode=$1 store=$demo/$2 replay=${3:-}
  rm -rf "$store" "$store.events.jsonl"
  cat > "$demo/daemon-$mode.toml" <<TOML
# Written by scripts/demo.sh.
[daemon]
bundle = "bundle"
store = "$2"
channels = ["w1", "w2", "w3", "w4"]
[daemon.naming]
preset = "imagexpress"
[daemon.watch]
roots = ["incoming"]
poll_interval = "1s"
settle = "300ms"
[daemon.correction]
mode = "$mode"
adabn_min_sites = 32
[daemon.plate]
expected_sites = $per_plate
[daemon.commit]
max_interval = "1s"
[daemon.http]
listen = "127.0.0.1:0"
TOML
  "$bin/bfx-daemon" check-config "$demo/daemon-$mode.toml" | sed 's/^/    /'
  "$bin/bfx-daemon" run --config "$demo/daemon-$mode.toml" 2> "$demo/daemon-$mode.log" &
  daemon_pid=$!
  trap 'kill "$daemon_pid" 2>/dev/null || true' EXIT
  if [ "$replay" = replay ]; then
    for plate in $training $held_out; do
      case " $held_out " in
        *" $plate "*) rate=100; role="held out" ;;
        *) rate=1000; role="training" ;;
      esac
      echo "    replaying $plate ($role, $rate files/s)"
      "$bin/bfx-daemon" replay "$demo/screen/$plate" "$demo/incoming/$plate" --rate $rate >/dev/null
    done
  fi
  local waited=0
  until [ "$(stored "$store")" -ge "$expected" ] && [ "$(closed "$store")" -ge "$n_plates" ]; do
    kill -0 "$daemon_pid" 2>/dev/null || { echo "demo.sh: the daemon stopped; see $demo/daemon-$mode.log" >&2; exit 1; }
    [ "$waited" -lt 600 ] || { echo "demo.sh: only $(stored "$store") of $expected sites stored after 10 min; see $demo/daemon-$mode.log" >&2; exit 1; }
    [ $((waited % 10)) -eq 0 ] && echo "    $(stored "$store") of $expected sites stored"
    sleep 1
    waited=$((waited + 1))
  done
  # SIGTERM drains the pipeline: the plates' final statistics are committed before it exits.
  kill -TERM "$daemon_pid"
  wait "$daemon_pid" || true
  trap - EXIT
  echo "    $(stored "$store") of $expected sites in $store (correction $mode)"
}
embed "$corrected" embeddings.zarr replay
stage "Daemon again without correction, over the same folder (for comparison)"
embed none embeddings-uncorrected.zarr

stage "Summary"
"$python" scripts/demo-probe.py "$demo/screen/manifest.csv" "$(echo $held_out | tr ' ' ,)" \
  "with correction ($corrected)=$demo/embeddings.zarr" "without correction (none)=$demo/embeddings-uncorrected.zarr"
echo "    the store: $demo/embeddings.zarr (one AnnData group per plate); open a plate in Python:"
echo "      import anndata"
echo "      adata = anndata.read_zarr(\"$demo/embeddings.zarr/$(echo $held_out | cut -d' ' -f1)\")"
echo "Demo finished in $(( $(date +%s) - started )) s: binaries in $bin/; the synthetic screen, contact sheet, trained $method run (report in run/report/), its bundle and the daemon's stores in $demo/."
