"""The native runner (targets/native/edge_bench.c): the Python runners' protocol without Python.

One C program per architecture dlopen()s the runtime's own C library from the runtime's wheel
(this venv's for x86_64; the aarch64 wheels the emulated boards unpacked, targets/emu.py, for
aarch64). `bench --harness native` runs it where the Python runner would run:

- `local`: the x86_64 binary with this venv's libraries;
- `emu:PROFILE`: the aarch64 binary under qemu, with the aarch64 wheels' libraries, counted by the
  same instruction-count plugin between the same markers (EmuDevice, with this program as guest);
- `ssh://`: a self-contained bundle (binary, the runtime's .so files for the board's arch, model,
  inputs) copied to the board, run with no Python there, JSON and outputs fetched, removed.

Its JSON is the Python runners' (pipeline/runner.py parse_result), so the rows are the same shape.
Imports stay light at module level (stdlib and pipeline.errors): bench loads this for `--help`.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

SOURCE_DIR = Path(__file__).resolve().parents[1] / "targets" / "native"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_native.sh"
ARCHES = ("x86_64", "aarch64")
# The oldest glibc the bundle needs on a board: the newest of its parts' manylinux tags (OpenVINO's
# aarch64 wheel is manylinux_2_35); the binary itself, built on Debian 12, asks for no newer symbol.
BUNDLE_GLIBC = {"x86_64": (2, 28), "aarch64": (2, 35)}


class NativeError(PipelineError):
    """The native runner cannot be built, found or run here."""


@dataclasses.dataclass(frozen=True)
class NativeRuntime:
    name: str  # --runtime of edge_bench
    package: str  # the wheel's import folder, also its .dist-info prefix
    library: str  # glob, relative to the package folder: what edge_bench dlopen()s
    bundle: tuple[str, ...]  # globs of every file a board needs (the library's own dependencies)


# Keyed by the Python runner the native runner stands in for (targets registry: Target.runner).
RUNTIMES = {
    "run_litert.py": NativeRuntime("litert", "ai_edge_litert", "libLiteRt.so", ("libLiteRt.so",)),
    "run_onnxruntime.py": NativeRuntime("onnxruntime", "onnxruntime", "capi/libonnxruntime.so.*",
                                        ("capi/libonnxruntime.so.*",)),
    # libopenvino_c needs libopenvino, which finds its IR reader and CPU plugin by name beside it ($ORIGIN)
    "run_openvino.py": NativeRuntime("openvino", "openvino", "libs/libopenvino_c.so.*",
                                     ("libs/libopenvino_c.so.*", "libs/libopenvino.so.*",
                                      "libs/libopenvino_ir_frontend.so.*", "libs/libopenvino_*_cpu_plugin.so",
                                      "libs/libtbb.so.*", "libs/libhwloc.so.*")),
}


def runtime_for(runner_name: str) -> NativeRuntime:
    if runner_name not in RUNTIMES:
        raise NativeError(f"no native runner for {runner_name} (native: "
                          f"{', '.join(r.name for r in RUNTIMES.values())})")
    return RUNTIMES[runner_name]


def binary(arch: str) -> Path:
    """targets/native/build/ARCH/edge_bench, built (make, seconds) when missing or older than its source."""
    if arch not in ARCHES:
        raise NativeError(f"no native runner for {arch} (built for {', '.join(ARCHES)})")
    path = SOURCE_DIR / "build" / arch / "edge_bench"
    source = SOURCE_DIR / "edge_bench.c"
    if not path.exists() or path.stat().st_mtime < source.stat().st_mtime:
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no compiler"]
            raise NativeError(f"cannot build the {arch} native runner: {tail[0]} "
                              "(scripts/install_system.sh installs gcc, make and gcc-aarch64-linux-gnu)")
    return path


def site_dir(arch: str) -> Path:
    """Where the runtimes' wheels are unpacked for `arch`: this venv, or the emulated boards' aarch64 site."""
    if arch == platform.machine():
        return Path(sysconfig.get_paths()["platlib"])
    if arch == "aarch64":
        from targets import emu

        site = emu.emu_home() / "base" / "site"
        if not site.is_dir():
            raise NativeError("no aarch64 runtime libraries: run python -m pipeline device setup emu:rpi4 "
                              "(it unpacks the aarch64 wheels)")
        return site
    raise NativeError(f"no runtime libraries for {arch} on this {platform.machine()} machine")


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(p for p in folder.glob(pattern) if "providers" not in p.name)
    if not found:
        raise NativeError(f"{folder} has no {pattern}: is the runtime's wheel installed?")
    return found[0]


def library(rt: NativeRuntime, arch: str) -> Path:
    return _one(site_dir(arch) / rt.package, rt.library)


def version(rt: NativeRuntime, arch: str) -> str:
    """The wheel's version, from its .dist-info name (LiteRT's C API has no version call)."""
    info = sorted(site_dir(arch).glob(f"{rt.package}-*.dist-info"))
    return info[0].name[len(rt.package) + 1:-len(".dist-info")] if info else ""


def bundle_files(rt: NativeRuntime, arch: str) -> dict[str, Path]:
    """name in the bundle -> file: the binary at the top, the runtime's libraries in lib/."""
    pkg = site_dir(arch) / rt.package
    files = {"edge_bench": binary(arch)}
    for pattern in rt.bundle:
        for path in sorted(pkg.glob(pattern)):
            files[f"lib/{path.name}"] = path
    if not any(Path(name).match(Path(rt.library).name) for name in files):
        raise NativeError(f"{pkg} has no {rt.library}: is the runtime's wheel installed?")
    return files


def command(rt: NativeRuntime, arch: str, lib: Path | str | None = None, exe: Path | str | None = None) -> list[str]:
    """argv of the native runner up to the model: append MODEL and the runner arguments."""
    return [str(exe or binary(arch)), "--runtime", rt.name, "--lib", str(lib or library(rt, arch)),
            "--runtime-version", version(rt, arch)]


def native_args(args) -> list[str]:
    """The runner arguments the native runner takes; a runtime option (--delegate, --precision) it has not."""
    args = [str(a) for a in args]
    known = {"--inputs", "--outputs", "--limit", "--threads", "--warmup", "--runs", "--min-seconds", "--sections"}
    for a in args:
        if a.startswith("--") and a not in known and a != "--bench":
            raise NativeError(f"the native runner has no option {a}: it runs each runtime's defaults "
                              "(LiteRT with XNNPACK, OpenVINO in f32)")
    return args


def run_local(runner_path: Path, model: Path, args, timeout: float) -> dict:
    """The native runner on this machine, in place of `runner_path`."""
    from pipeline import runner

    try:
        rt = runtime_for(Path(runner_path).name)
        cmd = command(rt, platform.machine()) + [str(model), *native_args(args)]
    except NativeError as e:
        return {"ok": False, "error": str(e)}
    return runner.run_command(cmd, timeout)


# -- bench's devices, with the native runner as what they run -----------------------------------

class NativeLocal:
    """`local` with the native runner."""

    name = "local"
    harness = "native"

    def run(self, runner_path: Path, model: Path, inputs: Path, args: list[str], timeout: float) -> dict:
        return run_local(runner_path, model, ["--inputs", inputs, *args], timeout)


def emu_device(spec: str, **options):
    """`emu:PROFILE` with the aarch64 native runner as the guest program (built lazily: EmuDevice imports)."""
    from pipeline.devices import EMU_SECTIONS, EmuDevice

    class NativeEmu(EmuDevice):
        harness = "native"

        def _guest(self, runner_path, model, args, runtime, folder, count, timeout):
            from pipeline import runner
            from pipeline.devices import GUEST_ENV
            from targets import emu

            try:
                rt = runtime_for(Path(runner_path).name)
                argv = command(rt, "aarch64") + [str(model), *native_args(args)]
            except NativeError as e:
                return {"ok": False, "error": str(e)}, []
            counts_file = Path(folder) / f"counts-native-{rt.name}.txt"
            # the emulated Python's qemu prefix, without the Python: the binary runs in its place
            qemu = emu.python_command(self.profile.name, count_instructions=count, counts_file=counts_file)[:-1]
            if count:
                argv += ["--sections", str(EMU_SECTIONS)]
            res = runner.run_command(["env", "-i", *GUEST_ENV, *qemu, *argv], timeout)
            return res, emu.read_counts(counts_file) if count and counts_file.exists() else []

        @staticmethod
        def _legacy_runner(runner_path):
            return None  # tflite-runtime has no C library in its wheel: no native legacy row

    return NativeEmu(spec, **options)


# Board-side steps without Python: POSIX sh, mktemp, tar, uname, getconf (coreutils or busybox).
_NATIVE_PROBE = "uname -m; getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>&1 | head -n 1"
_NATIVE_UPLOAD = 'd=$(mktemp -d "${TMPDIR:-/tmp}/edge-export-XXXXXX") && tar -xf - -C "$d" && echo "$d"'


def parse_glibc(text: str) -> tuple[int, int] | None:
    m = re.search(r"(?:glibc|GLIBC|GNU libc)\D*(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else None


def bundle_check(arch: str, glibc: tuple[int, int] | None) -> str | None:
    """Why a board of this arch and glibc cannot run the native bundle, or None if it can."""
    if arch not in ARCHES:
        return f"no native runner for {arch} (built for {', '.join(ARCHES)})"
    if glibc is None:
        return "no glibc found (musl or a static system?): the runtimes' libraries need glibc"
    need = BUNDLE_GLIBC[arch]
    if glibc < need:
        return f"glibc {glibc[0]}.{glibc[1]} is older than the {need[0]}.{need[1]} the runtimes' {arch} libraries need"
    return None


def ssh_device(spec: str, **options):
    """`ssh://` with the native bundle: the board needs no python3, only sh, tar and glibc."""
    from pipeline.devices import (
        SSH_STEP_TIMEOUT,
        DeviceError,
        SSHDevice,
        _agree_fields,
        _slice_inputs,
        _value,
        artifact_files,
        x86_reference,
    )

    class NativeSSH(SSHDevice):
        harness = "native"

        def __init__(self, spec, **options):
            super().__init__(spec, probe=False, **options)
            self.native_probe()

        def native_probe(self) -> tuple[str, tuple[int, int] | None]:
            proc = self._ssh([], SSH_STEP_TIMEOUT, raw=_NATIVE_PROBE, step="connecting")
            lines = proc.stdout.decode(errors="replace").split("\n")
            self.arch = lines[0].strip()
            self.glibc = parse_glibc("\n".join(lines[1:]))
            self.python = None
            return self.arch, self.glibc

        def _upload(self, files, folder, timeout):
            import tarfile

            tar_path = folder / "upload.tar"
            with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:  # busybox tar reads GNU
                for arcname, path in files.items():
                    info = tar.gettarinfo(str(path), arcname=arcname)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mode = 0o755 if arcname == "edge_bench" else 0o644
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
            with open(tar_path, "rb") as stdin:
                proc = self._ssh([], timeout + tar_path.stat().st_size / 1e6, stdin=stdin, raw=_NATIVE_UPLOAD,
                                 step="copying the bundle")
            remote = proc.stdout.decode(errors="replace").strip().splitlines()
            if proc.returncode != 0 or not remote or not remote[-1].startswith("/"):
                err = proc.stderr.decode(errors="replace").strip().splitlines()
                raise DeviceError(f"{self.name}: copying the bundle to the board failed: "
                                  f"{err[-1] if err else f'exit status {proc.returncode}'}")
            return remote[-1]

        def run(self, runner_path, model, inputs, args, timeout):
            runner_path, model = Path(runner_path), Path(model)
            remote, fields = None, {"emulated": False}
            try:
                why = bundle_check(self.arch, self.glibc)
                if why:
                    raise NativeError(f"{self.name} cannot run the native bundle: {why}")
                rt = runtime_for(runner_path.name)
                limit = int(_value(args, "--limit", 0)) or None
                with tempfile.TemporaryDirectory(prefix="edge-export-native-") as tmp:
                    folder = Path(tmp)
                    x = _slice_inputs(inputs, limit, folder)
                    ref, ref_error = x86_reference(runner_path, model, x, [], timeout)
                    files = bundle_files(rt, self.arch)
                    files.update({f"model/{p.name}": p for p in artifact_files(model)})
                    files[f"inputs/{x.name}"] = x
                    remote = self._upload(files, folder, SSH_STEP_TIMEOUT)
                    lib = f"lib/{library(rt, self.arch).name}"
                    argv = command(rt, self.arch, lib=lib, exe="./edge_bench") + [
                        f"model/{model.name}", "--inputs", f"inputs/{x.name}", "--outputs", "outputs.npz",
                        *native_args(args)]
                    res = self._run_native(remote, argv, timeout)
                    fields["loads"] = "yes" if "load_ms" in res else f"no: {res.get('error', '?')}"
                    if res.get("ok"):
                        npz = self._ssh(["cat", "--", f"{remote}/outputs.npz"], SSH_STEP_TIMEOUT,
                                        step="fetching outputs")
                        out = folder / "outputs.npz"
                        if npz.returncode == 0:
                            out.write_bytes(npz.stdout)
                        fields.update(_agree_fields(res, out, ref, ref_error))
            except (DeviceError, NativeError, OSError) as e:
                return {"ok": False, "error": str(e), "device_fields": {"emulated": False, "loads": f"no: {e}"}}
            finally:
                if remote and not self.keep:
                    self._remove(remote)
            if remote and self.keep:
                fields["board_dir"] = remote
            fields["summary"] = self._summary(res, fields)
            return {**res, "device_fields": fields}

        def _run_native(self, remote: str, argv: list[str], timeout: float) -> dict:
            from pipeline.runner import parse_result

            cmd = shlex.join(argv)
            limit = max(1, int(timeout))
            raw = (f"cd {shlex.quote(remote)} && if command -v timeout >/dev/null 2>&1; "
                   f"then exec timeout -k 10 {limit} {cmd}; else exec {cmd}; fi")
            try:
                proc = self._ssh([], timeout + 30, raw=raw, step="running")
            except DeviceError as e:
                return {"ok": False, "error": str(e)}
            result = parse_result(proc.stdout.decode(errors="replace"))
            if result is not None:
                return result
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            return {"ok": False, "error": f"native runner exited {proc.returncode} without a result"
                                          + (f": {tail[0][:300]}" if tail else "")}

        def conditions_line(self, rows, settings) -> str:
            return super().conditions_line(rows, settings).replace(f"Python {self.python}", "no Python (native)")

    return NativeSSH(spec, **options)


def device(spec: str, **options):
    """The native-harness device for a bench device spec (local, emu:PROFILE, ssh://...)."""
    kind = spec.split(":", 1)[0]
    if kind == "local":
        return NativeLocal()
    if kind == "emu":
        return emu_device(spec, **options)
    if kind == "ssh":
        return ssh_device(spec, **options)
    from pipeline.errors import UsageError

    raise UsageError(f"unknown device '{spec}' for the native harness (local, emu:PROFILE, ssh://...)")

