"""`verify PATH`: check a release folder (or one archive of it) as whoever receives it would.

Each check is a row of the printed table:
  sha256    every file SHA256SUMS lists is there and matches, and nothing unlisted lies beside them
  manifest  manifest.json names the same archives with the same checksums
  members   the archive holds only files and folders under its one top folder: no absolute path,
            no '..', no link, no device or other special file, no name twice. Checked before
            anything is extracted; a bad archive is refused naming the member
  contents  every member matches the checksum its release.json records, and none is unlisted
  replay    the artifact, loaded in its runtime in a child process (a malformed file may crash a
            runtime), answers its test vectors within the tolerance recorded in release.json
The `verify` command exits 0 only if no check failed.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import UsageError

COLUMNS = [("check", "check"), ("file", "file"), ("result", "result"), ("detail", "detail")]
SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
OUTPUT_NAME = re.compile(r"^output_[0-9]+$")


def check(path: Path, timeout: float) -> list[dict]:
    """Every check of a release folder, or of one archive beside its SHA256SUMS."""
    if path.is_dir():
        return check_folder(path, timeout)
    if path.is_file() and path.name.endswith(".tar.gz"):
        return check_archive_alone(path, timeout)
    raise UsageError(f"{path} is neither a release folder nor a .tar.gz archive")


def _row(check: str, file: str, ok: bool | None, detail: str) -> dict:
    return {"check": check, "file": file, "result": {True: "ok", False: "FAIL", None: "skipped"}[ok], "detail": detail}


# -- the folder ----------------------------------------------------------------------------------


def check_folder(folder: Path, timeout: float) -> list[dict]:
    from pipeline.util import sha256_file

    sums = folder / "SHA256SUMS"
    archives = sorted(folder.glob("*.tar.gz"))
    if not sums.is_file() and not archives:
        raise UsageError(f"{folder} is not a release: no SHA256SUMS and no .tar.gz archives")
    rows, listed = [], {}
    if not sums.is_file():
        rows.append(_row("sha256", "SHA256SUMS", False, "missing: no checksum to trust the files by"))
    else:
        for n, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
            m = SUMS_LINE.match(line)
            # Plain names only: a listed path must not point out of the release folder.
            if not m or "/" in m.group(2) or m.group(2).startswith("."):
                rows.append(_row("sha256", "SHA256SUMS", False, f"line {n} is not '<sha256>  <file name>'"))
            else:
                listed[m.group(2)] = m.group(1)
    for name, digest in sorted(listed.items()):
        p = folder / name
        if not p.is_file():
            rows.append(_row("sha256", name, False, "missing"))
        else:
            actual = sha256_file(p)
            rows.append(
                _row(
                    "sha256",
                    name,
                    actual == digest,
                    "matches SHA256SUMS"
                    if actual == digest
                    else f"sha256 {actual[:16]}... but SHA256SUMS says {digest[:16]}...",
                )
            )
    for p in sorted(folder.iterdir()):
        if p.name not in listed and p.name != "SHA256SUMS":
            rows.append(_row("sha256", p.name, False, "not listed in SHA256SUMS"))
    rows.append(check_manifest(folder, archives))
    for a in archives:
        rows += check_archive(a, timeout)
    return rows


def check_manifest(folder: Path, archives: list[Path]) -> dict:
    import json

    from pipeline.util import sha256_file

    try:
        listed = json.loads((folder / "manifest.json").read_text())["release"]["archives"]
        named = {v["archive"]: v["sha256"] for v in listed.values()}
        named.update({b["archive"]: b["sha256"] for v in listed.values() for b in v.get("bundles", [])})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return _row("manifest", "manifest.json", False, f"unreadable release section: {type(e).__name__} {e}")
    on_disk = {a.name for a in archives}
    for name in sorted(on_disk | set(named)):
        if name not in named:
            return _row("manifest", "manifest.json", False, f"does not list {name}")
        if name not in on_disk:
            return _row("manifest", "manifest.json", False, f"lists {name}, which is missing")
        if sha256_file(folder / name) != named[name]:
            return _row("manifest", "manifest.json", False, f"records another sha256 for {name}")
    return _row("manifest", "manifest.json", True, f"lists the {len(named)} archives with their sha256")


def check_archive_alone(archive: Path, timeout: float) -> list[dict]:
    from pipeline.util import sha256_file

    sums = archive.parent / "SHA256SUMS"
    listed = {}
    if sums.is_file():
        for line in sums.read_text(errors="replace").splitlines():
            if m := SUMS_LINE.match(line):
                listed[m.group(2)] = m.group(1)
    if archive.name in listed:
        ok = sha256_file(archive) == listed[archive.name]
        rows = [_row("sha256", archive.name, ok, "matches SHA256SUMS" if ok else "does not match SHA256SUMS")]
    else:
        rows = [_row("sha256", archive.name, None, "no SHA256SUMS entry beside it: members checked only")]
    return rows + check_archive(archive, timeout)


# -- one archive ---------------------------------------------------------------------------------


def unsafe_member(members, top: str) -> str | None:
    """Why extracting these members is unsafe (naming the first bad one), or None."""
    from pathlib import PurePosixPath

    seen = set()
    for m in members:
        p = PurePosixPath(m.name)
        if m.name.startswith("/") or p.is_absolute():
            return f"member {m.name} has an absolute path"
        if ".." in p.parts:
            return f"member {m.name} has '..' in its path"
        if m.issym() or m.islnk():
            return f"member {m.name} is a link to {m.linkname}: release archives hold no links"
        if not (m.isfile() or m.isdir()):
            return f"member {m.name} is a device, fifo or other special file"
        if not p.parts or p.parts[0] != top:
            return f"member {m.name} is outside the top folder {top}/"
        if str(p) in seen:
            return f"member {m.name} appears twice"
        seen.add(str(p))
    return None


def check_archive(archive: Path, timeout: float) -> list[dict]:
    import gzip
    import tarfile
    import tempfile
    import zlib

    top = archive.name[: -len(".tar.gz")]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # Read the whole gzip stream first: only its end checks the CRC, and tarfile stops
            # without an error at the first damaged header after the first member.
            with gzip.open(archive) as z:
                while z.read(1 << 20):
                    pass
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                problem = unsafe_member(members, top)
                if problem:
                    return [_row("members", archive.name, False, problem)]
                # The data filter re-checks every member as it extracts: a second line of defence.
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            return [_row("members", archive.name, False, f"cannot read the archive: {type(e).__name__}: {e}")]
        folder = Path(tmp) / top
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        rows = [_row("members", archive.name, True, f"{len(files)} files under {top}/, no link or special file")]
        meta, content_rows = check_contents(archive.name, folder, files)
        rows += content_rows
        if meta is not None:
            rows.append((replay_bundle if "bundle" in meta else replay)(archive.name, folder, meta, timeout))
        return rows


def check_contents(name: str, folder: Path, files: list[str]):
    """(release.json, rows): every member against the checksums release.json records."""
    import json

    from pipeline.releases.pack import RELEASE_JSON
    from pipeline.util import sha256_file

    try:
        meta = json.loads((folder / RELEASE_JSON).read_text())
        recorded = dict(meta["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, [_row("contents", f"{name}:{RELEASE_JSON}", False, f"missing or unreadable: {e}")]
    rows = []
    for rel in sorted(set(recorded) | (set(files) - {RELEASE_JSON})):
        where = f"{name}:{rel}"
        if rel not in files:
            rows.append(_row("contents", where, False, "listed in release.json but missing"))
        elif rel not in recorded:
            rows.append(_row("contents", where, False, "not listed in release.json"))
        elif sha256_file(folder / rel) != recorded[rel]:
            rows.append(_row("contents", where, False, "does not match its sha256 in release.json"))
    if rows:
        return None, rows
    return meta, [_row("contents", name, True, f"{len(recorded)} files match release.json")]


def replay(name: str, folder: Path, meta: dict, timeout: float) -> dict:
    """Run the artifact on its test vectors in its runtime and compare with what it answered at release."""
    import tempfile

    import numpy as np

    from pipeline import runner
    from targets import RUNNERS, TARGETS

    problem = _unusable(meta, {t.runner for t in TARGETS.values()})
    if problem:
        return _row("replay", name, False, f"release.json {problem}")
    tol = meta["test_vectors"]["tolerance"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "outputs.npz"
        res = runner.run(
            RUNNERS / meta["runner"],
            folder / meta["artifact"],
            [
                "--inputs",
                folder / meta["test_vectors"]["inputs"],
                "--outputs",
                out,
                "--threads",
                str(meta.get("threads", 1)),
            ],
            timeout=timeout,
        )
        runtime = f"{res.get('runtime')} {res.get('runtime_version')}"
        if not res["ok"]:
            return _row("replay", name, False, f"{meta.get('target')} does not run: {runtime}: {res['error']}")
        worst = []
        with np.load(out, allow_pickle=False) as got:
            for t in tol:
                try:
                    want = np.load(folder / f"test_vectors/{t['output']}.npy", allow_pickle=False)
                    diff = float(np.max(np.abs(got[t["output"]].astype(np.float64) - want)))
                    same_shape = got[t["output"]].shape == want.shape
                except (KeyError, ValueError, TypeError, OSError) as e:  # the archive's arrays: trust nothing
                    return _row("replay", name, False, f"{meta.get('target')}: {t['output']} cannot be compared: {e}")
                if not same_shape:
                    return _row(
                        "replay",
                        name,
                        False,
                        f"{meta.get('target')}: {t['output']} has another shape than test_vectors/{t['output']}.npy",
                    )
                if not diff <= t["max_abs_diff"]:
                    return _row(
                        "replay",
                        name,
                        False,
                        f"{meta.get('target')}: test vector {t['output']} differs by {diff:.4g} > "
                        f"{t['max_abs_diff']:.4g} ({t.get('rule', 'recorded tolerance')}) in {runtime}; "
                        f"recorded in {meta.get('runtime')}",
                    )
                worst.append(diff)
    n = res.get("predicted", "?")
    return _row(
        "replay",
        name,
        True,
        f"{meta.get('target')}: {n} vectors, max abs diff {max(worst):.3g} within "
        f"tolerance, in {runtime} (recorded in {meta.get('runtime')})",
    )


def replay_bundle(name: str, folder: Path, meta: dict, timeout: float) -> dict:
    """A native bundle replays its test vectors with its own run.sh, as a board would: here for this machine's
    arch, under the emulated board for aarch64. Only code this checkout built or installed is run: the
    bundle's binary and libraries must be byte-identical to ours (else the check is skipped, not trusted)."""
    import platform

    from pipeline import native, runner
    from pipeline.devices import emulator
    from pipeline.util import sha256_file

    arch = (meta.get("bundle") or {}).get("arch")
    if arch not in native.ARCHES:
        return _row("replay", name, False, f"release.json names no known bundle arch ({arch!r})")
    try:
        rt = native.runtime_for(meta["runner"])
        ours = native.bundle_files(rt, arch)
    except native.NativeError as e:
        return _row("replay", name, None, f"not replayed here: {e}")
    if any(not (folder / rel).is_file() or sha256_file(folder / rel) != sha256_file(src) for rel, src in ours.items()):
        return _row(
            "replay",
            name,
            None,
            f"not replayed: its {arch} runner or libraries are not this checkout's build; run its run.sh on the board",
        )
    wrapper = []
    if arch != platform.machine():
        if not emulator.is_ready("rpi4"):
            return _row(
                "replay",
                name,
                None,
                f"not replayed: {arch} needs the emulated board (python -m pipeline device setup emu:rpi4)",
            )
        wrapper = emulator.python_command("rpi4")[:-1]  # qemu with the board's sysroot, without its Python (no spaces)
    res = runner.run_command(
        [
            "env",
            f"EDGE_BENCH_WRAPPER={' '.join(wrapper)}",
            "sh",
            folder / "run.sh",
            "--runs",
            "3",
            "--min-seconds",
            "0",
            "--warmup",
            "1",
        ],
        timeout,
    )
    vectors = res.get("test_vectors") or {}
    if not res.get("ok") or not vectors.get("ok"):
        return _row("replay", name, False, f"{meta.get('target')} on linux-{arch}: {res.get('error', 'no result')}")
    return _row(
        "replay",
        name,
        True,
        f"{meta.get('target')}: run.sh on linux-{arch}{' (emulated)' if wrapper else ''}: "
        f"{vectors['vectors']} vectors, max abs diff {max(vectors['max_abs_diff']):.3g} "
        f"within tolerance, in {res.get('runtime')} {res.get('runtime_version')} (native)",
    )


def _unusable(meta: dict, runners: set[str]) -> str | None:
    """What makes release.json unfit to replay from, or None. It comes from the archive: trust nothing."""
    files = meta["files"]
    tol = meta.get("test_vectors", {}).get("tolerance") if isinstance(meta.get("test_vectors"), dict) else None
    # Only a runner of this checkout, by name: release.json must not choose what code runs.
    if not isinstance(meta.get("runner"), str) or meta["runner"] not in runners:
        return f"names no runner of this checkout ({meta.get('runner')!r})"
    if (
        not isinstance(meta.get("artifact"), str)
        or meta["artifact"] not in files
        or not isinstance(meta.get("test_vectors"), dict)
        or meta["test_vectors"].get("inputs") not in ("test_vectors/inputs.npy", "test_vectors/inputs.npz")
        or meta["test_vectors"]["inputs"] not in files
    ):
        return "names an artifact or inputs that are not in the archive"
    if not isinstance(meta.get("threads", 1), int) or meta.get("threads", 1) < 1:
        return "has a bad thread count"
    if (
        not isinstance(tol, list)
        or not tol
        or not all(
            isinstance(t, dict)
            and OUTPUT_NAME.match(str(t.get("output")))
            and f"test_vectors/{t['output']}.npy" in files
            and isinstance(t.get("max_abs_diff"), int | float)
            for t in tol
        )
    ):
        return "records no usable tolerance for its test vector outputs"
    return None
