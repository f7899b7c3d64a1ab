#!/usr/bin/env bash
# Fetches what the NRI API check (nri-plugin/protocol/tests/upstream_api.rs) compares podmap's
# api.proto with, from Debian into a private prefix, and prints the prefix:
#   trixie/  golang-github-containerd-nri-dev: the NRI module containerd 1.7 is built with (v0.6)
#   forky/   golang-github-containerd-nri-dev: the one containerd 2.1 is built with (v0.8), the Go
#            toolchain and Go's protobuf runtime, to build an encoder on the upstream Go stub.
# Each holds the upstream api.proto and its generated api.pb.go as that release published them.
# Nothing system-wide changes (private apt lists and cache, `dpkg -x`). Cached: a second run
# prints the prefix without touching the network.
#
# Usage: scripts/fetch-nri-upstream.sh [CACHE_DIR]
#   CACHE_DIR as for scripts/fetch-containerd.sh. Needs root.
set -euo pipefail

cache="${1:-${PODMAP_CONTAINERD_CACHE:-/var/cache/podmap-conformance}}"
mirror="${PODMAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
prefix="$cache/nri-upstream"

# shellcheck source=scripts/lib/fetch.sh
. "$(dirname "$0")/lib/fetch.sh"
# fetch-containerd.sh's lock: both use the same private apt directories.
fetch_lock .lock

if [ -f "$prefix/.complete" ]; then
  echo "$prefix"
  exit 0
fi

# Downloads PACKAGES from Debian SUITE and unpacks them all into DEST. "+go" stands for the
# toolchain golang-go depends on in that suite (golang-1.NN-go) and its standard library.
fetch() {
  local suite="$1" dest="$2"
  shift 2
  apt_private "$suite"
  local packages=("$@")
  if [ "${packages[0]}" = "+go" ]; then
    local go
    go=$(apt-cache "${apt_opts[@]}" depends golang-go | awk '/Depends: golang-1\.[0-9]+-go/ {print $2; exit}')
    [ -n "$go" ] || {
      echo "fetch-nri-upstream: Debian $suite names no golang-1.NN-go" >&2
      exit 1
    }
    packages=("${packages[@]:1}" "$go" "${go%-go}-src")
  fi
  local debs="$apt_dir/nri-debs" deb
  rm -rf "$debs"
  mkdir -p "$debs"
  (cd "$debs" && apt-get "${apt_opts[@]}" download "${packages[@]}" >&2)
  for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$dest"
    echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" >>"$dest/.packages"
  done
  rm -rf "$debs" "$apt_dir/cache"
}

echo "fetch-nri-upstream: downloading the NRI API of containerd 1.7 and 2.1 from Debian" >&2
fetch_staging "$prefix"
fetch trixie "$staging/trixie" golang-github-containerd-nri-dev
fetch forky "$staging/forky" +go golang-github-containerd-nri-dev golang-google-protobuf-dev
cat "$staging"/*/.packages >&2
fetch_publish "$prefix" done
echo "$prefix"
