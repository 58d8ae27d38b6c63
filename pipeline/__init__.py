"""edge-export: train, prune, quantize and export models to verified edge artifacts.

The public API is in pipeline/api.py. Importing the package imports no TensorFlow: each function
loads what it needs when called.
"""

__version__ = "0.1.0"

from pipeline.api import (
    Artifact,
    Build,
    ReleaseReport,
    bench,
    build,
    built,
    html_report,
    inspect,
    load_config,
    release,
    sweep,
    verify_on,
    verify_release,
)

__all__ = [
    "Artifact",
    "Build",
    "ReleaseReport",
    "__version__",
    "bench",
    "build",
    "built",
    "html_report",
    "inspect",
    "load_config",
    "release",
    "sweep",
    "verify_on",
    "verify_release",
]
