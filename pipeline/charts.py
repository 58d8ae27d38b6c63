"""Charts as inline SVG text: no plotting library, no script, no fetched font, so the report page stays one
self-contained file that any browser draws offline. Each function returns one <svg> element (or "" when
there is nothing to draw); sizes are in CSS pixels, the page scales them down to fit."""

from __future__ import annotations

import math
from html import escape

WIDTH = 760
FONT = 'font-family="sans-serif" font-size="11"'
# Colour-blind-safe (Okabe-Ito) first, then a few more for long legends.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#999933",
    "#7F7F7F",
    "#8C564B",
    "#17BECF",
    "#BCBD22",
)
OTHER = "#C8C8C8"


def colours(keys) -> dict[str, str]:
    """One colour per key in order of first appearance; past the palette, grey."""
    keys = list(dict.fromkeys(keys))
    return {k: PALETTE[i] if i < len(PALETTE) else OTHER for i, k in enumerate(keys)}


def fmt(v: float) -> str:
    """A tick or value label: 3 significant digits, thousands as k/M/G for counts."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def _svg(height: float, body: list[str], title: str) -> str:
    return (
        f'<svg role="img" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'width="{WIDTH}" height="{height:.0f}" {FONT}><title>{escape(title)}</title>'
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}'
        f"</text>{''.join(body)}</svg>"
    )


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10**e for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    return out if len(out) >= 2 else [lo, hi]


class _Axis:
    """Maps values to pixels, linear or logarithmic (a log axis when the values span more than 30x)."""

    def __init__(self, values, a: float, b: float, zero: bool = False):
        lo, hi = min(values), max(values)
        self.log = lo > 0 and hi / lo > 30
        if self.log:
            lo, hi = lo / 1.25, hi * 1.25
        else:
            pad = (hi - lo) * 0.12 or abs(hi) * 0.05 or 1.0
            lo, hi = (0.0 if zero and lo >= 0 else lo - pad), hi + pad
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        f = (math.log(v / self.lo) / math.log(self.hi / self.lo)) if self.log else (v - self.lo) / (self.hi - self.lo)
        return self.a + f * (self.b - self.a)

    def ticks(self) -> list[tuple[float, str]]:
        """(value, label): as many decimals as the step between ticks needs."""
        if self.log:
            return [(t, fmt(t)) for t in _log_ticks(self.lo, self.hi)]
        ts = _ticks(self.lo, self.hi)
        step = ts[1] - ts[0] if len(ts) > 1 else abs(ts[0]) or 1.0
        if max(abs(t) for t in ts) >= 1e4:
            return [(t, fmt(t)) for t in ts]
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        return [(t, f"{t:.{decimals}f}") for t in ts]


def _legend(items: dict[str, str], y: float, x0: float = 60) -> tuple[list[str], float]:
    """Swatches in rows across the width; returns the elements and the y below them."""
    out, x = [], x0
    for label, colour in items.items():
        w = 18 + 6.5 * len(label)
        if x + w > WIDTH - 10:
            x, y = x0, y + 16
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14:.1f}" y="{y:.1f}">{escape(label)}</text>')
        x += w + 8
    return out, y + 16


def scatter(
    points: list[dict], *, title: str, x_label: str, y_label: str, front: list[dict] | None = None, groups=()
) -> str:
    """Points {x, y, label, group, size}: colour by group (`groups` first, so that every chart of a page gives
    a group the same colour), area by size (file bytes), `front` joined by a dashed line (a Pareto front).
    Points without x or y are left out."""
    points = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    if not points:
        return ""
    left, right, top, bottom = 64, WIDTH - 24, 30, 290
    xa = _Axis([p["x"] for p in points], left, right)
    ya = _Axis([p["y"] for p in points], bottom, top)
    body = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for t, text in xa.ticks():
        x = xa(t)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>')
        body.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{text}</text>')
    for t, text in ya.ticks():
        y = ya(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    log = " (log scale)" if xa.log else ""
    body.append(f'<text x="{(left + right) / 2}" y="{bottom + 30}" text-anchor="middle">{escape(x_label + log)}</text>')
    body.append(
        f'<text transform="translate(14 {(top + bottom) / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}'
        "</text>"
    )
    if front:
        front = sorted((p for p in front if p.get("x") is not None and p.get("y") is not None), key=lambda p: p["x"])
        line = " ".join(f"{xa(p['x']):.1f},{ya(p['y']):.1f}" for p in front)
        body.append(f'<polyline points="{line}" fill="none" stroke="#D55E00" stroke-dasharray="5 3"/>')
    sizes = [p["size"] for p in points if p.get("size")]
    biggest = max(sizes) if sizes else 1
    seen = {p.get("group", "") for p in points}
    palette = colours([*groups, *(p.get("group", "") for p in points)])
    groups = {g: c for g, c in palette.items() if g in seen}
    placed: list[tuple[float, float, float, float]] = []
    for p in sorted(points, key=lambda p: -(p.get("size") or 0)):  # small points drawn over big ones
        r = 4 + 14 * math.sqrt((p.get("size") or 0) / biggest)
        x, y = xa(p["x"]), ya(p["y"])
        tip = escape(f"{p['label']}: {fmt(p['x'])}, {fmt(p['y'])}")
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{groups[p.get("group", "")]}" fill-opacity="0.55" '
            f'stroke="{groups[p.get("group", "")]}"><title>{tip}</title></circle>'
        )
        tx, ty, anchor = _place(placed, x, y, r, len(p["label"]), (left, top, right, bottom))
        body.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" font-size="10">{escape(p["label"])}</text>'
        )
    legend, height = _legend(groups if len(groups) > 1 or "" not in groups else {}, bottom + 50)
    if sizes:
        legend.append(f'<text x="{WIDTH - 24}" y="{bottom + 50}" text-anchor="end">circle area: file size</text>')
    return _svg(height, body + legend, title)


def _ink(colour: str) -> str:
    """Text colour readable on `colour` (#rrggbb): white on dark, near-black on light."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#111"


def _place(placed: list, x: float, y: float, r: float, chars: int, frame) -> tuple[float, float, str]:
    """Where a point's label goes: right of it, left, above, below, or shifted up or down on either side,
    the first place that overlaps no label already placed and stays in the frame (else right of the point)."""
    w, h = 5.6 * chars, 11
    candidates = [(x + r + 2, y + 3, "start"), (x - r - 2, y + 3, "end"), (x, y - r - 3, "middle")]
    candidates += [(x, y + r + 10, "middle")]
    candidates += [(x + r + 2, y + 3 + d, "start") for d in (-12, 12, -24, 24, -36, 36)]
    candidates += [(x - r - 2, y + 3 + d, "end") for d in (-12, 12, -24, 24)]
    for tx, ty, anchor in candidates:
        x0 = tx - (w if anchor == "end" else w / 2 if anchor == "middle" else 0)
        box = (x0, ty - h + 2, x0 + w, ty + 2)
        inside = box[0] >= frame[0] and box[1] >= frame[1] and box[2] <= frame[2] + 20 and box[3] <= frame[3]
        if inside and not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed):
            placed.append(box)
            return tx, ty, anchor
    return candidates[0]


def bars(series: dict[str, list], labels: list[str], *, title: str, unit: str = "") -> str:
    """Horizontal bars, one row per label and one bar per series in it ({series: [value or None per label]},
    drawn on one scale from zero). Rows with no value are left out."""
    keep = [i for i in range(len(labels)) if any(v[i] is not None for v in series.values())]
    series = {k: v for k, v in series.items() if any(v[i] is not None for i in keep)}
    if not keep:
        return ""
    label_w = min(300, max(60, 14 + 7 * max(len(labels[i]) for i in keep)))
    left, right, top = label_w, WIDTH - 70, 28
    bar, gap = 12, 8
    row_h = bar * len(series) + gap
    biggest = max(v[i] for v in series.values() for i in keep if v[i] is not None) or 1
    palette = colours(series)
    body = []
    for n, i in enumerate(keep):
        y0 = top + n * row_h
        body.append(f'<text x="{left - 6:.1f}" y="{y0 + row_h / 2:.1f}" text-anchor="end">{escape(labels[i])}</text>')
        for s, (name, values) in enumerate(series.items()):
            v = values[i]
            if v is None:
                continue
            w = max(1.0, (right - left) * v / biggest)
            y = y0 + s * bar
            body.append(
                f'<rect x="{left}" y="{y:.1f}" width="{w:.1f}" height="{bar - 2}" fill="{palette[name]}">'
                f"<title>{escape(f'{labels[i]} {name}: {fmt(v)} {unit}'.strip())}</title></rect>"
            )
            body.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 3:.1f}" font-size="10">{fmt(v)}</text>')
    bottom = top + len(keep) * row_h
    body.append(f'<line x1="{left}" y1="{top - 2}" x2="{left}" y2="{bottom}" stroke="#999"/>')
    legend, height = _legend(palette if len(series) > 1 else {}, bottom + 16, left)
    if unit:
        legend.append(f'<text x="{WIDTH - 10}" y="{bottom + 16}" text-anchor="end">{escape(unit)}</text>')
        height = max(height, bottom + 24)
    return _svg(height, body + legend, title)


def stacked(rows: list[tuple[str, list[tuple[str, float]]]], *, title: str, top_keys: int = 10) -> str:
    """One 100 % bar per row split into its parts [(key, share)], the same key the same colour in every row; keys
    beyond the `top_keys` largest overall are drawn together as "other"."""
    rows = [(label, [(k, s) for k, s in parts if s and s > 0]) for label, parts in rows]
    rows = [(label, parts) for label, parts in rows if parts]
    if not rows:
        return ""
    total: dict[str, float] = {}
    for _, parts in rows:
        for k, s in parts:
            total[k] = total.get(k, 0.0) + s
    named = sorted(total, key=total.get, reverse=True)[:top_keys]
    palette = colours(named)
    if len(total) > len(named):
        palette["other"] = OTHER
    label_w = min(300, max(60, 14 + 7 * max(len(label) for label, _ in rows)))
    left, right, top, bar = label_w, WIDTH - 16, 28, 18
    body = []
    for n, (label, parts) in enumerate(rows):
        y = top + n * (bar + 6)
        body.append(f'<text x="{left - 6:.1f}" y="{y + 13:.1f}" text-anchor="end">{escape(label)}</text>')
        whole = sum(s for _, s in parts)
        merged: dict[str, float] = {}
        for k, s in parts:
            key = k if k in palette else "other"
            merged[key] = merged.get(key, 0.0) + s / whole
        x = float(left)
        for key in [k for k in palette if k in merged]:
            w = (right - left) * merged[key]
            body.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{palette[key]}" stroke="#fff" '
                f'stroke-width="0.5"><title>{escape(f"{label} {key}: {merged[key]:.1%}")}</title></rect>'
            )
            if w > 34:
                body.append(
                    f'<text x="{x + w / 2:.1f}" y="{y + 13}" text-anchor="middle" font-size="10" '
                    f'fill="{_ink(palette[key])}">'
                    f"{merged[key]:.0%}</text>"
                )
            x += w
    legend, height = _legend(palette, top + len(rows) * (bar + 6) + 14, left)
    return _svg(height, body + legend, title)
