"""`build`: data -> train -> prune -> QAT -> export and verify each target -> manifest.

Each step is a cached stage (see cache.py). A step whose key is already in the cache is reused
and says so; only what changed runs. One target failing to export or verify never stops the
others: it gets a status and a reason in the manifest and the summary.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import report
from pipeline.cache import Cache, Entry, stage_key, tool_versions
from pipeline.config import Config
from pipeline.data import Dataset
from pipeline.errors import BudgetError, ConversionError, UsageError
from pipeline.gate import verify_artifact
from pipeline.isa import x86_isa
from pipeline.manifest import write_manifest
from pipeline.stages import QAT_WEIGHTS, STAGES
from pipeline.util import atomic_copy, folder_bytes, gzip_size, locked, sha256_file


class Builder:
    def __init__(self, cfg: Config, out: Path, log=print, cache: Path | None = None):
        """`cache`: another stage cache than OUT/.cache (a sweep's variants share one)."""
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.cache = Cache(cache or self.out / ".cache")
        self.tools = tool_versions()
        self.seed = cfg.build.seed
        self.stages: dict[str, Entry] = {}
        self._dataset: Dataset | None = None
        self._interface: dict | None = None
        self.conversion_error: str | None = None
        """Why onnx2tf could not convert the user's ONNX model: no Keras stages, the targets that need them fail."""

    def stage(self, name: str, params: dict, inputs: dict[str, str], produce, code=()) -> Entry:
        """`code`: source files beyond STAGES[kind].code that decide this stage's output (a target's module)."""
        key = self.key(name, params, inputs, code)
        entry = self.cache.get(name, key)
        if entry is not None:
            self.log(f"{name:<24} cached ({key[:12]})")
        else:
            t0 = time.perf_counter()
            self.log(f"{name:<24} running ({key[:12]})")

            def timed(folder):
                meta = produce(folder) or {}
                return {**meta, "seconds": round(time.perf_counter() - t0, 2)}

            entry = self.cache.put(name, key, timed)
            self.log(f"{name:<24} done in {entry.meta['seconds']:.1f} s")
        self.stages[name] = entry
        return entry

    def key(self, name: str, params: dict, inputs: dict[str, str], code=()) -> str:
        return stage_key(name, code_hash([*STAGES[name.split(":")[0]].code, *code]), params, inputs, self.tools)

    # -- the float and QAT models ------------------------------------------------------------

    def data(self) -> Entry:
        from pipeline import data as data_mod

        model_input = (self.interface() or {"inputs": [None]})["inputs"][0]

        def produce(folder):
            if self.several_inputs():
                ds = data_mod.load_several(self.cfg.data, self.seed, self.interface()["inputs"])
            else:
                ds = data_mod.load(self.cfg.data, self.seed, model_input)
            for a in Dataset.ARRAYS:
                arr = getattr(ds, a)
                if isinstance(arr, dict):  # one array per input of a model with several
                    np.savez(folder / f"{a}.npz", **arr)
                elif arr is not None:
                    np.save(folder / f"{a}.npy", arr)
            return {
                "labels": list(ds.labels),
                "preprocessing": ds.preprocessing,
                "labelled": ds.labelled,
                "train_samples": len(_first(ds.x_train)),
                "test_samples": len(_first(ds.x_test)),
                "input_shape": ds.preprocessing["input_shape"],
            }

        source = {"path_sha256": content_hash(self.cfg.data.path)} if self.cfg.data.path else {}
        return self.stage(
            "data",
            {
                "data": self.cfg.section("data"),
                "seed": self.seed,
                **source,
                **({"model_inputs": self.interface()["inputs"]} if model_input else {}),
            },
            {},
            produce,
        )

    def several_inputs(self) -> bool:
        """A user's ONNX model with more than one input: no Keras conversion (see interface_export)."""
        return len((self.interface() or {"inputs": [None]})["inputs"]) > 1

    def reference(self) -> Entry:
        """The stage whose reference outputs (the original model's) every artifact is compared with: train, or
        for a model with no Keras stages (several inputs, or one onnx2tf cannot convert) `original`, the user's
        file run in onnxruntime."""
        return self.stages["train"] if "train" in self.stages else self.stages["original"]

    def interface(self) -> dict | None:
        """The user's ONNX model's interface (names, shapes, layout), `model.onnx_input_shape` applied; else None."""
        from pipeline import interface

        path = self.cfg.model.path
        if not path or not path.lower().endswith(".onnx"):
            return None
        if self._interface is None:
            self._interface = interface.onnx_interface(path)
            fixed = self.cfg.model.onnx_input_shape
            if fixed:
                self._interface["inputs"][0]["shape"] = list(fixed)
        return self._interface

    def dataset(self) -> Dataset:
        if self._dataset is None:
            e = self.stages["data"]
            arrays = {a: _load_array(e, a) for a in Dataset.ARRAYS}
            labels = tuple(self.cfg.model.labels) or tuple(e.meta["labels"])
            self._dataset = Dataset(**arrays, labels=labels, preprocessing=e.meta["preprocessing"])
        return self._dataset

    def models(self, need_qat: bool) -> None:
        cfg, d = self.cfg, self.data()
        if self.several_inputs():
            self.original()
            return
        try:
            train = self.train()
        except ConversionError as e:
            if self.interface() is None:
                raise
            # onnx-* and openvino-* are made from the user's own graph and never need Keras (interface_route).
            self.conversion_error = str(e)
            self.log(f"warning: {e}; onnx-* and openvino-* are made from your file, the other targets fail")
            self.original()
            return
        self.log(report.original_line(train.meta, d.meta))
        prune = self.prune()
        self.log(report.prune_summary(train.meta, prune.meta))
        self.within_budget("prune", prune.meta, train.meta, report.prune_advice(cfg, prune.meta))
        if need_qat:
            qat = self.qat()
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

    # One method per stage (after data): each reads its inputs from self.stages, so a sweep can run any one of them.

    def original(self) -> Entry:
        from pipeline.interface_export import original_outputs

        cfg, d = self.cfg, self.stages["data"]
        source = {"path_sha256": content_hash(cfg.model.path)} if cfg.model.path else {}
        why = self.conversion_error or "several inputs"
        return self.stage(
            "original",
            {"model": source, "why": why},
            {"data": d.key},
            lambda f: original_outputs(cfg.model.path, d.path, self.interface(), self.dataset().labels, why, f),
        )

    def train(self) -> Entry:
        from pipeline import stages

        cfg, d = self.cfg, self.stages["data"]
        source = {"path_sha256": content_hash(cfg.model.path)} if cfg.model.path else {}
        return self.stage(
            "train",
            {"model": self.model_params(), "train": cfg.section("train"), "seed": self.seed, **source},
            {"data": d.key},
            lambda f: stages.train(self.dataset(), cfg, self.seed, f, self.cache.root),
        )

    def model_params(self) -> dict:
        """The [model] keys that make the trained model: how its heads are measured (heads, metric) is not."""
        return {k: v for k, v in self.cfg.section("model").items() if k not in HEAD_KEYS}

    def head_params(self) -> dict:
        """How the heads are measured, in the keys of the stages that measure them (when set)."""
        keys = {k: v for k, v in self.cfg.section("model").items() if k in HEAD_KEYS and v}
        if self.cfg.model.task != "other":  # how a detector's boxes are read and gated
            keys["detect"] = [self.cfg.section("detect"), self.cfg.build.min_box_f1]
        return keys

    def heads(self):
        """The original model's output names and kinds, and the user's measure (stages.heads)."""
        from pipeline import stages

        return stages.heads(self.cfg, self.reference().path)

    def prune(self) -> Entry:
        from pipeline import stages

        cfg, d, train, b = self.cfg, self.stages["data"], self.stages["train"], self.cfg.build
        # `strict` is in the keys of the stages that may fall back: a strict build must re-decide.
        # The budget decides what "auto" picks: it is in the prune key.
        return self.stage(
            "prune",
            {
                "prune": cfg.section("prune"),
                "batch_size": cfg.train.batch_size,
                "seed": self.seed,
                "strict": b.strict,
                "budget": [b.max_accuracy_drop, b.min_agreement, b.min_cosine],
                **self.head_params(),
            },
            {"model": train.key, "data": d.key},
            lambda f: stages.prune(self.dataset(), cfg, self.seed, train.file("model.h5"), train.path, f),
        )

    def qat(self) -> Entry:
        from pipeline import stages

        cfg, d, train, prune = self.cfg, self.stages["data"], self.stages["train"], self.stages["prune"]
        return self.stage(
            "qat",
            {
                "qat": cfg.section("qat"),
                "batch_size": cfg.train.batch_size,
                "seed": self.seed,
                "strict": cfg.build.strict,
                **self.head_params(),
            },
            {"model": prune.key, "original": train.key, "data": d.key},
            lambda f: stages.qat(self.dataset(), cfg, self.seed, prune.file("model.h5"), prune.meta, train.path, f),
        )

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

    def artifact_metadata(self, target) -> dict:
        d = self.stages["data"].meta
        return {
            "model": self.cfg.name,
            "version": self.cfg.model.version,
            "target": target.name,
            "labels": list(self.cfg.model.labels or d["labels"]),
            "preprocessing": d["preprocessing"],
            "config_hash": self.cfg.digest(),
        }

    def ptq_settings(self):
        """What the int8 targets without QAT choose their post-training method with (None: one method each),
        scored against the original model's outputs: the validation split (REFERENCE_VAL_OUTPUTS), else
        training samples that do not calibrate (TEACHER_OUTPUTS), else the calibration ones against the
        float model."""
        from pipeline.stages import REFERENCE_VAL_OUTPUTS, TEACHER_OUTPUTS, load_outputs
        from targets.ptq import Settings

        p = self.cfg.ptq
        if not p.choose:
            return None
        ds, ref, n = self.dataset(), self.reference(), p.validation_samples
        if ds.x_val is not None and ref.file(REFERENCE_VAL_OUTPUTS).exists():
            return Settings(
                ds.x_val[:n], p.mixed, p.budget, [o[:n] for o in load_outputs(ref.file(REFERENCE_VAL_OUTPUTS))]
            )
        cal = {x.tobytes() for x in ds.x_cal}
        keep = [i for i, x in enumerate(ds.x_train) if x.tobytes() not in cal][:n]
        if keep and ref.file(TEACHER_OUTPUTS).exists():
            return Settings(
                ds.x_train[keep], p.mixed, p.budget, [o[keep] for o in load_outputs(ref.file(TEACHER_OUTPUTS))]
            )
        return Settings(ds.x_cal, p.mixed, p.budget)

    def interface_route(self, target) -> str | None:
        """How an ONNX/OpenVINO target of a user's ONNX model keeps its interface: `original` (made from the
        user's file itself, when the Keras side changed nothing: no fine-tuning, nothing pruned) or `restored`
        (the converted model, given the original names and layout back). None for every other model.
        What decides is whether a weight changed, not what was asked: a pruning that found nothing to prune
        leaves the user's graph as it was."""
        if target.family not in ("onnx", "openvino") or self.interface() is None:
            return None
        if "train" not in self.stages:  # no Keras stages (reference): nothing could change
            return "original"
        train, prune = self.stages["train"].meta, self.stages["prune"].meta
        changed = (train.get("source_model") or {}).get("fine_tuned") or prune.get("weights_changed")
        return "restored" if changed else "original"

    def export(self, target) -> Entry:
        from pipeline import report, stages

        if target.family in ("onnx", "openvino") and target.options.get("mode") == "int8":
            # Which CPUs the file's int8 arithmetic must be exact on ([ptq] deploy_cpu): part of its cache key.
            target = dataclasses.replace(target, options={**target.options, "deploy_cpu": self.cfg.ptq.deploy_cpu})
        route = self.interface_route(target)
        if self.conversion_error and not route:
            raise ConversionError(f"{target.name} is made from the Keras conversion: {self.conversion_error}")
        if self.several_inputs() and not route:
            raise UsageError(
                f"{target.name} is made through the Keras conversion, which takes single-input models "
                f"only; this model has inputs {[p['name'] for p in self.interface()['inputs']]}"
            )
        # A QAT stage that fell back to post-training quantization left no model: use the float one.
        qat_ran = target.needs_qat and self.stages.get("qat") and self.stages["qat"].meta.get("method") == "qat"
        use_qat = qat_ran and target.source == "qat"
        src_name = "qat" if qat_ran else "prune"
        src = self.stages.get(src_name) or self.reference()
        # The QAT stage's weights in the float model (stages.QAT_WEIGHTS) for the quantizers that take a float graph.
        model_file = QAT_WEIGHTS if qat_ran and not use_qat else "model.h5"
        metadata = self.artifact_metadata(target)
        if route:
            metadata["input_layout"] = ",".join(
                dict.fromkeys(p.get("layout", "N...") for p in self.interface()["inputs"])
            )

        def produce(folder):
            calib = self.dataset().x_cal
            progress = lambda i, n: report.progress("calibrate", i, n)
            if route:
                from pipeline.interface_export import export_keeping_interface

                return export_keeping_interface(
                    self, target, route, src.file(model_file), calib, folder / target.filename, metadata, progress
                )
            stages.tf_setup(self.seed)
            ptq = self.ptq_settings()

            def make(dest: Path, name: str, file: str, qat: bool) -> dict:
                model = stages.load_model(self.stages.get(name, src).file(file), qat=qat)
                kwargs = {} if qat else {"ptq": ptq}
                choice = target.module.export(
                    target, model, calib, dest / target.filename, metadata, progress=progress, **kwargs
                )
                method = "qat" if qat else "ptq" if target.needs_qat else "convert"
                return {"source": name, "method": method, **({"ptq": choice} if choice else {})}

            made = make(folder, src_name, model_file, use_qat)
            if not (qat_ran and ptq is not None and ptq.reference is not None):
                return made
            # QAT can lose to post-training int8 of the model it started from (a pretrained model fine-tuned on
            # a few hundred unlabelled samples): both are made, the one closer to the original is kept.
            from targets.ptq import score_file

            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                other = make(Path(tmp), "prune", "model.h5", False)
                scores = {
                    made["source"]: score_file(target.family, folder / target.filename, ptq),
                    "prune": score_file(target.family, Path(tmp) / target.filename, ptq),
                }
                closer = {k: v["closeness"] if v["closeness"] is not None else -np.inf for k, v in scores.items()}
                if closer["prune"] > closer[made["source"]]:
                    for f in target.files:
                        os.replace(Path(tmp) / f, folder / f)
                    made = other
            made["qat_or_ptq"] = {
                "scores": scores,
                "chosen": made["source"],
                "why": "outputs closer (mean cosine) to the original model's on the validation split",
            }
            return made

        params = {
            "target": target.name,
            "options": target.options,
            "metadata": metadata,
            **({"route": route} if route else {}),
        }
        return self.stage(
            f"export:{target.name}",
            params,
            {"model": src.key, "data": self.stages["data"].key},
            produce,
            code=[
                _source(target.module),
                *(["pipeline/interface.py", "pipeline/interface_export.py"] if route else []),
            ],
        )

    def verify(self, target, artifact: Entry) -> Entry:
        from pipeline.stages import REFERENCE_OUTPUTS

        ref, d = self.reference(), self.stages["data"]  # the original model: every figure's reference

        # A post-training choice that kept layers in float ([ptq] mixed) must read back as int8-mixed, never int8.
        expected = "int8-mixed" if artifact.meta.get("ptq", {}).get("mixed") else target.quantization

        # int8 kernels differ by ISA (pipeline/isa.py): an int8 row's figures say which CPU they ran on, and a
        # cache moved to another CPU verifies them again.
        isa = {"x86_isa": x86_isa()} if expected.startswith("int8") else {}

        def produce(folder):
            result = verify_artifact(
                target,
                artifact.file(target.filename),
                d.path,
                ref.file(REFERENCE_OUTPUTS),
                self.cfg.build,
                ref.meta.get("accuracy"),
                perms=artifact.meta,
                expected=expected,
                heads=self.heads(),
            )
            return {**result, **isa}

        b = self.cfg.build
        params = {
            "target": target.name,
            "quantization": expected,
            "runner": target.runner,
            "gate": [b.max_accuracy_drop, b.min_agreement, b.min_cosine],
            **self.head_params(),
            **({"run_config": target.run_config} if target.run_config else {}),
            **({"x86_isa": isa["x86_isa"]["label"]} if isa else {}),
        }
        return self.stage(
            f"verify:{target.name}",
            params,
            {"artifact": artifact.key, "reference": ref.key, "data": d.key},
            produce,
            code=[
                _source(target.module),
                *(f"targets/runners/{r}" for r in (target.runner, target.legacy_runner) if r),
            ],
        )

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
                artifact = self.export(t)
            except Exception as e:
                done.append((t, None, _one_line(e)))
                continue
            done.append((t, artifact, self.verify(t, artifact).meta))
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


ROOT = Path(__file__).resolve().parent.parent
HEAD_KEYS = ("heads", "metric", "task")


def _source(module) -> str:
    return str(Path(module.__file__).resolve().relative_to(ROOT))


def code_hash(files) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(f.encode() + b"\0" + (ROOT / f).read_bytes())
    return h.hexdigest()[:16]


def content_hash(path: str) -> str:
    """sha256 of a file, or of a folder's files and names: a changed input must give a new key."""
    import hashlib

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + sha256_file(f).encode())
        return h.hexdigest()
    return "missing"


def interface_fields(export_meta: dict, preprocessing: dict) -> dict:
    """What the manifest row says of the artifact's interface: the layout its inputs take, and how it maps
    to the pipeline's arrays (bench, release and verify feed each artifact in its own layout)."""
    return {
        "input_layout": export_meta.get("input_layout") or preprocessing.get("layout"),
        "route": export_meta.get("route"),
        "input_perms": export_meta.get("input_perms"),
        "output_perms": export_meta.get("output_perms"),
    }


def _first(x):
    return next(iter(x.values())) if isinstance(x, dict) else x


def _load_array(entry: Entry, name: str):
    """A data stage array: .npy, or .npz (one array per input) for a model with several inputs; None if absent."""
    if entry.file(f"{name}.npy").exists():
        return np.load(entry.file(f"{name}.npy"), allow_pickle=False)
    if entry.file(f"{name}.npz").exists():
        with np.load(entry.file(f"{name}.npz"), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def failed_build(target, reason: str) -> dict:
    return {
        "target": target.name,
        "status": "failed_build",
        "reason": reason,
        "expected_quantization": target.quantization,
    }


def clean_target_dir(out: Path, model: str, target: str) -> None:
    shutil.rmtree(out / model / target, ignore_errors=True)
