"""`local`: this machine, with this Python (the one that has the runtimes installed)."""

from __future__ import annotations


class LocalDevice:
    name = "local"
    emulated = False

    def __init__(self, spec: str = "local", **_options):
        pass

    def run(self, request) -> dict:
        from pipeline import runner

        return runner.run(request.runner, request.model, request.argv(request.inputs), timeout=request.timeout)
