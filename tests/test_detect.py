"""Detectors' boxes: decode + NMS of YOLO heads and the box figures (targets/detect.py), on hand-made boxes."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from targets import detect, metrics


def v8_head(rows, classes=2, anchors=21):
    """A [1, 4 + classes, anchors] head: each row (cx, cy, w, h, class, score) one anchor, the rest empty."""
    raw = np.zeros((1, 4 + classes, anchors), np.float32)
    for a, (cx, cy, w, h, c, s) in enumerate(rows):
        raw[0, :4, a] = cx, cy, w, h
        raw[0, 4 + c, a] = s
    return raw


def dets(boxes, scores, classes):
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes))


def test_a_v8_head_decodes_to_xyxy_boxes_of_its_best_class_above_the_score_threshold():
    raw = v8_head([(50, 40, 20, 10, 1, 0.9), (10, 10, 4, 4, 0, 0.2)])
    [(boxes, scores, classes)] = detect.decode(raw, "v8", conf=0.25)
    np.testing.assert_allclose(boxes, [[40, 35, 60, 45]])
    np.testing.assert_allclose(scores, [0.9])
    assert classes.tolist() == [1]


def test_nms_drops_an_overlapping_box_of_the_same_class_and_keeps_one_of_another_class():
    # Boxes 0 and 1: IoU 0.8 (20x10 vs 20x8 inside it); box 2 overlaps as much but is of class 1.
    raw = v8_head([(50, 40, 20, 10, 0, 0.9), (50, 40, 20, 8, 0, 0.8), (50, 40, 20, 8, 1, 0.7)])
    [(boxes, scores, classes)] = detect.decode(raw, "v8", iou=0.45)
    np.testing.assert_allclose(scores, [0.9, 0.7])
    assert classes.tolist() == [0, 1]
    # Above the IoU threshold of 0.8 both class-0 boxes stay.
    [(_, scores, _)] = detect.decode(raw, "v8", iou=0.85)
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.7])


def test_a_v5_head_scores_a_box_by_objectness_times_class_score():
    raw = np.zeros((1, 21, 7), np.float32)
    raw[0, 0] = [50, 40, 20, 10, 0.5, 0.2, 0.9]  # 0.45 for class 1
    raw[0, 1] = [10, 10, 4, 4, 0.4, 0.5, 0.1]  # 0.2: under 0.25
    [(boxes, scores, classes)] = detect.decode(raw, "v5")
    np.testing.assert_allclose(boxes, [[40, 35, 60, 45]])
    np.testing.assert_allclose(scores, [0.45], rtol=1e-6)
    assert classes.tolist() == [1]


def test_the_layout_is_read_from_the_shape_and_the_anchor_count_of_the_input_size():
    assert detect.anchors(160, 160) == 525 and detect.anchors(640, 640) == 8400
    assert detect.layout_of((1, 84, 8400), (640, 640)) == "v8"
    assert detect.layout_of((1, 25200, 85)) == "v5"
    assert detect.layout_of((1, 84, 8400), (320, 320)) is None  # 2100 anchors at 320 px
    assert detect.layout_of((1, 10)) is None
    assert metrics.head_kinds([np.zeros((2, 7, 525))], input_hw=(160, 160)) == ["detect"]
    assert metrics.head_kinds([np.zeros((2, 7, 525)), np.full((2, 3), 1 / 3)]) == ["regression", "scores"]


def test_box_f1_counts_boxes_of_the_same_class_that_overlap_by_half():
    ref = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 1]), dets([[0, 0, 10, 10]], [0.9], [0])]
    # Image 0: the first box shifted by 2 px (IoU 80/120 = 0.667: found), the second of the wrong class; image 1:
    # a box half outside (IoU 50/150 = 0.333: not found) and an extra box.
    got = [
        dets([[2, 0, 12, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0]),
        dets([[5, 0, 15, 10], [40, 40, 50, 50]], [0.9, 0.5], [0, 0]),
    ]
    assert detect.box_f1(ref, got) == pytest.approx(2 * 1 / (3 + 4))
    assert detect.box_f1(ref, ref) == 1.0
    assert detect.box_f1([dets([], [], [])], [dets([], [], [])]) == 1.0


def test_a_reference_box_is_matched_once_by_the_highest_scoring_box():
    ref = [dets([[0, 0, 10, 10]], [1.0], [0])]
    got = [dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.6, 0.7], [0, 0])]
    assert detect.box_f1(ref, got) == pytest.approx(2 * 1 / 3)


def test_map50_is_cocos_101_point_average_precision_over_the_reference_classes():
    ref = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0, 0]), dets([[0, 0, 10, 10]], [1], [1])]
    # Class 0: a false box scored highest, then both boxes: precision 0, 1/2, 2/3 at recall 0, 1/2, 1;
    # interpolated, 2/3 at every recall point. Class 1: found exactly, AP 1.
    got = [
        dets([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0]),
        dets([[0, 0, 10, 10]], [0.9], [1]),
    ]
    assert detect.map50(ref, got) == pytest.approx((2 / 3 + 1) / 2)
    # Recall 1/2 for class 0 (one of two boxes found): 51 of 101 points at precision 1.
    half = [dets([[0, 0, 10, 10]], [0.9], [0]), dets([[0, 0, 10, 10]], [0.9], [1])]
    assert detect.map50(ref, half) == pytest.approx((51 / 101 + 1) / 2)
    assert detect.map50(ref, ref) == 1.0


def test_map50_95_averages_ten_iou_thresholds():
    ref = [dets([[0, 0, 10, 10]], [1], [0])]
    got = [dets([[0, 0, 10, 8]], [0.9], [0])]  # IoU 0.8: found at 0.50 ... 0.80, missed at 0.85 ... 0.95
    assert detect.map50_95(ref, got) == pytest.approx(0.7)
    # Labels (boxes and classes, no scores) are ground truth too.
    labels = detect.labels_by_image([[0, 0, 10, 10]], [0], [0], 1)
    assert detect.map50_95(labels, got) == pytest.approx(0.7)


def test_a_detector_heads_figures_are_its_boxes_against_the_originals():
    ref = v8_head([(50, 40, 20, 10, 1, 0.9), (20, 20, 10, 10, 0, 0.8)])
    out = v8_head([(50, 40, 20, 10, 1, 0.85), (20, 20, 10, 10, 0, 0.1)])  # the second box lost its score
    f = metrics.compare([out], [ref], kinds=["detect"])
    assert f["box_f1"] == pytest.approx(2 / 3)
    assert f["map50"] == pytest.approx(0.5)
    assert (f["boxes"], f["reference_boxes"]) == (1, 2)
    assert metrics.closeness([out], [ref], ["detect"])["agreement"] == pytest.approx(2 / 3)
    strict = detect.Detect(conf=0.9)  # keeps no box of either: the same (no) boxes
    assert metrics.compare([out], [ref], kinds=["detect"], settings=strict)["box_f1"] == 1.0


ASSETS = Path(os.environ.get("EDGE_EXPORT_TEST_ASSETS", ROOT / ".venv" / "test-assets"))


# relative to the CLI's working folder (run_cli's: ROOT), as users type them; onnx2tf runs in a folder of its own
YOLO160 = (
    *("--model", os.path.relpath(ASSETS / "yolov8n_160.onnx", ROOT)),
    *("--data", os.path.relpath(ASSETS / "yolov8n_160_data.npz", ROOT)),
    *("--prune", "none"),
)


@pytest.fixture(scope="module")
def yolo160(tmp_path_factory):
    """A YOLOv8n trained here (scripts/make_detector.py), 160 px, batch 1 (a fixed-batch PyTorch export), with its
    labelled boxes, built once for tflite-fp32 (through onnx2tf, whose head Concat fails without the box branch put
    back), onnx-fp32, openvino-fp32 and ncnn-fp32 (pnnx from the user's graph): (the build's --out, its process)."""
    from conftest import run_cli

    if not (ASSETS / "yolov8n_160.onnx").exists():
        pytest.skip("run scripts/fetch_test_assets.sh first")
    out = tmp_path_factory.mktemp("yolo160")
    return out, run_cli("build", *YOLO160, "--target", "tflite-fp32,onnx-fp32,openvino-fp32,ncnn-fp32", "--out", out)


@pytest.mark.slow
def test_a_yolov8_detector_builds_for_each_runtime_and_is_judged_by_its_boxes(yolo160):
    """Each file keeps the original's output layout and finds the original's boxes; the table and manifest lead
    with the boxes."""
    out, proc = yolo160
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "box F1 vs original" in proc.stdout and "mAP50-95 (labels)" in proc.stdout, proc.stdout
    manifest = json.loads((out / "yolov8n_160" / "manifest.json").read_text())
    arts = {a["target"]: a for a in manifest["artifacts"]}
    for a in arts.values():
        assert a["status"] == "ok", a
        assert a["box_f1"] >= 0.95 and a["map50"] >= 0.9, a
        assert a["reference_boxes"] > 0, a  # the trained model finds boxes on the held-out pictures
        assert 0 < a["map50_95_labels"] <= 1 and a["reference_map50_95_labels"] > 0, a
    assert arts["tflite-fp32"]["outputs"][0]["shape"] == [1, 7, 525]  # [1, 4 + classes, anchors], as exported
    assert [(o["name"], o["shape"]) for o in arts["onnx-fp32"]["outputs"]] == [("output0", [1, 7, 525])]
    assert arts["openvino-fp32"]["outputs"][0]["name"] == "output0"
    assert [(o["name"], o["shape"]) for o in arts["ncnn-fp32"]["outputs"]] == [("output0", [1, 7, 525])]


@pytest.mark.slow
def test_bench_on_a_detector_times_decode_and_nms_of_each_rows_own_outputs_where_it_ran(yolo160, tmp_path):
    """Each bench row of a detector also times targets/detect.py's decode + NMS on the outputs the row's own file
    gave, in the runner process (on a board, on the board): per image, and end to end with the row's p50."""
    from conftest import run_cli

    out, _ = yolo160
    rows_file = tmp_path / "rows.json"
    args = ("--target", "onnx-fp32,tflite-fp32,ncnn-fp32", "--samples", "5", "--runs", "5", "--min-seconds", "0")
    proc = run_cli("bench", *YOLO160, *args, "--out", out, "--json", rows_file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decode+NMS ms" in proc.stdout and "end-to-end ms" in proc.stdout, proc.stdout
    rows = json.loads(rows_file.read_text())
    assert sorted(r["target"] for r in rows) == ["ncnn-fp32", "onnx-fp32", "tflite-fp32"], rows
    for r in rows:
        assert r["status"] == "ok" and r["postprocess_error"] is None, r
        assert 0 < r["postprocess_ms"] < r["p50_ms"], r  # numpy on ~2 boxes per picture, against a CNN
        assert r["end_to_end_ms"] == pytest.approx(r["p50_ms"] + r["postprocess_ms"]), r
        assert r["postprocess_boxes_per_image"] > 0, r  # real pictures: the files find boxes


def test_a_sub_from_a_constant_goes_to_onnx2tf_as_an_add_of_the_negation_with_the_same_values(tmp_path):
    """onnx2tf's TFLite files compute x - c for Sub(c, x) (a YOLO head's anchor - distance): the graph it gets
    has Add(Neg(x), c) instead; a constant computed from a Shape (a dynamic export's anchors) counts."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from pipeline.models import _without_const_sub

    c = helper.make_tensor("c", TensorProto.FLOAT, [1, 3], [1.0, 2.0, 3.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [
        helper.make_node("Sub", ["c", "x"], ["a"]),  # constant first: rewritten
        helper.make_node("Shape", ["x"], ["s"], start=1),  # [3]
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["sf", "a"], ["b"]),  # from the shape only: rewritten
        helper.make_node("Sub", ["b", "c"], ["d"]),  # constant second: kept
        helper.make_node("Unsqueeze", ["d", "axes"], ["y"]),  # one 3-D output: a detector head's rank
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3])],
        [c, axes],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    _without_const_sub(tmp_path / "m.onnx", tmp_path / "r.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "r.onnx").graph.node]
    assert ops == ["Neg", "Add", "Shape", "Cast", "Neg", "Add", "Sub", "Unsqueeze"]
    x = np.array([[0.5, -1.0, 4.0]], np.float32)
    run = lambda p: ort.InferenceSession(str(p)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run(tmp_path / "r.onnx"), run(tmp_path / "m.onnx"))


def test_a_free_shape_yolo_heads_output_keeps_its_layout_through_the_conversion():
    """Free dims fit the channels-last permutation as well; a YOLO head's output is not permuted (onnx2tf's
    conversion keeps it [N, 4 + C, A]), an image-like one still is."""
    from pipeline.interface import output_perm

    assert output_perm([None, None, None], [25, 84, 525]) is None
    assert output_perm([None, None, None, None], [25, 8, 8, 3]) == [0, 2, 3, 1]
