#!/usr/bin/env bash
# The daemon's benchmarks, side by side in one run; writes
# docs/performance-daemon.md.
#
# - Throughput: SITES sites of the grid-like synthetic screen (hard links
#   to its files, laid out as 384-well plates of nine fields: 3,456 sites a
#   plate) appear at once in the daemon's empty folder; its sites/s from
#   file ready to committed row (between 10% and 90% committed) against
#   ONNX Runtime's session.run alone on the same preprocessed tensors,
#   model, batch size and threads, and against a straightforward Python
#   pipeline (bench/python_pipeline.py: tifffile, onnxruntime, anndata).
#   The daemon also runs on the screen's own small plates (about 144 sites
#   each), where the per-plate cost of the store shows, and once more with
#   every thread at one priority (daemon.inference.first = false), to show
#   what running inference first buys. ROUNDS interleaved rounds, medians.
# - Latency: p50/p99 of bfx_site_latency_seconds (a site's last file ready
#   -> its row committed) at 1, 10 and 100 sites/s arrival, with the
#   daemon's default batching (max_delay 2s) and commits (max_interval 5s).
# - Memory: resident memory through a stream of STREAM sites replayed as
#   fast as they can be written.
# - Rescans: the watch stage's rescan of that stream's folders, listing
#   every folder and finding none changed.
#
# The model is a seeded bundle in the demo's shape (ResNet18 width 16,
# 4 channels of 64x64, embedding 64); batch 32, one intra-op thread.
#
# Usage: bench/daemon.sh [SITES] [STREAM] [ROUNDS]   (defaults 10000, 20000, 5;
# about 10 minutes on 2 cores). The measurements are kept in
# .bfx-bench/results.jsonl; `bench/daemon.sh --render` writes the tables
# again from them.
set -euo pipefail
cd "$(dirname "$0")/.."
work=.bfx-bench
results=$work/results.jsonl
venv=.venv-bench-daemon
render_only=
if [ "${1:-}" = --render ]; then
    render_only=1
    shift
fi
sites=${1:-10000}
stream=${2:-20000}
rounds=${3:-5}
batch=32
threads=1
plate_sites=3456
if [ -z "$render_only" ]; then
scripts/fetch-onnxruntime.sh
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt onnxruntime==1.31.1
fi
cargo build --release --locked -p bfx-daemon -p bfx-trainer -p bfx-bench
bin=target/release
mkdir -p "$work"
[ -f "$work/screen/manifest.csv" ] || "$bin/bfx-trainer" synth --preset grid-like --seed 0 --out "$work/screen" >/dev/null
"$bin/daemon-bench" bundle "$work/bundle"
: > "$results"
"$venv/bin/python" bench/host.py >> "$results"
for round in $(seq "$rounds"); do
    echo "==> round $round of $rounds: the daemon on small plates, raw ONNX Runtime, the Python pipeline, the daemon ($sites sites)"
    # The screen's own small plates first (the daemon moves the folders away).
    "$bin/daemon-bench" source "$work/screen" "$work/source" "$sites" 0
    "$bin/daemon-bench" daemon "$bin/bfx-daemon" "$work/bundle" "$work/source" "$work/run" $batch $threads burst | tee -a "$results"
    "$bin/daemon-bench" source "$work/screen" "$work/source" "$sites" $plate_sites
    "$bin/daemon-bench" raw "$work/bundle" "$work/source.sites" $batch $threads 3 | tee -a "$results"
    "$venv/bin/python" bench/python_pipeline.py "$work/bundle" "$work/source.sites" "$work/python.zarr" $batch $threads | tee -a "$results"
    # Last: it moves the source folders into its watched root.
    "$bin/daemon-bench" daemon "$bin/bfx-daemon" "$work/bundle" "$work/source" "$work/run" $batch $threads burst | tee -a "$results"
    # Again with every thread at one priority (daemon.inference.first = false).
    "$bin/daemon-bench" source "$work/screen" "$work/source" "$sites" $plate_sites
    "$bin/daemon-bench" daemon "$bin/bfx-daemon" "$work/bundle" "$work/source" "$work/run" $batch $threads burst equal | tee -a "$results"
done
# Enough sites for a p99 at each rate: 2 minutes at 1/s, a minute at 10/s.
for rate_sites in 1:120 10:600 100:2000; do
    rate=${rate_sites%:*}
    echo "==> latency at $rate sites/s"
    "$bin/daemon-bench" source "$work/screen" "$work/source" "${rate_sites#*:}" $plate_sites
    "$bin/daemon-bench" daemon "$bin/bfx-daemon" "$work/bundle" "$work/source" "$work/run" $batch $threads "$rate" | tee -a "$results"
done
echo "==> memory through a stream of $stream sites"
"$bin/daemon-bench" source "$work/screen" "$work/source" "$stream" $plate_sites
"$bin/daemon-bench" rescan "$work/source" 5 | tee -a "$results"
# Arrival 0: replayed as fast as the files can be written.
"$bin/daemon-bench" daemon "$bin/bfx-daemon" "$work/bundle" "$work/source" "$work/run" $batch $threads 0 | tee -a "$results"
rm -rf "$work/run" "$work/source" "$work/python.zarr"
fi

"$venv/bin/python" - "$results" > docs/performance-daemon.md <<'PY'
import json, os, platform, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(rows, key):
    return statistics.median(r[key] for r in rows)
raw = [r for r in runs if r["bench"] == "raw"]
bursts = [r for r in runs if r["bench"] == "daemon" and r["arrival"] == "burst" and r.get("first", True)]
equal = [r for r in runs if r["bench"] == "daemon" and r["arrival"] == "burst" and not r.get("first", True)]
# The screen's own small plates make the most plates for the same sites.
most = max(r["plates"] for r in bursts)
small = [r for r in bursts if r["plates"] == most]
burst = [r for r in bursts if r["plates"] != most]
python = [r for r in runs if r["bench"] == "python"]
latency = [r for r in runs if r["bench"] == "daemon" and r["arrival"] not in ("burst", "0")]
stream = [r for r in runs if r["bench"] == "daemon" and r["arrival"] == "0"]
b = raw[0]
rounds = len(raw)
host = next((r for r in runs if r["bench"] == "host"), None)
if host:
    cpu = f"{host['cpu']}, {host['cpus']} logical CPUs" + (", AVX-512" if host["avx512"] else ", no AVX-512")
else:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
print("# Daemon performance\n")
print("Made by `bench/daemon.sh`; do not edit by hand. "
      f"{cpu}. "
      "Model: a seeded bundle in the demo's shape (ResNet18 width 16, 4 channels of 64x64, "
      f"embedding 64), batch {b['batch']}, {b['threads']} intra-op thread(s); sites of the "
      "`grid-like` synthetic screen (four 64x64 16-bit TIFFs each).\n")
print("## Throughput\n")
print(f"{b['sites']} sites ({burst[0]['plates']} plates laid out as 384-well plates of nine fields, "
      "3,456 sites each) appear at once in the daemon's empty folder; the daemon's rate is "
      "measured between 10% and 90% of the rows committed (file ready -> committed row), with "
      "the default settings (commits of up to 1,024 rows per plate) but `watch.settle` (200 ms). "
      "Raw is ONNX Runtime's `session.run` alone on the same preprocessed tensors; Python is "
      "`bench/python_pipeline.py` (tifffile, numpy, onnxruntime, anndata) over the whole job. "
      f"Medians of {rounds} interleaved rounds.\n")
print("| pipeline | sites/s | vs raw ONNX Runtime | store commits (s) |")
print("|---|---|---|---|")
r = med(raw, "sites_per_s")
for name, rows in [("raw ONNX Runtime `session.run`", raw), ("bfx-daemon, end to end", burst),
                   ("bfx-daemon, all threads at one priority (`inference.first = false`)", equal),
                   (f"bfx-daemon, the screen's own {small[0]['plates']} plates of ~{small[0]['sites'] // small[0]['plates']} sites", small),
                   ("Python pipeline, end to end", python)]:
    v = med(rows, "sites_per_s")
    commit = f"{med(rows, 'commit_s'):.1f}" if "commit_s" in rows[0] else ""
    print(f"| {name} | {v:.0f} | {v / r:.2f}x | {commit} |")
rounds_text = ", ".join(f"{d['sites_per_s'] / w['sites_per_s']:.2f}x" for d, w in zip(burst, raw))
print(f"\nbfx-daemon against raw ONNX Runtime round by round: {rounds_text}.")
equal_text = ", ".join(f"{d['sites_per_s'] / w['sites_per_s']:.2f}x" for d, w in zip(equal, raw))
print(f"With all threads at one priority: {equal_text}. By default the daemon runs its threads "
      "other than inference 10 nice levels lower, so that decoding, preprocessing and commits "
      "use the cores inference leaves (`daemon.inference.first`).")
print("\nStore commits: seconds the daemon spent committing rows over the whole burst (every "
      "commit writes each changed plate's chunks and metadata through new files; a plate's first "
      "commit creates its whole group).")
print(f"\nbfx-daemon is {med(burst, 'sites_per_s') / med(python, 'sites_per_s'):.1f}x the Python pipeline's speed.\n")
print("## Latency\n")
print("From a site's last file being ready (stable for `watch.settle`) to its row being committed "
      "(`bfx_site_latency_seconds`, quantiles interpolated within its buckets as PromQL's "
      "`histogram_quantile`), with the default batching (`batch.max_delay` 2 s) and commits "
      "(`commit.max_interval` 5 s): at low rates a site waits for its batch to fill or time out, "
      "then for the next commit.\n")
print("The replayer writes each file in two parts and syncs it to disk, as an instrument does; "
      "where it cannot write as fast as asked, the rate reached is lower (committed sites/s between "
      "10% and 90% of the rows).\n")
print("| arrival asked (sites/s) | reached | sites | p50 (s) | p99 (s) |")
print("|---|---|---|---|---|")
for l in latency:
    print(f"| {l['arrival']} | {l['sites_per_s']:.0f} | {l['sites']} | {l['latency_p50_s']:.2f} | {l['latency_p99_s']:.2f} |")
print("\n## Memory\n")
s = stream[0]
print(f"{s['sites']} sites replayed into the folder as fast as they can be written "
      f"({s['sites_per_s']:.0f} sites/s committed); resident memory of the daemon when a share of "
      "the rows was committed.\n")
print("| idle | 25% | 50% | 75% | 100% | peak |")
print("|---|---|---|---|---|---|")
print(f"| {s['rss_idle_mib']:.0f} MiB | {s['rss_quarter_mib']:.0f} MiB | {s['rss_half_mib']:.0f} MiB | "
      f"{s['rss_three_quarters_mib']:.0f} MiB | {s['rss_end_mib']:.0f} MiB | {s['peak_rss_mib']:.0f} MiB |")
grow = s["rss_end_mib"] - s["rss_half_mib"]
per_site = grow * 2**20 / (s["sites"] / 2)
print(f"\nFrom half to all of the stream resident memory changed by {grow:+.0f} MiB, "
      f"{per_site:+.0f} bytes per site.")
print("\nWhat the daemon keeps per site while its plate is open: a 128-bit digest of each file "
      "used (the ready stage: rescans list files again), and of the site's key (the assemble stage, "
      "and the store's index, to refuse a site twice). The replay writes a completion marker after "
      "each plate; once a plate is settled (stored complete, every row final) the stages drop its "
      "digests, and committed final rows leave memory as they are committed.")
if "remembered_peak" in s:
    left = s["remembered_settled"]
    print(f"\nDigests held (`bfx_remembered_entries`, all stages) peaked at {s['remembered_peak']:,.0f} "
          f"(a plate is 3,456 sites of four files); once every plate was settled the stages held "
          f"{left['ready']:.0f} (ready: completion markers, kept for good), {left['assemble']:.0f} "
          f"(assemble) and {left['store']:.0f} (store).")
rescan = next((r for r in runs if r["bench"] == "rescan"), None)
if rescan:
    print("\n## Rescans\n")
    print(f"Listing the stream's {rescan['files']:,} files in {rescan['folders']} folders takes "
          f"{rescan['full_ms']:.0f} ms; a rescan that finds no folder changed looks at each folder's mtime "
          f"only: {rescan['unchanged_ms']:.2f} ms (medians of 5, the watch stage's rescanner alone, without "
          "the ready stage's lookups of what it sends). Every 10 minutes a rescan lists every folder.")
PY
echo "wrote docs/performance-daemon.md"
cat docs/performance-daemon.md
