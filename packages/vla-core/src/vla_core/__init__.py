"""pi0 / pi0.5 / Gemma-3 VLA engine: joint attention, backends, checkpointing, prefix KV cache."""

from importlib.metadata import version as _version

__version__ = _version("vla-core")

__all__ = ["__version__"]
