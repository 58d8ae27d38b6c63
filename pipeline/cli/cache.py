"""`python -m pipeline cache ls|prune`: see what the stage cache holds and give the space back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

HELP = "list or prune the stage cache of a build folder"
# Entries and leftovers younger than this are kept by prune: a build may be writing them right now.
GRACE_S = 3600


def add_arguments(p) -> None:
    p.add_argument("action", choices=["ls", "prune"])
    p.add_argument("--out", type=Path, default=Path("build"), help="build folder whose cache to use (default: build/)")
    p.add_argument("--all", action="store_true", help="prune: remove every entry, used or not")


def referenced(out: Path) -> set[str]:
    """Stage keys that some manifest in OUT points at: what the current artifacts were made from."""
    keys = set()
    # A sweep's variants keep their manifests in OUT/sweep/<variant>/<model>/ and share OUT/.cache.
    for m in [*out.glob("*/manifest.json"), *out.glob("sweep/*/*/manifest.json")]:
        try:
            manifest = json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        keys.update(s.get("key") for s in manifest.get("stages", {}).values())
        for a in manifest.get("artifacts", []):
            keys.update((a.get("stage_keys") or {}).values())
    return keys


def entries(root: Path):
    """(stage, folder, is_leftover) for every folder in the cache."""
    for stage in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for d in sorted(stage.iterdir()):
            if d.is_dir():
                yield stage.name, d, d.name.startswith((".tmp-", ".trash-"))


def run(args) -> int:
    from pipeline import report
    from pipeline.util import folder_bytes

    root = args.out / ".cache"
    used = referenced(args.out)
    now = time.time()
    rows, freed, removed = [], 0, 0
    for stage, d, leftover in entries(root):
        size, age = folder_bytes(d), now - d.stat().st_mtime
        state = "leftover" if leftover else "used" if d.name in used else "unused"
        if args.action == "ls":
            rows.append({"stage": stage, "key": d.name[:16], "mb": size / 1e6, "age_h": age / 3600, "state": state})
        elif args.all or (state != "used" and age > GRACE_S):
            shutil.rmtree(d, ignore_errors=True)
            freed += size
            removed += 1
    if args.action == "ls":
        print(
            report.table(
                rows, [("stage", "stage"), ("key", "key"), ("mb", "MB"), ("age_h", "age (h)"), ("state", "state")]
            )
            if rows
            else f"{root}: empty"
        )
        print(f"total {sum(r['mb'] for r in rows):.1f} MB in {len(rows)} entries")
    else:
        kept = (
            ""
            if args.all
            else (f" (kept what the manifests in {args.out} use, and anything younger than {GRACE_S // 60} min)")
        )
        print(f"removed {removed} entries, freed {freed / 1e6:.1f} MB{kept}")
    return 0
