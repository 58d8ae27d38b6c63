"""Emulated aarch64 boards: setup, guest Python, runtimes, instruction counts, registry."""

import dataclasses
import subprocess
import time

import pytest

from pipeline.devices import emulator as emu
from pipeline.devices.profiles import PROFILES as DEVICES
from pipeline.devices.profiles import get_profile as get_device

PROFILE = "emu:rpi4"


@pytest.fixture(scope="module")
def rpi4():
    try:
        return emu.setup(PROFILE, log=lambda line: print(line))
    except emu.EmuError as e:
        pytest.skip(f"aarch64 emulation cannot be set up here: {e}")


def run_guest(argv, timeout=300):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# --------------------------------------------------------------- emulation


@pytest.mark.emu
def test_setup_is_cached_and_second_call_is_instant(rpi4):
    t0 = time.monotonic()
    assert emu.setup(PROFILE) == rpi4
    assert time.monotonic() - t0 < 2
    assert emu.is_ready(PROFILE)
    assert (rpi4 / "READY").is_file()
    assert (rpi4 / "sysroot" / "proc" / "cpuinfo").read_text() == get_device("rpi4").cpuinfo


@pytest.mark.emu
def test_guest_python_is_aarch64(rpi4):
    out = run_guest(
        emu.python_command(PROFILE) + ["-c", "import platform, sys; print(platform.machine(), sys.version_info[:2])"]
    ).stdout
    assert out.split()[0] == "aarch64"
    assert "(3, 11)" in out


@pytest.mark.emu
def test_runtimes_import_under_emulation_without_cpu_warnings(rpi4):
    proc = run_guest(
        emu.python_command(PROFILE)
        + [
            "-c",
            (
                "import numpy, ai_edge_litert.interpreter, onnxruntime, openvino;"
                "print(numpy.__version__, onnxruntime.__version__, openvino.__version__,"
                " openvino.Core().get_property('CPU', 'FULL_DEVICE_NAME'))"
            ),
        ]
    )
    assert proc.stdout.startswith("1.26.4 1.32.0 2026.4.1")
    assert "Raspberry Pi 4" in proc.stdout  # the profile's identity, not the x86 host's
    assert "MIDR" not in proc.stderr


@pytest.mark.emu
def test_tflite_runtime_has_its_own_numpy_1_site(rpi4):
    out = run_guest(
        emu.python_command(PROFILE, runtime="tflite_runtime")
        + ["-c", "import numpy, tflite_runtime.interpreter; print(numpy.__version__)"]
    ).stdout
    assert out.strip().startswith("1.")


LOOP = """
import os, sys

def mark(magic):
    try:
        os.lseek(-1, magic, 0)
    except OSError:  # EBADF is the expected answer; qemu's plugin saw the call
        pass

n = int(sys.argv[1])
for k in (n, 2 * n):
    mark(0x51454D55)
    total = 0
    for i in range(k):
        total += i * i
    mark(0x51454D56)
"""


@pytest.mark.emu
def test_instruction_counts_are_exact_repeatable_and_proportional(rpi4, tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    runs = []
    for i in range(2):
        counts_file = tmp_path / f"counts{i}.txt"
        run_guest(
            emu.python_command(PROFILE, count_instructions=True, counts_file=counts_file) + [str(script), "20000"]
        )
        runs.append(emu.read_counts(counts_file))
    assert runs[0] == runs[1]
    single, double = runs[0]
    assert single > 100_000
    assert 1.8 < double / single < 2.2


@pytest.mark.emu
def test_counting_needs_a_counts_file(rpi4):
    with pytest.raises(ValueError, match="counts_file"):
        emu.python_command(PROFILE, count_instructions=True)


def test_unknown_runtime_is_rejected():
    with pytest.raises(ValueError, match="tflite_runtime"):
        emu.env(PROFILE, runtime="tflite")


def test_native_host_cannot_be_emulated():
    with pytest.raises(ValueError, match="natively"):
        emu.is_ready("x86")


# --------------------------------------------------------------- device registry


def test_pi_profiles_name_their_qemu_cpu():
    assert {n: d.cpu for n, d in DEVICES.items()} == {
        "rpi3": "cortex-a53",
        "rpi4": "cortex-a72",
        "rpi5": "cortex-a76",
        "x86": None,
    }
    assert all(DEVICES[n].cores == 4 and DEVICES[n].arch == "aarch64" for n in ("rpi3", "rpi4", "rpi5"))


def test_unknown_device_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'rpi4'"):
        get_device("rpi44")
    with pytest.raises(ValueError, match="known: rpi3, rpi4, rpi5, x86"):
        get_device("jetson")


def test_devices_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_device("rpi4").cores = 8


def test_cpuinfo_matches_midr():
    info = get_device("rpi5").cpuinfo
    assert info.count("processor\t:") == 4
    assert "CPU implementer\t: 0x41" in info
    assert "CPU variant\t: 0x4" in info
    assert "CPU part\t: 0xd0b" in info
    assert "CPU revision\t: 1" in info
    with pytest.raises(ValueError):
        _ = get_device("x86").cpuinfo
