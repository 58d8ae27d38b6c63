"""Set up emulated aarch64 boards: python scripts/setup_emu.py [rpi3|rpi4|rpi5 ...]"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from targets import emu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", nargs="*", default=["rpi4"],
                        help="device profiles to set up (default: rpi4)")
    args = parser.parse_args()
    for name in args.profiles:
        t0 = time.monotonic()
        try:
            folder = emu.setup(name)
        except (emu.EmuError, ValueError) as e:
            print(f"setup_emu: {name}: {e}", file=sys.stderr)
            return 1
        print(f"setup_emu: {name} ready in {time.monotonic() - t0:.1f} s: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
