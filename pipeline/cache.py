"""Content-checked stage cache.

An entry is a folder `<root>/<stage>/<key>/` holding the stage's output files and `entry.json`
(the files' sha256 and the stage's metadata). The key hashes the stage name and the hash of its code, its
parameters, its inputs' keys and the tool versions, so a changed anything gives a new key.
Entries are built in a temp folder and renamed into place: a killed build leaves only temp
folders, which are never read. Before reuse every file is re-hashed; a damaged entry is discarded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipeline.config import canonical_json
from pipeline.util import sha256_file

TOOLS = (
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
    "numpy",
    "scikit-learn",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "openvino",
    "nncf",
)


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def stage_key(stage: str, code: str, params: dict, inputs: dict[str, str], tools: dict[str, str]) -> str:
    blob = canonical_json({"stage": stage, "code": code, "params": params, "inputs": inputs, "tools": tools})
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    stage: str
    key: str
    path: Path
    meta: dict
    reused: bool

    def file(self, name: str) -> Path:
        return self.path / name


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, stage: str, key: str) -> Path:
        return self.root / stage.replace(":", "-") / key

    def get(self, stage: str, key: str) -> Entry | None:
        d = self._dir(stage, key)
        try:
            record = json.loads((d / "entry.json").read_text())
            for name, digest in record["files"].items():
                if sha256_file(d / name) != digest:
                    raise ValueError(f"{name} does not match its recorded hash")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._discard(d, f"damaged cache entry {d}: {e}")
            return None
        return Entry(stage, key, d, record["meta"], reused=True)

    def put(self, stage: str, key: str, produce) -> Entry:
        """Run `produce(folder) -> meta` in a temp folder, then publish it atomically."""
        final = self._dir(stage, key)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            meta = produce(tmp) or {}
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            record = {"stage": stage, "key": key, "created": time.time(), "files": files, "meta": meta}
            (tmp / "entry.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
            try:
                os.rename(tmp, final)
            except OSError:
                # Another build published the same key first; its entry is as good as ours.
                if self.get(stage, key) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(stage, key, final, meta, reused=False)

    def _discard(self, d: Path, why: str) -> None:
        import sys

        print(f"warning: {why}; discarding it", file=sys.stderr)
        trash = d.parent / f".trash-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(d, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)
