"""`report`: one self-contained HTML page of a build, bench files and a sweep."""

from __future__ import annotations

from pathlib import Path

HELP = "write OUT/report.html: the build's targets, bench charts per board, per-op time, memory, a sweep"
DESCRIPTION = (
    "Write one self-contained HTML page (inline SVG charts, no script, nothing fetched) to OUT/report.html: "
    "the targets table of each build in OUT; with --bench, per board accuracy against latency and file size, "
    "memory, and the time per op of profiled rows; with --sweep, the sweep's results and Pareto front."
)


def add_arguments(p) -> None:
    p.add_argument("--out", type=Path, default=Path("build"), help="a build's output folder (default: build/)")
    p.add_argument(
        "--bench",
        type=Path,
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="`bench --json` files (several after one --bench, or --bench repeated)",
    )
    p.add_argument("--sweep", type=Path, metavar="DIR", help="a sweep's --out folder (or its sweep/ folder)")


def run(args) -> int:
    import pipeline

    print(f"report: {pipeline.html_report(args.out, bench=args.bench, sweep=args.sweep)}")
    return 0
