"""`release` and `verify`: reproducible archives, checksums, safe extraction, replayed test vectors."""

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
from conftest import build_copy, run_cli

from pipeline.isa import x86_isa
from pipeline.releases.pack import sha256sums, write_archive
from pipeline.util import sha256_file
from targets import TARGETS

VERSION = "1.2.3"
MODEL = "tiny-digits"


def ok_targets(out):
    """The targets of the shared small build that verified (every registered family that works here)."""
    m = json.loads((out / MODEL / "manifest.json").read_text())
    return [a["target"] for a in m["artifacts"] if a["status"] == "ok"]


def release_cli(out, config, dist, *extra):
    return run_cli("release", "--version", VERSION, "--config", config, "--out", out, "--dist", dist, *extra)


@pytest.fixture(scope="module")
def release(small_build, small_config, tmp_path_factory):
    out, _ = small_build
    dist = tmp_path_factory.mktemp("dist")
    proc = release_cli(out, small_config, dist, "--target", ",".join(ok_targets(out)))
    assert proc.returncode == 0, proc.stderr
    return dist / f"{MODEL}-{VERSION}"


def reseal(folder):
    """Make manifest.json and SHA256SUMS agree with the archives again, as a careful forger would."""
    m = json.loads((folder / "manifest.json").read_text())
    for a in m["release"]["archives"].values():
        a["sha256"] = sha256_file(folder / a["archive"])
    (folder / "manifest.json").write_text(json.dumps(m))
    (folder / "SHA256SUMS").write_text(sha256sums(folder))


def failures(proc):
    return [ln for ln in proc.stdout.splitlines() if "  FAIL  " in ln]


@pytest.mark.slow
def test_two_releases_of_one_build_are_byte_identical(release, small_build, small_config, tmp_path):
    # A cached re-build in between rewrites the build manifest's times: the release must not change.
    out = build_copy(small_build, tmp_path / "out")
    rebuild = run_cli("build", "--config", small_config, "--target", ",".join(ok_targets(out)), "--out", out)
    assert rebuild.returncode == 0, rebuild.stderr
    proc = release_cli(out, small_config, tmp_path, "--target", ",".join(ok_targets(out)))
    assert proc.returncode == 0, proc.stderr
    again = tmp_path / release.name
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in release.iterdir())
    for p in release.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=release).returncode == 0


@pytest.mark.slow
def test_each_archive_is_sorted_dated_ownerless_and_holds_its_test_vectors(release, small_build):
    out, _ = small_build
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    for name in ok_targets(out):
        path = release / f"{MODEL}-{VERSION}-{name}.tar.gz"
        head = path.read_bytes()[:10]
        assert head[3] == 0 and head[4:8] == b"\0\0\0\0"  # gzip: no file name, no time
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == sorted(m.name for m in members)
            for m in members:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (epoch, 0, 0, "", "")
                assert m.mode == (0o755 if m.isdir() else 0o644)
            top = f"{MODEL}-{VERSION}-{name}/"
            files = {m.name.removeprefix(top) for m in members if m.isfile()}
            meta = json.load(tar.extractfile(top + "release.json"))
        assert files == {
            *TARGETS[name].files,
            "labels.txt",
            "release.json",
            "test_vectors/inputs.npy",
            "test_vectors/output_0.npy",
        }
        assert meta["target"] == name and len(meta["test_vectors"]["held_out_indices"]) == 12
        assert meta["test_vectors"]["tolerance"][0]["max_abs_diff"] > 0
    card = (release / "MODEL_CARD.md").read_text()
    for heading in ("## Training and compression", "## Artifacts", "## Limitations", "## What fell back"):
        assert heading in card
    # int8 figures say which CPU's kernels they ran on, and where they hold
    assert "int8 verified on" in card and f"x86_64 {x86_isa()['label']}" in card
    assert 'deploy_cpu = "any"' in card
    assert "Not benchmarked" in (release / "BENCHMARKS.md").read_text()
    m = json.loads((release / "manifest.json").read_text())
    assert m["release"]["version"] == VERSION and set(m["release"]["archives"]) == set(ok_targets(out))


@pytest.mark.slow
def test_verify_passes_on_a_good_release_and_shows_what_it_checked(release, small_build):
    out, _ = small_build
    proc = run_cli("verify", release)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not failures(proc)
    replays = [ln for ln in proc.stdout.splitlines() if ln.startswith("replay")]
    assert len(replays) == len(ok_targets(out)) and all("  ok  " in ln for ln in replays)


def _flip_byte(folder, name):
    p = folder / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", ["flip a byte in an archive", "flip a byte in manifest.json", "remove an archive", "remove MODEL_CARD.md"]
)
def test_verify_fails_naming_the_damaged_file(release, tmp_path, damage):
    copy = tmp_path / release.name
    shutil.copytree(release, copy)
    archive = sorted(copy.glob("*.tar.gz"))[0].name
    victim = "manifest.json" if "manifest" in damage else "MODEL_CARD.md" if "MODEL_CARD" in damage else archive
    if damage.startswith("flip"):
        _flip_byte(copy, victim)
    else:
        (copy / victim).unlink()
    proc = run_cli("verify", copy)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert victim in proc.stderr and any(victim in ln for ln in failures(proc))


@pytest.mark.slow
def test_verify_fails_when_a_test_vector_no_longer_matches_even_with_every_checksum_resealed(release, tmp_path):
    copy = tmp_path / release.name
    shutil.copytree(release, copy)
    archive = sorted(copy.glob("*.tar.gz"))[0]
    top = archive.name.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    folder = tmp_path / "x" / top
    vec = folder / "test_vectors" / "output_0.npy"
    expected = np.load(vec)
    expected[0, 0] += 0.05  # well past one int8 step (1/256) and the float tolerance
    np.save(vec, expected)
    meta = json.loads((folder / "release.json").read_text())
    meta["files"]["test_vectors/output_0.npy"] = sha256_file(vec)
    (folder / "release.json").write_text(json.dumps(meta))
    write_archive(archive, top, {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}, 0)
    reseal(copy)
    proc = run_cli("verify", copy)
    assert proc.returncode == 1
    assert [ln.split()[0] for ln in failures(proc)] == ["replay"]
    assert archive.name in proc.stderr and "output_0" in proc.stderr


def _evil_archive(folder, kind):
    """An archive named like a release archive with one member that must never be extracted."""
    top = "m-1.0.0-t"
    path = folder / f"{top}.tar.gz"
    outside = folder / "outside.txt"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo(f"{top}/release.json")
        tar.addfile(ok, None)
        bad = tarfile.TarInfo(
            {
                "dotdot": f"{top}/../../outside.txt",
                "absolute": str(outside),
                "symlink": f"{top}/link",
                "device": f"{top}/dev",
            }[kind]
        )
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, str(folder)
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 3
        data = b"pwned"
        bad.size = 0 if kind in ("symlink", "device") else len(data)
        tar.addfile(bad, io.BytesIO(data) if bad.size else None)
    return path, bad.name, outside


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_verify_refuses_an_archive_with_an_unsafe_member_naming_it(tmp_path, kind):
    path, member, outside = _evil_archive(tmp_path, kind)
    proc = run_cli("verify", path)
    assert proc.returncode == 1
    assert member in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not outside.exists() and not (tmp_path.parent / "outside.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["failed_verification", "failed_arm_check"])
def test_release_refuses_a_failed_target_unless_allowed_and_records_it(small_build, small_config, tmp_path, how):
    from pipeline.devices.verify_on import record_arm_checks

    out, _ = small_build
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    names = ok_targets(out)
    failed = names[0]
    path = copy / MODEL / "manifest.json"
    m = json.loads(path.read_text())
    row = next(a for a in m["artifacts"] if a["target"] == failed)
    if how == "failed_verification":
        row["status"], row["reason"] = how, "accuracy 0.5 vs float model 0.9: crafted"
        path.write_text(json.dumps(m))
        reason = row["reason"]
    else:  # as build --verify-on records a board that cannot run the file
        record_arm_checks(
            copy,
            MODEL,
            {
                failed: [
                    {
                        "device": "emu:rpi4",
                        "status": "failed",
                        "sha256": row["sha256"],
                        "reason": "top-1 differs from x86 on 40% of 10 samples: crafted",
                    }
                ]
            },
        )
        reason = "on emu:rpi4: top-1 differs from x86 on 40% of 10 samples: crafted"
    dist = tmp_path / "dist"
    proc = release_cli(copy, small_config, dist, "--target", ",".join(names))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert failed in proc.stderr and "crafted" in proc.stderr and "--allow-failed" in proc.stderr
    assert not dist.exists()
    proc = release_cli(copy, small_config, dist, "--target", ",".join(names), "--allow-failed", failed)
    assert proc.returncode == 0, proc.stderr
    rel = dist / f"{MODEL}-{VERSION}"
    assert not (rel / f"{MODEL}-{VERSION}-{failed}.tar.gz").exists()
    assert len(list(rel.glob("*.tar.gz"))) == len(names) - 1
    excluded = json.loads((rel / "manifest.json").read_text())["release"]["excluded"]
    assert excluded == [{"target": failed, "status": how, "reason": reason}]
    assert f"{failed} not released" in (rel / "MODEL_CARD.md").read_text()
    assert not [p for p in dist.iterdir() if p.name.startswith(".")]  # no temp folder left behind


@pytest.mark.slow
def test_bench_results_give_the_model_card_latency_and_a_chart(small_build, small_config, tmp_path):
    out, _ = small_build
    target = ok_targets(out)[-1]
    rows = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "--config",
        small_config,
        "--out",
        out,
        "--target",
        target,
        "--runs",
        "5",
        "--min-seconds",
        "0",
        "--warmup",
        "1",
        "--samples",
        "5",
        "--json",
        rows,
    )
    assert proc.returncode == 0, proc.stderr
    proc = release_cli(out, small_config, tmp_path / "dist", "--target", target, "--bench", rows)
    assert proc.returncode == 0, proc.stderr
    rel = tmp_path / "dist" / f"{MODEL}-{VERSION}"
    p50 = json.loads(rows.read_text())[0]["p50_ms"]
    bench = (rel / "BENCHMARKS.md").read_text()
    assert f"{p50:.4g} ms" in bench and "#" in bench and "Not benchmarked" not in bench
    card = (rel / "MODEL_CARD.md").read_text()
    assert "| threads |" in card and f"{p50:.4g}" in card


def test_a_bad_version_is_one_line_and_writes_nothing(tmp_path):
    proc = run_cli("release", "--version", "1.2", "--out", tmp_path / "out", "--dist", tmp_path / "dist")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --version must look like X.Y.Z")
    assert not (tmp_path / "out").exists() and not (tmp_path / "dist").exists()


def test_verify_of_something_that_is_not_a_release_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "missing", tmp_path / "notes.txt", tmp_path):
        proc = run_cli("verify", path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr


def test_a_truncated_archive_is_refused_not_crashed_on(tmp_path):
    path = tmp_path / "m-1.0.0-t.tar.gz"
    path.write_bytes(gzip.compress(b"x" * 1000)[:-12])
    proc = run_cli("verify", path)
    assert proc.returncode == 1 and "cannot read the archive" in proc.stderr and "Traceback" not in proc.stderr
