"""int8 files on the build machine's CPU and on an AVX2-only one: top-1 agreement with the original under both.

    .venv/bin/python -m benchmarks.int8_cpus [--config C.toml] [--model M] [--data D] [--out benchmarks/results/int8_cpus]

Builds the int8 targets (the digits demo unless a config / model / data is given) twice, with `[ptq] deploy_cpu
= "any"` (the default: 7-bit weights in onnxruntime and OpenVINO) and `"vnni"` (full-range s8 weights, what
every build made before), then runs each int8 file through its runner on the test split here and on an
emulated Haswell (pipeline.isa.AVX2_ONLY: qemu-x86_64 -cpu Haswell, AVX2 without AVX-512 or VNNI), and reports
each file's top-1 agreement with the original model's test outputs (the build's reference) under both kernel
sets, the largest difference between the two, and the manifest's own figure (what the gate used).
Needs Debian's qemu-user (`qemu-x86_64`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import log

ROOT = Path(__file__).resolve().parent.parent
TARGETS = "tflite-int8,onnx-int8,openvino-int8"


def run_file(target, path: Path, x: Path, out: Path, prefix=None) -> np.ndarray:
    from pipeline import runner
    from targets.metrics import load_outputs

    res = runner.run(target.runner_path, path, ["--inputs", x, "--outputs", out], timeout=7200, prefix=prefix)
    if not res["ok"]:
        raise RuntimeError(f"{target.name}: {res['error']}")
    return load_outputs(out)[0]


def measure(args, deploy_cpu: str, out: Path) -> list[dict]:
    import pipeline
    from pipeline.isa import avx2_only
    from targets import TARGETS as REGISTRY

    log(f"build, deploy_cpu = {deploy_cpu}")
    b = pipeline.build(
        args.config,
        targets=TARGETS,
        out=out,
        model=args.model,
        data=args.data,
        overrides={"ptq.deploy_cpu": deploy_cpu, **({"prune.method": "none"} if args.prune_none else {})},
    )
    m, x = b.manifest, b.eval_inputs()
    reference = "train" if "train" in m["stages"] else "original"
    ref = np.load(b.stage_file(reference, "reference_outputs.npz"))
    ref = ref[ref.files[0]]
    rows = []
    for a in m["artifacts"]:
        if a["status"] != "ok" or a["target"] not in TARGETS.split(","):
            continue
        target, path = REGISTRY[a["target"]], out / a["path"]
        here = run_file(target, path, x, out / "here.npz")
        log(f"{a['target']}: on the emulated AVX2-only CPU ({len(here)} samples)")
        avx2 = run_file(target, path, x, out / "avx2.npz", prefix=[*avx2_only(), sys.executable])
        rows.append(
            {
                "model": b.name,
                "deploy_cpu": deploy_cpu,
                "target": a["target"],
                "manifest_top1_agreement": a.get("top1_agreement"),
                "verified_on": (a.get("x86_isa") or {}).get("label"),
                "top1_here": round(float(np.mean(here.argmax(1) == ref.argmax(1))), 4),
                "top1_avx2": round(float(np.mean(avx2.argmax(1) == ref.argmax(1))), 4),
                "max_abs_diff_here_vs_avx2": float(np.abs(here - avx2).max()),
                "chosen": (a.get("ptq") or {}).get("chosen") or a.get("method"),
                "test_samples": len(here),
            }
        )
        log(f"  {rows[-1]}")
    return rows


COLUMNS = [
    ("model", "model"),
    ("deploy_cpu", "deploy_cpu"),
    ("target", "target"),
    ("manifest_top1_agreement", "manifest (gate)"),
    ("verified_on", "verified on"),
    ("top1_here", "top-1 here"),
    ("top1_avx2", "top-1 AVX2-only"),
    ("max_abs_diff_here_vs_avx2", "max |diff| here vs AVX2"),
    ("chosen", "chosen"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--prune-none", action="store_true", help="prune.method = none")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_cpus")
    args = p.parse_args(argv)
    from pipeline.isa import avx2_only, x86_isa
    from pipeline.report import table

    if avx2_only() is None:
        sys.exit("error: qemu-x86_64 not found: apt-get install qemu-user")
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8_cpus_") as tmp:
        for deploy_cpu in ("any", "vnni"):
            rows += measure(args, deploy_cpu, Path(tmp) / deploy_cpu)
    here = x86_isa()
    cmd = "python -m benchmarks.int8_cpus " + " ".join(argv if argv is not None else sys.argv[1:])
    md = "\n".join(
        [
            "# int8 files here and on an AVX2-only CPU",
            "",
            f"`{cmd.strip()}`; here: {here['cpu']} ({here['label']}); AVX2-only: qemu-x86_64 -cpu Haswell "
            "(pipeline.isa.AVX2_ONLY). Top-1 agreement with the original model on the build's test split.",
            "",
            "```",
            table(rows, COLUMNS),
            "```",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"here": here, "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
