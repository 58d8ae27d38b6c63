"""Quieting the converters' C++ chatter, which no Python logging setting reaches."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def stderr_silenced():
    """TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) ignores TF_CPP_MIN_LOG_LEVEL."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
