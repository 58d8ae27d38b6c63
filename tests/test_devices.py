"""Emulated and remote boards: `device`, `bench --device emu:PROFILE|ssh://...`, `build --verify-on`.

The SSH tests run against a loopback sshd of their own (tests/support/sshd.py) with three "boards":
`emu`, whose python3 is the emulated aarch64 Python (so the whole SSH + ARM path runs here),
`host`, whose python3 is this venv's, and `nort`, this Python with numpy but no runtime.
"""

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from support.sshd import LoopbackSSHD, SSHDUnavailable

from pipeline import benchmark as bench
from pipeline.devices import RunRequest, Timing, agreement, emulated, estimate, get_device, ssh
from pipeline.devices import emulator as emu
from pipeline.devices.verify_on import record_arm_checks
from pipeline.errors import UsageError
from targets import RUNNERS, TARGETS

PROFILE = "emu:rpi4"
HOSTILE = "dir 'q' \"d\" ;touch PWNED; $(touch PWNED2) `touch PWNED3` x"
FAST = ["--samples", "10", "--runs", "10", "--min-seconds", "0", "--warmup", "1"]


@pytest.fixture(scope="module")
def emu_ready():
    try:
        return emu.setup(PROFILE, log=print)
    except emu.EmuError as e:
        pytest.skip(f"aarch64 emulation cannot be set up here: {e}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sshd")
    numpy_only = root / "numpy_only"  # a board with numpy and no runtime: `python3 -S` sees only this folder
    numpy_only.mkdir()
    site = Path(np.__file__).resolve().parent.parent
    for p in site.glob("numpy*"):
        (numpy_only / p.name).symlink_to(p)
    boards = {"host": [sys.executable], "nort": ["env", f"PYTHONPATH={numpy_only}", sys.executable, "-S"]}
    try:
        emu.setup(PROFILE, log=print)
        boards["emu"] = emu.python_command(PROFILE)
    except emu.EmuError:
        pass
    try:
        server = LoopbackSSHD(root, boards)
    except SSHDUnavailable as e:
        pytest.skip(f"cannot start a loopback sshd: {e}")
    yield server
    server.close()


def _board(sshd, name):
    if name not in sshd.keys:
        pytest.skip(f"no '{name}' board: aarch64 emulation is not available")
    return sshd


def _out_copy(small_build, dest: Path) -> Path:
    """A copy of the shared build (cache included, so nothing is rebuilt) that a test may change.

    Every CLI run here works on a copy: even a cached bench rewrites the manifest, and one of a float-only
    target records `stages` without qat, which a later release of the shared build would describe differently."""
    shutil.copytree(small_build[0], dest, symlinks=True)
    return dest


def _artifact(out: Path, target: str) -> Path:
    manifest = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    return out / next(a["path"] for a in manifest["artifacts"] if a["target"] == target)


def _no_pwned(*trees):
    """No file a shell would have made from the name: in the test's trees, nor where a shell starts."""
    for tree in trees:
        assert not list(Path(tree).rglob("PWNED*")), tree
    for folder in (Path.cwd(), Path.home(), Path("/")):
        assert not list(folder.glob("PWNED*")), folder


# --------------------------------------------------------------- without a board


def test_ssh_specs_are_parsed_strictly_and_never_become_options():
    ok = {
        "ssh://pi@raspberrypi.local": ("raspberrypi.local", "pi", None),
        "ssh://pi@10.0.0.7:2222": ("10.0.0.7", "pi", 2222),
        "ssh://board": ("board", None, None),
        "ssh://pi@[fe80::1]:22": ("fe80::1", "pi", 22),
    }
    for spec, want in ok.items():
        d = ssh.SSHDevice(spec, probe=False)
        assert (d.host, d.user, d.port) == want
    for bad in (
        "ssh://pi@-oProxyCommand=touch_x",
        "ssh://-oProxyCommand=x",
        "ssh://pi;id@host",
        "ssh://pi@host/path",
        "ssh://pi:secret@host",
        "ssh://pi@host:99999",
        "ssh://pi@host:0",
        "ssh://pi@ho st",
        "ssh://",
        "ssh://pi@host?x=1",
    ):
        with pytest.raises(UsageError, match="ssh://"):
            ssh.SSHDevice(bad, probe=False)


def test_every_remote_word_is_quoted_and_ssh_is_strict(tmp_path):
    kh = tmp_path / "known hosts %d"
    kh.write_text("")
    d = ssh.SSHDevice("ssh://pi@board:2222", known_hosts=kh, probe=False)
    words = ["rm", "-rf", "--", "/tmp/edge-export-x/a b;c'd\"e$(f)`g`"]
    cmd = d.command(words)
    assert cmd[0] == "ssh" and cmd[-3:-1] == ["--", "board"]
    import shlex

    assert shlex.split(cmd[-1]) == words  # what the board's shell sees is exactly these words
    opts = " ".join(cmd)
    for o in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UpdateHostKeys=no",
        "GlobalKnownHostsFile=/dev/null",
        "-p 2222",
        "-l pi",
    ):
        assert o in opts
    assert f'UserKnownHostsFile="{str(kh).replace("%", "%%")}"' in cmd  # spaces kept, %-tokens not expanded


def test_a_board_without_the_runtime_is_told_what_to_install():
    for error, pip in [
        ("PackageNotFoundError: No package metadata was found for onnxruntime", "onnxruntime"),
        ("ModuleNotFoundError: No module named 'ai_edge_litert'", "ai-edge-litert"),
        ("runner exited 1 without a result: ModuleNotFoundError: No module named 'numpy'", "numpy"),
        ("ModuleNotFoundError: No module named 'openvino._pyopenvino'", "openvino"),
        ("ImportError: No module named 'tflite_runtime'", "tflite-runtime"),
    ]:
        res = agreement.missing_runtime({"ok": False, "error": error})
        assert res["error"] == f"board has no {pip}: pip install {pip} there"
        assert res["runtime_error"] == error
    other = {"ok": False, "error": "RuntimeError: bad model"}
    assert agreement.missing_runtime(other) == other


def test_runtime_options_are_kept_apart_from_timing_arguments():
    req = bench.Settings(runs=7, min_seconds=0.5, warmup=2, samples=9, options=[("delegate", "none")]).request(
        Path("run_x.py"), Path("m"), Path("x.npy"), 2
    )
    assert req.option_argv() == ["--delegate", "none"]
    assert req.limit == 9 and req.timing == Timing(threads=2, warmup=2, runs=7, min_seconds=0.5)
    emu_args = req.argv("in.npy", "out.npz", Timing(runs=10, min_seconds=0))
    assert emu_args[emu_args.index("--runs") + 1] == "10" and emu_args[-2:] == ["--delegate", "none"]


def test_no_wall_clock_figure_of_an_emulated_run_keeps_a_device_time_name():
    res = {
        "ok": True,
        "latency": {"p50_ms": 50.0, "runs": 20},
        "runtime_latency": {"p50_ms": 42.0},
        "load_ms": 9.0,
        "first_inference_ms": 3.0,
        "peak_rss_mb": 300.0,
    }
    fields = agreement.emulated_fields(res)

    class Board:
        name = "emu:test"

        def run(self, request):
            return {**res, "device_fields": fields}

    row = bench.bench_one(Board(), Path("run_x.py"), Path("m"), Path("x.npy"), 1, bench.Settings())
    for key in ("p50_ms", "runtime_p50_ms", "load_ms", "first_inference_ms", "peak_rss_mb"):
        assert row[key] is None, key
    assert row["emulated_p50_ms"] == 50.0 and row["emulated_runtime_p50_ms"] == 42.0


def test_an_emulated_board_counts_nothing_but_the_inference(monkeypatch):
    """The OpenVINO runner reads its own timer after every call; not between the counted markers."""
    sys.path.insert(0, str(RUNNERS))
    import runner_common

    class Runtime:
        def infer(self, session, x):
            return [x]

        def own_latency_ms(self):
            return 0.5

    args = runner_common.parse_args(["m", "--runs", "3", "--min-seconds", "0", "--warmup", "0"], {})
    desc = {"inputs": [{"dtype": "float32"}], "outputs": [{"dtype": "float32"}]}
    x = np.zeros((2, 3), np.float32)
    result = {}
    runner_common._bench(Runtime(), None, desc, x, args, result)
    assert result["runtime_latency"]["runs"] == result["latency"]["runs"] >= 3
    monkeypatch.setenv(*emulated.GUEST_ENV[-1].split("=", 1))
    result = {}
    runner_common._bench(Runtime(), None, desc, x, args, result)
    assert "runtime_latency" not in result and result["latency"]["runs"] >= 3


def test_build_and_the_boards_give_one_tflite_runtime_verdict():
    from pipeline.gate import legacy_verdict

    scores = [np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)]
    one_step = [scores[0] + np.float32(1 / 256)]
    flipped = [scores[0][:, ::-1]]
    assert legacy_verdict(None, scores, scores, "x86") == "ok"
    assert legacy_verdict(None, one_step, scores, "x86") == "ok (same top-1 on 2 samples, max abs diff 0.0039)"
    assert legacy_verdict(None, flipped, scores, "x86") == "loads, but top-1 differs from x86 on 100% of 2 samples"
    boxes = [np.linspace(0, 10, 8, dtype=np.float32).reshape(1, 2, 4)]  # not scores: judged against the range
    assert legacy_verdict(None, [boxes[0] + 0.2], boxes, "x86").startswith("ok (max abs diff 0.2, under 5 %")
    assert legacy_verdict(None, [boxes[0] + 1], boxes, "x86") == "loads, but outputs differ from x86 by up to 1"
    error = "RuntimeError: Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'. An older version..."
    assert legacy_verdict(error, [], [], "x86") == "fails: no FULLY_CONNECTED v12 kernel"


def test_artifact_files_include_an_openvino_weights_file(tmp_path):
    (tmp_path / "model.xml").write_text("<net/>")
    (tmp_path / "model.bin").write_bytes(b"\0")
    (tmp_path / "other.txt").write_text("not part of it")
    assert [p.name for p in agreement.artifact_files(tmp_path / "model.xml")] == ["model.xml", "model.bin"]
    (tmp_path / "model.onnx").write_bytes(b"\0")
    assert [p.name for p in agreement.artifact_files(tmp_path / "model.onnx")] == ["model.onnx"]


def test_unknown_or_native_emulated_profiles_are_usage_errors():
    with pytest.raises(UsageError, match="did you mean 'rpi4'"):
        get_device("emu:rpi44")
    with pytest.raises(UsageError, match="--device local"):
        get_device("emu:x86")


@pytest.mark.parametrize("command", [["bench", "--device", PROFILE], ["build", "--verify-on", PROFILE]])
def test_a_board_that_is_not_set_up_is_one_line_naming_the_setup_command(command, tmp_path):
    t0 = time.perf_counter()
    proc = run_cli(*command, "--out", tmp_path / "out", env={"EDGE_EXPORT_EMU_HOME": str(tmp_path / "emu")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: emu:rpi4 is not set up; run: python -m pipeline device setup emu:rpi4"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / "emu").exists()
    assert time.perf_counter() - t0 < 15


def test_device_ls_lists_every_pi_profile_and_whether_it_is_ready(tmp_path):
    proc = run_cli("device", "ls", env={"EDGE_EXPORT_EMU_HOME": str(tmp_path / "emu")})
    assert proc.returncode == 0, proc.stderr
    assert "python -m pipeline device setup emu:rpi3 emu:rpi4 emu:rpi5" in proc.stdout
    assert "cortex-a72" in proc.stdout and "local" in proc.stdout
    proc = run_cli("device", "setup", "ssh://pi@board")
    assert proc.returncode == 2 and "needs no setup" in proc.stderr


def test_arm_checks_are_recorded_only_for_the_bytes_that_were_checked(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    manifest = {"artifacts": [{"target": "tflite-int8", "sha256": "aaa"}, {"target": "onnx-fp32", "sha256": "bbb"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    checks = {
        "tflite-int8": [{"device": "emu:rpi4", "status": "ok", "sha256": "aaa"}],
        "onnx-fp32": [{"device": "emu:rpi4", "status": "ok", "sha256": "changed since"}],
    }
    record_arm_checks(tmp_path, "m", checks)
    arts = json.loads((folder / "manifest.json").read_text())["artifacts"]
    assert arts[0]["arm_check"] == {"emu:rpi4": {"device": "emu:rpi4", "status": "ok"}}
    assert "arm_check" not in arts[1]


# --------------------------------------------------------------- SSH without a build


@pytest.mark.ssh
@pytest.mark.parametrize("command", [["bench", "--device"], ["build", "--verify-on"]])
def test_a_wrong_host_key_stops_before_anything_runs(sshd, tmp_path, command):
    proc = run_cli(
        *command, sshd.spec(), *sshd.options("host", known_hosts=sshd.wrong_known_hosts), "--out", tmp_path / "out"
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "host key verification failed" in lines[0], lines
    assert str(sshd.wrong_known_hosts) in lines[0]
    assert not (tmp_path / "out").exists()  # nothing built either: the board is checked first
    assert sshd.commands("host") == []  # the board never got a command


@pytest.mark.ssh
def test_device_check_says_what_the_board_has(sshd, tmp_path):
    odd = tmp_path / "k h %d"  # ssh splits option values on spaces and expands %-tokens: neither may happen
    odd.mkdir()
    shutil.copy(sshd.known_hosts, odd / "known hosts")
    shutil.copy(sshd.keys["nort"], odd / "my key")
    proc = run_cli("device", "check", sshd.spec(), "--known-hosts", odd / "known hosts", "--identity", odd / "my key")
    assert proc.returncode == 0, proc.stderr
    assert "x86_64" in proc.stdout and "1.26" in proc.stdout  # numpy, and no runtime:
    assert "pip install ai-edge-litert onnxruntime openvino tflite-runtime ncnn there" in proc.stdout


# --------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.emu
@pytest.mark.ssh
def test_bench_on_local_emulated_and_ssh_to_an_emulated_board(small_build, small_config, emu_ready, sshd, tmp_path):
    """The three paths in one bench: x86, emu:rpi4, and SSH to a board whose python3 is aarch64."""
    out = _out_copy(small_build, tmp_path / "out")
    _board(sshd, "emu")
    rows_file = tmp_path / "rows.json"
    proc = run_cli(
        "bench",
        "--config",
        small_config,
        "--out",
        out,
        "--target",
        "tflite-int8,onnx-fp32",
        "--device",
        f"local,{PROFILE},{sshd.spec()}",
        *sshd.options("emu"),
        *FAST,
        "--json",
        rows_file,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["device"], r["target"]): r for r in json.loads(rows_file.read_text())}
    assert len(rows) == 6
    arts = {a["target"]: a for a in json.loads((out / "tiny-digits" / "manifest.json").read_text())["artifacts"]}
    for target in ("tflite-int8", "onnx-fp32"):
        local, em, ssh = rows["local", target], rows[PROFILE, target], rows[sshd.spec(), target]
        # ARM's and x86's int8 kernels may round a requantization differently: one step of an int8 output
        # (0.0039 on an AVX2-only x86); float outputs differ by float rounding only.
        tolerance = arts[target]["outputs"][0]["scale"] * 1.001 or 1e-3
        assert local["p50_ms"] > 0 and local["arch"] == "x86_64"
        # emulated: loads, agrees with x86, counted; no wall time under a device-time name
        assert em["status"] == "ok" and em["loads"] == "yes" and em["arch"] == "aarch64"
        for key in ("p50_ms", "runtime_p50_ms", "mean_ms", "min_ms", "load_ms", "first_inference_ms"):
            assert em[key] is None, key
        assert 0 < em["peak_rss_mb"] < em["qemu_peak_rss_mb"]  # the guest's own peak, not qemu's
        assert em["emulated_p50_ms"] > 0 and em["emulated_load_ms"] > 0
        assert em["max_abs_diff_vs_x86"] <= tolerance and em["top1_agreement_vs_x86"] == 1.0
        assert em["agreement_samples"] == 10
        assert len(em["instruction_counts"]) == emulated.EMU_SECTIONS
        assert em["inferences_per_section"] == emulated.EMU_RUNS
        assert 10_000 < em["instructions_per_inference"] < 50_000_000
        assert "cortex-a72" in em["cpu"]
        if shutil.which(f"llvm-mca-{estimate.LLVM}"):  # the board's latency, always labelled an estimate
            assert em["estimated_p50_ms"] > 0 and em["estimate_model"] == estimate.MODEL_VERSION
            assert "not a measurement" in em["estimate_note"] and em["estimate_board"].startswith("rpi4 ")
        # over SSH to the emulated board: the runner ran on aarch64 and sent its outputs back
        assert ssh["status"] == "ok" and ssh["arch"] == "aarch64" and ssh["p50_ms"] > 0
        assert ssh["top1_agreement_vs_x86"] == 1.0 and ssh["max_abs_diff_vs_x86"] <= tolerance
    assert rows[PROFILE, "tflite-int8"]["tflite_runtime_2_14"].startswith("ok")
    assert rows[PROFILE, "onnx-fp32"].get("tflite_runtime_2_14") is None
    header = next(line for line in proc.stdout.splitlines() if "guest insn/inference" in line)
    assert "emulated p50 ms (not device time)" in header
    labelled = header.replace("emulated p50 ms (not device time)", "").replace("estimated p50 ms (estimate)", "")
    assert "p50 ms" not in labelled  # no unlabelled wall time
    assert "emulated times are not device times" in proc.stdout
    # the board's temp folders are gone; every command it ran was one of ours
    assert list(sshd.tmpdirs["emu"].iterdir()) == []
    assert sum(c.startswith("rm -rf -- ") for c in sshd.commands("emu")) == 2


@pytest.mark.slow
@pytest.mark.emu
@pytest.mark.ssh
def test_hostile_file_names_are_data_on_every_device(small_build, emu_ready, sshd, tmp_path):
    """A model file named with spaces, quotes, `;`, $() and backticks: run as is, nothing else runs."""
    out, _ = small_build
    folder = tmp_path / HOSTILE
    folder.mkdir()
    model = folder / f"{HOSTILE}.onnx"
    shutil.copy(_artifact(out, "onnx-fp32"), model)
    inputs = folder / f"{HOSTILE}.npy"
    np.save(inputs, np.load(next((out / ".cache" / "data").glob("*/x_test.npy")))[:10])
    request = RunRequest(
        TARGETS["onnx-fp32"].runner_path, model, inputs, limit=10, timing=Timing(runs=10, min_seconds=0, warmup=1)
    )
    board = get_device(PROFILE)
    first = board.run(request)
    again = board.run(request)
    for res in (first, again):
        assert res["ok"], res.get("error")
        assert res["device_fields"]["top1_agreement_vs_x86"] == 1.0
    # one thread under qemu: the count repeats run after run (onnxruntime to a few instructions in a million)
    a, b = first["device_fields"]["instructions_per_inference"], again["device_fields"]["instructions_per_inference"]
    assert abs(a - b) <= 1e-3 * a, (a, b)
    remote = get_device(sshd.spec(), known_hosts=sshd.known_hosts, identity=sshd.keys["host"])
    res = remote.run(dataclasses.replace(request, timeout=120))
    assert res["ok"], res.get("error")
    assert res["model"] == f"model/{HOSTILE}.onnx" and res["input"]["file"] == f"{HOSTILE}.npy"
    assert res["device_fields"]["max_abs_diff_vs_x86"] < 1e-5
    _no_pwned(tmp_path, sshd.root)
    assert list(sshd.tmpdirs["host"].iterdir()) == []


@pytest.mark.slow
@pytest.mark.ssh
def test_bench_over_ssh_from_a_hostile_out_folder_keeps_files_when_asked(small_build, small_config, sshd, tmp_path):
    out = _out_copy(small_build, tmp_path / HOSTILE)
    proc = run_cli(
        "bench",
        "--config",
        small_config,
        "--out",
        out,
        "--target",
        "openvino-fp32",
        "--device",
        f"local,{sshd.spec()}",
        *sshd.options("host"),
        *FAST,
        "--keep",
        "--json",
        out / "rows.json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running" not in proc.stderr  # the copied cache was reused, nothing rebuilt
    row = json.loads((out / "rows.json").read_text())[1]
    assert row["device"] == sshd.spec() and row["status"] == "ok" and row["top1_agreement_vs_x86"] == 1.0
    kept = Path(row["board_dir"])
    assert kept.parent == sshd.tmpdirs["host"]
    assert sorted(p.name for p in (kept / "model").iterdir()) == ["model.bin", "model.xml"]  # the IR's two files
    assert (kept / "runner" / "runner_common.py").is_file() and (kept / "outputs.npz").is_file()
    shutil.rmtree(kept)
    _no_pwned(tmp_path, sshd.root)


@pytest.mark.ssh
def test_a_detectors_decode_and_nms_is_timed_on_the_board_from_its_own_outputs(sshd, tmp_path):
    """The runner decodes a detector's head with targets/detect.py, copied to the board beside the runners."""
    model = Path(os.environ.get("EDGE_EXPORT_TEST_ASSETS", ROOT / ".venv" / "test-assets")) / "yolov8n_160.onnx"
    if not model.exists():
        pytest.skip("run scripts/fetch_test_assets.sh first")
    with np.load(model.with_name("yolov8n_160_data.npz")) as z:
        np.save(tmp_path / "x.npy", z["x"][:3])
    board = get_device(sshd.spec(), known_hosts=sshd.known_hosts, identity=sshd.keys["host"], keep=True)
    timing = Timing(runs=3, min_seconds=0, warmup=0)
    request = RunRequest(
        RUNNERS / "run_onnxruntime.py", model, tmp_path / "x.npy", timing=timing, detect="0,v8,0.25,0.45,300"
    )
    res = board.run(request)
    kept = Path(res["device_fields"]["board_dir"])
    assert (kept / "detect.py").read_bytes() == (ROOT / "targets" / "detect.py").read_bytes()
    shutil.rmtree(kept)
    post = res["postprocess"]
    assert res["ok"] and "postprocess_error" not in res, res
    assert post["images"] == 3 and post["decodes"] == 3 and post["p50_ms"] > 0 and post["boxes_per_image"] > 0, post


@pytest.mark.emu
def test_an_emulated_board_counts_a_detectors_decode_apart_from_its_inferences(emu_ready, tmp_path):
    """The decode + NMS is one more counted section after the last pass's inferences: the inferences' count is the
    same with or without it, and the decode gets its own instructions and estimate, added up end to end."""
    import onnx
    from onnx import TensorProto, helper

    head = [1, 6, 21]  # a v8 head: 4 box rows and 2 classes over 21 anchors, passed through
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, head)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, head)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "head.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", np.concatenate([rng.uniform(10, 60, (3, 4, 21)), rng.uniform(0, 1, (3, 2, 21))], 1))
    board = get_device(PROFILE)
    timing = Timing(runs=10, min_seconds=0, warmup=0)
    request = RunRequest(RUNNERS / "run_onnxruntime.py", tmp_path / "head.onnx", tmp_path / "x.npy", timing=timing)
    plain = board.run(request)["device_fields"]
    f = board.run(dataclasses.replace(request, detect="0,v8,0.25,0.45,300"))["device_fields"]
    # the runner's arguments differ by --detect: the guest's heap moves, and its counts by a few instructions
    assert len(f["instruction_counts"]) == len(plain["instruction_counts"]) and "postprocess_instructions" not in plain
    assert f["instructions_per_inference"] == pytest.approx(plain["instructions_per_inference"], rel=0.01)
    assert f["estimated_p50_ms"] == pytest.approx(plain["estimated_p50_ms"], rel=0.05)
    # numpy's decode of 21 anchors costs far more than onnxruntime's Identity: the section is the decode's
    assert f["postprocess_instructions"] > 5 * f["instructions_per_inference"] and f["postprocess_boxes_per_image"] > 0
    assert f["estimated_end_to_end_ms"] == pytest.approx(f["estimated_p50_ms"] + f["estimated_postprocess_ms"])


@pytest.mark.slow
@pytest.mark.ssh
def test_a_board_without_the_runtime_says_what_to_pip_install(small_build, small_config, sshd, tmp_path):
    out = _out_copy(small_build, tmp_path / "out")
    proc = run_cli(
        "bench",
        "--config",
        small_config,
        "--out",
        out,
        "--target",
        "onnx-fp32",
        "--device",
        sshd.spec(),
        *sshd.options("nort"),
        *FAST,
    )
    assert proc.returncode == 1
    assert "board has no onnxruntime: pip install onnxruntime there" in proc.stderr
    assert list(sshd.tmpdirs["nort"].iterdir()) == []


@pytest.mark.slow
@pytest.mark.emu
def test_build_verify_on_records_the_aarch64_check_in_the_manifest(small_build, small_config, emu_ready, tmp_path):
    out = _out_copy(small_build, tmp_path / "out")
    proc = run_cli(
        "build", "--config", small_config, "--out", out, "--target", "tflite-dynamic,onnx-int8", "--verify-on", PROFILE
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arm check" in proc.stdout
    arts = {a["target"]: a for a in json.loads((out / "tiny-digits" / "manifest.json").read_text())["artifacts"]}
    for target in ("tflite-dynamic", "onnx-int8"):
        check = arts[target]["arm_check"][PROFILE]
        assert check["status"] == "ok" and check["loads"] is True and check["arch"] == "aarch64", check
        assert check["cpu"] == "cortex-a72" and check["agreement_samples"] == 100
        assert check["top1_agreement_vs_x86"] >= 0.97 and check["max_abs_diff_vs_x86"] < 0.5
        # against the original model too, the board's run and x86's of the same file; the gate says which it used
        assert 0 < check["top1_agreement_vs_original"] <= 1 and 0 < check["x86_top1_agreement_vs_original"] <= 1
        assert check["gate"] == "x86"
    # what deployed boards still run: the dynamic-range file does not load in tflite-runtime 2.14
    assert arts["tflite-dynamic"]["arm_check"][PROFILE]["tflite_runtime_2_14"].startswith("fails: no FULLY_CONNECTED")
    assert "tflite_runtime_2_14" not in arts["onnx-int8"]["arm_check"][PROFILE]
    assert "arm_check" not in arts["tflite-fp32"]  # only what was built and checked


def test_a_board_is_compared_with_the_original_model_too_and_may_pass_on_it_when_x86_is_the_lossy_one(tmp_path):
    """x86's int8 kernels can be the lossy ones (16-bit saturation without VNNI): a board that disagrees with x86
    but agrees with the original at least as well as x86's run of the file passes on that figure."""
    from pipeline.devices.verify_on import _as_close_to_the_original

    original = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]] + 0.1
    np.savez(tmp_path / "original.npz", output_0=np.concatenate([original, original]))  # more samples than run
    x86 = original.copy()
    x86[:2] = x86[:2, ::-1]  # x86's run misses two samples
    board = original.copy()
    board[:1] = board[:1, ::-1]  # the board misses one
    f = agreement.vs_original([board], tmp_path / "original.npz", [x86])
    assert (f["top1_agreement_vs_original"], f["x86_top1_agreement_vs_original"]) == (0.875, 0.75)
    assert _as_close_to_the_original(f)
    worse = agreement.vs_original([x86], tmp_path / "original.npz", [board])
    assert not _as_close_to_the_original(worse)
    assert "differ in shape" in agreement.vs_original([board[:, :3]], tmp_path / "original.npz")["original_error"]
