"""The stage graph, declared once: each stage's name, the stages it reads, the config that decides it, and
its run function. `build` (builder.py) runs it; `sweep` (sweeper/) derives its keys without running
(`derive`) and runs the missing nodes on Ray.

A node is a stage, or a stage for one target (`export:tflite-int8`). Its cache key (cache.stage_key) hashes
the node's name, its code (codehash: the source its run function reaches, and the files it names; not whole
files, so editing `qat()` never throws away trained models), its params, its inputs' keys and the tool
versions. Every function here reads and runs against a `Context`: the config and the entries so far.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.cache import Cache, Entry, stage_key, tool_versions
from pipeline.codehash import code_hash
from pipeline.config import Config
from pipeline.data import Dataset
from pipeline.errors import ConversionError, UsageError
from pipeline.util import sha256_file

HEAD_KEYS = ("heads", "metric", "task")
MISSING = Path("/nonexistent")
"""Where a derived entry that is not in the cache lives: nothing may read it."""


class Context:
    """What a stage's params and run read: the config, and the entries of the stages before it (`stages`)."""

    def __init__(self, cfg: Config, cache: Path):
        self.cfg, self.seed = cfg, cfg.build.seed
        self.cache = Cache(cache)
        self.tools = tool_versions()
        self.stages: dict[str, Entry] = {}
        self._dataset: Dataset | None = None
        self._interface: dict | None = None
        self.progress = False
        """Calibration bars on stderr (a Builder asked for them)."""
        self.conversion_error: str | None = None
        """Why onnx2tf could not convert the user's ONNX model: no Keras stages, the targets that need them fail."""

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

    def several_inputs(self) -> bool:
        """A user's ONNX model with more than one input: no Keras conversion (see interface_export)."""
        return len((self.interface() or {"inputs": [None]})["inputs"]) > 1

    def dataset(self) -> Dataset:
        if self._dataset is None:
            e = self.stages["data"]
            arrays = {a: _load_array(e, a) for a in Dataset.ARRAYS}
            labels = tuple(self.cfg.model.labels) or tuple(e.meta["labels"])
            self._dataset = Dataset(**arrays, labels=labels, preprocessing=e.meta["preprocessing"])
        return self._dataset

    def reference(self) -> Entry:
        """The stage whose reference outputs (the original model's) every artifact is compared with: train, or
        for a model with no Keras stages (several inputs, or one onnx2tf cannot convert) `original`, the user's
        file run in onnxruntime."""
        return self.stages["train"] if "train" in self.stages else self.stages["original"]

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
        float model. A detector's validation split is topped up with training pictures to
        `ptq.validation_samples`."""
        from pipeline.stages import REFERENCE_VAL_OUTPUTS, TEACHER_OUTPUTS
        from targets.metrics import DETECT, load_outputs
        from targets.ptq import Settings

        p = self.cfg.ptq
        if not p.choose:
            return None
        ds, ref, n = self.dataset(), self.reference(), p.validation_samples
        if ds.x_val is not None and ref.file(REFERENCE_VAL_OUTPUTS).exists():
            x, outs = ds.x_val[:n], [o[:n] for o in load_outputs(ref.file(REFERENCE_VAL_OUTPUTS))]
            more = n - len(x)
            if more > 0 and DETECT in self.heads().kinds and ref.file(TEACHER_OUTPUTS).exists():
                # A detector's box F1 on its ~10 validation pictures ties at 1.0 for every candidate (yolo11n
                # 160 px: the one kept found 0.930 of the held-out boxes, the bias-corrected one 0.958); the
                # training pictures (calibration ones too: ranges fitted on them move boxes little) add boxes.
                x = np.concatenate([x, ds.x_train[:more]])
                teacher = load_outputs(ref.file(TEACHER_OUTPUTS))
                outs = [np.concatenate([o, t[:more]]) for o, t in zip(outs, teacher)]
            return Settings(x, p.mixed, p.budget, outs)
        cal = {x.tobytes() for x in ds.x_cal}
        keep = [i for i, x in enumerate(ds.x_train) if x.tobytes() not in cal][:n]
        if keep and ref.file(TEACHER_OUTPUTS).exists():
            return Settings(
                ds.x_train[keep], p.mixed, p.budget, [o[keep] for o in load_outputs(ref.file(TEACHER_OUTPUTS))]
            )
        return Settings(ds.x_cal, p.mixed, p.budget)

    def interface_source(self):
        """What an export keeping the user's interface needs of this build (interface_export.Original)."""
        from pipeline.interface_export import Original
        from pipeline.stages import REFERENCE_OUTPUTS

        reference = self.reference().file(REFERENCE_OUTPUTS)
        return Original(
            self.cfg.model.path, self.interface(), reference, "train" in self.stages, self.seed, self.ptq_settings
        )

    def interface_route(self, target) -> str | None:
        """How an ONNX/OpenVINO target of a user's ONNX model keeps its interface: `original` (made from the
        user's file itself, when the Keras side changed nothing: no fine-tuning, nothing pruned) or `restored`
        (the converted model, given the original names and layout back). None for every other model.
        What decides is whether a weight changed, not what was asked: a pruning that found nothing to prune
        leaves the user's graph as it was."""
        if target.family not in ("onnx", "openvino", "ncnn") or self.interface() is None:
            return None
        if "train" not in self.stages:  # no Keras stages (reference): nothing could change
            return "original"
        train, prune = self.stages["train"].meta, self.stages["prune"].meta
        changed = (train.get("source_model") or {}).get("fine_tuned") or prune.get("weights_changed")
        return "restored" if changed else "original"


@dataclass(frozen=True)
class Stage:
    name: str
    about: str
    """One line for the model card."""
    inputs: Callable[[Context, object], list[str]]
    """The nodes it reads (their keys are in its key), given the context and the target (None for a model stage)."""
    params: Callable[[Context, object], dict]
    """The config (and facts of its inputs) that decide its output."""
    run: Callable[[Context, object, Path], dict]
    """Writes its files into the folder, returns its metadata."""
    files: Callable[[object], tuple] = lambda target: ()
    """Code its run function does not name: runner scripts run as child processes, the target's module."""

    def node(self, target=None) -> str:
        return f"{self.name}:{target.name}" if target is not None else self.name


def key(ctx: Context, stage: Stage, target=None) -> str:
    inputs = {n: ctx.stages[n].key for n in stage.inputs(ctx, target)}
    return stage_key(stage.node(target), code(stage, target), stage.params(ctx, target), inputs, ctx.tools)


def code(stage: Stage, target=None) -> str:
    """The code part of a node's key: the source its run function reaches (codehash), and its files; for a
    target's node, the Target class too (its properties name the files and the model it is made from)."""
    return _code(stage.run, (*stage.files(target), *([type(target)] if target is not None else [])))


def derive(ctx: Context, name: str, target=None) -> Entry:
    """A node's entry without running it: the cached one, or one that only has its key (path MISSING, no
    metadata: nothing that needs its metadata may follow)."""
    stage = STAGES[name]
    node, k = stage.node(target), key(ctx, stage, target)
    ctx.stages[node] = ctx.cache.get(node, k) or Entry(node, k, MISSING, {}, reused=False)
    return ctx.stages[node]


@cache
def _code(run, files: tuple) -> str:
    return code_hash([run, *files], context=Context)


# -- the stages ----------------------------------------------------------------------------------


def _source(cfg_path: str) -> dict:
    return {"path_sha256": content_hash(cfg_path)} if cfg_path else {}


def _data_params(ctx: Context, _) -> dict:
    model_input = (ctx.interface() or {"inputs": [None]})["inputs"][0]
    return {
        "data": ctx.cfg.section("data"),
        "seed": ctx.seed,
        **_source(ctx.cfg.data.path),
        **({"model_inputs": ctx.interface()["inputs"]} if model_input else {}),
    }


def _data(ctx: Context, _, folder: Path) -> dict:
    from pipeline import data

    if ctx.several_inputs():
        ds = data.load_several(ctx.cfg.data, ctx.seed, ctx.interface()["inputs"])
    else:
        ds = data.load(ctx.cfg.data, ctx.seed, (ctx.interface() or {"inputs": [None]})["inputs"][0])
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
        **({"labelled_boxes": len(ds.boxes_test["boxes"])} if ds.boxes_test is not None else {}),
        "train_samples": len(_first(ds.x_train)),
        "test_samples": len(_first(ds.x_test)),
        "input_shape": ds.preprocessing["input_shape"],
    }


def _original(ctx: Context, _, folder: Path) -> dict:
    from pipeline.interface_export import original_outputs

    why = ctx.conversion_error or "several inputs"
    path = ctx.stages["data"].path
    return original_outputs(ctx.cfg.model.path, path, ctx.interface(), ctx.dataset().labels, why, folder)


def _train_params(ctx: Context, _) -> dict:
    # How the heads are measured (heads, metric) does not make the trained model.
    model = {k: v for k, v in ctx.cfg.section("model").items() if k not in HEAD_KEYS}
    return {"model": model, "train": ctx.cfg.section("train"), "seed": ctx.seed, **_source(ctx.cfg.model.path)}


def _train(ctx: Context, _, folder: Path) -> dict:
    from pipeline import stages

    return stages.train(ctx.dataset(), ctx.cfg, ctx.seed, folder, ctx.cache.root)


def _prune_params(ctx: Context, _) -> dict:
    # `strict` is in the keys of the stages that may fall back: a strict build must re-decide.
    # The budget decides what "auto" picks: it is in the prune key.
    b = ctx.cfg.build
    return {
        "prune": ctx.cfg.section("prune"),
        "batch_size": ctx.cfg.train.batch_size,
        "seed": ctx.seed,
        "strict": b.strict,
        "budget": [b.max_accuracy_drop, b.min_agreement, b.min_cosine],
        **ctx.head_params(),
    }


def _prune(ctx: Context, _, folder: Path) -> dict:
    from pipeline import stages

    train = ctx.stages["train"]
    return stages.prune(ctx.dataset(), ctx.cfg, ctx.seed, train.file("model.h5"), train.path, folder)


def _qat_params(ctx: Context, _) -> dict:
    return {
        "qat": ctx.cfg.section("qat"),
        "batch_size": ctx.cfg.train.batch_size,
        "seed": ctx.seed,
        "strict": ctx.cfg.build.strict,
        **ctx.head_params(),
    }


def _qat(ctx: Context, _, folder: Path) -> dict:
    from pipeline import stages

    prune, train = ctx.stages["prune"], ctx.stages["train"]
    return stages.qat(ctx.dataset(), ctx.cfg, ctx.seed, prune.file("model.h5"), prune.meta, train.path, folder)


@dataclass(frozen=True)
class _Export:
    """What one target's export is made from, decided from the stages before it."""

    target: object
    route: str | None
    qat_ran: bool
    use_qat: bool
    source: str
    model_file: str
    metadata: dict


def _export_setup(ctx: Context, target) -> _Export:
    from pipeline.stages import QAT_WEIGHTS

    if target.family in ("onnx", "openvino") and target.options.get("mode") == "int8":
        # Which CPUs the file's int8 arithmetic must be exact on ([ptq] deploy_cpu): part of its cache key.
        target = dataclasses.replace(target, options={**target.options, "deploy_cpu": ctx.cfg.ptq.deploy_cpu})
    route = ctx.interface_route(target)
    if ctx.conversion_error and not route:
        raise ConversionError(f"{target.name} is made from the Keras conversion: {ctx.conversion_error}")
    if ctx.several_inputs() and not route:
        raise UsageError(
            f"{target.name} is made through the Keras conversion, which takes single-input models "
            f"only; this model has inputs {[p['name'] for p in ctx.interface()['inputs']]}"
        )
    # A QAT stage that fell back to post-training quantization left no model: use the float one.
    qat_ran = bool(target.needs_qat and "qat" in ctx.stages and ctx.stages["qat"].meta.get("method") == "qat")
    use_qat = qat_ran and target.source == "qat"
    source = "qat" if qat_ran else "prune" if "prune" in ctx.stages else ctx.reference().stage
    metadata = ctx.artifact_metadata(target)
    if route:
        metadata["input_layout"] = ",".join(dict.fromkeys(p.get("layout", "N...") for p in ctx.interface()["inputs"]))
    # The QAT stage's weights in the float model (stages.QAT_WEIGHTS) for the quantizers that take a float graph.
    model_file = QAT_WEIGHTS if qat_ran and not use_qat else "model.h5"
    return _Export(target, route, qat_ran, use_qat, source, model_file, metadata)


def _export_params(ctx: Context, target) -> dict:
    e = _export_setup(ctx, target)
    route = {"route": e.route} if e.route else {}
    return {"target": _row(e.target), "metadata": e.metadata, **route, **_tool_versions(e.target)}


def _export(ctx: Context, target, folder: Path) -> dict:
    from pipeline import report, stages

    e = _export_setup(ctx, target)
    target, src = e.target, ctx.stages[e.source]
    calib = ctx.dataset().x_cal
    progress = (lambda i, n: report.progress("calibrate", i, n)) if ctx.progress else None
    if e.route:
        from pipeline.interface_export import export_keeping_interface

        out = folder / target.filename
        return export_keeping_interface(
            ctx.interface_source(), target, e.route, src.file(e.model_file), calib, out, e.metadata, progress
        )
    stages.tf_setup(ctx.seed)
    ptq = ctx.ptq_settings()

    def make(dest: Path, name: str, file: str, qat: bool) -> dict:
        model = stages.load_model(ctx.stages[name].file(file), qat=qat)
        kwargs = {} if qat else {"ptq": ptq}
        choice = target.module.export(
            target, model, calib, dest / target.filename, e.metadata, progress=progress, **kwargs
        )
        # A target that takes another input layout than the Keras model (ncnn: channels-first) says so.
        interface = (choice or {}).pop("interface", {})
        method = "qat" if qat else "ptq" if target.needs_qat else "convert"
        return {"source": name, "method": method, **interface, **({"ptq": choice} if choice else {})}

    made = make(folder, e.source, e.model_file, e.use_qat)
    if not (e.qat_ran and ptq is not None and ptq.reference is not None):
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


def _expected(ctx: Context, target) -> tuple[str, dict]:
    """The quantization the artifact must read back as, and for int8 the CPU its figures run on."""
    from pipeline.isa import x86_isa

    # A post-training choice that kept layers in float ([ptq] mixed) must read back as int8-mixed, never int8.
    mixed = ctx.stages[f"export:{target.name}"].meta.get("ptq", {}).get("mixed")
    expected = "int8-mixed" if mixed else target.quantization
    # int8 kernels differ by ISA (pipeline/isa.py): an int8 row's figures say which CPU they ran on, and a
    # cache moved to another CPU verifies them again.
    return expected, ({"x86_isa": x86_isa()} if expected.startswith("int8") else {})


def _verify_params(ctx: Context, target) -> dict:
    expected, isa = _expected(ctx, target)
    b = ctx.cfg.build
    return {
        "target": _row(target),
        "quantization": expected,
        "gate": [b.max_accuracy_drop, b.min_agreement, b.min_cosine],
        **ctx.head_params(),
        **({"x86_isa": isa["x86_isa"]["label"]} if isa else {}),
        **_tool_versions(target),
    }


def _tool_versions(target) -> dict:
    """The converter and runtime versions a family's files depend on beyond the pinned stack (pnnx, ncnn)."""
    return target.module.tool_versions() if hasattr(target.module, "tool_versions") else {}


def _row(target) -> dict:
    """A target's row of the registry (targets.TARGETS), all of it but its description: a target is data."""
    return {k: v for k, v in dataclasses.asdict(target).items() if k != "description"}


def _verify(ctx: Context, target, folder: Path) -> dict:
    from pipeline.gate import verify_artifact
    from pipeline.stages import REFERENCE_OUTPUTS

    ref, artifact = ctx.reference(), ctx.stages[f"export:{target.name}"]  # the original model: every figure's reference
    expected, isa = _expected(ctx, target)
    result = verify_artifact(
        target,
        artifact.file(target.filename),
        ctx.stages["data"].path,
        ref.file(REFERENCE_OUTPUTS),
        ctx.cfg.build,
        ref.meta.get("accuracy"),
        perms=artifact.meta,
        expected=expected,
        heads=ctx.heads(),
    )
    return {**result.record(), **isa}


RUNNERS = "targets/runners/"


def _ptq_backend(target) -> tuple:
    """The family's post-training backend: targets.ptq picks it by family name at run time, out of the walk's sight."""
    import importlib.util

    name = f"targets.ptq.{target.family}"
    return (importlib.import_module(name),) if importlib.util.find_spec(name) else ()


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "data",
            "seeded stratified split; the held-out part is never trained on",
            lambda ctx, _: [],
            _data_params,
            _data,
        ),
        Stage(
            "train",
            "the model trained (or loaded and fine-tuned)",
            lambda ctx, _: ["data"],
            _train_params,
            _train,
        ),
        Stage(
            "prune",
            "pruned by prune.method, fine-tuned, stripped",
            lambda ctx, _: ["data", "train"],
            _prune_params,
            _prune,
        ),
        Stage(
            "qat",
            "quantization-aware training that keeps the pruned zeros (for the int8 targets made from it)",
            lambda ctx, _: ["data", "train", "prune"],
            _qat_params,
            _qat,
        ),
        Stage(
            "original",
            "a model with several inputs: the user's own file run in onnxruntime, the reference",
            lambda ctx, _: ["data"],
            lambda ctx, _: {"model": _source(ctx.cfg.model.path), "why": ctx.conversion_error or "several inputs"},
            _original,
            lambda _: (RUNNERS + "run_onnxruntime.py", RUNNERS + "runner_common.py"),
        ),
        Stage(
            "export",
            "the target's converter (int8 without QAT: the post-training method chosen by measurement)",
            lambda ctx, t: ["data", _export_setup(ctx, t).source],
            _export_params,
            _export,
            lambda t: (t.module, *_ptq_backend(t)),
        ),
        Stage(
            "verify",
            "the artifact run in its runtime on the held-out split, gated",
            lambda ctx, t: ["data", f"export:{t.name}", ctx.reference().stage],
            _verify_params,
            _verify,
            lambda t: (
                t.module,
                RUNNERS + "runner_common.py",
                *(RUNNERS + r for r in (t.runner, t.legacy_runner) if r),
            ),
        ),
    ]
}


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
