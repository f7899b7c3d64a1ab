#!/usr/bin/env bash
# Installs what is missing, builds, and runs podmap on its embedded default (standalone: no cluster
# needed), printing live events in compact form until Ctrl-C. Run as root.
#
#   scripts/run.sh          the real thing: podmapd, a private containerd 1.7 with NRI (fetched once
#                           from Debian trixie into /var/cache/podmap-conformance, nothing
#                           system-wide replaced), podmap-nri, and a demo pod driven through CRI as
#                           kubelet would; its enriched events stream (scripts/demo-containerd.sh)
#   scripts/run.sh --host   podmapd alone on this host: every exec and exit, attributed
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run: podmapd loads eBPF programs: run it as root" >&2
  exit 1
fi
if [ "${1:-}" != "--host" ]; then
  exec scripts/demo-containerd.sh "$@"
fi
shift
scripts/setup.sh
cargo build --release --bins

export PODMAP_SOCKET="${PODMAP_SOCKET:-/run/podmap/podmap.sock}"
log=$(mktemp /tmp/podmapd.XXXXXX.log)
target/release/podmapd "$@" >"$log" 2>&1 &
daemon=$!
trap 'kill -INT $daemon 2>/dev/null; wait $daemon 2>/dev/null; echo; echo "podmapd log: $log"' EXIT
for _ in $(seq 1 100); do
  [ -S "$PODMAP_SOCKET" ] && break
  kill -0 $daemon 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
echo "podmapd is running (socket $PODMAP_SOCKET, metrics http://127.0.0.1:9477/metrics)."
echo "Live events follow; try 'target/release/podmap status' in another shell. Ctrl-C stops."
target/release/podmap events -o compact
