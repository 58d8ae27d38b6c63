"""Where a runner runs: this machine, an emulated aarch64 board, or a real board over SSH.

A device is any object with a `name` and `run(request: RunRequest) -> dict` returning the runner's
JSON result (ok=False with an `error` on any failure). The request names its files separately from
the runtime options, so a remote device knows what to copy over: the runner's folder
(runner_common.py sits beside it), the model's folder (companion files such as OpenVINO's model.bin
sit beside it) and the inputs. A device may also have `columns` (its table), `conditions_line(rows,
timing)` and `runtimes()` (what `device check` lists), and its run() may return `device_fields`:
extra row fields (emulated boards never report wall time as p50_ms).

One file per kind of device, one row in KINDS (its Python-runner and native-runner classes). Imports stay light (stdlib): `--help` loads this.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UsageError


@dataclass(frozen=True)
class Kind:
    """One kind of device: the class that runs the Python runners on it and the one that runs the native runner
    (`bench --harness native`), each "module:class", imported only when asked for; each class takes (spec,
    known_hosts, identity, keep)."""

    python: str
    native: str


# spec prefix (the part before ':') -> its kind
KINDS = {
    "local": Kind("pipeline.devices.local:LocalDevice", "pipeline.native:NativeLocal"),
    "emu": Kind("pipeline.devices.emulated:EmuDevice", "pipeline.native:NativeEmu"),
    "ssh": Kind("pipeline.devices.ssh:SSHDevice", "pipeline.native:NativeSSH"),
}


@dataclass(frozen=True)
class Timing:
    """How a benchmark run times its inferences (what TFLite's benchmark_model calls its flags)."""

    threads: int = 1
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 1.0
    profile: bool = False
    """Then the runtime's own op profile of a second session (runner --profile, pipeline/op_profile.py)."""

    def __post_init__(self):
        if self.threads < 1 or self.runs < 1 or self.warmup < 0 or self.min_seconds < 0:
            raise UsageError("threads and runs must be >= 1, warmup and min-seconds >= 0")

    def argv(self) -> list[str]:
        return [
            "--bench",
            "--threads",
            str(self.threads),
            "--warmup",
            str(self.warmup),
            "--runs",
            str(self.runs),
            "--min-seconds",
            str(self.min_seconds),
        ] + (["--profile"] if self.profile else [])


@dataclass(frozen=True)
class RunRequest:
    """One run of a runner script on an artifact: outputs only (timing None), or a timed benchmark."""

    runner: Path
    model: Path
    inputs: Path
    limit: int | None = None
    """Only the first `limit` samples (None: all)."""
    timing: Timing | None = None
    options: tuple[tuple[str, str], ...] = field(default=())
    """Runtime options passed as `--KEY VALUE` (delegate=none, precision=default)."""
    timeout: float = 300.0
    original: Path | None = None
    """The original model's outputs on `inputs` (an .npz in the artifact's output layout, at least `limit` samples):
    the run's outputs, and x86's run of the same file, are also compared with them (`*_vs_original`)."""
    detect: str | None = None
    """A detector's head (runner_common --detect OUTPUT,LAYOUT,CONF,IOU,MAX_DET): a timed run also times its
    decode + NMS on the board (`postprocess`)."""

    def option_argv(self) -> list[str]:
        return [w for key, value in self.options for w in (f"--{key}", str(value))]

    def argv(self, inputs, outputs=None, timing: Timing | None = None) -> list[str]:
        """The runner's arguments after the model, with these inputs/outputs paths (local or on a board)."""
        timing = timing or self.timing
        args = ["--inputs", str(inputs)]
        if outputs is not None:
            args += ["--outputs", str(outputs)]
        if self.limit:
            args += ["--limit", str(self.limit)]
        detect = ["--detect", self.detect] if timing and self.detect else []
        return args + (timing.argv() if timing else []) + detect + self.option_argv()


def get_device(
    spec: str, known_hosts: Path | None = None, identity: Path | None = None, keep: bool = False, harness="python"
):
    """The device a spec names: `local`, `emu:rpi3|rpi4|rpi5`, `ssh://[user@]host[:port]`, running the Python
    runners or (`harness` "native") the native one."""
    kind = spec.split(":", 1)[0]
    if kind not in KINDS:
        raise UsageError(
            f"unknown device '{spec}': known device kinds are {', '.join(KINDS)} "
            "(local, emu:rpi3|rpi4|rpi5, ssh://user@host[:port])"
        )
    module, cls = getattr(KINDS[kind], harness).split(":")
    return getattr(importlib.import_module(module), cls)(spec, known_hosts=known_hosts, identity=identity, keep=keep)


def get_devices(specs, **options) -> list:
    """Devices from a comma string or a list of specs."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    devices = [get_device(s.strip(), **options) for s in items if s.strip()]
    if not devices:
        raise UsageError("no device given: name at least one, e.g. local")
    return devices
