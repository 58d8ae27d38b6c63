"""The fitting every TensorFlow stage shares (training, fine-tuning, pruning, QAT)."""

import numpy as np
import pytest

from pipeline import config, stages
from pipeline.data import Dataset


# The rate of the last of 15 steps: cosine decays from 0.01 to 0 at step 15, so step 14 is 0.5 * (1 + cos(14/15 pi)).
@pytest.mark.parametrize(
    "schedule, last_rate", [("constant", 0.01), ("cosine", 0.01 * 0.5 * (1 + np.cos(np.pi * 14 / 15)))]
)
def test_each_fit_follows_train_lr_schedule_to_its_last_step(schedule, last_rate):
    tf, keras = stages.tf_setup(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 2, 40)
    ds = Dataset(x, y, x[:8], y[:8], x[:8], ("a", "b"), {})
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    cfg = config.from_dict({"train": {"batch_size": 8, "lr_schedule": schedule}})
    stages._fit(keras, model, ds, stages.Teacher(model, ds, 8), 3, 0.01, cfg, "test")
    opt = model.optimizer
    assert int(opt.iterations) == 3 * 5
    rate = opt.learning_rate
    rate = rate(opt.iterations) if callable(rate) else rate
    assert float(rate) == pytest.approx(last_rate, rel=1e-4)


def test_distillation_without_labels_fits_the_teachers_probabilities_with_kl_at_a_temperature():
    """An unlabelled student learns to answer as the teacher does: top-1 agreement rises with KL distillation."""
    tf, keras = stages.tf_setup(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, activation="softmax")])
    teacher_out = stages.predict(teacher, x)
    ds = Dataset(x, None, x[:100], None, x[:50], (), {})
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, activation="softmax")])
    t = stages.Teacher(student, ds, 32, teacher_out)
    assert not t.labelled and t.scores
    np.testing.assert_allclose(np.exp(t.y), teacher_out[0], rtol=1e-4, atol=1e-6)  # fits log-probabilities
    agree = lambda: float(np.mean(stages.predict(student, x)[0].argmax(-1) == teacher_out[0].argmax(-1)))
    before = agree()
    cfg = config.from_dict({"train": {"batch_size": 32}})
    stages._fit(keras, student, ds, t, 30, 0.05, cfg, "distil")
    assert before < 0.6 and agree() > 0.95, (before, agree())
