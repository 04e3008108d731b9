#!/usr/bin/env bash
# Run bfx's whole test suite: the README's test command, and all that CI runs.
# Works on a fresh machine with the Rust toolchain, python3 and pip: it
# fetches ONNX Runtime from PyPI, creates the test venv, checks formatting and
# lints, and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo python3; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is required" >&2; exit 1; }
done
for component in fmt clippy; do
  cargo "$component" --version >/dev/null 2>&1 || {
    echo "test.sh: cargo $component is missing: install it with 'rustup component add ${component/fmt/rustfmt}'" >&2
    exit 1
  }
done

# System tools the daemon's tests use: systemd-analyze (the unit file) and
# Prometheus with promtool (a real scrape, the alert rules).
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
      { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "test.sh: install Debian's packages: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "==> ONNX Runtime"
scripts/fetch-onnxruntime.sh
echo "==> Test venv"
BFX_PYTHON=$(scripts/setup-venv.sh | tail -n 1)
export BFX_PYTHON
echo "==> Format"
cargo fmt --all -- --check
echo "==> Lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> Tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# cargo's last summary is often an empty doc-test run; close with the total.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
