"""Sweeps (`pipeline.sweep`, `python -m pipeline sweep`): the variants of a config (a grid of keys) x targets x devices, built on Ray with no double work.

A stage's cache key depends only on its name, code, parameters, its inputs' keys and the tool
versions (graph.py), so the keys of every variant's data, train, prune and QAT stages are derived
before anything runs (`plan`): a stage that several variants share has one key and runs once, as
one Ray task whose dependencies are the tasks of its inputs; independent stages run in parallel.
Export and verify keys depend on what those stages produced (whether QAT fell back to post-training
quantization, the data's labels), so they are derived when their inputs have landed; they are
per variant anyway (each artifact embeds its config's hash).

One job per module: `grid` (the variants), `plan` (their model stage keys from the stage graph, deduplicated),
`execute` (the nodes as Ray tasks, entries as bytes, benches on device actors, each variant published as a
plain `build` of its config), `results` (rows, Pareto front, pick, CSV and chart).

Ray is an extra (`pip install 'edge-export[ray]'`) and is imported only when a sweep runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import config as config_mod
from pipeline.cache import Cache
from pipeline.sweeper import execute, results
from pipeline.sweeper.execute import land, pack
from pipeline.sweeper.grid import Variant, parse_grid, variants
from pipeline.sweeper.plan import plan
from pipeline.sweeper.results import mark_pareto, parse_pick, pick, table_columns, to_toml

__all__ = [
    "Result",
    "land",
    "mark_pareto",
    "pack",
    "parse_grid",
    "parse_pick",
    "pick",
    "plan",
    "run",
    "table_columns",
    "to_toml",
    "variants",
]


@dataclass
class Result:
    rows: list[dict]
    variants: list[Variant]
    stats: dict
    picked: dict | None = None
    pick_config: Path | None = None


BENCH = {"runs": 100, "min_seconds": 1.0, "warmup": 10, "samples": 100, "timeout": 300.0}
"""A sweep's bench settings unless `bench_settings` says otherwise."""


def run(
    base: config_mod.Config,
    *,
    grid,
    targets=None,
    devices=("local",),
    out="build",
    address=None,
    log=None,
    bench_settings=None,
    device_options=None,
    pick_limits=None,
) -> Result:
    """Build every variant of `base` over `grid` ({'prune.sparsity': [0.5, 0.75]} or ['prune.sparsity=0.5,0.75']),
    for `targets`, benched on `devices` (pipeline.api.sweep is the documented entry); see the module docstring."""
    from pipeline import report
    from pipeline.devices import get_device
    from targets import resolve

    log = log or (lambda m: None)
    out = Path(out)
    grid = parse_grid(grid)
    vs = variants(base, grid)
    targets = resolve(targets or base.build.targets)
    terms = parse_pick(pick_limits) if pick_limits else None
    options = device_options or {}
    for spec in devices:  # a board that is not set up: one line before anything runs
        get_device(spec, **options)
    settings = {**BENCH, **(bench_settings or {})}
    cache = Cache(out / ".cache")
    nodes, vkeys = plan(vs, cache.root, targets)
    todo = [n for n in nodes.values() if cache.get(n.name, n.key) is None]
    planned = sum(len(k) for k in vkeys.values())
    log(
        f"sweep: {len(vs)} variants x {len(targets)} targets x {len(devices)} devices; {planned} model stage runs "
        f"planned, {len(nodes)} distinct ({planned - len(nodes)} saved by dedup), "
        f"{len(nodes) - len(todo)} already cached, {len(todo)} to run"
    )
    t_start = time.perf_counter()
    ray = execute.ray_init(address)
    try:
        d = execute.Driver(ray, vs, vkeys, targets, devices, options, settings, out, cache, log, report)
        d.go(nodes, todo)
    finally:
        ray.shutdown()
    train = {v.id: d.cache.get("train", vkeys[v.id]["train"]) for v in vs}
    original = {vid: e.meta.get("accuracy") if e else None for vid, e in train.items()}
    rows = results.rows(vs, targets, devices, d.benches, original, out / "sweep")
    stats = {
        "variants": len(vs),
        "targets": [t.name for t in targets],
        "devices": list(devices),
        "model_stage_runs_planned": planned,
        "distinct_model_stages": len(nodes),
        "already_cached": len(nodes) - len(todo),
        "saved_by_dedup": planned - len(nodes),
        "stage_runs": d.runs,
        "nodes": sorted({r["node"] for r in d.runs}),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    results.write(out / "sweep", grid, rows, stats)
    result = Result(rows, vs, stats)
    if terms is not None:
        result.picked = pick(rows, terms)
        if result.picked:
            result.pick_config = results.write_pick(out / "pick.toml", result.picked, vs)
    return result
