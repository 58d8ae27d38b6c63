"""`device`: the boards bench and build --verify-on can run on.

  device ls                      every profile, and whether its emulated board is set up
  device setup emu:rpi4 [...]    build the emulated aarch64 board (once; ~20 s, then cached)
  device check DEVICE [...]      what a board has: arch, Python, numpy and each runtime's version;
                                 with --harness native: whether it can run the native bundle (arch, glibc)

Imports stay light at module level: this module is loaded for `--help`.
"""

from __future__ import annotations

import sys
import time

from pipeline.errors import UsageError

HELP = "list, set up (emu:rpi4) or check (ssh://user@host) the boards bench and build --verify-on run on"

ACTIONS = ("ls", "setup", "check")


def add_arguments(p) -> None:
    from pipeline.cli.options import add_device_arguments

    p.add_argument(
        "action",
        choices=ACTIONS,
        help="ls: list the profiles; setup: build emulated boards; check: what a board has installed",
    )
    p.add_argument(
        "devices",
        nargs="*",
        metavar="DEVICE",
        help="emu:rpi3, emu:rpi4, emu:rpi5 (setup, check) or ssh://user@host[:port] (check)",
    )
    add_device_arguments(p)
    p.add_argument(
        "--harness",
        default="python",
        help="check: python (what the runner scripts need, default) "
        "or native (what the native runner's bundle needs: arch and glibc, no Python); comma list",
    )


def _spec(spec: str) -> str:
    """`rpi4` is short for `emu:rpi4`."""
    return spec if spec.startswith(("emu:", "ssh:", "local")) else f"emu:{spec}"


def cmd_ls(args) -> int:
    from pipeline import report
    from pipeline.devices import emulator as emu
    from pipeline.devices.profiles import PROFILES

    rows = []
    for d in PROFILES.values():
        if d.emulated:
            status = "ready" if emu.is_ready(d.name) else "not set up"
            name, cpu = f"emu:{d.name}", d.cpu
        else:
            name, cpu, status = "local", "native", "ready"
        rows.append(
            {
                "device": name,
                "cpu": cpu,
                "cores": d.cores,
                "memory_mb": d.memory_mb,
                "status": status,
                "description": d.description,
            }
        )
    print(
        report.table(
            rows,
            [
                ("device", "device"),
                ("cpu", "qemu -cpu"),
                ("cores", "cores"),
                ("memory_mb", "memory MB"),
                ("status", "status"),
                ("description", "board"),
            ],
        )
    )
    missing = [r["device"] for r in rows if r["status"] != "ready"]
    if missing:
        print(f"set up with: python -m pipeline device setup {' '.join(missing)}")
    print(
        f"emulated boards live in {emu.emu_home()} (EDGE_EXPORT_EMU_HOME); a real board is "
        "ssh://user@host[:port] (`device check` says what it has)"
    )
    return 0


def cmd_setup(args) -> int:
    from pipeline.devices import emulator as emu
    from pipeline.devices.emulated import emu_profile
    from pipeline.runtimes import pip_hint

    if not args.devices:
        raise UsageError("name the boards to set up, e.g. python -m pipeline device setup emu:rpi4")
    specs = [_spec(s) for s in args.devices]
    for spec in specs:
        if spec.startswith("ssh:"):
            raise UsageError(
                f"{spec}: a real board needs no setup here; install python3 and the runtimes there "
                f"({pip_hint()}); `python -m pipeline device check {spec}` says what is missing"
            )
        emu_profile(spec)  # every name checked before anything is built
    for spec in specs:
        t0 = time.monotonic()
        folder = emu.setup(spec, log=lambda line: print(line, file=sys.stderr))
        print(f"{spec} ready in {time.monotonic() - t0:.1f} s: {folder}")
    return 0


def cmd_check(args) -> int:
    from pipeline import report
    from pipeline.benchmark import get_devices, parse_harness
    from pipeline.cli.options import device_options
    from pipeline.runtimes import dists

    if not args.devices:
        raise UsageError("name the boards to check, e.g. python -m pipeline device check ssh://pi@raspberrypi.local")
    rows, bundles = [], []
    for device in get_devices([_spec(s) for s in args.devices], parse_harness(args.harness), **device_options(args)):
        if not hasattr(device, "runtimes"):
            raise UsageError(f"device '{device.name}': nothing to check, it is this machine")
        for site in device.runtimes():
            (bundles if getattr(device, "harness", "python") == "native" else rows).append(
                {"device": device.name, **site}
            )
    if bundles:
        print(
            report.table(
                bundles,
                [("device", "device"), ("arch", "arch"), ("glibc", "glibc"), ("bundle", "runs the native bundle")],
            )
        )
    if not rows:
        return 1 if any(b["bundle"] != "yes" for b in bundles) else 0
    print(
        report.table(
            rows,
            [
                ("device", "device"),
                ("site", "python"),
                ("arch", "arch"),
                ("python", "version"),
                *((d, d) for d in dists()),
            ],
        )
    )
    for name in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == name]
        missing = [d for d in dists() if all(r.get(d) is None for r in mine)]
        if missing:
            print(f"{name} lacks {', '.join(missing)} (its targets fail there): pip install {' '.join(missing)} there")
    return 0


def run(args) -> int:
    return {"ls": cmd_ls, "setup": cmd_setup, "check": cmd_check}[args.action](args)
