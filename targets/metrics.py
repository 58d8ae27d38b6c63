"""How close a model's outputs are to the original model's: the one set of measures the gate (pipeline/gate.py),
the training stages and the post-training choice (targets/ptq/) all use, figured head by head.

A model's outputs ("heads") are each of one kind, measured its own way:
- `scores` (class probabilities, or a single classifier's logits): top-1 agreement and top-k overlap;
- `regression` (boxes, landmarks, maps, embeddings): cosine similarity and relative error (max |diff| over
  the original's range on the same samples);
- `metric`: the user's own measure (`[model] metric`, a function (output, reference) -> float, 1 = the same);
- `detect` (a YOLO-family detector's head, targets/detect.py): decoded to boxes (score and IoU thresholds of
  `[detect]`), then box F1 (same class, IoU >= 0.5) and mAP50 with the original's boxes as ground truth.
Each head's figure is gated by its own minimum; an artifact's headline is its worst head, the one that uses
the largest share of its room ((1 - value) / (1 - minimum)).

Needs only numpy: imported by the runners' side of the package as well as by the build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from targets import detect

SCORES, REGRESSION, METRIC, DETECT = "scores", "regression", "metric", "detect"
KINDS = ("auto", SCORES, REGRESSION, METRIC, DETECT)
MEASURE = {SCORES: "top1_agreement", REGRESSION: "cosine", METRIC: "metric", DETECT: "box_f1"}
"""The figure each kind of head is gated by (with labels, a classifier head's accuracy instead)."""
NAMES = {
    "top1_agreement": "top-1 agreement",
    "cosine": "cosine similarity",
    "metric": "metric",
    "accuracy": "accuracy",
    "box_f1": "box F1",
}


@dataclass(frozen=True)
class Heads:
    """The original model's outputs as the figures name and measure them, in its output order."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    metric: Callable | None = None
    """The user's measure for `metric` heads ([model] metric): (output, reference) -> float, 1 = the same."""
    detect: detect.Detect | None = None
    """How `detect` heads are decoded ([detect]); the defaults when None."""


def save_outputs(path: Path, outs: list[np.ndarray]) -> None:
    np.savez(path, **{f"output_{i}": o for i, o in enumerate(outs)})


def load_outputs(path: Path) -> list[np.ndarray]:
    """The outputs a runner or a stage wrote (output_0, output_1, ...), in the model's output order."""
    with np.load(path, allow_pickle=False) as z:
        return [z[f"output_{i}"] for i in range(len(z.files))]


def nonfinite_rows(out) -> np.ndarray:
    """Per sample, whether its output holds NaN or Inf (all False for a non-float array)."""
    o = np.atleast_1d(np.asarray(out))
    if not np.issubdtype(o.dtype, np.floating):
        return np.zeros(len(o), bool)
    return ~np.isfinite(o.reshape(len(o), -1)).all(axis=1)


def cosine(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean over samples of each sample's cosine similarity. Two zero vectors are the same (1); a zero vector
    against a non-zero one shares no direction (0)."""
    a = np.asarray(out, np.float64).reshape(len(out), -1)
    b = np.asarray(ref, np.float64).reshape(len(ref), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))
    return float(cos.mean())


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| over the range the original's outputs span on these samples (max |ref| if constant)."""
    diff = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    span = float(np.ptp(ref)) or float(np.max(np.abs(ref))) or 1.0
    return diff / span


def top1(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(np.asarray(out).argmax(-1) == np.asarray(ref).argmax(-1)))


def looks_like_scores(ref: np.ndarray, only_output: bool) -> bool:
    """(N, classes) outputs: a model's only such output is its class scores (probabilities or logits); among
    several outputs, one whose rows are probabilities (non-negative, summing to 1: a softmax) is."""
    if ref.ndim != 2 or ref.shape[1] < 2:
        return False
    if only_output:
        return True
    return bool(ref.min() >= -1e-6 and np.allclose(ref.sum(-1), 1.0, atol=1e-3))


def is_scores(outputs: list[np.ndarray]) -> bool:
    """A classifier's outputs: a single (N, classes) output."""
    return len(outputs) == 1 and looks_like_scores(outputs[0], True)


def head_kinds(reference: list[np.ndarray], declared=(), activations=(), input_hw=None, boxes=True) -> list[str]:
    """Each output's kind: as declared (`[model] heads`, "auto" = guess), else `detect` for a model's only output
    shaped as a YOLO head (detect.layout_of; with the input's (height, width), its anchor count must match),
    else `scores` for a softmax or sigmoid layer's (N, classes) output or values that look like scores
    (looks_like_scores), else `regression`. `boxes` False: never guess `detect` ([model] task = "other")."""
    kinds = []
    for i, ref in enumerate(reference):
        want = declared[i] if i < len(declared) else "auto"
        act = activations[i] if i < len(activations) else None
        if want != "auto":
            kinds.append(want)
        elif boxes and len(reference) == 1 and detect.layout_of(np.shape(ref), input_hw):
            kinds.append(DETECT)
        elif act in ("softmax", "sigmoid") and ref.ndim == 2 and ref.shape[1] > 1:
            kinds.append(SCORES)
        else:
            kinds.append(SCORES if looks_like_scores(ref, len(reference) == 1) else REGRESSION)
    return kinds


def box_figures(out: np.ndarray, ref: np.ndarray, settings: detect.Detect | None = None) -> dict:
    """A detector head's figures against the original's boxes (both decoded the same way): box F1 at IoU 0.5 and
    mAP50 with the original's boxes as ground truth, and how many boxes each found."""
    d = settings or detect.Detect()
    r, g = detect.decode_with(ref, d), detect.decode_with(out, d)
    return {
        "box_f1": detect.box_f1(r, g),
        "map50": detect.map50(r, g),
        "boxes": int(sum(len(b[0]) for b in g)),
        "reference_boxes": int(sum(len(b[0]) for b in r)),
    }


def head_figures(out: np.ndarray, ref: np.ndarray, kind: str, metric=None, settings=None) -> dict:
    """One head's figures against the original's: max |diff|, cosine and relative error always; top-1
    agreement and top-k overlap for scores; the user's measure for `metric`; box F1 and mAP50 for `detect`
    (decoded by `settings`, a detect.Detect)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    f = {
        "kind": kind,
        "max_abs_diff": float(np.max(np.abs(out - ref))),
        "cosine": cosine(out, ref),
        "relative_error": relative_error(out, ref),
    }
    if kind == SCORES:
        f["top1_agreement"] = top1(out, ref)
        k = min(5, ref.shape[-1] - 1)
        if k > 1:  # top-1 overlap is top-1 agreement
            top_o, top_r = np.argsort(-out, axis=-1)[:, :k], np.argsort(-ref, axis=-1)[:, :k]
            f[f"top{k}_overlap"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_o, top_r)]))
    if kind == METRIC:
        if metric is None:
            raise ValueError("a head of kind 'metric' needs [model] metric (and --trust-model)")
        f["metric"] = float(metric(out, ref))
    if kind == DETECT:
        f.update(box_figures(out, ref, settings))
    return f


def classifier_head(kinds: list[str], reference: list[np.ndarray], labels: np.ndarray | None) -> int | None:
    """The head accuracy applies to: the only score head whose classes cover the labels; None if there is none
    (or several: which one the labels belong to is not known)."""
    if labels is None or not len(labels):
        return None
    fits = [i for i, k in enumerate(kinds) if k == SCORES and reference[i].shape[-1] > int(np.max(labels))]
    return fits[0] if len(fits) == 1 else None


def compare(outputs, reference, labels=None, kinds=None, names=None, metric=None, settings=None) -> dict:
    """Every head's figures (`heads`, when there are several) and the summary the tables read: max |diff| (the
    largest), cosine (the lowest), top-1 agreement (the lowest of the score heads), accuracy (the classifier
    head's, with labels), box F1 and mAP50 (the lowest of the detector heads, decoded by `settings`)."""
    kinds = list(kinds or head_kinds(reference))
    heads = [
        {"name": names[i] if names else f"output_{i}", **head_figures(o, r, kinds[i], metric, settings)}
        for i, (o, r) in enumerate(zip(outputs, reference))
    ]
    c = classifier_head(kinds, reference, labels)
    if c is not None:
        heads[c]["accuracy"] = float(np.mean(np.asarray(outputs[c]).argmax(-1) == labels))
    out = {"max_abs_diff": max(h["max_abs_diff"] for h in heads), "cosine": min(h["cosine"] for h in heads)}
    agree = [h["top1_agreement"] for h in heads if "top1_agreement" in h]
    if agree:
        out["top1_agreement"] = min(agree)
    if c is not None:
        out["accuracy"] = heads[c]["accuracy"]
    boxes = [h for h in heads if h["kind"] == DETECT]
    if boxes:
        out.update({k: min(h[k] for h in boxes) for k in ("box_f1", "map50")})
        out.update({k: sum(h[k] for h in boxes) for k in ("boxes", "reference_boxes")})
    if len(heads) > 1:
        out["heads"] = heads
    return out


def closeness(outputs: list[np.ndarray], reference: list[np.ndarray], kinds=None, settings=None) -> dict:
    """What a post-training candidate is chosen by: `closeness`, the lowest mean cosine over the heads
    (continuous: it sees every sample's error), and `agreement`, the worst head by its own measure (top-1
    agreement of a score head, box F1 of a detector head decoded by `settings`, cosine of the others): what a
    mixed-precision budget is held to. With detector heads, also `box_f1` (the lowest)."""
    kinds = list(kinds or head_kinds(reference))
    if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference)):
        raise ValueError(
            f"outputs {[o.shape for o in outputs]} do not match the original's {[r.shape for r in reference]}"
        )
    cos = [cosine(o, r) for o, r in zip(outputs, reference)]
    boxes = {
        i: box_figures(o, r, settings)["box_f1"]
        for i, (o, r, k) in enumerate(zip(outputs, reference, kinds))
        if k == DETECT
    }
    own = [
        top1(o, r) if k == SCORES else boxes[i] if k == DETECT else c
        for i, (o, r, k, c) in enumerate(zip(outputs, reference, kinds, cos))
    ]
    out = {"closeness": min(cos), "agreement": min(own)}
    if boxes:
        out["box_f1"] = min(boxes.values())
    return out


def shortfall(value: float, minimum: float) -> float:
    """The share of a head's room (1 - minimum) that `value` uses: above 1 breaks the minimum."""
    room = 1 - minimum
    return (1 - value) / room if room > 0 else (0.0 if value >= minimum else float("inf"))
