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

mkdir -p "$cache"
# Shares fetch-containerd.sh's lock: both use the same private apt directories.
exec 9>"$cache/.lock"
flock 9

if [ -f "$prefix/.complete" ]; then
  echo "$prefix"
  exit 0
fi

tmp="$prefix.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"

# Downloads PACKAGES from Debian SUITE and unpacks them all into DEST.
fetch() {
  local suite="$1" dest="$2"
  shift 2
  local apt_dir="$cache/apt-$suite"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/nri-debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
    >"$apt_dir/sources.list"
  local apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Sandbox::User=root"
    -q
  )
  apt-get "${apt_opts[@]}" update >&2
  local packages=("$@")
  if [ "${packages[0]}" = "+go" ]; then
    # The toolchain golang-go stands for in this suite (golang-1.NN-go), and its standard library.
    local go
    go=$(apt-cache "${apt_opts[@]}" depends golang-go | awk '/Depends: golang-1\.[0-9]+-go/ {print $2; exit}')
    [ -n "$go" ] || {
      echo "fetch-nri-upstream: Debian $suite names no golang-1.NN-go" >&2
      exit 1
    }
    packages=("${packages[@]:1}" "$go" "${go%-go}-src")
  fi
  rm -f "$apt_dir/nri-debs"/*.deb
  (cd "$apt_dir/nri-debs" && apt-get "${apt_opts[@]}" download "${packages[@]}" >&2)
  local deb
  for deb in "$apt_dir/nri-debs"/*.deb; do
    dpkg -x "$deb" "$dest"
    echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" >>"$dest/.packages"
  done
  rm -rf "$apt_dir/nri-debs" "$apt_dir/cache"
}

echo "fetch-nri-upstream: downloading the NRI API of containerd 1.7 and 2.1 from Debian" >&2
fetch trixie "$tmp/trixie" golang-github-containerd-nri-dev
fetch forky "$tmp/forky" +go golang-github-containerd-nri-dev golang-google-protobuf-dev
touch "$tmp/.complete"
rm -rf "$prefix"
mv "$tmp" "$prefix"
cat "$prefix"/*/.packages >&2
echo "$prefix"
