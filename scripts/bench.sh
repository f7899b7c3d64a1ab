#!/usr/bin/env bash
# Builds the release binaries and runs the benchmark command: by default the exec storm
# (`podmap-bench exec`: no tracer vs podmapd + client vs bpftrace vs libbpf-tools execsnoop, side
# by side, with the targets of docs/performance.md). Arguments go to podmap-bench, e.g.
#   scripts/bench.sh --execs 20000 --rounds 5
#   scripts/bench.sh --tracers none,podmap --json
# A first argument naming a podmap-bench subcommand selects it instead of exec. Run as root; a
# full exec run takes a few minutes on 2 cores. Not part of the tests (docs/decisions.md #22).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: the tracers load eBPF programs and the storm runs in its own cgroup: run it as root" >&2
  exit 1
fi
scripts/setup.sh
cargo build --release -p podmap-daemon -p podmap-conformance -p podmap-nri -p podmap-oci-hook \
  --bin podmapd --bin podmap --bin podmap-bench --bin podmap-nri --bin podmap-oci-hook --bin podmap-test-runc

case "${1:-}" in
  exec | nri | hook | pod-cache | policies) sub=$1; shift ;;
  *) sub=exec ;;
esac
exec target/release/podmap-bench "$sub" "$@"
