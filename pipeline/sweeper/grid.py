"""The sweep's grid: `--grid KEY=V1,V2` values parsed as TOML, their cross product as checked configs."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from pipeline import config as config_mod
from pipeline.errors import UsageError


def _split_values(text: str) -> list[str]:
    """`a,b,[1, 2]` -> ['a', 'b', '[1, 2]']: commas inside brackets belong to a list value."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _value(text: str):
    """A TOML value (1, 0.5, true, [4, 1], "x"); a bare word is a string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_grid(items) -> dict[str, list]:
    """['prune.sparsity=0.5,0.75', ...] (or a dict key -> values) -> {'prune.sparsity': [0.5, 0.75], ...}."""
    grid = {}
    for item in items.items() if isinstance(items, dict) else items:
        key, values = item if isinstance(item, tuple) else _split_item(item)
        section, _, name = key.partition(".")
        if section not in config_mod.SECTIONS or not name:
            raise UsageError(
                f"--grid {key}: keys look like section.key, as `python -m pipeline config` prints "
                f"them{config_mod.closest(section, config_mod.SECTIONS)}"
            )
        if key == "build.targets":
            raise UsageError("--grid build.targets: give the targets with --target")
        values = [_value(v) if isinstance(v, str) else v for v in values]
        if not values or key in grid:
            raise UsageError(f"--grid {key}: give it once, with at least one value")
        grid[key] = list(dict.fromkeys(json.dumps(v) for v in values))
        grid[key] = [json.loads(v) for v in grid[key]]
    return grid


def _split_item(item: str) -> tuple[str, list[str]]:
    key, sep, values = item.partition("=")
    if not sep or not values.strip():
        raise UsageError(f"--grid must look like KEY=V1,V2 (e.g. prune.sparsity=0.5,0.75), not '{item}'")
    return key.strip(), _split_values(values)


@dataclass
class Variant:
    id: str
    values: dict
    cfg: config_mod.Config
    status: str = "ok"
    reason: str | None = None
    manifest: dict | None = None
    artifacts: dict = field(default_factory=dict)  # target -> manifest row


def variants(base: config_mod.Config, grid: dict[str, list]) -> list[Variant]:
    """The cross product of the grid, each a checked config; the id is stable: the config's own hash."""
    out, seen = [], set()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        cfg = config_mod.with_overrides(base, values, source="--grid")
        vid = cfg.digest()[:10]
        if vid not in seen:
            seen.add(vid)
            out.append(Variant(vid, values, cfg))
    return out
