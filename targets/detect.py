"""Detectors' outputs as boxes, and how close two sets of boxes are: decode + NMS of YOLO-family heads, box F1
and COCO-style mAP with one model's boxes (or the labels) as ground truth. Numpy only: no torch at run time.

Layouts (one output per image):
- `v8` (YOLOv8 / YOLO11): `[N, 4 + C, A]`, rows cx, cy, w, h in pixels then C class scores (after sigmoid);
- `v5` (YOLOv5): `[N, A, 5 + C]`, columns cx, cy, w, h, objectness, C class scores; a box's score is
  objectness x class score.
A is the number of anchor points: for an H x W input and strides 8, 16, 32, (H W / 64 + H W / 256 + H W / 1024)
= 21 (H / 32)(W / 32) for sides that are multiples of 32.

A set of detections of one image is a tuple (boxes xyxy [K, 4], scores [K], classes [K]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

V8, V5 = "v8", "v5"
LAYOUTS = ("auto", V8, V5)
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Detect:
    """How a detector's output is read ([detect] config): its layout and the thresholds its boxes are kept by."""

    layout: str = "auto"
    """`v8`, `v5`, or `auto`: read from the output's shape (layout_of)."""
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    names: tuple[str, ...] = ()


def anchors(height: int, width: int) -> int:
    """The anchor points of a YOLO head for an input of height x width (strides 8, 16, 32; sides rounded up)."""
    return sum(-(-height // s) * -(-width // s) for s in STRIDES)


def layout_of(shape, input_hw: tuple[int, int] | None = None) -> str | None:
    """`v8` or `v5` for an output of that shape ([N, 4 + C, A] or [N, A, 5 + C]), None if it is not a YOLO head.
    With the input's (height, width), A must be its anchor count; without, a multiple of 21 (square-ish grids)."""
    if len(shape) != 3:
        return None

    def fits(a) -> bool:
        if not isinstance(a, int) or a <= 0:
            return False
        return a == anchors(*input_hw) if input_hw else a % 21 == 0

    _, d1, d2 = shape
    if fits(d2) and isinstance(d1, int) and d1 >= 5 and d1 < d2:
        return V8
    if fits(d1) and isinstance(d2, int) and d2 >= 6 and d2 < d1:
        return V5
    return None


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [K, 4] with every box of `b` [M, 4] (xyxy): [K, M]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.45) -> np.ndarray:
    """Indices of the boxes kept by class-aware greedy NMS, highest score first: a box is dropped when a kept
    box of the same class overlaps it by more than `iou`."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        same = classes[rest] == classes[i]
        over = iou_matrix(boxes[i : i + 1], boxes[rest])[0] > iou
        order = rest[~(same & over)]
    return np.asarray(keep, np.int64)


def decode(raw, layout: str = V8, conf: float = 0.25, iou: float = 0.45, max_det: int = 300) -> list[tuple]:
    """Each image's detections (boxes xyxy [K, 4], scores [K], classes [K]) from a YOLO head's output `raw`:
    each anchor's best class, kept above `conf`, then class-aware NMS at `iou`, at most `max_det` per image."""
    raw = np.asarray(raw, np.float32)
    if raw.ndim != 3:
        raise ValueError(f"a YOLO head's output has 3 dimensions [N, 4 + C, A] or [N, A, 5 + C], not {raw.shape}")
    if layout == V8:
        rows = raw.transpose(0, 2, 1)  # [N, A, 4 + C]
        box, cls = rows[..., :4], rows[..., 4:]
    elif layout == V5:
        box, cls = raw[..., :4], raw[..., 5:] * raw[..., 4:5]
    else:
        raise ValueError(f"unknown detector layout {layout!r}: one of {V8}, {V5}")
    if cls.shape[-1] < 1:
        raise ValueError(f"a {layout} head of shape {raw.shape} has no class scores")
    out = []
    for b, c in zip(box, cls):
        classes = c.argmax(-1)
        scores = np.take_along_axis(c, classes[:, None], -1)[:, 0]
        keep = scores > conf
        b, scores, classes = xywh_to_xyxy(b[keep]), scores[keep], classes[keep]
        k = nms(b, scores, classes, iou)[:max_det]
        out.append((b[k].astype(np.float32), scores[k].astype(np.float32), classes[k].astype(np.int64)))
    return out


def decode_with(raw, d: Detect) -> list[tuple]:
    layout = d.layout if d.layout != "auto" else layout_of(np.shape(raw))
    if layout is None:
        raise ValueError(f"an output of shape {np.shape(raw)} is not a YOLO head: declare [detect] layout")
    return decode(raw, layout, d.conf, d.iou, d.max_det)


def _match(ref: tuple, got: tuple, iou: float) -> np.ndarray:
    """For each of `got`'s boxes in descending score order, whether it matches a not yet matched `ref` box of the
    same class with IoU >= `iou` (the one it overlaps most): [K] bool, in that order."""
    rb, rc = np.asarray(ref[0]).reshape(-1, 4), np.asarray(ref[-1])
    gb, gs, gc = np.asarray(got[0]).reshape(-1, 4), np.asarray(got[1]), np.asarray(got[-1])
    order = np.argsort(-gs, kind="stable")
    ious = iou_matrix(gb[order], rb)
    ious[gc[order][:, None] != rc[None, :]] = -1
    taken = np.zeros(len(rb), bool)
    hit = np.zeros(len(order), bool)
    for k in range(len(order)):
        row = np.where(taken, -1, ious[k])
        j = int(row.argmax()) if row.size else -1
        if j >= 0 and row[j] >= iou:
            taken[j], hit[k] = True, True
    return hit


def box_f1(ref: list[tuple], got: list[tuple], iou: float = 0.5) -> float:
    """F1 of `got`'s boxes against `ref`'s over all images: a box is found when a box of the same class overlaps
    it by IoU >= `iou` (each matched once, greedily by score). 1.0 when neither has a box."""
    tp = sum(int(_match(r, g, iou).sum()) for r, g in zip(ref, got))
    total = sum(len(r[0]) for r in ref) + sum(len(g[0]) for g in got)
    return 1.0 if total == 0 else 2 * tp / total


def _ap(hits: np.ndarray, scores: np.ndarray, positives: int) -> float:
    """COCO's 101-point interpolated average precision of detections (`hits`, `scores`) against `positives`."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    recall = tp / positives
    precision = tp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        i = np.searchsorted(recall, r, side="left")
        ap += precision[i] if i < len(precision) else 0.0
    return ap / 101


def average_precision(ref: list[tuple], got: list[tuple], iou: float = 0.5) -> float:
    """mAP at one IoU: the mean over the classes `ref` has of each class's AP of `got` with `ref` as ground
    truth. `ref`'s scores, if any, are not used. 1.0 when neither has a box, 0.0 when only `got` has."""
    classes = np.unique(np.concatenate([np.asarray(r[-1], np.int64) for r in ref] or [np.zeros(0, np.int64)]))
    if not classes.size:
        return 1.0 if all(len(g[0]) == 0 for g in got) else 0.0
    aps = []
    for c in classes:
        hits, scores, positives = [], [], 0
        for r, g in zip(ref, got):
            rm, gm = np.asarray(r[-1]) == c, np.asarray(g[-1]) == c
            positives += int(rm.sum())
            rc = (np.asarray(r[0]).reshape(-1, 4)[rm], np.asarray(r[-1])[rm])
            gs = np.asarray(g[1])[gm]
            hit = _match(rc, (np.asarray(g[0]).reshape(-1, 4)[gm], gs, np.asarray(g[-1])[gm]), iou)
            hits.append(hit)
            scores.append(np.sort(gs)[::-1])  # _match's order: descending score
        aps.append(_ap(np.concatenate(hits), np.concatenate(scores), positives))
    return float(np.mean(aps))


def map50(ref: list[tuple], got: list[tuple]) -> float:
    return average_precision(ref, got, 0.5)


def map50_95(ref: list[tuple], got: list[tuple]) -> float:
    """COCO's mAP: the mean of the mAP at IoU 0.50, 0.55, ..., 0.95."""
    return float(np.mean([average_precision(ref, got, t) for t in np.linspace(0.5, 0.95, 10)]))


def labels_by_image(boxes, classes, image, n: int) -> list[tuple]:
    """Labelled boxes (xyxy pixels, class, image index per box) as each of `n` images' (boxes, classes)."""
    boxes, classes, image = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes), np.asarray(image)
    return [(boxes[image == i], classes[image == i].astype(np.int64)) for i in range(n)]
