"""The errors the lower layer raises on purpose. pipeline.errors re-exports them: its PipelineError is
TargetsError, so every `except` above catches what is raised here."""

from __future__ import annotations

import difflib


class TargetsError(Exception):
    """Base class. `exit_code` is what a command line exits with."""

    exit_code = 1


class UsageError(TargetsError):
    """Bad command line, config, or input file: the user can fix it."""

    exit_code = 2


def closest(name: str, choices) -> str:
    """' (did you mean X?)' or '' - for error messages."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
