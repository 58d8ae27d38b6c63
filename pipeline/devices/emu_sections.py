"""Run a runner script's main() several times in one (emulated) Python: one counted timed section each.

Usage: python emu_sections.py N RUNNER MODEL [runner arguments...]

The first pass gets the arguments as given (e.g. with --outputs); later passes drop --outputs and
only time. Only the last pass profiles (--profile) and decodes a detector's boxes (--detect: one more counted
section, after its timed one): one of each is enough. It stops at the first failure; each pass prints its JSON
line as the runner does, so the last line is the last pass's result. Under qemu, starting Python costs seconds,
a pass milliseconds: this gives the instruction-count plugin N sections for one start.

Standard library only, never the `pipeline` package: it runs in the guest, beside the runners.
"""

import importlib.util
import os
import sys


def _drop(argv, flag):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        else:
            out.append(a)
    return out


def main(argv):
    passes, runner, args = int(argv[0]), os.path.abspath(argv[1]), argv[2:]
    sys.path.insert(0, os.path.dirname(runner))
    spec = importlib.util.spec_from_file_location("edge_export_runner", runner)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import runner_common  # the runner put its folder on sys.path and imported this same module

    rc = 0
    for i in range(passes):
        last = i == passes - 1
        rc = runner_common.main(
            module.RUNTIME, args if last else _drop([a for a in args if a != "--profile"], "--detect")
        )
        if rc:
            break
        args = _drop(args, "--outputs")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
