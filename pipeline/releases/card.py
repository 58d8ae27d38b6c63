"""MODEL_CARD.md and BENCHMARKS.md of a release, from its manifest."""

from __future__ import annotations

from pipeline.graph import STAGES
from pipeline.releases import FLOAT_ATOL
from pipeline.report import box_headline

BENCH_COLUMNS = [
    ("target", "target"),
    ("device", "device"),
    ("runtime", "runtime"),
    ("runtime_version", "version"),
    ("delegate", "delegate"),
    ("threads", "threads"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("load_ms", "load ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("arena_bytes", "arena bytes"),
    ("file_bytes", "file bytes"),
    ("cpu", "cpu"),
]
MEMORY_COLUMNS = [
    ("target", "target"),
    ("device", "device"),
    ("harness", "harness"),
    ("threads", "threads"),
    ("peak_rss_mb", "peak RSS MB"),
    ("arena_bytes", "arena bytes"),
    ("file_bytes", "file bytes"),
    ("peak_rss_source", "measured"),
]


def benchmarks_md(m: dict) -> str:
    bench = m["release"]["benchmarks"]
    head = f"# Benchmarks: {m['model']} {m['release']['version']}\n\n"
    if not bench:
        return (
            head + "Not benchmarked: this release was made without bench results "
            "(`python -m pipeline bench --json FILE`, then `release --bench FILE`).\n"
        )
    cols = [c for c in BENCH_COLUMNS if any(r.get(c[0]) is not None for r in bench)]
    width = 40
    top = max(r["p50_ms"] for r in bench)
    label = lambda r: f"{r['target']} {r.get('device', '?')} {r.get('threads', '?')}t"
    pad = max(len(label(r)) for r in bench)
    bars = "\n".join(
        f"{label(r):<{pad}}  {'#' * max(1, round(width * r['p50_ms'] / top)):<{width}}  {r['p50_ms']:.4g} ms"
        for r in bench
    )
    conditions = sorted(
        {
            f"{r.get('device', '?')}: {r.get('cpu', '?')}, {r.get('os', '?')} {r.get('arch', '')}, "
            f"Python {r.get('python', '?')}"
            for r in bench
        }
    )
    return (
        head + "Median (p50) latency of one inference, batch 1, as measured by `python -m pipeline bench` "
        "(shorter is faster):\n\n```\n"
        + bars
        + "\n```\n\n"
        + md_table(bench, cols)
        + "\n\nConditions:\n\n"
        + "".join(f"- {c}\n" for c in conditions)
        + "\nLatency holds only for these conditions; an emulated device's wall time is not device latency.\n"
    )


# -- the model card ------------------------------------------------------------------------------

STEP_RESULTS = ("method", "reason", "sparsity", "params", "params_after")


def _step_order(name: str):
    # The manifest stores stages sorted by name; the card lists them in the order they ran.
    order = list(STAGES)
    return (order.index(name) if name in order else len(order), name)


ARTIFACT_COLUMNS = [
    ("target", "target"),
    ("quantization", "quantization"),
    ("bytes", "bytes"),
    ("gzip_bytes", "gzip"),
    ("sparsity", "sparsity"),
    ("accuracy", "accuracy"),
    ("reference_accuracy", "original acc"),
    ("top1_agreement", "agreement vs original"),
    ("max_abs_diff", "max abs diff vs original"),
    ("verified_on", "int8 verified on"),
    ("input_layout", "input layout"),
    ("input", "input"),
    ("output", "output"),
    ("run_with", "run with"),
    ("runtime", "verified in"),
]


def model_card(m: dict) -> str:
    rel, cfg = m["release"], m["config"]
    shipped = [a for a in m["artifacts"] if a["target"] in rel["archives"]]
    stages = m["stages"]
    d = stages.get("data", {})
    lines = [
        f"# Model card: {m['model']} {rel['version']}",
        "",
        f"Release {rel['version']} of `{m['model']}` (model version {m['model_version']}, the version embedded in "
        f"each artifact; config hash {m['config_hash']}; edge-export {m['pipeline_version']}; seed {m['seed']}).",
        "",
        "## Model",
        "",
        f"- Settings: {_settings(cfg.get('model', {}))}",
        f"- Input: {d.get('input_shape', '?')} per sample, preprocessed as: {_settings(m['preprocessing'])}",
        "- Output: "
        + (f"{len(m['labels'])} class scores: {', '.join(m['labels'])}" if m["labels"] else "unlabelled")
        + " (each target's I/O types below)",
        "",
        "## Data",
        "",
        _data_line(m),
        "",
        "## Training and compression",
        "",
        "Every figure is measured against the original model (the model as brought, or the trained built-in "
        "one) on the held-out split: accuracy with labels, else top-1 agreement and cosine similarity.",
        "",
        md_table(
            _stage_rows(m),
            [
                ("step", "step"),
                ("what", "what"),
                ("settings", "settings"),
                ("result", "result"),
                ("vs_original", "vs the original model"),
            ],
        ),
        "",
        _gate_line(cfg.get("build", {}), m["preprocessing"].get("labelled")),
        "",
        "## Artifacts",
        "",
        md_table(
            [
                {
                    **a,
                    "input": _io(a.get("inputs")),
                    "output": _io(a.get("outputs")),
                    "run_with": ", ".join(f"{k}={v}" for k, v in (a.get("run_config") or {}).items()) or None,
                    "verified_on": _isa(a.get("x86_isa")),
                }
                for a in shipped
            ],
            box_headline(list(ARTIFACT_COLUMNS), shipped),
        ),
        "",
        "Accuracy and agreement (top-1) against the original model on the held-out split, in the runtime named."
        + _box_note(shipped, cfg),
        *_head_notes(shipped),
        *_run_config_notes(shipped),
        "",
        "## Latency",
        "",
    ]
    bench = rel["benchmarks"]
    if bench:
        lines += [
            md_table(bench, [c for c in BENCH_COLUMNS if any(r.get(c[0]) is not None for r in bench)]),
            "",
            "Batch 1; details and conditions in BENCHMARKS.md.",
        ]
    else:
        lines.append("Not benchmarked.")
    memory = [{"target": t, **r} for t, rows in (rel.get("memory") or {}).items() for r in rows]
    if memory:
        lines += [
            "",
            "## Memory",
            "",
            md_table(memory, [c for c in MEMORY_COLUMNS if any(r.get(c[0]) is not None for r in memory)]),
            "",
            "Peak resident memory of the process that ran the file (on an emulated board the guest's own, not "
            "the emulator's), the runtime's arena where it reports one, and the bytes of the file(s) it loads.",
        ]
    runtimes = sorted({a.get("runtime", "?") for a in shipped})
    lines += [
        "",
        "## Limitations",
        "",
        f"- Accuracy is measured on {d.get('test_samples', '?')} held-out samples of the same source as the "
        "training data; it says nothing about inputs from elsewhere or preprocessed otherwise.",
        f"- Verified only in {', '.join(runtimes)} on the build machine ({_isa(m.get('x86_isa')) or 'CPU not recorded'}); "
        "another runtime or version may not load an artifact or may answer differently.",
        *_int8_cpu_note(cfg, shipped),
        "- Each archive's test vectors replay within the tolerance in its release.json (float outputs "
        f"{FLOAT_ATOL:g} absolute, integer outputs one quantization step) in the runtime that recorded them.",
        "",
        "## What fell back",
        "",
    ]
    fell = [f"{name}: {f}" for name, s in stages.items() for f in s.get("fallbacks", [])]
    fell += [f"{a['target']}: {f}" for a in shipped for f in a.get("fallbacks", [])]
    fell += [
        f"{e['target']} not released ({e['status'].replace('_', ' ')}: {e['reason']}; --allow-failed)"
        for e in rel["excluded"]
    ]
    lines += [f"- {f}" for f in fell] or ["Nothing: every step ran as configured and every requested target shipped."]
    return "\n".join(lines) + "\n"


def _isa(isa: dict | None) -> str | None:
    """ "x86_64 AVX-512 VNNI (AMD EPYC)": the CPU whose kernels produced a row's figures."""
    if not isa:
        return None
    return f"{isa.get('arch', '?')} {isa.get('label', '?')}" + (f" ({isa['cpu']})" if isa.get("cpu") else "")


def _int8_cpu_note(cfg: dict, shipped: list[dict]) -> list[str]:
    """Where the int8 ONNX / OpenVINO figures hold ([ptq] deploy_cpu)."""
    if not any(a["target"] in ("onnx-int8", "openvino-int8") for a in shipped):
        return []
    if cfg.get("ptq", {}).get("deploy_cpu", "any") == "vnni":
        return [
            '- onnx-int8 / openvino-int8 use full-range int8 weights ([ptq] deploy_cpu = "vnni"): their figures hold '
            "on CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX); on an AVX2-only x86 their products saturate and they "
            "answer worse."
        ]
    return [
        "- onnx-int8 / openvino-int8 are made so that their int8 arithmetic is the same on every x86-64 with AVX2, "
        'with or without VNNI ([ptq] deploy_cpu = "any": 7-bit weights): their '
        "figures hold there."
    ]


def _data_line(m: dict) -> str:
    p = m["preprocessing"]
    n = p.get("samples", {})
    split = ", ".join(f"{v} {k}" for k, v in n.items()) if n else "?"
    how = {k: p[k] for k in ("resize", "channels", "scale", "mean", "std") if k in p}
    return (
        f"{p.get('source', '?')}, {'labelled' if p.get('labelled') else 'without labels'}: {split} samples "
        f"(validation carved from the training samples, never trained on; test held out); "
        f"{p.get('calibration_samples', '?')} training samples calibrated quantization; "
        f"preprocessing: {_settings(how)}; input shape {p.get('input_shape', '?')}."
    )


# The prune settings each method reads: a card shows no setting of a method that did not run.
PRUNE_KEYS = {
    "unstructured": ("sparsity", "epochs", "learning_rate"),
    "block": ("sparsity", "block_size", "block_m_by_n", "epochs", "learning_rate"),
    "channels": (
        "channels_fraction",
        "channels_target",
        "channels_criterion",
        "channels_residual",
        "channels_multiple",
        "epochs",
        "learning_rate",
    ),
    "none": (),
}


def _stage_rows(m: dict) -> list[dict]:
    cfg, stages = m["config"], m["stages"]
    original = stages.get("train", {}).get("accuracy")
    rows = []
    for name, st in sorted(stages.items(), key=lambda kv: _step_order(kv[0])):
        settings = cfg.get(name, {})
        if name == "prune":
            method = st.get("method", settings.get("method"))
            settings = {"method": method, **{k: settings.get(k) for k in PRUNE_KEYS.get(method, ())}}
            if st.get("auto"):
                settings["sparsity"] = f"auto -> {st['auto']['chosen']:g}"
        elif name == "qat" and st.get("method") != "qat":
            settings = {"ran": "no", "int8 targets": "post-training quantization"}
        elif name == "train" and (cfg.get("model", {}).get("path")):
            settings = {k: v for k, v in cfg.get("model", {}).items() if k in ("path", "fine_tune_epochs")}
        result = {k: st[k] for k in STEP_RESULTS if k in st}
        rows.append(
            {
                "step": name,
                "what": STAGES[name].about if name in STAGES else "",
                "settings": _settings(settings),
                "result": _settings(result, "-"),
                "vs_original": _vs_original(st, name, original),
            }
        )
    return rows


def _vs_original(st: dict, name: str, original: float | None) -> str:
    if name == "train":
        return "the reference" + (f" (accuracy {original:.4g})" if original is not None else "")
    f = st.get("vs_original") or {}
    parts = []
    if f.get("accuracy") is not None and original is not None:
        parts.append(f"accuracy {f['accuracy']:.4g} ({(f['accuracy'] - original) * 100:+.2f} pts)")
    if f.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {f['top1_agreement']:.4g}")
    if f.get("cosine") is not None:
        parts.append(f"cosine {f['cosine']:.4g}")
    parts += [head_line(h) for h in f.get("heads") or []]
    return ", ".join(parts) or "-"


def _box_note(shipped: list[dict], cfg: dict) -> str:
    if not any(a.get("box_f1") is not None for a in shipped):
        return ""
    d = cfg.get("detect", {})
    return (
        f" A detector: each file's output decoded to boxes (score > {d.get('conf', '?')}, class-aware NMS at IoU "
        f"{d.get('iou', '?')}); box F1 counts its boxes that match one of the original model's of the same class "
        f"at IoU >= 0.5, mAP50 takes the original's boxes as ground truth; the gate is box F1 >= "
        f"{cfg.get('build', {}).get('min_box_f1', '?')}."
    )


def _head_notes(shipped: list[dict]) -> list[str]:
    """A model with several outputs: every artifact's figures head by head, each gated by its own measure."""
    notes = [
        f"- {a['target']} (worst: {a.get('worst_head')}): " + "; ".join(head_line(h) for h in a["heads"])
        for a in shipped
        if a.get("heads")
    ]
    return ["", "Each output (head) against the original's, by its own measure:", "", *notes] if notes else []


def head_line(h: dict) -> str:
    """One head's figures against the original's, its own measure first."""
    figures = [
        f"{label} {h[k]:.4g}"
        for k, label in (
            ("accuracy", "accuracy"),
            ("top1_agreement", "top-1 agreement"),
            ("box_f1", "box F1"),
            ("map50", "mAP50"),
            ("metric", "metric"),
            ("cosine", "cosine"),
            ("relative_error", "relative error"),
        )
        if h.get(k) is not None
    ]
    return f"{h['name']} ({h['kind']}): {', '.join(figures)}"


def _gate_line(build: dict, labelled: bool) -> str:
    if labelled:
        return (
            f"Gate: the pruned model, the QAT model and every artifact may lose at most "
            f"{build.get('max_accuracy_drop', '?')} accuracy points against the original model."
        )
    return (
        f"Gate: the pruned model, the QAT model and every artifact must agree with the original model on at "
        f"least {build.get('min_agreement', '?')} of the held-out samples (top-1; cosine similarity "
        f"{build.get('min_cosine', '?')} for other outputs)."
    )


def _settings(d: dict, empty: str = "defaults") -> str:
    shown = {k: v for k, v in d.items() if v not in ("", [], (), None)}
    return ", ".join(f"{k} {_cell(v)}" for k, v in shown.items()) or empty


def _run_config_notes(shipped: list[dict]) -> list[str]:
    """What an artifact needs at run time, and what its runtime's default gave instead (measured at build)."""
    notes = []
    for a in shipped:
        if not a.get("run_config"):
            continue
        need = ", ".join(f"`{k}={v}`" for k, v in a["run_config"].items())
        d = a.get("runtime_default") or {}
        seen = (
            f"; with the runtime's default ({d.get('precision')} on the build machine's CPU) it differed from "
            f"the float model by up to {d['max_abs_diff']:.2g} (against {a.get('max_abs_diff', 0):.2g})"
            if "max_abs_diff" in d
            else ""
        )
        notes.append(f"- `{a['target']}` must be compiled with {need}{seen}.")
    return ["", *notes] if notes else []


def _io(specs) -> str:
    return "; ".join(
        f"{s.get('name', '')} {s['dtype']} {s['shape']}".strip()
        + (f" (scale {s['scale']:.6g}, zero point {s['zero_point']})" if s.get("scale") else "")
        for s in specs or []
    )


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(map(_cell, v)) + "]"
    return str(v).replace("|", "\\|")


def md_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(out)
