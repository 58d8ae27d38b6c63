"""`sweep`: the grid, the plan (stage keys without running), entries as bytes, Pareto and --pick; then real
sweeps on Ray (pipeline/sweeper.py), every process inside a network (and PID) namespace of the test's own, loopback only."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from pipeline import config
from pipeline.cache import Cache
from pipeline.errors import ConfigError, UsageError
from pipeline.sweeper import (
    land,
    mark_pareto,
    pack,
    parse_grid,
    parse_pick,
    pick,
    plan,
    to_toml,
    variants,
)
from targets import resolve

# The digits default, kept small: two epochs of training, one of pruning and of QAT.
TINY = {
    "model": {"name": "tiny-digits", "filters": 4},
    "train": {"epochs": 2},
    "prune": {"epochs": 1},
    "qat": {"epochs": 1},
    "ptq": {"choose": False},  # one int8 file each: the choice is tests/test_ptq.py's
    "build": {"max_accuracy_drop": 40.0},
}
GRID = ["prune.sparsity=0.5,0.75"]
RAY = Path(sys.executable).with_name("ray")


def test_a_grid_is_the_cross_product_of_checked_values():
    grid = parse_grid(["prune.sparsity=0.5,0.75", "prune.block_size=[4, 1],[2,2]", "prune.method=block"])
    assert grid == {"prune.sparsity": [0.5, 0.75], "prune.block_size": [[4, 1], [2, 2]], "prune.method": ["block"]}
    vs = variants(config.from_dict(TINY), grid)
    assert len(vs) == 4 and len({v.id for v in vs}) == 4
    assert {(v.cfg.prune.sparsity, v.cfg.prune.block_size) for v in vs} == {
        (0.5, (4, 1)),
        (0.5, (2, 2)),
        (0.75, (4, 1)),
        (0.75, (2, 2)),
    }
    with pytest.raises(ConfigError, match="prune.sparsity must be"):
        variants(config.from_dict(TINY), parse_grid(["prune.sparsity=0.5,2"]))
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        variants(config.from_dict(TINY), parse_grid(["prune.sparsty=0.5"]))
    with pytest.raises(UsageError, match="KEY=V1,V2"):
        parse_grid(["prune.sparsity"])


def test_the_plan_runs_each_shared_stage_once(tmp_path):
    vs = variants(config.from_dict(TINY), parse_grid(["prune.sparsity=0.5,0.75", "qat.epochs=1,2"]))
    nodes, keys = plan(vs, tmp_path / ".cache", resolve("tflite-int8"))
    by_stage = {s: sum(n.name == s for n in nodes.values()) for s in ("data", "train", "prune", "qat")}
    assert by_stage == {"data": 1, "train": 1, "prune": 2, "qat": 4}
    assert sum(len(k) for k in keys.values()) == 16
    train = next(n for n in nodes.values() if n.name == "train")
    assert sorted(train.variants) == sorted(v.id for v in vs) and train.inputs == [keys[vs[0].id]["data"]]
    # Without a QAT target there is no QAT stage to plan.
    nodes, _ = plan(vs, tmp_path / ".cache", resolve("tflite-fp32"))
    assert sorted(n.name for n in nodes.values()) == ["data", "prune", "prune", "train"]


def test_an_entry_travels_as_bytes_and_lands_checked(tmp_path):
    src = Cache(tmp_path / "a").put("train", "k1", lambda f: (f / "model.h5").write_bytes(b"weights") and {"x": 1})
    packed = pack(src)
    got = land(Cache(tmp_path / "b"), packed)
    assert got.file("model.h5").read_bytes() == b"weights" and got.meta == {"x": 1}
    damaged = (packed[0], "k2", packed[2].replace(b"weights", b"weightz"))
    with pytest.raises(ValueError, match="arrived damaged"):
        land(Cache(tmp_path / "c"), damaged)
    assert not any(p.name == "k2" for p in (tmp_path / "c").rglob("*"))


def _row(variant, acc, p50, size, device="local", status="ok"):
    return {
        "variant": variant,
        "target": "tflite-int8",
        "device": device,
        "status": status,
        "accuracy": acc,
        "agreement": 1.0,
        "p50_ms": p50,
        "instructions": None,
        "bytes": size,
    }


def test_the_pareto_front_and_pick_follow_accuracy_latency_and_size():
    rows = [
        _row("a", 0.95, 2.0, 100),
        _row("b", 0.90, 1.0, 100),
        _row("c", 0.90, 1.5, 100),
        _row("d", 0.97, 3.0, 50),
        _row("e", 0.99, 0.5, 10, status="failed_verification"),
    ]
    mark_pareto(rows)
    assert [r["variant"] for r in rows if r["pareto"]] == ["a", "b", "d"]
    assert pick(rows, parse_pick("p50_ms<=2"))["variant"] == "a"
    assert pick(rows, parse_pick("p50_ms<=2,accuracy>=0.96")) is None
    assert pick(rows, parse_pick("bytes<=60"))["variant"] == "d"
    with pytest.raises(UsageError, match="did you mean 'p50_ms'"):
        parse_pick("p50<=2")


def test_the_picked_config_is_a_valid_build_config(tmp_path):
    cfg = variants(config.from_dict(TINY), parse_grid(["prune.block_m_by_n=[2, 4]", "prune.method=block"]))[0].cfg
    path = tmp_path / "pick.toml"
    path.write_text(to_toml(cfg.as_dict()))
    assert config.load(path) == cfg


def test_a_bad_grid_or_pick_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    for args, fragment in (
        (["--grid", "prune.sparsity=2"], "prune.sparsity must be"),
        (["--grid", "prune.sparsty=0.5"], "did you mean 'sparsity'"),
        (["--grid", "prune.sparsity=0.5", "--pick", "speed<=2"], "unknown key 'speed'"),
        (["--grid", "prune.sparsity=0.5", "--target", "tflite-int9"], "unknown target"),
        ([], "at least one --grid"),
    ):
        proc = run_cli("sweep", "--out", out, *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
        assert not out.exists()


# -- on Ray ----------------------------------------------------------------------------------------


def _namespace_ok() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(
            ["unshare", "-n", "-p", "-f", "--mount-proc", "true"], check=False, capture_output=True
        ).returncode
        == 0
    )


needs_namespace = pytest.mark.skipif(not _namespace_ok(), reason="needs unshare (network + PID namespaces)")


def in_namespace(script: str, timeout=900, env=None) -> subprocess.CompletedProcess:
    """Run `script` in a new network namespace (only its own loopback) and PID namespace: every process
    it starts, Ray's included, ends with it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", f"set -u; ip link set lo up; cd {ROOT}; {script}"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep_args(out: Path, cfg: Path) -> str:
    """The test's own settings of a sweep (config, results, a short bench)."""
    return f"--config {cfg} --out {out} --runs 20 --min-seconds 0.05 --json {out / 'rows.json'}"


def sweep_cmd(out: Path, cfg: Path, *extra) -> str:
    grid = " ".join(f"--grid {g}" for g in GRID)
    return " ".join([sys.executable, "-m pipeline sweep", grid, "--target tflite-int8", sweep_args(out, cfg), *extra])


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "tiny.toml"
    path.write_text(to_toml(config.from_dict(TINY).as_dict()))
    return path


@pytest.fixture(scope="module")
def serial_builds(tmp_path_factory, tiny_config):
    """Each variant built by `build`, each into its own folder: sha256 by sparsity, and the first one's cache.
    The variants share their data and train stages: the second build starts from the first's entries."""
    shas, first = {}, None
    for v in variants(config.load(tiny_config), parse_grid(GRID)):
        folder = tmp_path_factory.mktemp(f"serial-{v.id}")
        (folder / "v.toml").write_text(to_toml(v.cfg.as_dict()))
        for stage in ("data", "train") if first else ():
            shutil.copytree(first / stage, folder / "out" / ".cache" / stage)
        proc = run_cli("build", "--config", folder / "v.toml", "--target", "tflite-int8", "--out", folder / "out")
        assert proc.returncode == 0, proc.stderr
        m = json.loads((folder / "out" / "tiny-digits" / "manifest.json").read_text())
        shas[v.cfg.prune.sparsity] = m["artifacts"][0]["sha256"]
        first = first or folder / "out" / ".cache"
    return shas, first


def _results(out: Path):
    rows = json.loads((out / "rows.json").read_text())
    return rows, json.loads((out / "sweep" / "summary.json").read_text())


def _artifact_shas(out: Path, rows) -> dict:
    shas = {}
    for r in rows:
        m = json.loads((Path(r["artifact"]).parent.parent / "manifest.json").read_text())
        shas[r["prune.sparsity"]] = m["artifacts"][0]["sha256"]
    return shas


def _ran_once(summary) -> None:
    keys = [r["key"] for r in summary["stage_runs"]]
    assert len(keys) == len(set(keys)), "a stage ran twice"
    assert [r["stage"] for r in summary["stage_runs"]].count("train") == 1


def readme_cluster_recipe(head: str, node: str) -> list[str]:
    """The commands of the README's cluster recipe (the block after its `cluster-recipe` marker), with this
    venv's tools and the two nodes' addresses: the test runs what a user reads."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- cluster-recipe:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    bin_dir = f"{Path(sys.executable).parent}/"
    return [
        line.replace(".venv/bin/", bin_dir).replace("HEAD", head).replace("NODE", node)
        for line in block.splitlines()
        if line and not line.startswith("#")
    ]


def test_the_readme_cluster_recipe_uses_token_authentication_on_every_node_and_the_driver():
    token, export, head, node, driver, stop = readme_cluster_recipe("10.0.0.1", "10.0.0.2")
    assert "secrets.token_hex" in token and "> ray-token" in token
    assert export == "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat ray-token)"
    assert "/ray start --head --node-ip-address=10.0.0.1 " in head and "--include-dashboard=false" in head
    assert "/ray start --address=10.0.0.1:6379 --node-ip-address=10.0.0.2" in node
    assert "/python -m pipeline sweep --address 10.0.0.1:6379 " in driver and stop.endswith("ray stop")


@pytest.mark.slow
@needs_namespace
def test_the_readme_two_node_cluster_on_loopback_shares_stages_across_nodes_matches_plain_builds_and_reruns_from_cache(
    tmp_path, tiny_config, serial_builds
):
    """(A local Ray, started by `sweep` itself, is the killed-worker test's.)"""
    shas, _ = serial_builds
    out = tmp_path / "out"
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    token, export, head, node, driver, stop = readme_cluster_recipe("127.0.0.1", "127.0.0.1")
    # One CPU per node (a 2-core machine), Ray's files in a folder of the test's own; the sweep's
    # results where the test reads them. One cluster for both sweeps; the first one's rows and summary are
    # copied aside before the rerun rewrites them.
    one_cpu = "--num-cpus=1"
    assert f"--grid {' --grid '.join(GRID)} --target tflite-int8" in driver  # what serial_builds built
    sweep = f"{driver} {sweep_args(out, tiny_config)}"
    proc = in_namespace(
        f"cd {tmp_path} && {token} && {export} && {head} {one_cpu} --temp-dir={temp} >/dev/null && "
        f"{node} {one_cpu} >/dev/null && {sweep} --pick {repr('accuracy>=0')} && "
        f"cp {out / 'rows.json'} {tmp_path / 'rows1.json'} && cp {out / 'sweep' / 'summary.json'} {tmp_path} && "
        f"echo '-- rerun --' && {sweep}; rc=$?; {stop} --force >/dev/null 2>&1; exit $rc",
    )
    shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, rerun = proc.stdout.split("-- rerun --")
    rows = json.loads((tmp_path / "rows1.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["p50_ms"] > 0 for r in rows)
    assert summary["model_stage_runs_planned"] == 8 and summary["distinct_model_stages"] == 6
    _ran_once(summary)
    assert len(summary["nodes"]) == 2, summary["stage_runs"]
    assert {r["ip"] for r in summary["stage_runs"]} == {"127.0.0.1"}
    assert _artifact_shas(out, rows) == shas
    assert "pick: variant" in first and config.load(out / "pick.toml").prune.sparsity in (0.5, 0.75)
    assert (out / "sweep" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sweep" / "results.csv").read_text().startswith("prune.sparsity,variant,target")

    rows2, summary2 = _results(out)
    assert summary2["stage_runs"] == [] and summary2["already_cached"] == 6
    assert _artifact_shas(out, rows2) == shas

    proc = run_cli("report", "--out", out, "--sweep", out)  # the sweep on the report page (tests/test_report.py)
    assert proc.returncode == 0, proc.stderr
    chart = (out / "report.html").read_text().split("<title>sweep on local: ")[1].split("</svg>")[0]
    assert chart.count("<circle") == 2 and "<polyline" in chart  # a point per row, the Pareto front joined


@needs_namespace
def test_a_driver_without_the_clusters_token_gets_one_line_naming_ray_auth_mode_and_ray_auth_token(
    tmp_path, tiny_config
):
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    token, export, head, *_ = readme_cluster_recipe("127.0.0.1", "127.0.0.1")
    out = tmp_path / "out"
    sweep = f"{sys.executable} -m pipeline sweep --address 127.0.0.1:6379 --config {tiny_config} --grid {GRID[0]} --out {out}"
    # Three drivers: no token settings, the mode without a token, another token. Ray's own knob shortens its
    # 20 s of retries against a refusing head.
    drivers = (
        "env -u RAY_AUTH_MODE -u RAY_AUTH_TOKEN",
        "env -u RAY_AUTH_TOKEN RAY_AUTH_MODE=token",
        f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN={'0' * 64}",
    )
    proc = in_namespace(
        f"cd {tmp_path} && ({token} && {export} && {head} --num-cpus=1 --temp-dir={temp} >/dev/null 2>&1) && "
        f"export RAY_gcs_server_port_wait_time_s=2 && "
        + "".join(f"({d} {sweep} 2>err{i}; echo rc=$?) && " for i, d in enumerate(drivers))
        + f"{RAY} stop --force >/dev/null 2>&1",
    )
    shutil.rmtree(temp, ignore_errors=True)
    assert proc.stdout.split() == ["rc=2"] * 3, proc.stdout + proc.stderr[-3000:]
    for i in range(3):
        progress, *rest = (tmp_path / f"err{i}").read_text().strip().splitlines()
        assert progress.startswith("sweep: 2 variants") and len(rest) == 1, rest
        assert rest[0].startswith("error: Ray at 127.0.0.1:6379 refused"), rest
        assert "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in rest[0]
    assert not out.exists()


@pytest.mark.slow
@needs_namespace
def test_a_worker_killed_mid_sweep_on_a_local_ray_fails_only_its_variant_and_a_rerun_completes_as_plain_builds(
    tmp_path, tiny_config, serial_builds
):
    out = tmp_path / "out"
    shas, cache = serial_builds
    for stage in ("data", "train"):  # shared by both variants: the sweep starts at prune, the stage killed here
        shutil.copytree(cache / stage, out / ".cache" / stage)
    vs = variants(config.load(tiny_config), parse_grid(GRID))
    _, keys = plan(vs, out / ".cache", resolve("tflite-int8"))
    victim = vs[1]
    title = f"ray::prune:{keys[victim.id]['prune'][:12]}"
    # In the PID namespace, pgrep sees only this test's processes.
    proc = in_namespace(
        f"({sweep_cmd(out, tiny_config)}) & sweep=$!; "
        f"until pid=$(pgrep -f '^{title}'); do sleep 0.2; kill -0 $sweep 2>/dev/null || break; done; "
        f"kill -9 $pid; echo killed $pid >&2; wait $sweep"
    )
    assert "killed" in proc.stderr and proc.returncode == 1, proc.stderr[-3000:]
    rows, summary = _results(out)
    status = {r["variant"]: r for r in rows}
    assert status[vs[0].id]["status"] == "ok"
    assert status[victim.id]["status"] == "failed" and "prune stage failed" in status[victim.id]["reason"]
    assert "died" in status[victim.id]["reason"].lower() or "crash" in status[victim.id]["reason"].lower()

    again = in_namespace(sweep_cmd(out, tiny_config))
    assert again.returncode == 0, again.stderr[-3000:]
    rows, summary = _results(out)
    assert all(r["status"] == "ok" for r in rows)
    assert _artifact_shas(out, rows) == shas
    assert sorted(r["stage"] for r in summary["stage_runs"]) == [
        "export:tflite-int8",
        "prune",
        "qat",
        "verify:tflite-int8",
    ]
