"""`report`: one self-contained HTML page, drawn by a real browser (headless Chromium) with no network."""

import argparse
import json
import re
import shutil
import subprocess

import pytest
from conftest import build_copy, run_cli

from pipeline import charts

DRAWN = re.compile(r"<(circle|rect|polyline|line)\b")


def chromium_exe() -> str:
    exe = shutil.which("chromium")
    if exe is None:  # CI installs it: a missing browser is a failure here, never a silent skip
        pytest.fail("chromium is not installed: run `sudo scripts/install_system.sh` (Debian package chromium)")
    return exe


def chromium(*args, timeout=60) -> subprocess.CompletedProcess:
    """Headless Chromium in a network namespace of its own when this host allows one, else behind a proxy that
    refuses every connection: either way nothing can be fetched, and the net log says what was tried."""
    exe = chromium_exe()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--proxy-server=127.0.0.1:9"]
    flags += ["--disable-background-networking", "--disable-component-update", "--no-first-run"]
    isolated = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    cmd = (["unshare", "-n"] if isolated else []) + [exe, *flags, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def page_fetches(netlog) -> list[str]:
    """The URLs a page loaded from a file asked the network stack for (the browser's own update checks are
    requests of no page: their network isolation key is not the file's)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and "file://" in e["params"].get("network_isolation_key", "")
    ]


def render(page, shot, netlog, size="1100,2400") -> str:
    """The page's DOM as Chromium built it (offline); a screenshot of it; the net log of both runs."""
    profile = f"--user-data-dir={shot.parent / 'chromium-profile'}"  # the test's own, not one in HOME
    dom = chromium(profile, f"--log-net-log={netlog}", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot_run = chromium(profile, f"--screenshot={shot}", f"--window-size={size}", page.as_uri())
    assert shot_run.returncode == 0 and shot.is_file(), shot_run.stderr[-2000:]
    return dom.stdout


def _bench_profiles() -> bool:
    from pipeline.cli import bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return "--profile" in p.format_help()


def test_a_benched_builds_page_renders_offline_in_chromium_with_every_chart_drawn_and_nothing_fetched(
    small_build, tmp_path
):
    from PIL import Image

    chromium_exe()
    out = build_copy(small_build, tmp_path / "build")
    rows_file = tmp_path / "bench.json"
    profile = ["--profile"] if _bench_profiles() else []  # per-op figures, once `bench` measures them
    proc = run_cli(
        "bench", "--out", out, "--target", "tflite-int8,onnx-fp32,onnx-int8", "--runs", "5", "--min-seconds", "0",
        "--warmup", "1", "--samples", "10", "--json", rows_file, *profile,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("report", "--out", out, "--bench", rows_file)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = out / "report.html"
    assert proc.stdout.strip() == f"report: {page}"
    html = page.read_text()

    # Self-contained: no script, no link or source of any kind, no address to fetch.
    assert not re.search(r"<script|<link|<iframe|<img|\bsrc=|\bhref=|url\(|https?:", html, re.I)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    titles = [re.search(r"<title>(.*?)</title>", s)[1] for s in svgs]
    assert "tiny-digits: accuracy (held-out split) against file size" in titles
    assert "local: accuracy against latency and size" in titles and "local: memory" in titles
    assert all(len(DRAWN.findall(s)) >= 3 for s in svgs), titles
    rows = json.loads(rows_file.read_text())
    scatter = svgs[titles.index("local: accuracy against latency and size")]
    assert scatter.count("<circle") == len(rows)  # one point per bench row
    for r in rows:  # each measured latency is on the page, in the board's table
        assert f'<td class="n">{r["p50_ms"]:.4g}</td>' in html
        assert f'<td class="n">{r["peak_rss_mb"]:.4g}</td>' in html
    for target in ("tflite-fp32", "tflite-int8", "onnx-int8", "openvino-int8"):  # the build's targets table
        assert f"<td>{target}</td>" in html
    if profile:  # onnxruntime profiles per op: its int8 file against its fp32 one, op type by op type
        assert "local: where the time goes, by op type" in titles
        assert any(t.startswith("onnx-int8 against onnx-fp32, per op type") for t in titles), titles

    dom = render(page, tmp_path / "page.png", tmp_path / "net.json")
    assert dom.count("<svg") == len(svgs) and "Benchmarks" in dom
    assert page_fetches(tmp_path / "net.json") == []
    colours = Image.open(tmp_path / "page.png").convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text and charts, not a blank page

    # The net-log check sees a fetch when a page makes one (so its silence above means something).
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="https://example.com/x.png"></body></html>')
    render(control, tmp_path / "control.png", tmp_path / "control-net.json", size="200,200")
    assert page_fetches(tmp_path / "control-net.json") == ["https://example.com/x.png"]

    import pipeline  # the API takes the rows themselves as well as files, and writes the same charts

    assert pipeline.html_report(str(out), bench=rows) == page
    again = re.findall(r"<svg.*?</svg>", page.read_text(), re.S)
    assert [re.search(r"<title>(.*?)</title>", s)[1] for s in again] == titles


@pytest.mark.parametrize(
    "case",
    ["missing folder", "not json", "a json object", "rows without a device", "no bench file", "no sweep", "empty"],
)
def test_bad_input_is_one_error_line_exit_2_and_the_page_already_there_is_kept(tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("the page of an earlier run")
    bench = tmp_path / "bench.json"
    args = ["--out", out, "--bench", bench]
    if case == "missing folder":
        args = ["--out", tmp_path / "nowhere"]
    elif case == "not json":
        bench.write_text("p50 0.3 ms\n")
    elif case == "a json object":
        bench.write_text('{"target": "tflite-int8"}')
    elif case == "rows without a device":
        bench.write_text('[{"target": "tflite-int8", "status": "ok"}]')
    elif case == "no sweep":
        args = ["--out", out, "--sweep", tmp_path]
    elif case == "empty":
        args = ["--out", out]
    proc = run_cli("report", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "the page of an earlier run"


def test_a_chart_draws_one_mark_per_value_escapes_its_labels_and_is_empty_without_data():
    points = [{"x": 1.0, "y": 0.9, "size": 100, "label": "a<b", "group": "tflite"}, {"x": 3.0, "y": 0.8, "label": "c"}]
    svg = charts.scatter(points + [{"x": None, "y": 1.0, "label": "no latency"}], title="t", x_label="x", y_label="y")
    assert svg.count("<circle") == 2 and "a&lt;b" in svg and "no latency" not in svg
    svg = charts.bars({"rss": [52.0, None, 60.0], "arena": [None, None, 1.5]}, ["a", "b", "c"], title="m", unit="MB")
    assert svg.count("</rect>") == 3 and ">b<" not in svg  # a bar per value (legend swatches have no title); b: no row
    svg = charts.stacked([("int8", [("CONV_2D", 0.75), ("ADD", 0.25)]), ("fp32", [])], title="ops")
    assert ">75%<" in svg and ">fp32<" not in svg
    assert charts.scatter([], title="t", x_label="x", y_label="y") == ""
    assert charts.bars({"rss": [None]}, ["a"], title="m") == "" and charts.stacked([], title="s") == ""
