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
        # Long reasons belong in the manifest; a table cell keeps its start.
        return str(v) if len(str(v)) <= 48 else str(v)[:47] + "~"

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max(len(x) for x in col) for col in zip(heads, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(heads), fmt(["-" * w for w in widths]), *map(fmt, body)])


def prune_summary(trained: dict, pruned: dict) -> str:
    """One line on what the prune stage did to the float model (stage metas as the manifest keeps them)."""
    parts = [f"prune: {pruned.get('method', 'unstructured')}"]
    before, after = pruned.get("params_before"), pruned.get("params_after")
    if before and after is not None and after != before:
        parts.append(f"params {before:,} -> {after:,} ({after / before:.2f}x)")
    before, after = pruned.get("macs_before"), pruned.get("macs_after")
    if before and after is not None and after != before:
        parts.append(f"MACs {before:,} -> {after:,} ({after / before:.2f}x)")
    if pruned.get("sparsity"):
        parts.append(f"{pruned['sparsity']:.1%} of the weights zero")
    if trained.get("accuracy") is not None and pruned.get("accuracy") is not None:
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
