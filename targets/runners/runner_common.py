"""What every runner shares: arguments, input quantization, the timing loop, statistics, JSON.

Runners are copied to boards and run under qemu, so this file needs only the standard library
and numpy, and must never import the `pipeline` package or TensorFlow.

Protocol: `python run_X.py MODEL [--inputs X.npy] [--outputs Y.npz] [--bench ...]` prints exactly
one JSON object on the last line of stdout and exits 0 if `ok` is true, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import sys
import time
import traceback

import numpy as np

# Markers for the qemu instruction-count plugin: lseek on fd -1 fails harmlessly (EBADF) but
# the plugin sees the offset and counts guest instructions only between START and STOP.
QEMU_MARK_START = 0x51454D55
QEMU_MARK_STOP = 0x51454D56


def _mark(offset: int) -> None:
    try:
        os.lseek(-1, offset, 0)
    except OSError:
        pass


@contextlib.contextmanager
def _gc_paused():
    """Python's garbage collector off inside a timed or counted window (as timeit does): a collection pause is
    the harness's cost, not the runtime's."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def stats_ms(samples_s) -> dict:
    """Latency statistics in milliseconds from per-inference durations in seconds.

    Percentiles interpolate linearly between samples (numpy's default); std is the population
    standard deviation. Throughput is sequential batch-1 inferences per second, 1000 / mean.
    """
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timing samples")
    mean = float(ms.mean())
    return {
        "min_ms": float(ms.min()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "max_ms": float(ms.max()),
        "throughput_per_s": 1e3 / mean if mean > 0 else None,
        "runs": int(ms.size),
    }


def quantize(x: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    """Float samples to the artifact's integer input type (round half to even, as TFLite does)."""
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (y.astype(np.float32) - zero_point) * scale


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":")[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conditions(threads: int) -> dict:
    """What a latency figure depends on besides the model, recorded with every result."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return {
        "threads": threads,
        "batch": 1,
        "cpu": cpu_model(),
        "cpus_available": cpus,
        # Other load on the machine skews every figure; recorded so a noisy run can be spotted.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started, in MiB.

    Not getrusage's ru_maxrss: Linux carries the parent's high-water mark over fork and exec, so
    a runner started from a process holding TensorFlow would report TensorFlow's memory.
    /proc/self/status VmHWM belongs to the runner's own address space.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv, runtime_options: dict) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Load an artifact, run it, print one JSON result.")
    p.add_argument("model")
    p.add_argument(
        "--inputs",
        help=".npy of float samples (N, ...) in the model's input layout, or for a model "
        "with several inputs an .npz with one array per input name (entry i of each is call i)",
    )
    p.add_argument("--outputs", help="write float outputs of every sample to this .npz (output_0, ...)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N samples")
    p.add_argument("--bench", action="store_true", help="time inferences (batch 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10, help="untimed inferences after the first one")
    p.add_argument("--runs", type=int, default=100, help="at least this many timed inferences")
    p.add_argument("--min-seconds", type=float, default=1.0, help="and at least this long")
    p.add_argument(
        "--detect",
        metavar="OUTPUT,LAYOUT,CONF,IOU,MAX_DET",
        help="with --bench, then time decode + NMS (targets/detect.py) of that YOLO head output on the samples",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, run the samples again in a second session under the runtime's own op profiler",
    )
    for name, help_text in runtime_options.items():
        p.add_argument(f"--{name}", default=None, help=help_text)
    return p.parse_args(argv)


def main(runtime, argv=None) -> int:
    """`runtime` is a module-like object with NAME, OPTIONS, version(), load(), describe(), infer(),
    and optionally prepare(session, x) -> what infer() takes: a runtime's own input object (e.g. a
    tensor bound to the numpy array), made before timing so per-call conversion is not timed.

    The --profile hook, optional: load() honours `args.profiling` (turn the runtime's profiler on) and
    profile(session, calls) returns the op records of the `calls` inferences the session ran (see _profile);
    profile_start(session), if there, starts the profiler after the session's first (setup) inference."""
    args = parse_args(sys.argv[1:] if argv is None else argv, getattr(runtime, "OPTIONS", {}))
    result = {"ok": False, "runtime": runtime.NAME, "model": args.model}
    try:
        if args.bench and not args.inputs:
            raise ValueError("--bench needs --inputs: latency is measured on real samples")
        result["runtime_version"] = runtime.version()
        t0 = time.perf_counter()
        session = runtime.load(args.model, args)
        result["load_ms"] = (time.perf_counter() - t0) * 1e3
        desc = runtime.describe(session)
        result.update(desc)
        result["conditions"] = conditions(args.threads)
        if "delegate" in desc:
            result["conditions"]["delegate"] = desc["delegate"]
        if args.inputs:
            x = load_inputs(args.inputs, desc["inputs"])
            if args.limit:
                x = [a[: args.limit] for a in x]
            if len(x[0]) == 0:
                raise ValueError(f"{args.inputs} holds no samples")
            result["input"] = {
                "file": os.path.basename(args.inputs),
                "samples": int(len(x[0])),
                "sample_shape": list(x[0].shape[1:]) if len(x) == 1 else [list(a.shape[1:]) for a in x],
                "dtype": str(x[0].dtype) if len(x) == 1 else [str(a.dtype) for a in x],
            }
            if args.outputs:
                _predict(runtime, session, desc, x, args.outputs, result)
            if args.bench:
                _bench(runtime, session, desc, x, args, result)
            if args.bench and args.detect:
                try:
                    _postprocess(runtime, session, desc, x, args, result)
                except Exception as e:  # boxes that cannot be decoded must not cost the row its timing
                    result["postprocess_error"] = f"{type(e).__name__}: {e}".strip()
            if args.profile:
                result["peak_rss_mb"] = peak_rss_mb()  # the row's memory: before the second, profiled session
                try:
                    _profile(runtime, desc, x, args, result)
                except Exception as e:  # a profile that cannot be made must not cost the row its timing
                    result["profile_error"] = f"{type(e).__name__}: {e}".strip()
        result["ok"] = True
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}".strip()
        result["traceback"] = traceback.format_exc(limit=3)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


QEMU_MARK_PROFILE_START = 0x51454D57
QEMU_MARK_PROFILE_STOP = 0x51454D58
QEMU_MARK_PROFILE_CALL = 0x51454D59
PROFILE_CALLS = 100
PROFILE_CALLS_COUNTED = 10  # under an instruction counter (emulated: EDGE_EXPORT_NO_OWN_TIMER) counts are exact


def _profile(runtime, desc, x, args, result):
    """The samples again in a second session with the runtime's profiler on (the timed session runs without it):
    `profile`, per op in run order, {op_type, name, calls, ms, ...} per inference, and `profile_total_ms`.

    Under qemu the profiled inferences are marked (QEMU_MARK_PROFILE_*) for the op trace of the plugin, and
    each op record keeps its `spans` (CLOCK_MONOTONIC ns) when the runtime reports when an op ran."""
    hook = getattr(runtime, "profile", None)
    if hook is None:
        result["profile_error"] = f"{runtime.NAME}: the runner has no op profiler"
        return
    # An empty marked section first: the plugin's guest memory stops at the first profile start marker, and
    # the row's memory is the timed session's, not this second session's too.
    _mark(QEMU_MARK_PROFILE_START)
    _mark(QEMU_MARK_PROFILE_STOP)
    args.profiling = True
    session = runtime.load(args.model, args)
    feeds = _prepare(runtime, session, runtime.describe(session), x)
    counted = os.environ.get("EDGE_EXPORT_NO_OWN_TIMER")
    calls = max(1, min(PROFILE_CALLS_COUNTED if counted else PROFILE_CALLS, args.runs))
    runtime.infer(session, feeds[0])  # first call: allocations and one-time setup, as before timing
    if hasattr(runtime, "profile_start"):  # a profiler that records from a call on (LiteRT's)
        runtime.profile_start(session)
    result["profile_clock_ns"] = time.monotonic_ns()
    # The timed loop's harness (clock reads around each call, gc paused), so that under qemu the profiled
    # inferences' instructions compare with the row's (op_profile's profile_vs_row). Only the last call is
    # marked: a mark is a failing syscall, and the OSError costs ~2,900 guest instructions of Python.
    clock, infer, n = time.perf_counter, runtime.infer, len(feeds)
    spent = []
    with _gc_paused():
        _mark(QEMU_MARK_PROFILE_START)
        for i in range(calls):
            if i == calls - 1:
                _mark(QEMU_MARK_PROFILE_CALL)
            t = clock()
            infer(session, feeds[i % n])
            spent.append(clock() - t)
        _mark(QEMU_MARK_PROFILE_STOP)
    ops = hook(session, calls)
    held = [o.pop("arena_bytes") for o in ops if o.get("arena_bytes") is not None]
    if held:  # the runtime's own figure for its arena, where its profiler reports one (onnxruntime)
        result["arena_bytes"] = max(held)
    result["profile"] = ops
    result["profile_calls"] = calls
    result["profile_total_ms"] = sum(o["ms"] for o in ops)


def load_inputs(path: str, inputs: list[dict]) -> list[np.ndarray]:
    """One array of samples per model input, in the model's input order: an .npy for a single input, an
    .npz with an array per input name (or, unnamed, in order) for several."""
    if not path.endswith(".npz"):
        return [np.load(path, allow_pickle=False)]
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    names = [i["name"] for i in inputs]
    if set(names) <= arrays.keys():
        x = [arrays[n] for n in names]
    elif len(arrays) == len(names):
        x = list(arrays.values())
    else:
        raise ValueError(f"{path} holds {sorted(arrays)} but the model's inputs are {names}")
    if len({len(a) for a in x}) > 1:
        raise ValueError(f"{path}: the arrays hold different numbers of samples {[len(a) for a in x]}")
    return x


def one_call(sample: np.ndarray, inp: dict) -> np.ndarray:
    """Entry i of an input's samples as the model takes it: with a batch dimension of 1 added when the
    model's input has one more dimension than the entry, in the input's own type (quantized for int8)."""
    rank = len(inp["shape"]) if "shape" in inp else sample.ndim + 1
    s = sample[None] if sample.ndim < rank else sample
    if inp["dtype"] in ("int8", "uint8", "int16") and inp.get("scale"):
        return quantize(s.astype(np.float32), inp["dtype"], inp["scale"], inp["zero_point"])
    return np.ascontiguousarray(s.astype(inp["dtype"] if inp["dtype"] in ("int32", "int64", "float16") else np.float32))


def _prepare(runtime, session, desc, x):
    """Per-sample feeds in the artifact's own input types, made before any timing: an array for a model with
    one input, a list of arrays (one per input) for several."""
    native = getattr(runtime, "prepare", None)
    x = [x] if isinstance(x, np.ndarray) else x  # one input's samples, or a list of one array per input
    feeds = []
    for i in range(len(x[0])):
        s = [one_call(a[i], inp) for a, inp in zip(x, desc["inputs"])]
        s = s[0] if len(s) == 1 else s
        feeds.append(native(session, s) if native else s)
    return feeds


def _float_outputs(desc, outs):
    res = []
    for o, det in zip(outs, desc["outputs"]):
        if det["dtype"] in ("int8", "uint8", "int16") and det.get("scale"):
            o = dequantize(o, det["scale"], det["zero_point"])
        res.append(np.array(o, dtype=np.float32))  # a copy: a runtime may hand out its own buffers
    return res


def _predict(runtime, session, desc, x, path, result):
    feeds = _prepare(runtime, session, desc, x)
    outs = [_float_outputs(desc, runtime.infer(session, f)) for f in feeds]
    arrays = {f"output_{i}": np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))}
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    result["predicted"] = len(feeds)


def _bench(runtime, session, desc, x, args, result):
    """First inference, warm-up, then at least `runs` timed inferences lasting at least `min_seconds`.

    Each inference is timed alone (batch 1), cycling through the real samples so caches see
    varied data as in use. Inputs are quantized before timing; outputs are fetched inside it,
    as an application must. Python's garbage collector is paused while timing (as timeit does):
    a collection pause is the harness's cost, not the runtime's.

    `latency` is wall time around each call, as a Python application sees it, for every runtime.
    A runtime with its own timer (own_latency_ms) also gets `runtime_latency`: the same inferences
    without the Python binding, comparable to the runtime's C++ tools.
    """
    feeds = _prepare(runtime, session, desc, x)
    t0 = time.perf_counter()
    runtime.infer(session, feeds[0])
    result["first_inference_ms"] = (time.perf_counter() - t0) * 1e3
    for i in range(args.warmup):
        runtime.infer(session, feeds[(i + 1) % len(feeds)])
    n, runs, min_seconds = len(feeds), args.runs, args.min_seconds
    # Locals, not attribute lookups, inside the timed window: a model can take 2 us.
    clock, infer = time.perf_counter, runtime.infer
    samples, own_samples = [], []
    record = samples.append
    # A runtime's own per-inference timer (OpenVINO's, which benchmark_app reports), read after ours stops;
    # not under an instruction counter (emulated boards set EDGE_EXPORT_NO_OWN_TIMER), which counts it too.
    own = None if os.environ.get("EDGE_EXPORT_NO_OWN_TIMER") else getattr(runtime, "own_latency_ms", None)
    record_own = own_samples.append
    with _gc_paused():
        start = clock()
        _mark(QEMU_MARK_START)
        i = 0
        while i < runs or clock() - start < min_seconds:
            x = feeds[i % n]
            t = clock()
            infer(session, x)
            record(clock() - t)
            if own:
                record_own(own() * 1e-3)
            i += 1
        _mark(QEMU_MARK_STOP)
    result["latency"] = stats_ms(samples)
    if own_samples:
        result["runtime_latency"] = stats_ms(own_samples)
    result["warmup"] = args.warmup
    result["input_samples"] = n


POSTPROCESS_IMAGES = 10  # the first held-out samples' outputs: real boxes, few inferences under qemu


def _detect_module():
    """targets/detect.py (numpy only), loaded by its path: the folder above the runners, here and on a board
    (pipeline/devices/ssh.py copies it there too). Never `import targets`: that is the pipeline's package."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "detect.py")
    spec = importlib.util.spec_from_file_location("edge_export_detect", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _postprocess(runtime, session, desc, x, args, result):
    """What an application does with a detector's output after the inference: decode + class-aware NMS of the
    head (`--detect OUTPUT,LAYOUT,CONF,IOU,MAX_DET`) on the outputs of the first POSTPROCESS_IMAGES samples, each
    decode timed alone, cycling through them like _bench: `postprocess` {p50_ms, ...} per image.

    Under an instruction counter (EDGE_EXPORT_NO_OWN_TIMER) each image is decoded once, in one marked section
    after the timed inferences: the emulated board reads its count and blocks as the section's."""
    detect = _detect_module()
    index, layout, conf, iou, max_det = args.detect.split(",")
    feeds = _prepare(runtime, session, desc, [a[:POSTPROCESS_IMAGES] for a in x])
    heads = [_float_outputs(desc, runtime.infer(session, f))[int(index)] for f in feeds]

    def decode(head):
        return detect.decode(head, layout, float(conf), float(iou), int(max_det))

    boxes = [len(decode(h)[0][0]) for h in heads]  # also the warm-up
    counted = os.environ.get("EDGE_EXPORT_NO_OWN_TIMER")
    decodes = len(heads) if counted else max(args.runs, len(heads))
    clock, samples = time.perf_counter, []
    with _gc_paused():
        _mark(QEMU_MARK_START)
        for i in range(decodes):
            t = clock()
            decode(heads[i % len(heads)])
            samples.append(clock() - t)
        _mark(QEMU_MARK_STOP)
    result["postprocess"] = {
        "what": f"decode + NMS of a {layout} head (targets/detect.py, numpy {np.__version__})",
        "p50_ms": stats_ms(samples)["p50_ms"],
        "decodes": decodes,
        "images": len(heads),
        "boxes_per_image": float(np.mean(boxes)),
    }
