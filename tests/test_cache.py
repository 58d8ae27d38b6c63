import json

from pipeline.cache import Cache, stage_key

TOOLS = {"tensorflow": "2.21.0"}


def test_the_key_changes_with_every_ingredient():
    base = stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abc"}, TOOLS)
    assert base == stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abc"}, TOOLS)
    variants = [
        stage_key("qat", "c1", {"sparsity": 0.75}, {"model": "abc"}, TOOLS),
        stage_key("prune", "c2", {"sparsity": 0.75}, {"model": "abc"}, TOOLS),
        stage_key("prune", "c1", {"sparsity": 0.5}, {"model": "abc"}, TOOLS),
        stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abd"}, TOOLS),
        stage_key("prune", "c1", {"sparsity": 0.75}, {"model": "abc"}, {"tensorflow": "2.22.0"}),
    ]
    assert len({base, *variants}) == 6


def test_a_put_entry_is_found_again_with_its_metadata(tmp_path):
    cache = Cache(tmp_path)

    def produce(folder):
        (folder / "out.bin").write_bytes(b"hello")
        return {"accuracy": 0.9}

    first = cache.put("train", "k1", produce)
    assert not first.reused
    again = cache.get("train", "k1")
    assert again.reused and again.meta["accuracy"] == 0.9
    assert again.file("out.bin").read_bytes() == b"hello"
    assert cache.get("train", "other") is None


def test_a_damaged_entry_is_discarded_not_reused(tmp_path, capsys):
    cache = Cache(tmp_path)
    entry = cache.put("train", "k1", lambda f: (f / "out.bin").write_bytes(b"hello") and {})
    entry.file("out.bin").write_bytes(b"hellO")
    assert cache.get("train", "k1") is None
    assert "damaged cache entry" in capsys.readouterr().err
    assert not entry.path.exists()


def test_an_entry_with_a_broken_record_is_discarded(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.put("train", "k1", lambda f: {})
    (entry.path / "entry.json").write_text("{not json")
    assert cache.get("train", "k1") is None


def test_a_stage_that_fails_leaves_nothing_a_later_build_would_trust(tmp_path):
    cache = Cache(tmp_path)

    def produce(folder):
        (folder / "half.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    try:
        cache.put("train", "k1", produce)
    except KeyboardInterrupt:
        pass
    assert cache.get("train", "k1") is None
    assert not any((tmp_path / "train").iterdir())


def test_a_temp_folder_left_by_a_killed_build_is_never_read(tmp_path):
    cache = Cache(tmp_path)
    tmp = tmp_path / "train" / ".tmp-k1-123-abc"
    tmp.mkdir(parents=True)
    (tmp / "entry.json").write_text(json.dumps({"files": {}, "meta": {}}))
    assert cache.get("train", "k1") is None


KEYS = """
import json
from pipeline import config, graph
from pipeline.sweeper import plan, variants
from targets import TARGETS, resolve

cfg = config.from_dict({"model": {"name": "tiny-digits", "filters": 4}, "train": {"epochs": 1}})
_, keys = plan(variants(cfg, {}), __import__("pathlib").Path("cache"), resolve("tflite-int8"))
keys = next(iter(keys.values()))
for name in ("export", "verify"):
    keys[name] = graph.code(graph.STAGES[name], TARGETS["tflite-int8"])
print(json.dumps({**keys, "file": graph.__file__}))
"""


def _keys_with(tmp_path, file: str, line: str, new: str) -> dict:
    """The stage keys of one config computed by a copy of the code in which `line` of `file` reads `new`."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    tree = tmp_path / "tree"
    for top in ("pipeline", "targets"):
        shutil.copytree(ROOT / top, tree / top, ignore=shutil.ignore_patterns("__pycache__"))
    if line:
        src = (tree / file).read_text()
        assert src.count(line) == 1
        (tree / file).write_text(src.replace(line, new))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", KEYS], cwd=tree, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.rmtree(tree)
    keys = json.loads(proc.stdout)
    assert keys.pop("file") == str(tree / "pipeline" / "graph.py")  # the copy's code, not the installed one
    return keys


def test_editing_one_stages_code_changes_its_key_and_its_dependants_never_the_stages_before_it(tmp_path):
    before = _keys_with(tmp_path, "", "", "")
    assert set(before) == {"data", "train", "prune", "qat", "export", "verify"}

    def changed(file, line, new):
        after = _keys_with(tmp_path, file, line, new)
        return sorted(s for s in before if before[s] != after[s])

    qat = "    tf, keras = tf_setup(seed)\n    import tensorflow_model_optimization as tfmot\n"
    # QAT's own code: QAT reruns, export and verify are keyed on QAT's key, train and prune are kept.
    assert changed("pipeline/stages.py", qat, qat.replace("(seed)", "(seed + 1)")) == ["qat"]
    export = "    calib = ctx.dataset().x_cal\n"
    assert changed("pipeline/graph.py", export, export + "    calib = calib[:1]\n") == ["export"]
    verify = "        expected=expected,\n        heads=ctx.heads(),\n"
    assert changed("pipeline/graph.py", verify, verify.replace("heads=", "heads=None or ")) == ["verify"]
    # A helper train, prune and QAT share: each of them; a comment or a blank line: nothing.
    fit = "label, callbacks=()):"
    assert changed("pipeline/stages.py", fit, fit.replace("()", "tuple()")) == ["prune", "qat", "train"]
    assert changed("pipeline/stages.py", qat, qat.replace("\n    import", "  # a comment\n\n    import")) == []
