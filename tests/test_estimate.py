"""The latency estimate of the emulated boards: block profile, llvm-mca pricing, labelled estimates."""

import math
import os
import shutil

import numpy as np
import pytest

from pipeline.devices import emulated, estimate
from pipeline.devices import emulator as emu
from pipeline.devices.profiles import get_profile

RUNNER = os.path.join(os.path.dirname(__file__), "..", "targets", "runners", "run_litert.py")
needs_llvm = pytest.mark.skipif(
    shutil.which(f"llvm-mca-{estimate.LLVM}") is None,
    reason=f"llvm-{estimate.LLVM} not installed (scripts/install_system.sh)",
)


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory):
    """A small conv net as fp32 and full-int8 .tflite, and input samples."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.DepthwiseConv2D(3, activation="relu"),
            keras.layers.Conv2D(32, 1, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    folder = tmp_path_factory.mktemp("estimate")
    np.save(folder / "x.npy", x)
    for dtype in ("fp32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if dtype == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([s[None]] for s in x)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        (folder / f"{dtype}.tflite").write_bytes(conv.convert())
    return folder


@pytest.fixture(scope="module")
def profiles(small_tflite):
    try:
        emu.setup("emu:rpi4", log=lambda line: None)
    except emu.EmuError as e:
        pytest.skip(f"aarch64 emulation cannot be set up here: {e}")
    out = {}
    for dtype in ("fp32", "int8"):
        folder = small_tflite / f"run-{dtype}"
        folder.mkdir()
        blocks, n, res = emulated.block_profile(
            "rpi4", RUNNER, small_tflite / f"{dtype}.tflite", small_tflite / "x.npy", folder, runs=3
        )
        out[dtype] = (blocks, n, emu.read_counts(folder / "counts.txt"), res)
    return out


@pytest.mark.emu
@pytest.mark.slow
def test_block_profile_accounts_for_every_instruction_the_counter_counted(profiles):
    for blocks, n, counts, res in profiles.values():
        assert n == res["latency"]["runs"]
        assert len(counts) == 1  # one timed section
        assert sum(runs * (len(b) // 8) for b, runs in blocks.items()) == counts[0]


@pytest.mark.emu
@pytest.mark.slow
@needs_llvm
def test_int8_and_fp32_get_labelled_estimates_on_every_board(profiles):
    for blocks, n, counts, _ in profiles.values():
        for board, spec in estimate.BOARDS.items():
            e = estimate.estimate(blocks, n, board)
            assert e["estimate_model"] == estimate.MODEL_VERSION
            assert e["estimate_board"] == f"{board} {spec.cpu} {get_profile(board).max_mhz} MHz"
            assert math.isfinite(e["estimated_p50_ms"]) and e["estimated_p50_ms"] > 0
            assert e["estimate_priced_share"] >= estimate.COVERAGE - 0.01
            # cycles are what the blocks cost: a per-instruction cost of ~0.2-10 cycles, never 0
            assert 0.1 < e["estimate_cycles_per_inference"] / (counts[0] / n) < 20
            assert 0 < e["estimate_memory_accesses_per_inference"] < counts[0] / n


@pytest.mark.emu
@pytest.mark.slow
@needs_llvm
def test_the_estimate_is_cycles_over_the_clock(profiles):
    blocks, n, _, _ = profiles["fp32"]
    fast, slow = estimate.estimate(blocks, n, "rpi4", mhz=1800), estimate.estimate(blocks, n, "rpi4", mhz=1500)
    assert fast["estimate_cycles_per_inference"] == slow["estimate_cycles_per_inference"]
    assert slow["estimated_p50_ms"] == pytest.approx(fast["estimated_p50_ms"] * 1800 / 1500)


@needs_llvm
def test_an_in_order_a53_needs_more_cycles_than_an_a72_for_the_same_fma_block():
    asm = ["fmla v0.4s, v1.4s, v2.4s", "fmla v3.4s, v4.4s, v2.4s", "ldr q1, [x0], #16", "subs x1, x1, #1"]
    hexes = _assemble(asm)
    assert [" ".join(i.replace(",", " ").split()) for i in estimate.disassemble(hexes)] == [
        " ".join(a.replace(",", " ").split()) for a in asm
    ]
    a53 = estimate.block_cycles([hexes], "cortex-a53")[hexes]
    a72 = estimate.block_cycles([hexes], "cortex-a72")[hexes]
    assert a53 > a72 > 0


@needs_llvm
def test_blocks_are_disassembled_together_and_an_undecodable_word_drops_only_itself():
    fma, ld = _assemble(["fmla v0.4s, v1.4s, v2.4s"]), _assemble(["ldr q1, [x0], #16", "subs x1, x1, #1"])
    broken = fma + "ffffffff" + fma  # 0xffffffff decodes to no AArch64 instruction
    insns = estimate.disassemble_all([fma, broken, ld])
    assert insns[broken] == insns[fma] * 2 and len(insns[ld]) == 2 and insns[ld][0].startswith("ldr")
    assert estimate.disassemble(ld) == insns[ld]


@pytest.mark.emu
@pytest.mark.slow
@needs_llvm
def test_each_emulated_board_runs_the_int8_kernels_xnnpack_picks_for_its_core(small_tflite, tmp_path):
    """XNNPACK picks int8 kernels by the core it detects: the A53's hand-scheduled SMLAL-by-lane
    kernel, the A72's SMULL/SADALP ones, the A76's dot products (the only core of the three with SDOT)."""
    mnemonics = {}
    for board in ("rpi3", "rpi4", "rpi5"):
        try:
            emu.setup(f"emu:{board}", log=lambda line: None)
        except emu.EmuError as e:
            pytest.skip(f"aarch64 emulation cannot be set up here: {e}")
        folder = tmp_path / board
        folder.mkdir()
        blocks, _, _ = emulated.block_profile(
            board, RUNNER, small_tflite / "int8.tflite", small_tflite / "x.npy", folder, runs=1
        )
        hot = sorted(blocks, key=lambda b: blocks[b] * len(b), reverse=True)[:20]
        mnemonics[board] = " ".join(i for b in hot for i in estimate.disassemble(b))
    assert "sdot" in mnemonics["rpi5"]
    assert "sdot" not in mnemonics["rpi3"] and "sdot" not in mnemonics["rpi4"]
    assert ".h[" in mnemonics["rpi3"]  # multiply-accumulate by lane: the Cortex-A53 kernel
    assert "sadalp" in mnemonics["rpi4"] and ".h[" not in mnemonics["rpi4"]


@needs_llvm
def test_threads_divide_the_compute_time_and_the_memory_term_adds_the_moved_bytes_over_the_bandwidth():
    hexes = _assemble(["fmla v0.4s, v1.4s, v2.4s", "ldr q1, [x0], #16", "subs x1, x1, #1"])
    blocks, moved = {hexes: 1_000_000}, 8_000_000
    alone = estimate.estimate(blocks, 1, "rpi4")
    assert alone["estimate_memory_ms"] == 0 and "without its memory term" in alone["estimate_note"]
    four = estimate.estimate(blocks, 1, "rpi4", moved_bytes=moved, threads=4)
    assert four["estimate_memory_ms"] == pytest.approx(moved / (estimate.BOARDS["rpi4"].gbps * 1e6))
    assert four["estimated_p50_ms"] == pytest.approx(alone["estimate_compute_ms"] / 4 + four["estimate_memory_ms"])
    # the Pi 3 has no fitted bandwidth: its estimate is the compute time, whatever the bytes
    pi3 = estimate.estimate(blocks, 1, "rpi3", moved_bytes=moved)
    assert pi3["estimated_p50_ms"] == pi3["estimate_compute_ms"] > 0


def test_an_int8_tflite_moves_about_a_quarter_of_the_bytes_of_its_fp32_original(small_tflite):
    from targets.tflite import tensor_bytes

    fp32, int8 = tensor_bytes(small_tflite / "fp32.tflite"), tensor_bytes(small_tflite / "int8.tflite")
    # at least every fp32 weight (1,482 parameters) once and the fp32 input written and read
    assert fp32 > 4 * 1482 + 2 * 4 * 32 * 32 * 3
    assert 3 < fp32 / int8 < 4.5


@needs_llvm
def test_a_block_the_core_model_cannot_price_is_left_out_and_the_rest_priced():
    fma = _assemble(["fmla v0.4s, v1.4s, v2.4s", "subs x1, x1, #1"])
    atomic = _assemble(["casa w0, w1, [x2]", "add x0, x0, #1"])  # no scheduling data in LLVM's N1 model
    cycles = estimate.block_cycles([fma, atomic], "neoverse-n1")
    assert set(cycles) == {fma} and cycles[fma] > 0


def _assemble(asm):
    import subprocess

    out = subprocess.run(
        [f"llvm-mc-{estimate.LLVM}", "-triple=aarch64", f"-mattr={estimate._ATTRS}", "-show-encoding"],
        input="\n".join(asm) + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = []
    for line in out.splitlines():
        if "encoding:" in line:
            words.append("".join(b[2:] for b in line.split("encoding:")[1].strip(" []").split(",")))
    return "".join(words)
