"""`sweep`: build and bench every variant of a grid of config values on Ray (pipeline/sweeper/)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli.options import add_device_arguments, device_options, log

HELP = (
    "build, verify and bench every variant of a grid of config values on Ray, each shared stage run once; "
    "results table, Pareto front, --pick"
)


def add_arguments(p) -> None:
    p.add_argument("--config", type=Path, help="TOML build config the grid varies (default: the embedded digits demo)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key as `python -m pipeline config` prints it (section.key) and its values; "
        "repeatable: the sweep is the cross product; one value sets a key for every variant",
    )
    p.add_argument("--target", help="a target name, a comma list, or 'all' (default: the config's build.targets)")
    p.add_argument(
        "--device",
        default="local",
        help="comma list of devices to bench on: local, emu:rpi3|rpi4|rpi5, ssh://user@host[:port]",
    )
    add_device_arguments(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("build"),
        help="output folder: OUT/.cache (shared with build), OUT/sweep/<variant>/ (default: build/)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result rows to FILE as a JSON list")
    p.add_argument("--address", help="an existing Ray cluster (host:port); default: a private Ray on this machine")
    p.add_argument(
        "--pick",
        metavar="LIMITS",
        help="e.g. 'p50_ms<=2,agreement>=0.98': print the best variant within the limits and write its "
        "config to OUT/pick.toml (for build --config)",
    )
    p.add_argument("--runs", type=int, default=100, help="bench: at least this many timed inferences (default: 100)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="bench: and at least this long (default: 1.0)")
    p.add_argument("--samples", type=int, default=100, help="bench: held-out samples cycled through (default: 100)")


def run(args) -> int:
    import pipeline
    from pipeline import report
    from pipeline.benchmark import Settings
    from pipeline.cli.bench import _check_writable
    from pipeline.errors import UsageError
    from pipeline.sweeper import table_columns
    from pipeline.util import atomic_write_json

    if not args.grid:
        raise UsageError("sweep needs at least one --grid KEY=V1,V2 (keys as `python -m pipeline config` prints them)")
    Settings(args.runs, args.min_seconds, 0, args.samples)  # bad numbers: one line before anything runs
    if args.json:
        _check_writable(args.json)
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    if not devices:
        raise UsageError("--device needs at least one device, e.g. local")
    res = pipeline.sweep(
        args.config,
        grid=args.grid,
        targets=args.target,
        devices=devices,
        out=args.out,
        address=args.address,
        pick=args.pick,
        runs=args.runs,
        min_seconds=args.min_seconds,
        samples=args.samples,
        device_options=device_options(args),
        log=log,
    )
    grid_keys = list(dict.fromkeys(k for v in res.variants for k in v.values))
    print(report.table(res.rows, table_columns(grid_keys)))
    s = res.stats
    print(
        f"stages: {s['model_stage_runs_planned']} data/train/prune/qat runs planned for {s['variants']} variants, "
        f"{s['distinct_model_stages']} distinct ({s['saved_by_dedup']} saved by dedup), {s['already_cached']} "
        f"already cached; {len(s['stage_runs'])} stage runs on {len(s['nodes'])} Ray node(s); {s['seconds']} s"
    )
    folder = args.out / "sweep"
    print(f"results: {folder / 'results.csv'}; Pareto chart: {folder / 'pareto.png'} (pareto column: *)")
    if args.json:
        atomic_write_json(args.json, res.rows)
        print(f"rows: {args.json}")
    if args.pick:
        if res.picked:
            r = res.picked
            values = " ".join(f"{k}={r[k]}" for k in grid_keys)
            print(
                f"pick: variant {r['variant']} ({values}) "
                f"{r['target']} on {r['device']}: accuracy {r['accuracy']}, agreement {r['agreement']}, "
                f"p50 {r['p50_ms']} ms, {r['bytes']} bytes; config: {res.pick_config} "
                f"(python -m pipeline build --config {res.pick_config})"
            )
        else:
            print(f"pick: no variant meets {args.pick}")
    failed = [r for r in res.rows if r["status"] != "ok"]
    for r in failed:
        print(
            f"error: variant {r['variant']} {r['target']} on {r['device']} {r['status']}: {r['reason']}",
            file=sys.stderr,
        )
    return 1 if failed or (args.pick and not res.picked) else 0
