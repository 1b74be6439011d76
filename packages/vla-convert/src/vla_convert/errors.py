"""Errors raised by the converter. Each one names the offending key, shape or value."""


class ConversionError(ValueError):
    """Base class: the checkpoint cannot be converted exactly; nothing was written."""


class CheckpointReadError(ConversionError):
    """The orbax directory is missing, truncated or unreadable."""


class UnknownLeafError(ConversionError):
    """The checkpoint holds leaves that no mapping rule consumes (they would be silently dropped)."""


class MissingLeafError(ConversionError):
    """A leaf that the inferred architecture requires is absent."""


class LeafShapeError(ConversionError):
    """A leaf's shape disagrees with the dimensions inferred from the rest of the checkpoint."""


class NonFiniteError(ConversionError):
    """A tensor holds NaN or Inf (pass allow_nonfinite=True to convert anyway)."""


class LoraConfigError(ConversionError):
    """LoRA adapters are present but their scale (alpha, rank, rslora) is not known or disagrees."""


class ModelMismatchError(ConversionError):
    """The caller asserted a model type (pi0 / pi0.5) that the checkpoint's tensors contradict."""


class VerificationError(ConversionError):
    """`verify` found a converted module whose outputs differ from the JAX reference."""


class OutputPathError(ConversionError):
    """The output location overlaps the source checkpoint, or cannot be written (permissions)."""
