"""Measurements that use the public API; run each as a module from the repository root:
`python -m benchmarks.run`, `python -m benchmarks.prune_methods`, `python -m benchmarks.fidelity`."""
