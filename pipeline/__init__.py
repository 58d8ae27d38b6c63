"""edge-export: train, prune, quantize and export models to verified edge artifacts."""

__version__ = "0.1.0"
