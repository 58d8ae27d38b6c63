"""Command line. Imports stay light here: `--help` and `targets` must never load TensorFlow."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from pipeline import __version__
from pipeline.errors import PipelineError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's own errors get the same one-line form and exit code as ours.
        raise UsageError(f"{self.prog}: {message}")


# name -> module with HELP, add_arguments(p) and run(args) -> int. A new command is one module + one row.
# The modules import nothing heavy at module level (they load for --help).
COMMANDS: dict[str, str] = {
    "build": "pipeline.cli.build",
    "targets": "pipeline.cli.targets",
    "config": "pipeline.cli.config",
    "bench": "pipeline.cli.bench",
    "release": "pipeline.cli.release",
    "verify": "pipeline.cli.verify",
    "inspect": "pipeline.cli.inspect",
    "cache": "pipeline.cli.cache",
    "device": "pipeline.cli.device",
    "sweep": "pipeline.cli.sweep",
    "report": "pipeline.cli.report",
}


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m pipeline",
        description=(
            "Train, prune, quantize and export a model to verified edge artifacts "
            "(TFLite, ONNX, OpenVINO). Run `build` with no options for the digits demo."
        ),
    )
    p.add_argument("--version", action="version", version=f"edge-export {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP)))
    return p


def _os_error(e: OSError, out) -> tuple[str, int]:
    """One line and an exit code for a failed read or write; a full disk is named as such (numpy's
    short write has no errno), a folder that cannot be written is a usage error."""
    import shutil
    from pathlib import Path

    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
        return f"cannot be written: {e.strerror or e}{where}: choose another --out", 2
    full = e.errno == errno.ENOSPC
    if out is not None and not full and e.errno is None:
        probe = Path(out)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        full = shutil.disk_usage(probe).free < 1 << 20
    if full:
        return (
            f"disk full while writing{where} ({e.strerror or e}): free some space or choose another --out; "
            "finished stages are cached and nothing half-written was kept"
        ), 1
    return f"{e.strerror or e}{where}", 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    args = None
    try:
        args = parser().parse_args(argv)
        if not args.command:
            parser().print_help()
            return 2
        return importlib.import_module(COMMANDS[args.command]).run(args)
    except PipelineError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if debug:
            raise
        line, code = _os_error(e, getattr(args, "out", None))
        print(f"error: {line}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted: finished stages are cached; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)", file=sys.stderr)
        return 1
