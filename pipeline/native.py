"""The native runner (targets/native/edge_bench.c): the Python runners' protocol without Python.

One C program per architecture dlopen()s the runtime's own C library from the runtime's wheel
(this venv's for x86_64; the aarch64 wheels the emulated boards unpacked, devices/emulator.py, for
aarch64). `bench --harness native` runs it where the Python runner would run:

- `local`: the x86_64 binary with this venv's libraries;
- `emu:PROFILE`: the aarch64 binary under qemu, with the aarch64 wheels' libraries, counted by the
  same instruction-count plugin between the same markers (EmuDevice, with this program as guest);
- `ssh://`: a self-contained bundle (binary, the runtime's .so files for the board's arch, model,
  inputs) copied to the board, run with no Python there, JSON and outputs fetched, removed.

Its JSON is the Python runners' (pipeline/runner.py parse_result), so the rows are the same shape.
Loaded only when a native row is asked for (bench --harness native, the native tests and benchmark).
"""

from __future__ import annotations

import platform
import re
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from pipeline.devices.agreement import agree_fields, artifact_files, slice_inputs, x86_reference
from pipeline.devices.emulated import EMU_SECTIONS, GUEST_ENV, TRACE_FILE, EmuDevice
from pipeline.devices.ssh import SSH_STEP_TIMEOUT, SSHDevice
from pipeline.errors import DeviceError, PipelineError

SOURCE_DIR = Path(__file__).resolve().parents[1] / "targets" / "native"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_native.sh"
ARCHES = ("x86_64", "aarch64")
# The oldest glibc the bundle needs on a board: the newest of its parts' manylinux tags (OpenVINO's
# aarch64 wheel is manylinux_2_35); the binary itself, built on Debian 12, asks for no newer symbol.
BUNDLE_GLIBC = {"x86_64": (2, 28), "aarch64": (2, 35)}
# The runner arguments edge_bench takes, with the values it has of each runtime option.
NATIVE_FLAGS = {
    "--inputs",
    "--outputs",
    "--limit",
    "--threads",
    "--warmup",
    "--runs",
    "--min-seconds",
    "--bench",
    "--profile",
}
NATIVE_OPTIONS = {"--precision": ("f32", "default"), "--delegate": ("xnnpack",)}


class NativeError(PipelineError):
    """The native runner cannot be built, found or run here."""


def native_runtimes() -> list:
    from pipeline.runtimes import RUNTIMES

    return [rt for rt in RUNTIMES.values() if rt.native]


def runtime_for(runner_name: str):
    """The runtime registry's row for a Python runner, if the native runner can stand in for it."""
    from pipeline.runtimes import RUNTIMES

    for rt in native_runtimes():
        if rt.runner == runner_name:
            return rt
    why = next((f": {rt.no_native}" for rt in RUNTIMES.values() if rt.runner == runner_name and rt.no_native), "")
    raise NativeError(
        f"no native runner for {runner_name}{why} (native: {', '.join(r.native for r in native_runtimes())})"
    )


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
            raise NativeError(
                f"cannot build the {arch} native runner: {tail[0]} "
                "(scripts/install_system.sh installs gcc, make and gcc-aarch64-linux-gnu)"
            )
    return path


def site_dir(arch: str) -> Path:
    """Where the runtimes' wheels are unpacked for `arch`: this venv, or the emulated boards' aarch64 site."""
    if arch == platform.machine():
        return Path(sysconfig.get_paths()["platlib"])
    if arch == "aarch64":
        from pipeline.devices import emulator

        site = emulator.emu_home() / "base" / "site"
        if not site.is_dir():
            raise NativeError(
                "no aarch64 runtime libraries: run python -m pipeline device setup emu:rpi4 "
                "(it unpacks the aarch64 wheels)"
            )
        return site
    raise NativeError(f"no runtime libraries for {arch} on this {platform.machine()} machine")


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(p for p in folder.glob(pattern) if "providers" not in p.name)
    if not found:
        raise NativeError(f"{folder} has no {pattern}: is the runtime's wheel installed?")
    return found[0]


def library(rt, arch: str) -> Path:
    """The C library the native runner dlopen()s: the first of the runtime's native_files."""
    return _one(site_dir(arch) / rt.module, rt.native_files[0])


def version(rt, arch: str) -> str:
    """The wheel's version, from its .dist-info name (LiteRT's C API has no version call)."""
    info = sorted(site_dir(arch).glob(f"{rt.module}-*.dist-info"))
    return info[0].name[len(rt.module) + 1 : -len(".dist-info")] if info else ""


def bundle_files(rt, arch: str) -> dict[str, Path]:
    """name in the bundle -> file: the binary at the top, the runtime's libraries in lib/."""
    files = {"edge_bench": binary(arch), f"lib/{library(rt, arch).name}": library(rt, arch)}
    for pattern in rt.native_files[1:]:
        for path in sorted((site_dir(arch) / rt.module).glob(pattern)):
            files[f"lib/{path.name}"] = path
    return files


def command(rt, arch: str, lib: Path | str | None = None, exe: Path | str | None = None) -> list[str]:
    """argv of the native runner up to the model: append MODEL and the runner arguments."""
    return [
        str(exe or binary(arch)),
        "--runtime",
        rt.native,
        "--lib",
        str(lib or library(rt, arch)),
        "--runtime-version",
        version(rt, arch),
    ]


def native_args(args) -> list[str]:
    """The runner arguments for the native runner; a runtime option value it has not is refused here, before
    anything is copied to a board."""
    args = [str(a) for a in args]
    for a, v in zip(args, [*args[1:], None]):
        if a.startswith("--") and a not in NATIVE_FLAGS | NATIVE_OPTIONS.keys():
            raise NativeError(f"the native runner has no option {a}")
        if a in NATIVE_OPTIONS and v not in NATIVE_OPTIONS[a]:
            raise NativeError(
                f"the native runner has no {a} {v}: it takes {' or '.join(NATIVE_OPTIONS[a])} "
                "(LiteRT's CompiledModel API runs XNNPACK only); use --harness python for it"
            )
    return args


def read_profile(res: dict) -> dict:
    """The native runner's profile: LiteRT's profiler events as op records (litert_profiler.op_records), or
    onnxruntime's trace folder read as the Python runner reads its own (run_onnxruntime.trace_ops). The trace
    starts when the session does, some time after the runner's clock read before it:
    `profile_spans_approximate`, so op_profile aligns the spans with the plugin's trace."""
    events = res.pop("profile_events", None)
    if events is not None:  # LiteRT's profiler events, made op records as run_litert.py makes them
        from targets.runners.litert_profiler import op_records

        keys = ("tag", "type", "start_us", "us", "index")
        try:
            res["profile"] = op_records([dict(zip(keys, e)) for e in events], res.get("profile_calls") or 1)
            res["profile_total_ms"] = sum(o["ms"] for o in res["profile"])
        except RuntimeError as e:
            res["profile_error"] = str(e)
        return res
    folder = res.pop("profile_trace", None)
    if not folder:
        return res
    from targets.runners.run_onnxruntime import trace_ops

    traces = sorted(Path(folder).glob("*.json"))
    if not traces:
        res["profile_error"] = "onnxruntime wrote no profiler trace"
        return res
    res["profile"] = trace_ops(str(traces[0]), res.get("profile_calls") or 1, res.pop("profile_start_ns_before"))
    held = [o.pop("arena_bytes") for o in res["profile"] if o.get("arena_bytes") is not None]
    if held:
        res["arena_bytes"] = max(held)
    res["profile_total_ms"] = sum(o["ms"] for o in res["profile"])
    res["profile_spans_approximate"] = True
    return res


def run_local(runner_path: Path, model: Path, args, timeout: float) -> dict:
    """The native runner on this machine, in place of `runner_path`: the Python runner's JSON."""
    from pipeline import runner

    try:
        rt = runtime_for(Path(runner_path).name)
        cmd = command(rt, platform.machine()) + [str(model), *native_args(args)]
    except NativeError as e:
        return {"ok": False, "error": str(e)}
    return read_profile(runner.run_command(cmd, timeout))


# -- bench's devices, with the native runner as what they run -----------------------------------


class NativeLocal:
    """`local` with the native runner."""

    name = "local"
    harness = "native"
    emulated = False

    def __init__(self, spec: str = "local", **_options):
        pass

    def run(self, request) -> dict:
        return run_local(request.runner, request.model, request.argv(request.inputs), request.timeout)


class NativeEmu(EmuDevice):
    """`emu:PROFILE` with the aarch64 native runner as the guest program, under the same qemu and counter."""

    harness = "native"

    def _guest(self, runner_path, model, args, site, folder, count, timeout):
        from pipeline import runner
        from pipeline.devices import emulator as emu

        try:
            rt = runtime_for(Path(runner_path).name)
            argv = command(rt, "aarch64") + [str(model), *native_args(args)]
        except NativeError as e:
            return {"ok": False, "error": str(e)}, []
        counts_file = Path(folder) / f"counts-native-{rt.native}.txt"
        # the emulated Python's qemu prefix without the Python: the binary runs in its place
        blocks = Path(folder) / f"blocks-{site}.txt"  # what EmuDevice.run reads for its latency estimate
        qemu = emu.python_command(
            self.profile.name,
            count_instructions=count,
            counts_file=counts_file,
            blocks_file=blocks if count and emu.profile_plugin_path().exists() else None,
            trace_file=Path(folder) / TRACE_FILE if count else None,
        )[:-1]
        if count:  # EMU_SECTIONS counted sections in one process, as emu_sections.py runs the Python runner
            argv += ["--sections", str(EMU_SECTIONS)]
        res = read_profile(runner.run_command(["env", "-i", *GUEST_ENV, *qemu, *argv], timeout))
        return res, emu.read_counts(counts_file) if count and counts_file.exists() else []

    @staticmethod
    def _legacy_runner(runner_path):
        return None  # tflite-runtime's wheel has no C library: no native legacy row

    def runtimes(self) -> list[dict]:
        """`device check`: the emulated board's glibc (its sysroot's libc6) and whether the bundle is there."""
        import json

        from pipeline.devices import emulator

        debs = json.loads((emulator.emu_home() / "base" / "READY").read_text()).get("debs", [])
        glibc = parse_glibc(" ".join(f"glibc {d.split('_')[1]}" for d in debs if d.startswith("libc6_")))
        why = bundle_check("aarch64", glibc)
        try:
            for rt in native_runtimes():
                bundle_files(rt, "aarch64")
        except NativeError as e:
            why = why or str(e)
        return [
            {
                "site": "native",
                "arch": "aarch64",
                "glibc": ".".join(map(str, glibc)) if glibc else None,
                "bundle": f"no: {why}" if why else "yes",
            }
        ]


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


class NativeSSH(SSHDevice):
    """`ssh://` with the native bundle: the board needs no python3, only sh, tar and glibc."""

    harness = "native"

    def __init__(self, spec: str, **options):
        super().__init__(spec, **{**options, "probe": False})
        self.glibc = None
        self.native_probe()

    def native_probe(self) -> str | None:
        """Connect once (host key, key login), ask the board's arch and glibc; why it cannot run the bundle."""
        proc = self._ssh([], SSH_STEP_TIMEOUT, raw=_NATIVE_PROBE, step="connecting")
        lines = proc.stdout.decode(errors="replace").split("\n")
        self.arch, self.glibc = lines[0].strip(), parse_glibc("\n".join(lines[1:]))
        return bundle_check(self.arch, self.glibc)

    def run(self, request) -> dict:
        model = Path(request.model)
        remote, fields = None, {"emulated": False}
        try:
            why = bundle_check(self.arch, self.glibc)
            if why:
                raise NativeError(f"{self.name} cannot run the native bundle: {why}")
            rt = runtime_for(Path(request.runner).name)
            with tempfile.TemporaryDirectory(prefix="edge-export-native-") as tmp:
                folder = Path(tmp)
                x = slice_inputs(request.inputs, request.limit, folder)
                ref, ref_error = x86_reference(request, x)  # the Python runner on this machine
                files = bundle_files(rt, self.arch)
                files.update({f"model/{p.name}": p for p in artifact_files(model)})
                files[f"inputs/{x.name}"] = x
                argv = command(rt, self.arch, lib=f"lib/{library(rt, self.arch).name}", exe="./edge_bench") + [
                    f"model/{model.name}",
                    *native_args(request.argv(f"inputs/{x.name}", "outputs.npz")),
                ]
                remote = self._upload(
                    files,
                    folder,
                    SSH_STEP_TIMEOUT,
                    raw=_NATIVE_UPLOAD,
                    executables=("edge_bench",),
                    step="copying the bundle",
                )
                res = self._run_remote(remote, argv, request.timeout)
                if res.pop("profile_trace", None):  # written on the board, not fetched
                    res["profile_error"] = "the native runner's onnxruntime trace is not fetched from a board"
                res = read_profile(res)  # LiteRT's profiler events come with the JSON
                fields["loads"] = "yes" if "load_ms" in res else f"no: {res.get('error', '?')}"
                if res.get("ok"):
                    npz = self._ssh(["cat", "--", f"{remote}/outputs.npz"], SSH_STEP_TIMEOUT, step="fetching outputs")
                    out = folder / "outputs.npz"
                    if npz.returncode == 0:
                        out.write_bytes(npz.stdout)
                    fields.update(agree_fields(res, out, ref, ref_error, request.original))
        except (DeviceError, NativeError, OSError) as e:
            return {"ok": False, "error": str(e), "device_fields": {"emulated": False, "loads": f"no: {e}"}}
        finally:
            if remote and not self.keep:
                self._remove(remote)
        if remote and self.keep:
            fields["board_dir"] = remote
        fields["summary"] = self._summary(res, fields)
        return {**res, "device_fields": fields}

    def runtimes(self) -> list[dict]:
        """`device check`: what the bundle needs of this board, without asking for python3."""
        why = bundle_check(self.arch, self.glibc)
        glibc = ".".join(map(str, self.glibc)) if self.glibc else None
        return [{"site": "native", "arch": self.arch, "glibc": glibc, "bundle": f"no: {why}" if why else "yes"}]

    def conditions_line(self, rows: list[dict], timing) -> str:
        return super().conditions_line(rows, timing).replace(f"Python {self.python}", "no Python (native runner)")


def get_device(spec: str, **options):
    """The native-harness device a bench device spec names (local, emu:PROFILE, ssh://...): devices.KINDS."""
    from pipeline.devices import get_device

    return get_device(spec, harness="native", **options)
