"""The Python API: what the CLI calls, and what users and benchmarks/ call.

    import pipeline
    b = pipeline.build(targets=["tflite-int8"], out="build")
    b.artifacts["tflite-int8"].status, b.artifacts["tflite-int8"].path
    rows = pipeline.bench(b, devices=["local"], threads=[1])
    folder = pipeline.release(b, "1.0.0")
    assert pipeline.verify_release(folder).ok

Functions return data and raise the typed errors of pipeline.errors; they never print (progress goes
to the `log` callback) and never take argparse objects. Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import UsageError

Log = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class Artifact:
    """One target of a build, as its manifest entry records it."""

    target: str
    status: str
    """`ok`, `failed_build` or `failed_verification`."""
    path: Path | None
    """The artifact's main file (an OpenVINO IR's .xml), None when it failed to build."""
    quantization: str | None
    reason: str | None
    entry: dict = field(repr=False)
    """The whole manifest entry: sizes, accuracy, agreement, I/O, stage keys."""

    def __getitem__(self, key: str):
        return self.entry[key]

    def get(self, key: str, default=None):
        return self.entry.get(key, default)


@dataclass(frozen=True)
class Build:
    out: Path
    config: Config
    targets: list
    """The targets asked for (registry entries, targets.Target)."""
    manifest: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def manifest_path(self) -> Path:
        return self.out / self.name / "manifest.json"

    @property
    def artifacts(self) -> dict[str, Artifact]:
        names = {t.name for t in self.targets}
        return {
            a["target"]: Artifact(
                a["target"],
                a["status"],
                self.out / a["path"] if a.get("path") else None,
                a.get("quantization"),
                a.get("reason"),
                a,
            )
            for a in self.manifest["artifacts"]
            if a["target"] in names
        }

    @property
    def ok(self) -> bool:
        from pipeline.verdict import Status

        return all(a.status == Status.OK for a in self.artifacts.values())

    def eval_inputs(self) -> Path:
        """The held-out samples of this build's data stage (what bench and the board checks run)."""
        several = "inputs" in self.manifest.get("preprocessing", {})  # one array per input: data.load_several
        return self.stage_file("data", "x_test.npz" if several else "x_test.npy")

    def stage_file(self, stage: str, name: str) -> Path:
        """A file a stage of this build left in the cache: `data` x_train, y_train, x_test, y_test,
        x_cal .npy (preprocessed, as the model sees them); `train`, `prune`, `qat` model.h5 (Keras; a SavedModel
        without Keras layers: the `savedmodel` folder instead); `train` reference_outputs.npz (the original model's outputs every figure is compared with)."""
        from pipeline.cache import Cache

        record = self.manifest["stages"].get(stage)
        entry = record and Cache(self.out / ".cache").get(stage, record["key"])
        if not entry:
            raise UsageError(f"the {stage} stage of the build in {self.out} is not in its cache: build it again")
        if not entry.file(name).exists():
            raise UsageError(f"the {stage} stage of the build in {self.out} has no file {name}")
        return entry.file(name)

    def reference_outputs(self) -> Path:
        """The original model's outputs on eval_inputs(): what every figure is measured against."""
        from pipeline.stages import REFERENCE_OUTPUTS

        return self.stage_file("train" if "train" in self.manifest["stages"] else "original", REFERENCE_OUTPUTS)

    def verify_file(self, target, path: str | os.PathLike) -> dict:
        """Verify a file made elsewhere (another converter's, say) as this build verifies its own
        artifacts: run in `target`'s runtime on the held-out samples, compared with the original
        model, gated. `target`: a targets.Target (a registry entry or one made like it). Returns the
        figures a manifest entry holds (status, accuracy, top1_agreement, quantization, ...)."""
        from pipeline.gate import verify_artifact
        from pipeline.stages import REFERENCE_OUTPUTS

        reference = "train" if "train" in self.manifest["stages"] else "original"  # several inputs: no Keras stage
        return verify_artifact(
            target,
            Path(path),
            self.eval_inputs().parent,
            self.stage_file(reference, REFERENCE_OUTPUTS),
            self.config.build,
            self.manifest["stages"][reference].get("accuracy"),
        ).record()


def load_config(
    config=None,
    *,
    model: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    overrides: dict | None = None,
) -> Config:
    """The effective config: a TOML path, a dict of sections or a Config, then `overrides`
    ({"prune.sparsity": 0.5}), then the model and data paths. Checked before anything is written."""
    from pipeline import config as config_mod

    cfg = config_mod.with_overrides(config_mod.resolve(config), overrides)
    if model:
        cfg = cfg.replace("model", path=str(model))
    if data:
        cfg = cfg.replace("data", path=str(data))
    if cfg.model.path:
        from pipeline.models import kind

        kind(Path(cfg.model.path))
    if cfg.data.path and not Path(cfg.data.path).exists():
        raise UsageError(f"data file not found: {cfg.data.path}")
    return cfg


def _targets(spec, cfg: Config) -> list:
    from targets import resolve

    return resolve(spec or cfg.build.targets)


def check_writable(out: Path, what: str = "output folder", option: str = "--out") -> None:
    """Refuse a folder that cannot be created or written before spending minutes on it: a file is
    made and removed in its nearest existing folder (permission bits say nothing to root)."""
    import tempfile

    probe = Path(out)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(probe)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError:
        raise UsageError(f"{what} {out} cannot be written: choose another with {option}") from None


def build(
    config=None,
    *,
    targets: str | Iterable[str] | None = None,
    out: str | os.PathLike = "build",
    model=None,
    data=None,
    overrides: dict | None = None,
    log: Log | None = None,
) -> Build:
    """Run the stages (reusing cached ones), verify every artifact, write OUT/<model>/ and its manifest.

    A target that fails to build or verify fails only itself: see `Build.artifacts[...].status`."""
    from pipeline.builder import Builder

    cfg = load_config(config, model=model, data=data, overrides=overrides)
    chosen = _targets(targets, cfg)
    out = Path(out)
    check_writable(out)
    manifest = Builder(cfg, out, log=log or _quiet, progress=log is not None).run(chosen)
    return Build(out, cfg, chosen, manifest)


def built(
    config=None,
    *,
    targets=None,
    out: str | os.PathLike = "build",
    model=None,
    data=None,
    overrides: dict | None = None,
    log: Log | None = None,
) -> Build:
    """The build recorded in OUT/<model>/manifest.json, as it was made: what bench, release and
    verify_on work on. With no config, model, data or overrides, the one build in OUT (its recorded
    config). Targets it lacks are built with that same config; a build in OUT of another config is
    never replaced (UsageError). Nothing in OUT: `build(...)`."""
    from pipeline import config as config_mod
    from pipeline import manifest as manifest_mod
    from pipeline.releases.pack import usable

    out = Path(out)
    if config is None and not (model or data or overrides):
        found = {p.parent.name: manifest_mod.read(p) for p in sorted(out.glob("*/manifest.json"))}
        found = {name: m for name, m in found.items() if m and "config" in m}
        if len(found) > 1:
            raise UsageError(f"{out} holds builds of {', '.join(found)}: say which with --model or --config")
        cfg = (
            config_mod.from_dict(next(iter(found.values()))["config"], source="the recorded build")
            if found
            else load_config()
        )
    else:
        cfg = load_config(config, model=model, data=data, overrides=overrides)
    m = manifest_mod.read(out / cfg.name / "manifest.json")
    if m and m.get("config_hash") != cfg.digest():
        raise UsageError(
            f"{out / cfg.name} holds a build of another config (manifest config_hash "
            f"{m.get('config_hash')}, this one {cfg.digest()}): nothing is rebuilt over it; run "
            f"`build` with this config to replace it, or choose another --out"
        )
    recorded = [a["target"] for a in m["artifacts"]] if m else []
    chosen = _targets(targets or recorded or None, cfg)
    if m and usable(m, out, chosen) is not None:
        return Build(out, cfg, chosen, m)
    return build(cfg, targets=[t.name for t in chosen], out=out, log=log)


def bench(
    build: Build,
    *,
    targets=None,
    devices=("local",),
    threads=(1,),
    runs: int = 100,
    min_seconds: float = 1.0,
    warmup: int = 10,
    samples: int = 100,
    options=(),
    timeout: float = 300.0,
    legacy: bool = False,
    harness=("python",),
    device_options: dict | None = None,
    profile: bool = False,
    log: Log | None = None,
) -> list[dict]:
    """Time each artifact of `build` on each device and thread count: the rows `bench --json` writes.

    `devices`: specs (`local`, `emu:rpi4`, `ssh://user@host`) or device objects; `options`: runtime
    options as (key, value) pairs or "key=value" strings; `legacy` adds the legacy runtime's rows;
    `harness`: "python" (the runner scripts), "native" (targets/native/edge_bench.c, no Python) or both;
    `profile`: each row also gets the runtime's per-op profile and each int8 row its comparison with the
    fp32 file of the same format (`profile`, `profile_by_type`, `profile_compare`: pipeline/op_profile.py).
    A detector's rows also time its decode + NMS where they ran (`postprocess_ms`, `end_to_end_ms`; on an emulated
    board `estimated_postprocess_ms`, `estimated_end_to_end_ms`)."""
    import dataclasses

    from pipeline import benchmark as bench_mod

    devs = [d for d in devices if not isinstance(d, str)] or bench_mod.get_devices(
        list(devices), list(harness), **(device_options or {})
    )
    opts = tuple(o if isinstance(o, tuple) else bench_mod.parse_options([o])[0] for o in options)
    settings = bench_mod.Settings(runs, min_seconds, warmup, samples, opts, timeout, profile, _detect_head(build))
    wanted = {t.name for t in _targets(targets, build.config)} if targets else {t.name for t in build.targets}
    arts = build.artifacts
    items = [(t, arts[t.name].entry, arts[t.name].path) for t in build.targets if t.name in wanted and t.name in arts]
    if legacy:
        items += [(dataclasses.replace(t, runner=t.legacy_runner), a, p) for t, a, p in items if t.legacy_runner]
    rows = bench_mod.bench_artifacts(
        items, devs, build.eval_inputs(), list(threads), settings, log=log, reference=build.reference_outputs()
    )
    for r in rows:
        r["model"] = build.name
    if profile:
        from pipeline.op_profile import compare

        for c in compare(rows):
            for r in rows:
                key = (r["target"], r["device"], r.get("harness", "python"), r["threads"])
                if key == (c["int8_target"], c["device"], c["harness"], c["threads"]):
                    r["profile_compare"] = c
    return rows


def _detect_head(build: Build) -> str | None:
    """A detector's head as the runners decode it (RunRequest.detect: OUTPUT,LAYOUT,CONF,IOU,MAX_DET), so that
    each bench row also times decode + NMS where it ran; None for any other model."""
    from pipeline.stages import heads
    from targets import detect, metrics

    ref = build.reference_outputs()
    h = heads(build.config, ref.parent)
    if h.detect is None:
        return None
    i = h.kinds.index(metrics.DETECT)
    d = h.detect
    layout = d.layout if d.layout != "auto" else detect.layout_of(metrics.load_outputs(ref)[i].shape)
    return f"{i},{layout},{d.conf},{d.iou},{d.max_det}"


def verify_on(build: Build, devices, *, device_options: dict | None = None, log: Log | None = None) -> list[dict]:
    """Load every ok artifact of `build` on each board, compare with x86, record `arm_check` in the
    manifest. Returns one row per check (status ok or failed, with the reason)."""
    from pipeline.devices.verify_on import verify_devices
    from pipeline.devices.verify_on import verify_on as check

    devs = ([d for d in devices if not isinstance(d, str)] if not isinstance(devices, str) else []) or verify_devices(
        devices, **(device_options or {})
    )
    rows = [a.entry for a in build.artifacts.values()]
    return check(
        devs, build.config, build.out, rows, build.eval_inputs(), log=log or _quiet, reference=build.reference_outputs()
    )


def release(
    build: Build,
    version: str,
    *,
    dist: str | os.PathLike = "dist",
    bench: str | os.PathLike | list | None = None,
    allow_failed: Iterable[str] = (),
    force: bool = False,
    bundle: Iterable[str] = (),
) -> Path:
    """Pack the build's verified artifacts as DIST/<model>-<version>/: archives with test vectors,
    manifest, model card, benchmarks, SHA256SUMS. Returns the folder. `bench`: rows or a `bench --json`
    file. A version already in DIST is never replaced unless `force`. `bundle`: architectures (x86_64,
    aarch64) to also pack each target for with the native runner and a run.sh."""
    from pipeline.native import ARCHES
    from pipeline.releases.pack import load_bench, make_release
    from targets import resolve

    bundle = list(dict.fromkeys(bundle))
    if any(a not in ARCHES for a in bundle):
        raise UsageError(
            f"--bundle takes {' and '.join(ARCHES)}, not {', '.join(a for a in bundle if a not in ARCHES)}"
        )
    allowed = {t.name for spec in allow_failed for t in resolve(spec)}
    check_writable(Path(dist), "release folder", "--dist")
    rows = load_bench(Path(bench), build.name) if isinstance(bench, str | os.PathLike) else bench
    # pipeline.bench's rows hold not-built and failed ones too; make_release keeps the timed ones for latency
    rows = [r for r in rows if r.get("status", "ok") == "ok"] if rows is not None else None
    return make_release(build.manifest, build.out, build.targets, version, Path(dist), rows, allowed, force, bundle)[0]


@dataclass(frozen=True)
class ReleaseReport:
    path: Path
    rows: list[dict]
    """One row per check: check, file, result (ok / FAIL / skipped), detail."""

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not any(r["result"] == "FAIL" for r in self.rows)


def verify_release(path: str | os.PathLike, *, timeout: float = 120.0) -> ReleaseReport:
    """Check a release folder (or one archive) as whoever receives it would: checksums, safe contents,
    each artifact replaying its test vectors in its runtime."""
    from pipeline.releases.verify import check

    return ReleaseReport(Path(path), check(Path(path), timeout))


def inspect(path: str | os.PathLike, *, timeout: float = 60.0) -> dict:
    """What an artifact file is, read from the file: format, quantization, I/O, ops, sparsity, metadata."""
    from pipeline.inspection import inspect_file

    return inspect_file(Path(path), timeout)


def sweep(
    config=None,
    *,
    grid,
    targets=None,
    devices=("local",),
    out: str | os.PathLike = "build",
    address: str | None = None,
    model=None,
    data=None,
    overrides: dict | None = None,
    pick: str | None = None,
    runs: int = 100,
    min_seconds: float = 1.0,
    samples: int = 100,
    device_options: dict | None = None,
    log: Log | None = None,
):
    """Build, verify and bench every variant of `config` over `grid` ({"prune.sparsity": [0.5, 0.75]} or
    ["prune.sparsity=0.5,0.75"]: the cross product) for `targets` on `devices`, on Ray: a local one, or the
    cluster at `address`. A stage several variants share runs once; OUT/.cache is shared with `build`.
    `pick` ("p50_ms<=2,agreement>=0.98") chooses the best variant within the limits and writes OUT/pick.toml.
    Returns a pipeline.sweeper.Result: rows (variant x target x device, with status), variants, stats."""
    from pipeline import sweeper

    cfg = load_config(config, model=model, data=data, overrides=overrides)
    check_writable(Path(out))
    return sweeper.run(
        cfg,
        grid=grid,
        targets=targets,
        devices=tuple(devices),
        out=out,
        address=address,
        log=log or _quiet,
        pick_limits=pick,
        device_options=device_options,
        bench_settings={"runs": runs, "min_seconds": min_seconds, "samples": samples},
    )


def html_report(
    out: str | os.PathLike = "build",
    *,
    bench: Iterable[str | os.PathLike] | list[dict] = (),
    sweep: str | os.PathLike | None = None,
) -> Path:
    """One self-contained HTML page, OUT/report.html (written atomically; no script, nothing fetched): the
    targets table of every build in OUT, and with `bench` (`bench --json` files, or rows) per board accuracy
    against latency and size, memory, and where the time goes per op when the rows were profiled; with `sweep`
    (a sweep's --out) its results and Pareto front. Returns the page's path; bad input is a UsageError and
    writes nothing."""
    from pipeline import page

    return page.write(Path(out), list(bench), Path(sweep) if sweep is not None else None)
