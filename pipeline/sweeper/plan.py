"""The sweep's plan: every variant's model stage keys derived from the stage graph before anything runs.

A key depends only on a node's name, code, params, its inputs' keys and the tool versions (graph.key), so the
data, train, prune and QAT keys of every variant are known up front: a stage several variants share has one
key and is one node, run once. Export and verify keys depend on what those stages produced (whether QAT fell
back to post-training quantization, the data's labels): they are derived when their inputs have landed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline import config as config_mod
from pipeline.graph import STAGES, Context, derive
from pipeline.sweeper.grid import Variant

MODEL_STAGES = ("data", "train", "prune", "qat")


@dataclass
class Node:
    """One distinct stage run: the variants that need it, the keys it depends on."""

    name: str
    key: str
    inputs: list[str]
    cfg: config_mod.Config
    variants: list[str] = field(default_factory=list)


def model_stages(targets) -> tuple[str, ...]:
    return MODEL_STAGES if any(t.needs_qat for t in targets) else MODEL_STAGES[:3]


def plan(vs: list[Variant], cache: Path, targets) -> tuple[dict[str, Node], dict[str, dict[str, str]]]:
    """Every variant's data/train/prune(/qat) keys: (distinct nodes by key, variant id -> {stage: key})."""
    nodes, keys = {}, {}
    for v in vs:
        ctx = Context(v.cfg, cache)
        for name in model_stages(targets):
            e = derive(ctx, name)
            inputs = sorted({ctx.stages[n].key for n in STAGES[name].inputs(ctx, None)})
            nodes.setdefault(e.key, Node(name, e.key, inputs, v.cfg)).variants.append(v.id)
        keys[v.id] = {name: ctx.stages[name].key for name in model_stages(targets)}
    return nodes, keys
