"""Build configuration: frozen, validated sections, one per stage.

A config file is TOML with the sections below; every key is optional and defaults to the
embedded demo (a small CNN trained on scikit-learn's handwritten digits). Unknown keys and
ill-typed values are rejected with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError
from targets.errors import closest


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""
    """Name of the output folder and inside artifact metadata; empty: `digits-cnn` for the built-in model,
    else the model file's stem (`emotion_model.hdf5` -> `emotion_model`)."""
    version: str = "0.1.0"
    """Model version recorded in the manifest and artifact metadata."""
    filters: int = 16
    """Filters of the first convolution of the built-in CNN (then 2x and 4x as many)."""
    labels: tuple[str, ...] = ()
    """Class names; empty means the data's class indices as strings."""
    path: str = ""
    """A pretrained model (.keras, .h5/.hdf5, SavedModel folder, .onnx); empty trains the built-in CNN."""
    fine_tune_epochs: int = 0
    """Epochs of fine-tuning a pretrained model before pruning (labelled data only)."""
    trust: bool = False
    """Allow code inside the model file (Keras Lambda layers) to run. Only for files you trust."""
    onnx_input_shape: tuple[int, ...] = ()
    """For an .onnx with dynamic dimensions: the fixed NCHW input shape, e.g. [1, 3, 224, 224]."""
    heads: tuple[str, ...] = ()
    """Each output's kind, in the model's output order, where the guess is wrong: `scores` (top-1 agreement),
    `regression` (cosine similarity), `metric` (model.metric) or `auto` (guessed: a softmax / sigmoid output
    or probabilities are scores, the rest regression)."""
    metric: str = ""
    """`module:function` (output, reference) -> float (1 = the same as the original), measuring the heads of kind
    `metric` (every head when `heads` is empty); gated like top-1 agreement. Runs your code: needs --trust-model."""
    task: str = "auto"
    """`detect` for a YOLO-family detector (its output decoded to boxes, judged by box F1; see [detect]), `other`
    for any other model, `auto`: `detect` when the only output is shaped as a YOLOv5/v8/11 head for the input's
    size ([1, 4 + classes, anchors] or [1, anchors, 5 + classes], anchors of strides 8, 16, 32)."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    """`digits` (scikit-learn's 8x8 handwritten digits, ships offline) when `path` is empty."""
    path: str = ""
    """.npz (x_train/y_train/x_test/y_test, or x/y, or x alone), IDX files or their folder, or an image folder."""
    test_fraction: float = 0.25
    """Held-out fraction used for verification when the data has no test split; never trained on."""
    validation_fraction: float = 0.15
    """Share of the training samples held apart to choose settings (prune.sparsity = "auto"); never trained on."""
    calibration_samples: int = 300
    """Training samples used to calibrate post-training quantization (a warning below 100)."""
    resize: tuple[int, ...] = ()
    """[height, width] to resize images to; empty keeps their size."""
    channels: str = ""
    """`gray`, `rgb` or `bgr` for images; empty keeps what the data has."""
    scale: float = 0.0
    """Multiply raw pixel values by this; 0 means 1/255 for 8-bit data, 1 otherwise."""
    mean: tuple[float, ...] = ()
    """Subtracted per channel after scaling; empty means 0."""
    std: tuple[float, ...] = ()
    """Divided per channel after the mean; empty means 1."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 0.002
    lr_schedule: str = "constant"
    """Learning rate of every fit (training, fine-tuning, pruning, QAT): `constant`, or `cosine` (decays to 0 over the fit)."""


PRUNE_METHODS = ("unstructured", "channels", "block", "none")
AUTO_SPARSITIES = (0.75, 0.5, 0.25)
"""What prune.sparsity = "auto" tries for a brought model, largest first, on the validation split."""


@dataclass(frozen=True)
class PruneConfig:
    method: str = "unstructured"
    """`unstructured` (zeros anywhere), `channels` (a smaller dense model), `block` (zeros in blocks, sparse .tflite) or `none`; --prune."""
    sparsity: float | str = "auto"
    """unstructured, block: fraction of zero weights; "auto": 0.75 for the built-in model; for a brought one the largest of 0.75, 0.5, 0.25 within half the build's budget on the validation split, else none."""
    epochs: int = 6
    """Fine-tuning epochs (labels, or distillation from the unpruned model without them)."""
    learning_rate: float = 0.001
    channels_fraction: float = 0.5
    """channels: share removed, of each prunable layer's channels or of the model's MACs (channels_target)."""
    channels_target: str = "channels"
    """channels: what channels_fraction is a share of: `channels` or `macs`."""
    channels_criterion: str = "l1"
    """channels: rank channels by `l1` (filter L1 norm) or `bn` (BatchNormalization |gamma|, else L1)."""
    channels_residual: bool = False
    """channels: also prune the channels residual Adds tie together; false keeps them whole (cost less accuracy on MobileNetV2)."""
    channels_multiple: int = 8
    """channels: each pruned layer keeps a multiple of this many channels (int8 kernels work in tiles of 8-16); 1: exact."""
    block_size: tuple[int, ...] = (4, 1)
    """block: [rows, cols] of the zero blocks in 2-D (Dense) kernels [in, out]; [4, 1] is TFLite's 1x4 sparse block."""
    block_m_by_n: tuple[int, ...] = ()
    """block: e.g. [2, 4]: m zeros in every n consecutive weights of every prunable layer instead (ignores sparsity)."""


@dataclass(frozen=True)
class QatConfig:
    epochs: int = 3
    learning_rate: float = 0.0005
    split_separable: bool = False
    """Split SeparableConv2D into DepthwiseConv2D + 1x1 Conv2D (same outputs) so tfmot can QAT the model; off:
    such a model gets post-training int8. On the fer model with 164 unlabelled faces, distillation QAT's
    tflite-int8 agreed 0.93 with the original on 236 others (0.97 at learning_rate 2e-5), the post-training
    choice 0.98."""


@dataclass(frozen=True)
class PtqConfig:
    choose: bool = True
    """int8 targets: try the field's post-training methods, keep the one whose outputs are closest (mean cosine)
    to the original model's on validation; when QAT ran, its file (or int8 of its weights) and post-training int8
    of the pruned model compete the same way. false: one method each, QAT's file as is."""
    validation_samples: int = 100
    """Validation samples (never test; training ones not calibrating without a validation split) the methods are compared on;
    a detector's validation split is topped up with training pictures to this many."""
    mixed: bool = False
    """Keep the layers whose quantization costs most in float until `budget` holds (the file reads back int8-mixed)."""
    budget: float = 0.99
    """Top-1 agreement with the original model on the validation samples that `mixed` restores layers until."""
    deploy_cpu: str = "any"
    """onnx-int8 / openvino-int8: "any": files whose int8 arithmetic is the same on every x86-64 with AVX2 (and ARM):
    7-bit weights (onnxruntime reduce_range, OpenVINO overflow fix); "vnni": full-range s8 weights, for a CPU with AVX-512 VNNI,
    AVX-VNNI or AMX (on an AVX2-only x86 their products saturate: the file answers worse than verified)."""


@dataclass(frozen=True)
class DetectConfig:
    layout: str = "auto"
    """How a detector's output reads: `v8` (YOLOv8 / YOLO11: [N, 4 + classes, anchors], cx cy w h in pixels then
    class scores), `v5` (YOLOv5: [N, anchors, 5 + classes], objectness after the box), `auto` (from its shape)."""
    conf: float = 0.25
    """Score threshold: the boxes kept before NMS (class score; for `v5`, objectness x class score)."""
    iou: float = 0.45
    """IoU above which NMS drops the lower-scoring of two boxes of the same class."""
    max_det: int = 300
    """At most this many boxes per image after NMS."""
    names: tuple[str, ...] = ()
    """Class names, in the head's class order (the manifest and model card); empty: the class indices."""


@dataclass(frozen=True)
class BuildConfig:
    targets: tuple[str, ...] = ("tflite-int8",)
    seed: int = 0
    max_accuracy_drop: float = 1.0
    """Accuracy points an artifact (and the pruned and QAT models) may lose against the original model."""
    min_agreement: float = 0.97
    """Without labels: the top-1 agreement with the original model an artifact must reach."""
    min_cosine: float = 0.99
    """Without labels, for non-score outputs: the mean cosine similarity with the original model it must reach."""
    min_box_f1: float = 0.95
    """Detectors: the F1 of an artifact's boxes against the original model's (same class, IoU >= 0.5) it must reach."""
    strict: bool = False
    """Turn every fallback (layers left unpruned or unquantized, PTQ instead of QAT) into an error."""


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "prune": PruneConfig,
    "qat": QatConfig,
    "ptq": PtqConfig,
    "detect": DetectConfig,
    "build": BuildConfig,
}


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    ptq: PtqConfig = field(default_factory=PtqConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    build: BuildConfig = field(default_factory=BuildConfig)

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name))

    def as_dict(self) -> dict:
        return {name: self.section(name) for name in SECTIONS}

    def digest(self) -> str:
        """Identity of the model this config makes; which targets are asked for is not part of it."""
        d = self.as_dict()
        d["build"] = {k: v for k, v in d["build"].items() if k != "targets"}
        return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """The model's name: the output folder OUT/<name>/ and the artifacts' metadata."""
        if self.model.name:
            return self.model.name
        return Path(self.model.path.rstrip("/")).stem if self.model.path else "digits-cnn"

    def replace(self, section: str, **values) -> Config:
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


_NOUNS = {str: "strings", int: "integers", float: "numbers"}


def _coerce(where: str, value, annotation):
    if isinstance(annotation, types.UnionType):
        kinds = typing.get_args(annotation)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ConfigError(
                f"{where} must be {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__} {value!r}"
            )
        return value
    hint = typing.get_origin(annotation) or annotation
    if hint is tuple:
        item = typing.get_args(annotation)[0]
        ok = (float, int) if item is float else (item,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, ok) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of {_NOUNS[item]}, got {value!r}")
        return tuple(item(v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_ranges(cfg: Config) -> None:
    rules = [
        ("data.test_fraction", 0 < cfg.data.test_fraction < 1, "between 0 and 1"),
        ("data.calibration_samples", cfg.data.calibration_samples >= 1, "at least 1"),
        (
            "prune.sparsity",
            cfg.prune.sparsity == "auto" or (isinstance(cfg.prune.sparsity, float) and 0 <= cfg.prune.sparsity < 1),
            '"auto" or in [0, 1)',
        ),
        ("data.validation_fraction", 0 <= cfg.data.validation_fraction < 1, "in [0, 1)"),
        ("prune.method", cfg.prune.method in PRUNE_METHODS, " or ".join(f"'{m}'" for m in PRUNE_METHODS)),
        ("prune.channels_fraction", 0 <= cfg.prune.channels_fraction < 1, "in [0, 1)"),
        ("prune.channels_target", cfg.prune.channels_target in ("channels", "macs"), "'channels' or 'macs'"),
        ("prune.channels_criterion", cfg.prune.channels_criterion in ("l1", "bn"), "'l1' or 'bn'"),
        ("train.lr_schedule", cfg.train.lr_schedule in ("constant", "cosine"), "'constant' or 'cosine'"),
        ("prune.channels_multiple", cfg.prune.channels_multiple >= 1, "at least 1"),
        (
            "prune.block_size",
            len(cfg.prune.block_size) == 2 and min(cfg.prune.block_size) >= 1,
            "[rows, cols] of positive integers",
        ),
        (
            "prune.block_m_by_n",
            cfg.prune.block_m_by_n == ()
            or (len(cfg.prune.block_m_by_n) == 2 and 0 < cfg.prune.block_m_by_n[0] < cfg.prune.block_m_by_n[1]),
            "empty or [m, n] with 0 < m < n",
        ),
        ("build.max_accuracy_drop", cfg.build.max_accuracy_drop >= 0, "at least 0"),
        ("train.epochs", cfg.train.epochs >= 1, "at least 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "at least 1"),
        ("prune.epochs", cfg.prune.epochs >= 1, "at least 1"),
        ("qat.epochs", cfg.qat.epochs >= 0, "at least 0"),
        ("model.filters", cfg.model.filters >= 1, "at least 1"),
        ("model.fine_tune_epochs", cfg.model.fine_tune_epochs >= 0, "at least 0"),
        ("data.resize", len(cfg.data.resize) in (0, 2) and all(v > 0 for v in cfg.data.resize), "[height, width]"),
        ("data.channels", cfg.data.channels in ("", "gray", "rgb", "bgr"), "'gray', 'rgb' or 'bgr'"),
        ("data.scale", cfg.data.scale >= 0, "at least 0"),
        ("data.std", all(v > 0 for v in cfg.data.std), "positive"),
        ("build.min_agreement", 0 <= cfg.build.min_agreement <= 1, "in [0, 1]"),
        ("ptq.validation_samples", cfg.ptq.validation_samples >= 1, "at least 1"),
        ("ptq.budget", 0 <= cfg.ptq.budget <= 1, "in [0, 1]"),
        ("ptq.deploy_cpu", cfg.ptq.deploy_cpu in ("any", "vnni"), "'any' or 'vnni'"),
        ("build.min_cosine", -1 <= cfg.build.min_cosine <= 1, "in [-1, 1]"),
        ("build.min_box_f1", 0 <= cfg.build.min_box_f1 <= 1, "in [0, 1]"),
        ("model.task", cfg.model.task in ("auto", "detect", "other"), "'auto', 'detect' or 'other'"),
        ("detect.layout", cfg.detect.layout in ("auto", "v8", "v5"), "'auto', 'v8' or 'v5'"),
        ("detect.conf", 0 <= cfg.detect.conf < 1, "in [0, 1)"),
        ("detect.iou", 0 < cfg.detect.iou <= 1, "in (0, 1]"),
        ("detect.max_det", cfg.detect.max_det >= 1, "at least 1"),
    ]
    from targets.metrics import KINDS

    bad = [k for k in cfg.model.heads if k not in KINDS]
    if bad:
        raise ConfigError(
            f"model.heads: unknown kind {bad[0]!r}{closest(bad[0], KINDS)}; use {', '.join(map(repr, KINDS))}"
        )
    if cfg.model.metric and (":" not in cfg.model.metric or not all(cfg.model.metric.split(":", 1))):
        raise ConfigError(f"model.metric must be 'module:function', got {cfg.model.metric!r}")
    if "metric" in cfg.model.heads and not cfg.model.metric:
        raise ConfigError("model.heads declares a 'metric' head: set model.metric = 'module:function'")
    if cfg.model.metric and not cfg.model.trust:
        raise ConfigError(f"model.metric {cfg.model.metric!r} runs your code: pass --trust-model to allow it")
    for where, ok, what in rules:
        if not ok:
            section, key = where.split(".")
            raise ConfigError(f"{where} must be {what}, got {getattr(getattr(cfg, section), key)!r}")


def from_dict(raw: dict, source: str = "config") -> Config:
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]{closest(name, SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys")
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {name}.{key}{closest(key, hints)}")
            kwargs[key] = _coerce(f"{source}: {name}.{key}", value, hints[key])
        sections[name] = cls(**kwargs)
    cfg = Config(**sections)
    _check_ranges(cfg)
    return cfg


def load(path: str | Path | None) -> Config:
    if path is None:
        return from_dict({})
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(raw, source=str(path))


def with_overrides(cfg: Config, overrides: dict | None, source: str = "overrides") -> Config:
    """`cfg` with {"section.key": value} applied, validated like a file (unknown keys and bad values raise)."""
    if not overrides:
        return cfg
    raw = cfg.as_dict()
    for dotted, value in overrides.items():
        name, _, key = str(dotted).partition(".")
        if name not in SECTIONS or not key:
            raise ConfigError(f"{source}: '{dotted}' is not SECTION.KEY{closest(name, SECTIONS)}")
        raw[name][key] = value
    return from_dict(raw, source=source)


def resolve(config) -> Config:
    """A Config from a Config, a dict of sections, a TOML path, or None (the embedded demo)."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return from_dict(config, source="config dict")
    return load(config)


def reference() -> str:
    """Every key with its default and what it means, as a TOML file (`config > my.toml` is a valid config)."""
    import ast
    import inspect

    lines = ["# edge-export build config: every key with its default. Keep only what you change."]
    for name, cls in SECTIONS.items():
        docs = {}
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = nxt.value.value
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines += [f"# {line.strip()}" for line in docs.get(f.name, "").splitlines()]
            lines.append(f"{f.name} = {json.dumps(default, default=list)}")
    return "\n".join(lines)
