"""`emu:PROFILE` (rpi3, rpi4, rpi5; profiles.py): the runner scripts in an arm64 Debian Python under
qemu user mode (emulator.py; `python -m pipeline device setup emu:rpi4`).

Emulated wall time is not device time: it is reported only under `emulated_*` keys. The cost figure is
guest instructions per inference on one thread, counted by a qemu plugin over the runner's timed
section only, in EMU_SECTIONS sections of EMU_RUNS inferences (median). `.tflite` files are also run
in tflite-runtime 2.14 aarch64 (column `tflite_runtime_2_14`). Every run also writes the outputs of
the same samples and compares them with the same runner on this x86 machine.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from pipeline.devices.agreement import (
    RUNTIMES_PROBE,
    agree_fields,
    emulated_fields,
    legacy_on_board,
    runtimes_json,
    slice_inputs,
    vs_x86,
    x86_reference,
)
from pipeline.errors import EstimateError, UsageError
from pipeline.runtimes import RUNTIMES, by_runner

# Under emulation every timed section runs a fixed, small number of inferences: instruction counts
# are exact for one thread, so more runs add emulated minutes, not information.
EMU_RUNS = 10
EMU_WARMUP = 2
EMU_SECTIONS = 3
GUEST_SECTIONS = Path(__file__).with_name("emu_sections.py")
TRACE_FILE = "trace.txt"  # guest_trace.c's output: the op trace of --profile and the guest's peak memory
# EDGE_EXPORT_NO_OWN_TIMER: nothing but the inference between the counted markers (runner_common._bench).
GUEST_ENV = (
    "PATH=/usr/bin:/bin",
    "LANG=C.UTF-8",
    "ORT_DISABLE_TELEMETRY=1",
    "OPENVINO_TELEMETRY_OPTOUT=1",
    "EDGE_EXPORT_NO_OWN_TIMER=1",
)


def emu_profile(spec: str):
    """The Pi profile of `emu:NAME`; a UsageError naming the known ones otherwise."""
    from pipeline.devices.profiles import get_profile

    name = spec.split(":", 1)[1] if ":" in spec else ""
    try:
        device = get_profile(name)
    except ValueError as e:
        raise UsageError(f"device '{spec}': {e}") from None
    if not device.emulated:
        raise UsageError(f"device '{spec}': {device.name} is this machine, run natively: use --device local")
    return device


def emu_columns():
    return [
        ("target", "target"),
        ("device", "device"),
        ("threads", "thr"),
        ("status", "status"),
        ("runtime", "runtime"),
        ("loads", "loads"),
        ("max_abs_diff_vs_x86", "max|diff| vs x86"),
        ("top1_agreement_vs_x86", "top-1 vs x86"),
        ("top1_agreement_vs_original", "top-1 vs original"),
        ("x86_top1_agreement_vs_original", "x86 top-1 vs original"),
        ("instructions_per_inference", "guest insn/inference"),
        ("estimated_p50_ms", "estimated p50 ms (estimate)"),
        ("emulated_p50_ms", "emulated p50 ms (not device time)"),
        ("peak_rss_mb", "guest rss MB"),
        ("file_bytes", "file bytes"),
        ("tflite_runtime_2_14", "tflite-runtime 2.14 aarch64"),
    ]


class EmuDevice:
    """An emulated Raspberry-Pi-class board: this machine's runners in an aarch64 Python under qemu."""

    emulated = True

    def __init__(self, spec: str, **_options):
        from pipeline.devices import emulator as emu

        self.profile = emu_profile(spec)
        self.name = f"emu:{self.profile.name}"
        if not emu.is_ready(self.profile.name):
            raise UsageError(f"{self.name} is not set up; run: python -m pipeline device setup {self.name}")
        self.columns = emu_columns()
        self._legacy: dict = {}

    def _guest(
        self, runner_path: Path, model: Path, args: list[str], runtime: str, folder: Path, count: bool, timeout: float
    ) -> tuple[dict, list[int]]:
        """One emulated runner process; with `count`, EMU_SECTIONS timed sections and their counts."""
        from pipeline import runner
        from pipeline.devices import emulator as emu

        counts_file = folder / f"counts-{runtime}.txt"
        # qemu hands its environment to the guest; its size moves the guest's heap and with it the counts.
        prefix = [shutil.which("env") or "/usr/bin/env", "-i", *GUEST_ENV] + emu.python_command(
            self.profile.name,
            count_instructions=count,
            counts_file=counts_file,
            runtime=runtime,
            blocks_file=folder / f"blocks-{runtime}.txt" if count and emu.profile_plugin_path().exists() else None,
            trace_file=folder / TRACE_FILE if count else None,
        )
        if count:
            prefix += [str(GUEST_SECTIONS), str(EMU_SECTIONS)]
        res = runner.run(runner_path, model, args, timeout=timeout, prefix=prefix)
        counts = emu.read_counts(counts_file) if count and counts_file.exists() else []
        return res, counts

    def run(self, request) -> dict:
        timing = request.timing
        count = timing is not None and timing.threads == 1
        with tempfile.TemporaryDirectory(prefix="edge-export-emu-") as tmp:
            folder = Path(tmp)
            x = slice_inputs(request.inputs, request.limit, folder)
            ref, ref_error = x86_reference(request, x)
            emu_timing = timing and dataclasses.replace(timing, runs=EMU_RUNS, min_seconds=0, warmup=EMU_WARMUP)
            args = request.argv(x, folder / "outputs.npz", emu_timing)
            site = by_runner(Path(request.runner).name).site
            res, counts = self._guest(request.runner, request.model, args, site, folder, count, request.timeout)
            post = res.pop("postprocess", None)
            # the last pass's decode + NMS is one more counted section, after its timed inferences
            post_count = counts.pop() if post and count and counts else None
            loaded = "load_ms" in res
            fields = {
                "emulated": True,
                "loads": "yes" if loaded else f"no: {res.get('error', '?')}",
                **agree_fields(res, folder / "outputs.npz", ref, ref_error, request.original),
            }
            if timing:
                fields.update(self._counts(res, counts, timing.threads))
                blocks = folder / f"blocks-{site}.txt"
                if count and fields.get("instructions_per_inference"):
                    fields.update(
                        self._estimate(
                            blocks, fields["inferences_per_section"], request.model, -2 if post_count else -1
                        )
                    )
                if post:
                    fields.update(self._postprocess(post, post_count, blocks, fields.get("estimated_p50_ms")))
            qemu_rss = res.get("peak_rss_mb")
            fields.update(emulated_fields(res))
            fields.update(self._trace_fields(res, folder / TRACE_FILE, fields), qemu_peak_rss_mb=qemu_rss)
            legacy = self._legacy_runner(Path(request.runner))
            if legacy and loaded:
                fields.update(self._legacy_check(legacy, request, x, ref, ref_error, folder, count))
        cond = res.get("conditions")
        if cond:
            cond["cpu"] = f"{self.profile.cpu} (emulated {self.profile.name}, qemu user mode)"
            cond["cpus_available"] = self.profile.cores
        fields["summary"] = self._summary(fields)
        return {**res, "device_fields": fields}

    @staticmethod
    def _trace_fields(res: dict, trace: Path, fields: dict) -> dict:
        """The guest's own peak resident memory (the runner's VmHWM under qemu is qemu's, translated code and
        heap included: kept as qemu_peak_rss_mb for comparison only) and,
        with --profile, the per-op instructions (guest_trace.c, pipeline/op_profile.py)."""
        from pipeline import op_profile
        from pipeline.devices import emulator as emu

        out = {"peak_rss_mb": None, "peak_rss_source": None}
        if not trace.exists():
            if res.get("profile"):
                out["profile_error"] = "no op trace: instructions are counted on 1 thread only"
            return out
        points, peak_kb = emu.read_trace(trace)
        if peak_kb:
            out.update(peak_rss_mb=peak_kb / 1024, peak_rss_source="guest address space (qemu plugin)")
        if res.get("profile") or res.get("profile_error"):
            out.update(
                op_profile.emulated_fields(
                    res,
                    points,
                    fields.get("instructions_per_inference"),
                    fields.get("estimated_p50_ms"),
                    fields.get("instructions_spread"),
                )
            )
        return out

    @staticmethod
    def _counts(res: dict, counts: list[int], threads: int) -> dict:
        if threads != 1:
            return {"instructions_note": "instructions are counted on 1 thread only"}
        runs = (res.get("latency") or {}).get("runs") or EMU_RUNS
        if not res.get("ok") or not counts:
            return {}
        return {
            "instructions_per_inference": round(statistics.median(counts) / runs),
            "instruction_counts": counts,
            "instructions_spread": (max(counts) - min(counts)) / max(min(counts), 1),
            "instruction_sections": len(counts),
            "inferences_per_section": runs,
        }

    def _postprocess(self, post: dict, count: int | None, blocks: Path, estimated_p50_ms: float | None) -> dict:
        """A detector's decode + NMS on the board (runner_common._postprocess): its instructions per image and
        their estimated time (compute only: no tensor sizes to move), and with the row's, end to end."""
        out = {"postprocess_boxes_per_image": post.get("boxes_per_image"), "emulated_postprocess_ms": post["p50_ms"]}
        if not count:
            return out
        est = self._estimate(blocks, post["decodes"], None, -1)
        ms = est.get("estimated_p50_ms")
        out.update(postprocess_instructions=round(count / post["decodes"]), estimated_postprocess_ms=ms)
        if ms is not None and estimated_p50_ms is not None:
            out["estimated_end_to_end_ms"] = estimated_p50_ms + ms
        return out

    def _estimate(self, blocks_file: Path, inferences: int, model: Path | None, section: int = -1) -> dict:
        """Estimated latency on the real board from a counted section's blocks (estimate.py), the last by default."""
        from pipeline.devices import estimate
        from targets.tflite import tensor_bytes

        if not blocks_file.exists():
            return {
                "estimate_note": f"no estimate: the block profiler is not built; run python -m pipeline device "
                f"setup {self.name}"
            }
        try:
            sections = estimate.parse_blocks(blocks_file)
            if len(sections) < -section:
                raise EstimateError("the block profiler wrote no section")
            moved = tensor_bytes(model) if model and Path(model).suffix == ".tflite" else None
            return estimate.estimate(sections[section][1], inferences, self.profile.name, moved_bytes=moved)
        except EstimateError as e:
            return {"estimate_note": f"no estimate: {e}"}

    @staticmethod
    def _legacy_runner(runner_path: Path) -> Path | None:
        from targets import TARGETS

        names = {t.legacy_runner for t in TARGETS.values() if t.runner == runner_path.name and t.legacy_runner}
        return runner_path.with_name(sorted(names)[0]) if names else None

    def _legacy_check(self, legacy: Path, request, x: Path, ref, ref_error, folder: Path, count: bool) -> dict:
        """The same file and samples in tflite-runtime 2.14 aarch64 (its own site: numpy 1.x)."""
        model = Path(request.model)
        st = model.stat()
        key = (str(model), st.st_mtime_ns, st.st_size, x.stat().st_size, request.options)
        if key not in self._legacy:
            out = folder / "legacy.npz"
            timing = request.timing and dataclasses.replace(
                request.timing, threads=1, runs=EMU_RUNS, min_seconds=0, warmup=EMU_WARMUP
            )
            args = ["--inputs", x, "--outputs", out, *request.option_argv(), *(timing.argv() if count else [])]
            res, counts = self._guest(legacy, model, args, by_runner(legacy.name).site, folder, count, request.timeout)
            fields = {"tflite_runtime_2_14": legacy_on_board(res, out, ref, ref_error)}
            runs = (res.get("latency") or {}).get("runs") or EMU_RUNS
            if res.get("ok") and counts:
                fields["tflite_runtime_instructions_per_inference"] = round(statistics.median(counts) / runs)
            self._legacy[key] = fields
        return self._legacy[key]

    @staticmethod
    def _summary(f: dict) -> str:
        parts = [f"loads {f['loads']}"]
        if f.get("instructions_per_inference"):
            parts.append(f"{f['instructions_per_inference']:,} guest instructions/inference (1 thread)")
        parts += vs_x86(f)
        if f.get("estimated_p50_ms") is not None:
            parts.append(
                f"estimated p50 {f['estimated_p50_ms']:.3g} ms on {f['estimate_board']} "
                f"(an estimate, model {f['estimate_model']})"
            )
        if f.get("estimated_postprocess_ms") is not None:
            parts.append(f"decode+NMS estimated {f['estimated_postprocess_ms']:.3g} ms")
        if f.get("emulated_p50_ms") is not None:
            parts.append(f"emulated p50 {f['emulated_p50_ms']:.3g} ms (not device time)")
        if f.get("tflite_runtime_2_14"):
            parts.append(f"tflite-runtime 2.14: {f['tflite_runtime_2_14']}")
        return "; ".join(parts)

    def runtimes(self) -> list[dict]:
        """What the emulated board has installed, per site folder (tflite-runtime has its own, numpy 1.x)."""
        from pipeline.devices import emulator as emu

        out = []
        for site in dict.fromkeys(r.site for r in RUNTIMES.values()):
            proc = subprocess.run(
                emu.python_command(self.profile.name, runtime=site) + ["-c", RUNTIMES_PROBE],
                capture_output=True,
                text=True,
                timeout=300,
            )
            out.append({"site": site, **runtimes_json(proc.stdout, self.name)})
        return out

    def conditions_line(self, rows: list[dict], timing) -> str:
        return (
            f"conditions: {self.name} = {self.profile.description}, emulated by qemu user mode "
            f"(-cpu {self.profile.cpu}) on this machine; batch 1; guest instructions counted over the timed "
            f"section only, 1 thread, median of {EMU_SECTIONS} sections of {EMU_RUNS} inferences after "
            f"{EMU_WARMUP} warm-up runs; emulated times are not device times; agreement: same samples on x86"
        )


def block_profile(
    board: str,
    runner: Path,
    model: Path,
    inputs: Path,
    folder: Path,
    runs: int = 2,
    warmup: int = 1,
    timeout: float = 1800,
    options: tuple[str, ...] = (),
) -> tuple[dict[str, int], int, dict]:
    """Run `runner` on the emulated `board` with the block profiler: (blocks, inferences, runner result).

    One timed section of `runs` inferences after `warmup` untimed ones, one thread, in the same fixed
    guest environment bench uses. `options`: more runner arguments (`--precision default`).
    """
    from pipeline import runner as runner_mod
    from pipeline.devices import emulator as emu
    from pipeline.devices.estimate import parse_blocks

    counts, blocks = Path(folder) / "counts.txt", Path(folder) / "blocks.txt"
    prefix = (
        [shutil.which("env") or "/usr/bin/env", "-i", *GUEST_ENV]
        + emu.python_command(board, count_instructions=True, counts_file=counts, blocks_file=blocks)
        + [str(GUEST_SECTIONS), "1"]
    )
    args = [
        "--inputs",
        str(inputs),
        "--bench",
        "--threads",
        "1",
        "--runs",
        str(runs),
        "--min-seconds",
        "0",
        "--warmup",
        str(warmup),
        *options,
    ]
    res = runner_mod.run(Path(runner), Path(model), args, timeout=timeout, prefix=prefix)
    sections = parse_blocks(blocks) if blocks.exists() else []
    if not res.get("ok") or not sections:
        raise EstimateError(f"emulated run on {board} gave no profile: {res.get('error', 'no section')}")
    return sections[-1][1], (res.get("latency") or {}).get("runs") or runs, res
