"""Sweeps (`pipeline.sweep`, `python -m pipeline sweep`): the variants of a config (a grid of keys) x targets x devices, built on Ray with no double work.

A stage's cache key depends only on its name, code, parameters, its inputs' keys and the tool
versions (cache.py), so the keys of every variant's data, train, prune and QAT stages are derived
before anything runs (`plan`): a stage that several variants share has one key and runs once, as
one Ray task whose dependencies are the tasks of its inputs; independent stages run in parallel.
Export and verify keys depend on what those stages produced (whether QAT fell back to post-training
quantization, the data's labels), so they are derived when their inputs have landed; they are
per variant anyway (each artifact embeds its config's hash).

A task gets its input entries as bytes (a tar of each entry folder) through Ray's object store,
runs the stage with the same Builder code a `build` runs in a private cache, and returns the new
entry as bytes; it lands in the driver's OUT/.cache through Cache.put (temp folder, re-hashed,
renamed). Each variant is then published by a plain Builder that finds every stage in the cache,
so its files and manifest are those a `build` of the same config writes (OUT/sweep/<variant>/).
Benches run where the device is: one Ray actor per device on the driver's machine, one call at a
time; the local device's only after every build task finished, so no training disturbs a timing.

Ray is an extra (`pip install 'edge-export[ray]'`) and is imported only when a sweep runs.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import config as config_mod
from pipeline.builder import Builder, failed_build
from pipeline.cache import Cache, Entry
from pipeline.errors import PipelineError, UsageError
from pipeline.stages import stderr_silenced
from pipeline.util import atomic_write_bytes, atomic_write_json, sha256_file

MODEL_STAGES = ("data", "train", "prune", "qat")
ROOT = Path(__file__).resolve().parent.parent


# -- the grid ------------------------------------------------------------------------------------


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


# -- the plan: stage keys without running --------------------------------------------------------


class Planner(Builder):
    """Derives stage keys without running a stage: an entry in the cache is the real one, a missing one a
    placeholder with its key (its metadata is unknown until it ran, so nothing that needs it may follow)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.missing: set[str] = set()
        self.inputs: dict[str, list[str]] = {}

    def stage(self, name, params, inputs, produce, code=()) -> Entry:
        key = self.key(name, params, inputs, code)
        entry = self.cache.get(name, key) or Entry(name, key, Path("/nonexistent"), {}, reused=False)
        if not entry.reused:
            self.missing.add(name)
        self.inputs[name] = sorted(set(inputs.values()))
        self.stages[name] = entry
        return entry


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
        p = Planner(v.cfg, cache.parent, log=lambda m: None, cache=cache)
        for name in model_stages(targets):
            e = getattr(p, name)()
            node = nodes.setdefault(e.key, Node(name, e.key, p.inputs[name], v.cfg))
            node.variants.append(v.id)
        keys[v.id] = {name: p.stages[name].key for name in model_stages(targets)}
    return nodes, keys


# -- entries as bytes ----------------------------------------------------------------------------


def pack(entry: Entry) -> tuple[str, str, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(entry.path.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(entry.path)), recursive=False)
    return entry.stage, entry.key, buf.getvalue()


def land(cache: Cache, packed: tuple[str, str, bytes]) -> Entry:
    """Put a packed entry into `cache` atomically, checking every file against the sender's record."""
    stage, key, blob = packed
    have = cache.get(stage, key)
    if have is not None:
        return have
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        record = json.loads(tar.extractfile("entry.json").read())

        def produce(folder):
            members = [m for m in tar.getmembers() if m.name != "entry.json"]
            tar.extractall(folder, members=members, filter="data")  # refuses absolute paths, .., links out
            for name, digest in record["files"].items():
                if name != "entry.json" and sha256_file(folder / name) != digest:
                    raise ValueError(f"{stage} entry {key[:12]}: {name} arrived damaged")
            return record["meta"]

        return cache.put(stage, key, produce)


def run_steps(cfg_dict: dict, steps: list[tuple[str, str]], *inputs) -> dict:
    """On a worker: land the input entries in a private cache, run `steps` [(stage, expected key)] with a
    Builder, return the new entries packed. A key that differs from the driver's means other code or tools."""
    import ray

    from targets import TARGETS

    with tempfile.TemporaryDirectory(prefix="edge-export-sweep-") as tmp:
        b = Builder(config_mod.from_dict(cfg_dict), Path(tmp), log=lambda m: None, cache=Path(tmp) / "cache")
        for packed in (p for group in inputs for p in group["entries"]):
            b.stages[packed[0]] = land(b.cache, packed)
        entries, seconds = [], []
        for name, want in steps:
            kind, _, target = name.partition(":")
            t0 = time.perf_counter()
            e = (
                b.export(TARGETS[target])
                if kind == "export"
                else b.verify(TARGETS[target], b.stages[f"export:{target}"])
                if kind == "verify"
                else getattr(b, name)()
            )
            if e.key != want:
                raise RuntimeError(
                    f"{name}: this worker derives key {e.key[:12]}, the driver {want[:12]}: "
                    "its edge-export code or tool versions differ from the driver's"
                )
            entries.append(pack(e))
            seconds.append(round(time.perf_counter() - t0, 2))
        return {
            "entries": entries,
            "seconds": seconds,
            "node": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }


class DeviceActor:
    """One device; Ray runs an actor's calls one at a time, so two timings on one device never overlap."""

    def __init__(self, spec: str, options: dict):
        from pipeline.devices import get_device

        self.device = get_device(spec, **options)

    def bench(self, runner_path: str, model: str, inputs: str, settings: dict) -> dict:
        from pipeline.benchmark import Settings, bench_one

        return bench_one(self.device, Path(runner_path), Path(model), Path(inputs), 1, Settings(**settings))


# -- results -------------------------------------------------------------------------------------

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


# -- the sweep -----------------------------------------------------------------------------------


@dataclass
class Result:
    rows: list[dict]
    variants: list[Variant]
    stats: dict
    picked: dict | None = None
    pick_config: Path | None = None


def _ray(address: str | None):
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # never report usage, whoever starts the cluster
    try:
        import ray
    except ImportError:
        raise UsageError("sweep runs on Ray, an extra: pip install 'edge-export[ray]'") from None
    # Workers import this very package (their keys must match the driver's) and keep TensorFlow quiet.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"env_vars": {"PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}}
    common = {"runtime_env": env, "configure_logging": False, "log_to_driver": False}
    try:
        if address:
            # Ray's C++ client logs each refused attempt to stderr while it retries: the error below says it once.
            with stderr_silenced():
                ray.init(address=address, **common)
        else:  # a new private Ray on this machine (never one `ray start` left running), loopback only, no dashboard
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **common)
    except Exception as e:
        if _refused_token(e):
            raise UsageError(
                f"Ray at {address} refused this driver's token (the cluster uses Ray's token authentication): "
                "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the token every node was started with, "
                "as in the README's Sweeps section"
            ) from None
        if not isinstance(e, (ConnectionError, RuntimeError, ValueError)):
            raise
        raise UsageError(
            f"cannot start or reach Ray{f' at {address}' if address else ''}: {str(e).strip().splitlines()[0][:200]}"
        ) from None
    return ray


def _refused_token(e: BaseException | None) -> bool:
    """Ray raises AuthenticationError itself (RAY_AUTH_MODE=token without a token) or wraps the GCS's
    `InvalidAuthToken` (no or another token) in a ConnectionError's cause."""
    while e is not None:
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _one_line(e: BaseException) -> str:
    from pipeline.builder import _one_line as line

    cause = getattr(e, "cause", None)  # a RayTaskError carries the task's own exception
    return line(cause) if isinstance(cause, BaseException) else line(e)


def run(
    base: config_mod.Config,
    *,
    grid,
    targets=None,
    devices=("local",),
    out="build",
    address=None,
    log=None,
    bench_settings=None,
    device_options=None,
    pick_limits=None,
) -> Result:
    """Build every variant of `base` over `grid` ({'prune.sparsity': [0.5, 0.75]} or ['prune.sparsity=0.5,0.75']),
    for `targets`, benched on `devices` (pipeline.api.sweep is the documented entry); see the module docstring."""
    from pipeline import report
    from pipeline.devices import get_device
    from targets import resolve

    log = log or (lambda m: None)
    out = Path(out)
    grid = parse_grid(grid)
    vs = variants(base, grid)
    targets = resolve(targets or base.build.targets)
    terms = parse_pick(pick_limits) if pick_limits else None
    options = device_options or {}
    for spec in devices:  # a board that is not set up: one line before anything runs
        get_device(spec, **options)
    settings = {
        "runs": 100,
        "min_seconds": 1.0,
        "warmup": 10,
        "samples": 100,
        "timeout": 300.0,
        **(bench_settings or {}),
    }
    cache = Cache(out / ".cache")
    nodes, vkeys = plan(vs, cache.root, targets)
    todo = [n for n in nodes.values() if cache.get(n.name, n.key) is None]
    planned = sum(len(k) for k in vkeys.values())
    log(
        f"sweep: {len(vs)} variants x {len(targets)} targets x {len(devices)} devices; {planned} model stage runs "
        f"planned, {len(nodes)} distinct ({planned - len(nodes)} saved by dedup), "
        f"{len(nodes) - len(todo)} already cached, {len(todo)} to run"
    )
    t_start = time.perf_counter()
    ray = _ray(address)
    try:
        d = _Driver(ray, vs, vkeys, targets, devices, options, settings, out, cache, log, report)
        d.go(nodes, todo)
    finally:
        ray.shutdown()
    rows = d.rows(grid)
    mark_pareto(rows)
    for r in rows:
        r["front"] = "*" if r["pareto"] else ""
    stats = {
        "variants": len(vs),
        "targets": [t.name for t in targets],
        "devices": list(devices),
        "model_stage_runs_planned": planned,
        "distinct_model_stages": len(nodes),
        "already_cached": len(nodes) - len(todo),
        "saved_by_dedup": planned - len(nodes),
        "stage_runs": d.runs,
        "nodes": sorted({r["node"] for r in d.runs}),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    folder = out / "sweep"
    write_csv(folder / "results.csv", rows, list(grid))
    atomic_write_json(folder / "summary.json", {**stats, "grid": grid})
    chart(folder / "pareto.png", rows)
    result = Result(rows, vs, stats)
    if terms is not None:
        result.picked = pick(rows, terms)
        if result.picked:
            v = next(v for v in vs if v.id == result.picked["variant"])
            cfg = v.cfg.replace("build", targets=(result.picked["target"],))
            result.pick_config = out / "pick.toml"
            atomic_write_bytes(result.pick_config, to_toml(cfg.as_dict()).encode())
    return result


class _Driver:
    """Submits stage, artifact and bench tasks as their inputs land, and lands what they return."""

    def __init__(self, ray, vs, vkeys, targets, devices, options, settings, out, cache, log, report):
        self.ray, self.vs, self.vkeys, self.targets, self.devices = ray, {v.id: v for v in vs}, vkeys, targets, devices
        self.settings, self.out, self.cache, self.log, self.report = settings, out, cache, log, report
        self.task = ray.remote(num_cpus=1, max_retries=0)(run_steps)
        self.refs, self.puts, self.pending, self.failed = {}, {}, {}, {}
        self.leaves: dict[str, dict[str, str | None]] = {}  # variant -> target -> None (ok) or why it failed
        self.benches: dict[tuple[str, str, str], dict] = {}
        self.deferred, self.runs, self.done = [], [], 0
        self.total = 0
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Devices are reached from the driver's machine (a local CPU, qemu, an SSH client).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(DeviceActor)
        self.actors = {
            spec: actor.options(num_cpus=0, max_restarts=0, scheduling_strategy=here).remote(spec, options)
            for spec in devices
        }

    def vout(self, v: Variant) -> Path:
        return self.out / "sweep" / v.id

    def _input(self, key: str, name: str):
        if key in self.refs:
            return self.refs[key]
        if key not in self.puts:
            self.puts[key] = self.ray.put({"entries": [pack(self.cache.get(name, key))]})
        return self.puts[key]

    def _tick(self, n: int = 1) -> None:
        self.done += n
        self.report.progress("sweep", self.done, self.total)

    def go(self, nodes: dict[str, Node], todo: list[Node]) -> None:
        names = {k: n.name for k, n in nodes.items()}
        self.total = len(todo) + len(self.vs) * len(self.targets) * (1 + len(self.devices))
        for n in todo:
            ref = self.task.options(name=f"{n.name}:{n.key[:12]}").remote(
                n.cfg.as_dict(), [(n.name, n.key)], *(self._input(k, names[k]) for k in n.inputs)
            )
            self.refs[n.key] = ref
            self.pending[ref] = ("stage", n)
        for v in self.vs.values():
            self._maybe_artifacts(v)
        self._local_benches()
        while self.pending:
            [ref], _ = self.ray.wait(list(self.pending), num_returns=1)
            kind, what = self.pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                self._failed(kind, what, _one_line(e))
            else:
                self._finished(kind, what, result)
            self._tick()
            self._local_benches()

    def _local_benches(self) -> None:
        """The local machine's timings wait until no build task is left to disturb them."""
        if self.deferred and not any(k != "bench" for k, _ in self.pending.values()):
            self.log("sweep: every build task finished; timing on the local machine")
            for args in self.deferred:
                self._bench(*args)
            self.deferred = []

    def _land(self, result: dict) -> None:
        for (stage, key, blob), seconds in zip(result["entries"], result["seconds"]):
            land(self.cache, (stage, key, blob))
            self.runs.append(
                {
                    "stage": stage,
                    "key": key,
                    "node": result["node"],
                    "ip": result["ip"],
                    "pid": result["pid"],
                    "seconds": seconds,
                }
            )
            self.log(
                f"{stage:<24} ran in {seconds:.1f} s ({key[:12]}) on node {result['node'][:8]} "
                f"({result['ip']}, pid {result['pid']})"
            )

    def _finished(self, kind: str, what, result) -> None:
        if kind == "stage":
            self._land(result)
            for vid in what.variants:
                self._maybe_artifacts(self.vs[vid])
        elif kind == "artifact":
            v, t = what
            self._land(result)
            self._artifact_done(v, t, None)
        else:
            self.benches[what] = result

    def _failed(self, kind: str, what, reason: str) -> None:
        if kind == "stage":
            self.log(f"{what.name:<24} failed ({what.key[:12]}): {reason}")
            for vid in what.variants:
                v = self.vs[vid]
                if v.status == "ok":
                    v.status, v.reason = "failed", f"{what.name} stage failed: {reason}"
                    self._tick(len(self.targets) * (1 + len(self.devices)))
        elif kind == "artifact":
            v, t = what
            self.log(f"export:{t.name:<17} failed for variant {v.id}: {reason}")
            self._artifact_done(v, t, reason)
        else:
            self.benches[what] = {"status": "failed", "error": reason}

    def _maybe_artifacts(self, v: Variant) -> None:
        """Once a variant's model stages are all in the driver's cache: its export and verify tasks."""
        if (
            v.status != "ok"
            or v.id in self.leaves
            or not all(self.cache.get(name, key) is not None for name, key in self.vkeys[v.id].items())
        ):
            return
        self.leaves[v.id] = {}
        p = Planner(v.cfg, self.vout(v), log=lambda m: None, cache=self.cache.root)
        try:
            p.models(need_qat="qat" in self.vkeys[v.id])
        except PipelineError as e:  # a stage's model over the budget (or NaN): as `build` stops, this variant stops
            self.log(f"variant {v.id} failed: {e}")
            v.status, v.reason = "failed", str(e)
            self._tick(len(self.targets) * (1 + len(self.devices)))
            return
        for t in self.targets:
            export = p.export(t)
            p.verify(t, export)
            steps = [(n, p.stages[n].key) for n in (f"export:{t.name}", f"verify:{t.name}") if n in p.missing]
            if not steps:
                self._tick()
                self._artifact_done(v, t, None)
                continue
            ship = [n for n in ("data", "train", "prune", "qat") if n in p.stages]
            if len(steps) == 1:  # the export is cached, only its verification is missing
                ship.append(f"export:{t.name}")
            ref = self.task.options(name=f"export:{t.name}:{v.id}").remote(
                v.cfg.as_dict(), steps, *(self._input(p.stages[n].key, n) for n in ship)
            )
            self.pending[ref] = ("artifact", (v, t))

    def _artifact_done(self, v: Variant, t, reason: str | None) -> None:
        self.leaves[v.id][t.name] = reason
        if len(self.leaves[v.id]) == len(self.targets):
            self._publish(v)

    def _publish(self, v: Variant) -> None:
        """A plain build of the variant, every stage found in the cache: its files and manifest as `build` makes them."""
        ok = [t for t in self.targets if self.leaves[v.id][t.name] is None]
        rows = {}
        if ok:
            v.manifest = Builder(v.cfg, self.vout(v), log=lambda m: None, cache=self.cache.root).run(ok)
            rows = {a["target"]: a for a in v.manifest["artifacts"]}
        inputs = self.cache.get("data", self.vkeys[v.id]["data"]).file("x_test.npy")
        for t in self.targets:
            v.artifacts[t.name] = rows.get(t.name) or failed_build(t, self.leaves[v.id][t.name])
            art = v.artifacts[t.name]
            for spec in self.devices:
                if "path" not in art:
                    self._tick()
                    continue
                args = (v, t, spec, self.vout(v) / art["path"], inputs)
                (self.deferred.append(args) if spec == "local" else self._bench(*args))

    def _bench(self, v, t, spec, model: Path, inputs: Path) -> None:
        ref = self.actors[spec].bench.remote(str(t.runner_path), str(model), str(inputs), self.settings)
        self.pending[ref] = ("bench", (v.id, t.name, spec))

    def rows(self, grid) -> list[dict]:
        out = []
        for v in self.vs.values():
            train = self.cache.get("train", self.vkeys[v.id]["train"])
            original = train.meta.get("accuracy") if train else None
            for t in self.targets:
                art = v.artifacts.get(t.name) or {}
                for spec in self.devices:
                    b = self.benches.get((v.id, t.name, spec)) or {}
                    acc = art.get("accuracy")
                    row = {
                        "variant": v.id,
                        **v.values,
                        "target": t.name,
                        "device": b.get("device", spec),
                        "quantization": art.get("quantization"),
                        "bytes": art.get("bytes"),
                        "gzip_bytes": art.get("gzip_bytes"),
                        "accuracy": acc,
                        "original_accuracy": original,
                        "accuracy_drop": round((original - acc) * 100, 2) if None not in (acc, original) else None,
                        "agreement": art.get("top1_agreement"),
                        "p50_ms": b.get("p50_ms"),
                        "instructions": b.get("instructions_per_inference"),
                        "artifact": str(self.vout(v) / art["path"]) if "path" in art else None,
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
        return out
