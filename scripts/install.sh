#!/usr/bin/env bash
# Install bfx-daemon as a systemd service: the release binary in
# /usr/local/bin, ONNX Runtime in /opt/bfx/lib, the unit, sysusers and
# tmpfiles snippets, and an example /etc/bfx/daemon.toml (kept if present).
# DESTDIR=/some/root installs into a staging tree instead (packaging, tests).
# Then: systemctl daemon-reload && systemctl enable --now bfx-daemon
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DESTDIR:-}
scripts/fetch-onnxruntime.sh >/dev/null
cargo build --release --locked -p bfx-daemon
install -D -m 0755 target/release/bfx-daemon "$root/usr/local/bin/bfx-daemon"
lib=$(readlink -f .ort/cpu/libonnxruntime.so)
install -D -m 0644 "$lib" "$root/opt/bfx/lib/$(basename "$lib")"
ln -sf "$(basename "$lib")" "$root/opt/bfx/lib/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$root/opt/bfx/lib/libonnxruntime.so"
install -D -m 0644 README.md "$root/opt/bfx/README.md"
install -D -m 0644 systemd/bfx-daemon.service "$root/etc/systemd/system/bfx-daemon.service"
install -D -m 0644 systemd/bfx.sysusers.conf "$root/usr/lib/sysusers.d/bfx.conf"
install -D -m 0644 systemd/bfx.tmpfiles.conf "$root/usr/lib/tmpfiles.d/bfx.conf"
if [ ! -e "$root/etc/bfx/daemon.toml" ]; then
  install -D -m 0640 systemd/daemon.toml "$root/etc/bfx/daemon.toml"
fi
if [ -z "$root" ] && command -v systemd-sysusers >/dev/null; then
  systemd-sysusers bfx.conf 2>/dev/null || systemd-sysusers
  systemd-tmpfiles --create bfx.conf 2>/dev/null || systemd-tmpfiles --create
fi
echo "installed into ${root:-/}; edit /etc/bfx/daemon.toml and the unit's ReadOnlyPaths= (acquisition roots), then:"
echo "  systemctl daemon-reload && systemctl enable --now bfx-daemon"
