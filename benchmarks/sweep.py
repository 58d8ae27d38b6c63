"""A sweep on a 2-node Ray cluster against the same variants built one by one.

    .venv/bin/python -m benchmarks.sweep [--size 48] [--alpha 0.35] [--train-samples 1500] [--test-samples 500]
                                         [--pick "accuracy_drop<=2"]

The model is benchmarks/common.py's MobileNetV2 (random init, `--alpha` width, `--size` px grey input)
trained here on Fashion-MNIST, handed to the pipeline as the user's model (trained once, untimed, kept in
.work/sweep/). Six variants: channels pruning at three fractions (1 epoch of fine-tuning) x QAT (1 epoch)
or post-training quantization, for tflite-int8 (accuracy gate: 3 points). Data and the user's model are shared by
every variant, each pruning by two.

1. One by one: `python -m pipeline build --config VARIANT.toml` for each variant, each into a fresh
   folder (its own cache), as a shell loop over configs does on a machine without a shared cache.
2. The sweep: `python -m pipeline sweep --grid ... --address` on a 2-node Ray cluster (1 CPU each, both
   on 127.0.0.1) that this script starts inside a network + PID namespace of its own (`unshare`, needs
   root), with the sweep's driver; the cluster ends with the namespace.
3. The same sweep again with `--pick`: every stage is cached, only the benches run.
Then every sweep artifact is compared, byte for byte, with its one-by-one build.

Outputs: results/sweep.{md,json} and results/sweep_pareto.png.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import log, train_float
from pipeline import config
from pipeline.releases.card import md_table
from pipeline.sweeper import parse_grid, to_toml, variants
from pipeline.util import atomic_write_bytes, atomic_write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WORK = HERE / ".work" / "sweep"
GRID = ["prune.channels_fraction=0.25,0.5,0.65", "qat.epochs=0,1"]
TARGETS = "tflite-int8"
RAY = Path(sys.executable).with_name("ray")


def base_config(args) -> dict:
    folder = (
        WORK / f"mobilenet-v2-{args.size}-{args.alpha}-{args.train_epochs}-{args.train_samples}-{args.test_samples}"
    )
    if not (folder / "float.h5").exists():
        train_float(folder, args.size, args.alpha, args.train_epochs, args.train_samples, args.test_samples)
    return {
        "model": {"name": "mobilenet-v2", "path": str(folder / "float.h5"), "fine_tune_epochs": 0},
        "data": {"path": str(folder / "data.npz"), "calibration_samples": 200},
        "train": {"batch_size": 64, "learning_rate": 0.001, "lr_schedule": "cosine"},
        "prune": {"method": "channels", "epochs": 1, "learning_rate": 0.001, "channels_criterion": "bn"},
        "qat": {"learning_rate": 0.0001},
        "build": {"max_accuracy_drop": 3.0},
    }


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def one_by_one(cfg: config.Config) -> dict:
    """Each variant built alone into its own fresh folder; wall time and stage runs."""
    out = WORK / "serial"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    shas, runs = {}, 0
    for v in variants(cfg, parse_grid(GRID)):
        folder = out / v.id
        folder.mkdir(parents=True)
        (folder / "variant.toml").write_text(to_toml(v.cfg.as_dict()))
        log(f"one by one: {v.id} {v.values}")
        proc = subprocess.run(
            cli("build", "--config", folder / "variant.toml", "--target", TARGETS, "--out", folder / "out"),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode not in (0, 1):  # 1: an artifact failed its gate, a result like any other
            raise SystemExit(f"build of {v.id} failed:\n{proc.stderr[-2000:]}")
        m = json.loads((folder / "out" / "mobilenet-v2" / "manifest.json").read_text())
        runs += sum(not s["reused"] for s in m["stages"].values()) + 2 * len(m["artifacts"])
        shas.update({(v.id, a["target"]): a["sha256"] for a in m["artifacts"]})
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "stage_runs": runs,
        "sha256": shas,
        "loadavg_1m_after": os.getloadavg()[0],
    }


def on_cluster(base_toml: Path, out: Path, pick: str | None) -> dict:
    """The sweep on a fresh 2-node loopback cluster inside a namespace; the sweep's own wall time."""
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    stamps = WORK / "stamps.txt"
    port = 6397
    grid = " ".join(f"--grid {g}" for g in GRID)
    sweep = " ".join(
        cli(
            "sweep",
            "--config",
            base_toml,
            "--target",
            TARGETS,
            "--out",
            out,
            "--address",
            f"127.0.0.1:{port}",
            "--json",
            out / "rows.json",
        )
    )
    sweep += f" {grid}" + (f" --pick '{pick}'" if pick else "")
    script = (
        f"set -u; ip link set lo up; "
        f"{RAY} start --head --node-ip-address=127.0.0.1 --port={port} --num-cpus=1 "
        f"--include-dashboard=false --disable-usage-stats --temp-dir={temp} >/dev/null && "
        f"{RAY} start --address=127.0.0.1:{port} --node-ip-address=127.0.0.1 --num-cpus=1 >/dev/null && "
        f"t0=$(date +%s.%N) && {sweep}; rc=$?; t1=$(date +%s.%N); echo $t0 $t1 > {stamps}; "
        f"{RAY} stop --force >/dev/null 2>&1; exit $rc"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    proc = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(temp, ignore_errors=True)
    (WORK / f"sweep-{'pick' if pick else 'first'}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"sweep failed:\n{proc.stderr[-3000:]}")
    t0, t1 = map(float, stamps.read_text().split())
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    rows = json.loads((out / "rows.json").read_text())
    picked = [line for line in proc.stdout.splitlines() if line.startswith("pick:")]
    return {
        "seconds": round(t1 - t0, 1),
        "summary": summary,
        "rows": rows,
        "pick": picked[0] if picked else None,
        "exit_code": proc.returncode,
        "loadavg_1m_after": os.getloadavg()[0],
    }


def artifact_sha(row: dict) -> str:
    manifest = json.loads((Path(row["artifact"]).parent.parent / "manifest.json").read_text())
    return next(a["sha256"] for a in manifest["artifacts"] if a["target"] == row["target"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--train-epochs", type=int, default=4, help="epochs of the float model (untimed)")
    p.add_argument("--train-samples", type=int, default=1500)
    p.add_argument("--test-samples", type=int, default=500)
    p.add_argument("--pick", default="accuracy_drop<=2", help="the limits of the second sweep's --pick")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cfg = config.from_dict(base_config(args))
    base_toml = WORK / "base.toml"
    base_toml.write_text(to_toml(cfg.as_dict()))

    serial = one_by_one(cfg)
    log(f"one by one: {serial['seconds']} s, {serial['stage_runs']} stage runs")
    out = WORK / "sweep-out"
    shutil.rmtree(out, ignore_errors=True)
    first = on_cluster(base_toml, out, None)
    log(f"sweep: {first['seconds']} s")
    again = on_cluster(base_toml, out, args.pick)
    log(f"sweep again with --pick: {again['seconds']} s")

    rows = first["rows"]
    same = sum(artifact_sha(r) == serial["sha256"][(r["variant"], r["target"])] for r in rows if r["artifact"])
    s = first["summary"]
    ran = len(s["stage_runs"])
    shutil.copyfile(out / "sweep" / "pareto.png", RESULTS / "sweep_pareto.png")
    keys = list(parse_grid(GRID))
    columns = (
        [("variant", "variant")]
        + [(k, k) for k in keys]
        + [
            ("target", "target"),
            ("status", "status"),
            ("bytes", "bytes"),
            ("accuracy", "accuracy"),
            ("accuracy_drop", "drop vs user's model (pts)"),
            ("p50_ms", "p50 ms"),
            ("front", "Pareto"),
        ]
    )
    md = [
        "# Sweep on a 2-node Ray cluster vs one by one",
        "",
        f"`.venv/bin/python benchmarks/sweep.py --size {args.size} --alpha {args.alpha} --train-samples "
        f'{args.train_samples} --test-samples {args.test_samples} --pick "{args.pick}"` '
        f"({time.strftime('%Y-%m-%d')}, 2 shared cores).",
        "",
        f"Model: MobileNetV2 alpha {args.alpha}, {args.size} px, trained here on {args.train_samples} Fashion-MNIST "
        f"images (benchmarks/common.py), given to the pipeline as the user's model; {args.test_samples} held-out "
        f"images. Grid: {', '.join(GRID)}; targets {TARGETS}; every variant prunes channels with 1 epoch of "
        "fine-tuning, then QAT 1 epoch or post-training quantization.",
        "",
        "| run | wall s | stage runs |",
        "|---|---|---|",
        f"| one by one (`build` per variant, fresh folder each) | {serial['seconds']} | {serial['stage_runs']} |",
        f"| sweep, 2-node loopback cluster, 1 CPU per node | {first['seconds']} | {ran} |",
        f"| the same sweep again, with `--pick` (all cached; only benches) | {again['seconds']} | "
        f"{len(again['summary']['stage_runs'])} |",
        "",
        f"The machine was shared: 1-minute load average after each run {serial['loadavg_1m_after']:.1f}, "
        f"{first['loadavg_1m_after']:.1f}, {again['loadavg_1m_after']:.1f} on 2 cores.",
        "",
        f"One by one / sweep: **{serial['seconds'] / first['seconds']:.2f}x** wall time. Data, model, prune and "
        f"QAT stage runs: {s['model_stage_runs_planned']} planned for {s['variants']} variants, {s['distinct_model_stages']} "
        f"distinct: **{s['saved_by_dedup']} saved by deduplication**; the sweep ran {ran} stages (export and verify "
        f"included) against {serial['stage_runs']} one by one, on {len(s['nodes'])} Ray nodes. Sweep artifacts "
        f"byte-identical to their one-by-one builds: {same} of {sum(1 for r in rows if r['artifact'])}.",
        "",
        f'`--pick "{args.pick}"`: {again["pick"] or "nothing"}',
        "",
        "![Pareto chart](sweep_pareto.png)",
        "",
        "Latency is LiteRT on this machine at 1 thread (timed after every build task finished); drop is in points of "
        "accuracy against the user's model (the float MobileNetV2 as given) on the held-out images.",
        "",
        md_table(again["rows"], columns),
        "",
    ]
    atomic_write_bytes(RESULTS / "sweep.md", "\n".join(md).encode())
    atomic_write_json(
        RESULTS / "sweep.json",
        {
            "one_by_one": {k: v for k, v in serial.items() if k != "sha256"},
            "sweep": {k: v for k, v in first.items() if k != "rows"},
            "again": {k: v for k, v in again.items() if k != "rows"},
            "identical": same,
            "rows": again["rows"],
        },
    )
    log(f"wrote {RESULTS / 'sweep.md'}")


if __name__ == "__main__":
    main()
