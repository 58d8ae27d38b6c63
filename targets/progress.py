"""How the lower layer says what it is doing: through the callback its caller installs (`reporting`). With
none installed nothing is written anywhere: the API promises not to print."""

from __future__ import annotations

import contextlib
import contextvars

_listener: contextvars.ContextVar = contextvars.ContextVar("targets_step_listener", default=None)


@contextlib.contextmanager
def reporting(listener):
    """Within this block every `step(label, what)` runs inside `listener(label, what)` (a context manager
    factory, as pipeline.report.step); None: silent."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@contextlib.contextmanager
def step(label: str, what: str = ""):
    """One step that may take a while (a conversion), seen by the caller's listener if it installed one."""
    listener = _listener.get()
    if listener is None:
        yield
    else:
        with listener(label, what):
            yield
