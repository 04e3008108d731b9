#!/usr/bin/env bash
# Create (or refresh) the test virtual environment .venv from
# scripts/requirements-test.txt. Idempotent: a venv already built from the
# same requirements is kept. Prints the venv's python on the last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv"
req="$repo/scripts/requirements-test.txt"
stamp="$venv/.requirements.sha256"

command -v python3 >/dev/null || { echo "setup-venv: python3 is required" >&2; exit 1; }
want=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$req")
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "Test venv up to date: $venv" >&2
else
  echo "Creating test venv in $venv ..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
