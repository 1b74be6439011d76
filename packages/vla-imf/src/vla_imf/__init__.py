"""Improved MeanFlow one-step action generation with vanilla and Attention-Residual backbones."""

from importlib.metadata import version as _version

__version__ = _version("vla-imf")

__all__ = ["__version__"]
