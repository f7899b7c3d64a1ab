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

mkdir -p "$cache"
# Test processes started side by side share one download.
exec 9>"$cache/.lock"
flock 9

if [ -f "$prefix/.complete" ] && [ -x "$prefix/usr/bin/containerd" ]; then
  echo "$prefix"
  exit 0
fi

apt_dir="$cache/apt-$suite"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
  >"$apt_dir/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  # Keeps downloads owned by root inside our private dirs (apt would switch to _apt).
  -o "APT::Sandbox::User=root"
  -q
)
echo "fetch-containerd: downloading containerd $series from Debian $suite into $prefix" >&2
apt-get "${apt_opts[@]}" update >&2
rm -f "$apt_dir/debs"/containerd_*.deb
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download containerd >&2)
deb=$(ls "$apt_dir/debs"/containerd_*.deb)
version=$(dpkg-deb -f "$deb" Version)
case "$version" in
  "$series".*) ;;
  *)
    echo "fetch-containerd: Debian $suite has containerd $version, not $series.x" >&2
    exit 1
    ;;
esac

tmp="$prefix.tmp.$$"
rm -rf "$tmp"
dpkg -x "$deb" "$tmp"
echo "$version" >"$tmp/.complete"
rm -rf "$prefix"
mv "$tmp" "$prefix"
# The package is unpacked: its download and apt's cache are no longer needed.
rm -rf "$apt_dir/debs" "$apt_dir/cache"
echo "fetch-containerd: containerd $version ready" >&2
echo "$prefix"
