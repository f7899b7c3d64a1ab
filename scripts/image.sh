#!/usr/bin/env bash
# Builds the podmap image, podmap:<crate version>, from this repository alone: no base image and
# no registry. FROM scratch, holding
#   /usr/local/bin/{podmapd,podmap,podmap-nri,podmap-oci-hook}   release builds, debug info stripped
#   /usr/local/share/podmap/hooks.d/podmap.json                  CRI-O's hooks.d entry (deploy/crio)
#   the loader, libc, libm and libgcc_s the binaries link        from bookworm's own .deb files
#   /usr/share/doc/<package>/copyright                           the licences of those libraries
# and nothing else: no shell, no package manager. The paths are the ones
# deploy/kubernetes/daemonset.yaml runs. Then writes an OCI archive a user can push:
#   skopeo copy oci-archive:target/image/podmap-<version>.oci.tar docker://<registry>/podmap:<version>
# and prints the image's size.
#
# The libraries come from the Debian packages that own them on this machine (`dpkg -S`), at the
# installed version (the binaries were linked against it), downloaded with `apt-get download`
# into a cache outside the repository and unpacked with `dpkg -x`: nothing system-wide changes.
#
# Cached: when podman already holds the tag built from the same files (a content digest kept in
# a label), the build is skipped; the binaries are always rebuilt by cargo first (a no-op when
# current), so a cached image never holds stale binaries. Deterministic where cheap: file times
# and the creation time are SOURCE_DATE_EPOCH (default: the last commit's time).
#
# Usage: scripts/image.sh [--no-build] [--force] [--output FILE]
#   --no-build     take the binaries already in <target>/release (cargo does not run)
#   --force        build even when the tag is current
#   --output FILE  the OCI archive (default: <target>/image/podmap-<version>.oci.tar)
# Environment: CARGO_TARGET_DIR, SOURCE_DATE_EPOCH, PODMAP_IMAGE_CACHE (the .deb cache, default
# /var/cache/podmap-conformance). Needs root (podman's system storage) and podman.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
force=0
output=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --force) force=1 ;;
    --output)
      output="${2:?--output takes a file}"
      shift
      ;;
    --output=*) output="${1#--output=}" ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "image: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  echo "image: run as root (podman's system storage, where the DaemonSet's runtime can see it)" >&2
  exit 1
fi
for tool in podman dpkg apt-get strip sha256sum ldd; do
  command -v "$tool" >/dev/null || {
    echo "image: $tool is missing (scripts/setup.sh installs what is needed)" >&2
    exit 1
  }
done

# The crate version is the image's: one source, Cargo.toml's [workspace.package].
version="$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)"
[ -n "$version" ] || {
  echo "image: no version in Cargo.toml's [workspace.package]" >&2
  exit 1
}
tag="podmap:$version"
target="${CARGO_TARGET_DIR:-target}"
work="$target/image"
output="${output:-$work/podmap-$version.oci.tar}"
cache="${PODMAP_IMAGE_CACHE:-/var/cache/podmap-conformance}/image-debs"

bins=(podmapd podmap podmap-nri podmap-oci-hook)
hooks_json=deploy/crio/hooks.d/podmap.json

if [ "$build" = 1 ]; then
  bin_args=()
  for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
  # No incremental state: a release build is made once and shipped.
  if ! CARGO_INCREMENTAL=0 "${CARGO:-cargo}" build --release "${bin_args[@]}"; then
    # A release build beside a whole suite's debug build needs a few GB: say how much was left.
    echo "image: the release build failed; free space where it builds:" >&2
    mkdir -p "$target" && df -h "$target" >&2
    exit 1
  fi
fi
for b in "${bins[@]}"; do
  [ -x "$target/release/$b" ] || {
    echo "image: $target/release/$b is missing (run without --no-build)" >&2
    exit 1
  }
done

# Set only now, and not exported: cargo's build scripts (ring's) rerun when it changes, and the
# release build would start over on every call.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

mkdir -p "$work"
# One build at a time per target dir: the test suite may call this from parallel tests.
exec 8>"$work/.lock"
flock 8

rootfs="$work/rootfs"
rm -rf "$rootfs" "$work/debs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/local/share/podmap/hooks.d" "$work/debs"

for b in "${bins[@]}"; do
  # Debug info is most of a release binary's size; the symbol table stays for panics' backtraces.
  strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$target/release/$b"
  chmod 0755 "$rootfs/usr/local/bin/$b"
done
install -m 0644 "$hooks_json" "$rootfs/usr/local/share/podmap/hooks.d/podmap.json"

# The shared objects the binaries load, as the dynamic loader resolves them here.
libs="$(
  for b in "${bins[@]}"; do
    ldd "$target/release/$b"
  done | awk '
    /not found/ { print "MISSING " $1; next }
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }
  ' | sort -u
)"
if grep -q '^MISSING' <<<"$libs"; then
  echo "image: the binaries need libraries this machine lacks:" >&2
  grep '^MISSING' <<<"$libs" >&2
  exit 1
fi

# The path a package lists for a library: ldd may print /usr/lib/... where the package ships
# /lib/... (merged /usr).
package_path() {
  local p="$1" alt
  case "$p" in
    /usr/*) alt="${p#/usr}" ;;
    *) alt="/usr$p" ;;
  esac
  for c in "$p" "$alt"; do
    if dpkg -S "$c" >/dev/null 2>&1; then
      echo "$c"
      return
    fi
  done
  echo "image: no installed package owns $p" >&2
  return 1
}

# Copies `path` from an unpacked package tree into the root filesystem; a symlink brings its
# target along (the loader's /lib64 name points into the multiarch directory).
copy_from() {
  local tree="$1" path="$2" link dir
  mkdir -p "$rootfs$(dirname "$path")"
  cp -a "$tree$path" "$rootfs$path"
  if [ -L "$tree$path" ]; then
    link="$(readlink "$tree$path")"
    case "$link" in
      /*) copy_from "$tree" "$link" ;;
      *)
        dir="$(dirname "$path")"
        # Resolved as text (-s): the host's own symlinks (/lib64 -> usr/lib64) play no part.
        copy_from "$tree" "$(realpath -m -s "$dir/$link")"
        ;;
    esac
  fi
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# Unpacks an installed package (name:arch), at its installed version, into $work/debs/<name>.
unpack() {
  local pkg="$1" name ver arch deb tree
  name="${pkg%%:*}"
  tree="$work/debs/$name"
  [ -d "$tree" ] && return 0
  ver="$(dpkg-query -W -f='${Version}' "$pkg")"
  arch="$(dpkg-query -W -f='${Architecture}' "$pkg")"
  deb="$cache/${name}_${ver//:/%3a}_${arch}.deb"
  if [ ! -f "$deb" ]; then
    # Only a download, into the cache (as root: apt's sandbox user may not write there); the
    # package lists are refreshed once if they no longer know the installed version (a point
    # release since the last update).
    local get=(apt-get download -q -o APT::Sandbox::User=root "$name:$arch=$ver")
    (cd "$cache" && "${get[@]}") || { apt-get update -q && (cd "$cache" && "${get[@]}"); }
  fi
  mkdir -p "$tree"
  dpkg -x "$deb" "$tree"
}

# A package's licence travels with its library (LGPL; GPL with the GCC runtime exception). Some
# packages' doc directory is a link to another package's (libgcc-s1 -> gcc-12-base): that one
# is unpacked for it.
copy_licence() {
  local pkg="$1" name="${1%%:*}" doc other
  doc="/usr/share/doc/$name"
  if [ -L "$work/debs/$name$doc" ]; then
    other="$(basename "$(readlink "$work/debs/$name$doc")")"
    unpack "$other:${pkg#*:}"
    copy_from "$work/debs/$other" "/usr/share/doc/$other/copyright"
    mkdir -p "$rootfs/usr/share/doc"
    cp -a "$work/debs/$name$doc" "$rootfs$doc"
  else
    copy_from "$work/debs/$name" "$doc/copyright"
  fi
}

for lib in $libs; do
  path="$(package_path "$lib")"
  pkg="$(dpkg -S "$path" | head -n1 | sed 's/: .*//')" # e.g. libc6:amd64
  if [ ! -d "$work/debs/${pkg%%:*}" ]; then
    unpack "$pkg"
    copy_licence "$pkg"
  fi
  copy_from "$work/debs/${pkg%%:*}" "$path"
done

# Fixed times and modes: the same sources give the same layer.
find "$rootfs" -exec touch -h -d "@$epoch" {} +

cat >"$work/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
CMD ["/usr/local/bin/podmapd"]
LABEL org.opencontainers.image.title="podmap" \\
      org.opencontainers.image.description="eBPF exec and exit events attributed to Kubernetes pods: podmapd, podmap, podmap-nri, podmap-oci-hook" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.licenses="Apache-2.0"
EOF

# What the image is built from: every file's path, type, mode, link target and content, the
# Containerfile and the time stamped on it. Equal digests, equal images.
content="$(
  cd "$work" && {
    echo "$epoch"
    cat Containerfile
    find rootfs -printf '%p %y %m %l\n' | LC_ALL=C sort
    find rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
)"
label=io.podmap.image.content

current="$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$tag" 2>/dev/null || true)"
if [ "$force" = 0 ] && [ "$current" = "$content" ]; then
  echo "image: $tag is current (content $content)"
else
  # No layer cache: a cached image would keep an older creation time than the one asked for.
  podman build --quiet --pull=never --no-cache --timestamp "$epoch" \
    --label "$label=$content" -f "$work/Containerfile" -t "$tag" "$work" >/dev/null
  echo "image: built $tag (content $content)"
fi
# The archive records the content it was saved from beside it, so it is rewritten only when
# the image changed.
if [ "$force" = 1 ] || [ ! -f "$output" ] || [ "$(cat "$output.content" 2>/dev/null)" != "$content" ]; then
  mkdir -p "$(dirname "$output")"
  rm -f "$output" "$output.content"
  podman save --quiet --format oci-archive -o "$output" "$tag"
  echo "$content" >"$output.content"
fi
# The build leaves the previous image of the tag behind, untagged: removed unless in use.
podman image prune --force --filter "label=$label" >/dev/null 2>&1 || true

size="$(podman image inspect --format '{{.Size}}' "$tag")"
archive="$(stat -c %s "$output")"
echo "image: $tag $(numfmt --to=iec-i --suffix=B "$size") ($size bytes); OCI archive $output $(numfmt --to=iec-i --suffix=B "$archive")"
echo "image: push with: skopeo copy oci-archive:$output docker://<registry>/podmap:$version"
