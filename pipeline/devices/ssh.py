"""`ssh://[user@]host[:port]`: a real board. The runner scripts, the artifact's files and the input
samples go to a temp folder on the board, the board's `python3` runs them, the JSON and outputs come
back and are compared with the same runner on this x86 machine.

Plain `ssh` (BatchMode: keys only; strict host-key checking), one connection per step, each with a
timeout; every remote word is quoted with shlex.quote (file names are data, never shell).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.devices.agreement import (
    RUNTIMES_PROBE,
    agree_fields,
    artifact_files,
    missing_runtime,
    runtimes_json,
    slice_inputs,
    vs_x86,
    x86_reference,
)
from pipeline.errors import DeviceError, UsageError
from pipeline.verdict import Status

SSH_CONNECT_TIMEOUT = 15
SSH_STEP_TIMEOUT = 120.0  # upload (plus 1 s per MB), fetch, clean up; the run gets bench's --timeout

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


def _ssh_opt_path(path: Path) -> str:
    """A path as an ssh -o value: ssh expands %-tokens and splits on spaces unless quoted."""
    text = str(Path(path).expanduser().absolute())
    if '"' in text:
        raise UsageError(f"{text}: ssh cannot take a file name holding a double quote")
    return '"' + text.replace("%", "%%") + '"'


def ssh_columns():
    return [
        ("target", "target"),
        ("device", "device"),
        ("threads", "thr"),
        ("status", "status"),
        ("runtime", "runtime"),
        ("delegate", "delegate"),
        ("load_ms", "load ms"),
        ("first_inference_ms", "first ms"),
        ("p50_ms", "p50 ms"),
        ("p90_ms", "p90 ms"),
        ("p99_ms", "p99 ms"),
        ("throughput_per_s", "per s"),
        ("peak_rss_mb", "rss MB"),
        ("runs", "runs"),
        ("max_abs_diff_vs_x86", "max|diff| vs x86"),
        ("top1_agreement_vs_x86", "top-1 vs x86"),
        ("top1_agreement_vs_original", "top-1 vs original"),
        ("x86_top1_agreement_vs_original", "x86 top-1 vs original"),
    ]


class SSHDevice:
    """A real board reached with the system's ssh client: keys only, known host keys only."""

    emulated = False

    def __init__(
        self,
        spec: str,
        known_hosts: Path | None = None,
        identity: Path | None = None,
        keep: bool = False,
        probe: bool = True,
        **_options,
    ):
        parts = urlsplit(spec)
        try:
            port = parts.port
        except ValueError:
            port = -1
        host, user = parts.hostname or "", parts.username
        if (
            parts.scheme != "ssh"
            or not host
            or not _HOST.match(host)
            or port in (-1, 0)
            or parts.password
            or (user is not None and not _USER.match(user))
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise UsageError(
                f"device '{spec}' is not ssh://[user@]host[:port] (a host name or address, "
                "a user name of letters, digits, '.', '_', '-')"
            )
        self.host, self.user, self.port, self.keep = host, user, port, keep
        self.name = (
            "ssh://"
            + (f"{user}@" if user else "")
            + (f"[{host}]" if ":" in host else host)
            + (f":{port}" if port else "")
        )
        self.options = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "RequestTTY=no",
        ]
        self.known_hosts = known_hosts
        if known_hosts is not None:
            if not Path(known_hosts).expanduser().is_file():
                raise UsageError(f"--known-hosts {known_hosts}: no such file")
            self.options += [
                "-o",
                f"UserKnownHostsFile={_ssh_opt_path(known_hosts)}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ]
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
            proc = subprocess.run(
                self.command(words, raw),
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
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
            return (
                f"{self.name}: host key verification failed: the key {where} presented is not the one for it "
                f"in {kh} (or there is none); nothing was run. Check the board's fingerprint, then add it: "
                f"ssh-keyscan -p {self.port or 22} {self.host} >> {kh}"
            )
        if "Permission denied" in stderr:
            return (
                f"{self.name}: the board refused every key ({last}); only key authentication is used: "
                "pass --identity FILE or load the key into ssh-agent"
            )
        return f"{self.name}: cannot connect: {last}"

    def probe(self) -> tuple[str, str]:
        """Connect once (host key, key login) and ask the board's python3 what it is."""
        proc = self._ssh(["python3", "-c", _PROBE], SSH_STEP_TIMEOUT, step="connecting")
        words = proc.stdout.decode(errors="replace").split()
        if proc.returncode != 0 or len(words) < 2:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            why = err[-1] if err else f"exit status {proc.returncode}"
            if proc.returncode == 127:
                why = (
                    "python3 is not on the board's PATH: install python3 and numpy there, or use the native "
                    "runner, which needs no Python (--harness native)"
                )
            raise DeviceError(f"{self.name}: cannot run python3 on the board: {why}")
        self.arch, self.python = words[-2], words[-1]
        return self.arch, self.python

    def runtimes(self) -> list[dict]:
        proc = self._ssh(["python3", "-c", RUNTIMES_PROBE], SSH_STEP_TIMEOUT, step="asking python3")
        return [{"site": "python3", **runtimes_json(proc.stdout.decode(errors="replace"), self.name)}]

    def _upload(
        self,
        files: dict[str, Path],
        folder: Path,
        timeout: float,
        *,
        raw: str = "",
        executables: tuple[str, ...] = (),
        step: str = "copying files",
    ) -> str:
        """Send `files` (arcname -> path) as one tar on stdin to a fresh temp folder on the board; its path.
        `raw`: the board-side unpacking command (default: the board's python3 with _UPLOAD)."""
        bundle = folder / "upload.tar"
        with tarfile.open(bundle, "w", format=tarfile.GNU_FORMAT) as tar:  # GNU: busybox tar reads it too
            for arcname, path in files.items():
                info = tar.gettarinfo(str(path), arcname=arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o755 if arcname in executables else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        with open(bundle, "rb") as stdin:
            words = [] if raw else ["python3", "-c", _UPLOAD]
            proc = self._ssh(words, timeout + bundle.stat().st_size / 1e6, stdin=stdin, raw=raw, step=step)
        remote = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not remote or not remote[-1].startswith("/"):
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DeviceError(
                f"{self.name}: {step} to the board failed: {err[-1] if err else f'exit status {proc.returncode}'}"
            )
        return remote[-1]

    def _remove(self, remote: str) -> None:
        try:
            self._ssh(["rm", "-rf", "--", remote], SSH_STEP_TIMEOUT, step="removing files")
        except DeviceError:
            pass  # the run's result stands; a temp folder left on the board is not a failed measurement

    def run(self, request) -> dict:
        runner_path, model = Path(request.runner), Path(request.model)
        remote = None
        try:
            with tempfile.TemporaryDirectory(prefix="edge-export-ssh-") as tmp:
                folder = Path(tmp)
                x = slice_inputs(request.inputs, request.limit, folder)
                ref, ref_error = x86_reference(request, x)
                files = {f"runner/{p.name}": p for p in sorted(runner_path.parent.glob("*.py"))}
                if request.detect:  # the runner decodes a detector's boxes with targets/detect.py, the folder above
                    files["detect.py"] = runner_path.parent.parent / "detect.py"
                files.update({f"model/{p.name}": p for p in artifact_files(model)})
                files[f"inputs/{x.name}"] = x
                remote = self._upload(files, folder, SSH_STEP_TIMEOUT)
                argv = [
                    "python3",
                    f"runner/{runner_path.name}",
                    f"model/{model.name}",
                    *request.argv(f"inputs/{x.name}", "outputs.npz"),
                ]
                res = missing_runtime(self._run_remote(remote, argv, request.timeout))
                fields = {"emulated": False, "loads": "yes" if "load_ms" in res else f"no: {res.get('error', '?')}"}
                if res.get("ok"):
                    npz = self._ssh(["cat", "--", f"{remote}/outputs.npz"], SSH_STEP_TIMEOUT, step="fetching outputs")
                    out = folder / "outputs.npz"
                    if npz.returncode == 0:
                        out.write_bytes(npz.stdout)
                    fields.update(agree_fields(res, out, ref, ref_error, request.original))
        except (DeviceError, OSError) as e:
            return {"ok": False, "error": str(e), "device_fields": {"emulated": False, "loads": f"no: {e}"}}
        finally:
            if remote and not self.keep:
                self._remove(remote)
        if remote and self.keep:
            fields["board_dir"] = remote
        fields["summary"] = self._summary(res, fields)
        return {**res, "device_fields": fields}

    def _run_remote(self, remote: str, argv: list[str], timeout: float) -> dict:
        from pipeline.runner import parse_result

        cmd = shlex.join(argv)
        limit = max(1, int(timeout))
        # coreutils `timeout` on the board stops a hung runtime there too; without it, only our ssh is killed.
        raw = (
            f"cd {shlex.quote(remote)} && if command -v timeout >/dev/null 2>&1; "
            f"then exec timeout -k 10 {limit} {cmd}; else exec {cmd}; fi"
        )
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
        why = (
            f"runtime crashed with signal {proc.returncode - 128}"
            if proc.returncode > 128
            else f"runner exited {proc.returncode} without a result"
        )
        return {"ok": False, "error": why + (f": {tail[0][:300]}" if tail else "")}

    @staticmethod
    def _summary(res: dict, f: dict) -> str:
        lat = res.get("latency") or {}
        parts = [
            f"p50 {lat['p50_ms']:.4g} ms over {lat['runs']} runs"
            if lat.get("p50_ms") is not None
            else f"loads {f.get('loads')}"
        ]
        parts += vs_x86(f)
        if f.get("board_dir"):
            parts.append(f"files kept on the board in {f['board_dir']}")
        return "; ".join(parts)

    def conditions_line(self, rows: list[dict], timing) -> str:
        ok = [r for r in rows if r["status"] == Status.OK]
        r = ok[0] if ok else {}
        return (
            f"conditions: {self.name}: {r.get('cpu', '?')} ({r.get('cpus_available', '?')} CPUs, load "
            f"{r.get('loadavg_1m', '?')}), {r.get('os', '?')} {self.arch}, Python {self.python}; batch 1; "
            f"{timing.warmup} warm-up runs, then >= {timing.runs} runs and >= {timing.min_seconds:g} s per "
            f"row; latencies in ms, measured on the board; agreement: same samples on x86"
        )
