"""A sweep's results: one row per variant x target x device, the Pareto front, the pick, the files."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from pipeline import config as config_mod
from pipeline.errors import UsageError
from pipeline.util import atomic_write_bytes, atomic_write_json

PICK_KEYS = ("p50_ms", "instructions", "bytes", "gzip_bytes", "accuracy", "agreement", "accuracy_drop")
_TERM = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")


def parse_pick(text: str) -> list[tuple[str, str, float]]:
    terms = []
    for part in text.split(","):
        m = _TERM.match(part)
        if not m:
            raise UsageError(f"--pick: '{part.strip()}' must look like KEY<=NUMBER (e.g. p50_ms<=2,agreement>=0.98)")
        if m[1] not in PICK_KEYS:
            raise UsageError(
                f"--pick: unknown key '{m[1]}'{config_mod.closest(m[1], PICK_KEYS)}; known: {', '.join(PICK_KEYS)}"
            )
        terms.append((m[1], m[2], float(m[3])))
    return terms


_OPS = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__, "==": float.__eq__}


def quality(r: dict) -> float | None:
    """Accuracy on the labels when there are labels, else top-1 agreement with the float model."""
    return r["accuracy"] if r.get("accuracy") is not None else r.get("agreement")


def cost(r: dict) -> float | None:
    return r["p50_ms"] if r.get("p50_ms") is not None else r.get("instructions")


def mark_pareto(rows: list[dict]) -> None:
    """`pareto`: no other ok row of the same device is at least as good on quality, latency and size, and
    better on one."""
    for r in rows:
        r["pareto"] = False
    ok = [r for r in rows if r["status"] == "ok" and None not in (quality(r), cost(r), r.get("bytes"))]
    for r in ok:
        mine = (-quality(r), cost(r), r["bytes"])
        r["pareto"] = not any(
            o is not r
            and o["device"] == r["device"]
            and all(a <= b for a, b in zip((-quality(o), cost(o), o["bytes"]), mine))
            and (-quality(o), cost(o), o["bytes"]) != mine
            for o in ok
        )


def pick(rows: list[dict], terms) -> dict | None:
    """The best ok row within the limits: highest quality, then lowest latency, then smallest."""
    fits = [
        r
        for r in rows
        if r["status"] == "ok" and all(r.get(k) is not None and _OPS[op](float(r[k]), v) for k, op, v in terms)
    ]
    fits = [r for r in fits if quality(r) is not None]
    return min(
        fits, key=lambda r: (-quality(r), cost(r) if cost(r) is not None else float("inf"), r["bytes"]), default=None
    )


def to_toml(cfg: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "\n".join(f"[{s}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) for s, keys in cfg.items())


CSV_KEYS = (
    "variant",
    "target",
    "device",
    "status",
    "quantization",
    "bytes",
    "gzip_bytes",
    "accuracy",
    "original_accuracy",
    "accuracy_drop",
    "agreement",
    "p50_ms",
    "instructions",
    "pareto",
    "reason",
    "artifact",
)


def table_columns(grid_keys) -> list[tuple[str, str]]:
    return (
        [("variant", "variant")]
        + [(k, k) for k in grid_keys]
        + [
            ("target", "target"),
            ("device", "device"),
            ("status", "status"),
            ("bytes", "bytes"),
            ("accuracy", "accuracy"),
            ("accuracy_drop", "drop pts"),
            ("agreement", "agreement"),
            ("p50_ms", "p50 ms"),
            ("instructions", "insn/inf"),
            ("front", "pareto"),
        ]
    )


def write_csv(path: Path, rows: list[dict], grid_keys) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*grid_keys, *CSV_KEYS], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def chart(path: Path, rows: list[dict]) -> bool:
    """Quality against latency per device, point area by size, the Pareto front joined. False: nothing to draw."""
    devices = list(dict.fromkeys(r["device"] for r in rows if r["status"] == "ok" and cost(r) is not None))
    if not devices:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(devices), figsize=(6.5 * len(devices), 4.8), squeeze=False)
    biggest = max(r["bytes"] for r in rows if r.get("bytes"))
    for ax, device in zip(axes[0], devices):
        mine = [
            r
            for r in rows
            if r["device"] == device and r["status"] == "ok" and cost(r) is not None and quality(r) is not None
        ]
        for r in mine:
            ax.scatter(
                cost(r),
                quality(r),
                s=30 + 400 * r["bytes"] / biggest,
                alpha=0.6,
                edgecolors="red" if r["pareto"] else "none",
                linewidths=1.5,
            )
            ax.annotate(
                f"{r['variant'][:6]} {r['target']}",
                (cost(r), quality(r)),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        front = sorted((r for r in mine if r["pareto"]), key=cost)
        ax.plot([cost(r) for r in front], [quality(r) for r in front], "r--", lw=1, label="Pareto front")
        latency = (
            "p50 ms (1 thread)" if any(r.get("p50_ms") is not None for r in mine) else "instructions per inference"
        )
        ax.set(xlabel=latency, ylabel="accuracy (or agreement)", title=f"{device}: area = file size")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def rows(variants, targets, devices, benches: dict, original: dict, folder: Path) -> list[dict]:
    """One row per variant x target x device: the artifact's figures (`Variant.artifacts`), its bench
    (`benches[(variant, target, device)]`), the variant's original accuracy (`original[variant]`); the
    status says the first thing that failed; `pareto` and `front` mark the Pareto front."""
    out = []
    for v in variants:
        for t in targets:
            art = v.artifacts.get(t.name) or {}
            for spec in devices:
                b = benches.get((v.id, t.name, spec)) or {}
                acc, orig = art.get("accuracy"), original.get(v.id)
                row = {
                    "variant": v.id,
                    **v.values,
                    "target": t.name,
                    "device": b.get("device", spec),
                    "quantization": art.get("quantization"),
                    "bytes": art.get("bytes"),
                    "gzip_bytes": art.get("gzip_bytes"),
                    "accuracy": acc,
                    "original_accuracy": orig,
                    "accuracy_drop": round((orig - acc) * 100, 2) if None not in (acc, orig) else None,
                    "agreement": art.get("top1_agreement"),
                    "p50_ms": b.get("p50_ms"),
                    "instructions": b.get("instructions_per_inference"),
                    "artifact": str(folder / v.id / art["path"]) if "path" in art else None,
                    "config": v.cfg.as_dict(),
                }
                if v.status != "ok":
                    row.update(status=v.status, reason=v.reason)
                elif art.get("status") != "ok":
                    row.update(status=art.get("status", "failed_build"), reason=art.get("reason"))
                elif b.get("status") != "ok":
                    row.update(status="failed", reason=f"bench: {b.get('error') or 'not run'}")
                else:
                    row.update(status="ok", reason=None)
                out.append(row)
    mark_pareto(out)
    for r in out:
        r["front"] = "*" if r["pareto"] else ""
    return out


def write(folder: Path, grid: dict, rows: list[dict], stats: dict) -> None:
    write_csv(folder / "results.csv", rows, list(grid))
    atomic_write_json(folder / "summary.json", {**stats, "grid": grid})
    chart(folder / "pareto.png", rows)


def write_pick(path: Path, picked: dict, variants) -> Path:
    """The picked row's config, building only its target: a valid `build --config`."""
    v = next(v for v in variants if v.id == picked["variant"])
    cfg = v.cfg.replace("build", targets=(picked["target"],))
    atomic_write_bytes(path, to_toml(cfg.as_dict()).encode())
    return path
