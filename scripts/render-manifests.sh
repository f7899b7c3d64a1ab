#!/usr/bin/env bash
# Renders the plain manifests in deploy/kubernetes/ from the Helm chart in deploy/helm/podmap,
# with the chart's defaults (runtime both, namespace podmap) and the namespace created: the
# chart is the one source, and the chart test (`cargo test -p podmap-pod-cache --test
# manifests`) fails when the committed files differ from what this prints. Run it after every
# change to the chart.
#
# Usage: scripts/render-manifests.sh [OUT_DIR]
#   OUT_DIR defaults to deploy/kubernetes. helm is $HELM, else scripts/fetch-helm.sh's (cached
#   after its first run).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
chart="$repo/deploy/helm/podmap"
out="${1:-$repo/deploy/kubernetes}"
helm="${HELM:-$("$repo/scripts/fetch-helm.sh")}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Fixed release name and namespace, so the output does not depend on who renders it. The
# plain manifests bring their namespace, labelled for Pod Security Admission (`kubectl apply`
# has no --create-namespace).
"$helm" template podmap "$chart" --namespace podmap --include-crds --set namespace.create=true \
  --output-dir "$tmp" >/dev/null

# The chart's file -> the manifest's name (kept as the manifests were named before the chart,
# since tests and the daemon read them by these names).
render() {
  local from="$tmp/podmap/$1" to="$out/$2"
  [ -f "$from" ] || {
    echo "render-manifests: helm rendered no $1" >&2
    exit 1
  }
  {
    echo "# Rendered from deploy/helm/podmap/$1"
    echo "# by scripts/render-manifests.sh: edit the chart, not this file, and run the script again."
    # helm marks each document with its source (the header above says it once) and ends the
    # file with a blank line; printf "%s\n" of a command substitution ends it with one newline.
    printf '%s\n' "$(grep -v '^# Source: ' "$from" | sed '1{/^---$/d}')"
  } >"$to.tmp"
  mv "$to.tmp" "$to"
}
mkdir -p "$out"
render crds/podpolicy.yaml crd-podpolicy.yaml
render templates/namespace.yaml namespace.yaml
render templates/rbac.yaml rbac.yaml
render templates/daemonset.yaml daemonset.yaml
# The defaults render nothing else; anything more would be a manifest no one reviews.
extra=$(cd "$tmp/podmap" && find . -type f ! -path ./crds/podpolicy.yaml \
  ! -path ./templates/namespace.yaml ! -path ./templates/rbac.yaml \
  ! -path ./templates/daemonset.yaml)
if [ -n "$extra" ]; then
  echo "render-manifests: the chart's defaults render files this script does not place: $extra" >&2
  exit 1
fi
