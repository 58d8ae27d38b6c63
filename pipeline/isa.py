"""Which x86 instruction sets this machine has: int8 figures depend on them.

onnxruntime and OpenVINO pick their int8 kernels per ISA (VNNI's vpdpbusd, or AVX2's vpmaddubsw, whose u8 x s8
pairs saturate at 16 bits), so an int8 file's outputs, and every figure measured on them, hold for the CPU
they ran on. The manifest, the build table and the model card say which. No TensorFlow here.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def x86_isa() -> dict:
    """{cpu, arch, flags: the FLAGS this CPU has, label: e.g. "AVX-512 VNNI", "AVX2"}. A flag counts when the
    CPU says so (cpuid) and /proc/cpuinfo lists it (Linux drops what the OS does not enable); under an emulator
    (qemu-x86_64 -cpu Haswell) /proc/cpuinfo is the host's but cpuid is the emulated CPU's."""
    arch = platform.machine()
    text = _cpuinfo()
    cpu = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    listed = {f for f in line.split(":", 1)[-1].split() if f in FLAGS}
    found = _cpuid_flags() if arch == "x86_64" else None
    flags = listed & found if found is not None and line else found if found is not None else listed
    return {"cpu": cpu, "arch": arch, "flags": sorted(flags), "label": label(arch, flags)}


_CPUID = bytes.fromhex("5389f889f14989d00fa241890041895804418948084189500c5bc3")
"""void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4]) for x86-64 System V: push rbx; eax, ecx = leaf, subleaf;
cpuid; out = eax, ebx, ecx, edx; pop rbx; ret."""


def _cpuid_flags() -> set[str] | None:
    """The FLAGS cpuid reports (leaf 7: AVX2 EBX5, AVX-512F EBX16, AVX-512 VNNI ECX11, AMX-INT8 EDX25; leaf 7.1:
    AVX-VNNI EAX4), or None when machine code cannot be run here (no executable memory)."""
    import ctypes
    import mmap

    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError):
        return None
    page.write(_CPUID)
    func = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4))(
        ctypes.addressof(ctypes.c_char.from_buffer(page))
    )

    def cpuid(leaf, sub=0):
        out = (ctypes.c_uint32 * 4)()
        func(leaf, sub, ctypes.byref(out))
        return list(out)

    if cpuid(0)[0] < 7:
        return set()
    _, b, c, d = cpuid(7)
    bits = {
        "avx2": b >> 5,
        "avx512f": b >> 16,
        "avx512_vnni": c >> 11,
        "amx_int8": d >> 25,
        "avx_vnni": cpuid(7, 1)[0] >> 4,
    }
    return {name for name, v in bits.items() if v & 1}


def label(arch: str, flags) -> str:
    """What the int8 kernels can use, in a few words: "AVX-512 VNNI AMX", "AVX2 AVX-VNNI", "AVX2"."""
    if arch not in ("x86_64", "AMD64"):
        return arch
    parts = ["AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"]
    if "avx512_vnni" in flags:
        parts.append("VNNI")
    elif "avx_vnni" in flags:
        parts.append("AVX-VNNI")
    if "amx_int8" in flags:
        parts.append("AMX")
    return " ".join(parts)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


AVX2_ONLY = ["qemu-x86_64", "-cpu", "Haswell-v4,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl"]
"""A command prefix that runs an x86-64 program on an emulated AVX2-only CPU (Haswell: AVX2 and FMA, no AVX-512,
no VNNI; the features QEMU 7.2's TCG lacks are turned off so it says nothing): onnxruntime, OpenVINO and LiteRT
then pick their AVX2 int8 kernels, as on a CPU without VNNI. Debian's qemu-user; about 5-30x slower."""


def avx2_only() -> list[str] | None:
    """AVX2_ONLY when qemu-x86_64 is installed on an x86-64 machine, else None."""
    import shutil

    return AVX2_ONLY if platform.machine() == "x86_64" and shutil.which(AVX2_ONLY[0]) else None
