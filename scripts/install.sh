#!/usr/bin/env bash
# Install edge-export and its pinned stack into .venv (idempotent). Usage: scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The stamp skips a 70 s re-resolve when nothing changed.
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q -c constraints.txt -e '.[test,ray,ptq]'
  # NCNN: the pnnx wheel declares torch, which its program does not need for ONNX (targets/ncnn.py runs the
  # program, never its Python wrapper), and ncnn's declared opencv-python/requests/portalocker serve its model
  # zoo only: both without their dependencies. Pinned in constraints.txt.
  .venv/bin/pip install -q --no-deps -c constraints.txt pnnx ncnn
  touch "$stamp"
fi
# The native runner (C, no Python on the board): seconds, and a no-op when up to date.
if command -v gcc >/dev/null && command -v make >/dev/null; then
  scripts/build_native.sh
fi
# The emulated boards (--device emu:...), their native runner and latency estimate need Debian packages,
# which this script does not install (they need root): say which tools are missing and what adds them.
missing=()
for tool in qemu-aarch64 qemu-aarch64-static aarch64-linux-gnu-gcc llvm-mca-19; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "note: no ${missing[*]}: builds and x86 benches work; for emulated boards and --harness native run" \
    "'sudo scripts/install_system.sh' (qemu, the aarch64 cross compiler, llvm), then scripts/install.sh again" >&2
fi
