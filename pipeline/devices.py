"""Where a runner runs besides this machine: an emulated aarch64 board, or a real one over SSH.

Both are devices of `bench` (pipeline/bench.py: a `name` and `run(runner, model, inputs, args,
timeout) -> runner JSON`) and of `build --verify-on`. Every run also writes the outputs of the
same input samples (`--outputs`) and compares them with the same runner on this x86 machine.

- `emu:PROFILE` (rpi3, rpi4, rpi5; targets/devices.py): the runner scripts in an arm64 Debian
  Python under qemu user mode (targets/emu.py; `python -m pipeline device setup emu:rpi4`).
  Emulated wall time is not device time: it is reported only under `emulated_*` keys. The cost
  figure is guest instructions per inference on one thread, counted by a qemu plugin over the
  runner's timed section only, in EMU_SECTIONS sections of EMU_RUNS inferences (median).
  `.tflite` files are also run in tflite-runtime 2.14 aarch64 (column `tflite_runtime_2_14`).
- `ssh://[user@]host[:port]`: the runner scripts, the artifact's files and the input samples go to
  a temp folder on the board, the board's `python3` runs them, the JSON and outputs come back.
  Plain `ssh` (BatchMode: keys only; strict host-key checking), one connection per step, each with
  a timeout; every remote word is quoted with shlex.quote (file names are data, never shell).

Imports stay light at module level (stdlib and pipeline.errors): bench loads this for `--help`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.errors import PipelineError, UsageError

# Under emulation every timed section runs a fixed, small number of inferences: instruction counts
# are exact for one thread, so more runs add emulated minutes, not information.
EMU_RUNS = 10
EMU_WARMUP = 2
EMU_SECTIONS = 3
ARM_CHECK_SAMPLES = 100  # build --verify-on: held-out samples compared with x86
SSH_CONNECT_TIMEOUT = 15
SSH_STEP_TIMEOUT = 120.0  # upload (plus 1 s per MB), fetch, clean up; the run gets bench's --timeout

GUEST_SECTIONS = Path(__file__).with_name("emu_sections.py")
# EDGE_EXPORT_NO_OWN_TIMER: nothing but the inference between the counted markers (runner_common._bench).
GUEST_ENV = ("PATH=/usr/bin:/bin", "LANG=C.UTF-8", "ORT_DISABLE_TELEMETRY=1", "OPENVINO_TELEMETRY_OPTOUT=1",
             "EDGE_EXPORT_NO_OWN_TIMER=1")
# What a runner imports, by the name in ImportError/PackageNotFoundError -> what to pip install.
PIP_NAMES = {"ai_edge_litert": "ai-edge-litert", "ai-edge-litert": "ai-edge-litert", "onnxruntime": "onnxruntime",
             "openvino": "openvino", "tflite_runtime": "tflite-runtime", "tflite-runtime": "tflite-runtime",
             "numpy": "numpy"}
RUNTIME_SITES = {"run_tflite_runtime.py": "tflite_runtime"}  # emu site folder per runner (else "default")
_BENCH_FLAGS = {"--threads", "--warmup", "--runs", "--min-seconds", "--limit"}  # each takes a value



def _vs_x86(f: dict) -> list[str]:
    """How a device's outputs compared with x86's, for the log line."""
    parts = []
    if f.get("max_abs_diff_vs_x86") is not None:
        top1 = f.get("top1_agreement_vs_x86")
        parts.append(f"vs x86: max |diff| {f['max_abs_diff_vs_x86']:.2g}" + (f", top-1 {top1:.4g}" if top1 is not None else ""))
    if f.get("agreement_error"):
        parts.append(f["agreement_error"])
    return parts

class DeviceError(PipelineError):
    """A device cannot be reached or used (SSH connection, host key, board without python3)."""


def add_device_arguments(p) -> None:
    """Options of the devices that need them (bench, device check, build --verify-on)."""
    p.add_argument("--known-hosts", type=Path, metavar="FILE",
                   help="ssh:// devices: check the board's host key against FILE only "
                        "(default: ~/.ssh/known_hosts and the system's); an unknown or changed key fails")
    p.add_argument("--identity", type=Path, metavar="FILE", help="ssh:// devices: the private key to log in with")
    p.add_argument("--keep", action="store_true",
                   help="ssh:// devices: leave the copied files on the board (default: removed after each run)")


def device_options(args) -> dict:
    return {"known_hosts": getattr(args, "known_hosts", None), "identity": getattr(args, "identity", None),
            "keep": bool(getattr(args, "keep", False))}


# -- runner arguments ---------------------------------------------------------------------------

def _value(args: list[str], flag: str, default=None):
    args = [str(a) for a in args]
    return args[args.index(flag) + 1] if flag in args else default


def _replace(args: list[str], values: dict) -> list[str]:
    """`args` with each `flag value` pair of `values` set (replaced, or appended)."""
    args = [str(a) for a in args]
    for flag, value in values.items():
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
    return args


def _runner_options(args: list[str]) -> list[str]:
    """The runtime options among bench's runner arguments (--delegate none, ...), without the timing ones."""
    args, out, i = [str(a) for a in args], [], 0
    while i < len(args):
        if args[i] == "--bench":
            i += 1
        elif args[i] in _BENCH_FLAGS:
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def _slice_inputs(inputs: Path, limit: int | None, folder: Path) -> Path:
    """The first `limit` samples as their own .npy (same file name): what is copied and compared."""
    import numpy as np

    x = np.load(inputs, allow_pickle=False)
    dest = folder / Path(inputs).name
    np.save(dest, x[:limit] if limit else x)
    return dest


# -- agreement with this machine ----------------------------------------------------------------

_REFERENCE: dict = {}


def x86_reference(runner_path: Path, model: Path, inputs: Path, options: list[str], timeout: float):
    """(outputs, None) of `runner_path` on this machine for these samples, or (None, why not). Cached."""
    from pipeline import runner
    from pipeline.util import sha256_file
    from pipeline.verify import load_outputs

    st = Path(model).stat()
    digest = sha256_file(inputs)
    key = (str(runner_path), str(model), st.st_mtime_ns, st.st_size, digest, tuple(options))
    if key not in _REFERENCE:
        with tempfile.TemporaryDirectory(prefix="edge-export-ref-") as tmp:
            out = Path(tmp) / "outputs.npz"
            res = runner.run(runner_path, model, ["--inputs", inputs, "--outputs", out, *options], timeout=timeout)
            _REFERENCE[key] = ((load_outputs(out), None) if res["ok"]
                               else (None, f"x86 reference run failed: {res['error']}"))
    return _REFERENCE[key]


def agreement(outputs, reference) -> dict:
    """max |diff|, cosine and (score outputs) top-1 agreement against the x86 run, worst over outputs."""
    from pipeline.verify import compare

    if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference)):
        return {"agreement_error": f"outputs {[o.shape for o in outputs]} differ in shape from x86's "
                                   f"{[r.shape for r in reference]}"}
    c = compare(outputs, reference, None)
    return {"max_abs_diff_vs_x86": c["max_abs_diff"], "cosine_vs_x86": c["cosine"],
            "top1_agreement_vs_x86": c.get("top1_agreement"), "agreement_samples": int(len(outputs[0]))}


def _agree_fields(res: dict, out_file: Path, ref, ref_error) -> dict:
    from pipeline.verify import load_outputs

    if not res.get("ok"):
        return {}
    if ref_error:
        return {"agreement_error": ref_error}
    if not out_file.exists():
        return {"agreement_error": "the device wrote no outputs"}
    try:
        outputs = load_outputs(out_file)
    except (OSError, ValueError, KeyError) as e:  # a truncated or foreign file from the device
        return {"agreement_error": f"cannot read the device's outputs: {e}"}
    return agreement(outputs, ref)


def _legacy_verdict(res: dict, out: Path, ref, ref_error) -> str:
    """tflite-runtime 2.14 on the board against this machine's LiteRT, as build says it (verify.legacy_verdict)."""
    from pipeline.verify import legacy_verdict, load_outputs

    if not res.get("ok"):
        return legacy_verdict(res.get("error") or "no result", [], [], "x86")
    compared = _agree_fields(res, out, ref, ref_error)
    if "agreement_error" in compared:
        return f"loads; not compared: {compared['agreement_error']}"
    return legacy_verdict(None, load_outputs(out), ref, "x86")


def missing_runtime(res: dict, where: str = "board") -> dict:
    """A runner that could not import its runtime (or numpy): say what to install, once, plainly."""
    error = res.get("error") or ""
    m = (re.search(r"No module named '([\w.]+)'", error)
         or re.search(r"No package metadata was found for ([\w.-]+)", error))
    if res.get("ok") or not m:
        return res
    pip = PIP_NAMES.get(m[1].split(".")[0], m[1].split(".")[0])
    return {**res, "error": f"{where} has no {pip}: pip install {pip} there", "runtime_error": error}


def _emulated_fields(res: dict) -> dict:
    """Move every wall-clock figure of an emulated run under an `emulated_` key: none is device time."""
    lat = res.pop("latency", None) or {}
    own = res.pop("runtime_latency", None) or {}  # OpenVINO's own clock, ticking in emulated time too
    out = {"emulated_p50_ms": lat.get("p50_ms"), "emulated_runtime_p50_ms": own.get("p50_ms"),
           "emulated_load_ms": res.pop("load_ms", None),
           "emulated_first_inference_ms": res.pop("first_inference_ms", None), "timed_inferences": lat.get("runs")}
    res.pop("peak_rss_mb", None)  # qemu's own memory (translated code included), not the board's
    return out


# -- emu:PROFILE ---------------------------------------------------------------------------------

def emu_profile(spec: str):
    """The Pi profile of `emu:NAME`; a UsageError naming the known ones otherwise."""
    from targets.devices import get_device as profile

    name = spec.split(":", 1)[1] if ":" in spec else ""
    try:
        device = profile(name)
    except ValueError as e:
        raise UsageError(f"device '{spec}': {e}") from None
    if not device.emulated:
        raise UsageError(f"device '{spec}': {device.name} is this machine, run natively: use --device local")
    return device


def emu_columns():
    return [("target", "target"), ("device", "device"), ("threads", "thr"), ("status", "status"),
            ("runtime", "runtime"), ("loads", "loads"), ("max_abs_diff_vs_x86", "max|diff| vs x86"),
            ("top1_agreement_vs_x86", "top-1 vs x86"), ("instructions_per_inference", "guest insn/inference"),
            ("emulated_p50_ms", "emulated p50 ms (not device time)"),
            ("tflite_runtime_2_14", "tflite-runtime 2.14 aarch64")]


class EmuDevice:
    """An emulated Raspberry-Pi-class board: this machine's runners in an aarch64 Python under qemu."""

    emulated = True

    def __init__(self, spec: str, **_options):
        from targets import emu

        self.profile = emu_profile(spec)
        self.name = f"emu:{self.profile.name}"
        if not emu.is_ready(self.profile.name):
            raise UsageError(f"{self.name} is not set up; run: python -m pipeline device setup {self.name}")
        self.columns = emu_columns()
        self._legacy: dict = {}

    def _guest(self, runner_path: Path, model: Path, args: list[str], runtime: str, folder: Path,
               count: bool, timeout: float) -> tuple[dict, list[int]]:
        """One emulated runner process; with `count`, EMU_SECTIONS timed sections and their counts."""
        from pipeline import runner
        from targets import emu

        counts_file = folder / f"counts-{runtime}.txt"
        # qemu hands its environment to the guest; its size moves the guest's heap and with it the counts.
        prefix = [shutil.which("env") or "/usr/bin/env", "-i", *GUEST_ENV] + emu.python_command(
            self.profile.name, count_instructions=count, counts_file=counts_file, runtime=runtime)
        if count:
            prefix += [str(GUEST_SECTIONS), str(EMU_SECTIONS)]
        res = runner.run(runner_path, model, args, timeout=timeout, prefix=prefix)
        counts = emu.read_counts(counts_file) if count and counts_file.exists() else []
        return res, counts

    def run(self, runner_path: Path, model: Path, inputs: Path, args: list[str], timeout: float) -> dict:
        runner_path, model = Path(runner_path), Path(model)
        bench = "--bench" in [str(a) for a in args]
        threads = int(_value(args, "--threads", 1))
        limit = int(_value(args, "--limit", 0)) or None
        options = _runner_options(args)
        count = bench and threads == 1
        with tempfile.TemporaryDirectory(prefix="edge-export-emu-") as tmp:
            folder = Path(tmp)
            x = _slice_inputs(inputs, limit, folder)
            ref, ref_error = x86_reference(runner_path, model, x, options, timeout)
            guest_args = ["--inputs", x, "--outputs", folder / "outputs.npz", *args]
            if bench:
                guest_args = _replace(guest_args, {"--runs": EMU_RUNS, "--min-seconds": 0, "--warmup": EMU_WARMUP})
            runtime = RUNTIME_SITES.get(runner_path.name, "default")
            res, counts = self._guest(runner_path, model, guest_args, runtime, folder, count, timeout)
            loaded = "load_ms" in res
            fields = {"emulated": True, "loads": "yes" if loaded else f"no: {res.get('error', '?')}",
                      **_agree_fields(res, folder / "outputs.npz", ref, ref_error)}
            if bench:
                fields.update(self._counts(res, counts, threads))
            fields.update(_emulated_fields(res))
            legacy = self._legacy_runner(runner_path)
            if legacy and loaded:
                fields.update(self._legacy_check(legacy, model, x, ref, ref_error, options, folder, count, timeout))
        cond = res.get("conditions")
        if cond:
            cond["cpu"] = f"{self.profile.cpu} (emulated {self.profile.name}, qemu user mode)"
            cond["cpus_available"] = self.profile.cores
        fields["summary"] = self._summary(fields)
        return {**res, "device_fields": fields}

    @staticmethod
    def _counts(res: dict, counts: list[int], threads: int) -> dict:
        if threads != 1:
            return {"instructions_note": "instructions are counted on 1 thread only"}
        runs = (res.get("latency") or {}).get("runs") or EMU_RUNS
        if not res.get("ok") or not counts:
            return {}
        return {"instructions_per_inference": round(statistics.median(counts) / runs), "instruction_counts": counts,
                "instructions_spread": (max(counts) - min(counts)) / max(min(counts), 1),
                "instruction_sections": len(counts), "inferences_per_section": runs}

    @staticmethod
    def _legacy_runner(runner_path: Path) -> Path | None:
        from targets import TARGETS

        names = {t.legacy_runner for t in TARGETS.values() if t.runner == runner_path.name and t.legacy_runner}
        return runner_path.with_name(sorted(names)[0]) if names else None

    def _legacy_check(self, legacy: Path, model: Path, x: Path, ref, ref_error, options, folder, count, timeout):
        """The same file and samples in tflite-runtime 2.14 aarch64 (its own site: numpy 1.x)."""
        st = model.stat()
        key = (str(model), st.st_mtime_ns, st.st_size, x.stat().st_size, tuple(options))
        if key not in self._legacy:
            out = folder / "legacy.npz"
            args = ["--inputs", x, "--outputs", out, *options]
            if count:
                args += ["--bench", "--threads", "1", "--runs", EMU_RUNS, "--min-seconds", 0, "--warmup", EMU_WARMUP]
            res, counts = self._guest(legacy, model, args, RUNTIME_SITES[legacy.name], folder, count, timeout)
            fields = {"tflite_runtime_2_14": _legacy_verdict(res, out, ref, ref_error)}
            runs = (res.get("latency") or {}).get("runs") or EMU_RUNS
            if res.get("ok") and counts:
                fields["tflite_runtime_instructions_per_inference"] = round(statistics.median(counts) / runs)
            self._legacy[key] = fields
        return self._legacy[key]

    @staticmethod
    def _summary(f: dict) -> str:
        parts = [f"loads {f['loads']}"]
        if f.get("instructions_per_inference"):
            parts.append(f"{f['instructions_per_inference']:,} guest instructions/inference (1 thread)")
        parts += _vs_x86(f)
        if f.get("emulated_p50_ms") is not None:
            parts.append(f"emulated p50 {f['emulated_p50_ms']:.3g} ms (not device time)")
        if f.get("tflite_runtime_2_14"):
            parts.append(f"tflite-runtime 2.14: {f['tflite_runtime_2_14']}")
        return "; ".join(parts)

    def runtimes(self) -> list[dict]:
        """What the emulated board has installed, per site folder (tflite-runtime has its own, numpy 1.x)."""
        from targets import emu

        out = []
        for runtime in ("default", "tflite_runtime"):
            proc = subprocess.run(emu.python_command(self.profile.name, runtime=runtime) + ["-c", _RUNTIMES],
                                  capture_output=True, text=True, timeout=300)
            out.append({"site": runtime, **_runtimes_json(proc.stdout, self.name)})
        return out

    def conditions_line(self, rows: list[dict], settings) -> str:
        return (f"conditions: {self.name} = {self.profile.description}, emulated by qemu user mode "
                f"(-cpu {self.profile.cpu}) on this machine; batch 1; guest instructions counted over the timed "
                f"section only, 1 thread, median of {EMU_SECTIONS} sections of {EMU_RUNS} inferences after "
                f"{EMU_WARMUP} warm-up runs; emulated times are not device times; agreement: same samples on x86")


# -- ssh://user@host:port ------------------------------------------------------------------------

_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$|^[0-9A-Fa-f:.]+$")  # a name or an address, never an option
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")

# Board-side steps, each `python3 -c SCRIPT ARGS` with every word quoted: the board needs python3, nothing else.
_UPLOAD = """import sys, tarfile, tempfile
d = tempfile.mkdtemp(prefix="edge-export-")
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
    t.extractall(d, **kw)
print(d)
"""
_PROBE = "import platform, sys; print(platform.machine(), platform.python_version())"
# What is installed, from package metadata (no import: fast, even under qemu).
RUNTIME_DISTS = ("numpy", "ai-edge-litert", "onnxruntime", "openvino", "tflite-runtime")
_RUNTIMES = f"""import json, platform
from importlib import metadata
out = {{"arch": platform.machine(), "python": platform.python_version()}}
for dist in {RUNTIME_DISTS!r}:
    try:
        out[dist] = metadata.version(dist)
    except Exception:
        out[dist] = None
print(json.dumps(out))
"""


def _runtimes_json(text: str, where: str) -> dict:
    import json

    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise DeviceError(f"{where}: python3 did not say what it has installed")


def _ssh_opt_path(path: Path) -> str:
    """A path as an ssh -o value: ssh expands %-tokens and splits on spaces unless quoted."""
    text = str(Path(path).expanduser().absolute())
    if '"' in text:
        raise UsageError(f"{text}: ssh cannot take a file name holding a double quote")
    return '"' + text.replace("%", "%%") + '"'


def ssh_columns():
    return [("target", "target"), ("device", "device"), ("threads", "thr"), ("status", "status"),
            ("runtime", "runtime"), ("delegate", "delegate"), ("load_ms", "load ms"),
            ("first_inference_ms", "first ms"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
            ("throughput_per_s", "per s"), ("peak_rss_mb", "rss MB"), ("runs", "runs"),
            ("max_abs_diff_vs_x86", "max|diff| vs x86"), ("top1_agreement_vs_x86", "top-1 vs x86")]


class SSHDevice:
    """A real board reached with the system's ssh client: keys only, known host keys only."""

    emulated = False

    def __init__(self, spec: str, known_hosts: Path | None = None, identity: Path | None = None, keep: bool = False,
                 probe: bool = True, **_options):
        parts = urlsplit(spec)
        try:
            port = parts.port
        except ValueError:
            port = -1
        host, user = parts.hostname or "", parts.username
        if (parts.scheme != "ssh" or not host or not _HOST.match(host) or port in (-1, 0) or parts.password
                or (user is not None and not _USER.match(user)) or parts.path not in ("", "/") or parts.query
                or parts.fragment):
            raise UsageError(f"device '{spec}' is not ssh://[user@]host[:port] (a host name or address, "
                             "a user name of letters, digits, '.', '_', '-')")
        self.host, self.user, self.port, self.keep = host, user, port, keep
        self.name = "ssh://" + (f"{user}@" if user else "") + (f"[{host}]" if ":" in host else host) + (
            f":{port}" if port else "")
        self.options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
                        "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}", "-o", "ServerAliveInterval=15",
                        "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR", "-o", "RequestTTY=no"]
        self.known_hosts = known_hosts
        if known_hosts is not None:
            if not Path(known_hosts).expanduser().is_file():
                raise UsageError(f"--known-hosts {known_hosts}: no such file")
            self.options += ["-o", f"UserKnownHostsFile={_ssh_opt_path(known_hosts)}",
                             "-o", "GlobalKnownHostsFile=/dev/null"]
        if identity is not None:
            if not Path(identity).expanduser().is_file():
                raise UsageError(f"--identity {identity}: no such file")
            self.options += ["-o", f"IdentityFile={_ssh_opt_path(identity)}", "-o", "IdentitiesOnly=yes"]
        if port:
            self.options += ["-p", str(port)]
        if user:
            self.options += ["-l", user]
        self.columns = ssh_columns()
        self.arch = self.python = None
        if probe:
            self.probe()

    # every remote command is one string of shlex-quoted words, so a name is never shell syntax
    def command(self, words: list[str], raw: str = "") -> list[str]:
        return ["ssh", *self.options, "--", self.host, raw or shlex.join(str(w) for w in words)]

    def _ssh(self, words, timeout: float, stdin=None, raw: str = "", step: str = "") -> subprocess.CompletedProcess:
        if shutil.which("ssh") is None:
            raise DeviceError("ssh:// devices need the OpenSSH client (`ssh`) on this machine")
        try:
            proc = subprocess.run(self.command(words, raw), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: {step or 'ssh'} timed out after {timeout:.0f} s") from None
        if proc.returncode == 255:
            raise DeviceError(self._connect_error(proc.stderr.decode(errors="replace")))
        return proc

    def _connect_error(self, stderr: str) -> str:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not set(ln.strip()) <= {"@"}]
        last = lines[-1] if lines else "ssh exited 255"
        where = f"{self.host}:{self.port or 22}"
        kh = self.known_hosts or "~/.ssh/known_hosts"
        if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
            return (f"{self.name}: host key verification failed: the key {where} presented is not the one for it "
                    f"in {kh} (or there is none); nothing was run. Check the board's fingerprint, then add it: "
                    f"ssh-keyscan -p {self.port or 22} {self.host} >> {kh}")
        if "Permission denied" in stderr:
            return (f"{self.name}: the board refused every key ({last}); only key authentication is used: "
                    "pass --identity FILE or load the key into ssh-agent")
        return f"{self.name}: cannot connect: {last}"

    def probe(self) -> tuple[str, str]:
        """Connect once (host key, key login) and ask the board's python3 what it is."""
        proc = self._ssh(["python3", "-c", _PROBE], SSH_STEP_TIMEOUT, step="connecting")
        words = proc.stdout.decode(errors="replace").split()
        if proc.returncode != 0 or len(words) < 2:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            why = err[-1] if err else f"exit status {proc.returncode}"
            if proc.returncode == 127:
                why = "python3 is not on the board's PATH: install python3 and numpy there"
            raise DeviceError(f"{self.name}: cannot run python3 on the board: {why}")
        self.arch, self.python = words[-2], words[-1]
        return self.arch, self.python

    def runtimes(self) -> list[dict]:
        proc = self._ssh(["python3", "-c", _RUNTIMES], SSH_STEP_TIMEOUT, step="asking python3")
        return [{"site": "python3", **_runtimes_json(proc.stdout.decode(errors="replace"), self.name)}]

    def _upload(self, files: dict[str, Path], folder: Path, timeout: float) -> str:
        bundle = folder / "upload.tar"
        with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, path in files.items():
                info = tar.gettarinfo(str(path), arcname=arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        with open(bundle, "rb") as stdin:
            proc = self._ssh(["python3", "-c", _UPLOAD], timeout + bundle.stat().st_size / 1e6, stdin=stdin,
                             step="copying files")
        remote = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not remote or not remote[-1].startswith("/"):
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DeviceError(f"{self.name}: copying files to the board failed: "
                              f"{err[-1] if err else f'exit status {proc.returncode}'}")
        return remote[-1]

    def _remove(self, remote: str) -> None:
        try:
            self._ssh(["rm", "-rf", "--", remote], SSH_STEP_TIMEOUT, step="removing files")
        except DeviceError:
            pass  # the run's result stands; a temp folder left on the board is not a failed measurement

    def run(self, runner_path: Path, model: Path, inputs: Path, args: list[str], timeout: float) -> dict:
        runner_path, model = Path(runner_path), Path(model)
        limit = int(_value(args, "--limit", 0)) or None
        options = _runner_options(args)
        remote = None
        try:
            with tempfile.TemporaryDirectory(prefix="edge-export-ssh-") as tmp:
                folder = Path(tmp)
                x = _slice_inputs(inputs, limit, folder)
                ref, ref_error = x86_reference(runner_path, model, x, options, timeout)
                files = {f"runner/{p.name}": p for p in sorted(runner_path.parent.glob("*.py"))}
                files.update({f"model/{p.name}": p for p in artifact_files(model)})
                files[f"inputs/{x.name}"] = x
                remote = self._upload(files, folder, SSH_STEP_TIMEOUT)
                res = missing_runtime(self._run_remote(remote, runner_path.name, model.name, x.name, args, timeout))
                fields = {"emulated": False, "loads": "yes" if "load_ms" in res else f"no: {res.get('error', '?')}"}
                if res.get("ok"):
                    npz = self._ssh(["cat", "--", f"{remote}/outputs.npz"], SSH_STEP_TIMEOUT, step="fetching outputs")
                    out = folder / "outputs.npz"
                    if npz.returncode == 0:
                        out.write_bytes(npz.stdout)
                    fields.update(_agree_fields(res, out, ref, ref_error))
        except (DeviceError, OSError) as e:
            return {"ok": False, "error": str(e), "device_fields": {"emulated": False, "loads": f"no: {e}"}}
        finally:
            if remote and not self.keep:
                self._remove(remote)
        if remote and self.keep:
            fields["board_dir"] = remote
        fields["summary"] = self._summary(res, fields)
        return {**res, "device_fields": fields}

    def _run_remote(self, remote: str, runner: str, model: str, inputs: str, args: list[str], timeout: float) -> dict:
        from pipeline.runner import parse_result

        argv = ["python3", f"runner/{runner}", f"model/{model}", "--inputs", f"inputs/{inputs}",
                "--outputs", "outputs.npz", *map(str, args)]
        cmd = shlex.join(argv)
        limit = max(1, int(timeout))
        # coreutils `timeout` on the board stops a hung runtime there too; without it, only our ssh is killed.
        raw = (f"cd {shlex.quote(remote)} && if command -v timeout >/dev/null 2>&1; "
               f"then exec timeout -k 10 {limit} {cmd}; else exec {cmd}; fi")
        try:
            proc = self._ssh([], timeout + 30, raw=raw, step="running")
        except DeviceError as e:
            return {"ok": False, "error": str(e)}
        stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        result = parse_result(stdout)
        if result is not None:
            return result
        if proc.returncode == 124:
            return {"ok": False, "error": f"timed out on the board after {limit} s (runtime hung), killed"}
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        why = (f"runtime crashed with signal {proc.returncode - 128}" if proc.returncode > 128
               else f"runner exited {proc.returncode} without a result")
        return {"ok": False, "error": why + (f": {tail[0][:300]}" if tail else "")}

    @staticmethod
    def _summary(res: dict, f: dict) -> str:
        lat = res.get("latency") or {}
        parts = [f"p50 {lat['p50_ms']:.4g} ms over {lat['runs']} runs" if lat.get("p50_ms") is not None
                 else f"loads {f.get('loads')}"]
        parts += _vs_x86(f)
        if f.get("board_dir"):
            parts.append(f"files kept on the board in {f['board_dir']}")
        return "; ".join(parts)

    def conditions_line(self, rows: list[dict], settings) -> str:
        ok = [r for r in rows if r["status"] == "ok"]
        r = ok[0] if ok else {}
        return (f"conditions: {self.name}: {r.get('cpu', '?')} ({r.get('cpus_available', '?')} CPUs, load "
                f"{r.get('loadavg_1m', '?')}), {r.get('os', '?')} {self.arch}, Python {self.python}; batch 1; "
                f"{settings.warmup} warm-up runs, then >= {settings.runs} runs and >= {settings.min_seconds:g} s per "
                f"row; latencies in ms, measured on the board; agreement: same samples on x86")


def artifact_files(model: Path) -> list[Path]:
    """The artifact's file and its companions (an OpenVINO IR's model.bin), from the target registry."""
    from targets import TARGETS

    names = {c for t in TARGETS.values() if t.filename == model.name for c in t.companions}
    if model.suffix == ".xml":
        names.add(model.with_suffix(".bin").name)
    return [model, *(model.with_name(n) for n in sorted(names) if model.with_name(n).is_file())]


# -- build --verify-on ---------------------------------------------------------------------------

def verify_devices(spec: str | None, **options) -> list:
    """The devices of `--verify-on` (checked before anything is built): emu:PROFILE or ssh://..."""
    if not spec:
        return []
    from pipeline.bench import get_device

    devices = [get_device(s.strip(), **options) for s in spec.split(",") if s.strip()]
    if not devices or any(d.name == "local" for d in devices):
        raise UsageError("--verify-on takes emulated or remote devices (emu:rpi4, ssh://user@host), not local")
    return devices


def arm_check(device, target, art: dict, path: Path, inputs: Path, build, timeout: float = 600.0) -> dict:
    """Load the artifact on `device` and compare its outputs with x86's on ARM_CHECK_SAMPLES samples."""
    from pipeline.verify import agreement_gate

    res = device.run(target.runner_path, path, inputs, ["--limit", ARM_CHECK_SAMPLES], timeout)
    f = res.get("device_fields") or {}
    check = {"device": device.name, "arch": getattr(device, "arch", None) or "aarch64",
             "runtime": f"{res.get('runtime')} {res.get('runtime_version')}", "loads": f.get("loads") == "yes",
             **{k: f.get(k) for k in ("max_abs_diff_vs_x86", "top1_agreement_vs_x86", "cosine_vs_x86",
                                      "agreement_samples", "tflite_runtime_2_14") if f.get(k) is not None}}
    if getattr(device, "emulated", False):
        check["cpu"] = device.profile.cpu
    reasons = []
    if not res.get("ok"):
        reasons.append(res.get("error") or "no result")
    elif f.get("agreement_error"):
        reasons.append(f["agreement_error"])
    else:
        reasons += agreement_gate(check.get("top1_agreement_vs_x86"), check.get("cosine_vs_x86"), build, "x86")
    check["status"] = "failed" if reasons else "ok"
    if reasons:
        check["reason"] = "; ".join(reasons)
    check["sha256"] = art.get("sha256")
    return check


def record_arm_checks(out: Path, model_name: str, checks: dict[str, dict]) -> None:
    """Add `arm_check[device]` to the manifest entries checked, under build's lock, atomically.

    An entry whose artifact changed since it was checked (another build published meanwhile) is
    left alone: a check belongs to the bytes it ran."""
    from pipeline import manifest as manifest_mod
    from pipeline.util import atomic_write_json, locked

    path = Path(out) / model_name / "manifest.json"
    with locked(Path(out) / model_name / ".lock"):
        m = manifest_mod.read(path)
        if m is None:
            return
        for a in m.get("artifacts", []):
            for check in checks.get(a["target"], []):
                if check.get("sha256") == a.get("sha256"):
                    a.setdefault("arm_check", {})[check["device"]] = {k: v for k, v in check.items()
                                                                      if k != "sha256"}
        atomic_write_json(path, m)


def verify_on(devices: list, cfg, out: Path, rows: list[dict], log=print) -> int:
    """build --verify-on: check every built artifact on every device, record it, print a table.

    Returns how many checks failed."""
    from pipeline import report
    import tempfile

    from pipeline.bench import eval_inputs
    from pipeline.verify import artifact_inputs
    from targets import TARGETS

    inputs = eval_inputs(cfg, out)
    checks: dict[str, list[dict]] = {}
    table = []
    for device in devices:
        for a in rows:
            path = Path(out) / a["path"] if a.get("path") else None
            if a.get("status") != "ok" or path is None or not path.exists():
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:  # the samples in the artifact's own input layout
                mine = artifact_inputs(inputs, a, Path(tmp))
                check = arm_check(device, TARGETS[a["target"]], a, path, mine, cfg.build)
            checks.setdefault(a["target"], []).append(check)
            table.append({"target": a["target"], **check})
            log(f"verify-on {a['target']:<16} {device.name}: {check['status']}"
                f"{': ' + check['reason'] if check.get('reason') else ''} ({time.perf_counter() - t0:.1f} s)")
    record_arm_checks(out, cfg.model.name, checks)
    if table:
        print(report.table(table, [("target", "target"), ("device", "device"), ("status", "arm check"),
                                   ("runtime", "runtime"), ("max_abs_diff_vs_x86", "max|diff| vs x86"),
                                   ("top1_agreement_vs_x86", "top-1 vs x86"), ("agreement_samples", "samples"),
                                   ("tflite_runtime_2_14", "tflite-runtime 2.14 aarch64")]))
    failed = [r for r in table if r["status"] != "ok"]
    for r in failed:
        print(f"error: {r['target']} fails on {r['device']}: {r['reason']}", file=sys.stderr)
    return len(failed)
