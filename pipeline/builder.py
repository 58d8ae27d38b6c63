"""`build`: data -> train -> prune -> QAT -> export and verify each target -> manifest.

Each step is a node of the stage graph (graph.py), cached (cache.py). A node whose key is already in the
cache is reused and says so; only what changed runs. One target failing to export or verify never stops the
others: it gets a status and a reason in the manifest and the summary.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline import graph, report
from pipeline.config import Config
from pipeline.errors import BudgetError, ConversionError
from pipeline.graph import STAGES, Context, Entry
from pipeline.manifest import write_manifest
from pipeline.util import atomic_copy, folder_bytes, gzip_size, locked, sha256_file
from pipeline.verdict import Status
from targets.progress import reporting


class Builder(Context):
    """Runs the graph (graph.STAGES): a node whose key is in the cache is reused and says so, the others run."""

    def __init__(self, cfg: Config, out: Path, log=print, cache: Path | None = None, progress: bool = True):
        """`cache`: another stage cache than OUT/.cache (a sweep's variants share one). `progress`: calibration
        bars and conversion steps on stderr (the API's callers without a `log` see none)."""
        super().__init__(cfg, cache or Path(out) / ".cache")
        self.out, self.log, self.progress = Path(out), log, progress

    def stage(self, name: str, target=None) -> Entry:
        """The entry of one node of the graph: from the cache, or run now."""
        s = STAGES[name]
        node, key = s.node(target), graph.key(self, s, target)
        entry = self.cache.get(node, key)
        if entry is not None:
            self.log(f"{node:<24} cached ({key[:12]})")
        else:
            t0 = time.perf_counter()
            self.log(f"{node:<24} running ({key[:12]})")

            def timed(folder):
                meta = s.run(self, target, folder) or {}
                return {**meta, "seconds": round(time.perf_counter() - t0, 2)}

            entry = self.cache.put(node, key, timed)
            self.log(f"{node:<24} done in {entry.meta['seconds']:.1f} s")
        self.stages[node] = entry
        return entry

    # -- the float and QAT models ------------------------------------------------------------

    def models(self, need_qat: bool) -> None:
        cfg, d = self.cfg, self.stage("data")
        if self.several_inputs():
            self.stage("original")
            return
        try:
            train = self.stage("train")
        except ConversionError as e:
            if self.interface() is None:
                raise
            # onnx-*, openvino-* and ncnn-* are made from the user's own graph and never need Keras (interface_route).
            self.conversion_error = str(e)
            self.log(f"warning: {e}; onnx-*, openvino-* and ncnn-* are made from your file, the other targets fail")
            self.stage("original")
            return
        self.log(report.original_line(train.meta, d.meta))
        prune = self.stage("prune")
        self.log(report.prune_summary(train.meta, prune.meta))
        self.within_budget("prune", prune.meta, train.meta, report.prune_advice(cfg, prune.meta))
        if need_qat:
            qat = self.stage("qat")
            if qat.meta.get("vs_original"):
                self.log(report.stage_line("qat", qat.meta, train.meta))
                advice = "lower qat.learning_rate or qat.epochs, or set qat.epochs = 0 for post-training quantization"
                try:
                    self.within_budget("qat", qat.meta, train.meta, advice)
                except BudgetError as e:
                    if not self.cfg.ptq.choose:
                        raise
                    # Each int8 target also makes post-training int8 of the pruned model and keeps the closer file.
                    self.log(f"warning: {e}; the int8 targets fall back to post-training int8 where it agrees better")

    def within_budget(self, name: str, meta: dict, original: dict, advice: str) -> None:
        """A stage whose model already breaks the budget against the original stops the build here."""
        from pipeline.gate import budget_reasons

        figures = {**meta.get("vs_original", {}), "reference_accuracy": original.get("accuracy")}
        if figures.get("nonfinite"):  # one line naming the stage, the output and how many samples
            raise BudgetError(f"{figures['nonfinite']}; lower {name}.learning_rate")
        reasons = budget_reasons(figures, self.cfg.build)
        if reasons:
            what = {"prune": "pruned", "qat": "quantization-aware trained"}[name]
            raise BudgetError(
                f"{name}: the {what} model already breaks the build's budget, before any artifact: "
                f"{'; '.join(reasons)} ({self.cfg.data.path or 'built-in data'}, test split); {advice}"
            )

    # -- targets -----------------------------------------------------------------------------

    def publish(self, target, artifact: Entry, result: dict) -> dict:
        # Every file of the artifact (an OpenVINO IR is .xml + .bin): bytes and gzip are their sums,
        # sha256 is of their bytes in `files` order (`cat model.xml model.bin | sha256sum`).
        dests = [self.out / self.cfg.name / target.name / name for name in target.files]
        dests[0].parent.mkdir(parents=True, exist_ok=True)
        for name, dest in zip(target.files, dests):
            atomic_copy(artifact.file(name), dest)
        return {
            "target": target.name,
            "path": str(dests[0].relative_to(self.out)),
            "files": target.files,
            "bytes": sum(d.stat().st_size for d in dests),
            "gzip_bytes": sum(gzip_size(d) for d in dests),
            "sha256": sha256_file(*dests),
            **result,
            "build_seconds": round(artifact.meta.get("seconds", 0.0) + result.get("seconds", 0.0), 2),
            "made_from": artifact.meta.get("source"),
            "method": artifact.meta.get("method"),
            **({"ptq": artifact.meta["ptq"]} if "ptq" in artifact.meta else {}),  # what PTQ chose, and why
            **({"qat_or_ptq": artifact.meta["qat_or_ptq"]} if "qat_or_ptq" in artifact.meta else {}),
            **interface_fields(artifact.meta, self.stages["data"].meta["preprocessing"]),
            "fallbacks": self.fallbacks(target),
            "stage_keys": {"export": artifact.key, "verify": self.stages[f"verify:{target.name}"].key},
        }

    def fallbacks(self, target) -> list[str]:
        """What could not be done as asked on the way to this artifact (recorded, never silent)."""
        stages = ["original", "train", "prune"] + (["qat"] if target.needs_qat else [])
        return [f for s in stages if s in self.stages for f in self.stages[s].meta.get("fallbacks", [])]

    def run(self, targets) -> dict:
        started = time.time()
        self.models(need_qat=any(t.needs_qat for t in targets))
        done = []
        for t in targets:
            try:
                # Targets print nothing themselves: their conversion steps reach stderr only if progress is wanted.
                with reporting(report.step if self.progress else None):
                    artifact = self.stage("export", t)
            except Exception as e:
                done.append((t, None, _one_line(e)))
                continue
            done.append((t, artifact, self.stage("verify", t).meta))
        # Two builds into one folder: the cache is safe by itself (atomic renames); publishing and
        # the manifest's read-merge-write are serialised so neither loses the other's artifacts.
        with locked(self.out / self.cfg.name / ".lock"):
            rows = []
            for t, artifact, result in done:
                if artifact is None:
                    clean_target_dir(self.out, self.cfg.name, t.name)
                    rows.append(failed_build(t, result))
                else:
                    rows.append(self.publish(t, artifact, result))
            manifest = write_manifest(self, rows, started)
        self.log(self.storage())
        return manifest

    def storage(self) -> str:
        new = [e for e in self.stages.values() if not e.reused]
        added = sum(folder_bytes(e.path) for e in new)
        return (
            f"cache: stored {added / 1e6:.1f} MB in {len(new)} new entries; "
            f"{self.cache.root} holds {folder_bytes(self.cache.root) / 1e6:.1f} MB "
            f"(`python -m pipeline cache ls|prune --out {self.out}`)"
        )


def interface_fields(export_meta: dict, preprocessing: dict) -> dict:
    """What the manifest row says of the artifact's interface: the layout its inputs take, and how it maps
    to the pipeline's arrays (bench, release and verify feed each artifact in its own layout)."""
    return {
        "input_layout": export_meta.get("input_layout") or preprocessing.get("layout"),
        "route": export_meta.get("route"),
        "input_perms": export_meta.get("input_perms"),
        "output_perms": export_meta.get("output_perms"),
    }


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def failed_build(target, reason: str) -> dict:
    return {
        "target": target.name,
        "status": Status.FAILED_BUILD,
        "reason": reason,
        "expected_quantization": target.quantization,
    }


def clean_target_dir(out: Path, model: str, target: str) -> None:
    shutil.rmtree(out / model / target, ignore_errors=True)
