"""`config`: every key with its default, or a file checked."""

from __future__ import annotations

from pathlib import Path

HELP = "print the config reference with every default"


def add_arguments(p) -> None:
    p.add_argument("--check", type=Path, metavar="FILE", help="validate FILE and print its effective config")


def run(args) -> int:
    from pipeline import config

    if args.check:
        import json

        print(json.dumps(config.load(args.check).as_dict(), indent=2))
    else:
        print(config.reference())
    return 0
