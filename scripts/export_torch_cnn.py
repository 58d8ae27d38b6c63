"""Install-time only (scripts/fetch_test_assets.sh, in a throwaway venv with torch): a small PyTorch CNN,
seeded, exported to ONNX by the README's route, with its inputs and PyTorch's own outputs beside it, and the
same model exported with `torch.onnx.export`'s defaults (no dynamic_axes: the batch fixed at 1), as most
PyTorch users' files are.

    python export_torch_cnn.py OUT.onnx OUT_io.npz [OUT_b1.onnx]
"""

import sys

import numpy as np
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1),
    nn.BatchNorm2d(8),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(16, 10),
).eval()
with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding them is tested
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 1.5)
torch.onnx.export(
    model,
    torch.randn(1, 3, 32, 32),
    sys.argv[1],
    input_names=["pixels"],
    output_names=["logits"],
    dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}},
    opset_version=17,
    dynamo=False,
)
if len(sys.argv) > 3:
    torch.onnx.export(
        model, torch.randn(1, 3, 32, 32), sys.argv[3], input_names=["input"], output_names=["logits"], dynamo=False
    )
# Smooth images (blurred noise), NCHW as PyTorch takes them, and what PyTorch answers for each.
rng = np.random.default_rng(0)
x = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.random((160, 3, 36, 36), dtype=np.float32)), 5, 1)
with torch.no_grad():
    logits = model(x).numpy()
np.savez(sys.argv[2], x=x.numpy(), logits=logits)
