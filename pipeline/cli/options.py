"""Options several commands share, and their translation into API arguments."""

from __future__ import annotations

import sys
from pathlib import Path


def add_build_options(p) -> None:
    p.add_argument("--target", help="a target name, a comma list, or 'all' (default: the config's build.targets)")
    p.add_argument("--config", type=Path, help="TOML build config (default: the embedded digits demo)")
    p.add_argument("--out", type=Path, default=Path("build"), help="output folder (default: build/)")
    p.add_argument("--model", help="a pretrained model: .keras, .h5/.hdf5, SavedModel folder or .onnx (model.path)")
    p.add_argument("--data", help="data: .npz, IDX files or their folder, or an image folder (data.path)")
    p.add_argument(
        "--input-shape",
        metavar="N,C,H,W",
        help="fix an ONNX model's dynamic input dimensions for the "
        "conversion through Keras, in the model's own layout, e.g. 1,3,224,224 (model.onnx_input_shape; "
        "by default taken from the data)",
    )
    from pipeline.config import PRUNE_METHODS  # standard library only: fine for --help

    p.add_argument(
        "--prune",
        metavar="METHOD",
        choices=PRUNE_METHODS,
        help=f"pruning method (prune.method): {', '.join(PRUNE_METHODS)}",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail instead of falling back (layers left unpruned/unquantized, PTQ instead of QAT)",
    )
    p.add_argument(
        "--trust-model",
        action="store_true",
        default=None,
        help="allow code in the model file (Keras Lambda layers) to run; only for files you trust",
    )


def build_kwargs(args) -> dict:
    """The API's build arguments from the build options."""
    overrides = {}
    if getattr(args, "prune", None):
        overrides["prune.method"] = args.prune
    if getattr(args, "strict", None):
        overrides["build.strict"] = True
    if getattr(args, "trust_model", None):
        overrides["model.trust"] = True
    if getattr(args, "input_shape", None):
        overrides["model.onnx_input_shape"] = input_shape(args.input_shape)
    return {
        "config": args.config,
        "targets": args.target,
        "out": args.out,
        "model": args.model,
        "data": args.data,
        "overrides": overrides,
        "log": log,
    }


def input_shape(text: str) -> list[int]:
    from pipeline.errors import UsageError

    try:
        shape = [int(d) for d in text.split(",")]
    except ValueError:
        raise UsageError(
            f"--input-shape must be integers separated by commas, e.g. 1,3,224,224; got {text!r}"
        ) from None
    if min(shape) < 1:
        raise UsageError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def add_device_arguments(p) -> None:
    """Options of the devices that need them (bench, device check, build --verify-on)."""
    p.add_argument(
        "--known-hosts",
        type=Path,
        metavar="FILE",
        help="ssh:// devices: check the board's host key against FILE only "
        "(default: ~/.ssh/known_hosts and the system's); an unknown or changed key fails",
    )
    p.add_argument("--identity", type=Path, metavar="FILE", help="ssh:// devices: the private key to log in with")
    p.add_argument(
        "--keep",
        action="store_true",
        help="ssh:// devices: leave the copied files on the board (default: removed after each run)",
    )


def device_options(args) -> dict:
    return {
        "known_hosts": getattr(args, "known_hosts", None),
        "identity": getattr(args, "identity", None),
        "keep": bool(getattr(args, "keep", False)),
    }


def log(line: str) -> None:
    print(line, file=sys.stderr)


def load_config(args):
    """The effective config of the build options (checked: bad keys, missing files)."""
    from pipeline.api import load_config as load

    k = build_kwargs(args)
    return load(k["config"], model=k["model"], data=k["data"], overrides=k["overrides"])
