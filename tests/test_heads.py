"""Models with several outputs ("heads"): each head measured and gated its own way, the original's order kept."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from pipeline.config import BuildConfig, ConfigError, from_dict
from pipeline.gate import budget_reasons, worst_head
from targets import RUNNERS, TARGETS, metrics, ptq

THREE_HEADS = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tf_keras as keras
from sklearn.datasets import load_digits

keras.utils.set_random_seed(0)
d = load_digits()
x = (d.images / 16.0).astype("float32")[..., None]
big = (d.target >= 5).astype("int64")  # what the score head classifies
quadrants = np.stack([x[:, r : r + 4, c : c + 4].mean((1, 2, 3)) for r in (0, 4) for c in (0, 4)], 1)
marks = np.concatenate([x.mean((2, 3)), x.mean((1, 3))[:, 2:4]], 1)
L = keras.layers
i = keras.Input((8, 8, 1))
h = L.PReLU(shared_axes=[1, 2])(L.Conv2D(8, 3, padding="same")(i))
h = L.PReLU()(L.Dense(32)(L.Flatten()(L.MaxPooling2D()(h))))
heads = [L.Dense(4, name="box")(h), L.Dense(10, name="landmarks")(h), L.Dense(2, activation="softmax", name="cls")(h)]
m = keras.Model(i, heads)
m.compile(keras.optimizers.Adam(3e-3), ["mse", "mse", "sparse_categorical_crossentropy"])
m.fit(x, [quadrants, marks, big], epochs=20, batch_size=32, verbose=0)
m.save(sys.argv[1])
np.savez(sys.argv[2], x=x, y=big)
"""


@pytest.fixture(scope="module")
def three_head_build(tmp_path_factory):
    """A tf_keras model with a softmax score head [2] and regression heads [4] and [10] (PReLU), listed in an
    order TFLiteConverter does not keep, built for every target."""
    tmp = tmp_path_factory.mktemp("heads")
    script = tmp / "make.py"
    script.write_text(THREE_HEADS)
    subprocess.run([sys.executable, script, tmp / "heads.h5", tmp / "digits.npz"], check=True, capture_output=True)
    cfg = tmp / "heads.toml"
    cfg.write_text(
        f'[model]\npath = "{tmp / "heads.h5"}"\n[data]\npath = "{tmp / "digits.npz"}"\n'
        "[prune]\nepochs = 1\nsparsity = 0.3\n[qat]\nepochs = 1\n[build]\nmax_accuracy_drop = 5.0\n"
    )
    out = tmp / "out"
    proc = run_cli("build", "--config", cfg, "--target", "all", "--out", out)
    return out, proc


def test_a_three_head_keras_model_builds_every_target_each_head_gated_by_its_own_measure(three_head_build):
    out, proc = three_head_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worst head" in proc.stdout
    m = json.loads((out / "heads" / "manifest.json").read_text())
    assert len(m["artifacts"]) == len(TARGETS)
    for a in m["artifacts"]:
        assert a["status"] == "ok", (a["target"], a.get("reason"))
        assert [(o["name"], o["shape"][-1]) for o in a["outputs"]] == [("box", 4), ("landmarks", 10), ("cls", 2)]
        kinds = {h["name"]: h["kind"] for h in a["heads"]}
        assert kinds == {"box": "regression", "landmarks": "regression", "cls": "scores"}
        cls = a["heads"][2]
        # The labels fit the score head only: accuracy is its measure; the regression heads keep cosine.
        assert cls["accuracy"] >= a["reference_accuracy"] - 0.05 and "accuracy" not in a["heads"][0]
        assert all(h["cosine"] >= 0.99 and 0 <= h["relative_error"] < 1 for h in a["heads"][:2])
        assert a["worst_head"].split(":")[0] in kinds
    int8 = {a["target"]: a for a in m["artifacts"]}["tflite-int8"]
    assert all("closeness" in c for c in int8["ptq"]["candidates"])  # every candidate scored on every head
    assert m["stages"]["prune"]["vs_original"]["heads"][2]["kind"] == "scores"


def test_inspect_lists_a_tflite_files_outputs_in_the_original_order_and_names(three_head_build):
    out, proc = three_head_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    from targets import tflite

    for t in ("tflite-fp32", "tflite-int8"):
        outputs = tflite.inspect(out / "heads" / t / "model.tflite")["outputs"]
        assert [(o["name"], o["shape"][-1]) for o in outputs] == [("box", 4), ("landmarks", 10), ("cls", 2)]


def test_the_python_and_native_runners_answer_in_the_original_order_under_its_names(three_head_build, tmp_path):
    import platform

    from pipeline import native, runner
    from pipeline.gate import load_outputs

    out, proc = three_head_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        exe = native.binary(platform.machine())
    except native.NativeError as e:
        pytest.skip(str(e))
    np.save(tmp_path / "x.npy", np.load(out / ".." / "digits.npz")["x"][:16])
    model = out / "heads" / "tflite-int8" / "model.tflite"
    rt = native.runtime_for("run_litert.py")
    args = ["--inputs", tmp_path / "x.npy", "--outputs"]
    py = runner.run(RUNNERS / "run_litert.py", model, [*args, tmp_path / "py.npz"])
    c = runner.run_command([*native.command(rt, platform.machine(), exe=exe), model, *args, tmp_path / "c.npz"], 60)
    for res in (py, c):
        assert res["ok"], res
        assert [o["name"] for o in res["outputs"]] == ["box", "landmarks", "cls"]
    a, b = load_outputs(tmp_path / "py.npz"), load_outputs(tmp_path / "c.npz")
    assert [o.shape for o in a] == [o.shape for o in b] == [(16, 4), (16, 10), (16, 2)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_a_release_carries_each_heads_figures_and_test_vectors_in_the_original_order(three_head_build):
    import tarfile

    out, proc = three_head_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg, dist = out.parent / "heads.toml", out.parent / "dist"
    rel = run_cli(
        "release", "--config", cfg, "--target", "tflite-int8", "--out", out, "--version", "1.0.0", "--dist", dist
    )
    assert rel.returncode == 0, rel.stderr[-3000:]
    folder = dist / "heads-1.0.0"
    with tarfile.open(folder / "heads-1.0.0-tflite-int8.tar.gz") as tar:
        meta = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("release.json"))))
    versus = meta["versus_original_model"]
    assert [h["name"] for h in versus["heads"]] == ["box", "landmarks", "cls"] and versus["worst_head"]
    assert [t["name"] for t in meta["test_vectors"]["tolerance"]] == ["box", "landmarks", "cls"]
    assert "cls (scores): accuracy" in (folder / "MODEL_CARD.md").read_text()


def test_head_kinds_are_guessed_from_activations_and_values_and_declared_where_wrong():
    rng = np.random.default_rng(0)
    probs, boxes, logits = rng.dirichlet(np.ones(3), 20), rng.random((20, 4)), rng.normal(size=(20, 5))
    assert metrics.head_kinds([logits]) == ["scores"]  # a model's only (N, classes) output: a classifier's
    assert metrics.head_kinds([boxes, probs]) == ["regression", "scores"]
    assert metrics.head_kinds([boxes, boxes], activations=[None, "sigmoid"]) == ["regression", "scores"]
    assert metrics.head_kinds([boxes, probs], declared=("scores", "regression")) == ["scores", "regression"]


def test_cosine_treats_zero_vectors_and_relative_error_uses_the_originals_range():
    zero, one = np.zeros((2, 3)), np.ones((2, 3))
    assert metrics.cosine(zero, zero) == 1.0 and metrics.cosine(zero, one) == 0.0
    ref = np.array([[0.0, 2.0], [1.0, 4.0]])
    assert metrics.relative_error(ref + [[0, 0.4], [0, 0]], ref) == pytest.approx(0.1)


def test_each_head_is_gated_by_its_own_measure_and_the_headline_is_the_worst():
    rng = np.random.default_rng(1)
    boxes, probs = rng.random((100, 4)), rng.dirichlet(np.ones(2), 100)
    # The case: the box head's argmax disagrees (a meaningless figure), its cosine is fine.
    noisy = boxes + rng.normal(0, 0.02, boxes.shape)
    c = metrics.compare([noisy, probs], [boxes, probs], names=["box", "cls"])
    assert metrics.top1(noisy, boxes) < 0.97 and "top1_agreement" not in c["heads"][0]
    assert budget_reasons(c, BuildConfig()) == []
    assert worst_head(c, BuildConfig()).startswith("box: cosine similarity")
    far = metrics.compare([boxes[::-1], probs], [boxes, probs], names=["box", "cls"])
    reasons = budget_reasons(far, BuildConfig())
    assert len(reasons) == 1 and reasons[0].startswith("head 'box': cosine similarity with the original model")


def test_accuracy_applies_to_the_one_score_head_the_labels_fit():
    rng = np.random.default_rng(2)
    boxes, probs = rng.random((50, 4)), rng.dirichlet(np.ones(2), 50)
    labels = probs.argmax(1)
    c = metrics.compare([boxes, probs], [boxes, probs], labels)
    assert c["accuracy"] == 1.0 and "accuracy" in c["heads"][1] and "accuracy" not in c["heads"][0]


def test_post_training_candidates_are_scored_on_every_head():
    rng = np.random.default_rng(3)
    boxes, probs = rng.random((50, 4)), rng.dirichlet(np.ones(3), 50)
    worse = [boxes[::-1], probs]
    assert ptq.closeness([boxes, probs], worse) == pytest.approx(metrics.cosine(boxes[::-1], boxes))
    assert ptq.agreement([boxes, probs], worse) < 0.99 and ptq.agreement([boxes, probs], [boxes, probs]) == 1.0
    with pytest.raises(ValueError, match="do not match"):
        ptq.closeness([boxes, probs], [probs, boxes])


def test_head_kinds_and_the_metric_hook_are_checked_in_the_config():
    with pytest.raises(ConfigError, match="did you mean 'scores'"):
        from_dict({"model": {"heads": ["score"]}})
    with pytest.raises(ConfigError, match="--trust-model"):
        from_dict({"model": {"metric": "mine:measure"}})
    with pytest.raises(ConfigError, match="set model.metric"):
        from_dict({"model": {"heads": ["metric"]}})
    assert from_dict({"model": {"metric": "mine:measure", "trust": True}}).model.metric == "mine:measure"


def test_a_trusted_metric_hook_measures_the_heads_it_is_declared_for(tmp_path, monkeypatch):
    from pipeline import stages

    (tmp_path / "mymeasure.py").write_text(
        "import numpy as np\n\ndef within(out, ref):\n    return float(np.mean(np.abs(out - ref).max(-1) < 0.1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(4)
    boxes, probs = rng.random((40, 4)), rng.dirichlet(np.ones(3), 40)
    metrics.save_outputs(tmp_path / stages.REFERENCE_OUTPUTS, [boxes, probs])
    (tmp_path / stages.HEADS_FILE).write_text(json.dumps([{"name": "box"}, {"name": "cls", "activation": "softmax"}]))
    cfg = from_dict({"model": {"heads": ["metric", "auto"], "metric": "mymeasure:within", "trust": True}})
    heads = stages.heads(cfg, tmp_path)
    assert heads.names == ("box", "cls") and heads.kinds == ("metric", "scores")
    shifted = boxes + np.where(np.arange(40) < 4, 0.5, 0.0)[:, None]  # 4 of 40 samples off by 0.5
    c = metrics.compare([shifted, probs], [boxes, probs], None, heads.kinds, heads.names, heads.metric)
    assert c["heads"][0]["metric"] == pytest.approx(0.9)
    assert budget_reasons(c, BuildConfig()) == [
        "head 'box': metric with the original model 0.9000 is below min_agreement 0.97"
    ]
