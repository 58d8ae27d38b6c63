"""`build`: run the stages, verify every artifact, print the table."""

from __future__ import annotations

import sys

from pipeline.cli.options import add_build_options, add_device_arguments, build_kwargs, device_options, log
from pipeline.verdict import Status

HELP = "build and verify artifacts"
DESCRIPTION = (
    "Run the stages (train, prune, QAT, export, verify), reusing cached stages, and write "
    "OUT/<model>/<target>/ and OUT/<model>/manifest.json."
)


def add_arguments(p) -> None:
    add_build_options(p)
    p.add_argument(
        "--verify-on",
        metavar="DEVICE",
        help="also load each artifact on DEVICE (emu:rpi4, ssh://user@host; "
        "comma list) and compare its outputs with x86's: recorded as arm_check in the manifest",
    )
    add_device_arguments(p)


def summary(rows: list[dict]) -> str:
    """The table; for a model with several heads, each artifact's headline: its worst head by its own measure."""
    from pipeline import report

    return report.table(*report.artifact_columns(rows))


def run(args) -> int:
    import pipeline
    from pipeline import report
    from pipeline.devices.verify_on import TABLE_COLUMNS, verify_devices

    # A board that is not set up or not reachable: one line, before anything is built.
    boards = verify_devices(args.verify_on, **device_options(args))
    b = pipeline.build(**build_kwargs(args))
    rows = [a.entry for a in b.artifacts.values()]
    print(summary(rows))
    checks = pipeline.verify_on(b, boards, log=log) if boards else []
    if checks:
        print(report.table(checks, TABLE_COLUMNS))
    print(f"manifest: {b.manifest_path}")
    failed = [a for a in rows if a["status"] != Status.OK]
    for a in failed:
        print(f"error: {a['target']} {a['status'].replace('_', ' ')}: {a['reason']}", file=sys.stderr)
    arm_failed = [c for c in checks if c["status"] != Status.OK]
    for c in arm_failed:
        print(f"error: {c['target']} fails on {c['device']}: {c['reason']}", file=sys.stderr)
    return 1 if failed or arm_failed else 0
