"""`report`: one self-contained HTML page of a build, its bench rows and a sweep, written to OUT/report.html.

Everything is inline (CSS, SVG charts from pipeline/charts.py); the page has no script, no link and no
external resource, so it opens offline and can be mailed as it is. Every figure on it is read from the files
the other commands wrote: OUT/<model>/manifest.json, `bench --json` files, a sweep's results.csv.
"""

from __future__ import annotations

import csv
import json
import math
import time
from html import escape
from pathlib import Path

from pipeline import __version__, charts
from pipeline.errors import UsageError
from pipeline.util import atomic_write_bytes

PAGE = "report.html"
SOURCE = "_bench_file"  # which --bench file a row came from, to tell the same row of two runs apart
MB = 1 << 20

# A bench row's columns, shown when at least one row of the board has the field.
BENCH_COLUMNS = [
    ("target", "target"),
    ("threads", "thr"),
    ("status", "status"),
    ("runtime", "runtime"),
    ("runtime_version", "version"),
    ("delegate", "delegate"),
    ("load_ms", "load ms"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("instructions_per_inference", "guest insn/inference"),
    ("estimated_p50_ms", "estimated p50 ms"),
    ("top1_agreement_vs_original", "top-1 vs original"),
    ("peak_rss_mb", "peak RSS MB"),
    ("arena_bytes", "arena bytes"),
    ("file_bytes", "file bytes"),
    ("profile_error", "no profile"),
    ("error", "error"),
]
# What a board's chart puts on the latency axis: the first field its rows have.
LATENCY = [
    ("p50_ms", "p50 latency, ms (measured)"),
    ("estimated_p50_ms", "p50 latency, ms (estimated from the emulated run)"),
    ("instructions_per_inference", "guest instructions per inference (emulated)"),
]
QUALITY = [
    ("box_f1", "box F1 against the original model's boxes"),
    ("accuracy", "accuracy (held-out split)"),
    ("top1_agreement_vs_original", "top-1 agreement with the original model"),
    ("top1_agreement", "top-1 agreement with the original model"),
    ("agreement", "top-1 agreement with the original model"),
]

SWEEP_TEXT = {"variant", "target", "device", "status", "quantization", "reason", "artifact"}

CSS = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{margin-top:1.4em}
table{border-collapse:collapse;font-size:12px;margin:.6em 0}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#0a7d32}.bad{color:#b00020;font-weight:bold}.note{color:#555;font-size:13px}
svg{display:block;max-width:100%;height:auto;margin:.8em 0}details{margin:.4em 0}summary{cursor:pointer}
"""


# -- inputs --------------------------------------------------------------------------------------------------


def load_bench(path: Path) -> list[dict]:
    """The rows of a `bench --json` file; anything else is a UsageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"bench file not found: {path} (write one with `bench --json FILE`)")
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not a `bench --json` file: not JSON ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"{path} is not a `bench --json` file: not a non-empty JSON list of rows")
    for i, r in enumerate(rows):
        missing = [k for k in ("target", "device", "status") if not isinstance(r, dict) or k not in r]
        if missing:
            raise UsageError(f"{path} is not a `bench --json` file: row {i} has no {', '.join(missing)}")
    return rows


def _number(text: str):
    if text in ("", None):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        v = float(text)
    except ValueError:
        return text
    return v if math.isfinite(v) else text


def load_sweep(folder: Path) -> tuple[list[dict], list[str], dict]:
    """A sweep's rows (results.csv, numbers as numbers), its grid keys and summary.json. `folder`: the sweep's
    --out or its sweep/ folder."""
    folder = Path(folder)
    csv_path = next((p for p in (folder / "results.csv", folder / "sweep" / "results.csv") if p.is_file()), None)
    if csv_path is None:
        raise UsageError(f"{folder} holds no sweep results (results.csv): give the --out of a finished `sweep`")
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [{k: v if k in SWEEP_TEXT else _number(v) for k, v in r.items()} for r in reader]
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{csv_path} cannot be read as a sweep's results: {e}") from None
    if "variant" not in fields or not {"target", "device", "status"} <= set(fields):
        raise UsageError(f"{csv_path} is not a sweep's results.csv (no variant, target, device, status columns)")
    summary_path = csv_path.parent / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        summary = {}
    return rows, fields[: fields.index("variant")], summary if isinstance(summary, dict) else {}


def load_builds(out: Path) -> list[dict]:
    found = []
    for p in sorted(out.glob("*/manifest.json")):
        try:
            m = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a manifest (or one being written): not this page's to judge
        if isinstance(m, dict) and isinstance(m.get("artifacts"), list):
            found.append(m)
    return found


def write(out: Path, bench=(), sweep: Path | None = None) -> Path:
    """Read everything first (any bad input is a UsageError before a byte is written), then write the page."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out} is not a folder: give the --out of a build (default build/)")
    rows, sources = [], []
    for item in bench:
        if isinstance(item, dict):
            rows.append(item)
        else:
            rows += [{**r, SOURCE: Path(item).name} for r in load_bench(Path(item))]
            sources.append(str(item))
    swept = load_sweep(Path(sweep)) if sweep is not None else None
    if sweep is not None:
        sources.append(str(sweep))
    builds = load_builds(out)
    if not builds and not rows and swept is None:
        raise UsageError(f"{out} holds no build (no <model>/manifest.json): run `build --out {out}`, or give --bench")
    path = out / PAGE
    atomic_write_bytes(path, render(builds, rows, swept, sources).encode())
    return path


# -- the page ------------------------------------------------------------------------------------------------


def _cell(v) -> str:
    if v is None or v == "":
        return "<td>-</td>"
    if isinstance(v, bool):
        return f"<td>{'yes' if v else 'no'}</td>"
    if isinstance(v, int):
        return f'<td class="n">{v}</td>'
    if isinstance(v, float):
        return f'<td class="n">{v:.4g}</td>'
    if isinstance(v, dict | list):
        v = json.dumps(v, sort_keys=True)
    cls = (
        ' class="ok"' if v == "ok" else ' class="bad"' if v in ("failed", "failed_build", "failed_verification") else ""
    )
    return f"<td{cls}>{escape(str(v))}</td>"


def table(rows: list[dict], columns: list[tuple[str, str]], *, only_filled: bool = False) -> str:
    if only_filled:
        columns = [(k, h) for k, h in columns if any(r.get(k) not in (None, "") for r in rows)]
    head = "".join(f"<th>{escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(k)) for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _first(rows: list[dict], choices):
    return next(((k, label) for k, label in choices if any(r.get(k) is not None for r in rows)), (None, None))


def _family(target: str) -> str:
    return str(target).split("-")[0]


def _families() -> list[str]:
    """The target families in registry order: each has one colour on every chart of the page."""
    from targets import TARGETS

    return list(dict.fromkeys(_family(name) for name in TARGETS))


def _build_section(m: dict) -> str:
    train = m.get("stages", {}).get("train") or m.get("stages", {}).get("original") or {}
    arts = [{**a, "verified_on": (a.get("x86_isa") or {}).get("label")} for a in m["artifacts"]]
    facts = [f"config {m.get('config_hash', '?')}", f"built {m.get('finished', '?')}"]
    if train.get("accuracy") is not None:
        facts.insert(0, f"original model's accuracy {train['accuracy']:.4f} (every figure is against this model)")
    if (m.get("x86_isa") or {}).get("cpu"):
        facts.append(f"on {m['x86_isa']['cpu']} ({m['x86_isa'].get('label', '?')})")
    ok = [a for a in arts if a.get("status") == "ok"]
    quality, q_label = _first(ok, QUALITY)
    chart = charts.scatter(
        [{"x": a.get("bytes"), "y": a.get(quality), "label": a["target"], "group": _family(a["target"])} for a in ok],
        title=f"{m.get('model', '?')}: {q_label or 'accuracy'} against file size",
        x_label="file size, bytes",
        y_label=q_label or "accuracy",
        groups=_families(),
    )
    return (
        f"<h2>Build: {escape(str(m.get('model', '?')))}</h2>"
        f'<p class="note">{escape("; ".join(facts))}</p>{_targets_table(arts)}{chart}'
    )


def _targets_table(arts: list[dict]) -> str:
    """The table `build` prints, with each failure's reason in place of the build time."""
    from pipeline.report import artifact_columns

    rows, columns = artifact_columns(arts)
    columns = [c for c in columns if c[0] != "build_seconds"] + [("reason", "reason")]
    return table(rows, columns, only_filled=True)


def _labels(rows: list[dict], several_models: bool) -> list[str]:
    """A row's name on a board: its target, with the threads, the model and the runtime when they differ."""
    out = []
    for r in rows:
        label = str(r["target"]) + (f" x{r['threads']} threads" if r.get("threads") not in (None, 1) else "")
        out.append(f"{r.get('model', '?')}/{label}" if several_models else label)
    out = _tell_apart(out, rows, "runtime", "({})")  # --legacy: the same file in another runtime
    return _tell_apart(out, rows, SOURCE, "[{}]")  # the same row in two bench files


def _tell_apart(labels: list[str], rows: list[dict], key: str, form: str) -> list[str]:
    """Labels that two rows share get the rows' `key` appended, when that tells them apart."""
    seen: dict[str, set] = {}
    for x, r in zip(labels, rows):
        seen.setdefault(x, set()).add(r.get(key))
    return [f"{x} {form.format(r.get(key))}" if len(seen[x]) > 1 else x for x, r in zip(labels, rows)]


def _conditions(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return "no successful run on this board"
    r = ok[0]
    parts = [f"{r.get('cpu') or '?'} ({r.get('cpus_available', '?')} CPUs)", f"{r.get('os', '')} {r.get('arch', '')}"]
    if r.get("input"):
        parts.append(f"inputs: {r['input']}")
    runtimes = sorted({f"{x.get('runtime')} {x.get('runtime_version') or ''}".strip() for x in ok if x.get("runtime")})
    if runtimes:
        parts.append("runtimes: " + ", ".join(runtimes))
    return "; ".join(parts)


def _profile_by_type(r: dict) -> list[dict]:
    """The row's per-op-type summary; from its per-op list when it has only that."""
    if isinstance(r.get("profile_by_type"), list):
        return [p for p in r["profile_by_type"] if isinstance(p, dict) and "op_type" in p]
    merged: dict[str, dict] = {}
    for p in r.get("profile") or []:
        if not isinstance(p, dict) or "op_type" not in p:
            continue
        m = merged.setdefault(p["op_type"], {"op_type": p["op_type"]})
        for k in ("share", "ms", "instructions", "calls"):
            if isinstance(p.get(k), int | float):
                m[k] = m.get(k, 0) + p[k]
    return list(merged.values())


def _type_figures(r: dict) -> tuple[dict[str, float], str]:
    """Per op type, the row's figure and its unit: ms or instructions when the profile has them for every op
    type, else the share of the row's p50 in ms, else the share in %."""
    types = _profile_by_type(r)
    for key in ("ms", "instructions"):
        if types and all(isinstance(p.get(key), int | float) for p in types):
            return {p["op_type"]: p[key] for p in types}, key
    shares = {p["op_type"]: p["share"] for p in types if isinstance(p.get("share"), int | float)}
    if r.get("p50_ms") is not None:
        return {t: s * r["p50_ms"] for t, s in shares.items()}, "ms (share of p50)"
    return {t: s * 100 for t, s in shares.items()}, "%"


def _op_bars(r: dict, label: str) -> str:
    ops = [p for p in r.get("profile") or [] if isinstance(p, dict) and isinstance(p.get("share"), int | float)]
    if not ops:
        return ""
    top = sorted(ops, key=lambda p: -p["share"])[:15]
    key = next((k for k in ("ms", "instructions") if all(isinstance(p.get(k), int | float) for p in top)), None)
    values = [p[key] for p in top] if key else [p["share"] * 100 for p in top]
    svg = charts.bars(
        {key or "share": values},
        [f"{p.get('name') or '?'} ({p.get('op_type', '?')})" for p in top],
        title=f"{label}: the {len(top)} slowest of {len(ops)} ops",
        unit=key or "% of the row's time",
    )
    return f"<details><summary>{escape(label)}: per op</summary>{svg}</details>" if svg else ""


def _int8_vs_fp32(rows: list[dict], labels: list[str]) -> list[str]:
    """Per op type, each int8 row beside the fp32 file of its format (the question users ask: which ops make
    int8 slower or faster): the row's own `profile_compare` (int8 op types taken to their float ones by
    pipeline/op_profile.py), else the two rows' profiles by op type as they are."""
    fp32 = {
        (r.get("model"), _family(r["target"]), r.get("threads")): r for r in rows if r.get("quantization") == "fp32"
    }
    out = []
    for r, label in zip(rows, labels):
        if str(r.get("quantization") or "").startswith("int8"):
            base = fp32.get((r.get("model"), _family(r["target"]), r.get("threads")))
            out.append(_compare_given(r, label) or (_compare_rows(r, base, label) if base else ""))
    return out


def _compare_rows(r: dict, base: dict, label: str) -> str:
    mine, unit = _type_figures(r)
    theirs, their_unit = _type_figures(base)
    if not mine or not theirs or unit != their_unit or unit == "%":
        return ""
    types = sorted(set(mine) | set(theirs), key=lambda t: -max(mine.get(t, 0), theirs.get(t, 0)))[:14]
    return charts.bars(
        {base["target"]: [theirs.get(t) for t in types], r["target"]: [mine.get(t) for t in types]},
        types,
        title=f"{label} against {base['target']}, per op type",
        unit=unit,
    )


def _compare_given(r: dict, label: str) -> str:
    """The row's `profile_compare`: {fp32_target, int8_target, unit, op_types: [{op_type, fp32, int8, ...}]}
    (a bare list of op types is taken too); the fp32 and int8 figures of each op type side by side."""
    given = r.get("profile_compare")
    meta = given if isinstance(given, dict) else {}
    entries = meta.get("op_types") if meta else given
    entries = [e for e in entries or [] if isinstance(e, dict) and "op_type" in e][:14]
    sides = [k for k in ("fp32", "int8") if any(isinstance(e.get(k), int | float) for e in entries)]
    if not entries or not sides:
        return ""
    names = {"fp32": meta.get("fp32_target") or "fp32", "int8": meta.get("int8_target") or r["target"]}
    unit = str(meta.get("unit") or "")
    total = ""
    if isinstance(meta.get("fp32_total"), int | float) and isinstance(meta.get("int8_total"), int | float):
        total = f": {charts.fmt(meta['fp32_total'])} -> {charts.fmt(meta['int8_total'])} {unit}".rstrip()
    return charts.bars(
        {names[k]: [e.get(k) or None for e in entries] for k in sides},
        [str(e["op_type"]) for e in entries],
        title=f"{label} against {names['fp32']}, per op type{total}",
        unit=unit,
    )


def _board_section(board: str, rows: list[dict], several_models: bool) -> str:
    parts = [f"<h3>{escape(board)}</h3>", f'<p class="note">{escape(_conditions(rows))}</p>']
    ok = [r for r in rows if r.get("status") == "ok"]
    labels = _labels(ok, several_models)
    latency, x_label = _first(ok, LATENCY)
    quality, y_label = _first(ok, QUALITY)
    if latency and quality:
        parts.append(
            charts.scatter(
                [
                    {
                        "x": r.get(latency),
                        "y": r.get(quality),
                        "size": r.get("file_bytes") or r.get("bytes"),
                        "label": label,
                        "group": _family(r["target"]),
                    }
                    for r, label in zip(ok, labels)
                ],
                title=f"{board}: {y_label.split(' (')[0]} against latency and size",
                x_label=x_label,
                y_label=y_label,
                groups=_families(),
            )
        )
    memory = {
        "peak RSS": [r.get("peak_rss_mb") for r in ok],
        "runtime arena": [r["arena_bytes"] / MB if r.get("arena_bytes") is not None else None for r in ok],
        "file": [(r.get("file_bytes") or r.get("bytes") or 0) / MB or None for r in ok],
    }
    if any(v is not None for v in memory["peak RSS"] + memory["runtime arena"]):
        parts.append(charts.bars(memory, labels, title=f"{board}: memory", unit="MB"))
    by_type = [(label, [(p["op_type"], p.get("share")) for p in _profile_by_type(r)]) for label, r in zip(labels, ok)]
    parts.append(charts.stacked(by_type, title=f"{board}: where the time goes, by op type"))
    parts += _int8_vs_fp32(ok, labels)
    parts += [_op_bars(r, label) for label, r in zip(labels, ok)]
    parts.append(table(rows, BENCH_COLUMNS, only_filled=True))
    return "".join(p for p in parts if p)


def _bench_section(rows: list[dict]) -> str:
    several_models = len({r.get("model") for r in rows}) > 1
    boards: dict[str, list[dict]] = {}
    for r in rows:
        harness = f" ({r['harness']} harness)" if r.get("harness") not in (None, "python") else ""
        boards.setdefault(f"{r['device']}{harness}", []).append(r)
    return "<h2>Benchmarks</h2>" + "".join(_board_section(b, rs, several_models) for b, rs in boards.items())


def _sweep_section(rows: list[dict], grid: list[str], summary: dict) -> str:
    def label(r):
        return " ".join([*(f"{k.split('.')[-1]}={r.get(k)}" for k in grid), str(r["target"])])

    parts = ["<h2>Sweep</h2>"]
    if summary:
        parts.append(
            f'<p class="note">{summary.get("variants", "?")} variants, {summary.get("distinct_model_stages", "?")} '
            f"distinct model stages ({summary.get('saved_by_dedup', '?')} saved by dedup), "
            f"{summary.get('seconds', '?')} s</p>"
        )
    for device in dict.fromkeys(r["device"] for r in rows):
        ok = [r for r in rows if r["device"] == device and r["status"] == "ok"]
        latency = "p50_ms" if any(r.get("p50_ms") is not None for r in ok) else "instructions"
        quality = "accuracy" if any(r.get("accuracy") is not None for r in ok) else "agreement"
        points = [
            {"x": r.get(latency), "y": r.get(quality), "size": r.get("bytes"), "label": label(r), "group": r["target"]}
            for r in ok
        ]
        parts.append(
            charts.scatter(
                points,
                title=f"sweep on {device}: {quality} against latency and size, the Pareto front dashed",
                x_label="p50 latency, ms" if latency == "p50_ms" else "guest instructions per inference",
                y_label=quality,
                front=[p for p, r in zip(points, ok) if r.get("pareto")],
            )
        )
    columns = [("variant", "variant"), *((k, k) for k in grid)]
    columns += [(k, k) for k in ("target", "device", "status", "bytes", "accuracy", "accuracy_drop", "agreement")]
    columns += [("p50_ms", "p50 ms"), ("instructions", "insn/inference"), ("pareto", "pareto"), ("reason", "reason")]
    parts.append(table(rows, columns, only_filled=True))
    return "".join(p for p in parts if p)


def render(builds: list[dict], rows: list[dict], swept, sources: list[str]) -> str:
    models = [str(m.get("model")) for m in builds] or sorted({str(r.get("model", "?")) for r in rows})
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    note = f"edge-export {__version__}, {made}" + (f"; from {', '.join(sources)}" if sources else "")
    body = [
        f"<h1>edge-export report: {escape(', '.join(models) or 'sweep')}</h1>",
        f'<p class="note">{escape(note)}</p>',
    ]
    body += [_build_section(m) for m in builds]
    if rows:
        body.append(_bench_section(rows))
    if swept is not None:
        body.append(_sweep_section(*swept))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>edge-export report</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
