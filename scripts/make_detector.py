"""Install-time / benchmark-time only, in a throwaway venv with torch and ultralytics (AGPL-3.0: never imported
by the package): a YOLO-family detector trained briefly here on a detection set made from scikit-image's
bundled pictures, exported to ONNX as Ultralytics users export it, with its data beside it.

The set: crops of the sample photographs as backgrounds, with three kinds of object pasted on them at random
places and sizes - faces (`skimage.data.lfw_subset()`), coins (cut from `skimage.data.coins()`) and filled
disks of a random colour - so the model has real classes to tell apart and boxes of many sizes.

    python make_detector.py OUT_DIR --arch yolov8n --imgsz 160 --epochs 12 --images 240 [--dynamic] [--seed 0]

Writes OUT_DIR/ARCH_IMGSZ.onnx (head [1, 4 + 3, anchors], boxes cx, cy, w, h in pixels), and the data:
OUT_DIR/data_IMGSZ/{train,val}/{images,labels} (YOLO txt: `class cx cy w h`, normalised) and
OUT_DIR/data_IMGSZ.npz: `x` float32 [N, 3, H, W] in 0..1 (RGB, what the ONNX file takes), `boxes` float32
[M, 4] xyxy pixels, `classes` int [M], `image` int [M] (which picture each box is on), `names`.
Needs no network: YOLO_OFFLINE=1, the model is built from its YAML (no pretrained weights).
"""

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
import skimage.data as sd
from PIL import Image

NAMES = ["face", "coin", "disk"]
BACKGROUNDS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
GRAY_BACKGROUNDS = ["camera", "moon", "page", "text", "grass", "gravel", "brick", "horse"]
# (x0, y0, x1, y1) of single coins in skimage.data.coins() (303 x 384)
COINS = [(10, 10, 60, 65), (70, 15, 120, 65), (125, 15, 170, 60), (180, 20, 228, 70), (235, 25, 285, 75)]


def backgrounds() -> list[np.ndarray]:
    out = [getattr(sd, n)()[..., :3] for n in BACKGROUNDS]
    for n in GRAY_BACKGROUNDS:
        g = getattr(sd, n)()
        out.append(np.repeat(g[..., None], 3, axis=2))
    return [np.asarray(b, np.uint8) for b in out]


def objects(rng):
    faces = sd.lfw_subset()  # 200 x 25 x 25 floats in 0..1
    coins = sd.coins()

    def face():
        f = (faces[rng.integers(len(faces))] * 255).astype(np.uint8)
        return np.repeat(f[..., None], 3, axis=2), None

    def coin():
        x0, y0, x1, y1 = COINS[rng.integers(len(COINS))]
        c = coins[y0:y1, x0:x1]
        return np.repeat(c[..., None], 3, axis=2), None

    def disk():
        s = 32
        yy, xx = np.mgrid[:s, :s]
        mask = (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 <= (s / 2) ** 2
        img = np.zeros((s, s, 3), np.uint8)
        img[mask] = rng.integers(0, 256, 3)
        return img, mask

    return [face, coin, disk]


def picture(rng, bgs, makers, size):
    bg = bgs[rng.integers(len(bgs))]
    h, w = bg.shape[:2]
    crop = int(rng.integers(min(h, w) // 3, min(h, w)))
    y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    img = np.asarray(Image.fromarray(bg[y : y + crop, x : x + crop]).resize((size, size)), np.uint8).copy()
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(len(makers)))
        obj, mask = makers[cls]()
        side = int(rng.integers(size // 8, size // 3))
        aspect = rng.uniform(0.75, 1.33)
        ow, oh = max(4, int(side * aspect)), side
        obj = np.asarray(Image.fromarray(obj).resize((ow, oh)))
        m = None if mask is None else np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((ow, oh))) > 127
        x0, y0 = int(rng.integers(0, size - ow + 1)), int(rng.integers(0, size - oh + 1))
        box = np.array([x0, y0, x0 + ow, y0 + oh], np.float32)
        if any(_iou(box, b) > 0.3 for b in boxes):
            continue
        region = img[y0 : y0 + oh, x0 : x0 + ow]
        if m is None:
            region[...] = obj
        else:
            region[m] = obj[m]
        boxes.append(box)
        classes.append(cls)
    return img, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_set(root: Path, n: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    bgs, makers = backgrounds(), objects(rng)
    npz = {"x": [], "boxes": [], "classes": [], "image": []}
    for split, count in (("train", n), ("val", max(16, n // 4))):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, boxes, classes = picture(rng, bgs, makers, size)
            Image.fromarray(img).save(root / split / "images" / f"{i:04d}.png")
            lines = []
            for (x0, y0, x1, y1), c in zip(boxes, classes):
                cx, cy, w, h = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
                lines.append(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (root / split / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
            if split == "val":
                npz["image"] += [len(npz["x"])] * len(boxes)
                npz["x"].append(img.transpose(2, 0, 1).astype(np.float32) / 255)
                npz["boxes"].append(boxes)
                npz["classes"].append(classes)
    yaml = root / "data.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    yaml.write_text(f"path: {root}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
    arrays = {
        "x": np.stack(npz["x"]),
        "boxes": np.concatenate(npz["boxes"]).astype(np.float32),
        "classes": np.concatenate(npz["classes"]).astype(np.int64),
        "image": np.array(npz["image"], np.int64),
        "names": np.array(NAMES),
    }
    return yaml, arrays


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", default="yolov8n")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dynamic", action="store_true", help="free batch, height and width in the ONNX file")
    a = ap.parse_args()

    import torch
    from ultralytics import YOLO

    torch.manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    data_dir = a.out / f"data_{a.imgsz}"
    if not (data_dir / "data.yaml").exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        yaml, arrays = make_set(data_dir, a.images, a.imgsz, a.seed)
        np.savez_compressed(a.out / f"data_{a.imgsz}.npz", **arrays)
    yaml = data_dir / "data.yaml"
    work = a.out / f"work_{a.arch}_{a.imgsz}"
    model = YOLO(f"{a.arch}.yaml")
    model.train(
        data=str(yaml), epochs=a.epochs, imgsz=a.imgsz, batch=16, workers=0, plots=False, amp=False,
        device="cpu", seed=a.seed, deterministic=True, project=str(work), name="train", exist_ok=True,
        verbose=False, val=True,
    )  # fmt: skip
    best = work / "train" / "weights" / "best.pt"
    trained = YOLO(str(best))
    metrics = trained.val(data=str(yaml), imgsz=a.imgsz, batch=16, workers=0, plots=False, device="cpu", verbose=False)
    exported = Path(trained.export(format="onnx", imgsz=a.imgsz, dynamic=a.dynamic, opset=17, simplify=False))
    dest = a.out / f"{a.arch}_{a.imgsz}{'_dynamic' if a.dynamic else ''}.onnx"
    shutil.move(exported, dest)
    print(f"{dest}: mAP50 {metrics.box.map50:.3f} mAP50-95 {metrics.box.map:.3f} on its val split")


if __name__ == "__main__":
    main()
