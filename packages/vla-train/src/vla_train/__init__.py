"""Hydra trainer composing the vla packages: PushT iMF policies, VLA fine-tuning, DDP/FSDP."""

from importlib.metadata import version as _version

__version__ = _version("vla-train")

__all__ = ["__version__"]
