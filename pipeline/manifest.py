"""build/<model>/manifest.json: what was built, from what, and how each artifact verified."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline import __version__
from pipeline.isa import x86_isa
from pipeline.util import atomic_write_json

SCHEMA = 1


def read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_manifest(builder, rows: list[dict], started: float) -> dict:
    cfg = builder.cfg
    path = builder.out / cfg.name / "manifest.json"
    # Artifacts of earlier builds of the same model config stay listed (e.g. a second target).
    old = read(path) or {}
    keep, old_stages = [], {}
    stages = {
        name: {"key": e.key, "reused": e.reused, **{k: v for k, v in e.meta.items() if k != "preprocessing"}}
        for name, e in builder.stages.items()
        if ":" not in name
    }
    if old.get("config_hash") == cfg.digest():
        built = {r["target"] for r in rows}
        keep = [a for a in old.get("artifacts", []) if a["target"] not in built]
        # A build of a subset (e.g. bench of one ONNX target) runs no QAT: the kept artifacts still came from it.
        old_stages = old.get("stages", {})
        # Checks added after the build (arm_check) stay with an artifact whose bytes did not change.
        previous = {a["target"]: a for a in old.get("artifacts", [])}
        for r in rows:
            o = previous.get(r["target"], {})
            if "arm_check" in o and o.get("sha256") == r.get("sha256"):
                r.setdefault("arm_check", o["arm_check"])
    stages = {**old_stages, **stages}
    order = {name: i for i, name in enumerate(_registry_order())}
    artifacts = sorted(keep + rows, key=lambda a: order.get(a["target"], 99))
    manifest = {
        "schema": SCHEMA,
        "model": cfg.name,
        "model_version": cfg.model.version,
        "pipeline_version": __version__,
        "config_hash": cfg.digest(),
        "config": cfg.as_dict(),
        "seed": cfg.build.seed,
        "labels": list(cfg.model.labels or builder.stages["data"].meta["labels"]),
        "preprocessing": builder.stages["data"].meta["preprocessing"],
        "stages": stages,
        "tools": builder.tools,
        "x86_isa": x86_isa(),  # this build's CPU; each int8 row has the one its figures ran on (a cached row's may differ)
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "artifacts": artifacts,
    }
    atomic_write_json(path, manifest)
    return manifest


def _registry_order():
    from targets import TARGETS

    return list(TARGETS)
