"""The house in figures: files and lines per file under targets/ and pipeline/, and the longest functions.

    python scripts/house.py [ROOT] [--top N]

Lines are physical lines; a function's length runs from its `def` (decorators included) to its last line,
nested functions counted inside their parent and listed on their own too.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGES = ("targets", "pipeline")


def functions(path: Path, rel: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.end_lineno - start + 1, f"{rel}:{node.lineno} {node.name}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=Path(__file__).resolve().parent.parent, type=Path)
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args()
    found = []
    for package in PACKAGES:
        files = sorted((args.root / package).rglob("*.py"))
        sizes = {str(f.relative_to(args.root)): len(f.read_text().splitlines()) for f in files}
        print(f"## {package}/: {len(files)} files, {sum(sizes.values())} lines")
        for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
            print(f"{n:6d}  {name}")
        for f in files:
            found += functions(f, str(f.relative_to(args.root)))
    print(f"\n## the {args.top} longest functions")
    for n, where in sorted(found, key=lambda t: -t[0])[: args.top]:
        print(f"{n:6d}  {where}")


if __name__ == "__main__":
    main()
