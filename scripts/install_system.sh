#!/usr/bin/env bash
# Debian packages the tests use (root): qemu user-mode emulation and gcc for the emulated Pi boards (qemu-user
# also brings qemu-x86_64: tests/test_avx2.py runs int8 files on an emulated AVX2-only x86),
# make and gcc-aarch64-linux-gnu for the native runner (x86_64 and cross-compiled aarch64),
# openssh-server for the loopback "board" of the SSH runner tests, Fashion-MNIST as real IDX data,
# llvm-19 (llvm-mc, llvm-mca) for the latency estimate of the emulated boards (pipeline/estimate.py),
# chromium (headless) to draw the `report` page in tests/test_report.py.
set -euo pipefail
pkgs=(qemu-user qemu-user-static gcc libc6-dev make gcc-aarch64-linux-gnu libc6-dev-arm64-cross openssh-server
      openssh-client dataset-fashion-mnist llvm-19 chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run this script as root, or the tests that need them skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
