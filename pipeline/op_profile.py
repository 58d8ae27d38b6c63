"""Where an inference's time goes, per op: the rows of `bench --profile`.

A runner run with --profile (targets/runners/runner_common._profile) reports its runtime's own profile of a
second session: onnxruntime's profiler trace, OpenVINO's performance counters (benchmark_app -pc), LiteRT's
profiler (libLiteRt.so's CompiledModel, targets/runners/litert_profiler.py). Here each row gets:

- `profile`: per op in run order, {op_type, name, calls, share, ms, instructions} (what applies), `share`
  summing to 1: of the profiled time on this machine, of the guest instructions on an emulated board;
- `profile_by_type`: the same summed per op type, largest share first;
- and over a bench's rows, `profile_compare`: per op type, an int8 file against the fp32 file of the same
  format on the same board, side by side.

On an emulated board the runtime's profiler runs in the guest, where emulated time says nothing about the
board. There the qemu plugin guest_trace.c counts the guest instructions between the clock reads the
profiler makes at each op's start and end, so each op gets instructions; `ms` is then the row's estimated
latency split by those instructions. What the ops do not cover (the runtime's dispatch between ops, the
binding, the copy of inputs and outputs) is one more entry, op_type `(outside ops)`: the row's
instructions per inference less the ops', so the entries add up to the row.

The profiled inferences must do the row's work, and an op's span must hold only its own. Where the two
clock reads come from (onnxruntime's core/framework/session_scope.cc, KernelScope, as its repository has it;
the 1.32 trace measured here, fer mini-Xception under emu:rpi4, has 2 reads a node for its 35 nodes, no
fence events any more, and `mem_*` allocator figures in every node event):

- its constructor reads the clock (`kernel_begin_time_ = profiler.Start()`), then, inside the span,
  formats the node's input shapes and types (`CalculateTotalInputSizes`, a std::stringstream); the
  kernel's `Compute` runs; its destructor formats the output shapes (`CalculateTotalOutputSizes`), builds
  the event's string arguments (sizes, shapes, `thread_scheduling_stats`; in 1.32 ~17 of them, the
  allocator's figures too) and only then reads the clock again (`EndTimeAndRecordEvent`). No pair of
  reads brackets `Compute` alone.
- Measured: a Squeeze node's span is 28,915 guest instructions, 26,410 of them the profiler's; the
  spans of one inference held 9,377,339 where the unprofiled row counts 8,450,874 for the whole
  inference (x1.11), the whole profiled inference 9,777,573 (x1.16).

So guest_trace.c counts a second figure at every point, the runtime's own instructions (OWN): it notes each
block the runner's unprofiled timed inferences executed (in the same process, before the profiled ones)
with the call site its function was called from, and in the profiled inferences leaves out each block not
noted so, with every instruction of a call made from one (the profiler's calls into malloc, std::string,
the clock); calls and returns are the blocks' last instructions. Nothing is scaled or subtracted by a
model: each instruction left out is one the profiler's code executed. The call site matters: onnxruntime
frees a node's name and shape strings after the span, in KernelScope's destructor, through the same
out-of-line std::string destructor it calls unprofiled; by code address alone ~24 frees an inference of
the tiny digits model stayed in (+1.05 % of its row); by call site it comes to -0.10 %.

onnxruntime's ops take their OWN counts: the Squeeze above keeps 2,505. `profile_vs_row` is the check, the
whole profiled inferences' OWN against the row, less 1; `profile_profiler_instructions` what was left out
per inference. Python runner (benchmarks/results/profile_int8.md): fer onnx-fp32 -0.03 % on emu:rpi4 and
+0.02 % on emu:rpi5 (1.32 M left out an inference), onnx-int8 -0.01 % / -0.04 % (1.69 M); the tiny digits
onnx-fp32 -0.18 %, onnx-int8 -0.10 % (its profiled section: 767,214 an inference for a row of 242,966);
one Relu on 16x32x32, whose row is 68,569, +0.4 %. Native runner, fer on emu:rpi4: +0.01 % / -0.00 %, its
ops within 0.3 % of the Python runner's. The Python runner times its profiled inferences in the timed
loop's harness (clock reads, gc paused), so the two compare. OpenVINO's performance
counters only read the clock inside a node's span, and OpenVINO generates code per compiled model (the
profiled session's jit kernels are at addresses the timed inferences never ran), so its ops keep the plain
count (fer openvino-fp32 on emu:rpi4, one run: the profiled inference +0.62 % of the row plain, -0.25 %
OWN); its counts vary from one counted section to the next (the tiny digits files: 1.1 % int8, 5.9 %
fp32) and so does its `profile_vs_row` (+1.1 %, -0.6 % there).

LiteRT's ops keep the plain count too, explicitly (_litert_instructions reads COUNT; its records carry
`xnnpack_block` or `monotonic_spans`, never `spans`, so they never take OWN), in both harnesses. The Python
runner times its row in the Interpreter (libpywrap_litert_common.so) but profiles a CompiledModel of
libLiteRt.so: two builds of TFLite and XNNPACK at other addresses, so OWN, keyed by the code the timed
inferences ran, would leave out the profiled session's kernels whole (fer tflite-fp32 on emu:rpi4: OWN 0 of
the ops' 6,012,441 instructions, the profiled inference 9,487 of 6,251,672). Inside a span LiteRT's profiler
does no more than XNNPACK's clock read after each operator; its own work comes outside the ops, so the
profiled inferences count more than the row and `profile_vs_row` says by how much, all outside the ops
(`profile_note`): fer on the Python runner +3.6 % fp32, +3.3 % int8 on emu:rpi4, +3.7 %, +5.3 % on emu:rpi5
(235,000-239,000 instructions an inference outside the ops against the row's 17,000-19,500); on the native
runner, whose timed session is a CompiledModel too, +3.2 %, +2.9 % on emu:rpi4 (201,000-203,000 against
6,900-9,000): ~194,000 the profiler's in both, the Python runner's ~25,000 more its ctypes binding. The ops
themselves are the same to the instruction in both harnesses (fer tflite-fp32's Convolution 3,430,581 on
emu:rpi4).
"""

from __future__ import annotations

import bisect

OUTSIDE = "(outside ops)"
COUNT, OWN = 4, 5  # a trace point's guest instructions so far: all, and the runtime's own (guest_trace.c)
MAX_GAP = 2000  # guest instructions between one node's end read and the next node's start read, at most
PROFILE_KEYS = ("op_type", "name", "calls", "share", "ms", "instructions", "exec_type")

# An int8 (or fused) op type and the float op it stands for, so int8 and fp32 line up side by side.
FLOAT_OF = {
    "FusedConv": "Conv",
    "FusedGemm": "Gemm",
    "QLinearConv": "Conv",
    "ConvInteger": "Conv",
    "QGemm": "Gemm",
    "MatMulInteger": "MatMul",
    "QLinearMatMul": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "QLinearAdd": "Add",
    "QLinearMul": "Mul",
    "QLinearAveragePool": "AveragePool",
    "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearSigmoid": "Sigmoid",
    "QLinearLeakyRelu": "LeakyRelu",
    "QLinearConcat": "Concat",
    "QLinearSoftmax": "Softmax",
    "NhwcMaxPool": "MaxPool",
    "QuantizeLinear": "(quantize)",
    "DequantizeLinear": "(quantize)",
    "DynamicQuantizeLinear": "(quantize)",
    "FakeQuantize": "(quantize)",
    # LiteRT: the ops TFLite runs itself are named as in the file, XNNPACK's by its operators
    "SOFTMAX": "Softmax",
    "QUANTIZE": "(quantize)",
    "DEQUANTIZE": "(quantize)",
    "Convert": "(quantize)",
}


def _finish(ops: list[dict], key: str) -> list[dict]:
    total = sum(o.get(key) or 0 for o in ops)
    out = []
    for o in ops:
        o = {**o, "share": (o.get(key) or 0) / total if total else 0.0}
        out.append({k: o[k] for k in PROFILE_KEYS if o.get(k) is not None})
    return out


def by_type(ops: list[dict]) -> list[dict]:
    """The profile summed per op type, largest share first."""
    types: dict[str, dict] = {}
    for o in ops:
        t = types.setdefault(o["op_type"], {"op_type": o["op_type"], "calls": 0, "share": 0.0})
        t["calls"] += o.get("calls") or 0
        t["share"] += o["share"]
        for k in ("ms", "instructions"):
            if o.get(k) is not None:
                t[k] = t.get(k, 0) + o[k]
    return sorted(types.values(), key=lambda t: -t["share"])


def local_fields(res: dict) -> dict:
    """A runner's profile on this machine (or a board that times itself): shares of the profiled op time."""
    if not res.get("profile"):
        return {"profile_error": res.get("profile_error")} if res.get("profile_error") else {}
    if not any(o["ms"] for o in res["profile"]):  # LiteRT's profiler counts whole microseconds
        return {"profile_error": "every op took 0 ms: the profiler counts whole microseconds and each op took less"}
    ops = _finish([{k: v for k, v in o.items() if k != "spans"} for o in res["profile"]], "ms")
    return {"profile": ops, "profile_by_type": by_type(ops), "profile_total_ms": res.get("profile_total_ms")}


def _nearest(points: list[list], clock: int, t: int) -> int:
    """Index of the clock read (of `clock`: 2 realtime, 3 monotonic column) nearest to time t."""
    times = [p[clock] for p in points]
    i = bisect.bisect_left(times, t)
    return min((j for j in (i - 1, i) if 0 <= j < len(points)), key=lambda j: abs(times[j] - t))


def _offset(ops: list[dict], reads: list[list]) -> int:
    """How far spans timed from an approximate start are from the clock reads that made them: the shift that
    puts the most span ends on a read (the profiler's timestamps are whole us; emulated reads are >= us apart)."""
    ends = sorted(t for o in ops for span in o["spans"] for t in span)
    times = [r[2] for r in reads]
    sample = ends[:: max(1, len(ends) // 60)]

    def hits(delta):
        n = 0
        for t in sample:
            i = bisect.bisect_left(times, t + delta - 1500)
            n += i < len(times) and times[i] <= t + delta + 1500
        return n

    first = ends[0]
    return max((r - first for r in times if r >= first), key=hits, default=0)


def instructions_per_op(
    ops: list[dict], points: list[list], calls: int, approximate: bool = False
) -> list[dict] | None:
    """Each op's guest instructions per inference from the plugin's trace of the profiled inferences.

    Ops with `spans` (absolute realtime ns of each call, onnxruntime) take the runtime's own instructions
    (OWN: the profiler's work left out) between the clock reads nearest to the span's ends. Ops without
    (OpenVINO: durations, in the compiled graph's run order) take the count between the k-th pair of
    realtime reads of the last inference, if that inference made exactly two per op. LiteRT's (an
    `xnnpack_block` or `monotonic_spans`) take the plain count between its CLOCK_MONOTONIC reads
    (_litert_instructions). None when the trace cannot be aligned with the ops."""
    if any("xnnpack_block" in o or "monotonic_spans" in o for o in ops):
        return _litert_instructions(ops, points)
    reads = [p for p in points if p[0] == "k" and p[1] == 0]  # CLOCK_REALTIME reads
    if not reads:
        return None
    if all(o.get("spans") for o in ops):
        if approximate:  # the native runner's trace start is known only to before the session's creation
            delta = _offset(ops, reads)
            ops = [{**o, "spans": [[a + delta, b + delta] for a, b in o["spans"]]} for o in ops]
        out = []
        for o in ops:
            n = sum(reads[_nearest(reads, 2, b)][OWN] - reads[_nearest(reads, 2, a)][OWN] for a, b in o["spans"])
            out.append({**o, "instructions": n / calls})
        return out
    starts = [i for i, p in enumerate(points) if p[0] == "c"]
    if not starts:
        return None
    last = [p for p in points[starts[-1] :] if p[0] == "k" and p[1] == 0]
    extra = len(last) - 2 * len(ops)  # the request's own start and end reads around the nodes' pairs
    if extra < 0 or extra % 2:
        return None
    pairs = last[extra // 2 : len(last) - extra // 2]
    # Aligned, one node's end read is followed at once by the next node's start read: a small gap.
    gaps = [pairs[2 * k + 2][COUNT] - pairs[2 * k + 1][COUNT] for k in range(len(ops) - 1)]
    if any(g > MAX_GAP for g in gaps):
        return None
    return [{**o, "instructions": pairs[2 * k + 1][COUNT] - pairs[2 * k][COUNT]} for k, o in enumerate(ops)]


def _litert_instructions(ops: list[dict], points: list[list]) -> list[dict] | None:
    """LiteRT's ops in the last inference (targets/runners/litert_profiler.op_records), from its CLOCK_MONOTONIC reads.

    An op TFLite ran itself takes the count between the reads nearest to the ends of its last span. XNNPACK
    reads the clock once before its first operator and once after each, and reports the whole microseconds
    between them: each delegated block is the run of reads whose microseconds best match its operators'. The
    plugin reads the clock just before the guest does, and now and then writes its trace in between, so a read
    can be some us early: a block matches when it misses by at most 1 us an operator plus a quarter of its time.
    None when a block matches nowhere. The plain count (COUNT), not OWN: see the module's docstring."""
    starts = [i for i, p in enumerate(points) if p[0] == "c"]
    reads = [p for p in points[starts[-1] :] if p[0] == "k" and p[1] == 1] if starts else []
    if not reads:
        return None
    out, blocks = [], {}
    for o in ops:
        o = dict(o)
        out.append(o)
        if o.get("monotonic_spans"):
            a, b = o["monotonic_spans"][-1]
            o["instructions"] = reads[_nearest(reads, 3, b)][COUNT] - reads[_nearest(reads, 3, a)][COUNT]
        else:
            blocks.setdefault(o["xnnpack_block"], []).append(o)
    after = 0
    for block in blocks.values():
        n = len(block)

        def miss(j):
            return sum(abs((reads[j + i + 1][3] - reads[j + i][3]) // 1000 - o["last_us"]) for i, o in enumerate(block))

        j = min(range(after, len(reads) - n), key=miss, default=None)
        if j is None or miss(j) > n + sum(o["last_us"] for o in block) / 4:
            return None
        for i, o in enumerate(block):
            o["instructions"] = reads[j + i + 1][COUNT] - reads[j + i][COUNT]
        after = j + n
    return out


def emulated_fields(
    res: dict, points: list[list], row_instructions: int | None, estimated_ms: float | None, spread: float = 0.0
) -> dict:
    """A runner's profile under qemu: each op's guest instructions (guest_trace.c), `(outside ops)` the rest
    of the row's instructions per inference, and each op's share of the estimated latency as `ms`.

    Also the check that the profiled inferences did the row's work: `profile_vs_row`, their instructions
    (the runtime's own where the ops take OWN) against the row's, less 1; `profile_note` when it is more
    than 1 %, or than the row's own `spread` between its counted sections where that is larger (OpenVINO's
    counts vary from section to section: 1.1 % and 5.9 % on the tiny digits model's int8 and fp32 files),
    or when the ops hold more than the row."""
    if not res.get("profile"):
        return {"profile_error": res.get("profile_error") or "the runner made no profile"}
    calls = res.get("profile_calls") or 1
    ops = instructions_per_op(res["profile"], points, calls, bool(res.get("profile_spans_approximate")))
    if ops is None:
        return {"profile_error": "the op trace could not be aligned with the runtime's ops"}
    # onnxruntime's ops take OWN; OpenVINO's and LiteRT's the plain count (the module's docstring says why)
    column = OWN if all(o.get("spans") for o in res["profile"]) else COUNT
    litert = any("xnnpack_block" in o or "monotonic_spans" in o for o in res["profile"])
    end = points[-1] if points and points[-1][0] == "e" else None
    section = end[COUNT] / calls if end else None
    profiled = end[column] / calls if end else None
    total = row_instructions or profiled
    ops = [{k: v for k, v in o.items() if k not in ("spans", "ms")} for o in ops]
    inside = sum(o["instructions"] for o in ops)
    out = {
        "profile_section_instructions": round(section) if section else None,
        "profile_profiler_instructions": round(section - profiled) if end and column == OWN else None,
        "profile_vs_row": profiled / row_instructions - 1 if profiled and row_instructions else None,
    }
    if inside > total:
        out["profile_note"] = f"the profiled ops took {inside / total:.2f}x the row's instructions"
    elif out["profile_vs_row"] is not None and abs(out["profile_vs_row"]) > max(0.01, spread or 0.0):
        out["profile_note"] = f"the profiled inferences counted {out['profile_vs_row']:+.1%} of the row's instructions"
        if litert:  # the profiler's own work is outside the ops (and the Python runner's row an Interpreter)
            out["profile_note"] += (
                f", outside the ops: {profiled - inside:,.0f} an inference in the profiled session (LiteRT's "
                f"CompiledModel, its profiler on) against the row's {total - inside:,.0f}"
            )
    ops.append({"op_type": OUTSIDE, "name": OUTSIDE, "calls": 1, "instructions": max(total - inside, 0)})
    for o in ops:
        o["instructions"] = round(o["instructions"])
    ops = _finish(ops, "instructions")
    scale = estimated_ms / sum(o["instructions"] for o in ops) if estimated_ms is not None else None
    for o in ops:
        if scale is not None:
            o["ms"] = o["instructions"] * scale
    return {**out, "profile": ops, "profile_by_type": by_type(ops)}


def family(target: str) -> str:
    return target.split("-", 1)[0]


def compare(rows: list[dict]) -> list[dict]:
    """Per op type, every profiled int8 row against the fp32 row of the same format, board, harness and threads.

    Op types are taken to their float counterparts (QLinearConv is Conv) so the two files line up."""
    by_key = {}
    for r in rows:
        q = "int8" if str(r.get("quantization")).startswith("int8") else r.get("quantization")
        if r.get("profile_by_type") and q in ("fp32", "int8"):
            key = (family(r["target"]), r["device"], r.get("harness", "python"), r["threads"], r.get("runner"))
            by_key.setdefault(key, {})[q] = r
    out = []
    for (fam, device, harness, threads, _), pair in by_key.items():
        if len(pair) < 2:
            continue
        f, q = pair["fp32"], pair["int8"]
        unit = "instructions" if f["profile_by_type"][0].get("instructions") is not None else "ms"
        types: dict[str, dict] = {}
        for side, row in (("fp32", f), ("int8", q)):
            for t in row["profile_by_type"]:
                name = FLOAT_OF.get(t["op_type"], t["op_type"])
                e = types.setdefault(name, {"op_type": name, "fp32": 0.0, "int8": 0.0})
                e[side] += t.get(unit) or 0
        for e in types.values():
            e["ratio"] = e["int8"] / e["fp32"] if e["fp32"] else None
            e["delta"] = e["int8"] - e["fp32"]
        out.append(
            {
                "format": fam,
                "device": device,
                "harness": harness,
                "threads": threads,
                "fp32_target": f["target"],
                "int8_target": q["target"],
                "unit": unit,
                "fp32_total": sum(e["fp32"] for e in types.values()),
                "int8_total": sum(e["int8"] for e in types.values()),
                "op_types": sorted(types.values(), key=lambda e: -abs(e["delta"])),
            }
        )
    return out


def _num(v, unit):
    if v is None:
        return "-"
    return f"{v:,.0f}" if unit == "instructions" else f"{v:.4g}"


def compare_table(comparisons: list[dict]) -> str:
    """The int8-against-fp32 comparison as text: one block per format and board, op types by |int8 - fp32|."""
    blocks = []
    for c in comparisons:
        unit = c["unit"] if c["unit"] == "instructions" else "ms"
        head = (
            f"{c['int8_target']} against {c['fp32_target']} on {c['device']} ({c['harness']}, {c['threads']} thr), "
            f"{unit} per inference: total {_num(c['fp32_total'], unit)} -> {_num(c['int8_total'], unit)}"
        )
        lines = [head, f"  {'op type':<24} {'fp32':>14} {'int8':>14} {'int8/fp32':>10}"]
        for e in c["op_types"]:
            ratio = f"{e['ratio']:.2f}x" if e["ratio"] is not None else "new"
            lines.append(f"  {e['op_type']:<24} {_num(e['fp32'], unit):>14} {_num(e['int8'], unit):>14} {ratio:>10}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def profile_table(rows: list[dict], top: int = 5) -> str:
    """Each profiled row's op types with their shares (the top `top`), one line per row."""
    lines = []
    for r in rows:
        if r.get("profile_by_type"):
            types = ", ".join(f"{t['op_type']} {t['share']:.0%}" for t in r["profile_by_type"][:top])
            lines.append(f"profile {r['target']} on {r['device']} ({r.get('harness', 'python')}): {types}")
        elif r.get("profile_error"):
            lines.append(f"profile {r['target']} on {r['device']}: none ({r['profile_error']})")
    return "\n".join(lines)
