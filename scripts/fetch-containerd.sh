#!/usr/bin/env bash
# Fetches containerd with NRI from Debian into a private prefix and prints the prefix: the 1.7
# series from trixie (the default) or the 2.1 series from forky. bookworm's own containerd is
# 1.6, which has no ttrpc NRI. Nothing system-wide changes: apt runs with its own sources list,
# lists and cache under the cache dir, only downloads, and the package is unpacked with
# `dpkg -x`. runc stays bookworm's (trixie's and forky's need glibc 2.38; bookworm has 2.36).
# Cached: a second run prints the prefix without touching the network.
#
# Usage: scripts/fetch-containerd.sh [--series 1.7|2.1] [CACHE_DIR]
#   CACHE_DIR defaults to $PODMAP_CONTAINERD_CACHE, else /var/cache/podmap-conformance: outside
#   the repository, so `git clean` keeps it. Needs root.
set -euo pipefail

series=1.7
if [ "${1:-}" = "--series" ]; then
  series="${2:?--series takes 1.7 or 2.1}"
  shift 2
fi
case "$series" in
  1.7) suite=trixie ;;
  2.1) suite=forky ;;
  *)
    echo "fetch-containerd: series $series is not one of 1.7 (trixie) and 2.1 (forky)" >&2
    exit 2
    ;;
esac
cache="${1:-${PODMAP_CONTAINERD_CACHE:-/var/cache/podmap-conformance}}"
mirror="${PODMAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
prefix="$cache/containerd-$series"

# shellcheck source=scripts/lib/fetch.sh
. "$(dirname "$0")/lib/fetch.sh"
# The lock fetch-nri-upstream.sh takes too: both use the same private apt directories.
fetch_lock .lock

if [ -f "$prefix/.complete" ] && [ -x "$prefix/usr/bin/containerd" ]; then
  echo "$prefix"
  exit 0
fi

echo "fetch-containerd: downloading containerd $series from Debian $suite into $prefix" >&2
apt_private "$suite"
debs="$apt_dir/debs"
rm -rf "$debs"
mkdir -p "$debs"
(cd "$debs" && apt-get "${apt_opts[@]}" download containerd >&2)
deb=$(ls "$debs"/containerd_*.deb)
version=$(dpkg-deb -f "$deb" Version)
case "$version" in
  "$series".*) ;;
  *)
    echo "fetch-containerd: Debian $suite has containerd $version, not $series.x" >&2
    exit 1
    ;;
esac

fetch_staging "$prefix"
dpkg -x "$deb" "$staging"
fetch_publish "$prefix" "$version"
# The package is unpacked: its download and apt's cache are no longer needed.
rm -rf "$debs" "$apt_dir/cache"
echo "fetch-containerd: containerd $version ready" >&2
echo "$prefix"
