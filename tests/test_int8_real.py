"""benchmarks/int8_real.py's summary over several splits (the measuring itself is the benchmark's run)."""

from benchmarks.int8_real import across_splits


def _split(seed, peer, ours):
    rows = [
        {"target": "onnx-int8", "who": "peer: onnxruntime", "top1": peer, "quantization": "int8-qdq"},
        {"target": "onnx-int8", "who": "this project", "top1": ours, "quantization": "int8-qdq"},
    ]
    return {"model": "fer", "seed": seed, "rows": rows}


def test_each_split_margin_over_the_best_peer_is_reported_with_their_mean_and_the_splits_meeting_the_goal():
    [row] = across_splits([_split(0, 0.90, 0.93), _split(1, 0.95, 0.94), _split(2, 0.80, 0.85)])
    assert row["points"] == {0: 3.0, 1: -1.0, 2: 5.0}
    assert (row["mean_points"], row["min_points"], row["met"]) == (2.33, -1.0, 2)
