"""The sweep on Ray: nodes of the plan as tasks, entries as bytes, benches on device actors.

A task gets its input entries as bytes (a tar of each entry folder) through Ray's object store, runs its
nodes with a Builder in a private cache (the same graph a `build` runs), and returns the new entries as
bytes; they land in the driver's OUT/.cache through Cache.put (temp folder, re-hashed, renamed). Each variant
is then published by a plain Builder that finds every node in the cache, so its files and manifest are those
a `build` of the same config writes (OUT/sweep/<variant>/). Benches run where the device is: one Ray actor
per device on the driver's machine, one call at a time; the local device's only after every build task
finished, so no training disturbs a timing.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

from pipeline import config as config_mod
from pipeline.builder import Builder, failed_build
from pipeline.cache import Cache, Entry
from pipeline.errors import PipelineError, UsageError
from pipeline.graph import derive
from pipeline.stages import stderr_silenced
from pipeline.sweeper.grid import Variant
from pipeline.sweeper.plan import Node
from pipeline.util import sha256_file

ROOT = Path(__file__).resolve().parents[2]


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


def run_steps(cfg_dict: dict, steps: list[tuple[str, str | None, str | None]], *inputs) -> dict:
    """On a worker: land the input entries in a private cache, run `steps` [(stage, target, the driver's key)]
    with a Builder, return the new entries packed. A key that differs from the driver's means other code or
    tools (None: the driver could not know it, as a verify key reads its export's metadata)."""
    import ray

    from targets import TARGETS

    with tempfile.TemporaryDirectory(prefix="edge-export-sweep-") as tmp:
        b = Builder(config_mod.from_dict(cfg_dict), Path(tmp), log=lambda m: None, cache=Path(tmp) / "cache")
        for packed in (p for group in inputs for p in group["entries"]):
            b.stages[packed[0]] = land(b.cache, packed)
        entries, seconds = [], []
        for name, target, want in steps:
            t0 = time.perf_counter()
            e = b.stage(name, TARGETS[target] if target else None)
            if want is not None and e.key != want:
                raise RuntimeError(
                    f"{e.stage}: this worker derives key {e.key[:12]}, the driver {want[:12]}: "
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


def ray_init(address: str | None):
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


class Driver:
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
                n.cfg.as_dict(), [(n.name, None, n.key)], *(self._input(k, names[k]) for k in n.inputs)
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
        # Every model stage is in the cache: the build's own walk runs nothing, and checks the budget as it does.
        b = Builder(v.cfg, self.vout(v), log=lambda m: None, cache=self.cache.root)
        try:
            b.models(need_qat="qat" in self.vkeys[v.id])
        except PipelineError as e:  # a stage's model over the budget (or NaN): as `build` stops, this variant stops
            self.log(f"variant {v.id} failed: {e}")
            v.status, v.reason = "failed", str(e)
            self._tick(len(self.targets) * (1 + len(self.devices)))
            return
        models = list(b.stages)
        for t in self.targets:
            try:
                export, verify = derive(b, "export", t), derive(b, "verify", t)
            except Exception as e:  # as in `build`, a target that cannot be made fails alone
                self._tick()
                self._artifact_done(v, t, _one_line(e))
                continue
            if export.reused and verify.reused:
                self._tick()
                self._artifact_done(v, t, None)
                continue
            steps, ship = [("verify", t.name, verify.key)], [*models, export.stage]
            if not export.reused:  # the verify key reads the export's metadata: known once the export ran
                steps, ship = [("export", t.name, export.key), ("verify", t.name, None)], models
            ref = self.task.options(name=f"export:{t.name}:{v.id}").remote(
                v.cfg.as_dict(), steps, *(self._input(b.stages[n].key, n) for n in ship)
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
