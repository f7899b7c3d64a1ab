#!/usr/bin/env bash
# The real thing in one command: podmapd, a private containerd 1.7 with NRI (fetched once from
# Debian trixie into /var/cache/podmap-conformance, nothing system-wide replaced), podmap-nri, and
# a demo pod driven through CRI as kubelet would; its enriched events stream in compact form
# (`podmap events -o compact`). Ctrl-C tears everything down. Run as root.
# Options: --duration SECONDS (stop by itself), --pure-cgroup2.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo-containerd: podmapd loads eBPF programs and containerd runs pods: run it as root" >&2
  exit 1
fi
scripts/setup.sh
cargo build --release --bins
scripts/fetch-containerd.sh >/dev/null
exec target/release/podmap-demo "$@"
