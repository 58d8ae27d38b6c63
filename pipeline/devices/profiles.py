"""Board profiles: the boards a model is benchmarked on (what an emulated board pretends to be).

Stdlib only, so listing targets never pays for importing a runtime.
The identity fields (MIDR, cpuinfo text, caches, clocks) are what the real
board's kernel reports; the emulator (pipeline/devices/emulator.py) writes them into the
aarch64 sysroot so runtimes that probe the CPU see the board, not the x86 host.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class CacheLevel:
    level: int
    type: str  # sysfs spelling: "Data", "Instruction" or "Unified"
    size_kb: int
    shared: bool  # shared by all cores (else private to each)


@dataclass(frozen=True)
class Profile:
    name: str
    arch: str  # platform.machine() on the device
    cpu: str | None  # qemu -cpu model; None means the local host, run natively
    cores: int
    memory_mb: int
    default_threads: int
    description: str
    midr: int = 0  # MIDR_EL1 as /sys/.../regs/identification/midr_el1 shows it
    features: str = ""  # the /proc/cpuinfo "Features" line
    bogomips: str = ""
    model: str = ""  # board model string (cpuinfo "Model", devicetree model)
    revision: str = ""  # Raspberry Pi revision code (cpuinfo "Revision")
    max_mhz: int = 0
    min_mhz: int = 0
    caches: tuple[CacheLevel, ...] = ()

    @property
    def emulated(self) -> bool:
        return self.cpu is not None

    @property
    def cpuinfo(self) -> str:
        """/proc/cpuinfo text as an arm64 Raspberry Pi kernel prints it."""
        if not self.midr:
            raise ValueError(f"device {self.name!r} has no aarch64 CPU identity")
        m = self.midr
        block = (
            f"BogoMIPS\t: {self.bogomips}\nFeatures\t: {self.features}\nCPU implementer\t: 0x{m >> 24:02x}\n"
            f"CPU architecture: 8\nCPU variant\t: 0x{(m >> 20) & 0xF:x}\nCPU part\t: 0x{(m >> 4) & 0xFFF:03x}\n"
            f"CPU revision\t: {m & 0xF}\n\n"
        )
        text = "".join(f"processor\t: {i}\n{block}" for i in range(self.cores))
        return text + f"Revision\t: {self.revision}\nModel\t\t: {self.model}\n"


def _host_memory_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20


_PI_FEATURES = "fp asimd evtstrm crc32 cpuid"

PROFILES: MappingProxyType[str, Profile] = MappingProxyType(
    {
        d.name: d
        for d in (
            Profile(
                name="rpi3",
                arch="aarch64",
                cpu="cortex-a53",
                cores=4,
                memory_mb=1024,
                default_threads=4,
                description="Raspberry Pi 3 B / Zero 2 W class: 4x Cortex-A53 (BCM2837), 1 GiB (Zero 2 W: 512 MiB)",
                midr=0x410FD034,
                features=_PI_FEATURES,
                bogomips="38.40",
                model="Raspberry Pi 3 Model B Rev 1.2",
                revision="a02082",
                max_mhz=1200,
                min_mhz=600,
                caches=(
                    CacheLevel(1, "Data", 32, False),
                    CacheLevel(1, "Instruction", 32, False),
                    CacheLevel(2, "Unified", 512, True),
                ),
            ),
            Profile(
                name="rpi4",
                arch="aarch64",
                cpu="cortex-a72",
                cores=4,
                memory_mb=4096,
                default_threads=4,
                description="Raspberry Pi 4 B: 4x Cortex-A72 (BCM2711), 4 GiB",
                midr=0x410FD083,
                features=_PI_FEATURES,
                bogomips="108.00",
                model="Raspberry Pi 4 Model B Rev 1.4",
                revision="c03114",
                max_mhz=1800,
                min_mhz=600,
                caches=(
                    CacheLevel(1, "Data", 32, False),
                    CacheLevel(1, "Instruction", 48, False),
                    CacheLevel(2, "Unified", 1024, True),
                ),
            ),
            Profile(
                name="rpi5",
                arch="aarch64",
                cpu="cortex-a76",
                cores=4,
                memory_mb=8192,
                default_threads=4,
                description="Raspberry Pi 5: 4x Cortex-A76 (BCM2712), 8 GiB",
                midr=0x414FD0B1,
                features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                "asimdrdm lrcpc dcpop asimddp",
                bogomips="108.00",
                model="Raspberry Pi 5 Model B Rev 1.0",
                revision="d04170",
                max_mhz=2400,
                min_mhz=1500,
                caches=(
                    CacheLevel(1, "Data", 64, False),
                    CacheLevel(1, "Instruction", 64, False),
                    CacheLevel(2, "Unified", 512, False),
                    CacheLevel(3, "Unified", 2048, True),
                ),
            ),
            Profile(
                name="x86",
                arch="x86_64",
                cpu=None,
                cores=os.cpu_count() or 1,
                memory_mb=_host_memory_mb(),
                default_threads=os.cpu_count() or 1,
                description="the local x86-64 host, run natively",
            ),
        )
    }
)


def get_profile(name: str) -> Profile:
    """The profile called `name`; unknown names raise ValueError naming the closest one."""
    try:
        return PROFILES[name]
    except KeyError:
        close = difflib.get_close_matches(name, PROFILES, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown device {name!r}{hint} (known: {', '.join(PROFILES)})") from None
