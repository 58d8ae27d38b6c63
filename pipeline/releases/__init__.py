"""Releases: pack.py writes the archives, manifest and checksums, card.py the model card and
BENCHMARKS.md, verify.py checks a release as whoever receives it would."""

VECTORS = 12
"""Held-out samples per archive: the first of each class, then the next ones, this many in all."""
FLOAT_ATOL = 1e-4
"""Replay tolerance of a float output. One runtime version replays its own outputs exactly on one
machine (single thread); the slack is for another CPU: LiteRT float outputs were measured up to
4e-5 apart between x86 and aarch64. A changed model or a wrong runtime moves them far more."""
INT_STEPS = 1.5
"""Replay tolerance of an integer output, in quantization steps: dequantized outputs differ by whole
steps, so 1.5 x scale allows exactly one step (a rounding difference between kernels), not two."""
