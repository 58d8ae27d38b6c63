"""Post-training int8 picked by measurement, for the int8 targets whose model got no QAT.

One contest for every family: a family's backend (targets/ptq/onnx.py, openvino.py, tflite.py) names its
candidates in a table (CANDIDATES: a name and the function that makes the quantized model), runs a model on
samples, and restores layers to float when asked. `choose` makes every candidate, runs it in its own runtime on
the validation split (never the test split) and keeps the one whose outputs are closest (mean cosine, the
lowest head's: targets/metrics.py, the measure the gate uses) to the original model's (Settings.reference: the
train stage's outputs on the validation split; the float model's when none is given). Top-1 agreement is
recorded, not chosen by: on 100 validation samples it moves by whole samples and flips on near-ties.

When even the best stays below `budget` and `mixed` is on, the layers whose quantization costs the most are
kept at higher precision until the budget holds (the backend's `restore`). Such a file reads back as
`int8-mixed` (`inspect`), never `int8`.

Every choice returns the quantized model and a record for the manifest: what was tried, each candidate's
agreement on the validation split and seconds, what was chosen and why. What was measured on the way (the
candidates tried and dropped, sample counts) is benchmarks/results/ptq_history.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from targets import metrics

BUDGET = 0.99
"""Top-1 agreement with the reference (the original model) on the validation split that mixed precision
restores layers until."""

MAX_RESTORE_STEPS = 10
"""At most this many groups of layers go back to float (each step re-validates the model; bounds build time)."""

BIAS_CORRECTION_SAMPLES = 16
"""Calibration samples bias correction measures each layer's error on (measured: ptq_history.md)."""

DEPLOY_CPUS = ("any", "vnni")
"""[ptq] deploy_cpu: which x86 CPUs an onnx-int8 / openvino-int8 file's integer arithmetic is exact on.
`any`: every x86-64 with AVX2 (and ARM). Without VNNI, onnxruntime's and OpenVINO's x86 kernels multiply
u8 activations by s8 weights in pairs summed in 16 bits (vpmaddubsw), which saturates with full-range
weights: the same file then answers differently. So `any` makes files that never saturate: 7-bit weights
(targets.onnx.ort_kind, targets.openvino.nncf_advanced), whose pairs stay within 16 bits. `vnni`: full-range
s8 weights, for a deployment CPU with AVX-512 VNNI, AVX-VNNI or AMX (or ARM) only."""


@dataclass(frozen=True)
class Settings:
    """How an export chooses (the build's [ptq] section and its validation samples)."""

    validation: np.ndarray
    mixed: bool = False
    budget: float = BUDGET
    reference: list[np.ndarray] | None = None
    """The ORIGINAL model's outputs (every head, in its order) on `validation`: what candidates are scored
    against. None: the float model being quantized (the same when nothing changed it)."""
    candidates: tuple[str, ...] | None = None
    """The candidates (by name, from a backend's CANDIDATES) that compete; None: every one."""

    def choose(self, family: str, progress=None, **inputs):
        """The best int8 model of `family`'s backend made from `inputs`, and the record of the choice."""
        return choose(backend(family)(**inputs), self, progress)


@dataclass(frozen=True)
class Candidate:
    """One row of a backend's table: `make(backend)` returns the quantized model; `when(backend)`: whether it
    competes on these inputs."""

    name: str
    make: Callable
    when: Callable = lambda backend: True
    mixed: bool = False
    """It keeps some weighted layers float (a detector's head): chosen, the file reads back as int8-mixed."""


class Backend:
    """One family's side of the contest: its candidates, how a model runs, how layers go back to float."""

    CANDIDATES: tuple[Candidate, ...] = ()
    calibration: np.ndarray
    """The samples every candidate is calibrated on (NNCF's accuracy control calibrates on them too)."""

    def float_model(self):
        """The float model being quantized (what `run` takes)."""
        raise NotImplementedError

    def run(self, model, x: np.ndarray) -> list[np.ndarray]:
        """Every output of `model` on every sample of `x`, in the original model's order."""
        raise NotImplementedError

    def restore(self, settings: Settings, model, record: dict):
        """A partly-float model that holds `settings.budget`, if one beats `model` (the best full-int8 one)."""
        return model, record


def backend(family: str) -> type[Backend]:
    return importlib.import_module(f"targets.ptq.{family}").Backend


def head_tail(outputs, producer: dict, inputs, weighted, fed_by_softmax, label) -> list:
    """A YOLO detector head's decode arithmetic, in any graph format: from the outputs back to the last weighted
    ops, continued through the DFL's expected value (a weighted op fed by a Softmax: fixed weights 0..15, no
    learned layer), so it ends at the last convolutions of the box and score branches. Quantized, a Concat of box
    coordinates (0..640 pixels) and class scores (0..1) under one int8 scale erases the scores; float, each
    branch's last convolution keeps its own range (NNCF's YOLOv8 example ignores the same subgraph). [] when no
    weighted op is fed by a Softmax: not such a head. `producer`: tensor -> op; `inputs(op)` its input tensors,
    `weighted(op)`, `fed_by_softmax(op)`, `label(op)` what the format's quantizer excludes it by."""
    tail, seen, todo, dfl = [], set(), list(outputs), False
    while todo:
        op = producer.get(todo.pop())
        if op is None or id(op) in seen:
            continue
        seen.add(id(op))
        if weighted(op):
            if not fed_by_softmax(op):
                continue
            dfl = True
        tail.append(label(op))
        todo.extend(inputs(op))
    return tail if dfl else []


def _heads(a) -> list[np.ndarray]:
    return [np.asarray(o) for o in a] if isinstance(a, list | tuple) else [np.asarray(a)]


def agreement(ref, out) -> float:
    """The worst head by its own measure (targets/metrics.py): top-1 agreement of score heads, mean cosine
    similarity of the others. `ref`, `out`: one output's array, or a list of every head's. 0 for outputs with
    NaN or Inf: what the mixed and accuracy-control searches then never keep."""
    if nonfinite_samples(out):
        return 0.0
    return metrics.closeness(_heads(out), _heads(ref))["agreement"]


def nonfinite_samples(out) -> int:
    """How many samples' outputs (any head) hold NaN or Inf."""
    return int(np.count_nonzero(np.logical_or.reduce([metrics.nonfinite_rows(o) for o in _heads(out)])))


def closeness(ref, out) -> float:
    """Mean cosine similarity of each sample's outputs; with several heads, the lowest head's."""
    return metrics.closeness(_heads(out), _heads(ref))["closeness"]


def choose(backend: Backend, settings: Settings, progress=None):
    """The best full-int8 candidate; with `settings.mixed`, restored within the budget when it misses it."""
    model, record = full_int8(backend, settings, progress)
    return within_budget(backend, settings, model, record) if settings.mixed else (model, record)


def full_int8(backend: Backend, settings: Settings, progress=None):
    """Every competing candidate of `backend` made, run and scored (`_pick`), the record explaining why."""
    x = settings.validation
    ref, against = _reference(settings.reference, lambda: backend.run(backend.float_model(), x))
    rows = [
        c
        for c in backend.CANDIDATES
        if c.when(backend) and (settings.candidates is None or c.name in settings.candidates)
    ]
    step = _stepper(progress, len(rows))
    made = [(c.name, step(functools.partial(c.make, backend))) for c in rows]
    model, record = _pick(made, lambda m: backend.run(m, x), ref)
    record.update(against=against, why=_why({**record, "against": against}))
    if any(c.mixed and c.name == record["chosen"] for c in rows):
        record["mixed"] = True
    return model, record


def within_budget(backend: Backend, settings: Settings, model, record: dict):
    """`model` (the best full-int8 choice) if it meets the budget, else the backend's partly-float one."""
    if record["agreement"] >= settings.budget:
        return model, record
    return backend.restore(settings, model, record)


def _pick(candidates, run, ref: list[np.ndarray]) -> tuple[object, dict]:
    """Build every candidate `(name, make)`, run it on the validation split (`run(model)`: every head's
    outputs), keep the one whose outputs are closest to `ref` (a detector's: box F1 first, `_rank`; else mean
    cosine, the lowest head's): a continuous
    score sees every sample's error, where top-1 agreement on 100 samples moves by whole samples (1 point each)
    and its ranking of close candidates is noise. A candidate that fails is recorded."""
    tried, best, best_model = [], None, None
    for name, make in candidates:
        # Saves build time; the closest of the tried is kept. Not for a detector: box F1 1.0 on a few pictures
        # says little of the next candidate (yolo11n, 11 pictures: both 1.0, held out 0.930 and 0.958).
        if best is not None and best["agreement"] >= 1.0 and "box_f1" not in best:
            tried.append({"method": name, "skipped": "the closest method so far agrees on every validation sample"})
            continue
        start = time.perf_counter()
        try:
            model = make()
            out = run(model)
            if bad := nonfinite_samples(out):  # argmax of NaN is 0, and NaN loses no `>`: never a candidate
                raise ValueError(f"NaN or Inf in its outputs on {bad} of {len(_heads(out)[0])} validation samples")
            figures = metrics.closeness(_heads(out), _heads(ref))
            a, c, f1 = figures["agreement"], figures["closeness"], figures.get("box_f1")
        except Exception as e:
            tried.append({"method": name, "error": _error(e)})
            continue
        seconds = round(time.perf_counter() - start, 2)
        tried.append({"method": name, "agreement": round(a, 4), "closeness": round(c, 6), "seconds": seconds})
        if f1 is not None:
            tried[-1]["box_f1"] = round(f1, 4)
        if best is None or _rank(tried[-1]) > _rank(best):
            best, best_model = tried[-1], model
    if best is None:
        raise RuntimeError(f"every post-training method failed: {tried}")
    return best_model, {
        "chosen": best["method"],
        "agreement": best["agreement"],
        "closeness": best["closeness"],
        **({"box_f1": best["box_f1"]} if "box_f1" in best else {}),
        "candidates": tried,
    }


def _rank(candidate: dict) -> tuple:
    """What `_pick` keeps the largest of: a detector's box F1 against the original's boxes (its outputs' cosine
    is dominated by the box coordinates and barely sees the class scores boxes are kept by), then closeness."""
    return (candidate.get("box_f1", 0.0), candidate["closeness"])


def _error(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _why(record: dict) -> str:
    others = [c for c in record["candidates"] if "closeness" in c and c["method"] != record["chosen"]]
    runner_up = max(others, key=_rank, default=None)
    if "box_f1" in record:
        vs = f" (next {runner_up['method']} {runner_up['box_f1']:.4f})" if runner_up else ""
        return f"boxes closest to the {record['against']} model's on the validation split, box F1 {record['box_f1']:.4f}{vs}"
    vs = (
        f" (next closest {runner_up['method']} {runner_up['closeness']:.6f}, top-1 {runner_up['agreement']:.4f})"
        if runner_up
        else ""
    )
    return (
        f"outputs closest to the {record['against']} model's on the validation split, mean cosine "
        f"{record['closeness']:.6f}, top-1 agreement {record['agreement']:.4f}{vs}"
    )


def _reference(reference, float_outputs) -> tuple[list[np.ndarray], str]:
    """What candidates are scored against: the original model's validation outputs (every head) when given,
    else the float model's (`float_outputs()`), and which of the two it is (for the record)."""
    if reference is not None:
        return _heads(reference), "original"
    return float_outputs(), "float"


def _stepper(progress, n: int):
    count = 0

    def wrap(make):
        def run():
            nonlocal count
            count += 1
            if progress:
                progress(count, n)
            return make()

        return run

    return wrap


def nncf_accuracy_control(backend: Backend, settings: Settings, best, record: dict, model, feed, deploy_cpu: str):
    """NNCF accuracy control (the ONNX and OpenVINO backends' `restore`): quantize the float `model` (what NNCF
    takes: an ONNX ModelProto, an ov.Model), rank the quantizers by how far each moves the outputs on the
    validation split, restore the worst to float until the agreement is within `1 - budget` of the reference's
    (the original model's outputs, else the float `model`'s). `feed(sample)`: NNCF's transform. Kept only if it
    beats `best`."""
    from targets.openvino import import_nncf, nncf_advanced

    validation, budget = settings.validation, settings.budget
    ref, _ = _reference(settings.reference, lambda: backend.run(model, validation))
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def validate(m, _data):
        # Called on the whole validation split (per-item ranking runs the model itself): `ref` lines up.
        out = backend.run(m, validation)
        return agreement(ref, out), [[o[i][None] for o in out] for i in range(len(validation))]

    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            q = nncf.quantize_with_accuracy_control(
                model,
                nncf.Dataset(backend.calibration, feed),
                nncf.Dataset(validation, feed),
                validate,
                max_drop=1 - budget,
                subset_size=len(backend.calibration),
                advanced_quantization_parameters=nncf_advanced(deploy_cpu),
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    ranking_subset_size=len(validation), max_num_iterations=MAX_RESTORE_STEPS
                ),
            )
        a = agreement(ref, backend.run(q, validation))
    except Exception as e:  # seen: NNCF 3.4's restorer on a real ONNX graph, "ONNX backend is not supported"
        failed = {"method": "nncf-accuracy-control", "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
        return best, {**record, "candidates": [*record["candidates"], failed]}
    tried = {
        "method": "nncf-accuracy-control",
        "agreement": round(a, 4),
        "seconds": round(time.perf_counter() - start, 2),
    }
    record = {**record, "candidates": [*record["candidates"], tried]}
    if a <= record["agreement"]:
        return best, record
    why = (
        f"the best full-int8 method ({record['chosen']}) agreed {record['agreement']:.4f} < budget {budget} on the "
        f"validation split; NNCF accuracy control kept the most costly layers in float: {a:.4f}"
    )
    return q, {**record, "chosen": tried["method"], "agreement": tried["agreement"], "why": why, "mixed": True}


def score_file(family: str, path: Path, settings: Settings) -> dict:
    """How close an artifact file's outputs on the validation split are to the original model's
    (settings.reference), by the measure `_pick` chooses with (closeness), and its top-1 agreement: how a
    build picks between its QAT and post-training files."""
    x = settings.validation
    out = importlib.import_module(f"targets.ptq.{family}").file_outputs(Path(path), x)
    if bad := nonfinite_samples(out):  # never kept over a file with finite outputs
        return {"closeness": None, "agreement": None, "nonfinite": f"NaN or Inf on {bad} of {len(x)} samples"}
    return {
        "closeness": round(closeness(settings.reference, out), 6),
        "agreement": round(agreement(settings.reference, out), 4),
    }
