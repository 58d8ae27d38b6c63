"""What a target came to: its status (one enum, spelled once) and, for verification, the typed result.

Status members are strings (StrEnum): the manifest, the cache's metadata and every JSON file hold the same
text as before, and a row read back from JSON compares equal to its member."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    FAILED_BUILD = "failed_build"
    FAILED_VERIFICATION = "failed_verification"
    FAILED_ARM_CHECK = "failed_arm_check"
    """Built and verified here, failed on a board `build --verify-on` checked it on (release's view)."""
    FAILED = "failed"
    """A board's own check of an artifact (verify-on), a bench run that failed."""
    NOT_BUILT = "not_built"
    """bench: the artifact has no file to run."""


@dataclass
class VerifyResult:
    """An artifact's verification: what was measured (`figures`, in the order measured), and why it failed."""

    figures: dict
    reasons: list[str] = field(default_factory=list)
    failed: Status = Status.FAILED_VERIFICATION
    """The status when there are reasons."""

    @property
    def status(self) -> Status:
        return self.failed if self.reasons else Status.OK

    def record(self) -> dict:
        """As the manifest stores it: the figures, then `status`, then `reason` (the reasons, joined) if any."""
        reason = {"reason": "; ".join(self.reasons)} if self.reasons else {}
        return {**self.figures, "status": self.status, **reason}
