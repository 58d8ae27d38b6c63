"""The runtimes an artifact runs in: one row each. Everything that lists runtimes reads this table
(runner scripts, what to pip install on a board, what `device check` asks for, the emulator's wheels).

A new runtime is one runner script in targets/runners/ plus one row here. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass

NUMPY = ("numpy", "1.26.4")


@dataclass(frozen=True)
class Runtime:
    dist: str
    """The distribution pip installs (and `importlib.metadata` knows it by)."""
    module: str
    """The import name."""
    runner: str
    """Its runner script in targets/runners/."""
    version: str
    """The version measured with this project: the emulated boards install exactly this."""
    site: str = "default"
    """The emulator's site folder: tflite-runtime 2.14 needs numpy 1.x and a folder of its own."""
    native: str = ""
    """The native runner's --runtime (targets/native/edge_bench.c); empty: no C library in the wheel."""
    native_files: tuple[str, ...] = ()
    """Globs in the wheel's module folder: the C library the native runner loads first, then every file
    it needs beside it (what a board gets in the native bundle)."""
    no_native: str = ""
    """Why the native runner cannot stand in for the Python one (a runtime without `native`)."""
    deps: bool = True
    """False: the wheel alone, without the dependencies it declares (ncnn's are for its model zoo)."""

    @property
    def pin(self) -> str:
        return f"{self.dist}=={self.version}"


RUNTIMES: dict[str, Runtime] = {
    r.dist: r
    for r in [
        Runtime(
            "ai-edge-litert",
            "ai_edge_litert",
            "run_litert.py",
            "2.3.0",
            native="litert",
            native_files=("libLiteRt.so",),
        ),
        Runtime(
            "onnxruntime",
            "onnxruntime",
            "run_onnxruntime.py",
            "1.32.0",
            native="onnxruntime",
            native_files=("capi/libonnxruntime.so.*",),
        ),
        # libopenvino_c needs libopenvino, which finds its IR reader and CPU plugin by name beside it ($ORIGIN)
        Runtime(
            "openvino",
            "openvino",
            "run_openvino.py",
            "2026.4.1",
            native="openvino",
            native_files=(
                "libs/libopenvino_c.so.*",
                "libs/libopenvino.so.*",
                "libs/libopenvino_ir_frontend.so.*",
                "libs/libopenvino_*_cpu_plugin.so",
                "libs/libtbb.so.*",
                "libs/libhwloc.so.*",
            ),
        ),
        Runtime("tflite-runtime", "tflite_runtime", "run_tflite_runtime.py", "2.14.0", site="tflite_runtime"),
        # 1.0.20250503: the newest ncnn with both x86_64 and aarch64 cp311 wheels, so boards run the same NCNN.
        Runtime(
            "ncnn",
            "ncnn",
            "run_ncnn.py",
            "1.0.20250503",
            deps=False,
            no_native="the ncnn wheel holds only its Python extension, which exports no NCNN C API (ncnn_net_create, "
            "...), and no libncnn or headers; ncnn has no source distribution on the index to build one from",
        ),
    ]
}


def by_runner(script: str) -> Runtime:
    return next(r for r in RUNTIMES.values() if r.runner == script)


def dists() -> tuple[str, ...]:
    """What a board needs, numpy first: what `device check` asks every board for."""
    return (NUMPY[0], *RUNTIMES)


def pip_name(module: str) -> str:
    """The distribution to install for an import name (or a distribution name) an error mentions."""
    top = module.split(".")[0]
    found = [r.dist for r in RUNTIMES.values() if top in (r.module, r.dist)]
    return found[0] if found else top


def pip_hint() -> str:
    return "pip install " + " ".join(dists())


def wheel_only() -> frozenset[str]:
    """The pins installed without the dependencies they declare (Runtime.deps)."""
    return frozenset(r.pin for r in RUNTIMES.values() if not r.deps)


def emulator_wheels() -> dict[str, tuple[str, ...]]:
    """Site folder -> the pinned wheels it holds (numpy with each)."""
    numpy = "==".join(NUMPY)
    sites: dict[str, list[str]] = {"default": [numpy]}
    for r in RUNTIMES.values():
        sites.setdefault(r.site, []).append(r.pin)
    # This order is part of the emulator's cache key: numpy leads the default site, closes the others.
    return {site: tuple(pins if site == "default" else [*pins, numpy]) for site, pins in sites.items()}
