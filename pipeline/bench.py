"""`bench`: latency of a build's artifacts, each in its own runtime in a child process, side by side.

Every figure comes from the target's runner script (targets/runners/), run once per
target x device x thread count on real held-out samples. A runner that crashes, hangs or
cannot load its artifact gives a failed row; the others are still measured.

Imports stay light at module level: this module is loaded for `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.devices import EmuDevice, SSHDevice, add_device_arguments, device_options
from pipeline.errors import UsageError

HELP = "time built artifacts in their runtimes: load, first inference, latency percentiles, memory"

LATENCY_KEYS = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "max_ms", "throughput_per_s",
                "runs")
CONDITION_KEYS = ("batch", "cpu", "cpus_available", "loadavg_1m", "os", "arch", "python")

TABLE_COLUMNS = [("target", "target"), ("device", "device"), ("threads", "thr"), ("status", "status"),
                 ("runtime", "runtime"), ("delegate", "delegate"), ("load_ms", "load ms"),
                 ("first_inference_ms", "first ms"), ("min_ms", "min ms"), ("p50_ms", "p50 ms"),
                 ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"), ("mean_ms", "mean ms"), ("std_ms", "std ms"),
                 ("throughput_per_s", "per s"), ("peak_rss_mb", "rss MB"), ("runs", "runs")]


# -- devices: where a runner runs ---------------------------------------------------------------

class LocalDevice:
    """This machine, with this Python (the one that has the runtimes installed)."""

    name = "local"

    def run(self, runner_path: Path, model: Path, inputs: Path, args: list[str], timeout: float) -> dict:
        from pipeline import runner

        return runner.run(runner_path, model, ["--inputs", inputs, *args], timeout=timeout)


# A device is anything with a `name` and `run(runner_path, model, inputs, args, timeout) -> dict`
# returning the runner's JSON result (ok=False with an `error` on any failure). The files are
# named separately from the other arguments so a remote device knows what to copy over: the
# runner's folder (runner_common.py sits beside it), the model's folder (an artifact's companion
# files, e.g. OpenVINO's model.bin, sit beside it) and the inputs.
# Keyed by the part of the spec before ':' ("emu:rpi4", "ssh://host"); each factory takes the spec and the
# device options (pipeline.devices.device_options: --known-hosts, --identity, --keep).
# A device may also have `columns` (its table) and `conditions_line(rows, settings)`, and its run() may return
# `device_fields`: extra row fields (pipeline/devices.py: emulated boards never report wall time as p50_ms).
DEVICE_KINDS = {"local": lambda spec, **options: LocalDevice(), "emu": EmuDevice, "ssh": SSHDevice}


def get_device(spec: str, **options):
    kind = spec.split(":", 1)[0]
    if kind not in DEVICE_KINDS:
        raise UsageError(f"unknown device '{spec}': known device kinds are {', '.join(DEVICE_KINDS)} "
                         "(local, emu:rpi3|rpi4|rpi5, ssh://user@host[:port])")
    return DEVICE_KINDS[kind](spec, **options)


# -- arguments -----------------------------------------------------------------------------------

def add_arguments(p) -> None:
    from pipeline.cli import add_build_options

    add_build_options(p)
    p.add_argument("--device", default="local", help="comma list of devices to run on: local, emu:rpi3|rpi4|rpi5 "
                   "(emulated aarch64 board), ssh://user@host[:port] (a real board) (default: local)")
    add_device_arguments(p)
    p.add_argument("--threads", default="1", help="comma list of thread counts, e.g. 1,2,4 (default: 1)")
    p.add_argument("--runs", type=int, default=100, help="at least this many timed inferences (default: 100)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="and keep timing for at least this long (default: 1.0)")
    p.add_argument("--warmup", type=int, default=10, help="untimed inferences before timing (default: 10)")
    p.add_argument("--samples", type=int, default=100,
                   help="held-out samples cycled through as inputs (default: 100)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every runner as --KEY VALUE, e.g. delegate=none (LiteRT) or "
                        "precision=f32 (OpenVINO); repeatable")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one runner may take before it counts as hung (default: 300)")
    p.add_argument("--legacy", action="store_true",
                   help="also time each artifact in its target's legacy runtime (tflite-runtime 2.14), if it has one")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows to FILE as a JSON list")


class Settings:
    """How each artifact is timed: the same for every target, device and thread count."""

    def __init__(self, runs=100, min_seconds=1.0, warmup=10, samples=100, options=(), timeout=300.0):
        if runs < 1 or warmup < 0 or samples < 1 or min_seconds < 0 or timeout <= 0:
            raise UsageError("--runs and --samples must be >= 1, --warmup and --min-seconds >= 0, "
                             "--timeout > 0")
        self.runs, self.min_seconds, self.warmup, self.samples = runs, min_seconds, warmup, samples
        self.options, self.timeout = list(options), timeout

    def runner_args(self, threads: int) -> list[str]:
        args = ["--bench", "--threads", str(threads), "--warmup", str(self.warmup), "--runs", str(self.runs),
                "--min-seconds", str(self.min_seconds), "--limit", str(self.samples)]
        for key, value in self.options:
            args += [f"--{key}", value]
        return args


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise UsageError(f"--threads must be a comma list of positive integers, not '{text}'")
    return list(dict.fromkeys(threads))


def parse_options(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.startswith("-"):
            raise UsageError(f"--option must look like KEY=VALUE (e.g. delegate=none), not '{item}'")
        out.append((key.strip(), value.strip()))
    return out


# -- measuring -----------------------------------------------------------------------------------

def bench_one(device, runner_path: Path, model: Path, inputs: Path, threads: int, settings: Settings) -> dict:
    """One runner run; the flat row fields it measured (status ok or failed, with the error)."""
    res = device.run(runner_path, model, inputs, settings.runner_args(threads), settings.timeout)
    cond = res.get("conditions") or {}
    lat = res.get("latency") or {}
    row = {"device": device.name, "threads": threads, "status": "ok" if res.get("ok") else "failed",
           "error": None if res.get("ok") else res.get("error", "no result"),
           "runtime": res.get("runtime"), "runtime_version": res.get("runtime_version"),
           "runner": runner_path.name, "options": dict(settings.options),
           "load_ms": res.get("load_ms"), "first_inference_ms": res.get("first_inference_ms"),
           **{k: lat.get(k) for k in LATENCY_KEYS},
           "runtime_p50_ms": (res.get("runtime_latency") or {}).get("p50_ms"), "peak_rss_mb": res.get("peak_rss_mb"),
           "warmup": res.get("warmup"), "min_seconds": settings.min_seconds,
           **{k: cond.get(k) for k in CONDITION_KEYS},
           "delegate": res.get("delegate", cond.get("delegate")), "precision": res.get("precision"),
           **(res.get("device_fields") or {})}
    inp = res.get("input") or {}
    row["input"] = (f"{inp['samples']} samples of {inp['file']} {inp['sample_shape']}" if inp else None)
    return row


def bench_artifacts(items, devices, inputs: Path, threads: list[int], settings: Settings, log=None) -> list[dict]:
    """Rows for every (target, artifact row, artifact path) x device x thread count.

    `artifact row` is the manifest entry (accuracy, size, status); an artifact that failed to build
    has no file and gets a row saying so.
    """
    import tempfile

    from pipeline.verify import artifact_inputs

    with tempfile.TemporaryDirectory() as tmp:
        return _bench_all(items, devices, inputs, threads, settings, log, lambda art: artifact_inputs(inputs, art, Path(tmp)))


def _bench_all(items, devices, inputs, threads, settings, log, inputs_for) -> list[dict]:
    """`inputs_for(artifact row)`: the held-out samples in that artifact's input layout."""
    rows = []
    for device in devices:
        for target, art, path in items:
            base = {"target": target.name, "quantization": art.get("quantization"), "bytes": art.get("bytes"),
                    "gzip_bytes": art.get("gzip_bytes"), "accuracy": art.get("accuracy"),
                    "artifact_status": art.get("status"), "artifact": str(path) if path else None}
            for n in threads:
                if path is None or not Path(path).exists():
                    row = {"device": device.name, "threads": n, "status": "not_built",
                           "error": art.get("reason", "no artifact file")}
                else:
                    row = bench_one(device, target.runner_path, Path(path), inputs_for(art), n, settings)
                rows.append({**base, **row})
                if log:
                    r = rows[-1]
                    what = ((r.get("summary") or f"p50 {r['p50_ms']:.4g} ms over {r['runs']} runs") if r["status"] == "ok"
                            else f"{r['status']}: {r['error']}")
                    log(f"bench {target.name:<18} {device.name} threads={n}: {what}")
    return rows


def eval_inputs(cfg, out: Path) -> Path:
    """The held-out split of this build's data stage (already built by ensure_built: a cache hit)."""
    from pipeline.build import Builder

    from pipeline.verify import test_inputs

    return test_inputs(Builder(cfg, out, log=lambda m: None).data().path)


def conditions_line(rows: list[dict], settings: Settings) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return "conditions: no successful run"
    r = ok[0]
    return (f"conditions: {r['cpu']} ({r['cpus_available']} CPUs available, load {r['loadavg_1m']}), "
            f"{r['os']} {r['arch']}, Python {r['python']}; batch 1; inputs: {r['input']} (held-out split); "
            f"{settings.warmup} warm-up runs, then >= {settings.runs} runs and >= {settings.min_seconds:g} s "
            f"per row; latencies in ms")


def _check_writable(path: Path) -> None:
    """Refuse an unwritable --json before spending minutes on building and timing."""
    import os

    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if path.is_dir() or not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"--json {path} cannot be written: choose another file")


def run(args) -> int:
    from pipeline import report
    from pipeline.cli import ensure_built
    from pipeline.util import atomic_write_json

    threads = parse_threads(args.threads)
    devices = [get_device(d.strip(), **device_options(args)) for d in args.device.split(",") if d.strip()]
    if not devices:
        raise UsageError("--device needs at least one device, e.g. local")
    settings = Settings(args.runs, args.min_seconds, args.warmup, args.samples, parse_options(args.option),
                        args.timeout)
    if args.json:
        _check_writable(args.json)
    cfg, targets, artifacts = ensure_built(args)
    inputs = eval_inputs(cfg, args.out)
    by_name = {a["target"]: a for a in artifacts}
    items = [(t, by_name[t.name], args.out / by_name[t.name]["path"] if "path" in by_name[t.name] else None)
             for t in targets]
    if args.legacy:
        import dataclasses

        items += [(dataclasses.replace(t, runner=t.legacy_runner), a, path) for t, a, path in items
                  if getattr(t, "legacy_runner", "")]
    rows = bench_artifacts(items, devices, inputs, threads, settings, log=lambda m: print(m, file=sys.stderr))
    for r in rows:
        r["model"] = cfg.model.name
    for device in devices:  # one table per device: an emulated board has no latency columns
        mine = [r for r in rows if r["device"] == device.name]
        print(report.table(mine, getattr(device, "columns", TABLE_COLUMNS)))
        print(device.conditions_line(mine, settings) if hasattr(device, "conditions_line")
              else conditions_line(mine, settings))
    if args.json:
        atomic_write_json(args.json, rows)
        print(f"rows: {args.json}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"error: {r['target']} on {r['device']} ({r['threads']} threads) {r['status']}: {r['error']}",
              file=sys.stderr)
    return 1 if failed else 0
