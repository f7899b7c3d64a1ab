#!/usr/bin/env bash
# Installs what is missing, builds, and runs podmap on its embedded default (standalone: no cluster
# needed), printing live events in compact form until Ctrl-C, then removes everything it started
# and exits 0. Run as root.
#
#   scripts/run.sh          the real thing: podmapd, a private containerd 1.7 with NRI (fetched once
#                           from Debian trixie into /var/cache/podmap-conformance, nothing
#                           system-wide replaced; --containerd 2.1: Debian forky's 2.1), podmap-nri, and a demo pod driven through CRI as
#                           kubelet would; the pod's enriched events stream
#   scripts/run.sh --host   podmapd alone on this host: every exec and exit, attributed
#
# More options (--containerd 1.7|2.1, --duration SECONDS, --pure-cgroup2, --socket PATH):
# target/release/podmap-demo --help
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run: podmapd loads eBPF programs and containerd runs pods: run it as root" >&2
  exit 1
fi
scripts/setup.sh

# Only what the demo runs (not the bench, the hook or the test binaries).
bins=(podmapd podmap podmap-nri podmap-demo podmap-test-runc)
if [ ! -x target/release/podmap-demo ]; then
  echo "run: first build of podmapd, podmap, podmap-nri and the demo (release): about 6 to 10 minutes on 2 cores; later runs start in seconds"
fi
cargo build --release $(printf -- '--bin %s ' "${bins[@]}")

# The demo fetches the containerd it runs on first use (scripts/fetch-containerd.sh), cached.
# The end-to-end test of this command (conformance/tests/first_run.rs) runs this binary with
# the same arguments.
exec target/release/podmap-demo "$@"
