"""What the user sees: progress bars on stderr and plain-text tables."""

from __future__ import annotations

import sys

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
        # Long reasons belong in the manifest; a table cell keeps its start.
        return str(v) if len(str(v)) <= 48 else str(v)[:47] + "~"

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max(len(x) for x in col) for col in zip(heads, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(heads), fmt(["-" * w for w in widths]), *map(fmt, body)])
