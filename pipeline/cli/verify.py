"""`verify PATH`: check a release folder or one archive (see pipeline/releases/verify.py)."""

from __future__ import annotations

from pathlib import Path

HELP = "check a release folder or archive: checksums, safe contents, each artifact replaying its test vectors"


def add_arguments(p) -> None:
    p.add_argument("path", type=Path, help="a release folder (DIST/<model>-<version>) or one .tar.gz of it")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a runtime may take to replay one archive (default: 120)"
    )


def run(args) -> int:
    import pipeline
    from pipeline import report
    from pipeline.errors import VerificationError
    from pipeline.releases.verify import COLUMNS

    result = pipeline.verify_release(args.path, timeout=args.timeout)
    rows = result.rows
    print(report.table(rows, COLUMNS))
    failed = [r for r in rows if r["result"] == "FAIL"]
    if failed:
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise VerificationError(
            f"{args.path}: {len(failed)} of {len(rows)} checks failed: "
            + "; ".join(f"{r['file']}: {r['detail']}" for r in failed[:3])
            + more
        )
    print(f"verified: {args.path} ({len(rows)} checks)")
    return 0
