#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/fuzz_targets, libFuzzer through cargo-fuzz) for a
# bounded time each and prints one line per target. Not part of the test suite: it needs the
# nightly toolchain and runs as long as you give it.
#
#   scripts/fuzz.sh                  every target, 60 s each
#   scripts/fuzz.sh 300 policy_file  one target, 5 minutes
#
# A crash leaves its input under fuzz/artifacts/<target>/ and fails the run; the corpus grows
# under fuzz/corpus/<target>/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
CARGO_FUZZ_VERSION=0.13.2

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=0
for t in "${targets[@]}"; do
  log="fuzz/artifacts/$t.log"
  mkdir -p "fuzz/artifacts/$t" "fuzz/corpus/$t"
  if cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $t: ${runs:-done} in ${seconds}s, ${cov:-cov: ?}, no crash"
  else
    failed=1
    echo "fuzz: $t: FAILED, see $log and fuzz/artifacts/$t/" >&2
    grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" >&2 || true
  fi
done
exit "$failed"
