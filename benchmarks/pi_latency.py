"""Validate the latency estimate (pipeline/estimate.py) against published Raspberry Pi latencies.

For every point in benchmarks/published_pi_latency.json: rebuild the model's architecture
(benchmarks/pi_models.py, random weights), run its .tflite in LiteRT on the emulated board with the
block profiler (1 thread, --runs inferences after 1 warm-up), estimate, and compare. Prints and writes
(benchmarks/results/pi_latency.{md,json}) the table, the median absolute error per board, and whether
each published int8/fp32 pair is ranked right. Also estimates every model on every board.

    .venv/bin/python -m benchmarks.pi_latency [--work DIR] [--runs N] [--boards rpi3,rpi4,rpi5]

The profiles are kept in --work (default build/pi_latency) and reused: re-pricing is seconds,
re-profiling ~1 min per model and board under qemu.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.devices import emulated, estimate

ROOT = Path(__file__).resolve().parents[1]

PUBLISHED = Path(__file__).with_name("published_pi_latency.json")
RESULTS = Path(__file__).with_name("results")
RUNNER = ROOT / "targets" / "runners" / "run_litert.py"


def models(work: Path) -> None:
    """Builds the .tflite files in a child process (TensorFlow stays out of this one)."""
    if all(
        (work / f"{m}-{d}.tflite").exists()
        for m in ("mobilenet_v1", "mobilenet_v2", "efficientnet_lite0")
        for d in ("fp32", "int8")
    ):
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
        err = (est["estimated_p50_ms"] - p["ms"]) / p["ms"]
        rows.append({**p, **est, "error": err})
    table = [
        "| model | board | dtype | published ms | estimated ms | error | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['board']} ({r['mhz']} MHz) | {r['dtype']} | {r['ms']:.1f} | "
            f"{r['estimated_p50_ms']:.1f} | {100 * r['error']:+.1f} % | {r['source']} |"
        )
    summary = []
    for board in sorted({r["board"] for r in rows}):
        errs = [abs(r["error"]) for r in rows if r["board"] == board]
        summary.append(f"- {board}: median |error| {100 * statistics.median(errs):.1f} % over {len(errs)} points")
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
        fp = next(
            (
                q
                for q in rows
                if q["dtype"] == "fp32"
                and (q["model"], q["board"], q["source"]) == (r["model"], r["board"], r["source"])
            ),
            None,
        )
        if fp:
            ok = (r["ms"] < fp["ms"]) == (r["estimated_p50_ms"] < fp["estimated_p50_ms"])
            pairs.append(
                f"- {r['model']} on {r['board']}: published int8/fp32 {r['ms'] / fp['ms']:.2f}, "
                f"estimated {r['estimated_p50_ms'] / fp['estimated_p50_ms']:.2f}: "
                f"{'ranked right' if ok else 'RANKED WRONG'}"
            )
    every = [
        "| model | dtype | " + " | ".join(b for b in args.boards.split(",")) + " |",
        "|---|---|" + "---|" * len(args.boards.split(",")),
    ]
    for m in ("mobilenet_v1", "mobilenet_v2", "efficientnet_lite0"):
        for d in ("fp32", "int8"):
            cells = []
            for b in args.boards.split(","):
                blocks, n = profiled(args.work, m, d, b, args.runs)
                e = estimate.estimate(blocks, n, b)
                cells.append(f"{e['estimated_p50_ms']:.1f} ms ({e['estimate_board'].split(' ', 1)[1]})")
            every.append(f"| {m} | {d} | " + " | ".join(cells) + " |")
    text = "\n".join(
        [
            f"# Estimated vs published Raspberry Pi latency (estimate model {estimate.MODEL_VERSION})",
            "",
            f"`{' '.join(['.venv/bin/python -m benchmarks.pi_latency', *sys.argv[1:]])}`; LiteRT (XNNPACK), "
            f"1 thread, {args.runs} profiled inferences after 1 warm-up per model and board.",
            "",
            *table,
            "",
            *summary,
            "",
            *pairs,
            "",
            "Every rebuilt model on every board, at the board profile's clock:",
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
