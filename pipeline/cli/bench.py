"""`bench`: time built artifacts in their runtimes on this machine or on boards."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli.options import add_build_options, add_device_arguments, build_kwargs, device_options, log
from pipeline.errors import UsageError
from pipeline.verdict import Status

HELP = "time built artifacts in their runtimes: load, first inference, latency percentiles, memory"


def add_arguments(p) -> None:
    add_build_options(p)
    p.add_argument(
        "--device",
        default="local",
        help="comma list of devices to run on: local, emu:rpi3|rpi4|rpi5 "
        "(emulated aarch64 board), ssh://user@host[:port] (a real board) (default: local)",
    )
    add_device_arguments(p)
    p.add_argument(
        "--harness",
        default="python",
        help="comma list of what times each artifact: python (the "
        "runner scripts) or native (a C program, no Python on the board; LiteRT, onnxruntime and "
        "OpenVINO through their C APIs) (default: python)",
    )
    p.add_argument("--threads", default="1", help="comma list of thread counts, e.g. 1,2,4 (default: 1)")
    p.add_argument("--runs", type=int, default=100, help="at least this many timed inferences (default: 100)")
    p.add_argument(
        "--min-seconds", type=float, default=1.0, help="and keep timing for at least this long (default: 1.0)"
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed inferences before timing (default: 10)")
    p.add_argument("--samples", type=int, default=100, help="held-out samples cycled through as inputs (default: 100)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to every runner as --KEY VALUE, e.g. delegate=none (LiteRT) or "
        "precision=f32 (OpenVINO); repeatable",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one runner may take before it counts as hung (default: 300)",
    )
    p.add_argument(
        "--legacy",
        action="store_true",
        help="also time each artifact in its target's legacy runtime (tflite-runtime 2.14), if it has one",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile each artifact per op in its runtime's own profiler (instructions per op on an "
        "emulated board) and compare each int8 file with the fp32 file of its format, per op type",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows to FILE as a JSON list")


def _check_writable(path: Path) -> None:
    """Refuse an unwritable --json before spending minutes on building and timing."""
    import os

    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if path.is_dir() or not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"--json {path} cannot be written: choose another file")


def run(args) -> int:
    import pipeline
    from pipeline import benchmark as bench
    from pipeline import report
    from pipeline.util import atomic_write_json

    threads = bench.parse_threads(args.threads)
    devices = bench.get_devices(args.device, bench.parse_harness(args.harness), **device_options(args))
    settings = bench.Settings(
        args.runs, args.min_seconds, args.warmup, args.samples, bench.parse_options(args.option), args.timeout
    )
    if args.json:
        _check_writable(args.json)
    b = pipeline.built(**build_kwargs(args))
    rows = pipeline.bench(
        b,
        devices=devices,
        threads=threads,
        runs=settings.runs,
        min_seconds=settings.min_seconds,
        warmup=settings.warmup,
        samples=settings.samples,
        options=settings.options,
        timeout=settings.timeout,
        legacy=args.legacy,
        profile=args.profile,
        log=log,
    )
    for device in devices:  # one table per device and harness: an emulated board has no latency columns
        harness = getattr(device, "harness", "python")
        mine = [r for r in rows if r["device"] == device.name and r["harness"] == harness]
        if harness != "python":
            print(f"{device.name}, {harness} runner:")
        print(report.table(mine, bench.postprocess_columns(getattr(device, "columns", bench.TABLE_COLUMNS), mine)))
        print(
            device.conditions_line(mine, settings)
            if hasattr(device, "conditions_line")
            else bench.conditions_line(mine, settings)
        )
    if args.profile:
        from pipeline import op_profile

        print(op_profile.profile_table(rows))
        comparisons = [r["profile_compare"] for r in rows if r.get("profile_compare")]
        if comparisons:
            print("int8 against fp32, per op type:")
            print(op_profile.compare_table(comparisons))
    if args.json:
        atomic_write_json(args.json, rows)
        print(f"rows: {args.json}")
    failed = [r for r in rows if r["status"] != Status.OK]
    for r in failed:
        print(
            f"error: {r['target']} on {r['device']} ({r['threads']} threads) {r['status']}: {r['error']}",
            file=sys.stderr,
        )
    return 1 if failed else 0
