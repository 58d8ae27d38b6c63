"""Emulated aarch64 "boards": an arm64 Debian Python 3.11 run by qemu user mode.

Stdlib only (and pipeline.errors, pipeline.runtimes). `setup(profile)` builds, once, under emu_home():
  base/               shared by all profiles: sysroot/ (arm64 .debs unpacked),
                      site/ (numpy, ai-edge-litert, onnxruntime, openvino wheels),
                      site-tflite/ (tflite-runtime 2.14 with numpy 1.x), READY
  profiles/NAME/      sysroot/ (hard links into base) + the board's CPU identity
                      files (proc/cpuinfo, sys/devices/system/cpu/...), READY
  plugin/insn_count-KEY.so   the instruction-count TCG plugin
Everything is built in a temp folder and renamed into place, so an interrupted
setup never leaves a folder that looks ready. READY holds a key of the recipe:
a folder whose key differs is rebuilt (existence is not freshness).

Emulated wall time says nothing about a board's latency. The repeatable cost
figure is the guest instruction count of a timed section, which the guest marks
with os.lseek(-1, MAGIC_START, 0) / os.lseek(-1, MAGIC_STOP, 0) (each raises
OSError EBADF, to be ignored) and `python_command(..., count_instructions=True)`
records; only the marking thread is counted, so count single-threaded runs.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.devices.profiles import Profile, get_profile
from pipeline.errors import EmuError
from pipeline.runtimes import emulator_wheels, wheel_only

EMU_VERSION = 1  # bump when the meaning of a built folder changes
EMU_HOME_DEFAULT = Path("~/.cache/edge-export/emu")
MAGIC_START = 0x51454D55
MAGIC_STOP = 0x51454D56

# Host Debian packages: qemu-user-static runs programs, qemu-user's dynamic
# qemu-aarch64 is the one that accepts -plugin, gcc + libc6-dev build the plugin.
HOST_PACKAGES = ("qemu-user-static", "qemu-user", "gcc", "libc6-dev")

# arm64 .debs for a Python 3.11 with the shared libraries its stdlib and the
# manylinux wheels need (libstdc++, libgomp); no dpkg/perl, nothing is configured.
DEBS = (
    "python3.11",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "media-types",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "libgomp1",
    "zlib1g",
    "libbz2-1.0",
    "liblzma5",
    "libzstd1",
    "libffi8",
    "libexpat1",
    "libssl3",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "readline-common",
    "libuuid1",
    "libcrypt1",
    "libnsl2",
    "libtirpc3",
    "libtirpc-common",
    "libgssapi-krb5-2",
    "libk5crypto3",
    "libkeyutils1",
    "libkrb5-3",
    "libkrb5support0",
    "libcom-err2",
    "libdb5.3",
    "libgdbm6",
    "libgdbm-compat4",
)

# One site folder per runtime set: tflite-runtime 2.14 is built against numpy 1.x
# and must not share a process (or a folder) with the newer runtimes.
WHEELS = emulator_wheels()
_SITE_DIRS = {"default": "site", "tflite_runtime": "site-tflite"}
# Without the newer tags pip settles for old openvino/onnxruntime releases.
_WHEEL_PLATFORMS = ("manylinux2014_aarch64",) + tuple(
    f"manylinux_2_{v}_aarch64" for v in (17, 24, 26, 27, 28, 31, 34, 35)
)

# Host variables that would send the guest to x86 libraries or the host's Python.
_GUEST_UNSET = ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "LD_LIBRARY_PATH", "LD_PRELOAD")
_GUEST_ADDRESS_SPACE = "0x8000000000"  # 512 GiB of virtual addresses, none committed
_PLUGIN_SOURCE = Path(__file__).resolve().parents[2] / "scripts" / "qemu_plugin" / "insn_count.c"
_PROFILE_PLUGIN_SOURCE = _PLUGIN_SOURCE.with_name("bb_profile.c")
_TRACE_PLUGIN_SOURCE = _PLUGIN_SOURCE.with_name("guest_trace.c")
# With a trace file the guest space is placed here (-B): guest_trace.c counts the resident memory of
# [base, base + size), the guest's own, not qemu's. Guest addresses (and so the counts) do not change.
_GUEST_BASE = "0x200000000000"


def emu_home() -> Path:
    return Path(os.environ.get("EDGE_EXPORT_EMU_HOME") or EMU_HOME_DEFAULT).expanduser()


# ---------------------------------------------------------------- public API


def setup(profile_name: str, log: Callable[[str], None] = print) -> Path:
    """Build (once) everything `profile_name` needs; returns the profile's folder."""
    device = _device(profile_name)
    if is_ready(profile_name) and profile_plugin_path().exists() and trace_plugin_path().exists():
        return _profile_dir(device)
    home = emu_home()
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        _ensure_host_packages(log)
        for leftover in [*home.glob("*.tmp-*"), *home.glob("*/*.tmp-*")]:  # interrupted setups
            shutil.rmtree(leftover, ignore_errors=True)
        if _stamp_key(home / "base") != _base_key():
            _build_atomically(home / "base", _build_base, log)
        if not _plugin_path().exists():
            _build_plugin(log)
        if not profile_plugin_path().exists():
            _build_plugin(log, _PROFILE_PLUGIN_SOURCE, profile_plugin_path())
        if not trace_plugin_path().exists():
            _build_plugin(log, _TRACE_PLUGIN_SOURCE, trace_plugin_path())
        if _stamp_key(_profile_dir(device)) != _profile_key(device):
            _build_atomically(_profile_dir(device), lambda tmp, log: _build_profile(device, tmp), log)
    return _profile_dir(device)


def is_ready(profile_name: str) -> bool:
    device = _device(profile_name)
    return (
        shutil.which("qemu-aarch64-static") is not None
        and shutil.which("qemu-aarch64") is not None
        and _stamp_key(emu_home() / "base") == _base_key()
        and _stamp_key(_profile_dir(device)) == _profile_key(device)
        and _plugin_path().exists()
    )


def env(profile_name: str, runtime: str = "default") -> dict[str, str]:
    """Environment of the guest Python (python_command passes it with -E)."""
    _device(profile_name)
    if runtime not in _SITE_DIRS:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(_SITE_DIRS)})")
    return {
        "PYTHONPATH": str(emu_home() / "base" / _SITE_DIRS[runtime]),
        "PYTHONHASHSEED": "0",  # same dict/set order each run -> same counts
        "PYTHONNOUSERSITE": "1",  # the host's ~/.local holds x86 packages
        "PYTHONDONTWRITEBYTECODE": "1",  # setup compiled; keep the shared folders unchanged
    }


def python_command(
    profile_name: str,
    count_instructions: bool = False,
    counts_file: Path | None = None,
    runtime: str = "default",
    blocks_file: Path | None = None,
    trace_file: Path | None = None,
) -> list[str]:
    """argv prefix running the aarch64 python3.11 on `profile_name`; append script and args.

    With count_instructions, each timed section's guest instruction count is
    written to counts_file (truncated when the program starts); see read_counts.
    With blocks_file too, each section's executed blocks (bb_profile.c) go there; with trace_file, the op
    trace of the profiled inferences and the guest's peak resident memory (guest_trace.c, read_trace).
    """
    device = _device(profile_name)
    if not is_ready(profile_name):
        raise EmuError(f"emu:{device.name} is not set up: run python -m pipeline device setup emu:{device.name}")
    sysroot = _profile_dir(device) / "sysroot"
    guest_env = env(profile_name, runtime)
    if count_instructions:
        if counts_file is None:
            raise ValueError("count_instructions needs a counts_file")
        argv = [
            shutil.which("qemu-aarch64"),
            "-plugin",
            f"{_qemu_opt(_plugin_path())},out={_qemu_opt(Path(counts_file).absolute())}",
        ]
        if blocks_file is not None:
            if not profile_plugin_path().exists():
                raise EmuError(
                    f"the block profiler is not built: run python -m pipeline device setup emu:{device.name}"
                )
            argv += ["-plugin", f"{_qemu_opt(profile_plugin_path())},out={_qemu_opt(Path(blocks_file).absolute())}"]
        if trace_file is not None and trace_plugin_path().exists():
            out = _qemu_opt(Path(trace_file).absolute())
            argv += [
                "-plugin",
                f"{_qemu_opt(trace_plugin_path())},out={out},base={_GUEST_BASE},size={_GUEST_ADDRESS_SPACE}",
            ]
            argv += ["-B", _GUEST_BASE]
    else:
        argv = [shutil.which("qemu-aarch64-static")]
    # -R: qemu places guest mappings itself in a reserved range instead of where the
    # host's ASLR puts them, so addresses, and with them instruction counts, repeat.
    argv += ["-cpu", device.cpu, "-R", _GUEST_ADDRESS_SPACE, "-L", str(sysroot)]
    for key, value in guest_env.items():
        argv += ["-E", f"{key}={value}"]
    for key in _GUEST_UNSET:
        argv += ["-U", key]
    return argv + [str(sysroot / "usr" / "bin" / "python3.11")]


def read_counts(counts_file: Path) -> list[int]:
    """Instruction counts of the completed timed sections, in order.

    The plugin creates the file when qemu starts: a missing file means it never ran.
    """
    return [int(line) for line in Path(counts_file).read_text().split()]


# ---------------------------------------------------------------- keys and folders


def _device(profile_name: str) -> Profile:
    device = get_profile(profile_name.removeprefix("emu:"))
    if not device.emulated:
        raise ValueError(f"device {device.name!r} runs natively; there is nothing to emulate")
    return device


def _profile_dir(device: Profile) -> Path:
    return emu_home() / "profiles" / device.name


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _base_key() -> str:
    return _key(EMU_VERSION, DEBS, WHEELS, _WHEEL_PLATFORMS)


def _profile_key(device: Profile) -> str:
    return _key(EMU_VERSION, _base_key(), _identity_files(device))


@functools.cache
def _qemu_version() -> str:
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        return ""
    return subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _plugin_path() -> Path:
    key = _key(EMU_VERSION, _PLUGIN_SOURCE.read_text(), _qemu_version())
    return emu_home() / "plugin" / f"insn_count-{key}.so"


def _stamp_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / "READY").read_text())["key"]
    except FileNotFoundError:
        return None


def _write_stamp(folder: Path, key: str, **info: object) -> None:
    stamp = {
        "key": key,
        "emu_version": EMU_VERSION,
        "qemu": _qemu_version(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }
    (folder / "READY").write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def _build_atomically(target: Path, build: Callable[[Path, Callable], None], log: Callable[[str], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp, log)
        if target.exists():  # stale: move aside first, rename cannot replace a folder
            old = target.with_name(f"{target.name}.tmp-old{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another setup (e.g. a parallel test) waits here
        yield


def _run(cmd: list[str], **kwargs: object) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise EmuError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _qemu_opt(path: Path) -> str:
    return str(path).replace(",", ",,")  # qemu option syntax: a doubled comma is literal


# ---------------------------------------------------------------- host packages


def _ensure_host_packages(log: Callable[[str], None]) -> None:
    if not shutil.which("dpkg-query") or not shutil.which("apt-get"):
        raise EmuError("emulation needs a Debian-based host (apt-get, dpkg)")
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *HOST_PACKAGES], capture_output=True, text=True
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]}
    missing = [p for p in HOST_PACKAGES if p not in installed]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EmuError(f"missing Debian packages; run: apt-get install {' '.join(missing)}")
    log(f"emu: apt-get install {' '.join(missing)}")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "-q", "update"], env=apt_env)
    _run(["apt-get", "-q", "install", "-y", "--no-install-recommends", *missing], env=apt_env)
    _qemu_version.cache_clear()


# ---------------------------------------------------------------- private apt


def _host_debian_sources() -> list[dict[str, list[str]]]:
    """The host's enabled entries for its own Debian release, as deb822 fields.

    Only suites of the host's codename (bookworm, bookworm-updates, ...): a
    third-party repository may have no arm64 or source index and fail the update.
    """
    codename = ""
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip().strip('"')
    dirs = dict(
        line.split("=", 1)
        for line in _run(
            ["apt-config", "shell", "SL", "Dir::Etc::sourcelist/f", "SP", "Dir::Etc::sourceparts/d"]
        ).splitlines()
    )
    files = [Path(shlex.split(dirs["SL"])[0])] if "SL" in dirs else []
    if "SP" in dirs:
        parts = Path(shlex.split(dirs["SP"])[0])
        files += sorted(parts.glob("*.list")) + sorted(parts.glob("*.sources"))
    entries = []
    for file in files:
        if not file.is_file():
            continue
        text = file.read_text()
        entries += _parse_deb822(text) if file.suffix == ".sources" else _parse_one_line(text)
    wanted = []
    for entry in entries:
        suites = [s for s in entry["Suites"] if s == codename or s.startswith(codename + "-")]
        if codename and suites and entry.get("Enabled", ["yes"])[0] != "no":
            wanted.append({**entry, "Suites": suites})
    if not wanted:
        raise EmuError(f"no enabled apt source for Debian {codename or '(unknown)'} on this host")
    return wanted


def _parse_deb822(text: str) -> list[dict[str, list[str]]]:
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # continuation, e.g. an inline Signed-By key
                fields[key].append(line.strip())
            else:
                key, _, value = line.partition(":")
                key = key.strip().title()
                fields[key] = [value.strip()]
        if "Uris" in fields and "Suites" in fields:
            entries.append(
                {
                    "URIs": fields["Uris"][0].split(),
                    "Suites": fields["Suites"][0].split(),
                    "Components": fields.get("Components", [""])[0].split(),
                    "Enabled": fields.get("Enabled", ["yes"]),
                    **({"Signed-By": fields["Signed-By"]} if "Signed-By" in fields else {}),
                }
            )
    return entries


def _parse_one_line(text: str) -> list[dict[str, list[str]]]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        options = {}
        if words[1].startswith("["):
            end = next(i for i, w in enumerate(words) if w.endswith("]"))
            for opt in " ".join(words[1 : end + 1]).strip("[]").split():
                name, _, value = opt.partition("=")
                options[name] = value
            words = [words[0]] + words[end + 1 :]
        entry = {"URIs": [words[1]], "Suites": [words[2]], "Components": words[3:]}
        if "signed-by" in options:
            entry["Signed-By"] = [options["signed-by"]]
        entries.append(entry)
    return entries


def _private_apt(root: Path, kind: str) -> dict[str, str]:
    """Environment for an apt-get that uses its own state: the host's apt is untouched.

    kind "arm64": arm64 binary packages; kind "src": the host's source packages.
    """
    (root / "state" / "lists" / "partial").mkdir(parents=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True)
    (root / "sources.list.d").mkdir()
    (root / "state" / "status").touch()
    (root / "sources.list").touch()
    stanzas = []
    for entry in _host_debian_sources():
        lines = [f"Types: {'deb' if kind == 'arm64' else 'deb-src'}"]
        for key in ("URIs", "Suites", "Components"):
            lines.append(f"{key}: {' '.join(entry[key])}")
        if "Signed-By" in entry:  # a path, or an inline key on continuation lines
            first, *rest = entry["Signed-By"]
            lines += [f"Signed-By: {first}"] + [f" {line}" for line in rest]
        stanzas.append("\n".join(lines) + "\n")
    (root / "sources.list.d" / "host.sources").write_text("\n".join(stanzas))
    conf = [
        f'Dir::State "{root}/state";',
        f'Dir::State::status "{root}/state/status";',
        f'Dir::Cache "{root}/cache";',
        f'Dir::Etc::sourcelist "{root}/sources.list";',
        f'Dir::Etc::sourceparts "{root}/sources.list.d";',
        'Acquire::Languages "none";',
    ]
    if kind == "arm64":
        conf += ['APT::Architecture "arm64";', 'APT::Architectures { "arm64"; };']
    if os.geteuid() == 0:  # the _apt sandbox user cannot write into our private folders
        conf.append('APT::Sandbox::User "root";')
    (root / "apt.conf").write_text("\n".join(conf) + "\n")
    apt_env = {**os.environ, "APT_CONFIG": str(root / "apt.conf")}
    _run(["apt-get", "-q", "update"], env=apt_env)
    return apt_env


# ---------------------------------------------------------------- builds


def _build_base(tmp: Path, log: Callable[[str], None]) -> None:
    t0 = time.monotonic()
    sysroot = tmp / "sysroot"
    debs = tmp / "debs"
    debs.mkdir()
    apt_env = _private_apt(tmp / "apt", "arm64")
    _run(["apt-get", "-q", "download", *DEBS], env=apt_env, cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)])
    deb_names = sorted(p.name for p in debs.glob("*.deb"))
    # Without these the guest's ld.so reads the host's x86 cache and preload list.
    (sysroot / "etc" / "ld.so.cache").write_bytes(b"")
    (sysroot / "etc" / "ld.so.preload").write_bytes(b"")
    log(f"emu: arm64 sysroot with {len(deb_names)} packages ({time.monotonic() - t0:.0f} s)")

    wheel_names = {}
    for runtime, requirements in WHEELS.items():
        wheels = tmp / f"wheels-{runtime}"
        platforms = [arg for tag in _WHEEL_PLATFORMS for arg in ("--platform", tag)]
        alone = [r for r in requirements if r in wheel_only()]
        for reqs, flags in (([r for r in requirements if r not in alone], []), (alone, ["--no-deps"])):
            if not reqs:
                continue
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--disable-pip-version-check",
                    "--only-binary=:all:",
                    *flags,
                    *platforms,
                    "--python-version",
                    "3.11",
                    "--implementation",
                    "cp",
                    "-d",
                    str(wheels),
                    *reqs,
                ]
            )
        wheel_names[runtime] = sorted(p.name for p in wheels.glob("*.whl"))
        for wheel in sorted(wheels.glob("*.whl")):
            _unpack_wheel(wheel, tmp / _SITE_DIRS[runtime])
        log(f"emu: {runtime} wheels: {', '.join(wheel_names[runtime])} ({time.monotonic() - t0:.0f} s)")

    # Compiling natively saves seconds on every emulated start; only a 3.11 host
    # writes .pyc files the arm64 Python 3.11 accepts.
    if sys.version_info[:2] == (3, 11):
        for folder in [sysroot / "usr" / "lib" / "python3.11", *(tmp / d for d in _SITE_DIRS.values())]:
            compileall.compile_dir(folder, quiet=2, workers=1)
    shutil.rmtree(debs)
    shutil.rmtree(tmp / "apt")
    for runtime in WHEELS:
        shutil.rmtree(tmp / f"wheels-{runtime}")
    _write_stamp(tmp, _base_key(), debs=deb_names, wheels=wheel_names)
    log(f"emu: base ready ({time.monotonic() - t0:.0f} s)")


def _unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = name.split("/")
            if parts[0].endswith(".data"):  # only the lib parts of a wheel's .data go in site
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            if info.is_dir() or not name:
                continue
            dest = site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def _build_plugin(log: Callable[[str], None], source: Path = _PLUGIN_SOURCE, target: Path | None = None) -> None:
    t0 = time.monotonic()
    target = target or _plugin_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    header = _plugin_header(target.parent / f"include-{_key(_qemu_version())}", log)
    with tempfile.TemporaryDirectory(prefix="src.tmp-", dir=target.parent) as tmp_name:
        built = Path(tmp_name) / target.name
        _run(
            [
                "gcc",
                "-O2",
                "-shared",
                "-fPIC",
                "-Wall",
                "-Wno-unused-parameter",
                "-I",
                str(header.parent),
                "-o",
                str(built),
                str(source),
            ]
        )
        os.replace(built, target)
    prefix = target.name.rsplit("-", 1)[0]
    for stale in target.parent.glob(f"{prefix}-*.so"):
        if stale != target:
            stale.unlink()
    log(f"emu: plugin {target.name} built ({time.monotonic() - t0:.0f} s)")


def _plugin_header(folder: Path, log: Callable[[str], None]) -> Path:
    """qemu-plugin.h of the installed qemu-user, from Debian's qemu source package, fetched once per qemu
    version (every plugin is built against it)."""
    header = folder / "qemu-plugin.h"
    if header.exists():
        return header
    with tempfile.TemporaryDirectory(prefix="src.tmp-", dir=folder.parent) as tmp_name:
        tmp = Path(tmp_name)
        apt_env = _private_apt(tmp / "apt", "src")
        src = tmp / "src"
        src.mkdir()
        # The header of the qemu-user we run; the newest source if that one is gone.
        version = _run(["dpkg-query", "-W", "-f", "${source:Version}", "qemu-user"]).strip()
        try:
            _run(["apt-get", "-q", "source", "--download-only", f"qemu={version}"], env=apt_env, cwd=src)
        except EmuError:
            log(f"emu: qemu source {version} not available, using the newest")
            _run(["apt-get", "-q", "source", "--download-only", "qemu"], env=apt_env, cwd=src)
        orig = next(src.glob("qemu_*.orig.tar.*"))
        with tarfile.open(orig, "r|*") as tar:  # streaming: stop at the one member we need
            for member in tar:
                if member.name.endswith("/include/qemu/qemu-plugin.h"):
                    data = tar.extractfile(member).read()
                    break
            else:
                raise EmuError(f"{orig.name} has no include/qemu/qemu-plugin.h")
        folder.mkdir(parents=True, exist_ok=True)
        (tmp / "qemu-plugin.h").write_bytes(data)
        os.replace(tmp / "qemu-plugin.h", header)
    log(f"emu: qemu-plugin.h from {orig.name}")
    return header


def trace_plugin_path() -> Path:
    """The op-trace and guest-memory plugin (scripts/qemu_plugin/guest_trace.c) that setup builds."""
    key = _key(EMU_VERSION, _TRACE_PLUGIN_SOURCE.read_text(), _qemu_version())
    return emu_home() / "plugin" / f"guest_trace-{key}.so"


def read_trace(trace_file: Path) -> tuple[list[list], int | None]:
    """guest_trace.c's file: (the points of the last profiled section, each [kind, clockid, realtime_ns,
    monotonic_ns, count, own], ending with ["e", 0, 0, 0, count, own]; the guest's peak resident KiB or None)."""
    points, section, peak = [], [], None
    for line in Path(trace_file).read_text().splitlines():
        w = line.split()
        if w[0] == "p":
            section.append([w[1], *map(int, w[2:])])
        elif w[0] == "e":
            points, section = [*section, ["e", 0, 0, 0, *map(int, w[1:])]], []
        elif w[0] == "rss_peak_kb":
            peak = int(w[1])
    return points, peak


def profile_plugin_path() -> Path:
    """The per-block profiling plugin (scripts/qemu_plugin/bb_profile.c) that setup builds."""
    key = _key(EMU_VERSION, _PROFILE_PLUGIN_SOURCE.read_text(), _qemu_version())
    return emu_home() / "plugin" / f"bb_profile-{key}.so"


def _build_profile(device: Profile, tmp: Path) -> None:
    # Hard links: a profile costs inodes, not another copy of the sysroot.
    shutil.copytree(emu_home() / "base" / "sysroot", tmp / "sysroot", symlinks=True, copy_function=os.link)
    for rel, text in _identity_files(device).items():
        path = tmp / "sysroot" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _write_stamp(tmp, _profile_key(device), device=device.name, cpu=device.cpu)


def _identity_files(device: Profile) -> dict[str, str]:
    """The board's CPU as its kernel shows it, relative to the sysroot.

    qemu's -L prefix redirects any guest path that exists under the sysroot, so
    these replace the host's x86 files. Without them onnxruntime segfaults on the
    x86 /proc/cpuinfo, OpenVINO warns about MIDR_EL1, and runtimes size their
    thread pools and blocking from the host's cores and caches, which would make
    instruction counts depend on the machine that ran them.
    """
    all_cpus = f"0-{device.cores - 1}\n"
    files = {
        "proc/cpuinfo": device.cpuinfo,
        "sys/firmware/devicetree/base/model": device.model + "\0",
        "sys/devices/system/node/online": "0\n",
        "sys/devices/system/node/possible": "0\n",
        "sys/devices/system/node/node0/cpulist": all_cpus,
    }
    for name in ("possible", "present", "online"):
        files[f"sys/devices/system/cpu/{name}"] = all_cpus
    for i in range(device.cores):
        cpu = f"sys/devices/system/cpu/cpu{i}"
        files[f"{cpu}/regs/identification/midr_el1"] = f"0x{device.midr:016x}\n"
        files[f"{cpu}/cpufreq/cpuinfo_max_freq"] = f"{device.max_mhz * 1000}\n"
        files[f"{cpu}/cpufreq/cpuinfo_min_freq"] = f"{device.min_mhz * 1000}\n"
        for name, value in (
            ("physical_package_id", "0"),
            ("cluster_id", "0"),
            ("core_id", str(i)),
            ("thread_siblings_list", str(i)),
            ("core_cpus_list", str(i)),
            ("core_siblings_list", all_cpus),
            ("cluster_cpus_list", all_cpus),
            ("package_cpus_list", all_cpus),
        ):
            files[f"{cpu}/topology/{name}"] = value.rstrip("\n") + "\n"
        for index, cache in enumerate(device.caches):
            for name, value in (
                ("level", cache.level),
                ("type", cache.type),
                ("size", f"{cache.size_kb}K"),
                ("coherency_line_size", 64),
                ("shared_cpu_list", all_cpus if cache.shared else i),
            ):
                files[f"{cpu}/cache/index{index}/{name}"] = f"{value}".rstrip("\n") + "\n"
    return files
