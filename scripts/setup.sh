#!/usr/bin/env bash
# Installs what podmap needs to build and test on Debian (bookworm): clang and libbpf headers for
# the eBPF programs, and the tracers the benchmark compares against. Installs only what is missing;
# safe to run again. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  clang            # builds the C eBPF programs (bpf/build.rs)
  libclang1        # bindgen generates the Rust view of bpf/c/podmap.h (bpf/build.rs)
  clang-format     # the C style check (scripts/test.sh, .clang-format)
  libbpf-dev       # bpf_helpers.h, bpf_core_read.h
  linux-libc-dev   # linux/bpf.h, linux/types.h
  util-linux       # unshare, for the pure-cgroup2 tests; fsfreeze, for the frozen-disk test
  e2fsprogs        # mkfs.ext4: the frozen-disk test's loop filesystem
  bpftrace         # the benchmark's reference tracers
  libbpf-tools
  bpftool          # the benchmark reads BPF run time per program
  protobuf-compiler  # protoc, for the CRI client of the containerd suites
  runc             # real OCI runtimes for the hook and containerd suites
  crun
  podman
  binutils         # strip and readelf: scripts/image.sh strips the image's binaries, its test reads them
  busybox-static   # the test images' and bundles' root filesystem
  ca-certificates  # apt over https for the private containerd download
  python3          # scripts/check-import-circles.py
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not on PATH; install a Rust toolchain (rustup, stable >= 1.87)" >&2
  exit 1
fi
