"""`release`: pack a finished build's verified artifacts (see pipeline/releases/pack.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.cli.options import add_build_options, build_kwargs, load_config

HELP = "package verified artifacts as reproducible archives with test vectors, checksums and a model card"


def add_arguments(p) -> None:
    add_build_options(p)
    p.add_argument(
        "--version",
        dest="release_version",
        required=True,
        metavar="X.Y.Z",
        help="release version, used in the folder and archive names",
    )
    p.add_argument("--dist", type=Path, default=Path("dist"), help="where the release folder goes (default: dist/)")
    p.add_argument(
        "--bench",
        type=Path,
        metavar="FILE.json",
        help="rows written by `bench --json FILE`: latency in the model card and BENCHMARKS.md",
    )
    p.add_argument("--force", action="store_true", help="replace DIST/<model>-<version> if it exists")
    p.add_argument(
        "--bundle",
        default="",
        metavar="ARCH[,ARCH]",
        help="also pack each target for x86_64 and/or aarch64 boards with no Python: the native runner, "
        "the runtime's libraries and a run.sh that benchmarks it and replays its test vectors",
    )
    p.add_argument(
        "--allow-failed",
        action="append",
        default=[],
        metavar="TARGET",
        help="release the other targets although TARGET failed (left out, recorded); repeatable",
    )


def run(args) -> int:
    import pipeline
    from pipeline import report
    from pipeline.errors import UsageError
    from pipeline.releases.pack import VERSION_RE, load_bench, source_date_epoch
    from targets import resolve

    # Every argument checked before anything is built.
    if not VERSION_RE.match(args.release_version):
        raise UsageError(f"--version must look like X.Y.Z (e.g. 1.2.0 or 1.2.0-rc.1), not '{args.release_version}'")
    source_date_epoch()
    for spec in args.allow_failed:
        resolve(spec)
    load_config(args)
    if args.bench:  # its rows now; whose model they measured once the build (maybe the one in --out) is known
        load_bench(args.bench, None)
    pipeline.api.check_writable(args.dist, "release folder", "--dist")
    b = pipeline.built(**build_kwargs(args))
    bench = load_bench(args.bench, b.name) if args.bench else None
    folder = pipeline.release(
        b,
        args.release_version,
        dist=args.dist,
        bench=bench,
        allow_failed=args.allow_failed,
        force=args.force,
        bundle=[a.strip() for a in args.bundle.split(",") if a.strip()],
    )
    rel = json.loads((folder / "manifest.json").read_text())["release"]
    archives = [{"target": t, **a} for t, a in rel["archives"].items()]
    archives += [
        {"target": t, **b, "vectors": a["vectors"], "runtime": f"{a['runtime']} (native, {b['arch']})"}
        for t, a in rel["archives"].items()
        for b in a.get("bundles", [])
    ]
    print(
        report.table(
            archives,
            [
                ("target", "target"),
                ("archive", "archive"),
                ("bytes", "bytes"),
                ("sha256", "sha256"),
                ("vectors", "test vectors"),
                ("runtime", "runtime"),
            ],
        )
    )
    for e in rel["excluded"]:
        print(f"warning: {e['target']} left out ({e['status'].replace('_', ' ')}: {e['reason']})", file=sys.stderr)
    print(f"release: {folder}")
    return 0
