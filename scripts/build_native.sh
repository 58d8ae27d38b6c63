#!/usr/bin/env bash
# Build the native runner (targets/native/edge_bench.c) for this machine and, when Debian's
# gcc-aarch64-linux-gnu is installed (scripts/install_system.sh), for aarch64 boards, into
# targets/native/build/<arch>/edge_bench (git-ignored). Make skips what is up to date.
set -euo pipefail
cd "$(dirname "$0")/../targets/native"
make -s all
if command -v aarch64-linux-gnu-gcc >/dev/null; then
  make -s build/aarch64/edge_bench
else
  echo "no aarch64-linux-gnu-gcc: the aarch64 native runner is not built (scripts/install_system.sh installs it)" >&2
fi
