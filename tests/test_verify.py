from collections import Counter

import numpy as np

from pipeline.config import BuildConfig
from pipeline.gate import compare, gate
from targets.tflite import classify

F32 = [{"dtype": "float32"}]
I8 = [{"dtype": "int8"}]


def test_quantization_is_named_from_the_tensor_types_in_the_file():
    assert classify(Counter(float32=8), Counter(float32=5), F32, F32) == "fp32"
    assert classify(Counter(float16=8, float32=8), Counter(float32=5), F32, F32) == "fp16"
    assert classify(Counter(int8=8, float32=4), Counter(float32=5), F32, F32) == "dynamic-range"
    assert classify(Counter(int8=8, int32=4), Counter(int8=5), I8, I8) == "int8"
    assert classify(Counter(int8=8, int32=4), Counter(int8=5), F32, F32) == "int8-float-io"


def test_the_gate_names_both_accuracies_and_the_tolerance():
    reasons = gate({"quantization": "int8", "accuracy": 0.90, "reference_accuracy": 0.97}, "int8", BuildConfig())
    assert reasons == [
        "accuracy 0.9000 vs the original model's 0.9700: drop of 7.00 points exceeds max_accuracy_drop 1"
    ]
    assert gate({"quantization": "int8", "accuracy": 0.965, "reference_accuracy": 0.97}, "int8", BuildConfig()) == []


def test_a_dynamic_range_file_never_passes_as_int8():
    reasons = gate(
        {"quantization": "dynamic-range", "accuracy": 0.97, "reference_accuracy": 0.97}, "int8", BuildConfig()
    )
    assert reasons == ["file is dynamic-range, not the int8 this target promises"]


def test_compare_counts_agreement_and_the_largest_difference():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    out = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    c = compare([out], [ref], np.array([0, 1, 1]))
    assert c["top1_agreement"] == 2 / 3 and c["accuracy"] == 1.0
    assert np.isclose(c["max_abs_diff"], 0.2)


def test_without_labels_the_gate_uses_agreement_or_cosine():
    low = {"quantization": "int8", "top1_agreement": 0.9, "reference_accuracy": None}
    assert gate(low, "int8", BuildConfig()) == [
        "top-1 agreement with the original model 0.9000 is below min_agreement 0.97"
    ]
    maps = {"quantization": "int8", "cosine": 0.95, "reference_accuracy": None}
    assert gate(maps, "int8", BuildConfig()) == [
        "cosine similarity with the original model 0.9500 is below min_cosine 0.99"
    ]


def test_several_outputs_are_compared_one_by_one_and_summarised_by_the_worst():
    rng = np.random.default_rng(0)
    scores, boxes = rng.dirichlet(np.ones(3), 4), rng.random((4, 2, 4))
    c = compare([scores, boxes + 0.5], [scores, boxes], None)
    assert c["top1_agreement"] == 1.0 and np.isclose(c["max_abs_diff"], 0.5)
    assert [h["kind"] for h in c["heads"]] == ["scores", "regression"]
    assert c["heads"][0]["cosine"] > c["heads"][1]["cosine"] == c["cosine"]
