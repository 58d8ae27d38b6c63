"""Validate the latency estimate (pipeline/devices/estimate.py) against published Raspberry Pi latencies.

For every point in benchmarks/published_pi_latency.json: rebuild the model's architecture
(benchmarks/pi_models.py, random weights), run its .tflite in LiteRT on the emulated board with the
block profiler (1 thread, --runs inferences after 1 warm-up), estimate at the published clock and
thread count, and compare. The memory term's bandwidth is the only fitted constant (one per board):
every point of a board that has one is estimated with the bandwidth fitted on the board's OTHER
points (leave-one-out), and the fit on all of them is checked against estimate.BOARDS. Prints and
writes (benchmarks/results/pi_latency.{md,json}) the table, the median absolute error per board, and
whether each published int8/fp32 pair is ranked right. Also estimates every model on every board.

    .venv/bin/python -m benchmarks.pi_latency [--work DIR] [--runs N] [--boards rpi3,rpi4,rpi5]

The profiles are kept in --work (default build/pi_latency) and reused: re-pricing is seconds,
re-profiling 20-330 s per model and board under qemu.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.devices import emulated, estimate
from targets.tflite import tensor_bytes

ROOT = Path(__file__).resolve().parents[1]

PUBLISHED = Path(__file__).with_name("published_pi_latency.json")
RESULTS = Path(__file__).with_name("results")
RUNNER = ROOT / "targets" / "runners" / "run_litert.py"
# the architectures benchmarks/pi_models.py builds (benchmarks import no sibling but common.py); the
# first five are estimated on every board, the rest (minutes each under qemu) where a point needs them
MODELS = (
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_lite0",
    "resnet18",
    "resnet50",
    "squeezenet1_1",
)
EVERY_BOARD = MODELS[:5]
GBPS_GRID = [10 ** (i / 400) for i in range(-600, 1200)]  # 0.03 .. 1000 GB/s, 0.6 % steps


def models(work: Path) -> None:
    """Builds the .tflite files in a child process (TensorFlow stays out of this one)."""
    if all((work / f"{m}-{d}.tflite").exists() for m in MODELS for d in ("fp32", "int8")):
        return
    subprocess.run([sys.executable, "-m", "benchmarks.pi_models", str(work)], check=True, cwd=ROOT)


def profiled(work: Path, model: str, dtype: str, board: str, runs: int) -> tuple[dict[str, int], int]:
    cache = work / "profiles" / f"{model}-{dtype}-{board}-{runs}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return data["blocks"], data["inferences"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pi-latency-") as tmp:
        blocks, inferences, _ = emulated.block_profile(
            board, RUNNER, work / f"{model}-{dtype}.tflite", work / f"{model}-inputs.npy", Path(tmp), runs=runs
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp_cache = cache.with_suffix(".tmp")
    tmp_cache.write_text(json.dumps({"blocks": blocks, "inferences": inferences}))
    tmp_cache.rename(cache)
    print(f"  profiled {model} {dtype} on emu:{board} in {time.monotonic() - t0:.0f} s", flush=True)
    return blocks, inferences


def predicted(p: dict, gbps: float | None) -> float:
    memory = p["moved_bytes"] / (gbps * 1e6) if gbps else 0.0
    return p["estimate_compute_ms"] / p["threads"] + memory


def fit_gbps(points: list[dict]) -> float:
    """The bandwidth that minimises the squared log error of `points` (one board's)."""
    return min(GBPS_GRID, key=lambda g: sum(math.log(predicted(p, g) / p["ms"]) ** 2 for p in points))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "pi_latency")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--boards", default="rpi3,rpi4,rpi5")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models(args.work)
    published = json.loads(PUBLISHED.read_text())
    rows = []
    for p in published["points"]:
        blocks, n = profiled(args.work, p["model"], p["dtype"], p["board"], args.runs)
        est = estimate.estimate(blocks, n, p["board"], mhz=p["mhz"])
        moved = tensor_bytes(args.work / f"{p['model']}-{p['dtype']}.tflite")
        rows.append({**p, **est, "moved_bytes": moved})
    fits = {}
    for r in rows:
        others = [q for q in rows if q["board"] == r["board"] and q is not r]
        fitted = estimate.BOARDS[r["board"]].gbps is not None
        r["gbps_loo"] = fit_gbps(others) if fitted else None
        r["estimated_ms"] = predicted(r, r["gbps_loo"])
        r["error"] = (r["estimated_ms"] - r["ms"]) / r["ms"]
        if fitted:
            fits[r["board"]] = fit_gbps([q for q in rows if q["board"] == r["board"]])
    table = [
        "| model | board | threads | dtype | published ms | estimated ms | error | compute ms (1 thread) | "
        "memory term | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = (
            f"{r['moved_bytes'] / 1e6:.1f} MB at {r['gbps_loo']:.2f} GB/s (fitted on the other points)"
            if r["gbps_loo"]
            else "none"
        )
        table.append(
            f"| {r['model']} | {r['board']} ({r['mhz']} MHz) | {r['threads']} | {r['dtype']} | {r['ms']:g} | "
            f"{r['estimated_ms']:.1f} | {100 * r['error']:+.1f} % | {r['estimate_compute_ms']:.1f} | {memory} | {r['source']} |"
        )
    summary = []
    for board in sorted({r["board"] for r in rows}):
        errs = [abs(r["error"]) for r in rows if r["board"] == board]
        loo = " (each point leave-one-out)" if board in fits else ""
        summary.append(f"- {board}: median |error| {100 * statistics.median(errs):.1f} %{loo} over {len(errs)} points")
        if board in fits:
            coded = estimate.BOARDS[board].gbps
            check = "as in estimate.BOARDS" if abs(fits[board] / coded - 1) < 0.01 else f"BOARDS HAS {coded}: UPDATE IT"
            summary.append(f"- {board}: bandwidth fitted on all {len(errs)} points {fits[board]:.2f} GB/s ({check})")
        else:  # the memory term this board goes without, fitted on its points leave-one-out, for the record
            mine = [r for r in rows if r["board"] == board]
            alt = [abs(predicted(r, fit_gbps([q for q in mine if q is not r])) / r["ms"] - 1) for r in mine]
            summary.append(
                f"- {board} with a memory term fitted leave-one-out (set aside): median |error| "
                f"{100 * statistics.median(alt):.1f} %"
            )
        if estimate.BOARDS[board].in_order:  # the pricing set aside for in-order cores, for the record
            alt = []
            for r in rows:
                if r["board"] == board:
                    blocks, n = profiled(args.work, r["model"], r["dtype"], board, args.runs)
                    ms = estimate.estimate(blocks, n, board, mhz=r["mhz"], in_order=False)["estimated_p50_ms"]
                    alt.append(f"{r['model']} {r['dtype']} {ms:.1f} ms ({100 * (ms - r['ms']) / r['ms']:+.0f} %)")
            summary.append(
                f"- {board} priced by llvm-mca's in-order simulation instead of the resource bound "
                f"(set aside): {'; '.join(alt)}"
            )
    pairs = []
    for r in rows:
        if r["dtype"] != "int8":
            continue
        same = ("model", "board", "source", "threads")
        fp = next((q for q in rows if q["dtype"] == "fp32" and all(q[k] == r[k] for k in same)), None)
        if fp:
            ok = (r["ms"] < fp["ms"]) == (r["estimated_ms"] < fp["estimated_ms"])
            pairs.append(
                f"- {r['model']} on {r['board']} ({r['threads']} thread{'s' * (r['threads'] > 1)}): published int8/fp32 "
                f"{r['ms'] / fp['ms']:.2f}, estimated {r['estimated_ms'] / fp['estimated_ms']:.2f}: "
                f"{'ranked right' if ok else 'RANKED WRONG'}"
            )
    boards = args.boards.split(",")
    every = ["| model | dtype | " + " | ".join(boards) + " |", "|---|---|" + "---|" * len(boards)]
    for m in EVERY_BOARD:
        for d in ("fp32", "int8"):
            cells = []
            moved = tensor_bytes(args.work / f"{m}-{d}.tflite")
            for b in boards:
                blocks, n = profiled(args.work, m, d, b, args.runs)
                one = estimate.estimate(blocks, n, b, moved_bytes=moved)["estimated_p50_ms"]
                if estimate.BOARDS[b].gbps is None:  # no memory term: one thread only
                    cells.append(f"{one:.1f} ms / -")
                else:
                    four = estimate.estimate(blocks, n, b, moved_bytes=moved, threads=4)["estimated_p50_ms"]
                    cells.append(f"{one:.1f} / {four:.1f} ms")
            every.append(f"| {m} | {d} | " + " | ".join(cells) + " |")
    clocks = ", ".join(
        estimate.estimate(*profiled(args.work, "mobilenet_v2", "fp32", b, args.runs), b)["estimate_board"]
        for b in boards
    )
    text = "\n".join(
        [
            f"# Estimated vs published Raspberry Pi latency (estimate model {estimate.MODEL_VERSION})",
            "",
            f"`{' '.join(['.venv/bin/python -m benchmarks.pi_latency', *sys.argv[1:]])}`; LiteRT (XNNPACK), "
            f"profiled on 1 thread, {args.runs} profiled inferences after 1 warm-up per model and board. "
            "Estimated ms = compute ms / threads + bytes moved / bandwidth; the bandwidth (rpi4, rpi5 only) "
            "is fitted, so every such point is estimated with the bandwidth fitted on the board's other points.",
            "",
            *table,
            "",
            *summary,
            "",
            *pairs,
            "",
            f"Every rebuilt model on every board at the board profile's clock ({clocks}), 1 / 4 threads:",
            "",
            *every,
            "",
        ]
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pi_latency.md").write_text(text)
    (RESULTS / "pi_latency.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
