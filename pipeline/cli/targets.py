"""`targets`: the target registry as a table."""

from __future__ import annotations

HELP = "list the deployment targets"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from pipeline import report
    from targets import NOT_OFFERED, TARGETS

    rows = [
        {
            "name": t.name,
            "quantization": t.quantization,
            "from": t.source,
            "runtime": t.runner,
            "description": t.description,
        }
        for t in TARGETS.values()
    ]
    print(
        report.table(
            rows,
            [
                ("name", "target"),
                ("quantization", "quantization"),
                ("from", "made from"),
                ("runtime", "runner"),
                ("description", "contains"),
            ],
        )
    )
    for name, why in NOT_OFFERED.items():
        print(f"\nnot offered: {name}: {why}")
    return 0
