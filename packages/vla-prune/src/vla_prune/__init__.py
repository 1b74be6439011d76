"""LightVLA differentiable visual-token pruning for VLA policies (torch only)."""

from importlib.metadata import version as _version

__version__ = _version("vla-prune")

__all__ = ["__version__"]
