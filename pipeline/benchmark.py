"""Latency of a build's artifacts, each in its own runtime in a child process, side by side.

Every figure comes from the target's runner script (targets/runners/), run once per
target x device x thread count on real held-out samples. A runner that crashes, hangs or
cannot load its artifact gives a failed row; the others are still measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import op_profile
from pipeline.devices import RunRequest, Timing
from pipeline.errors import UsageError
from pipeline.verdict import Status

LATENCY_KEYS = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "max_ms", "throughput_per_s", "runs")
CONDITION_KEYS = ("batch", "cpu", "cpus_available", "loadavg_1m", "os", "arch", "python")

TABLE_COLUMNS = [
    ("target", "target"),
    ("device", "device"),
    ("threads", "thr"),
    ("status", "status"),
    ("runtime", "runtime"),
    ("delegate", "delegate"),
    ("load_ms", "load ms"),
    ("first_inference_ms", "first ms"),
    ("min_ms", "min ms"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("mean_ms", "mean ms"),
    ("std_ms", "std ms"),
    ("throughput_per_s", "per s"),
    ("peak_rss_mb", "rss MB"),
    ("file_bytes", "file bytes"),
    ("runs", "runs"),
]


@dataclass(frozen=True)
class Settings:
    """How each artifact is timed: the same for every target, device and thread count."""

    runs: int = 100
    min_seconds: float = 1.0
    warmup: int = 10
    samples: int = 100
    options: tuple[tuple[str, str], ...] = ()
    timeout: float = 300.0
    profile: bool = False
    detect: str | None = None
    """A detector's head (RunRequest.detect): each Python runner also times its decode + NMS."""

    def __post_init__(self):
        if self.runs < 1 or self.warmup < 0 or self.samples < 1 or self.min_seconds < 0 or self.timeout <= 0:
            raise UsageError("--runs and --samples must be >= 1, --warmup and --min-seconds >= 0, --timeout > 0")

    def timing(self, threads: int) -> Timing:
        return Timing(threads, self.warmup, self.runs, self.min_seconds, self.profile)

    def request(self, runner: Path, model: Path, inputs: Path, threads: int, original: Path | None = None):
        return RunRequest(
            runner,
            model,
            inputs,
            limit=self.samples,
            timing=self.timing(threads),
            options=tuple(self.options),
            timeout=self.timeout,
            original=original,
            detect=self.detect,
        )


HARNESSES = ("python", "native")


def parse_harness(text: str) -> list[str]:
    """`python`, `native` or both: which runner times each artifact (the Python runner, or pipeline/native.py)."""
    items = [h.strip() for h in text.split(",") if h.strip()]
    bad = [h for h in items if h not in HARNESSES]
    if not items or bad:
        raise UsageError(f"--harness takes a comma list of {' and '.join(HARNESSES)}, not '{text}'")
    return list(dict.fromkeys(items))


def get_devices(specs, harnesses=("python",), **options) -> list:
    """Each device spec once per harness: the Python runners' device, or the native runner's."""
    from pipeline import devices

    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out = [devices.get_device(s.strip(), harness=h, **options) for h in harnesses for s in items if s.strip()]
    if not out:
        raise UsageError("no device given: name at least one, e.g. local")
    return out


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise UsageError(f"--threads must be a comma list of positive integers, not '{text}'")
    return list(dict.fromkeys(threads))


def parse_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.startswith("-"):
            raise UsageError(f"--option must look like KEY=VALUE (e.g. delegate=none), not '{item}'")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def bench_one(
    device, runner_path: Path, model: Path, inputs: Path, threads: int, settings: Settings, original: Path | None = None
) -> dict:
    """One runner run; the flat row fields it measured (status ok or failed, with the error). `original`:
    RunRequest.original (a board also compares its outputs with the original model's)."""
    python = getattr(device, "harness", "python") == "python"
    res = device.run(
        (settings if python else replace(settings, detect=None)).request(runner_path, model, inputs, threads, original)
    )
    cond = res.get("conditions") or {}
    lat = res.get("latency") or {}
    row = {
        "device": device.name,
        "harness": getattr(device, "harness", "python"),
        "threads": threads,
        "status": Status.OK if res.get("ok") else Status.FAILED,
        "error": None if res.get("ok") else res.get("error", "no result"),
        "runtime": res.get("runtime"),
        "runtime_version": res.get("runtime_version"),
        "runner": runner_path.name,
        "options": dict(settings.options),
        "load_ms": res.get("load_ms"),
        "first_inference_ms": res.get("first_inference_ms"),
        **{k: lat.get(k) for k in LATENCY_KEYS},
        "runtime_p50_ms": (res.get("runtime_latency") or {}).get("p50_ms"),
        "peak_rss_mb": res.get("peak_rss_mb"),
        "arena_bytes": res.get("arena_bytes"),
        "warmup": res.get("warmup"),
        "min_seconds": settings.min_seconds,
        **{k: cond.get(k) for k in CONDITION_KEYS},
        "delegate": res.get("delegate", cond.get("delegate")),
        "precision": res.get("precision"),
        **(_postprocess_fields(res, lat.get("p50_ms"), python) if settings.detect else {}),
        # emulated time is no board's time: an emulated board's profile is in instructions (its device_fields)
        **(op_profile.local_fields(res) if settings.profile and not getattr(device, "emulated", False) else {}),
        **(res.get("device_fields") or {}),
    }
    inp = res.get("input") or {}
    row["input"] = f"{inp['samples']} samples of {inp['file']} {inp['sample_shape']}" if inp else None
    return row


def bench_artifacts(
    items, devices, inputs: Path, threads: list[int], settings: Settings, log=None, reference: Path | None = None
) -> list[dict]:
    """Rows for every (target, artifact row, artifact path) x device x thread count.

    `artifact row` is the manifest entry (accuracy, size, status); an artifact that failed to build
    has no file and gets a row saying so. Each artifact gets `inputs` in its own input layout, and with
    `reference` (the original model's outputs on `inputs`) a board compares with the original too.
    """
    import tempfile

    from pipeline.devices.agreement import original_outputs
    from pipeline.gate import artifact_inputs

    with tempfile.TemporaryDirectory() as tmp:
        return _bench_all(
            items,
            devices,
            threads,
            settings,
            log,
            lambda art: artifact_inputs(inputs, art, Path(tmp)),
            lambda art: original_outputs(reference, art, Path(tmp)) if reference else None,
        )


def _bench_all(items, devices, threads, settings, log, inputs_for, original_for=lambda art: None) -> list[dict]:
    rows = []
    for device in devices:
        for target, art, path in items:
            base = {
                "target": target.name,
                "quantization": art.get("quantization"),
                "bytes": art.get("bytes"),
                "file_bytes": _file_bytes(path),
                "gzip_bytes": art.get("gzip_bytes"),
                "accuracy": art.get("accuracy"),
                "artifact_status": art.get("status"),
                "artifact": str(path) if path else None,
            }
            for n in threads:
                if path is None or not Path(path).exists():
                    row = {
                        "device": device.name,
                        "harness": getattr(device, "harness", "python"),
                        "threads": n,
                        "status": Status.NOT_BUILT,
                        "error": art.get("reason", "no artifact file"),
                    }
                else:
                    row = bench_one(
                        device, target.runner_path, Path(path), inputs_for(art), n, settings, original_for(art)
                    )
                rows.append({**base, **row})
                if log:
                    r = rows[-1]
                    post = f"; decode+NMS {r['postprocess_ms']:.3g} ms" if r.get("postprocess_ms") is not None else ""
                    what = (
                        (r.get("summary") or f"p50 {r['p50_ms']:.4g} ms over {r['runs']} runs{post}")
                        if r["status"] == Status.OK
                        else f"{r['status']}: {r['error']}"
                    )
                    harness = f" ({device.harness})" if getattr(device, "harness", "python") != "python" else ""
                    log(f"bench {target.name:<18} {device.name}{harness} threads={n}: {what}")
    return rows


POSTPROCESS_COLUMNS = [
    ("postprocess_ms", "decode+NMS ms"),
    ("end_to_end_ms", "end-to-end ms"),
    ("postprocess_instructions", "decode+NMS insn"),
    ("estimated_postprocess_ms", "decode+NMS ms (estimate)"),
    ("estimated_end_to_end_ms", "end-to-end ms (estimate)"),
]


def postprocess_columns(columns: list, rows: list[dict]) -> list:
    """A table's columns and, for a detector's rows, the decode + NMS columns they have."""
    return columns + [c for c in POSTPROCESS_COLUMNS if any(r.get(c[0]) is not None for r in rows)]


def _postprocess_fields(res: dict, p50_ms: float | None, python: bool) -> dict:
    """A detector's decode + NMS per image, timed by the runner where the row ran, and with the row's p50 the
    end-to-end figure (an emulated board's device_fields carry the estimated ones instead)."""
    if not python:
        return {"postprocess_error": "the native runner has no decode + NMS: --harness python times it"}
    post = res.get("postprocess") or {}
    ms = post.get("p50_ms")
    return {
        "postprocess_ms": ms,
        "end_to_end_ms": p50_ms + ms if p50_ms is not None and ms is not None else None,
        "postprocess_boxes_per_image": post.get("boxes_per_image"),
        "postprocess_error": res.get("postprocess_error"),
    }


def _file_bytes(path) -> int | None:
    """Bytes the board loads: the artifact and its companions (OpenVINO's model.bin beside model.xml)."""
    if not path or not Path(path).exists():
        return None
    from pipeline.devices.agreement import artifact_files

    return sum(p.stat().st_size for p in artifact_files(Path(path)))


def conditions_line(rows: list[dict], settings: Settings) -> str:
    ok = [r for r in rows if r["status"] == Status.OK]
    if not ok:
        return "conditions: no successful run"
    r = ok[0]
    return (
        f"conditions: {r['cpu']} ({r['cpus_available']} CPUs available, load {r['loadavg_1m']}), "
        f"{r['os']} {r['arch']}, Python {r['python']}; batch 1; inputs: {r['input']} (held-out split); "
        f"{settings.warmup} warm-up runs, then >= {settings.runs} runs and >= {settings.min_seconds:g} s "
        f"per row; latencies in ms"
    )
