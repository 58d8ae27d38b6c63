"""Every error the pipeline raises on purpose. The CLI turns these into one line and an exit code.

The hierarchy is rooted in the lower layer's (targets/errors.py): PipelineError is targets' TargetsError and
UsageError is its UsageError, so what a target raises is caught here as it always was."""

from targets.errors import TargetsError as PipelineError
from targets.errors import UsageError as UsageError


class ConfigError(UsageError):
    pass


class DataError(UsageError):
    pass


class ModelLoadError(UsageError):
    pass


class ConversionError(ModelLoadError):
    """A converter shared by several targets (onnx2tf) cannot convert a valid model: the targets that need
    it fail with this reason, the others are built (builder.Builder.models)."""


class NonFiniteError(UsageError):
    """The original model's outputs on the user's samples hold NaN or Inf: nothing can be measured against it."""


class RunnerError(PipelineError):
    """A runtime failed to load or run an artifact (crash, timeout, bad output)."""


class VerificationError(PipelineError):
    """One or more artifacts failed verification or the accuracy gate."""


class DeviceError(PipelineError):
    """A device cannot be reached or used (SSH connection, host key, board without python3)."""


class EmuError(PipelineError):
    """Emulation cannot be set up or used on this host."""


class EstimateError(PipelineError):
    """No latency estimate can be made from an emulated run (missing llvm-mca, no profile)."""


class BudgetError(VerificationError):
    """A stage's model already loses more against the original model than the build allows."""
