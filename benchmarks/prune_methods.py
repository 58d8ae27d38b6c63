"""Pruning methods, measured: dense vs unstructured, block and channels pruning at several strengths.

    .venv/bin/python -m benchmarks.prune_methods [--models digits,mobilenet] [--size 96] [--alpha 0.35]
                                                 [--rounds 7] [--prune-epochs 16] [--seeds 3]

For each model, every variant is built through the Python API (`pipeline.build(VARIANT.toml)`, what
`python -m pipeline build --config VARIANT.toml` does): prune (the method under test), QAT, export,
verify with the accuracy gate.
Then, in one run and interleaved (round r times every artifact once, in a rotated order; the
median over rounds is kept), each artifact's latency on this machine (1 thread, batch 1, real
held-out inputs, the runner of `pipeline.bench`), and, when the emulated Raspberry Pi 4
is set up (`python -m pipeline device setup emu:rpi4`), its guest instructions per inference for the LiteRT files.

Models:
  digits-cnn    the default config. `dense` is trained 12 + 6 epochs, as long as a pruned variant's
                training plus pruning fine-tuning, and is not pruned.
  mobilenet-v2  Keras' MobileNetV2 (benchmarks/common.py: random init, width `--alpha`, `--size` px
                grey input) trained here on Fashion-MNIST (upscaled), then handed to the pipeline as a
                pretrained model. Every variant fine-tunes it `--fine-tune-epochs` epochs (`[model]
                fine_tune_epochs`), then prunes it with `--prune-epochs` epochs of fine-tuning; `dense`
                is fine-tuned for the sum instead, as long, and is not pruned. Learning rates decay (cosine).
Dense and every channels variant are built with `--seeds` seeds; the accuracy deltas are of their means.
Plus an XNNPACK sparse-inference probe (random weights: latency only, no accuracy): a hand-made
MobileNet-style net that meets XNNPACK's conditions for sparse inference, its 1x1 convs magnitude-
pruned, exported by targets/tflite.py as a block-pruned fp32 file (sparse encoding). And a channel-
alignment probe: the float MobileNetV2 channel-pruned keeping exact counts or multiples of 8 or 16.

Outputs: results/prune_methods.{md,csv,json,png}. Work files: benchmarks/.work/prune-methods/.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pipeline
from benchmarks.common import float_mobilenet, log
from pipeline import benchmark as bench
from pipeline import runner
from pipeline.releases.card import md_table
from pipeline.util import atomic_write_bytes, atomic_write_json
from targets import RUNNERS, TARGETS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / ".work" / "prune-methods"
DIGITS_TARGETS = "all"
MOBILENET_TARGETS = "tflite-fp32,tflite-int8,openvino-fp32,openvino-int8"
MEASURED = ("tflite-fp32", "tflite-int8", "openvino-fp32", "openvino-int8")
SEED_TARGETS = "tflite-fp32,tflite-int8"  # what the extra seeds build: the goal's targets
SPARSE_INT8 = "tflite-int8-sparse"  # benchmark-only: the QAT model with EXPERIMENTAL_SPARSITY, no XNNPACK


# -- configs -------------------------------------------------------------------------------------


def toml(sections: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {value(v)}" for k, v in keys.items()]
    return "\n".join(out) + "\n"


def merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, {}).update(v)
    return out


def variants(model: str, args) -> list[dict]:
    """name, method, strength and the config sections that differ from the model's base config."""
    if model == "digits-cnn":
        dense_extra = {"train": {"epochs": 12 + 6}}
        unstructured, block, channels = args.digits_sparsity, args.digits_sparsity, args.digits_channels
        residual = []
    else:
        dense_extra = {"model": {"fine_tune_epochs": args.fine_tune_epochs + args.prune_epochs}}
        unstructured, block, channels = args.mobilenet_sparsity, args.mobilenet_block, args.mobilenet_channels
        residual = args.mobilenet_channels_residual
    out = [
        {
            "name": "dense",
            "method": "dense",
            "strength": "-",
            "sections": merge({"prune": {"method": "unstructured", "sparsity": 0.0}}, dense_extra),
        }
    ]
    out += [
        {
            "name": f"unstructured-{s:g}",
            "method": "unstructured",
            "strength": f"sparsity {s:g}",
            "sections": {"prune": {"method": "unstructured", "sparsity": s}},
        }
        for s in unstructured
    ]
    out += [
        {
            "name": f"block-{s:g}",
            "method": "block",
            "strength": f"sparsity {s:g}, 4x1 blocks in Dense",
            "sections": {"prune": {"method": "block", "sparsity": s}},
        }
        for s in block
    ]
    out += [
        {
            "name": f"channels-{f:g}" + (f"-x{m}" if m else ""),
            "method": "channels",
            "strength": f"{f:g} of channels" + (f", multiples of {m}" if m else "") + " (residual streams kept)",
            "sections": {
                "prune": {"method": "channels", "channels_fraction": f} | ({"channels_multiple": m} if m else {})
            },
        }
        for f, m in channels
    ]
    out += [
        {
            "name": f"channels-residual-{f:g}",
            "method": "channels",
            "strength": f"{f:g} of channels, residual streams too",
            "sections": {"prune": {"method": "channels", "channels_fraction": f, "channels_residual": True}},
        }
        for f in residual
    ]
    return out


def mobilenet_base(args) -> dict:
    """Train the float MobileNetV2 once (kept under a key of its settings); its build config."""
    folder = float_mobilenet(WORK, args.size, args.alpha, args.train_epochs, args.train_samples, args.test_samples)
    return {
        "model": {"name": "mobilenet-v2", "path": str(folder / "float.h5"), "fine_tune_epochs": args.fine_tune_epochs},
        "data": {"path": str(folder / "data.npz"), "calibration_samples": 300},
        # Cosine decay: on seed 0 the float models gained 1.0 (dense) to 1.6 (channels 0.6x16) points over a
        # constant rate, int8 within 0.6 either way (a constant rate left dense under-annealed until QAT).
        "train": {"batch_size": 64, "learning_rate": 0.001, "lr_schedule": "cosine"},
        # BatchNormalization |gamma| ranks MobileNetV2's channels: in a trial at 0.75 (8 epochs) it kept
        # 3 points more accuracy than L1, at 0.5 and 0.6 they were within noise of each other.
        "prune": {"epochs": args.prune_epochs, "learning_rate": 0.001, "channels_criterion": "bn"},
        # At the default QAT learning rate (5e-4) the one QAT epoch trained dense further (int8 +1.0 point over
        # fp32) and cost channels-0.5 0.3; at 1e-4 both gained (+1.1, +0.5), on 10,000 test images.
        "qat": {"epochs": 1, "learning_rate": 0.0001},
        "build": {"max_accuracy_drop": 3.0},
    }, (folder / "source.txt").read_text().strip()


# -- building ------------------------------------------------------------------------------------


def with_seed(v: dict, seed: int) -> dict:
    """The variant built with another `[build] seed` (the shuffling of fine-tuning, pruning and QAT)."""
    return {**v, "name": f"{v['name']}-seed{seed}", "sections": merge(v["sections"], {"build": {"seed": seed}})}


def build_variant(model: str, base: dict, v: dict, targets: str, out: Path) -> dict:
    """Build one variant (its config written as a file, to rebuild by hand); copy its artifacts out of
    the way of the next build."""
    cfg_file = WORK / "configs" / model / f"{v['name']}.toml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(toml(merge(base, v["sections"])))
    log_file = WORK / "logs" / model / f"{v['name']}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log(f"{model} {v['name']}: pipeline.build({cfg_file}, targets={targets!r}, out={out})")
    fresh_keras()
    t0 = time.time()
    with open(log_file, "w") as f:
        try:
            b, error = (
                pipeline.build(cfg_file, targets=targets, out=out, log=lambda m: print(m, file=f, flush=True)),
                None,
            )
        except Exception as e:  # one variant failing (say, a strength its model cannot take) is a row, not the end
            b, error = None, f"{type(e).__name__}: {e}"
            print(f"error: {error}", file=f)
    seconds = time.time() - t0
    keep = WORK / "artifacts" / model / v["name"]
    shutil.rmtree(keep, ignore_errors=True)
    arts = {}
    for name, a in (b.artifacts if b else {}).items():
        row = dict(a.entry)
        if a.path:
            shutil.copytree(a.path.parent, keep / name)
            row["file"] = str(keep / name / a.path.name)
        arts[name] = row
    log(
        f"{model} {v['name']}: {error or 'built'} in {seconds:.0f} s; "
        + ", ".join(f"{t} {a['status']}" for t, a in arts.items())
    )
    return {
        "variant": v,
        "config": str(cfg_file),
        "error": error,
        "seconds": round(seconds, 1),
        "log": str(log_file),
        "build": b,
        "manifest": b.manifest if b else {},
        "artifacts": arts,
    }


def fresh_keras() -> None:
    """Each variant starts from a clean Keras state (layer-name counters, graphs), as it did when every
    build was its own process."""
    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].backend.clear_session()


def sparse_int8(model: str, built: dict) -> dict | None:
    """The block variant's QAT model as a sparse-encoded int8 .tflite (what the pipeline does not ship)."""
    from pipeline import stages
    from targets import Target, tflite

    b = built["build"]
    if b.manifest["stages"].get("qat", {}).get("method") != "qat":
        return None
    stages.tf_setup(b.config.build.seed)
    qat_model = stages.load_model(b.stage_file("qat", "model.h5"), qat=True)
    path = WORK / "artifacts" / model / built["variant"]["name"] / SPARSE_INT8 / "model.tflite"
    path.parent.mkdir(parents=True, exist_ok=True)
    target = Target(
        SPARSE_INT8,
        "tflite",
        "sparse int8",
        "model.tflite",
        "qat",
        "run_litert.py",
        "int8",
        {"mode": "int8", "sparse": True},
    )
    tflite.export(target, qat_model, np.load(b.stage_file("data", "x_cal.npy")), path, {})
    info = tflite.inspect(path)
    # Does it run under the default delegate, as the pipeline's verification would run it?
    default = runner.run(RUNNERS / "run_litert.py", path, ["--inputs", b.eval_inputs(), "--limit", "2"])
    from pipeline.util import gzip_size

    return {
        "target": SPARSE_INT8,
        "status": "ok",
        "file": str(path),
        "bytes": path.stat().st_size,
        "gzip_bytes": gzip_size(path),
        "quantization": info["quantization"],
        "sparse_tensors": info["sparse_tensors"],
        "sparsity": info["sparsity"],
        "accuracy": None,
        "options": [("delegate", "none")],
        "note": "XNNPACK (default delegate): "
        + ("runs" if default.get("ok") else f"refused ({(default.get('error') or '')[:90]})"),
    }


# -- measuring -----------------------------------------------------------------------------------


def measure_x86(items: list[dict], inputs: Path, args) -> None:
    """Interleaved rounds: every artifact once per round (grouped by target, so a variant is timed close to
    its dense peer; the start rotates each round). Kept: every round's p50, and their median."""
    from pipeline.devices import get_device

    device = get_device("local")
    items.sort(key=lambda it: it["target"])  # stable: dense first within each target
    for it in items:
        it["p50s"] = [None] * args.rounds
    for r in range(args.rounds):
        order = items[r % len(items) :] + items[: r % len(items)]
        for it in order:
            settings = bench.Settings(
                runs=args.runs, min_seconds=args.min_seconds, warmup=10, samples=100, options=it.get("options", [])
            )
            row = bench.bench_one(device, RUNNERS / it["runner"], Path(it["file"]), inputs, 1, settings)
            if row["status"] == "ok":
                it["p50s"][r] = row["p50_ms"]
                it["conditions"] = {k: row.get(k) for k in ("cpu", "cpus_available", "runtime_version", "delegate")}
                it.setdefault("loads", []).append(row.get("loadavg_1m"))
            else:
                it["error"] = row["error"]
        log(f"x86 round {r + 1}/{args.rounds} done")
    for it in items:
        ok = [p for p in it["p50s"] if p is not None]
        it["p50_ms"] = statistics.median(ok) if ok else None


def measure_pi4(items: list[dict], inputs: Path, args) -> str:
    """Guest instructions per inference on the emulated Pi 4 (LiteRT files), counted as
    `pipeline.bench(build, devices=["emu:rpi4"])` counts them; or why not measured."""
    from pipeline.devices import get_device
    from pipeline.devices.emulated import EMU_RUNS, EMU_SECTIONS
    from pipeline.errors import UsageError

    try:
        device = get_device("emu:rpi4")
    except (UsageError, ImportError) as e:
        return f"not measured: {e}"
    for it in items:
        if it["runner"] != "run_litert.py":
            continue
        settings = bench.Settings(samples=10, timeout=1800, options=it.get("options", []))
        row = bench.bench_one(device, RUNNERS / it["runner"], Path(it["file"]), inputs, 1, settings)
        if row.get("instructions_per_inference"):
            it["pi4_instructions"] = row["instructions_per_inference"]
        else:
            it["pi4_error"] = row.get("error") or "no instruction count"
    return (
        f"emulated Raspberry Pi 4 (qemu -cpu cortex-a72) as `pipeline bench --device emu:rpi4` runs it: LiteRT, "
        f"1 thread, median of {EMU_SECTIONS} sections of {EMU_RUNS} inferences"
    )


# -- the XNNPACK sparse-inference probe ----------------------------------------------------------


def xnnpack_probe(args) -> tuple[list[dict], Path]:
    """A MobileNet-style fp32 net that meets XNNPACK's sparse-inference conditions (3-channel input,
    3x3 stride-2 first conv with 1 pixel of padding on each side, 1x1 convs, depthwise 3x3 with
    pad 1, global mean), its 1x1 convs magnitude-pruned; random weights (latency only)."""
    from pipeline import stages
    from targets import Target, tflite

    tf, keras = stages.tf_setup(0)
    L = keras.layers
    x = inp = keras.Input((args.size, args.size, 3))
    x = L.ReLU(6.0)(L.Conv2D(16, 3, 2, padding="valid")(L.ZeroPadding2D(1)(x)))
    c = 16
    for t, cout, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]:
        for i in range(n):
            h = x
            if t != 1:
                h = L.ReLU(6.0)(L.Conv2D(c * t, 1)(h))
            if s == 2 and i == 0:
                h = L.DepthwiseConv2D(3, 2, padding="valid")(L.ZeroPadding2D(1)(h))
            else:
                h = L.DepthwiseConv2D(3, 1, padding="same")(h)
            h = L.Conv2D(cout, 1)(L.ReLU(6.0)(h))
            x = L.Add()([x, h]) if (i > 0 or s == 1) and c == cout else h
            c = cout
    x = L.GlobalAveragePooling2D()(L.ReLU(6.0)(L.Conv2D(640, 1)(x)))
    model = keras.Model(inp, L.Dense(10, activation="softmax")(x))
    rng = np.random.default_rng(0)
    inputs = WORK / "probe" / "inputs.npy"
    inputs.parent.mkdir(parents=True, exist_ok=True)
    np.save(inputs, rng.random((20, args.size, args.size, 3), dtype=np.float32))
    target = Target("probe", "tflite", "probe", "model.tflite", "float", "run_litert.py", "fp32", {"mode": "fp32"})
    items = []
    for s in (0.0, 0.75, 0.9):
        m = keras.models.clone_model(model)
        m.set_weights(model.get_weights())
        for layer in m.layers:
            if type(layer) is L.Conv2D and layer.kernel_size == (1, 1) and s:
                w = layer.get_weights()
                w[0] = np.where(np.abs(w[0]) > np.quantile(np.abs(w[0]), s), w[0], 0)
                layer.set_weights(w)
        m.edge_export_sparse = s > 0  # as load_model marks a block-pruned model
        path = WORK / "probe" / f"sparsity-{s:g}" / "model.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        tflite.export(target, m, None, path, {"probe": True})
        info = tflite.inspect(path)
        items.append(
            {
                "model": "xnnpack-probe",
                "variant": f"1x1 convs {s:.0%} zero" if s else "dense",
                "method": "dense" if not s else "block",
                "target": "tflite-fp32",
                "runner": "run_litert.py",
                "file": str(path),
                "bytes": path.stat().st_size,
                "sparse_tensors": info["sparse_tensors"],
                "sparsity": info["sparsity"],
            }
        )
    return items, inputs


def alignment_probe(model_path: str, calibration: np.ndarray, args) -> list[dict]:
    """Why `prune.channels_multiple`: the float MobileNetV2, channel-pruned (BN criterion, residual streams
    kept) at each fraction, keeping an exact count or a multiple of 8 or 16 channels per layer, then
    converted to int8 by post-training quantization without fine-tuning (latency only, no accuracy)."""
    from pipeline import stages
    from pipeline.prune_channels import count_macs, prune_channels
    from targets import Target, tflite

    stages.tf_setup(0)
    model = stages.load_model(Path(model_path))
    target = Target("probe", "tflite", "probe", "model.tflite", "float", "run_litert.py", "int8", {"mode": "int8"})
    items = []
    for f, m in [(0.0, 1)] + [(f, m) for f in args.align_fractions for m in (1, 8, 16)]:
        pruned = prune_channels(model, f, criterion="bn", residual=False, multiple=m)[0] if f else model
        name = f"channels-{f:g} multiple {m}" if f else "dense"
        path = WORK / "alignment" / name.replace(" ", "-") / "model.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        tflite.export(target, pruned, calibration, path, {"probe": True})
        items.append(
            {
                "model": "alignment-probe",
                "variant": name,
                "method": "channels" if f else "dense",
                "target": "tflite-int8",
                "runner": "run_litert.py",
                "file": str(path),
                "status": "ok",
                "params": pruned.count_params(),
                "macs": count_macs(pruned),
                "bytes": path.stat().st_size,
            }
        )
    return items


# -- report --------------------------------------------------------------------------------------


def rows_for(model: str, builds: list[dict], seeded: dict | None = None) -> list[dict]:
    """One row per artifact; `seeded` {variant: builds with other seeds} adds each seed's accuracy and their mean."""
    rows = []
    for b in builds:
        v, prune = b["variant"], b["manifest"].get("stages", {}).get("prune", {})
        for t, a in b["artifacts"].items():
            seeds = [a.get("accuracy")] + [
                sb["artifacts"].get(t, {}).get("accuracy") for sb in (seeded or {}).get(v["name"], [])
            ]
            seeds = [x for x in seeds if x is not None]
            rows.append(
                {
                    "model": model,
                    "variant": v["name"],
                    "method": v["method"],
                    "strength": v["strength"],
                    "target": t,
                    "runner": TARGETS[t].runner if t in TARGETS else "run_litert.py",
                    "status": a.get("status"),
                    "reason": a.get("reason"),
                    "file": a.get("file"),
                    "accuracy": a.get("accuracy"),
                    "float_accuracy": prune.get("accuracy"),
                    "params": prune.get("params_after"),
                    "nonzero_params": prune.get("nonzero_params_after"),
                    "macs": prune.get("macs_after"),
                    "bytes": a.get("bytes"),
                    "gzip_bytes": a.get("gzip_bytes"),
                    "sparsity": a.get("sparsity"),
                    "quantization": a.get("quantization"),
                    "options": a.get("options", []),
                    "note": a.get("note"),
                }
                | (
                    {
                        "accuracy_seeds": seeds,
                        "accuracy_mean": statistics.mean(seeds),
                        "seeds": ", ".join(f"{x:.4f}" for x in seeds),
                    }
                    if len(seeds) > 1
                    else {}
                )
            )
    return rows


def _mean_accuracy(row: dict) -> float:
    return row.get("accuracy_mean", row["accuracy"])


def ratios(rows: list[dict]) -> None:
    dense = {(r["model"], r["target"]): r for r in rows if r["method"] == "dense"}
    for r in rows:
        d = dense.get((r["model"], "tflite-int8" if r["target"] == SPARSE_INT8 else r["target"]))
        if not d:
            continue
        if r.get("accuracy") is not None and d.get("accuracy") is not None:
            # Of the seeds' means where a variant was built with several seeds (one training run moves by ~0.5 pts).
            r["accuracy_delta_points"] = round((_mean_accuracy(r) - _mean_accuracy(d)) * 100, 2)
        # Per round, dense p50 / variant p50 (timed minutes apart at most), then the median over rounds:
        # a burst of other load on the shared machine skews one round's pair, not the figure.
        pairs = [a / b for a, b in zip(d.get("p50s") or [], r.get("p50s") or []) if a and b]
        if pairs:
            r["speedup_x86"] = statistics.median(pairs)
        if r.get("pi4_instructions") and d.get("pi4_instructions"):
            r["speedup_pi4"] = d["pi4_instructions"] / r["pi4_instructions"]
        if r.get("gzip_bytes") and d.get("gzip_bytes"):
            r["gzip_vs_dense"] = r["gzip_bytes"] / d["gzip_bytes"]


COLUMNS = [
    ("variant", "variant"),
    ("target", "target"),
    ("status", "status"),
    ("accuracy", "accuracy"),
    ("seeds", "accuracy, seeds 0, 1, ..."),
    ("accuracy_delta_points", "Δ acc pts"),
    ("params", "params"),
    ("nonzero_params", "non-zero params"),
    ("macs", "MACs"),
    ("bytes", "bytes"),
    ("gzip_bytes", "gzip bytes"),
    ("gzip_vs_dense", "gzip / dense"),
    ("p50_ms", "x86 p50 ms"),
    ("speedup_x86", "x86 speedup"),
    ("pi4_minstr", "Pi 4 Minstr/inf"),
    ("speedup_pi4", "Pi 4 speedup"),
]
CSV_FIELDS = [
    "model",
    "variant",
    "method",
    "strength",
    "target",
    "status",
    "reason",
    "accuracy",
    "float_accuracy",
    "accuracy_seeds",
    "accuracy_mean",
    "accuracy_delta_points",
    "params",
    "nonzero_params",
    "macs",
    "bytes",
    "gzip_bytes",
    "gzip_vs_dense",
    "sparsity",
    "sparse_tensors",
    "quantization",
    "p50_ms",
    "p50s",
    "speedup_x86",
    "pi4_instructions",
    "speedup_pi4",
    "note",
    "error",
    "pi4_error",
]


def goal(rows: list[dict], model: str) -> list[str]:
    """The issue's goal, checked on the measured rows: channels within 1 point, >= 1.5x on LiteRT x86, same
    direction on the Pi 4, and channels + int8 the fastest artifact of the table."""
    rs = [r for r in rows if r["model"] == model and r["status"] == "ok"]
    out = []
    for t in ("tflite-int8", "tflite-fp32"):
        ok = [
            r
            for r in rs
            if r["method"] == "channels"
            and r["target"] == t
            and r.get("accuracy_delta_points") is not None
            and r["accuracy_delta_points"] >= -1.0
            and r.get("speedup_x86")
        ]
        if not ok:
            out.append(f"- {t}: no channels variant within 1 accuracy point of dense: goal not reached.")
            continue
        best = max(ok, key=lambda r: r["speedup_x86"])
        pi4 = (
            f"{best['speedup_pi4']:.2f}x fewer instructions on the emulated Pi 4"
            if best.get("speedup_pi4")
            else "Pi 4 not measured"
        )
        verdict = "reached" if best["speedup_x86"] >= 1.5 and (best.get("speedup_pi4") or 2) > 1 else "NOT reached"
        out.append(
            f"- {t}: best channels variant within 1 point is {best['variant']} "
            f"(Δ {best['accuracy_delta_points']:+.2f} pts): {best['speedup_x86']:.2f}x faster than dense "
            f"on LiteRT x86, {pi4}: goal {verdict}."
        )
    timed = [r for r in rs if r.get("p50_ms") and r["target"] in MEASURED]
    close = [r for r in timed if (r.get("accuracy_delta_points") or 0) >= -1.0]
    for what, among in (("of the table", timed), ("within 1 point of dense (same target)", close)):
        if among:
            f = min(among, key=lambda r: r["p50_ms"])
            out.append(
                f"- fastest artifact {what}: {f['variant']} {f['target']} ({f['p50_ms']:.4g} ms, "
                f"accuracy {f.get('accuracy') or 0:.4f}, Δ {f.get('accuracy_delta_points') or 0:+.2f} pts)."
            )
    for method in ("unstructured", "block"):
        for r in [r for r in rs if r["method"] == method and r["target"] in ("tflite-fp32", "tflite-int8")]:
            out.append(
                f"- {r['variant']} {r['target']}: gzip {r.get('gzip_vs_dense', 0):.2f}x of dense, "
                f"bytes {r['bytes']}, x86 speedup {r.get('speedup_x86') or 0:.2f}x, "
                f"Pi 4 speedup {r.get('speedup_pi4') or 0:.2f}x"
            )
    return out


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in dict.fromkeys(r["model"] for r in rows) if not m.endswith("-probe")]
    colors = {"dense": "black", "unstructured": "tab:blue", "block": "tab:orange", "channels": "tab:green"}
    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 10), squeeze=False)
    for j, model in enumerate(models):
        rs = [
            r
            for r in rows
            if r["model"] == model
            and r["status"] == "ok"
            and r.get("accuracy") is not None
            and r["target"] in ("tflite-fp32", "tflite-int8")
        ]
        for ax, key, label in (
            (axes[0][j], "p50_ms", "LiteRT x86 p50 latency, ms (1 thread)"),
            (axes[1][j], "gzip_bytes", "gzip bytes of the .tflite"),
        ):
            for r in rs:
                if not r.get(key):
                    continue
                filled = r["target"] == "tflite-int8"
                ax.scatter(
                    r[key],
                    r["accuracy"],
                    s=60,
                    color=colors[r["method"]] if filled else "none",
                    edgecolors=colors[r["method"]],
                    linewidths=1.5,
                )
                ax.annotate(
                    r["variant"].replace("unstructured", "unstr"),
                    (r[key], r["accuracy"]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("accuracy (held-out)")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(
                f"{model}: filled = tflite-int8, hollow = tflite-fp32; "
                + ", ".join(f"{k} {c}" for k, c in colors.items() if k != "dense")
                + ", dense black",
                fontsize=7,
            )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,mobilenet")
    p.add_argument("--size", type=int, default=96, help="MobileNetV2 input size in px (96..224)")
    p.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier")
    p.add_argument("--train-epochs", type=int, default=8, help="training epochs of the float MobileNetV2")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=8,
        help="MobileNetV2: epochs the pretrained model is fine-tuned by the pipeline before pruning",
    )
    p.add_argument("--prune-epochs", type=int, default=16, help="MobileNetV2: pruning fine-tuning epochs")
    p.add_argument("--digits-sparsity", default="0.5,0.75,0.9")
    p.add_argument("--digits-channels", default="0.25,0.5,0.6,0.75")
    p.add_argument("--mobilenet-sparsity", default="0.75")
    p.add_argument("--mobilenet-block", default="0.75")
    p.add_argument(
        "--mobilenet-channels",
        default="0.5,0.55x16,0.6x16,0.75",
        help="channel fractions, FRACTIONxMULTIPLE for a prune.channels_multiple other than 8",
    )
    p.add_argument(
        "--mobilenet-channels-residual",
        default="",
        help="channels variants that also prune the residual streams (channels_residual = true)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="build seeds of dense and every channels variant (tflite-fp32/int8); Δ acc is of their means",
    )
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median kept)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--min-seconds", type=float, default=0.3)
    p.add_argument("--no-probe", action="store_true", help="skip the XNNPACK sparse-inference and alignment probes")
    p.add_argument(
        "--align-fractions", default="0.5,0.55,0.6", help="channel fractions of the alignment probe (MobileNetV2 only)"
    )
    args = p.parse_args(argv)
    for k in (
        "digits_sparsity",
        "mobilenet_sparsity",
        "mobilenet_block",
        "mobilenet_channels_residual",
        "align_fractions",
    ):
        setattr(args, k, [float(x) for x in getattr(args, k).split(",") if x.strip()])
    for k in ("digits_channels", "mobilenet_channels"):  # FRACTION or FRACTIONxMULTIPLE
        setattr(
            args,
            k,
            [
                (float(x.split("x")[0]), int(x.split("x")[1]) if "x" in x else None)
                for x in getattr(args, k).split(",")
                if x.strip()
            ],
        )
    t0 = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    from targets import telemetry_off

    telemetry_off()
    rows, notes, pi4_line, build_seconds, align_source = [], {}, "not measured", 0.0, None
    for short in args.models.split(","):
        model = {"digits": "digits-cnn", "mobilenet": "mobilenet-v2"}[short.strip()]
        if model == "digits-cnn":
            base, targets, source = {"model": {"name": "digits-cnn"}}, DIGITS_TARGETS, "scikit-learn digits"
        else:
            base, source = mobilenet_base(args)
            targets = MOBILENET_TARGETS
        out = WORK / "build" / model
        builds = [build_variant(model, base, v, targets, out) for v in variants(model, args)]
        seeded = {
            v["name"]: [build_variant(model, base, with_seed(v, s), SEED_TARGETS, out) for s in range(1, args.seeds)]
            for v in variants(model, args)
            if v["method"] in ("dense", "channels")
        }
        build_seconds += sum(b["seconds"] for b in builds + [b for bs in seeded.values() for b in bs])
        model_rows = rows_for(model, builds, seeded)
        for b in builds:
            if b["variant"]["method"] == "block" and b["artifacts"].get("tflite-int8", {}).get("status") == "ok":
                extra = sparse_int8(model, b)
                if extra:
                    model_rows += rows_for(model, [{**b, "artifacts": {SPARSE_INT8: extra}}])
        dense = builds[0]["build"]
        if dense is None:
            raise SystemExit(f"{model}: the dense build failed ({builds[0]['error']}): see {builds[0]['log']}")
        inputs = dense.eval_inputs()  # every variant's data stage is the same
        if model == "mobilenet-v2":
            align_source = (base["model"]["path"], inputs, np.load(dense.stage_file("data", "x_cal.npy")))
        timed = [
            r
            for r in model_rows
            if r["status"] == "ok" and r.get("file") and (r["target"] in MEASURED or r["target"] == SPARSE_INT8)
        ]
        measure_x86(timed, inputs, args)
        pi4_line = measure_pi4(timed, inputs, args)
        notes[model] = {
            "source": source,
            "builds": [
                {k: b[k] for k in ("config", "error", "seconds", "log")} | {"variant": b["variant"]["name"]}
                for b in builds
            ],
            "statuses": {b["variant"]["name"]: {t: a["status"] for t, a in b["artifacts"].items()} for b in builds},
        }
        rows += model_rows
    if not args.no_probe:
        probe, probe_inputs = xnnpack_probe(args)
        measure_x86(probe, probe_inputs, args)
        measure_pi4(probe, probe_inputs, args)
        for r in probe:
            r["status"] = "ok"
        rows += probe
        if align_source and args.align_fractions:
            align = alignment_probe(align_source[0], align_source[2], args)
            measure_x86(align, align_source[1], args)
            measure_pi4(align, align_source[1], args)
            rows += align
    for r in rows:
        if r.get("pi4_instructions"):
            r["pi4_minstr"] = r["pi4_instructions"] / 1e6
    ratios(rows)
    conditions = next((r["conditions"] for r in rows if r.get("conditions")), {})
    loads = [x for r in rows for x in r.get("loads", []) if x is not None]

    RESULTS.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if k not in ("loads",)} for r in rows]
    atomic_write_json(
        RESULTS / "prune_methods.json",
        {"rows": clean, "notes": notes, "args": vars(args), "conditions": conditions, "pi4": pi4_line},
    )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(clean)
    atomic_write_bytes(RESULTS / "prune_methods.csv", buf.getvalue().encode())
    chart(rows, RESULTS / "prune_methods.png")

    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    parts = [
        "# Pruning methods, measured\n",
        f"Made by `{f'.venv/bin/python -m benchmarks.prune_methods {cmd}'.rstrip()}` in {time.time() - t0:.0f} s "
        f"({build_seconds:.0f} s of it building: a build whose stages are in the pipeline's cache takes a second) "
        f"on {conditions.get('cpu')} ({conditions.get('cpus_available')} CPUs shared with other jobs; load average "
        f"{min(loads, default=0):.2f}..{max(loads, default=0):.2f} during timing), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, ai-edge-litert "
        f"{conditions.get('runtime_version')}.\n",
        f"- x86 latency: p50 of batch-1 inferences on real held-out samples, 1 thread, runner of `pipeline bench`"
        f" (LiteRT with XNNPACK, OpenVINO CPU f32 hint); {args.rounds} interleaved rounds (every artifact once per "
        f"round, grouped by target, rotated start); p50 shown = median of the rounds' p50s; >= {args.runs} runs and "
        f">= {args.min_seconds:g} s each. Speedup = median over rounds of (dense p50 / variant p50), same "
        f"target, same round.",
        f"- Pi 4: {pi4_line}; guest instructions per inference (deterministic, no wall time). "
        "Speedup = dense instructions / variant instructions.",
        "- Accuracy: the artifact's own accuracy on the held-out split (from its verification), seed 0; dense and "
        f"every channels variant are also built with seeds 1..{args.seeds - 1} (`[build] seed`: the shuffling of "
        "fine-tuning, pruning and QAT), tflite-fp32 and tflite-int8 only. Δ is in points against dense's artifact "
        "of the same target, of the seeds' means where there are several. MACs: dense multiply-accumulates of the "
        "graph (zeros are still multiplied by every runtime measured here).",
        f"- `{SPARSE_INT8}`: benchmark-only, the block variant's QAT model converted with EXPERIMENTAL_SPARSITY, "
        f"run with `--delegate none` (compared with dense tflite-int8 under XNNPACK).\n",
        "![accuracy vs latency and size](prune_methods.png)\n",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        if model == "alignment-probe":
            parts += [
                "\n## Channel alignment probe (int8, untrained after pruning: latency only)\n",
                alignment_probe.__doc__.split("\n\n")[0].replace("\n   ", "") + "\n",
                md_table(
                    rs,
                    [
                        ("variant", "variant"),
                        ("params", "params"),
                        ("macs", "MACs"),
                        ("p50_ms", "x86 p50 ms"),
                        ("speedup_x86", "x86 speedup"),
                        ("pi4_minstr", "Pi 4 Minstr/inf"),
                        ("speedup_pi4", "Pi 4 speedup"),
                    ],
                ),
            ]
            continue
        if model == "xnnpack-probe":
            parts += [
                "\n## XNNPACK sparse-inference probe (random weights, latency only)\n",
                xnnpack_probe.__doc__.split("\n\n")[0].replace("\n   ", "") + "\n",
                md_table(
                    rs,
                    [
                        ("variant", "variant"),
                        ("bytes", "bytes"),
                        ("sparse_tensors", "sparse tensors"),
                        ("sparsity", "sparsity (read back)"),
                        ("p50_ms", "x86 p50 ms"),
                        ("speedup_x86", "x86 speedup"),
                        ("pi4_minstr", "Pi 4 Minstr/inf"),
                        ("speedup_pi4", "Pi 4 speedup"),
                    ],
                ),
            ]
            continue
        n = notes[model]
        parts += [
            f"\n## {model}\n",
            f"Data: {n['source']}.\n",
            md_table(rs, COLUMNS),
            "\nGoal check (computed from the rows above):\n",
            *goal(rows, model),
        ]
        failed = {v: {t: s for t, s in st.items() if s != "ok"} for v, st in n["statuses"].items()}
        failed = {v: f for v, f in failed.items() if f}
        parts.append(
            f"\nBuilds: {len(n['statuses'])} variants x {len(next(iter(n['statuses'].values()), {}))} "
            f"targets; " + ("every artifact ok." if not failed else f"not ok: {failed}")
        )
    text = "\n".join(parts) + "\n"
    atomic_write_bytes(RESULTS / "prune_methods.md", text.encode())
    print(text)
    log(f"done in {time.time() - t0:.0f} s: {RESULTS}/prune_methods.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
