"""Command line. Imports stay light here: `--help` and `targets` must never load TensorFlow."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.errors import PipelineError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's own errors get the same one-line form and exit code as ours.
        raise UsageError(f"{self.prog}: {message}")


# Commands that live in their own module: name -> module exposing HELP, add_arguments(p), run(args) -> int.
# Those modules must import nothing heavy at module level (they load for --help).
MODULE_COMMANDS: dict[str, str] = {"bench": "pipeline.bench", "release": "pipeline.release",
                                   "verify": "pipeline.release_verify", "inspect": "pipeline.inspect_cmd",
                                   "cache": "pipeline.cache_cmd", "device": "pipeline.device_cmd"}


def add_build_options(p) -> None:
    p.add_argument("--target", help="a target name, a comma list, or 'all' (default: the config's build.targets)")
    p.add_argument("--config", type=Path, help="TOML build config (default: the embedded digits demo)")
    p.add_argument("--out", type=Path, default=Path("build"), help="output folder (default: build/)")
    p.add_argument("--model", help="a pretrained model: .keras, .h5/.hdf5, SavedModel folder or .onnx (model.path)")
    p.add_argument("--data", help="data: .npz, IDX files or their folder, or an image folder (data.path)")
    p.add_argument("--input-shape", metavar="N,C,H,W", help="fix an ONNX model's dynamic input dimensions for the "
                   "conversion through Keras, in the model's own layout, e.g. 1,3,224,224 (model.onnx_input_shape; "
                   "by default taken from the data)")
    from pipeline.config import PRUNE_METHODS  # standard library only: fine for --help

    p.add_argument("--prune", metavar="METHOD", choices=PRUNE_METHODS,
                   help=f"pruning method (prune.method): {', '.join(PRUNE_METHODS)}")
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail instead of falling back (layers left unpruned/unquantized, PTQ instead of QAT)")
    p.add_argument("--trust-model", action="store_true", default=None,
                   help="allow code in the model file (Keras Lambda layers) to run; only for files you trust")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pipeline", description=(
        "Train, prune, quantize and export a model to verified edge artifacts "
        "(TFLite, ONNX, OpenVINO). Run `build` with no options for the digits demo."))
    p.add_argument("--version", action="version", version=f"edge-export {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    b = sub.add_parser("build", help="build and verify artifacts", description=(
        "Run the stages (train, prune, QAT, export, verify), reusing cached stages, and write "
        "OUT/<model>/<target>/ and OUT/<model>/manifest.json."))
    add_build_options(b)
    b.add_argument("--verify-on", metavar="DEVICE", help="also load each artifact on DEVICE (emu:rpi4, ssh://user@host; "
                   "comma list) and compare its outputs with x86's: recorded as arm_check in the manifest")
    from pipeline.devices import add_device_arguments

    add_device_arguments(b)
    sub.add_parser("targets", help="list the deployment targets")
    c = sub.add_parser("config", help="print the config reference with every default")
    c.add_argument("--check", type=Path, metavar="FILE", help="validate FILE and print its effective config")
    for name, module in MODULE_COMMANDS.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=mod.HELP, description=mod.HELP))
    return p


def cmd_targets(args) -> int:
    from pipeline import report
    from targets import TARGETS

    rows = [{"name": t.name, "quantization": t.quantization, "from": t.source, "runtime": t.runner,
             "description": t.description} for t in TARGETS.values()]
    print(report.table(rows, [("name", "target"), ("quantization", "quantization"), ("from", "made from"),
                              ("runtime", "runner"), ("description", "contains")]))
    return 0


def cmd_config(args) -> int:
    from pipeline import config

    if args.check:
        import json

        print(json.dumps(config.load(args.check).as_dict(), indent=2))
    else:
        print(config.reference())
    return 0


def load_config(args):
    """The config file with the command line's overrides, checked before anything is written."""
    from pipeline import config

    cfg = config.load(args.config)
    if args.model:
        cfg = cfg.replace("model", path=args.model)
    if args.data:
        cfg = cfg.replace("data", path=args.data)
    if getattr(args, "input_shape", None):
        try:
            shape = tuple(int(d) for d in args.input_shape.split(","))
        except ValueError:
            raise UsageError(f"--input-shape must be integers separated by commas, e.g. 1,3,224,224; got {args.input_shape!r}") from None
        if not shape or min(shape) < 1:
            raise UsageError(f"--input-shape must be positive integers, got {args.input_shape!r}")
        cfg = cfg.replace("model", onnx_input_shape=shape)
    if getattr(args, "prune", None):
        cfg = cfg.replace("prune", method=args.prune)
    if args.strict:
        cfg = cfg.replace("build", strict=True)
    if args.trust_model:
        cfg = cfg.replace("model", trust=True)
    if cfg.model.path:
        from pipeline.models import kind

        kind(Path(cfg.model.path))
    if cfg.data.path and not Path(cfg.data.path).exists():
        raise UsageError(f"data file not found: {cfg.data.path}")
    return cfg


def ensure_built(args, default_targets=None):
    """Build (from the cache where possible) what `args` asks for. Returns (config, targets, manifest rows).

    Shared by every command that works on a build's artifacts (build, bench, release)."""
    from targets import resolve

    cfg = load_config(args)
    targets = resolve(args.target or default_targets or cfg.build.targets)
    _check_out(args.out)
    from pipeline.build import Builder

    manifest = Builder(cfg, args.out, log=lambda m: print(m, file=sys.stderr)).run(targets)
    names = {t.name for t in targets}
    return cfg, targets, [a for a in manifest["artifacts"] if a["target"] in names]


def cmd_build(args) -> int:
    from pipeline.build import summary

    from pipeline import devices

    on = devices.verify_devices(getattr(args, "verify_on", None), **devices.device_options(args))  # a board not set up: one line, nothing built
    cfg, _, rows = ensure_built(args)
    print(summary({"artifacts": rows}))
    arm_failed = devices.verify_on(on, cfg, args.out, rows, log=lambda m: print(m, file=sys.stderr)) if on else 0
    print(f"manifest: {args.out / cfg.model.name / 'manifest.json'}")
    failed = [a for a in rows if a["status"] != "ok"]
    for a in failed:
        print(f"error: {a['target']} {a['status'].replace('_', ' ')}: {a['reason']}", file=sys.stderr)
    return 1 if failed or arm_failed else 0


def _check_out(out: Path) -> None:
    import os

    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"output folder {out} cannot be written: choose another with --out")


COMMANDS = {"build": cmd_build, "targets": cmd_targets, "config": cmd_config}


def _os_error(e: OSError, out: Path | None) -> str:
    """One line for a failed read or write; a full disk is named as such (numpy's short write has no errno)."""
    import shutil

    where = f" ({e.filename})" if e.filename else ""
    full = e.errno == errno.ENOSPC
    if out is not None and not full:
        probe = Path(out)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        full = shutil.disk_usage(probe).free < 1 << 20
    if full:
        return (f"disk full while writing{where} ({e.strerror or e}): free some space or choose another --out; "
                "finished stages are cached and nothing half-written was kept")
    return f"{e.strerror or e}{where}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    args = None
    try:
        args = parser().parse_args(argv)
        if not args.command:
            parser().print_help()
            return 2
        if args.command in MODULE_COMMANDS:
            return importlib.import_module(MODULE_COMMANDS[args.command]).run(args)
        return COMMANDS[args.command](args)
    except PipelineError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if debug:
            raise
        print(f"error: {_os_error(e, getattr(args, 'out', None))}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished stages are cached; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        print(f"internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)", file=sys.stderr)
        return 1
