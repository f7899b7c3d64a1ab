#!/usr/bin/env bash
# Runs podmap's whole test suite, as root: unit tests, the kernel tests (real eBPF), and the
# end-to-end suites against real runtimes. Each test uses private pins, sockets and cgroups, so
# the suite can run twice in a row or beside a running podmap.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test: the suite loads eBPF programs and creates cgroups: run it as root" >&2
  exit 1
fi
scripts/setup.sh
# Lint first: a formatting or clippy finding fails the run before the long suites start.
cargo fmt --all -- --check
clang-format --dry-run --Werror bpf/c/*.c bpf/c/*.h
cargo clippy --workspace --all-targets -- -D warnings
# No two files of a crate import each other.
python3 scripts/check-import-circles.py .
# The end-to-end suites run the real binaries.
cargo build --workspace --bins
cargo test --workspace -- --test-threads "${PODMAP_TEST_THREADS:-4}"
