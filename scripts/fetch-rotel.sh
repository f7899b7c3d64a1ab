#!/usr/bin/env bash
# Fetches Rotel, an OpenTelemetry collector written in Rust, into a private prefix and prints the
# rotel-agent binary's path. The export tests (`podmap export`) send OTLP to it: a real
# collector, not a stand-in written here. The reference collector is written in Go and the Go
# module proxy is not reachable here; Rotel ships on PyPI as a wheel holding its static agent.
# The wheel is downloaded with pip (no dependencies), checked against the sha256 pinned below,
# and rotel-agent alone is taken out of it. Nothing system-wide changes. Cached: a second run
# prints the path without touching the network.
#
# Usage: scripts/fetch-rotel.sh [CACHE_DIR]
#   CACHE_DIR defaults to $PODMAP_ROTEL_CACHE, else /var/cache/podmap-conformance: outside the
#   repository, so `git clean` keeps it.
set -euo pipefail

rotel_version=0.0.1a15
# The wheel is built for CPython 3.11 on manylinux_2_34 (glibc 2.34+; bookworm has 2.36). The
# agent inside is a plain executable, so the tags are asked for explicitly: pip then fetches the
# same file whatever python3 runs this script.
wheel_python=3.11
wheel_platform=manylinux_2_34_x86_64
# Pinned once from the download: a changed wheel (a re-upload, a tampered mirror) is refused.
wheel_sha256=2f4117e58410c933e0dc042a268ef738dab2e3a5d63b5831209acdac2a6ddcb7

cache="${1:-${PODMAP_ROTEL_CACHE:-/var/cache/podmap-conformance}}"
prefix="$cache/rotel-$rotel_version"

# shellcheck source=scripts/lib/fetch.sh
. "$(dirname "$0")/lib/fetch.sh"
# A lock of its own: a helm or containerd download under the same cache directory need not hold
# up the export tests.
fetch_lock .rotel.lock

if [ -f "$prefix/.complete" ] && [ -x "$prefix/bin/rotel-agent" ]; then
  echo "$prefix/bin/rotel-agent"
  exit 0
fi

if [ "$(uname -m)" != x86_64 ]; then
  echo "fetch-rotel: the pinned wheel is for x86_64, this machine is $(uname -m)" >&2
  exit 1
fi

fetch_staging "$prefix"
mkdir -p "$staging/bin"
wheel=$(pypi_wheel rotel "$rotel_version" "$wheel_sha256" "$staging/wheel" \
  --only-binary=:all: --python-version "$wheel_python" --platform "$wheel_platform")

# The wheel is a zip file; Python's zipfile reads it (python3 is here for pip, unzip may not be).
python3 - "$wheel" "$staging" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    data = w.read("rotel/rotel-agent")
with open(out + "/bin/rotel-agent", "wb") as f:
    f.write(data)
PY
chmod 0755 "$staging/bin/rotel-agent"
rm -rf "$staging/wheel"
# The agent must run here (glibc, CPU): a wheel that unpacks but cannot start is refused now,
# not in the middle of a test.
if ! "$staging/bin/rotel-agent" --help >/dev/null 2>&1; then
  echo "fetch-rotel: the wheel's rotel-agent does not run on this machine" >&2
  exit 1
fi
fetch_publish "$prefix" "$rotel_version"
echo "fetch-rotel: rotel $rotel_version ready" >&2
echo "$prefix/bin/rotel-agent"
