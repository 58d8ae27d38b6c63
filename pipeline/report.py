"""What the user sees: progress bars on stderr and plain-text tables."""

from __future__ import annotations

import contextlib
import sys
import time

_WIDTH = 24


def progress(label: str, done: int, total: int, extra: str = "") -> None:
    """A bar redrawn in place on a terminal; in a log (CI) only the first and last lines."""
    tty = sys.stderr.isatty()
    if not tty and done not in (1, total):
        return
    filled = int(_WIDTH * done / max(total, 1))
    line = f"{label:<12} [{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{total} {extra}".rstrip()
    end = "\n" if done >= total or not tty else ""
    sys.stderr.write(("\r" if tty else "") + line + end)
    sys.stderr.flush()


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """`columns` is [(key, header)]; floats are shown with 4 significant digits, None as '-'."""

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)  # never cut: a reason or a status is read whole

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max(len(x) for x in col) for col in zip(heads, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(heads), fmt(["-" * w for w in widths]), *map(fmt, body)])


def figures(f: dict, original_accuracy: float | None = None) -> str:
    """A model's figures against the original: accuracy (and the drop), top-1 agreement, cosine, max |diff|."""
    parts = [f["nonfinite"]] if f.get("nonfinite") else []
    if f.get("accuracy") is not None:
        drop = f" ({(f['accuracy'] - original_accuracy) * 100:+.2f} pts)" if original_accuracy is not None else ""
        parts.append(f"accuracy {f['accuracy']:.4f}{drop}")
    if f.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {f['top1_agreement']:.4f}")
    if f.get("box_f1") is not None:
        parts.append(f"box F1 {f['box_f1']:.4f}, mAP50 {f['map50']:.4f}")
    if f.get("cosine") is not None:
        parts.append(f"cosine {f['cosine']:.4f}")
    if f.get("max_abs_diff") is not None:
        parts.append(f"max |diff| {f['max_abs_diff']:.3g}")
    for h in f.get("heads") or []:  # several outputs: each head by its own measure
        own = {"scores": "top1_agreement", "metric": "metric", "detect": "box_f1"}.get(h.get("kind"), "cosine")
        parts.append(f"{h['name']} {own.replace('_', ' ')} {h[own]:.4f}")
    return ", ".join(parts)


def original_line(train: dict, data: dict) -> str:
    """What every later figure is measured against."""
    n = (data.get("preprocessing") or {}).get("samples", {}).get("test") or data.get("test_samples")
    if train.get("accuracy") is not None:
        acc = f"accuracy {train['accuracy']:.4f}"
    elif data.get("labelled_boxes"):  # a detection set: its boxes are labels, the box figures' other reference
        acc = f"{data['labelled_boxes']} labelled boxes (mAP50-95 against them)"
    else:
        acc = "no labels: agreement only"
    line = f"original: {acc} on {n} held-out samples; every figure below is against this model"
    if train.get("fine_tuned"):
        line += f"\nfine-tune: vs original: {figures(train['fine_tuned'], train.get('accuracy'))}"
    return line


def stage_line(name: str, meta: dict, train: dict) -> str:
    return f"{name}: vs original: {figures(meta.get('vs_original', {}), train.get('accuracy'))}"


def prune_advice(cfg, meta: dict) -> str:
    if meta.get("method") == "channels":
        return f"lower prune.channels_fraction (now {cfg.prune.channels_fraction:g}) or use --prune none"
    return f"lower prune.sparsity (now {cfg.prune.sparsity}) or use --prune none"


def prune_summary(trained: dict, pruned: dict) -> str:
    """One line on what the prune stage did to the model (stage metas as the manifest keeps them)."""
    parts = [f"prune: {pruned.get('method', 'unstructured')}"]
    if pruned.get("method", "unstructured") != "none" and not pruned.get("weights_changed", True):
        parts.append("nothing pruned, the model as it was")
    auto = pruned.get("auto")
    if auto:
        tried = ", ".join(f"{t['sparsity']:g}" for t in auto["tried"])
        parts.append(
            f"sparsity auto -> {auto['chosen']:g} (tried {tried} on {auto['validation_samples']} "
            f"validation samples, {auto.get('seconds', 0):.0f} s)"
        )
    before, after = pruned.get("params_before"), pruned.get("params_after")
    if before and after is not None and after != before:
        parts.append(f"params {before:,} -> {after:,} ({after / before:.2f}x)")
    before, after = pruned.get("macs_before"), pruned.get("macs_after")
    if before and after is not None and after != before:
        parts.append(f"MACs {before:,} -> {after:,} ({after / before:.2f}x)")
    if pruned.get("sparsity"):
        parts.append(f"{pruned['sparsity']:.1%} of the weights zero")
    if pruned.get("vs_original"):
        parts.append(f"vs original: {figures(pruned['vs_original'], trained.get('accuracy'))}")
    elif trained.get("accuracy") is not None and pruned.get("accuracy") is not None:
        parts.append(f"float accuracy {trained['accuracy']:.4f} -> {pruned['accuracy']:.4f}")
    return ", ".join(parts)


@contextlib.contextmanager
def step(label: str, what: str = ""):
    """One line when a step that may take a while starts, one with its duration when it ends (stderr)."""
    t0 = time.perf_counter()
    sys.stderr.write(f"{label:<12} {what} ...\n".replace("  ...", " ..."))
    sys.stderr.flush()
    yield
    sys.stderr.write(f"{label:<12} done in {time.perf_counter() - t0:.1f} s\n")
    sys.stderr.flush()


ARTIFACT_COLUMNS = [
    ("target", "target"),
    ("status", "status"),
    ("quantization", "quantization"),
    ("bytes", "bytes"),
    ("gzip_bytes", "gzip"),
    ("sparsity", "sparsity"),
    ("accuracy", "accuracy"),
    ("reference_accuracy", "original acc"),
    ("top1_agreement", "agreement vs original"),
    ("max_abs_diff", "max |diff| vs original"),
    ("verified_on", "int8 verified on"),
    ("legacy_tflite_runtime", "tflite-runtime 2.14"),
    ("build_seconds", "seconds"),
]


def box_headline(columns: list[tuple[str, str]], rows: list[dict]) -> list[tuple[str, str]]:
    """A detector's files are judged by their boxes: box F1 and mAP50 against the original's take the agreement
    column's place (and mAP50-95 against labelled boxes when there are some). The build table and the model card."""
    if not any(r.get("box_f1") is not None for r in rows):
        return columns
    at = columns.index(("top1_agreement", "agreement vs original"))
    boxes = [("box_f1", "box F1 vs original"), ("map50", "mAP50 vs original")]
    if any(r.get("map50_95_labels") is not None for r in rows):
        boxes.append(("map50_95_labels", "mAP50-95 (labels)"))
    return [*columns[:at], *boxes, *columns[at + 1 :]]


def artifact_columns(rows: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """The build table's rows and columns (the terminal and the report page show the same): a detector's boxes
    are its headline, a model with several heads shows each artifact's worst head by its own measure."""
    # int8 figures hold for the ISA whose kernels ran them (pipeline/isa.py)
    rows = [{**r, "verified_on": (r.get("x86_isa") or {}).get("label")} for r in rows]
    columns = box_headline(list(ARTIFACT_COLUMNS), rows)
    if any(r.get("worst_head") for r in rows):
        after = next(c for c in columns if c[0] in ("top1_agreement", "map50"))
        columns.insert(columns.index(after) + 1, ("worst_head", "worst head"))
    return rows, columns
