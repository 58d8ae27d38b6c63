"""`release`: a finished build's verified artifacts as reproducible archives, with checksums, a model
card and benchmarks. `verify` (release/verify.py) checks such a release on any machine.

    DIST/<model>-<version>/
      <model>-<version>-<target>.tar.gz  one folder <model>-<version>-<target>/ holding the artifact
                                         file(s), labels.txt, release.json (checksums of the other
                                         members, I/O, tolerance) and test_vectors/ (inputs.npy and
                                         output_<i>.npy: what THIS artifact answered, in its runtime)
      manifest.json                      the build manifest plus a `release` section
      MODEL_CARD.md  BENCHMARKS.md
      SHA256SUMS                         `sha256sum -c SHA256SUMS` checks every other file

The bytes depend only on the build, the version, --bench and SOURCE_DATE_EPOCH: archive entries
are sorted, dated SOURCE_DATE_EPOCH (else 0), owned by uid/gid 0 with no user names, with fixed
modes; the gzip header has no time and no file name; no wall-clock time is written anywhere.
Everything is written to a temp folder that is renamed into place: never a half-written release.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pipeline.errors import RunnerError, UsageError, VerificationError
from pipeline.releases import FLOAT_ATOL, INT_STEPS, VECTORS
from pipeline.releases.card import benchmarks_md, model_card
from pipeline.verdict import Status

VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.-]+)?$")
RELEASE_JSON = "release.json"


def make_release(
    manifest: dict,
    out: Path,
    targets,
    version: str,
    dist: Path,
    bench: list[dict] | None,
    allowed: set[str],
    force: bool = False,
    bundles=(),
) -> tuple[Path, list[dict], list[dict]]:
    """Write DIST/<model>-<version>/ from a build's manifest. Returns (folder, archives, excluded).

    `bench`: rows of `bench --json` (None: not benchmarked); given, it must measure a released target.
    `bundles`: architectures (x86_64, aarch64) to also pack each target for with the native runner."""

    if not VERSION_RE.match(version):
        raise UsageError(f"--version must look like X.Y.Z (e.g. 1.2.0 or 1.2.0-rc.1), not '{version}'")
    epoch = source_date_epoch()
    data = usable(manifest, out, targets)
    if data is None:
        raise VerificationError(f"the build in {out} does not match its manifest: build it again")
    rows = {a["target"]: a for a in manifest["artifacts"]}
    ship, excluded = select(targets, rows, allowed)
    given, bench = bench is not None, [r for r in bench or [] if r.get("target") in {t.name for t in ship}]
    if given and not bench:
        raise UsageError(f"the bench rows given have none for the targets released ({', '.join(t.name for t in ship)})")
    memory = memory_rows(bench)
    bench = timed(bench)
    name = f"{manifest['model']}-{version}"
    final = Path(dist) / name
    if final.exists() and not force:
        raise UsageError(
            f"{final} exists: a published version is never replaced; use a new version, or --force to replace it"
        )
    tmp = Path(dist) / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        archives = [
            package(t, rows[t.name], out, data, manifest, version, tmp, epoch, bundles, memory.get(t.name, []))
            for t in ship
        ]
        write_release_files(tmp, manifest, version, epoch, archives, excluded, bench, memory)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, archives, excluded


def source_date_epoch() -> int:
    """The one timestamp in the archives (reproducible-builds.org convention), 0 when unset."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not raw.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not '{raw}'")
    return int(raw)


# -- the build -------------------------------------------------------------------------------------


def usable(manifest: dict | None, out: Path, targets):
    """The data stage's cache entry if the manifest covers every target with files that match it, else None."""
    from pipeline.cache import Cache
    from pipeline.util import sha256_file

    if manifest is None:
        return None
    rows = {a["target"]: a for a in manifest["artifacts"]}
    for t in targets:
        row = rows.get(t.name)
        if row is None:
            return None
        # A failed build has no file: that is a result (release refuses it), not something missing.
        if row["status"] == Status.FAILED_BUILD:
            continue
        # The manifest's sha256 is of the artifact's files one after the other (build.publish).
        paths = [(out / row["path"]).parent / f for f in t.files]
        if not all(p.is_file() for p in paths) or sha256_file(*paths) != row["sha256"]:
            return None
    return Cache(out / ".cache").get("data", manifest["stages"]["data"]["key"])


def select(targets, rows: dict, allowed: set[str]):
    """(targets to ship, excluded rows): a failed target stops the release unless --allow-failed names it.

    Failed means failed to build or verify, or failed on a board `build --verify-on` checked it on."""
    failed = [f for f in (_failure(rows[t.name]) for t in targets) if f]
    refused = [a for a in failed if a["target"] not in allowed]
    if refused:
        why = "; ".join(f"{a['target']} {a['status'].replace('_', ' ')}: {a['reason']}" for a in refused)
        flags = " ".join(f"--allow-failed {a['target']}" for a in refused)
        raise VerificationError(f"not releasing: {why} (pass {flags} to release the others without it)")
    out = {a["target"] for a in failed}
    ship = [t for t in targets if t.name not in out]
    if not ship:
        raise VerificationError("nothing to release: every requested target failed")
    return ship, failed


def _failure(row: dict) -> dict | None:
    if row["status"] != Status.OK:
        return {"target": row["target"], "status": row["status"], "reason": row.get("reason", "")}
    bad = {d: c for d, c in (row.get("arm_check") or {}).items() if c.get("status") != Status.OK}
    if bad:
        return {
            "target": row["target"],
            "status": Status.FAILED_ARM_CHECK,
            "reason": "; ".join(f"on {d}: {c.get('reason') or c.get('status')}" for d, c in bad.items()),
        }
    return None


def pick_vectors(y, n: int) -> list[int]:
    """Indices into the held-out split of `n` samples: the first of each class (if labelled), then the next ones."""
    import numpy as np

    first = np.unique(y, return_index=True)[1] if y is not None else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(n), first)
    return sorted(int(i) for i in np.concatenate([first, rest])[:VECTORS])


def tolerance(outputs: list[dict]) -> list[dict]:
    """How far a replay of each output may be from the recorded one (see FLOAT_ATOL and INT_STEPS)."""
    tol = []
    for i, o in enumerate(outputs):
        named = {"name": o["name"]} if o.get("name") else {}  # the artifact's own output, in the original's order
        if "int" in str(o.get("dtype", "")) and o.get("scale"):
            tol.append(
                {
                    "output": f"output_{i}",
                    "max_abs_diff": INT_STEPS * o["scale"],
                    "rule": f"one quantization step of the {o['dtype']} output (scale {o['scale']:.6g})",
                    **named,
                }
            )
        else:
            tol.append({"output": f"output_{i}", "max_abs_diff": FLOAT_ATOL, "rule": "float output, absolute", **named})
    return tol


def package(
    target, row: dict, out: Path, data, manifest: dict, version: str, dist: Path, epoch: int, bundles=(), memory=()
) -> dict:
    """Run the artifact on the test vectors in its runtime and write its archive into `dist`. `memory`: the
    target's measured memory per board (memory_rows), recorded in its release.json."""
    import json
    import tempfile

    import numpy as np

    from pipeline import runner
    from pipeline.util import sha256_file

    main = out / row["path"]
    files = {f: main.parent / f for f in target.files}
    from pipeline.graph import _first, _load_array
    from pipeline.interface import to_artifact

    x = _load_array(data, "x_test")
    y = np.load(data.file("y_test.npy"), allow_pickle=False) if data.file("y_test.npy").exists() else None
    idx = pick_vectors(y, len(_first(x)))
    if isinstance(x, dict):  # several inputs: one array per input name, taken as they are
        x = {k: v[idx] for k, v in x.items()}
        vector_file, x_bytes = "test_vectors/inputs.npz", npz_bytes(x)
    else:
        x = to_artifact(x[idx].astype(np.float32), (row.get("input_perms") or [None])[0])
        vector_file, x_bytes = "test_vectors/inputs.npy", npy_bytes(x)
    with tempfile.TemporaryDirectory() as work:
        inputs, outputs = Path(work) / Path(vector_file).name, Path(work) / "outputs.npz"
        inputs.write_bytes(x_bytes)
        res = runner.run(target.runner_path, main, ["--inputs", inputs, "--outputs", outputs, "--threads", "1"])
        if not res["ok"]:
            raise RunnerError(
                f"{target.name}: cannot make test vectors: {res.get('runtime', 'runtime')}: {res['error']}"
            )
        with np.load(outputs, allow_pickle=False) as z:
            expected = {k: z[k] for k in sorted(z.files)}
    tol = tolerance(res.get("outputs") or [])
    if {t["output"] for t in tol} != set(expected):
        raise RunnerError(
            f"{target.name}: the runner described outputs {[t['output'] for t in tol]} but wrote {sorted(expected)}"
        )
    # Every array as .npy: an .npz is a zip whose entries carry the time it was written.
    files[vector_file] = x_bytes
    for k, v in expected.items():
        files[f"test_vectors/{k}.npy"] = npy_bytes(v)
    files["labels.txt"] = "".join(f"{label}\n" for label in manifest["labels"]).encode()
    digests = {rel: sha256_file(src) if isinstance(src, Path) else _sha256(src) for rel, src in files.items()}
    meta = {
        "model": manifest["model"],
        "model_version": manifest["model_version"],
        "release": version,
        "config_hash": manifest["config_hash"],
        "target": target.name,
        "family": target.family,
        "artifact": target.filename,
        "quantization": row["quantization"],
        "files": digests,
        "inputs": row.get("inputs"),
        "outputs": row.get("outputs"),
        "preprocessing": manifest["preprocessing"],
        "input_layout": row.get("input_layout"),
        "run_config": row.get("run_config") or {},
        "runner": target.runner,
        "runtime": f"{res.get('runtime')} {res.get('runtime_version')}",
        "threads": 1,
        "made_from": row.get("made_from"),
        "method": row.get("method"),
        "versus_original_model": {
            k: row.get(k)
            for k in (
                "accuracy",
                "reference_accuracy",
                "top1_agreement",
                "cosine",
                "max_abs_diff",
                "worst_head",
                "heads",
            )
            if row.get(k) is not None
        },
        "data": {k: manifest["preprocessing"].get(k) for k in ("source", "samples", "calibration_samples", "labelled")},
        "test_vectors": {
            "inputs": vector_file,
            "about": "float32 held-out samples, preprocessed, in the artifact's input layout (input_layout); the runner quantizes "
            "them for an integer input; outputs are float32 (integer outputs dequantized)",
            "held_out_indices": idx,
            "true_labels": None if y is None else [int(v) for v in y[idx]],
            "tolerance": tol,
        },
        "memory": list(memory),
    }
    files[RELEASE_JSON] = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    top = f"{manifest['model']}-{version}-{target.name}"
    archive = dist / f"{top}.tar.gz"
    write_archive(archive, top, files, epoch)
    return {
        "target": target.name,
        "archive": archive.name,
        "bytes": archive.stat().st_size,
        "sha256": sha256_file(archive),
        "vectors": len(idx),
        "runtime": meta["runtime"],
        "files": sorted(files),
        "tolerance": meta["test_vectors"]["tolerance"],
        "bundles": [write_bundle(target, files, meta, top, arch, dist, epoch) for arch in bundles],
    }


def write_bundle(target, files: dict, meta: dict, top: str, arch: str, dist: Path, epoch: int) -> dict:
    """<top>-linux-<arch>.tar.gz: the target's archive plus the native runner, the runtime's libraries for
    `arch` and a run.sh that benchmarks the artifact and replays its test vectors on a board with no Python."""
    import json
    import shlex

    from pipeline import native
    from pipeline.util import sha256_file

    rt = native.runtime_for(target.runner)
    tol = ",".join(f"{t['max_abs_diff']:.9g}" for t in meta["test_vectors"]["tolerance"])
    argv = native.command(rt, arch, lib=f"lib/{native.library(rt, arch).name}", exe="./edge_bench") + [
        target.filename,
        "--inputs",
        meta["test_vectors"]["inputs"],  # .npy, or .npz for a model with several inputs
        "--expect",
        "test_vectors",
        "--atol",
        tol,
        "--bench",
    ]
    run_sh = (
        f"#!/bin/sh\n# {target.name} on linux-{arch} with no Python: benchmark it, replay its test vectors\n"
        "# (exit 0 only if every output is within tolerance); one JSON line. Extra options go to edge_bench\n"
        "# (--threads N, --runs N, --min-seconds S, --outputs Y.npz). EDGE_BENCH_WRAPPER: e.g. qemu.\n"
        'case $0 in */*) cd "${0%/*}" || exit 2;; esac\n'  # the bundle's folder, with no tool but sh
        f'exec $EDGE_BENCH_WRAPPER {shlex.join(argv)} "$@"\n'
    )
    out = {
        **{k: v for k, v in files.items() if k != RELEASE_JSON},
        **native.bundle_files(rt, arch),
        "run.sh": run_sh.encode(),
    }
    digests = {rel: sha256_file(src) if isinstance(src, Path) else _sha256(src) for rel, src in out.items()}
    out[RELEASE_JSON] = (
        json.dumps(
            {
                **meta,
                "files": digests,
                "bundle": {
                    "arch": arch,
                    "run": "sh run.sh",
                    "runtime_library": f"lib/{native.library(rt, arch).name}",
                    "glibc": ".".join(map(str, native.BUNDLE_GLIBC[arch])),
                },
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    ).encode()
    name = f"{top}-linux-{arch}"
    path = dist / f"{name}.tar.gz"
    write_archive(path, name, out, epoch, executables=("edge_bench", "run.sh"))
    return {"arch": arch, "archive": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def npy_bytes(a) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict) -> bytes:
    """An .npz as np.load reads it, without the clock time np.savez puts on each entry: reproducible bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, npy_bytes(arrays[name]))
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def write_archive(path: Path, top: str, files: dict, mtime: int, executables=()) -> None:
    """A .tar.gz of `files` ({name under top/: Path or bytes}) whose bytes depend only on them and `mtime`;
    the members named in `executables` get mode 755."""
    import gzip
    import io
    import tarfile

    dirs = {top} | {f"{top}/{parent}" for rel in files for parent in _parents(rel)}
    entries = sorted(
        [(d, None) for d in dirs] + [(f"{top}/{rel}", src) for rel, src in files.items()], key=lambda e: e[0]
    )
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, src in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if src is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            data = src.read_bytes() if isinstance(src, Path) else src
            info.size, info.mode = len(data), 0o755 if name[len(top) + 1 :] in executables else 0o644
            tar.addfile(info, io.BytesIO(data))


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


# -- the release folder --------------------------------------------------------------------------


def write_release_files(
    folder: Path,
    manifest: dict,
    version: str,
    epoch: int,
    archives: list[dict],
    excluded: list[dict],
    bench: list[dict],
    memory: dict | None = None,
) -> None:
    from pipeline.util import atomic_write_bytes, atomic_write_json

    shipped = {a["target"] for a in archives} | {e["target"] for e in excluded}
    # `started`/`finished` and each stage's `reused` describe the last `build` run, not the artifacts:
    # re-running a fully cached build changes them, and must not change the release.
    manifest = {k: v for k, v in manifest.items() if k not in ("started", "finished")}
    manifest["stages"] = {n: {k: v for k, v in s.items() if k != "reused"} for n, s in manifest["stages"].items()}
    release = {
        "version": version,
        "source_date_epoch": epoch,
        "archives": {
            a["target"]: {
                **{k: a[k] for k in ("archive", "bytes", "sha256", "files", "vectors", "runtime", "tolerance")},
                **({"bundles": a["bundles"]} if a["bundles"] else {}),
            }
            for a in archives
        },
        "excluded": excluded,
        "benchmarks": bench,
        "memory": memory or {},
    }
    full = {**manifest, "artifacts": [a for a in manifest["artifacts"] if a["target"] in shipped], "release": release}
    atomic_write_json(folder / "manifest.json", full)
    atomic_write_bytes(folder / "MODEL_CARD.md", model_card(full).encode())
    atomic_write_bytes(folder / "BENCHMARKS.md", benchmarks_md(full).encode())
    atomic_write_bytes(folder / "SHA256SUMS", sha256sums(folder).encode())


def sha256sums(folder: Path) -> str:
    """`sha256sum -c` format (two spaces: text mode, which on Linux is the same bytes) for every file."""
    from pipeline.util import sha256_file

    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    return "".join(f"{sha256_file(folder / n)}  {n}\n" for n in names)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put `tmp` at `final` by renames: readers see the old release or the new one, never a mix."""
    import uuid

    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- benchmarks ----------------------------------------------------------------------------------


def load_bench(path: Path, model: str | None) -> list[dict]:
    """The successful rows of a `bench --json` file, for this model (None: any)."""
    import json

    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--bench {path}: cannot read it as JSON: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "target" in r for r in rows):
        raise UsageError(f"--bench {path} is not a list of rows with a target (what `bench --json FILE` writes)")
    other = {r["model"] for r in rows if model is not None and r.get("model", model) != model}
    if other:
        raise UsageError(f"--bench {path} measured {', '.join(sorted(other))}, not {model}")
    return [r for r in rows if r.get("status", "ok") == "ok"]


MEMORY_KEYS = ("device", "harness", "threads", "peak_rss_mb", "peak_rss_source", "arena_bytes", "file_bytes")


def memory_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Per target, what each successful bench row measured of memory: the peak resident memory of the process
    that ran it (on an emulated board the guest's own), the runtime's arena where it reports one, the file."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok" and (r.get("peak_rss_mb") is not None or r.get("file_bytes")):
            out.setdefault(r["target"], []).append({k: r.get(k) for k in MEMORY_KEYS})
    return out


def timed(rows: list[dict]) -> list[dict]:
    """The rows a release's benchmarks show: timed ones (not those not built, failed, timed out, or emulated)."""
    return [r for r in rows if r.get("status", Status.OK) == Status.OK and r.get("p50_ms") is not None]
