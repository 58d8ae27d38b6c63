"""Estimated latency on a Raspberry Pi board from its emulated run: an ESTIMATE, never a measurement.

The emulated board (emulator.py) runs the real aarch64 runtime with the board's CPU identity, so the
runtime picks the kernels it would pick on the board (checked: XNNPACK's Cortex-A53 int8 kernel on
rpi3, its SMULL/SADALP kernels on rpi4, SDOT on rpi5). The profiling plugin
(scripts/qemu_plugin/bb_profile.c) records every translation block the timed section executed, with
its instruction bytes and how often it ran. The blocks covering COVERAGE of the instructions are
disassembled (llvm-mc) and priced by LLVM's scheduling model of the board's core; count x cycles at
the board's clock is the compute time of one thread.

- Out-of-order cores (Pi 4's Cortex-A72, Pi 5's Cortex-A76): llvm-mca's simulated cycles per iteration
  of the block in steady state, i.e. as the inner loop it usually is.
- The in-order Cortex-A53 (Pi 3): the block's resource bound (llvm-mca's "Block RThroughput": cycles
  when only issue width and execution units limit it). XNNPACK's A53 kernels are scheduled by hand so
  that this core dual-issues them without stalls; llvm-mca's in-order simulation stalls on every
  latency that schedule hides (2.8-3 cycles per instruction on the fp32 kernels, 1.7-5x the published
  Pi 3B+ latencies). This choice was made after seeing that miss (README: Estimated latency).

llvm-mca assumes every load hits L1. The memory term adds the bytes one inference moves through
memory (tensor_bytes: every weight read once, every activation written once and read once) at an
effective bandwidth per board, and it does not shrink with threads: estimated ms = compute ms /
threads + bytes / bandwidth. The bandwidths are the only fitted constants, fitted on the published
4-thread Pi 4 and Pi 5 points (benchmarks/pi_latency.py reports every point leave-one-out). The
Pi 3's published points are single-thread, where the term cannot be told apart from the compute
time, so rpi3 has none.

Needs llvm-mc-19 and llvm-mca-19 (Debian's llvm-19, scripts/install_system.sh).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EstimateError

MODEL_VERSION = "mca-2"  # bump when the estimate's meaning changes
COVERAGE = 0.995  # share of executed instructions priced by llvm-mca; the rest at the priced mean
MCA_ITERATIONS = 50  # steady state: long enough for the loop-carried chains, short enough to stay fast
LLVM = 19  # Debian's llvm-19 models the Neoverse N1 (A76 design); llvm-14 maps a72, a76 and n1 to the A57
_ATTRS = "+neon,+fp-armv8,+crc,+dotprod,+fullfp16,+rcpc,+lse"  # decode everything the boards may run


@dataclass(frozen=True)
class Board:
    cpu: str  # llvm-mca -mcpu
    in_order: bool = False  # price blocks by their resource bound instead of the simulation
    gbps: float | None = None  # effective memory bandwidth of the memory term (None: no term)


# The clock is the board profile's (profiles.py max_mhz); estimate(mhz=...) for other revisions.
# gbps: fitted on all of the board's published points by benchmarks/pi_latency.py (which prints the
# fit and checks it against these values); far below the DRAM's peak, it stands for every stall the
# bytes cause, not for a bus speed.
BOARDS = {
    "rpi3": Board("cortex-a53", in_order=True),
    "rpi4": Board("cortex-a72", gbps=2.30),
    # The Neoverse N1 is the Cortex-A76 design for servers; LLVM (19) models it, while its cortex-a76
    # entry reuses the older Cortex-A57 model (as cortex-a72 does).
    "rpi5": Board("neoverse-n1", gbps=13.03),
}


def parse_blocks(path: Path) -> list[tuple[int, dict[str, int]]]:
    """Sections of a bb_profile.c file: (instructions, {block hex bytes: executions})."""
    sections: list[tuple[int, dict[str, int]]] = []
    for line in Path(path).read_text().splitlines():
        words = line.split()
        if words[:1] == ["section"]:
            sections.append((int(words[1]), {}))
        elif sections and len(words) == 3:
            blocks = sections[-1][1]
            blocks[words[2]] = blocks.get(words[2], 0) + int(words[1])  # retranslated blocks add up
    return sections


def _tool(name: str) -> str:
    path = shutil.which(f"{name}-{LLVM}") or shutil.which(name)
    if path is None:
        raise EstimateError(f"{name}-{LLVM} not found: apt-get install llvm-{LLVM} (scripts/install_system.sh)")
    return path


_INSNS: dict[str, tuple[str, ...]] = {}  # per process: a bench prices the same runtime's blocks row after row


def disassemble(hexbytes: str) -> tuple[str, ...]:
    return disassemble_all([hexbytes])[hexbytes]


def disassemble_all(blocks: list[str]) -> dict[str, tuple[str, ...]]:
    """The instructions of each block (hex bytes), from one llvm-mc run over every block not seen before:
    one run per block took 20 ms each, over a minute for the ~4,000 hot blocks of one onnxruntime row.

    One block per input line; an invalid word prints nothing but a warning naming its line, so each
    block owns its words' instructions less its warnings (AArch64 words are 4 bytes, each decoded alone).
    """
    todo = [b for b in dict.fromkeys(blocks) if b not in _INSNS]
    if todo:
        proc = subprocess.run(
            [_tool("llvm-mc"), "--disassemble", "-triple=aarch64", f"-mattr={_ATTRS}"],
            input="\n".join(" ".join(f"0x{b:02x}" for b in bytes.fromhex(h)) for h in todo) + "\n",
            capture_output=True,
            text=True,
        )
        insns = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip() and not ln.strip().startswith(".")]
        invalid = Counter(
            int(n) for n in re.findall(r"^<stdin>:(\d+):\d+: warning: invalid instruction", proc.stderr, re.M)
        )
        found, at = {}, 0
        for line, h in enumerate(todo, 1):
            n = len(h) // 8 - invalid[line]
            found[h] = tuple(insns[at : at + n])
            at += n
        if at != len(insns):
            raise EstimateError(f"llvm-mc gave {len(insns)} instructions for {at} decodable words")
        _INSNS.update(found)
    return {b: _INSNS[b] for b in blocks}


def block_cycles(blocks: list[str], cpu: str, in_order: bool = False) -> dict[str, float]:
    """Cycles per execution of each block (hex bytes) on `cpu`, from one llvm-mca run over all of them:
    the simulated steady state, or with `in_order` the resource bound (see the module's docstring).

    A block llvm-mca cannot model (an instruction without scheduling data) is left out of the answer.
    """
    todo = disassemble_all(blocks)
    todo = {b: insns for b, insns in todo.items() if insns}
    out: dict[str, float] = {}
    while todo:
        names = list(todo)
        lines, owner = [], {}
        for i, b in enumerate(names):
            lines.append(f"# LLVM-MCA-BEGIN b{i}")
            for insn in todo[b]:
                owner[len(lines) + 1] = b
                lines.append(insn)
            lines.append(f"# LLVM-MCA-END b{i}")
        proc = subprocess.run(
            [
                _tool("llvm-mca"),
                "-mtriple=aarch64",
                f"-mcpu={cpu}",
                f"-mattr={_ATTRS}",
                f"-iterations={MCA_ITERATIONS}",
                "-summary-view",
                "-resource-pressure=0",
                "-instruction-info=0",
            ],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            bad = {owner[int(m)] for m in re.findall(r"<stdin>:(\d+):", proc.stderr) if int(m) in owner}
            # an instruction the core's model has no scheduling data for (e.g. an LSE atomic on the
            # Neoverse N1) is reported by its text, not by its line
            unpriced = {i.strip() for i in re.findall(r"note: instruction:(.+)", proc.stderr)}
            bad |= {b for b in names if unpriced & set(todo[b])}
            if not bad:
                raise EstimateError(f"llvm-mca failed: {proc.stderr.strip()[:300]}")
            for b in bad:
                del todo[b]
            continue
        if in_order:
            cycles = [float(c) for c in re.findall(r"^Block RThroughput:\s+([\d.]+)", proc.stdout, re.M)]
        else:
            cycles = [int(c) / MCA_ITERATIONS for c in re.findall(r"^Total Cycles:\s+(\d+)", proc.stdout, re.M)]
        if len(cycles) != len(names):
            raise EstimateError(f"llvm-mca reported {len(cycles)} regions for {len(names)} blocks")
        out.update(zip(names, cycles))
        break
    return out


def estimate(
    blocks: dict[str, int],
    inferences: int,
    board: str,
    mhz: int | None = None,
    in_order: bool | None = None,
    moved_bytes: int | None = None,
    threads: int = 1,
) -> dict:
    """Estimated milliseconds per inference on `board` from one section's blocks ({hex: executions}),
    run with `threads` threads.

    moved_bytes: what one inference moves through memory (tensor_bytes); None leaves the memory term
    out (and says so). mhz: another clock than the profile's; in_order: override the board's pricing
    (for the validation).
    """
    from pipeline.devices.profiles import get_profile

    spec = BOARDS[board]
    mhz = mhz or get_profile(board).max_mhz
    gbps = spec.gbps
    if threads > 1 and gbps is None:
        raise EstimateError(f"{board} has no memory term (no multi-thread points to fit it): 1 thread only")
    weight = {b: n * (len(b) // 8) for b, n in blocks.items()}  # instructions (4 bytes each) executed
    total = sum(weight.values())
    if not total:
        raise EstimateError("the profile has no executed instructions")
    hot, covered = [], 0
    for b in sorted(weight, key=weight.get, reverse=True):
        if covered >= COVERAGE * total:
            break
        hot.append(b)
        covered += weight[b]
    cycles = block_cycles(hot, spec.cpu, spec.in_order if in_order is None else in_order)
    priced = sum(weight[b] for b in cycles)
    hot_cycles = sum(blocks[b] * c for b, c in cycles.items())
    cpi = hot_cycles / priced
    # loads and stores of the priced blocks, reported (the memory term counts tensor bytes instead)
    memory = sum(blocks[b] * sum(i.split()[0].startswith(("ld", "st")) for i in disassemble(b)) for b in cycles)
    total_cycles = hot_cycles + (total - priced) * cpi  # unpriced blocks at the priced mean
    compute_ms = total_cycles / inferences / (mhz * 1e3)
    note = "an estimate from emulated instructions priced by llvm-mca, not a measurement"
    if gbps is None:
        memory_ms = 0.0
    elif moved_bytes is None:
        memory_ms = 0.0
        note += "; without its memory term (tensor sizes are read from .tflite files only)"
    else:
        memory_ms = moved_bytes / (gbps * 1e6)
        note += f"; memory term: {moved_bytes / 1e6:.1f} MB at a fitted {gbps:g} GB/s"
    return {
        "estimated_p50_ms": compute_ms / threads + memory_ms,
        "estimate_model": MODEL_VERSION,
        "estimate_board": f"{board} {spec.cpu} {mhz} MHz",
        "estimate_note": note,
        "estimate_threads": threads,
        "estimate_compute_ms": compute_ms,
        "estimate_memory_ms": memory_ms,
        "estimate_cycles_per_inference": round(total_cycles / inferences),
        "estimate_cpi": round(cpi, 3),
        "estimate_memory_accesses_per_inference": round(memory * total / priced / inferences),
        "estimate_priced_share": round(priced / total, 4),
        "estimate_hot_blocks": len(cycles),
    }
